"""`kim-appliance account` against a running appliance: an operator adds a mailbox, sets its
password, switches an absence note on, and deregisters it (issue 5 §5)."""

from __future__ import annotations

import json
import smtplib
import time
from pathlib import Path

import pytest
from e2e_appliance import Launcher, cli, mail, pop3_fetch, smtp_send

NEW = "labor.nord@fd1.kim.telematik-test"


def test_operator_manages_a_mailbox_from_the_command_line(
    data_dir: Path, launcher: Launcher
) -> None:
    """KOM-LE-A_2164 (hashed passwords), KOM-LE-A_2224 (absence note set), KOM-LE-A_2150 (a
    deregistered account cannot send): every step is visible to a mail client at once."""
    app = launcher.start(data_dir)
    d = ["--data-dir", str(data_dir)]
    added = cli("account", *d, "add", NEW, "--password", "Start-Passwort-1!", cwd=data_dir.parent)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["status"] == "active"
    again = cli("account", *d, "add", NEW, "--password", "x", cwd=data_dir.parent)
    assert again.returncode == 1
    assert "exists already" in again.stderr
    listed = cli("account", *d, "list", cwd=data_dir.parent)
    assert NEW in listed.stdout
    assert "praxis.weber@fd1.kim.telematik-test" in listed.stdout
    changed = cli(
        "account", *d, "password", NEW, "--password", "Neu-Passwort-2!", cwd=data_dir.parent
    )
    assert changed.returncode == 0, changed.stderr
    host, port = app.fd("fd1.kim.telematik-test", "smtp")
    with smtplib.SMTP_SSL(host, port, context=app.ssl_context(), timeout=30) as smtp:
        smtp.login(NEW, "Neu-Passwort-2!")
    # an absence note answers the next sender
    ooo = cli("account", *d, "out-of-office", NEW, "--on", "--message", "Bis Freitag im Urlaub.",
              cwd=data_dir.parent)  # fmt: skip
    assert ooo.returncode == 0, ooo.stderr
    weber = app.participant("praxis.weber")
    smtp_send(app, weber, [NEW], mail(weber["address"], NEW, "ooo-1@e2e", b"Hallo\r\n"))
    deadline = time.monotonic() + 20
    replies: list[bytes] = []
    while not replies and time.monotonic() < deadline:
        replies = pop3_fetch(app, weber, delete=True)
        time.sleep(0.3)
    assert replies, "no absence note arrived"
    assert b"Bis Freitag im Urlaub." in replies[0]
    # deregistered: sending is refused
    dereg = cli("account", *d, "deregister", NEW, cwd=data_dir.parent)
    assert dereg.returncode == 0, dereg.stderr
    with smtplib.SMTP_SSL(host, port, context=app.ssl_context(), timeout=30) as smtp:
        smtp.login(NEW, "Neu-Passwort-2!")
        with pytest.raises(smtplib.SMTPSenderRefused):
            smtp.sendmail(NEW, [weber["address"]], b"Subject: x\r\n\r\nx\r\n")


def test_account_cli_needs_the_admin_token(data_dir: Path, launcher: Launcher) -> None:
    """Whoever may read the data dir may administer it: without the token the API refuses."""
    launcher.start(data_dir)
    (data_dir / "admin-token").write_text("not-the-token\n")
    result = cli("account", "--data-dir", str(data_dir), "list", cwd=data_dir.parent)
    assert result.returncode == 1
    assert "401" in result.stderr
