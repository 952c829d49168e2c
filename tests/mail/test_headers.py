"""Header blocks: parsed as written, never rewritten (digest §2.10)."""

from __future__ import annotations

import io

import pytest

from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import parse_content_type, parse_header_block, read_header_block


def test_fields_keep_their_bytes_and_unfold_for_reading() -> None:
    block = parse_header_block(
        b"From: Dr. Weber <Praxis.Weber@fd1.kim.telematik-test>\r\n"
        b"To: a@fd1.kim.telematik-test,\r\n\tb@fd2.kim.telematik-test\r\n"
        b"X-KIM-Dienstkennung: KIM-Mail;Default;V1.0\r\n"
    )
    assert [f.name for f in block] == ["From", "To", "X-KIM-Dienstkennung"]
    assert block.get("to") == "a@fd1.kim.telematik-test,\tb@fd2.kim.telematik-test"
    assert block.addresses("To") == ["a@fd1.kim.telematik-test", "b@fd2.kim.telematik-test"]
    # the address is not lower-cased: KIM addresses are never rewritten
    assert block.addresses("From") == ["Praxis.Weber@fd1.kim.telematik-test"]
    assert block.encode().endswith(
        b"b@fd2.kim.telematik-test\r\nX-KIM-Dienstkennung: KIM-Mail;Default;V1.0\r\n"
    )


def test_bare_lf_header_is_read_and_written_with_crlf() -> None:
    header, rest = read_header_block(
        io.BytesIO(b"From: a@b.kim.telematik-test\nSubject: x\n\nbody\n")
    )
    assert header.get("Subject") == "x"
    assert rest == b"body\n"
    assert header.encode() == b"From: a@b.kim.telematik-test\r\nSubject: x\r\n"


def test_body_start_is_returned_across_read_boundaries() -> None:
    head = b"Subject: " + b"y" * 70000 + b"\r\n\r\n"
    header, rest = read_header_block(io.BytesIO(head + b"BODY"))
    assert header.get("Subject") == "y" * 70000
    assert rest == b"BODY"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"no colon here\r\n\r\n", "header line 1 is not a header field"),
        (b" starts folded: x\r\n\r\n", "continuation line before any field"),
        (b"", "the mail is empty"),
    ],
)
def test_malformed_header_says_which_line(data: bytes, message: str) -> None:
    with pytest.raises(MailFormatError, match=message):
        read_header_block(io.BytesIO(data))


def test_content_type_parameters() -> None:
    mime, params = parse_content_type(
        'Application/PKCS7-MIME;\r\n\tsmime-type=authenticated-enveloped-data; name="smime.p7m"'
    )
    assert mime == "application/pkcs7-mime"
    assert params == {"smime-type": "authenticated-enveloped-data", "name": "smime.p7m"}
