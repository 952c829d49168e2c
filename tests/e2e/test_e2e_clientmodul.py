"""A practice system's mail client against the Clientmodul of a running ``kim-appliance run``:
smtplib sends to the Clientmodul with the demo.json username, poplib fetches from the other
participant's Clientmodul session, and the mail arrives decrypted and verified (issue 6,
digest §1.4/§1.5)."""

from __future__ import annotations

import poplib
import smtplib
import time
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from pathlib import Path
from typing import Any

from e2e_appliance import Appliance, Launcher, split_hostport


def _send(app: Appliance, sender: dict[str, Any], to: list[str], message: bytes) -> None:
    host, port = split_hostport(app.endpoints["clientmodul"]["smtp"])
    with smtplib.SMTP_SSL(host, port, context=app.ssl_context(), timeout=60) as smtp:
        smtp.login(sender["smtp_username"], sender["password"])
        smtp.sendmail(sender["address"], to, message)


def _fetch(app: Appliance, who: dict[str, Any], wait: float = 30.0) -> list[bytes]:
    host, port = split_hostport(app.endpoints["clientmodul"]["pop3"])
    deadline = time.monotonic() + wait
    while True:
        pop = poplib.POP3_SSL(host, port, context=app.ssl_context(), timeout=60)
        try:
            pop.user(who["pop3_username"])
            pop.pass_(who["password"])
            count, _ = pop.stat()
            messages = []
            for n in range(1, count + 1):
                _, lines, octets = pop.retr(n)
                data = b"\r\n".join(lines) + b"\r\n"
                assert len(data) == octets
                messages.append(data)
        finally:
            pop.quit()
        if messages or time.monotonic() > deadline:
            return messages
        time.sleep(0.3)


def test_pvs_to_pvs_through_the_clientmodul(data_dir: Path, launcher: Launcher) -> None:
    """KOM-LE-A_2019, KOM-LE-A_2042, KOM-LE-A_2048, KOM-LE-A_2179: a plain mail from the RSA
    practice to the ECC pharmacy on the other Fachdienst is signed, encrypted, relayed, and
    handed to the pharmacy's PVS decrypted with X-KIM-DecryptionResult 00 and
    X-KIM-IntegrityCheckResult 01."""
    app = launcher.start(data_dir)
    weber, sonne = app.participant("praxis.weber"), app.participant("apotheke.sonne")
    msg = EmailMessage()
    msg["From"] = weber["address"]
    msg["To"] = sonne["address"]
    msg["Subject"] = "Rückfrage zum Rezept"
    msg["Message-ID"] = "<5f0c7e55-5d7e-4d8b-9c3f-6c1d2a8b9e01@kim>"
    msg["X-KIM-Dienstkennung"] = "KIM-Mail;Default;V1.0"
    msg.set_content("Bitte um Rückruf wegen der Dosierung.\n")
    _send(app, weber, [sonne["address"]], msg.as_bytes(policy=default.clone(linesep="\r\n")))
    got = _fetch(app, sonne)
    assert len(got) == 1
    delivered = BytesParser(policy=default).parsebytes(got[0])
    assert delivered["X-KIM-DecryptionResult"] == "00"
    assert delivered["X-KIM-IntegrityCheckResult"] == "01"
    assert delivered["Subject"] == "Rückfrage zum Rezept"
    assert delivered["Message-ID"] == msg["Message-ID"]
    body = delivered.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Bitte um Rückruf wegen der Dosierung." in text
    assert "Die Nachricht wurde entschlüsselt." in text
