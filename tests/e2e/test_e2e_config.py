"""``config.toml`` in the data dir as a user edits it: edits take effect on the next ``run``,
mistakes stop ``run`` with a message that names the key (issue 3 §1)."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest
from e2e_appliance import ENDPOINTS, Launcher, cli, mail, pop3_fetch, tls_greeting

FD3 = "fd3.kim.telematik-test"
SMALL_LIMIT = 100_000

THIRD_DOMAIN = f"""
[[fachdienst.domains]]
domain = "{FD3}"
smtp_port = 4465
pop3_port = 4995
"""


def _edit(data_dir: Path, old: str, new: str) -> None:
    path = data_dir / "config.toml"
    text = path.read_text("utf-8")
    assert old in text, f"config.toml no longer holds {old!r}"
    path.write_text(text.replace(old, new, 1), "utf-8")


def test_edited_config_takes_effect(data_dir: Path, launcher: Launcher) -> None:
    """A third domain added by hand gets its own TLS listeners, and a lowered
    max_message_size is advertised in SIZE and enforced with 552 5.3.4 (digest §3.2)."""
    _edit(data_dir, "max_message_size = 734003200", f"max_message_size = {SMALL_LIMIT}")
    with (data_dir / "config.toml").open("a", encoding="utf-8") as f:
        f.write(THIRD_DOMAIN)
    app = launcher.start(data_dir)
    assert FD3 in app.endpoints["fachdienste"]
    for kind, greeting in (("smtp", b"220 "), ("pop3", b"+OK")):
        host, port = app.fd(FD3, kind)
        line = tls_greeting(host, port, app.ssl_context())
        assert line.startswith(greeting), f"{FD3} {kind} greeted {line!r}"
    line = tls_greeting(*app.fd(FD3, "smtp"), app.ssl_context())
    assert FD3.encode() in line, f"fd3's greeting does not name its domain: {line!r}"

    weber, klein = app.participant("praxis.weber"), app.participant("zahnarzt.klein")
    host, port = app.fd_of(weber, "smtp")
    big = mail(weber["address"], klein["address"], "big@e2e", b"x" * 70 + b"\r\n") + (
        b"y" * 98 + b"\r\n"
    ) * (SMALL_LIMIT // 100 + 10)
    with smtplib.SMTP_SSL(host, port, context=app.ssl_context(), timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.esmtp_features.get("size") == str(SMALL_LIMIT)
        smtp.login(weber["address"], weber["password"])
        with pytest.raises(smtplib.SMTPResponseException) as refused:
            smtp.sendmail(weber["address"], [klein["address"]], big)
        assert refused.value.smtp_code == 552
        error = refused.value.smtp_error
        assert isinstance(error, bytes)
        assert error.startswith(b"5.3.4"), error
    assert pop3_fetch(app, klein) == []


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        pytest.param('bind = "127.0.0.1"', 'bindd = "127.0.0.1"', "bindd", id="unknown-top-key"),
        pytest.param("data_ttl_days = 90", "data_ttl_dayz = 90", "data_ttl_dayz", id="typo"),
        pytest.param(
            "max_message_size = 734003200",
            'max_message_size = "big"',
            "max_message_size",
            id="wrong-type",
        ),
        pytest.param("data_ttl_days = 90", "data_ttl_days = 5", "data_ttl_days", id="range"),
        pytest.param("smtp_port = 2465", "smtp_port = 70000", "70000", id="bad-port"),
        pytest.param(
            'domain = "fd1.kim.telematik-test"',
            'domain = "fd1.example.org"',
            "domain",
            id="non-kim-domain",
        ),
        pytest.param("compress_blobs = false", "compress_blobs = nein", "config.toml", id="toml"),
    ],
)
def test_bad_config_stops_run_naming_the_key(
    data_dir: Path, old: str, new: str, named: str
) -> None:
    """An unknown key or a bad value makes ``run`` exit non-zero at once with one message that
    names it, no traceback, and no endpoints.json."""
    _edit(data_dir, old, new)
    done = cli("run", "--ephemeral-ports", "--data-dir", str(data_dir), cwd=data_dir.parent)
    assert done.returncode != 0
    assert named in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (data_dir / ENDPOINTS).exists()


def test_taken_port_stops_run_naming_the_port(data_dir: Path) -> None:
    """A configured port another program holds (KOM-LE-A_2142 fixed ports, no
    ``--ephemeral-ports``) stops ``run`` with a message naming the port, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _edit(data_dir, "smtp_port = 2465", f"smtp_port = {port}")
        done = cli("run", "--data-dir", str(data_dir), cwd=data_dir.parent)
    assert done.returncode != 0
    assert str(port) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (data_dir / ENDPOINTS).exists()
