"""The Clientmodul end to end, as practice software uses it (issue 6 item 7; digest §1.3-§1.7).

Every test runs in both modes of cm_modes (issue 14): one ``kim-appliance run`` process with
everything, and two processes with the Clientmodul talking SOAP and LDAPS to the other's
Konnektor and VZD; the results must be the same. The 25 MB and 30 MB cases run in network mode
only (in-process they are tests/clientmodul's). smtplib, poplib and the system
``curl`` play the PVS: every ordered pair of demo participants (RSA, ECC, RSA+ECC, HBA; same and
other Fachdienst), attachments from 0 B to 30 MB, UTF-8 headers, and several recipients of
which one is unknown. Every message is fetched through the Clientmodul's POP3 side and compared
with what was sent: headers as sent, attachment byte for byte, ``X-KIM-DecryptionResult: 00``
and ``X-KIM-IntegrityCheckResult: 01`` (digest §1.6: 00 = decrypted, 01 = signature valid).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import smtplib
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
    curl_fetch,
    curl_list,
    curl_send,
    pop3_fetch,
    split_hostport,
)

CRLF = default.clone(linesep="\r\n")
LOCALS = ("praxis.weber", "apotheke.sonne", "zahnarzt.klein", "dr.meyer")


@pytest.fixture(scope="module", params=MODES)
def app(
    template_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Appliance]:
    """The appliance(s) of the mode (cm_modes): the same tests in-process and over the wire."""
    mode: str = request.param
    launcher, appliance = running(mode, template_dir, tmp_path_factory.mktemp(f"cm-matrix-{mode}"))
    try:
        yield appliance
    finally:
        launcher.close()


@pytest.fixture
def mode(request: pytest.FixtureRequest) -> str:
    """The mode of this test's appliance (the ``app`` fixture's parameter)."""
    value: str = request.node.callspec.params["app"]
    return value


def _network_only(mode: str, what: str) -> None:
    """The large cases cost the most; they run once, over the wire (in-process they are shown
    by tests/clientmodul: test_25_mb_message_through_the_clientmodul and
    test_30_mb_mail_goes_through_the_kas_and_arrives_byte_exact)."""
    if mode != "network":
        pytest.skip(f"{what}: runs in network mode only (in-process: tests/clientmodul)")


def _kim_mail(
    sender: dict[str, Any],
    to: list[dict[str, Any]],
    subject: str,
    text: str,
    attachment: bytes | None = None,
    filename: str = "befund.bin",
) -> EmailMessage:
    msg = EmailMessage(policy=CRLF)
    msg["From"] = f"{sender['display_name']} <{sender['address']}>"
    msg["To"] = ", ".join(f"{p['display_name']} <{p['address']}>" for p in to)
    msg["Subject"] = subject
    msg["Date"] = "Mon, 02 Jun 2025 10:00:00 +0200"
    msg["Message-ID"] = f"<{uuid.uuid4()}@kim>"
    msg["X-KIM-Dienstkennung"] = "KIM-Mail;Default;V1.0"
    msg.set_content(text)
    if attachment is not None:
        msg.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename=filename
        )
    return msg


def _parse(data: bytes) -> Message:
    return BytesParser(policy=default).parsebytes(data)


def _by_message_id(messages: list[bytes]) -> dict[str, Message]:
    parsed = [_parse(m) for m in messages]
    return {str(m["Message-ID"]): m for m in parsed}


def _attachment(delivered: Message) -> bytes:
    parts = [p for p in delivered.walk() if p.get_content_disposition() == "attachment"]
    assert len(parts) == 1, f"expected one attachment, found {len(parts)}"
    payload = parts[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def _assert_delivered(delivered: Message, sent: EmailMessage) -> None:
    """00/01 and the headers the PVS set, as it set them."""
    assert delivered["X-KIM-DecryptionResult"] == "00", delivered.as_string()[:2000]
    assert delivered.get_all("X-KIM-IntegrityCheckResult") == ["01"], delivered.as_string()[:2000]
    for name in ("Subject", "From", "To", "Message-ID", "Date", "X-KIM-Dienstkennung"):
        assert str(delivered[name]) == str(sent[name]), f"{name}: {delivered[name]!r}"


def test_every_ordered_pair_of_demo_participants(app: Appliance) -> None:
    """KOM-LE-A_2019, KOM-LE-A_2022, KOM-LE-A_2042, KOM-LE-A_2048, KOM-LE-A_2179: each of the
    twelve ordered pairs of the four demo participants (RSA, brainpoolP256r1, both, HBA; same
    and other Fachdienst) sends one small mail with an attachment through the Clientmodul; each
    recipient fetches through the Clientmodul and gets it decrypted (00) and verified (01) with
    Subject, From, To and the attachment as sent."""
    people = {local: app.participant(local) for local in LOCALS}
    sent: dict[str, tuple[str, EmailMessage, bytes]] = {}
    jobs = []
    for a, b in itertools.permutations(LOCALS, 2):
        blob = os.urandom(700) + f"{a}->{b}".encode()
        msg = _kim_mail(people[a], [people[b]], f"Befund {a} an {b}", f"Von {a} an {b}.\n", blob)
        sent[str(msg["Message-ID"])] = (b, msg, blob)
        jobs.append((people[a], people[b], msg))

    def send(job: tuple[dict[str, Any], dict[str, Any], EmailMessage]) -> None:
        sender, recipient, msg = job
        refused = cm_send(app, sender, [recipient["address"]], msg.as_bytes())
        assert not refused, f"{sender['address']} -> {recipient['address']}: {refused}"

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, jobs))

    def receive(local: str) -> dict[str, Message]:
        return _by_message_id(cm_wait(app, people[local], len(LOCALS) - 1))

    with ThreadPoolExecutor(4) as pool:
        inboxes = dict(zip(LOCALS, pool.map(receive, LOCALS), strict=True))
    for message_id, (recipient, msg, blob) in sent.items():
        delivered = inboxes[recipient].get(message_id)
        assert delivered is not None, f"{msg['Subject']}: not in {recipient}'s mailbox"
        _assert_delivered(delivered, msg)
        assert _attachment(delivered) == blob, f"{msg['Subject']}: attachment differs"
        body = delivered.get_body(("plain",))
        assert body is not None
        assert f"Von {msg['Subject'].split()[1]} an " in body.get_content()


@pytest.mark.parametrize(
    ("size", "sender", "recipient"),
    [
        (0, "praxis.weber", "zahnarzt.klein"),
        (1024, "zahnarzt.klein", "praxis.weber"),
        (1024 * 1024, "apotheke.sonne", "dr.meyer"),
        pytest.param(
            25 * 1000 * 1000, "praxis.weber", "apotheke.sonne", marks=pytest.mark.slow, id="25MB"
        ),
    ],
    ids=["0B", "1KB", "1MB", "25MB"],
)
def test_attachment_sizes_byte_exact(
    app: Appliance, mode: str, size: int, sender: str, recipient: str
) -> None:
    """KOM-LE-A_2042, KOM-LE-A_2179: attachments of 0 B, 1 KB, 1 MB and 25 MB (this one from
    one Fachdienst to the other) arrive through the Clientmodul byte for byte, with 00/01
    (KOM-LE-A_2004: a message of 25 MB net is sent and received)."""
    if size > 1024 * 1024:
        _network_only(mode, "25 MB")
    a, b = app.participant(sender), app.participant(recipient)
    blob = os.urandom(size)
    msg = _kim_mail(a, [b], f"Anhang {size} Bytes", "Anbei der Anhang.\n", blob, "anhang.bin")
    assert not cm_send(app, a, [b["address"]], msg.as_bytes(), timeout=600)
    got = _by_message_id(cm_wait(app, b, 1, wait=600))
    delivered = got[str(msg["Message-ID"])]
    _assert_delivered(delivered, msg)
    received = _attachment(delivered)
    assert len(received) == size
    assert hashlib.sha256(received).digest() == hashlib.sha256(blob).digest()


@pytest.mark.slow
def test_30mb_attachment_through_kas(app: Appliance, mode: str) -> None:
    """A_19356-07, A_19358, A_19370, A_23467 (digest §1.4 step 7, §1.5 step 5, §3.5): a 30 MB
    attachment goes through the sender's KAS: the KIM message the recipient's Fachdienst holds
    is small and names the KAS size; through the Clientmodul it arrives byte-exact, 00/01."""
    _network_only(mode, "30 MB")
    a, b = app.participant("zahnarzt.klein"), app.participant("apotheke.sonne")
    blob = os.urandom(30 * 1000 * 1000)
    msg = _kim_mail(a, [b], "Großer Anhang", "30 MB über den KAS.\n", blob, "gross.bin")
    assert not cm_send(app, a, [b["address"]], msg.as_bytes(), timeout=600)
    stored: list[bytes] = []
    deadline = time.monotonic() + 120
    while not stored and time.monotonic() < deadline:
        stored = pop3_fetch(app, b)  # the Fachdienst itself, not the Clientmodul
        time.sleep(0.3)
    assert len(stored) == 1, f"{len(stored)} messages on the Fachdienst after 120 s"
    outer_head = stored[0][: stored[0].find(b"\r\n\r\n")]
    assert b"X-KOM-LE-Version: 1.5" in outer_head, outer_head
    assert len(stored[0]) < 1024 * 1024, f"the KIM message itself is {len(stored[0])} bytes"
    got = _by_message_id(cm_wait(app, b, 1, wait=600))
    delivered = got[str(msg["Message-ID"])]
    _assert_delivered(delivered, msg)
    assert hashlib.sha256(_attachment(delivered)).digest() == hashlib.sha256(blob).digest()


def test_utf8_headers_and_body(app: Appliance) -> None:
    """KOM-LE-A_2097, KOM-LE-A_2179: Subject with umlauts and an emoji, display names with
    umlauts (RFC 2047 encoded words, as smtplib writes them) and an 8-bit UTF-8 body arrive as
    sent; the signed inner mail is not re-encoded."""
    a, b = app.participant("zahnarzt.klein"), app.participant("dr.meyer")
    msg = EmailMessage(policy=CRLF)
    msg["From"] = f"Zahnärztin Jürgens-Klein <{a['address']}>"
    msg["To"] = f"Dr. Änne Meyer-Öztürk <{b['address']}>"
    msg["Subject"] = "Überweisung für Frau Müller 🦷 – Größe ß"
    msg["Date"] = "Mon, 02 Jun 2025 10:00:00 +0200"
    msg["Message-ID"] = f"<{uuid.uuid4()}@kim>"
    msg.set_content("Grüße aus der Praxis – bitte Röntgenbild prüfen. 🦷\n", cte="8bit")
    raw = msg.as_bytes()
    assert b"=?utf-8?" in raw.split(b"\r\n\r\n", 1)[0]  # RFC 2047 encoded words on the wire
    assert not cm_send(app, a, [b["address"]], raw)
    delivered = _by_message_id(cm_wait(app, b, 1))[str(msg["Message-ID"])]
    assert delivered["X-KIM-DecryptionResult"] == "00"
    assert delivered.get_all("X-KIM-IntegrityCheckResult") == ["01"]
    assert str(delivered["Subject"]) == "Überweisung für Frau Müller 🦷 – Größe ß"
    assert delivered["From"].addresses[0].display_name == "Zahnärztin Jürgens-Klein"
    assert delivered["To"].addresses[0].display_name == "Dr. Änne Meyer-Öztürk"
    body = delivered.get_body(("plain",))
    assert body is not None
    assert "Grüße aus der Praxis – bitte Röntgenbild prüfen. 🦷" in body.get_content()


def test_ehlo_keywords_of_the_clientmodul(app: Appliance) -> None:
    """Digest §1.3 (CM-1.13 Tab_SMTP_Ant_Init): EHLO announces SIZE (at least 35882577),
    AUTH LOGIN PLAIN, 8BITMIME, ENHANCEDSTATUSCODES and DSN. SMTPUTF8 is not in the list, so a
    PVS sends non-ASCII headers as RFC 2047 encoded words (test_utf8_headers_and_body)."""
    host, port = split_hostport(app.endpoints["clientmodul"]["smtp"])
    with smtplib.SMTP_SSL(host, port, context=app.ssl_context(), timeout=30) as smtp:
        code, _ = smtp.ehlo()
        assert code == 250
        features = smtp.esmtp_features
    assert int(features["size"]) >= 35882577
    assert set(features["auth"].upper().split()) >= {"LOGIN", "PLAIN"}
    for keyword in ("8bitmime", "enhancedstatuscodes", "dsn"):
        assert keyword in features, f"EHLO lacks {keyword.upper()}: {features}"


def test_several_recipients_one_unknown(app: Appliance) -> None:
    """KOM-LE-A_2024-01, KOM-LE-A_2028, KOM-LE-A_2192-01: of three recipients one has no
    directory entry (no encryption certificate); the Clientmodul accepts the mail, the two
    others get it (00/01) without the unknown address in To, and the sender gets one unsigned,
    unencrypted report naming the dropped recipient."""
    weber, klein, sonne = (app.participant(x) for x in ("praxis.weber", "zahnarzt.klein",
                                                         "apotheke.sonne"))  # fmt: skip
    unknown = "niemand.hier@fd1.kim.telematik-test"
    msg = _kim_mail(weber, [klein, sonne], "Rundschreiben", "An alle drei.\n", b"PDF" * 100)
    msg.replace_header("To", f"{msg['To']}, Niemand <{unknown}>")
    refused = cm_send(app, weber, [klein["address"], sonne["address"], unknown], msg.as_bytes())
    assert not refused  # RCPT is held back until after DATA (digest §1.4)
    for who in (klein, sonne):
        delivered = _by_message_id(cm_wait(app, who, 1))[str(msg["Message-ID"])]
        assert delivered["X-KIM-DecryptionResult"] == "00"
        assert delivered.get_all("X-KIM-IntegrityCheckResult") == ["01"]
        to = [a.addr_spec for a in delivered["To"].addresses]
        assert unknown not in to, to
        assert who["address"] in to, to
        assert _attachment(delivered) == b"PDF" * 100
    reports = cm_wait(app, weber, 1)
    assert len(reports) == 1
    report = _parse(reports[0])
    assert report["X-KOM-LE-Version"] is None  # neither signed nor encrypted
    assert report["X-KIM-DecryptionResult"] is None  # passed through unchanged (A_21390)
    text = reports[0].decode("utf-8", errors="replace")
    assert unknown in text
    assert "4004" in text or "5.1.1" in text, text[:3000]
    for who in (klein["address"], sonne["address"]):
        assert f"Final-Recipient: rfc822; {who}" not in text


def test_curl_as_the_pvs(app: Appliance, tmp_path: Path) -> None:
    """KOM-LE-A_2009, KOM-LE-A_2041, KOM-LE-A_2179: curl sends over smtps:// with the
    Clientmodul username (AUTH PLAIN/LOGIN) and fetches over pop3s://; LIST sizes match what
    RETR returns and the mail arrives decrypted and verified with the attachment intact.
    KOM-LE-A_2003, KOM-LE-A_2006: a stock mail client with its own SMTP (RFC 5321/4954) and
    POP3 (RFC 1939) implementation sends and receives through the Clientmodul."""
    a, b = app.participant("apotheke.sonne"), app.participant("praxis.weber")
    blob = os.urandom(5000)
    msg = _kim_mail(a, [b], "Per curl gesendet", "Hallo per curl.\n", blob)
    mail_file = tmp_path / "mail.eml"
    mail_file.write_bytes(msg.as_bytes())
    curl_send(app, a, [b["address"]], mail_file)
    listing: list[tuple[int, int]] = []
    for _ in range(100):
        listing = curl_list(app, b)
        if listing:
            break
        time.sleep(0.3)
    assert len(listing) == 1, listing
    number, size = listing[0]
    data = curl_fetch(app, b, number)
    assert len(data) in (size, size - 2), (len(data), size)  # curl may drop the last CRLF
    delivered = _parse(data)
    _assert_delivered(delivered, msg)
    assert _attachment(delivered) == blob
    assert cm_fetch(app, b)  # clean up for the other tests
