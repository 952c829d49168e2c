"""Mail clients written by others against a running ``kim-appliance run``: curl (``smtps://``,
``pop3s://``) and the standard library's smtplib/poplib; and what the process logs meanwhile
(issue 3 §1 and §5, digest §3.2)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import smtplib
import subprocess
import time
from pathlib import Path

import pytest
from e2e_appliance import (
    Appliance,
    Launcher,
    mail,
    pop3_fetch,
    smtp_send,
    trace_prefix_of,
)

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(
    CURL is None, reason="curl is not installed (.ci/run installs it: apt-get install curl)"
)


def _body(size: int) -> bytes:
    """About ``size`` bytes of CRLF text with the lines dot-stuffing must get right."""
    lines = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", b"\r\n")
    tricky = b".\r\n..\r\n.leading dot\r\n...\r\n. \r\nend of the body\r\n"
    return b"Anfang\r\n" + tricky + lines + tricky


def _curl(app: Appliance, *args: str, upload: bytes | None = None) -> bytes:
    assert CURL is not None
    done = subprocess.run(
        [CURL, "--silent", "--show-error", "--cacert", app.endpoints["tls_ca"], *args],
        input=upload,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"curl {args[0]} exit {done.returncode}: {done.stderr!r}"
    return done.stdout


@needs_curl
def test_curl_sends_over_smtps_and_fetches_over_pop3s(data_dir: Path, launcher: Launcher) -> None:
    """curl submits over implicit TLS with AUTH as the plain KIM address (KOM-LE-A_2148,
    KOM-LE-A_2161), verified with ``tls_ca`` (KOM-LE-A_2143), and gets the message back over
    POP3S byte for byte after the Return-Path/Received prefix (dot-stuffing both ways)."""
    app = launcher.start(data_dir)
    weber, klein = app.participant("praxis.weber"), app.participant("zahnarzt.klein")
    sent = mail(weber["address"], klein["address"], "curl-1@e2e", _body(600_000))
    smtp_host, smtp_port = app.fd_of(weber, "smtp")
    _curl(
        app,
        f"smtps://{smtp_host}:{smtp_port}",
        "--mail-from", weber["address"],
        "--mail-rcpt", klein["address"],
        "--user", f"{weber['address']}:{weber['password']}",
        "--upload-file", "-",
        upload=sent,
    )  # fmt: skip
    pop_host, pop_port = app.fd_of(klein, "pop3")
    user = ("--user", f"{klein['address']}:{klein['password']}")
    listing = _curl(app, f"pop3s://{pop_host}:{pop_port}/", *user)
    assert re.fullmatch(rb"1 \d+\r\n", listing), listing
    stored = _curl(app, f"pop3s://{pop_host}:{pop_port}/1", *user)
    trace_prefix_of(stored, sent, weber["address"])
    assert int(listing.split()[1]) == len(stored), "LIST size is not the size RETR gives"


@needs_curl
def test_curl_with_a_wrong_password_is_refused(data_dir: Path, launcher: Launcher) -> None:
    """A wrong password gets no mail in (535, curl exits 67 'login denied') and no mail out."""
    app = launcher.start(data_dir)
    weber, klein = app.participant("praxis.weber"), app.participant("zahnarzt.klein")
    assert CURL is not None
    host, port = app.fd_of(weber, "smtp")
    done = subprocess.run(
        [
            CURL,
            "--silent",
            "--cacert",
            app.endpoints["tls_ca"],
            f"smtps://{host}:{port}",
            "--mail-from",
            weber["address"],
            "--mail-rcpt",
            klein["address"],
            "--user",
            f"{weber['address']}:not-the-password",
            "--upload-file",
            "-",
        ],
        input=mail(weber["address"], klein["address"], "curl-2@e2e", b"x\r\n"),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 67, (done.returncode, done.stderr)
    assert pop3_fetch(app, klein) == []


def test_smtplib_to_another_fachdienst_arrives_via_relay(
    data_dir: Path, launcher: Launcher
) -> None:
    """smtplib submits at fd1 for a mailbox of fd2; the relay carries it over SMTPS and poplib
    fetches it at fd2, byte for byte after the trace prefix (digest §3.2 relay)."""
    app = launcher.start(data_dir)
    weber, sonne = app.participant("praxis.weber"), app.participant("apotheke.sonne")
    assert weber["fachdienst"] != sonne["fachdienst"]
    sent = mail(weber["address"], sonne["address"], "relay-1@e2e", _body(300_000))
    smtp_send(app, weber, [sonne["address"]], sent)
    deadline = time.monotonic() + 20
    while not (got := pop3_fetch(app, sonne)):
        assert time.monotonic() < deadline, "relayed message did not arrive within 20 s"
        time.sleep(0.2)
    assert len(got) == 1
    trace_prefix_of(got[0], sent, weber["address"])


def test_logs_name_session_events_but_never_passwords_or_content(
    data_dir: Path, launcher: Launcher
) -> None:
    """``run`` logs one line per session event on stderr (connect, AUTH, accepted), but never
    a password (KOM-LE-A_2164), a wrong password tried, or any text of a message."""
    app = launcher.start(data_dir)
    weber, klein = app.participant("praxis.weber"), app.participant("zahnarzt.klein")
    marker = "MARKER-" + os.urandom(8).hex()
    wrong = "wrong-" + os.urandom(8).hex()
    sent = mail(
        weber["address"],
        klein["address"],
        "log-1@e2e",
        f"Diagnose {marker}\r\n".encode(),
        subject=f"Betreff {marker}",
    )
    smtp_send(app, weber, [klein["address"]], sent)
    host, port = app.fd_of(weber, "smtp")
    with (
        smtplib.SMTP_SSL(host, port, context=app.ssl_context(), timeout=30) as smtp,
        pytest.raises(smtplib.SMTPAuthenticationError),
    ):
        smtp.login(weber["address"], wrong)
    assert len(pop3_fetch(app, klein)) == 1
    assert app.stop(signal.SIGTERM)[0] == 0
    log = app.stderr()
    lines = log.splitlines()
    for secret, what in (
        (marker, "message text"),
        (weber["password"], "sender password"),
        (klein["password"], "recipient password"),
        (wrong, "wrong password"),
    ):
        assert secret not in log, f"the log shows the {what}"
    # one event per line: each line is a complete log record, no multi-line dumps
    record = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S+: ")
    assert all(record.match(line) for line in lines), [x for x in lines if not record.match(x)]
    assert any("AUTH" in line and weber["address"] in line for line in lines)
    assert any("accepted" in line for line in lines)
