"""Delivery status notifications of the Fachdienst (RFC 3464, digest §3.2 DSN)."""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from kim_appliance.mail.dsn import DsnRecipient, build_dsn

SENDER = "dr.meier@fd2.kim.telematik-test"
WEBER = "praxis.weber@fd1.kim.telematik-test"
SCHULZ = "apotheke.schulz@fd1.kim.telematik-test"
OUTER_ID = "<0f8fad5b-d9cb-469f-a165-70867728950e@fd2.kim.telematik-test>"
ARRIVAL = datetime(2024, 1, 2, 10, 0, 5, tzinfo=timezone(timedelta(hours=1)))
NOW = datetime(2024, 1, 2, 9, 0, 9, tzinfo=UTC)
BODY_MARK = b"MIIBODY-SECRET-CMS-CONTENT"
ORIGINAL = (
    b"Return-Path: <dr.meier@fd2.kim.telematik-test>\r\n"
    b"From: Dr. Meier <dr.meier@fd2.kim.telematik-test>\r\n"
    b"To: praxis.weber@fd1.kim.telematik-test, apotheke.schulz@fd1.kim.telematik-test\r\n"
    b"Subject: KOM-LE-Nachricht\r\n"
    b"Message-ID: " + OUTER_ID.encode() + b"\r\n"
    b"X-KOM-LE-Version: 1.5\r\n"
    b"X-KIM-Dienstkennung: KIM-Mail;Default;V1.0\r\n"
    b"Content-Type: application/pkcs7-mime; smime-type=authenticated-enveloped-data\r\n"
    b"\r\n" + BODY_MARK + b"\r\n"
)
DELIVERED = DsnRecipient(WEBER, WEBER, "delivered", "2.0.0", "250 2.0.0 stored")
FAILED = DsnRecipient(SCHULZ, None, "failed", "5.1.1", "550 5.1.1 no such mailbox")


def dsn(**changes: Any) -> bytes:
    args: dict[str, Any] = {
        "reporting_mta": "mail.fd1.kim.telematik-test",
        "dsn_from": "mds@fd1.kim.telematik-test",
        "to": SENDER,
        "original_header": ORIGINAL,
        "original_message_id": OUTER_ID,
        "envid": None,
        "arrival": ARRIVAL,
        "recipients": [DELIVERED],
        "now": NOW,
    }
    args.update(changes)
    return build_dsn(**args)


def parse(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw)


def parts(message: email.message.Message) -> list[email.message.Message]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [p for p in payload if isinstance(p, email.message.Message)]


def text_of(part: email.message.Message) -> str:
    payload = part.get_payload()
    assert isinstance(payload, str)
    return payload


def decoded(part: email.message.Message) -> bytes:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def status_blocks(message: email.message.Message) -> list[email.message.Message]:
    part = parts(message)[1]
    assert part.get_content_type() == "message/delivery-status"
    return parts(part)


def test_delivery_confirmation_has_the_sample_layout() -> None:
    """KOM-LE-A_2147 / digest §3.2 sample: multipart/report, Zustellbestaetigung, mds@,
    Arrival-Date, In-Reply-To = outer Message-ID, Final-Recipient per recipient."""
    message = parse(dsn())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["Subject"] == "Zustellbestaetigung"
    assert message["From"] == "Mail Delivery Subsystem <mds@fd1.kim.telematik-test>"
    assert email.utils.getaddresses([message["To"]]) == [("", SENDER)]
    assert message["In-Reply-To"] == OUTER_ID
    assert message["Auto-Submitted"] == "auto-replied"
    assert re.fullmatch(r"<[0-9a-f-]{36}@fd1\.kim\.telematik-test>", message["Message-ID"])
    assert email.utils.parsedate_to_datetime(message["Date"]) == NOW

    body_parts = parts(message)
    assert [p.get_content_type() for p in body_parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    per_message, per_rcpt = status_blocks(message)
    assert per_message["Reporting-MTA"] == "dns; mail.fd1.kim.telematik-test"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVAL
    assert per_message["Original-Envelope-Id"] is None
    assert per_rcpt["Original-Recipient"] == f"rfc822;{WEBER}"
    assert per_rcpt["Final-Recipient"] == f"rfc822;{WEBER}"
    assert per_rcpt["Action"] == "delivered"
    assert per_rcpt["Status"] == "2.0.0"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 250 2.0.0 stored"
    assert "zugestellt" in text_of(body_parts[0])
    assert "delivered" in text_of(body_parts[0])


def test_dsn_is_unsigned_7bit_crlf_without_kim_markers() -> None:
    """digest §3.2: DSNs carry no Dienstkennung and no X-KOM-LE-Version; they are plain mail."""
    raw = dsn(recipients=[DELIVERED, FAILED])
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"X-KOM-LE-Version" not in head
    assert b"X-KIM-Dienstkennung" not in head
    assert b"pkcs7" not in head
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    message = parse(raw)
    assert message["Content-Transfer-Encoding"] == "7bit"
    assert not message.defects
    assert all(not part.defects for part in message.walk())


def test_original_body_is_never_included() -> None:
    """RET=HDRS only (digest §3.2): the header is returned, the body never."""
    raw = dsn(recipients=[FAILED])
    assert BODY_MARK not in raw
    headers_part = parts(parse(raw))[2]
    assert headers_part.get_content_type() == "text/rfc822-headers"
    returned = decoded(headers_part)
    assert returned == ORIGINAL.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def test_bare_lf_header_is_returned_with_crlf_and_body_cut() -> None:
    original = ORIGINAL.replace(b"\r\n", b"\n")
    raw = dsn(original_header=original)
    assert BODY_MARK not in raw
    assert b"\nSubject: KOM-LE-Nachricht\r\n" in raw


def test_eight_bit_original_header_is_sent_quoted_printable() -> None:
    original = b"From: M\xc3\xbcller <m@fd2.kim.telematik-test>\r\nSubject: Befund\r\n\r\nbody"
    raw = dsn(original_header=original, recipients=[FAILED])
    assert raw.isascii()
    part = parts(parse(raw))[2]
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert decoded(part) == original.split(b"\r\n\r\n")[0] + b"\r\n"


def test_bounce_subject_and_failed_recipient() -> None:
    """Failure report: 'Unzustellbar: <original subject>' and the 5.x.x status per recipient."""
    message = parse(dsn(recipients=[FAILED]))
    assert message["Subject"] == "Unzustellbar: KOM-LE-Nachricht"
    _, block = status_blocks(message)
    assert block["Final-Recipient"] == f"rfc822;{SCHULZ}"
    assert block["Original-Recipient"] is None
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 no such mailbox"
    text = text_of(parts(message)[0])
    assert "nicht zustellbar" in " ".join(text.split())
    assert "550 5.1.1 no such mailbox" in text


def test_several_recipients_each_get_a_block_and_failure_titles_the_report() -> None:
    """KOM-LE-A_2147: every original recipient served here appears as Final-Recipient."""
    delayed = DsnRecipient(
        "lab@fd1.kim.telematik-test", "rfc822;LAB@fd1.kim.telematik-test", "delayed", "4.4.1"
    )
    message = parse(dsn(recipients=[DELIVERED, FAILED, delayed]))
    assert message["Subject"].startswith("Unzustellbar")
    blocks = status_blocks(message)[1:]
    assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks] == [
        (f"rfc822;{WEBER}", "delivered", "2.0.0"),
        (f"rfc822;{SCHULZ}", "failed", "5.1.1"),
        ("rfc822;lab@fd1.kim.telematik-test", "delayed", "4.4.1"),
    ]
    assert blocks[2]["Original-Recipient"] == "rfc822;LAB@fd1.kim.telematik-test"


def test_delay_only_report() -> None:
    delayed = DsnRecipient(WEBER, None, "delayed", "4.4.1", remote_mta="mail.fd2.kim.telematik")
    message = parse(dsn(recipients=[delayed]))
    assert message["Subject"] == "Zustellung verzoegert: KOM-LE-Nachricht"
    assert status_blocks(message)[1]["Remote-MTA"] == "dns; mail.fd2.kim.telematik"


def test_envid_is_returned() -> None:
    """RFC 3461 §4.4 / RFC 3464 §2.2.1: the ENVID comes back as Original-Envelope-Id."""
    message = parse(dsn(envid="PVS-4711"))
    assert status_blocks(message)[0]["Original-Envelope-Id"] == "PVS-4711"


def test_message_id_without_brackets_is_bracketed_and_malformed_one_left_out() -> None:
    assert parse(dsn(original_message_id="abc@x"))["In-Reply-To"] == "<abc@x>"
    raw = dsn(original_message_id="<a b>\r\nBcc: evil@x")
    assert b"Bcc" not in raw
    assert parse(raw)["In-Reply-To"] is None


def test_long_diagnostic_is_folded() -> None:
    long = "550 5.7.1 " + "very long reason " * 20
    raw = dsn(recipients=[DsnRecipient(SCHULZ, None, "failed", "5.7.1", long)])
    ours = raw.split(b"Content-Type: text/rfc822-headers")[0]  # the original header is as given
    assert max(len(line) for line in ours.split(b"\r\n")) <= 78
    block = status_blocks(parse(raw))[1]
    assert " ".join(block["Diagnostic-Code"].split()) == "smtp; " + long.strip()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"action": "sent", "status": "2.0.0"}, "Action"),
        ({"action": "delivered", "status": "5.1.1"}, "does not fit"),
        ({"action": "failed", "status": "2.0.0"}, "does not fit"),
        ({"action": "delivered", "status": "2.0"}, "Status"),
        ({"final_recipient": "a@b>\r\nX: y"}, "Final-Recipient"),
        ({"remote_mta": "bad host"}, "Remote-MTA"),
    ],
)
def test_malformed_recipient_is_refused(kwargs: dict[str, Any], words: str) -> None:
    base: dict[str, Any] = {
        "final_recipient": WEBER,
        "original_recipient": None,
        "action": "delivered",
        "status": "2.0.0",
    }
    with pytest.raises(ValueError, match=words):
        DsnRecipient(**{**base, **kwargs})


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"to": ""}, "null reverse-path"),
        ({"recipients": []}, "at least one"),
        ({"arrival": datetime(2024, 1, 2, 10, 0)}, "Arrival-Date"),
        ({"reporting_mta": "not a host"}, "Reporting-MTA"),
    ],
)
def test_malformed_report_is_refused(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        dsn(**changes)


def test_stdlib_policy_default_reads_it_too() -> None:
    message = email.message_from_bytes(dsn(), policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message["Subject"] == "Zustellbestaetigung"
