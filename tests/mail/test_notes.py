"""The delivered mail: transport headers, status headers and notes (digest §1.5 steps 6-7)."""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import io
import os
import tempfile
import tracemalloc
from typing import cast

import pytest

from kim_appliance.mail import notes
from kim_appliance.mail.headers import parse_header_block
from kim_appliance.mail.notes import write_delivered_mail

OUTER = parse_header_block(
    b"Return-Path: <praxis.weber@fd1.kim.telematik-test>\r\n"
    b"Received: from fd1.kim.telematik-test by fd2.kim.telematik-test with ESMTPS;\r\n"
    b"\tTue, 2 Jan 2024 10:00:05 +0100\r\n"
    b"Received: from clientmodul by fd1.kim.telematik-test; Tue, 2 Jan 2024 10:00:04 +0100\r\n"
    b"From: praxis.weber@fd1.kim.telematik-test\r\n"
    b"To: dr.meyer@fd2.kim.telematik-test\r\n"
    b"Subject: KOM-LE-Nachricht\r\n"
    b"X-KOM-LE-Version: 1.0\r\n"
)
HEAD = (
    b"From: Praxis Weber <praxis.weber@fd1.kim.telematik-test>\r\n"
    b"To: dr.meyer@fd2.kim.telematik-test\r\n"
    b"Subject: Arztbrief\r\n"
    b"Message-ID: <6f1c2a4e-1111-4d2b-9f00-0123456789ab@praxis>\r\n"
    b"X-KIM-Dienstkennung: Arztbrief;Eventbenachrichtigung;V1.2\r\n"
)
DECRYPTED = "Die Nachricht wurde entschlüsselt."
VALID_NOTE = "Die Signatur wurde erfolgreich geprüft."


def deliver(
    inner: bytes, results: tuple[str, ...] = ("01",)
) -> tuple[bytes, email.message.EmailMessage]:
    out = io.BytesIO()
    written = write_delivered_mail(
        out,
        io.BytesIO(inner),
        outer_header=OUTER,
        decryption_result="00",
        integrity_results=results,
    )
    data = out.getvalue()
    assert written == len(data)
    message = email.message_from_bytes(data, policy=email.policy.default)
    return data, cast(email.message.EmailMessage, message)


def text_of(part: email.message.Message) -> str:
    """The decoded text of ``part`` with LF line ends (``email`` keeps the wire's CRLF)."""
    text: str = cast(email.message.EmailMessage, part).get_content()
    return text.replace("\r\n", "\n")


def test_plain_ascii_mail_gets_headers_and_notes() -> None:
    """KOM-LE-A_2179-01 / A_2050: the notes are appended to a text/plain body; the status headers
    X-KIM-DecryptionResult 00 and X-KIM-IntegrityCheckResult 01 are set (KOM-LE-A_2047-01)."""
    data, message = deliver(HEAD + b"\r\nSehr geehrte Frau Dr. Meyer,\r\nanbei der Befund.\r\n")
    assert message["X-KIM-DecryptionResult"] == "00"
    assert message.get_all("X-KIM-IntegrityCheckResult") == ["01"]
    body = text_of(message)
    assert body.startswith("Sehr geehrte Frau Dr. Meyer,\nanbei der Befund.\n")
    assert body.rstrip().endswith(f"{DECRYPTED}\n{VALID_NOTE}")
    # us-ascii cannot hold the umlauts of the note: relabelled as UTF-8 (a superset), 8bit
    assert message.get_content_charset() == "utf-8"
    assert message["Content-Transfer-Encoding"] == "8bit"
    assert b"\r\n" in data
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_transport_headers_from_the_outer_mail_come_first() -> None:
    """KOM-LE-A_21236 (Return-Path) and KOM-LE-A_20628 (Received) move from the outer mail to
    the top of the delivered mail, as written; the inner mail's own Return-Path is dropped."""
    inner = (
        b"Return-Path: <forged@example.org>\r\nReceived: from pvs by cm\r\n" + HEAD + b"\r\nx\r\n"
    )
    data, message = deliver(inner)
    assert message.get_all("Return-Path") == ["<praxis.weber@fd1.kim.telematik-test>"]
    received = message.get_all("Received")
    assert received is not None
    assert len(received) == 3
    assert received[0].startswith("from fd1.kim.telematik-test by fd2")
    assert received[2] == "from pvs by cm"
    assert data.startswith(
        b"Return-Path: <praxis.weber@fd1.kim.telematik-test>\r\n"
        b"Received: from fd1.kim.telematik-test by fd2.kim.telematik-test with ESMTPS;\r\n"
        b"\tTue, 2 Jan 2024 10:00:05 +0100\r\n"
    )


def test_status_headers_of_the_sender_are_not_passed_through() -> None:
    """Only the Clientmodul sets X-KIM-DecryptionResult/IntegrityCheckResult/Fehlermeldung
    (digest §2.3): a sender's forged ``IntegrityCheckResult: 01`` must not reach the PVS."""
    inner = (
        HEAD
        + b"X-KIM-IntegrityCheckResult: 01\r\nX-KIM-DecryptionResult: 00\r\n"
        + b"x-kim-fehlermeldung: 4014\r\n\r\nHallo\r\n"
    )
    _, message = deliver(inner, ("05",))
    assert message.get_all("X-KIM-IntegrityCheckResult") == ["05"]
    assert message.get_all("X-KIM-DecryptionResult") == ["00"]
    assert message.get_all("X-KIM-Fehlermeldung") is None


def test_several_integrity_ids_one_header_each_and_their_notes() -> None:
    """FAQ "Umgang mit den Fehlercodes": the header repeats, each ID gets its note (§1.6)."""
    _, message = deliver(HEAD + b"\r\nText\r\n", ("06", "08"))
    assert message.get_all("X-KIM-IntegrityCheckResult") == ["06", "08"]
    body = text_of(message)
    assert "[Integritätsprüfung] [ID 06]" in body
    assert "[Integritätsprüfung] [ID 08] Die Signatur der Nachricht wurde geprüft." in body
    assert VALID_NOTE not in body


def test_inner_headers_kept_byte_for_byte_utf8_included() -> None:
    """UTF-8 header values (RFC 6532) and encoded words pass unchanged."""
    head = (
        b"From: =?utf-8?q?Praxis_M=C3=BCller?= <praxis.weber@fd1.kim.telematik-test>\r\n"
        b"To: dr.meyer@fd2.kim.telematik-test\r\n"
        b"Subject: Befund f\xc3\xbcr Frau G\xc3\xb6\xc3\x9fmann\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
    )
    data, message = deliver(head + b"\r\nGr\xc3\xbc\xc3\x9fe\r\n")
    assert head in data
    assert message["Subject"] == "Befund für Frau Gößmann"
    body = text_of(message)
    assert body.startswith("Grüße\n")
    assert DECRYPTED in body


def test_quoted_printable_latin1_body_gets_a_qp_note_in_its_charset() -> None:
    """A quoted-printable body stays single-part: the note is appended QP-encoded in the part's
    own charset (our choice, notes.py docstring)."""
    head = HEAD + (
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
    )
    data, message = deliver(head + b"\r\nMit freundlichen Gr=FC=DFen=\r\n aus der Praxis\r\n")
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "iso-8859-1"
    body = text_of(message)
    assert body.startswith("Mit freundlichen Grüßen aus der Praxis\n")
    assert DECRYPTED in body
    assert VALID_NOTE in body
    assert b"entschl=FCsselt" in data


def test_base64_text_is_wrapped_not_reencoded() -> None:
    """A base64 body is never decoded: the mail becomes multipart/mixed with the untouched part
    and a note part (our choice, notes.py docstring)."""
    encoded = base64.encodebytes("Grüße aus der Praxis\n".encode()).replace(b"\n", b"\r\n")
    head = HEAD + (
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
    )
    data, message = deliver(head + b"\r\n" + encoded)
    assert encoded in data
    assert message.get_content_type() == "multipart/mixed"
    first, note = list(message.iter_parts())
    assert first["Content-Transfer-Encoding"] == "base64"
    assert text_of(first) == "Grüße aus der Praxis\n"
    assert text_of(note) == f"{DECRYPTED}\n{VALID_NOTE}\n"
    assert message["Subject"] == "Arztbrief"
    assert message.get_all("Content-Type") is not None
    assert len(message.get_all("Content-Type")) == 1


def test_charset_without_umlauts_is_wrapped() -> None:
    """A body in a charset that cannot hold the note (koi8-r has no ü) gets a note part."""
    head = HEAD + b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=koi8-r\r\n"
    _, message = deliver(head + b"\r\n" + "Привет\r\n".encode("koi8-r"))
    first, note = list(message.iter_parts())
    assert text_of(first) == "Привет\n"
    assert DECRYPTED in text_of(note)


@pytest.mark.parametrize("cte", ["8bit", "quoted-printable"])
def test_html_gets_a_paragraph_before_body_end(cte: str) -> None:
    """KOM-LE-A_2179-01: an HTML text part gets the notes as HTML (digest §1.5 step 7)."""
    head = HEAD + (
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n"
    )
    html = b"<html><body><p>Befund anbei.</p></body></html>\r\n"
    _, message = deliver(head + b"\r\n" + html)
    assert message.get_content_type() == "text/html"
    body = text_of(message)
    note_at = body.index("Die Nachricht wurde entschl&uuml;sselt.")
    assert body.index("<p>Befund anbei.</p>") < note_at < body.index("</body>")
    assert "Die Signatur wurde erfolgreich gepr&uuml;ft." in body


def test_html_without_body_tag_gets_the_paragraph_at_the_end() -> None:
    head = HEAD + b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
    _, message = deliver(head + b"\r\n<p>kurz</p>")
    body = text_of(message)
    assert body.index("<p>kurz</p>") < body.index("entschl&uuml;sselt")


MIXED = HEAD + (
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Befund im Anhang.\r\n"
    b"--b1\r\n"
    b'Content-Type: multipart/alternative; boundary="b1-inner"\r\n\r\n'
    b"--b1-inner\r\nContent-Type: text/plain\r\n\r\nalt\r\n--b1-inner--\r\n"
    b"--b1\r\n"
    b"Content-Type: application/pdf; name=befund.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=befund.pdf\r\n\r\n"
    b"JVBERi0xLjQK\r\n"
    b"--b1--\r\n"
    b"epilogue\r\n"
)


@pytest.mark.parametrize("read_size", [1, 3, 7, 64, 1024 * 1024])
def test_multipart_mixed_gets_a_note_part_before_the_close(
    monkeypatch: pytest.MonkeyPatch, read_size: int
) -> None:
    """The note part goes in before the closing boundary (brief; KOM-LE-A_2179-01), wherever
    the read chunks split the delimiter; nested boundaries that start alike are not taken."""
    monkeypatch.setattr(notes, "READ_SIZE", read_size)
    data, message = deliver(MIXED)
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "multipart/alternative",
        "application/pdf",
        "text/plain",
    ]
    assert cast(email.message.EmailMessage, parts[2]).get_content() == b"%PDF-1.4\n"
    assert text_of(parts[3]) == f"{DECRYPTED}\n{VALID_NOTE}\n"
    assert data.endswith(b"\r\n--b1--\r\nepilogue\r\n")
    assert b"preamble\r\n--b1\r\n" in data


def test_multipart_mixed_without_close_delimiter_is_closed() -> None:
    truncated = MIXED[: MIXED.index(b"--b1--")]
    _, message = deliver(truncated)
    parts = list(message.iter_parts())
    assert len(parts) == 4
    assert DECRYPTED in text_of(parts[-1])


def test_multipart_alternative_is_wrapped_so_the_note_is_no_alternative() -> None:
    """A note part inside multipart/alternative would replace the text; it is wrapped instead."""
    head = HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="a"\r\n'
    body = (
        b"\r\n--a\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
        b"--a\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--a--\r\n"
    )
    _, message = deliver(head + body)
    assert message.get_content_type() == "multipart/mixed"
    alternative, note = list(message.iter_parts())
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert DECRYPTED in text_of(note)


def test_mail_without_mime_headers_becomes_utf8_text() -> None:
    """A plain RFC 5322 mail (no MIME-Version) gets MIME headers for the UTF-8 note."""
    _, message = deliver(b"From: a@fd1.kim.telematik-test\r\nSubject: x\r\n\r\nHallo\r\n")
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_charset() == "utf-8"
    assert text_of(message).startswith("Hallo\n")


@pytest.mark.parametrize(
    ("decryption", "integrity", "message"),
    [
        ("01", ("01",), "use an error mail"),
        ("0", ("01",), "two digits"),
        ("00", (), "at least one ID"),
        ("00", ("1",), "X-KIM-IntegrityCheckResult '1'"),
    ],
)
def test_bad_result_ids_are_refused(
    decryption: str, integrity: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_delivered_mail(
            io.BytesIO(),
            io.BytesIO(HEAD + b"\r\nx\r\n"),
            outer_header=OUTER,
            decryption_result=decryption,
            integrity_results=integrity,
        )


def test_five_megabyte_attachment_is_streamed() -> None:
    """A 5 MB attachment passes through in bounded memory (the mail is never held whole)."""
    payload = os.urandom(5 * 1024 * 1024)
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    mail = HEAD + (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="big"\r\n\r\n'
        b"--big\r\nContent-Type: text/plain\r\n\r\nsiehe Anhang\r\n"
        b"--big\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--big--\r\n"
    )
    with tempfile.TemporaryFile() as source, tempfile.TemporaryFile() as target:
        source.write(mail)
        source.seek(0)
        del mail
        tracemalloc.start()
        try:
            written = write_delivered_mail(
                target,
                source,
                outer_header=OUTER,
                decryption_result="00",
                integrity_results=["01"],
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * notes.READ_SIZE < len(encoded)
        assert written == target.tell()
        target.seek(0)
        message = email.message_from_binary_file(target, policy=email.policy.default)
    parts = list(message.iter_parts())
    assert cast(email.message.EmailMessage, parts[1]).get_content() == payload
    assert DECRYPTED in text_of(parts[2])


@pytest.mark.parametrize("charset", ["utf\x008", "base64", "zlib", "rot13", "x" * 300])
def test_a_charset_python_cannot_write_text_in_gets_the_note_in_a_new_part(charset: str) -> None:
    """Issue 11 (found by fuzzing): a sender's charset parameter with a NUL made
    codecs.lookup raise ValueError, and a bytes-to-bytes codec name (base64, zlib) would make
    encoding raise TypeError. Such a text part is left as it is and wrapped with the note."""
    inner = (
        b"From: <a@fd2.kim.telematik-test>\r\nContent-Type: text/plain; charset="
        + charset.encode("latin-1")
        + b"\r\n\r\nHallo\r\n"
    )
    data, message = deliver(inner)
    assert message.get_content_type() == "multipart/mixed"
    assert b"Hallo\r\n" in data
    assert DECRYPTED in data.decode("utf-8", "replace") or b"entschl" in data
