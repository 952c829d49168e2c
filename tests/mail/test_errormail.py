"""Error mails of the Clientmodul (digest §1.7) and the sender report (digest §1.4 step 6)."""

from __future__ import annotations

import email
import email.message
import email.policy
import io
import os
import tempfile
import tracemalloc
from datetime import UTC, datetime
from typing import BinaryIO, cast

import pytest

from kim_appliance.mail import errormail
from kim_appliance.mail.errormail import (
    INTEGRITY_WARNING,
    DroppedRecipient,
    write_account_settings_error_mail,
    write_decryption_error_mail,
    write_error_mail,
    write_integrity_error_mail,
    write_kas_download_error_mail,
    write_sender_report,
    write_version_error_mail,
)
from kim_appliance.mail.headers import parse_header_block

NOW = datetime(2024, 1, 2, 9, 0, 9, tzinfo=UTC)
OUTER_HEAD = (
    b"Return-Path: <praxis.weber@fd1.kim.telematik-test>\r\n"
    b"Received: from fd1.kim.telematik-test by fd2.kim.telematik-test;\r\n"
    b"\tTue, 2 Jan 2024 10:00:05 +0100\r\n"
    b"Date: Tue, 02 Jan 2024 10:00:00 +0100\r\n"
    b"From: Praxis Weber <praxis.weber@fd1.kim.telematik-test>\r\n"
    b"Sender: praxis.weber@fd1.kim.telematik-test\r\n"
    b"Reply-To: praxis.weber@fd1.kim.telematik-test\r\n"
    b"To: dr.meyer@fd2.kim.telematik-test,\r\n"
    b" apotheke.sonne@fd2.kim.telematik-test\r\n"
    b"Cc: zahnarzt.klein@fd1.kim.telematik-test\r\n"
    b"Message-ID: <6f1c2a4e-1111-4d2b-9f00-0123456789ab@praxis>\r\n"
    b"Subject: KOM-LE-Nachricht\r\n"
    b"X-KOM-LE-Version: 1.0\r\n"
    b"X-KIM-Dienstkennung: Arztbrief;Eventbenachrichtigung;V1.2\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: application/pkcs7-mime; smime-type=authenticated-enveloped-data\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
)
OUTER = OUTER_HEAD + b"\r\nMIAGCyqGSIb3DQEJEAEXoIAwgAIBADGCAT4wggE6AgEAMIGf\r\nAAAA\r\n"
HEADER = parse_header_block(OUTER_HEAD)
COPIED = (
    b"Date: Tue, 02 Jan 2024 10:00:00 +0100\r\n"
    b"From: Praxis Weber <praxis.weber@fd1.kim.telematik-test>\r\n"
    b"Sender: praxis.weber@fd1.kim.telematik-test\r\n"
    b"Reply-To: praxis.weber@fd1.kim.telematik-test\r\n"
    b"To: dr.meyer@fd2.kim.telematik-test,\r\n"
    b" apotheke.sonne@fd2.kim.telematik-test\r\n"
    b"Cc: zahnarzt.klein@fd1.kim.telematik-test\r\n"
)
INNER = (
    b"Date: Tue, 02 Jan 2024 10:00:00 +0100\r\n"
    b"From: Praxis Weber <praxis.weber@fd1.kim.telematik-test>\r\n"
    b"To: dr.meyer@fd2.kim.telematik-test\r\n"
    b"Subject: Befund f\xc3\xbcr Frau G\xc3\xb6\xc3\x9fmann\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\n"
    b"Gr\xc3\xbc\xc3\x9fe\r\n"
)


def parse(data: bytes) -> email.message.EmailMessage:
    return cast(
        email.message.EmailMessage, email.message_from_bytes(data, policy=email.policy.default)
    )


def explanation(message: email.message.EmailMessage) -> str:
    first = cast(email.message.EmailMessage, next(message.iter_parts()))
    assert first.get_content_type() == "text/plain"
    text: str = first.get_content()
    return text.replace("\r\n", "\n")


def attached_bytes(data: bytes, message: email.message.EmailMessage) -> bytes:
    """The bytes of the message/rfc822 part as written (between its header and the boundary)."""
    boundary = message.get_boundary()
    assert boundary is not None
    part = data.split(b"--" + boundary.encode())[2]
    return part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")


def assert_error_shape(data: bytes, subject: str) -> email.message.EmailMessage:
    """The common shape of digest §1.7: multipart/mixed, text/plain + message/rfc822, Date/From/
    Sender/Reply-To/To/Cc copied as written, transport fields on top, CRLF only."""
    message = parse(data)
    assert message.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in message.iter_parts()] == [
        "text/plain",
        "message/rfc822",
    ]
    assert message["Subject"] == subject
    assert COPIED in data
    assert data.startswith(b"Return-Path: <praxis.weber@fd1.kim.telematik-test>\r\nReceived: ")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert message["Message-ID"] != "<6f1c2a4e-1111-4d2b-9f00-0123456789ab@praxis>"
    return message


@pytest.mark.parametrize(
    ("result", "code", "reason"),
    [
        ("01", "4009", "der Schlüssel ist nicht verfügbar"),
        ("02", "4010", "entspricht aber nicht dem KIM-Format"),
        ("03", "4011", "der Konnektor ist nicht erreichbar"),
    ],
)
def test_decryption_error_mail(result: str, code: str, reason: str) -> None:
    """KOM-LE-A_2046 / A_2047-01: subject, X-KIM-DecryptionResult 01/02/03 with
    X-KIM-Fehlermeldung 4009/4010/4011, the still-encrypted mail attached unchanged."""
    out = io.BytesIO()
    written = write_decryption_error_mail(
        out,
        original_header=HEADER,
        original=io.BytesIO(OUTER),
        decryption_result=result,
        detail="Karte 80276883110000100004 nicht gesteckt",
    )
    data = out.getvalue()
    assert written == len(data)
    message = assert_error_shape(data, "Die Nachricht konnte nicht entschlüsselt werden")
    assert message.get_all("X-KIM-DecryptionResult") == [result]
    assert message.get_all("X-KIM-Fehlermeldung") == [code]
    text = explanation(message)
    assert reason in text
    assert "80276883110000100004" in text
    assert "an Ihre eigene KIM-Adresse" in text
    attached = message.get_payload()[1]
    assert attached["Content-Transfer-Encoding"] == "7bit"
    assert attached_bytes(data, message) == OUTER
    inner = attached.get_payload()[0]
    assert inner["X-KOM-LE-Version"] == "1.0"


def test_decryption_error_with_00_is_refused() -> None:
    with pytest.raises(ValueError, match="no decryption error"):
        write_decryption_error_mail(
            io.BytesIO(), original_header=HEADER, original=OUTER, decryption_result="00"
        )


def test_version_error_mail() -> None:
    """A_21391-02: an unsupported X-KOM-LE-Version yields the 4008 error mail, original attached."""
    out = io.BytesIO()
    write_version_error_mail(out, original_header=HEADER, original=OUTER, version="2.0")
    data = out.getvalue()
    message = assert_error_shape(
        data, "Die KIM-Version der empfangenen Nachricht wird nicht unterstützt"
    )
    assert message.get_all("X-KIM-Fehlermeldung") == ["4008"]
    assert message["X-KIM-DecryptionResult"] is None
    assert "'2.0'" in explanation(message)
    assert attached_bytes(data, message) == OUTER


def test_integrity_error_mail_embeds_the_decrypted_mail() -> None:
    """A_23165 and the api-kim FAQ: the DECRYPTED original as message/rfc822, DecryptionResult
    00, one IntegrityCheckResult per ID, the fixed security warning, then the ID notes."""
    out = io.BytesIO()
    write_integrity_error_mail(
        out, original_header=HEADER, decrypted=io.BytesIO(INNER), integrity_results=["06", "08"]
    )
    data = out.getvalue()
    message = assert_error_shape(data, "Sicherheitsverletzung beim Empfang einer KIM-Nachricht")
    assert message.get_all("X-KIM-DecryptionResult") == ["00"]
    assert message.get_all("X-KIM-IntegrityCheckResult") == ["06", "08"]
    assert message.get_all("X-KIM-Fehlermeldung") == ["4014"]
    text = explanation(message)
    assert text.startswith(INTEGRITY_WARNING)
    assert text.startswith(
        "Beim Empfang dieser KIM-Nachricht wurde eine Sicherheitsverletzung erkannt. Dies kann"
    )
    after = text[len(INTEGRITY_WARNING) :]
    assert after.index("Ergänzende Informationen:") < after.index(
        "Die Nachricht wurde entschlüsselt."
    )
    assert "[Integritätsprüfung] [ID 06]" in after
    assert "[Integritätsprüfung] [ID 08] Die Signatur der Nachricht wurde geprüft." in after
    # the decrypted mail has 8-bit UTF-8: the rfc822 part says 8bit, bytes unchanged
    attached = message.get_payload()[1]
    assert attached["Content-Transfer-Encoding"] == "8bit"
    assert attached_bytes(data, message) == INNER
    embedded = attached.get_payload()[0]
    assert embedded["Subject"] == "Befund für Frau Gößmann"


@pytest.mark.parametrize(
    ("results", "codes"),
    [(["02"], ["4115"]), (["05", "07"], ["4206", "4264"]), (["09"], ["4015"]), (["06"], [])],
)
def test_integrity_error_codes(results: list[str], codes: list[str]) -> None:
    """Digest §1.6: the Konnektor codes of Tab_Verm_Sig_Prüf go along as X-KIM-Fehlermeldung."""
    out = io.BytesIO()
    write_integrity_error_mail(
        out, original_header=HEADER, decrypted=INNER, integrity_results=results
    )
    assert parse(out.getvalue()).get_all("X-KIM-Fehlermeldung", []) == codes


def test_kas_and_account_settings_error_mails() -> None:
    """A_19370 (KAS download failed, 4006/4013) and A_23512 (large mail not allowed)."""
    out = io.BytesIO()
    write_kas_download_error_mail(out, original_header=HEADER, original=OUTER, code="4013")
    message = assert_error_shape(
        out.getvalue(), "Mindestens ein Anhang der Nachricht konnte nicht heruntergeladen werden"
    )
    assert message.get_all("X-KIM-Fehlermeldung") == ["4013"]
    out = io.BytesIO()
    write_account_settings_error_mail(out, original_header=HEADER, original=OUTER)
    message = assert_error_shape(
        out.getvalue(), "Die Nachricht entspricht nicht den festgelegten Account-Einstellungen"
    )
    with pytest.raises(ValueError, match="4006, 4007, 4012 or 4013"):
        write_kas_download_error_mail(
            io.BytesIO(), original_header=HEADER, original=OUTER, code="4009"
        )


class _Pipe(io.RawIOBase):
    """A non-seekable stream, like a socket."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_original_from_a_pipe_with_bare_lf() -> None:
    """An unseekable original is declared 8bit (its bytes cannot be scanned first); bare LF line
    ends become CRLF (the RETR payload is CRLF only)."""
    lf_original = OUTER.replace(b"\r\n", b"\n")
    out = io.BytesIO()
    write_error_mail(
        out,
        original_header=HEADER,
        original=cast(BinaryIO, io.BufferedReader(_Pipe(lf_original), buffer_size=5)),
        subject="Test",
        text="Erklärung",
        kim_headers=[("X-KIM-Fehlermeldung", "X99")],
    )
    data = out.getvalue()
    message = parse(data)
    assert message.get_payload()[1]["Content-Transfer-Encoding"] == "8bit"
    assert attached_bytes(data, message) == OUTER


def test_missing_date_is_set_from_now() -> None:
    header = parse_header_block(b"From: a@fd1.kim.telematik-test\r\nTo: b@fd2.kim.telematik-test")
    out = io.BytesIO()
    write_error_mail(
        out,
        original_header=header,
        original=b"From: a@fd1.kim.telematik-test\r\n\r\nx\r\n",
        subject="Test",
        text="x",
        kim_headers=[],
        now=NOW,
    )
    message = parse(out.getvalue())
    assert message["Date"] == "Tue, 02 Jan 2024 09:00:09 +0000"
    assert message["Message-ID"].endswith("@fd2.kim.telematik-test>")


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-KIM-Fehlermeldung", "4009\r\nBcc: evil@example.org"), ("X KIM", "1"), ("A:B", "1")],
)
def test_header_injection_is_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="error mail header"):
        write_error_mail(
            io.BytesIO(),
            original_header=HEADER,
            original=OUTER,
            subject="x",
            text="x",
            kim_headers=[(name, value)],
        )


def test_large_original_is_streamed() -> None:
    """A 5 MB original is copied in chunks: the error mail never holds it whole."""
    big = OUTER_HEAD + b"\r\n" + (os.urandom(3 * 1024 * 1024).hex().encode() + b"\r\n")[: 5 << 20]
    with tempfile.TemporaryFile() as source, tempfile.TemporaryFile() as target:
        source.write(big)
        source.seek(0)
        tracemalloc.start()
        try:
            written = write_decryption_error_mail(
                target, original_header=HEADER, original=source, decryption_result="03"
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * errormail.READ_SIZE < len(big)
        assert written == target.tell()
        target.seek(0)
        data = target.read()
    message = parse(data)
    assert message.get_payload()[1]["Content-Transfer-Encoding"] == "7bit"
    assert attached_bytes(data, message) == big


# -- the sender report (send side) ---------------------------------------------------------------

CLIENT_HEAD = parse_header_block(
    b"From: praxis.weber@fd1.kim.telematik-test\r\n"
    b"To: dr.meyer@fd2.kim.telematik-test, unbekannt@fd2.kim.telematik-test\r\n"
    b"Cc: zwei.ids@fd1.kim.telematik-test\r\n"
    b"Subject: Befund f\xc3\xbcr Frau G\xc3\xb6\xc3\x9fmann\r\n"
    b"Message-ID: <6f1c2a4e-1111-4d2b-9f00-0123456789ab@praxis>\r\n"
)


def test_sender_report_lists_every_dropped_recipient() -> None:
    """KOM-LE-A_2024-01 / A_2192-01: one unsigned DSN-style mail to the sender names every
    dropped recipient with its code (4004 no certificate, 4005 several Telematik-IDs)."""
    dropped = [
        DroppedRecipient("unbekannt@fd2.kim.telematik-test", "4004", "kein Eintrag im VZD"),
        DroppedRecipient("zwei.ids@fd1.kim.telematik-test", "4005"),
    ]
    out = io.BytesIO()
    written = write_sender_report(
        out,
        sender="praxis.weber@fd1.kim.telematik-test",
        original_header=CLIENT_HEAD,
        dropped=dropped,
        reporting_host="clientmodul.kim-appliance.local",
        now=NOW,
    )
    data = out.getvalue()
    assert written == len(data)
    message = parse(data)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["Subject"] == "Die Nachricht wurde nicht an alle Empfänger versendet"
    assert [a.addr_spec for a in message["To"].addresses] == ["praxis.weber@fd1.kim.telematik-test"]
    assert message["From"].addresses[0].addr_spec == "praxis.weber@fd1.kim.telematik-test"
    assert message["From"].addresses[0].display_name == "KIM-Clientmodul"
    assert message["In-Reply-To"] == "<6f1c2a4e-1111-4d2b-9f00-0123456789ab@praxis>"
    assert message.get_all("X-KIM-Fehlermeldung") == ["4004", "4005"]
    assert message["X-KOM-LE-Version"] is None  # passes the receiving CM unchanged (A_21390)
    assert "pkcs7" not in (message["Content-Type"] or "")
    text, status, headers = list(message.iter_parts())
    explanation_text = cast(email.message.EmailMessage, text).get_content()
    assert "<unbekannt@fd2.kim.telematik-test>: [Fehlercode 4004]" in explanation_text
    assert "kein Eintrag im VZD" in explanation_text
    assert "<zwei.ids@fd1.kim.telematik-test>: [Fehlercode 4005]" in explanation_text
    assert "dr.meyer" not in explanation_text
    blocks = status.get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; clientmodul.kim-appliance.local"
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822;unbekannt@fd2.kim.telematik-test",
        "rfc822;zwei.ids@fd1.kim.telematik-test",
    ]
    assert {b["Action"] for b in blocks[1:]} == {"failed"}
    assert [b["Status"] for b in blocks[1:]] == ["5.1.0", "5.1.0"]
    assert blocks[1]["Diagnostic-Code"].startswith("X-KIM; 4004 ")
    assert data.isascii()  # the 8-bit Subject of the client mail went quoted-printable
    assert headers.get_content_type() == "text/rfc822-headers"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "no-at-sign", "code": "4004"}, "not an address"),
        ({"address": "a b@x.de", "code": "4004"}, "not an address"),
        ({"address": "a@x.de", "code": "44"}, "four digits"),
        ({"address": "a@x.de", "code": "4004", "status": "4.1.1"}, "5.x.y"),
    ],
)
def test_dropped_recipient_validation(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DroppedRecipient(**kwargs)


def test_sender_report_needs_recipients_and_a_valid_sender() -> None:
    with pytest.raises(ValueError, match="no dropped recipient"):
        write_sender_report(
            io.BytesIO(),
            sender="a@fd1.kim.telematik-test",
            original_header=CLIENT_HEAD,
            dropped=[],
            reporting_host="cm.local",
        )
    with pytest.raises(ValueError, match="To"):
        write_sender_report(
            io.BytesIO(),
            sender="a@fd1.kim.telematik-test>\r\nBcc: x@y",
            original_header=CLIENT_HEAD,
            dropped=[DroppedRecipient("b@fd1.kim.telematik-test", "4004")],
            reporting_host="cm.local",
        )
