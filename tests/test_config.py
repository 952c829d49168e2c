"""config.toml: the defaults, what a user may change, and clear errors for what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from kim_appliance import config
from kim_appliance.errors import ConfigError


def test_written_defaults_read_back_as_the_embedded_defaults(tmp_path: Path) -> None:
    config.write_default(tmp_path)
    assert config.load(tmp_path) == config.Config()


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    loaded = config.load(tmp_path)
    assert [d.domain for d in loaded.fachdienst.domains] == [
        "fd1.kim.telematik-test",
        "fd2.kim.telematik-test",
    ]
    assert loaded.fachdienst.data_ttl_days == 90
    assert loaded.fachdienst.max_message_size == 734003200


def test_a_user_edit_takes_effect(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'bind = "127.0.0.2"\n[fachdienst]\nmax_message_size = 1000\n'
        '[[fachdienst.domains]]\ndomain = "Praxis.KIM.telematik-test"\nsmtp_port = 0\n'
        '[fachdienst.relay_map]\n"other.kim.telematik-test" = "10.0.0.5:465"\n'
    )
    loaded = config.load(tmp_path)
    assert loaded.bind == "127.0.0.2"
    assert loaded.fachdienst.max_message_size == 1000
    assert [(d.domain, d.smtp_port) for d in loaded.fachdienst.domains] == [
        ("praxis.kim.telematik-test", 0)
    ]
    assert loaded.fachdienst.relay_map == {"other.kim.telematik-test": "10.0.0.5:465"}


def test_ephemeral_ports_zero_every_port() -> None:
    ports = {
        (d.smtp_port, d.pop3_port)
        for d in config.Config().with_ephemeral_ports().fachdienst.domains
    }
    assert ports == {(0, 0)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bnd = 1\n", "unknown key.*bnd"),
        ("[fachdienst]\nmax_message_size = 'big'\n", "max_message_size: expected int"),
        ("[fachdienst]\ncompress_blobs = 1\n", "compress_blobs: expected bool"),
        ("[fachdienst]\ndata_ttl_days = 5\n", "data_ttl_days: must be 10..365"),
        ("[[fachdienst.domains]]\ndomain = 'example.org'\n", "ends .kim.telematik"),
        ("[[fachdienst.domains]]\ndomain = 'a.kim.telematik'\nsmtp_port = 70000\n", "70000"),
        ("[fachdienst]\nrelay_retry_seconds = []\n", "relay_retry_seconds"),
        ("[fachdienst.relay_map]\n'x.kim.telematik' = 'nohostport'\n", "relay_map"),
        ("bind = \n", "config.toml"),
    ],
)
def test_a_bad_config_names_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(tmp_path)


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("", None),
        ('[store]\nurl = "sqlite"\n', None),
        ('[store]\nurl = "postgresql://kim:pw@db:5432/kim"\n', "postgresql://kim:pw@db:5432/kim"),
    ],
)
def test_the_store_url(tmp_path: Path, text: str, url: str | None) -> None:
    """[store] url: the embedded store by default, or a PostgreSQL database (issue 12)."""
    (tmp_path / "config.toml").write_text(text)
    assert config.load(tmp_path).store.url == url


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[store]\nurl = "mysql://kim:hunter2@db/kim"\n',
            r"\[store\] url: .*mysql://kim:\*\*\*@db",
        ),
        ('[store]\nurl = "postgresql://kim:hunter2@/kim"\n', "host and database are required"),
        ("[store]\nurl = 5\n", "url: expected str"),
        ('[store]\npath = "x"\n', r"\[store\]: unknown key\(s\) path"),
    ],
)
def test_a_bad_store_section_is_refused_without_its_password(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=message) as refused:
        config.load(tmp_path)
    assert "hunter2" not in str(refused.value)
