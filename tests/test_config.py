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
    assert loaded.fachdienst.kas_threshold_bytes is None


def test_the_kas_threshold_is_configurable(tmp_path: Path) -> None:
    """Issue 13: ``[fachdienst] kas_threshold_bytes`` (bench/roundtrip.py --direct)."""
    (tmp_path / "config.toml").write_text("[fachdienst]\nkas_threshold_bytes = 31457280\n")
    assert config.load(tmp_path).fachdienst.kas_threshold_bytes == 30 * 1024 * 1024


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
        ("[fachdienst]\nkas_threshold_bytes = 1000\n", "kas_threshold_bytes: 1000 is not between"),
        ("[fachdienst]\nkas_threshold_bytes = '30M'\n", "kas_threshold_bytes: expected int"),
        ("bind = \n", "config.toml"),
    ],
)
def test_a_bad_config_names_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(tmp_path)


def test_the_clientmodul_partners_and_their_trust(tmp_path: Path) -> None:
    """KOM-LE-A_2091, KOM-LE-A_2184 (issue 14): the Clientmodul's Konnektor (connector.sds URL,
    CA, TLS_AUTH_KONNEKTOR, KONNEKTOR_TIMEOUT), VZD (LDAPS URL, CA), call-context defaults and
    the Fachdienste table; every one defaults to the in-process partners."""
    defaults = config.Config().clientmodul
    assert (defaults.konnektor, defaults.directory) == ("in-process", "in-process")
    assert defaults.konnektor_auth == "certificate"
    assert defaults.konnektor_timeout_seconds == 60
    assert defaults.fachdienste == {}
    (tmp_path / "config.toml").write_text(
        "[clientmodul]\n"
        'konnektor = "https://konnektor.praxis.local:8443/connector.sds"\n'
        'konnektor_ca = "/etc/kim/konnektor-ca.pem"\n'
        'konnektor_auth = "basic"\n'
        'konnektor_user = "praxis"\n'
        'konnektor_password = "geheim"\n'
        "konnektor_timeout_seconds = 20\n"
        'directory = "ldap://vzd.example:389"\n'
        'mandant_id = "Mandant1"\n'
        "[clientmodul.fachdienste]\n"
        '"FD1.kim.telematik-test:465" = "10.0.0.5:2465"\n'
        '"fd1.kim.telematik-test:443" = "[::1]:2443"\n'
    )
    cm = config.load(tmp_path).clientmodul
    assert cm.konnektor == "https://konnektor.praxis.local:8443/connector.sds"
    assert (cm.konnektor_auth, cm.konnektor_user, cm.konnektor_password) == (
        "basic", "praxis", "geheim",
    )  # fmt: skip
    assert cm.konnektor_timeout_seconds == 20.0
    assert cm.directory == "ldap://vzd.example:389"
    assert (cm.mandant_id, cm.client_system_id) == ("Mandant1", "")
    assert cm.fachdienste == {
        "fd1.kim.telematik-test:465": "10.0.0.5:2465",
        "fd1.kim.telematik-test:443": "[::1]:2443",
    }
    # --ephemeral-ports changes the listeners only
    assert config.load(tmp_path).with_ephemeral_ports().clientmodul.konnektor == cm.konnektor


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
        ('konnektor = "http://k:80/connector.sds"', "TLS only"),
        ('konnektor = "konnektor.local"', "https://HOST:PORT/connector.sds"),
        ('directory = "https://vzd:636"', "ldaps://HOST:PORT"),
        ('konnektor_auth = "kerberos"', "konnektor_auth: 'kerberos' is not one of"),
        ('konnektor_auth = "basic"', "needs konnektor_user"),
        ('konnektor_client_cert = "/x.pem"', "go together"),
        ("konnektor_timeout_seconds = 0", "konnektor_timeout_seconds"),
        ("konnektor_timeout_seconds = true", "expected int or float"),
        ('[clientmodul.fachdienste]\n"fd1.kim.telematik-test" = "10.0.0.5:2465"', "host:port"),
        ('[clientmodul.fachdienste]\n"fd1.kim.telematik-test:465" = "10.0.0.5"', "host:port"),
        ('konnektr = "in-process"', "unknown key.*konnektr"),
    ],
)
def test_a_bad_clientmodul_setting_names_what_is_wrong(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "config.toml").write_text("[clientmodul]\n" + text + "\n")
    with pytest.raises(ConfigError, match=message):
        config.load(tmp_path)


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


def test_the_cluster_times(tmp_path: Path) -> None:
    """[cluster]: the defaults are the named constants the README documents; a node timeout
    shorter than two heartbeats would take live nodes for dead and is refused."""
    assert config.load(tmp_path).cluster == config.ClusterConfig(
        config.HEARTBEAT_SECONDS, config.NODE_TIMEOUT_SECONDS, config.RELAY_LEASE_SECONDS, ""
    )
    (tmp_path / "config.toml").write_text(
        '[cluster]\nheartbeat_seconds = 0.5\nnode_timeout_seconds = 2\nadvertise = "n1"\n'
    )
    settings = config.load(tmp_path).cluster
    assert (settings.heartbeat_seconds, settings.node_timeout_seconds) == (0.5, 2.0)
    assert (settings.relay_lease_seconds, settings.advertise) == (30.0, "n1")
    for text, message in (
        ("node_timeout_seconds = 5", "at least two heartbeats"),
        ("relay_lease_seconds = 0", "relay_lease_seconds: must be more than 0"),
        ("heartbeat = 1", "unknown key.*heartbeat"),
        ('heartbeat_seconds = "1"', "expected int or float"),
    ):
        (tmp_path / "config.toml").write_text(f"[cluster]\nheartbeat_seconds = 3\n{text}\n")
        if text.startswith("heartbeat_seconds"):
            (tmp_path / "config.toml").write_text(f"[cluster]\n{text}\n")
        with pytest.raises(ConfigError, match=message):
            config.load(tmp_path)


def test_init_writes_the_store_url_once(tmp_path: Path) -> None:
    """`init --store URL` writes [store] url into config.toml (the default file's placeholder,
    an edited file's [store] table, or a new one), keeps the rest, and leaves a URL the user
    set alone."""
    url = 'postgresql://kim:p"w@db:5432/kim'
    config.write_default(tmp_path)
    assert config.set_store_url(tmp_path, url) == "written"
    assert config.load(tmp_path).store.url == url
    assert config.set_store_url(tmp_path, url) == "unchanged"
    assert config.set_store_url(tmp_path, "postgresql://x@y:1/z") == "kept"
    assert config.load(tmp_path).store.url == url
    assert config.load(tmp_path).fachdienst == config.Config().fachdienst
    for text in ("[store]\n\n[console]\nport = 1\n", "[console]\nport = 1\n"):
        (tmp_path / "config.toml").write_text(text)
        assert config.set_store_url(tmp_path, url) == "written"
        assert (config.load(tmp_path).store.url, config.load(tmp_path).console.port) == (url, 1)
