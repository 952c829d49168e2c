"""Konnektor faults and tampered messages as the practice software sees them through the
Clientmodul (issue 6 item 6; digest §1.4 step 8, §1.5, §1.6, §1.7).

Every test runs in both modes of cm_modes (issue 14): one ``kim-appliance run`` with
everything, and a Clientmodul process talking SOAP and LDAPS to a Konnektor-and-VZD process;
the results must be the same. Faults are switched through the Konnektor admin API
(``endpoints.json`` ``konnektor.admin``, the same the ``kim-appliance fault`` CLI uses) of the
process that runs the Konnektor. Every test switches its fault off again and shows that the
next message goes through. Tampered
messages are taken from the recipient's Fachdienst mailbox, changed, and put back with the
recipient's own password (mail to oneself, A_23422 (2)), as an attacker with that password could.
The revocation test goes last: a revocation cannot be undone.
"""

from __future__ import annotations

import base64
import smtplib
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from cm_modes import MODES, running
from e2e_appliance import (
    Appliance,
    cm_fetch,
    cm_send,
    cm_wait,
    konnektor_faults,
    pop3_fetch,
    restore_card,
    smtp_send,
    split_hostport,
)

CRLF = default.clone(linesep="\r\n")


@pytest.fixture(scope="module", params=MODES)
def app(
    template_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Appliance]:
    """The appliance(s) of the mode (cm_modes): the same tests in-process and over the wire."""
    mode: str = request.param
    launcher, appliance = running(mode, template_dir, tmp_path_factory.mktemp(f"cm-faults-{mode}"))
    try:
        yield appliance
    finally:
        launcher.close()


@pytest.fixture
def people(app: Appliance) -> Iterator[dict[str, dict[str, Any]]]:
    """The demo participants by local part; every fault is switched off after the test."""
    result = {
        p["address"].split("@")[0]: p for p in app.demo["participants"]
    }  # fmt: skip
    yield result
    konnektor_faults(app, clear=True)
    for p in result.values():
        restore_card(app, p["card"]["iccsn"])


def _mail(sender: dict[str, Any], to: dict[str, Any], subject: str) -> EmailMessage:
    msg = EmailMessage(policy=CRLF)
    msg["From"] = sender["address"]
    msg["To"] = to["address"]
    msg["Subject"] = subject
    msg["Date"] = "Mon, 02 Jun 2025 10:00:00 +0200"
    msg["Message-ID"] = f"<{uuid.uuid4()}@kim>"
    msg.set_content(f"{subject}: Inhalt.\n")
    return msg


def _parse(data: bytes) -> Message:
    return BytesParser(policy=default).parsebytes(data)


def _send_ok(app: Appliance, sender: dict[str, Any], to: dict[str, Any], subject: str) -> str:
    msg = _mail(sender, to, subject)
    assert not cm_send(app, sender, [to["address"]], msg.as_bytes())
    return str(msg["Message-ID"])


def _receive_ok(app: Appliance, who: dict[str, Any], message_id: str) -> None:
    got = [_parse(m) for m in cm_wait(app, who, 1)]
    assert [str(m["Message-ID"]) for m in got] == [message_id]
    assert got[0]["X-KIM-DecryptionResult"] == "00", got[0].as_string()[:2000]
    assert got[0].get_all("X-KIM-IntegrityCheckResult") == ["01"], got[0].as_string()[:2000]


def _await_arrival(app: Appliance, who: dict[str, Any], wait: float = 60.0) -> None:
    """Until ``who``'s Fachdienst mailbox holds a message (relay is asynchronous)."""
    deadline = time.monotonic() + wait
    while not pop3_fetch(app, who):
        assert time.monotonic() < deadline, f"{who['address']}: nothing arrived in {wait} s"
        time.sleep(0.3)


def _attached_original(error_mail: Message) -> Message:
    parts = [p for p in error_mail.walk() if p.get_content_type() == "message/rfc822"]
    assert len(parts) == 1, error_mail.as_string()[:2000]
    inner = parts[0].get_payload()
    assert isinstance(inner, list)
    original = inner[0]
    assert isinstance(original, Message)
    return original


def _send_refused(app: Appliance, sender: dict[str, Any], to: dict[str, Any]) -> int:
    msg = _mail(sender, to, "soll scheitern")
    with pytest.raises(smtplib.SMTPResponseException) as refused:
        cm_send(app, sender, [to["address"]], msg.as_bytes())
    return refused.value.smtp_code


def test_card_removed_on_send_gives_451(app: Appliance, people: dict[str, Any]) -> None:
    """KOM-LE-A_2021: with the sender's SMC-B pulled the signature fails; the PVS gets 451 and
    nothing is sent; with the card back (PIN entered again) the next mail goes through."""
    weber, klein = people["praxis.weber"], people["zahnarzt.klein"]
    konnektor_faults(app, card_removed=weber["card"]["iccsn"])
    assert _send_refused(app, weber, klein) == 451
    restore_card(app, weber["card"]["iccsn"])
    message_id = _send_ok(app, weber, klein, "nach dem Stecken")
    _receive_ok(app, klein, message_id)


def test_card_removed_on_receive_gives_01(app: Appliance, people: dict[str, Any]) -> None:
    """KOM-LE-A_2046, KOM-LE-A_2047-01, A_2062: the recipient's card is pulled before RETR: the
    PVS gets the decryption error mail (X-KIM-DecryptionResult 01, X-KIM-Fehlermeldung 4009)
    with the still-encrypted message attached; the message stays on the server and decrypts
    once the card is back."""
    weber, klein = people["praxis.weber"], people["zahnarzt.klein"]
    message_id = _send_ok(app, weber, klein, "Karte gezogen")
    _await_arrival(app, klein)
    konnektor_faults(app, card_removed=klein["card"]["iccsn"])
    got = cm_fetch(app, klein, delete=False)
    assert len(got) == 1
    error_mail = _parse(got[0])
    assert error_mail["X-KIM-DecryptionResult"] == "01"
    assert error_mail["X-KIM-Fehlermeldung"] == "4009"
    assert str(error_mail["Subject"]) == "Die Nachricht konnte nicht entschlüsselt werden"
    original = _attached_original(error_mail)
    assert original["X-KOM-LE-Version"] is not None  # still the encrypted KIM message
    assert str(original["Message-ID"]) == message_id
    restore_card(app, klein["card"]["iccsn"])
    _receive_ok(app, klein, message_id)


def test_pin_blocked_on_send_and_receive(app: Appliance, people: dict[str, Any]) -> None:
    """KOM-LE-A_2021, KOM-LE-A_2047-01, A_2062/A_2063: the sender's PIN.SMC is blocked: the
    signature fails, 451; the recipient's is blocked: the decryption error mail 01/4009 with
    the encrypted original, the message stays. Unblocked (PIN verified again), both work."""
    klein, weber = people["zahnarzt.klein"], people["praxis.weber"]
    konnektor_faults(app, pin_blocked=klein["card"]["iccsn"])
    assert _send_refused(app, klein, weber) == 451
    message_id = _send_ok(app, weber, klein, "PIN gesperrt")
    _await_arrival(app, klein)
    got = cm_fetch(app, klein, delete=False)
    assert len(got) == 1
    error_mail = _parse(got[0])
    assert error_mail["X-KIM-DecryptionResult"] == "01"
    assert error_mail["X-KIM-Fehlermeldung"] == "4009"
    assert str(_attached_original(error_mail)["Message-ID"]) == message_id
    restore_card(app, klein["card"]["iccsn"])
    _receive_ok(app, klein, message_id)
    _receive_ok(app, weber, _send_ok(app, klein, weber, "PIN wieder frei"))


def test_konnektor_unreachable(app: Appliance, people: dict[str, Any]) -> None:
    """KOM-LE-A_2021, KOM-LE-A_2047-01: the Konnektor stops answering. A PVS logged in before
    gets 451 at the end of DATA (signing failed; nothing is sent); a new login is answered
    454 4.7.0 (the call context cannot be checked: temporary, the Clientmodul's choice); a
    fetched message becomes the decryption error mail with DecryptionResult 03 (4011). When it
    answers again, the same message decrypts and sending works."""
    sonne, meyer = people["apotheke.sonne"], people["dr.meyer"]
    message_id = _send_ok(app, sonne, meyer, "vor dem Ausfall")
    _await_arrival(app, meyer)
    host, port = split_hostport(app.endpoints["clientmodul"]["smtp"])
    with smtplib.SMTP_SSL(host, port, context=app.ssl_context(), timeout=120) as smtp:
        smtp.login(sonne["smtp_username"], sonne["password"])
        konnektor_faults(app, unreachable=True)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail(sonne["address"], [meyer["address"]], _mail(sonne, meyer, "x").as_bytes())
        assert refused.value.smtp_code == 451, refused.value
    assert _send_refused(app, sonne, meyer) == 454
    got = cm_fetch(app, meyer, delete=False)
    assert len(got) == 1
    error_mail = _parse(got[0])
    assert error_mail["X-KIM-DecryptionResult"] == "03"
    assert error_mail["X-KIM-Fehlermeldung"] == "4011"
    konnektor_faults(app, unreachable=False)
    _receive_ok(app, meyer, message_id)
    _receive_ok(app, meyer, _send_ok(app, sonne, meyer, "nach dem Ausfall"))


# --- tampering --------------------------------------------------------------------------------


def _stored_kim_message(app: Appliance, who: dict[str, Any]) -> bytes:
    """The one message in ``who``'s Fachdienst mailbox, taken out (deleted), without the
    Return-Path/Received the Fachdienst put on top."""
    _await_arrival(app, who)
    got = pop3_fetch(app, who, delete=True)
    assert len(got) == 1, got
    lines = got[0].split(b"\r\n")
    while lines[0].startswith((b"Return-Path:", b"Received:", b" ", b"\t")):
        lines.pop(0)
    return b"\r\n".join(lines)


def _put_back(app: Appliance, who: dict[str, Any], message: bytes) -> None:
    smtp_send(app, who, [who["address"]], message)


def _split(message: bytes) -> tuple[bytes, bytes]:
    head, _, body = message.partition(b"\r\n\r\n")
    return head, base64.b64decode(body)


def _join(head: bytes, der: bytes) -> bytes:
    return head + b"\r\n\r\n" + base64.encodebytes(der).replace(b"\n", b"\r\n")


def test_tampered_ciphertext(app: Appliance, people: dict[str, Any]) -> None:
    """KOM-LE-A_2046, KOM-LE-A_2047-01: one flipped byte in the AES-GCM ciphertext fails the
    tag; nothing of the plaintext is released and the PVS gets the decryption error mail
    (DecryptionResult 02, 4010: the message does not follow the profile any more)."""
    weber, klein = people["praxis.weber"], people["zahnarzt.klein"]
    message_id = _send_ok(app, weber, klein, "Chiffrat manipuliert")
    head, der = _split(_stored_kim_message(app, klein))
    index = len(der) // 2  # inside encryptedContent (the unauthAttrs sit at the end)
    tampered = der[:index] + bytes([der[index] ^ 0x01]) + der[index + 1 :]
    _put_back(app, klein, _join(head, tampered))
    got = [_parse(m) for m in cm_wait(app, klein, 1)]
    assert got[0]["X-KIM-DecryptionResult"] == "02", got[0].as_string()[:2000]
    assert got[0]["X-KIM-Fehlermeldung"] == "4010"
    assert str(_attached_original(got[0])["Message-ID"]) == message_id
    assert b"Chiffrat manipuliert: Inhalt" not in got[0].as_bytes()
    _receive_ok(app, klein, _send_ok(app, weber, klein, "danach"))


def test_tampered_outer_header_gives_08(app: Appliance, people: dict[str, Any]) -> None:
    """KOM-LE-A_2048-01, A_23165 (digest §1.6 ID 08): the outer To is changed after signing;
    the signature is valid but outer and inner headers differ: IntegrityCheckResult 08, the
    integrity error mail with the decrypted original."""
    klein, sonne = people["zahnarzt.klein"], people["apotheke.sonne"]
    message_id = _send_ok(app, klein, sonne, "Kopf manipuliert")
    head, der = _split(_stored_kim_message(app, sonne))
    to_line = f"To: {sonne['address']}".encode()
    assert to_line in head, head
    head = head.replace(to_line, to_line + b", mitleser@fd2.kim.telematik-test")
    _put_back(app, sonne, _join(head, der))
    got = [_parse(m) for m in cm_wait(app, sonne, 1)]
    assert got[0]["X-KIM-DecryptionResult"] == "00"
    assert "08" in got[0].get_all("X-KIM-IntegrityCheckResult", []), got[0].as_string()[:2000]
    original = _attached_original(got[0])
    assert str(original["Message-ID"]) == message_id
    assert original["X-KOM-LE-Version"] is None  # the decrypted inner mail (A_23165)
    _receive_ok(app, sonne, _send_ok(app, klein, sonne, "danach"))


def test_tampered_recipient_emails_gives_09(app: Appliance, people: dict[str, Any]) -> None:
    """KOM-LE-A_2048-01, KOM-LE-A_2127 (digest §1.6 ID 09): the unprotected recipient-emails
    names another address for the sender's certificate (same length, so only the attribute
    changes); decryption still works, the signed copy differs: IntegrityCheckResult 09."""
    weber, klein = people["praxis.weber"], people["zahnarzt.klein"]
    _send_ok(app, weber, klein, "Empfängerliste manipuliert")
    head, der = _split(_stored_kim_message(app, klein))
    address = weber["address"].encode()
    forged = b"praxis.webex" + address[len(b"praxis.weber") :]
    assert der.count(address) >= 1
    _put_back(app, klein, _join(head, der.replace(address, forged)))
    got = [_parse(m) for m in cm_wait(app, klein, 1)]
    assert got[0]["X-KIM-DecryptionResult"] == "00"
    assert "09" in got[0].get_all("X-KIM-IntegrityCheckResult", []), got[0].as_string()[:2000]
    _receive_ok(app, klein, _send_ok(app, weber, klein, "danach"))


def test_zz_revoked_signer_gives_05(app: Appliance, people: dict[str, Any]) -> None:
    """KOM-LE-A_2050, Tab_Verm_Sig_Prüf (digest §1.6): the sender's OSIG certificate is revoked
    after signing. The CRL of the test PKI lists it, so its status is known, not unknown: the
    path does not validate, ID 05 (4206), not 07 (INCONCLUSIVE, status unknown). The mail
    arrives as the integrity error mail with the decrypted original; mail from another sender
    is fine."""
    sonne, weber, klein = people["apotheke.sonne"], people["praxis.weber"], people["zahnarzt.klein"]
    message_id = _send_ok(app, sonne, weber, "Signaturzertifikat gesperrt")
    _await_arrival(app, weber)
    konnektor_faults(
        app, revoke={"iccsn": sonne["card"]["iccsn"], "purpose": "OSIG", "crypt": "ECC"}
    )
    got = [_parse(m) for m in cm_wait(app, weber, 1)]
    assert got[0]["X-KIM-DecryptionResult"] == "00"
    assert got[0].get_all("X-KIM-IntegrityCheckResult") == ["05"], got[0].as_string()[:2000]
    assert str(_attached_original(got[0])["Message-ID"]) == message_id
    _receive_ok(app, weber, _send_ok(app, klein, weber, "anderer Absender"))
