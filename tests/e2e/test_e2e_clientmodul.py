"""A practice system's mail client against the Clientmodul of a running appliance: smtplib
sends to the Clientmodul with the demo.json username, poplib fetches from the other
participant's Clientmodul session, and the mail arrives decrypted and verified (issue 6,
digest §1.4/§1.5).

The appliance is the ``kim_appliance_fresh`` fixture of the vendors' pytest plugin
(kim_appliance.testing, issue 7): these tests use it exactly as a vendor's CI would. The
subprocess tests of the CLI itself are in test_e2e_run.py and test_e2e_crash.py.
"""

from __future__ import annotations

import time
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default

import pytest

from kim_appliance.testing import KimAppliance, Participant


def _send(app: KimAppliance, sender: Participant, to: list[str], message: bytes) -> None:
    with app.smtp(sender) as smtp:
        smtp.sendmail(sender.address, to, message)


def _fetch(app: KimAppliance, who: Participant, wait: float = 30.0) -> list[bytes]:
    deadline = time.monotonic() + wait
    while True:
        pop = app.pop3(who)
        try:
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


@pytest.mark.parametrize(
    "mode",
    [
        "in-process",
        # the Clientmodul talks SOAP and LDAPS to the appliance's own Konnektor and VZD, as a
        # vendor's CI may configure it with the plugin's marker
        pytest.param(
            "network",
            marks=pytest.mark.kim_config(
                {"clientmodul": {"konnektor": "loopback", "directory": "loopback"}}
            ),
        ),
    ],
)
def test_pvs_to_pvs_through_the_clientmodul(kim_appliance_fresh: KimAppliance, mode: str) -> None:
    """KOM-LE-A_2019, KOM-LE-A_2042, KOM-LE-A_2048, KOM-LE-A_2179: a plain mail from the RSA
    practice to the ECC pharmacy on the other Fachdienst is signed, encrypted, relayed, and
    handed to the pharmacy's PVS decrypted with X-KIM-DecryptionResult 00 and
    X-KIM-IntegrityCheckResult 01; in both modes of the Clientmodul (issue 14)."""
    app = kim_appliance_fresh
    partners = app.endpoints["clientmodul"]
    if mode == "network":
        assert partners["konnektor"] == app.konnektor_sds
        assert partners["directory"].startswith("ldaps://")
    else:
        assert (partners["konnektor"], partners["directory"]) == ("in-process", "in-process")
    weber, sonne = app.participant("praxis.weber"), app.participant("apotheke.sonne")
    msg = EmailMessage()
    msg["From"] = weber.address
    msg["To"] = sonne.address
    msg["Subject"] = "Rückfrage zum Rezept"
    msg["Message-ID"] = "<5f0c7e55-5d7e-4d8b-9c3f-6c1d2a8b9e01@kim>"
    msg["X-KIM-Dienstkennung"] = "KIM-Mail;Default;V1.0"
    msg.set_content("Bitte um Rückruf wegen der Dosierung.\n")
    _send(app, weber, [sonne.address], msg.as_bytes(policy=default.clone(linesep="\r\n")))
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
