"""The security posture of a real ``kim-appliance`` (issue 11 §7) as an operator sees it: the
data dir and everything in it are for the appliance's user only, and a client cannot forge or
colour a log line with control characters in what it sends."""

from __future__ import annotations

import base64
import os
import poplib
import smtplib
import stat
from pathlib import Path

import pytest
from e2e_appliance import Launcher, mail, pop3_fetch, smtp_send

FORGERY = (
    "evil\r\n2025-01-01 00:00:00 INFO kim_appliance: forged\x1b[31m\x7f@fd1.kim.telematik-test"
)


def _wide(root: Path) -> dict[str, str]:
    """Every path under ``root`` (itself included) that group or others may read or enter."""
    found = {}
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        if mode & 0o077 and not path.is_symlink():
            found[str(path.relative_to(root.parent))] = oct(mode)
    return found


def test_a_fresh_data_dir_is_private(template_dir: Path) -> None:
    """Issue 11: ``init`` and a first ``run`` (the session template) leave no file or directory
    that group or others may read: data dir 0700; demo.json (passwords), admin-token, the card,
    PKI and TLS keys, konnektor.json, the store (kim.sqlite3 with -wal/-shm, the blobs of mail
    and KAS) 0600/0700."""
    assert stat.S_IMODE(os.stat(template_dir).st_mode) == 0o700
    assert _wide(template_dir) == {}


def test_files_made_while_running_are_private(data_dir: Path, launcher: Launcher) -> None:
    """Issue 11 "also when they are created later": after mail was stored, relayed and fetched
    while the appliance runs (blobs, WAL files, endpoints.json), nothing is readable by others;
    and a data dir of an older release (0755, demo.json 0644) is narrowed by ``run``."""
    os.chmod(data_dir, 0o755)
    os.chmod(data_dir / "demo.json", 0o644)
    app = launcher.start(data_dir)
    weber, klein = app.participant("praxis.weber"), app.participant("zahnarzt.klein")
    sonne = app.participant("apotheke.sonne")
    body = b"Befund\r\n" * 5000
    smtp_send(app, weber, [klein["address"], sonne["address"]], mail(
        weber["address"], klein["address"], "private@e2e", body
    ))  # fmt: skip
    for who in (klein, sonne):
        for _ in range(100):
            if pop3_fetch(app, who):
                break
    wide = _wide(data_dir)
    code, _ = app.stop()
    assert code == 0
    assert wide == {}


def test_control_characters_from_clients_are_escaped_in_the_log(
    data_dir: Path, launcher: Launcher
) -> None:
    """Issue 11: client text with CR LF, ESC and DEL never forges a log line or reaches the
    terminal, whichever way it comes: SMTP AUTH and POP3 AUTH PLAIN (the cores refuse control
    characters, RFC 4616 / SASLprep), a POP3 USER line, an LDAP bind DN, a KAS attachment id
    in the URL; what is logged shows them as escapes (kim_appliance.logs, installed by the
    CLI; tests/test_logs.py tests the formatter itself)."""
    import urllib.error
    import urllib.request

    import ldap3

    app = launcher.start(data_dir)
    host, port = app.fd("fd1.kim.telematik-test", "smtp")
    with smtplib.SMTP_SSL(host, port, context=app.ssl_context(), timeout=30) as smtp:
        smtp.ehlo("pvs.test")
        smtp.user, smtp.password = FORGERY, "falsch"
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=True)
        assert refused.value.smtp_code == 501
    host, port = app.fd("fd1.kim.telematik-test", "pop3")
    pop = poplib.POP3_SSL(host, port, context=app.ssl_context(), timeout=30)
    token = base64.b64encode(f"\0{FORGERY}\0falsch".encode()).decode()
    with pytest.raises(poplib.error_proto, match=r"-ERR .*control characters"):
        pop._shortcmd(f"AUTH PLAIN {token}")  # type: ignore[attr-defined]
    pop.quit()
    ldap_host, ldap_port = app.endpoints["directory"]["ldap"].rsplit(":", 1)
    server = ldap3.Server(ldap_host, port=int(ldap_port), get_info=ldap3.NONE)
    connection = ldap3.Connection(server, user=FORGERY, password="falsch")
    assert not connection.bind()
    https = app.endpoints["fachdienste"]["fd1.kim.telematik-test"]["https"]
    url = f"{https}/attachments/v2.4/attachment/evil%0D%0A2025-01-01%1B%5B31m%7F"
    request = urllib.request.Request(url, headers={"recipient": "a@fd1.kim.telematik-test"})
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(request, context=app.ssl_context(), timeout=30)
    code, _ = app.stop()
    assert code == 0
    log = app.stderr()
    assert "evil" in log, log[-3000:]  # the attempts were logged ...
    assert not any(line.startswith("2025-01-01") for line in log.splitlines())
    assert "\x1b" not in log  # ... with nothing raw that a terminal would act on
    assert "\x7f" not in log
    assert "\r" not in log
