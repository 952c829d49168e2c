"""The outer mail header of digest §2.2."""

from __future__ import annotations

import pytest

from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import parse_header_block
from kim_appliance.mail.outer import build_outer_header, check_outer_header

INNER = parse_header_block(
    b"MIME-Version: 1.0\r\n"
    b"From: Hausarztpraxis Dr. Weber <praxis.weber@fd1.kim.telematik-test>\r\n"
    b"To: Sonnen-Apotheke <apotheke.sonne@fd2.kim.telematik-test>\r\n"
    b"Cc: dr.meyer@fd2.kim.telematik-test\r\n"
    b"Subject: Befund Mustermann\r\n"
    b"Date: Sat, 28 Nov 2026 10:00:00 +0100\r\n"
    b"Message-ID: <0f6c1d3e-2b1a-4c8e-9d1e-6a8f0c2b7e11@kim>\r\n"
    b"X-KIM-Dienstkennung: Arztbrief;VHitG-Versand;V1.2\r\n"
    b"X-KIM-Sendersystem: PVS-Test;1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
)


def test_outer_header_follows_the_profile() -> None:
    """KOM-LE-A_2098-03, KOM-LE-A_2099, KOM-LE-A_2100-02, KOM-LE-A_2101-01, KOM-LE-A_2102:
    copied fields, fixed subject, X-KOM-LE-Version, every X-KIM-* header, base64 pkcs7-mime."""
    outer = parse_header_block(build_outer_header(INNER).removesuffix(b"\r\n"))
    assert outer.get("Subject") == "KOM-LE-Nachricht"
    assert outer.get("X-KOM-LE-Version") == "1.0"
    for name in ("From", "To", "Cc", "Date", "Message-ID"):
        assert outer.get(name) == INNER.get(name), name
    assert outer.get("X-KIM-Dienstkennung") == "Arztbrief;VHitG-Versand;V1.2"
    assert outer.get("X-KIM-Sendersystem") == "PVS-Test;1.0"
    assert "Befund" not in build_outer_header(INNER).decode()  # the subject stays inside
    assert outer.get("Content-Transfer-Encoding") == "base64"
    checked = check_outer_header(outer)
    assert checked.smime_type == "authenticated-enveloped-data"


def test_extra_cm_headers_replace_copies() -> None:
    outer = parse_header_block(
        build_outer_header(INNER, extra=(("X-KIM-CMVersion", "KIMAP_0.1.0"),)).removesuffix(b"\r\n")
    )
    assert outer.get_all("X-KIM-CMVersion") == ["KIMAP_0.1.0"]


@pytest.mark.parametrize("token", ["authenticated-enveloped-data", "authEnveloped-data"])
def test_both_smime_type_tokens_are_accepted(token: str) -> None:
    header = parse_header_block(
        b"X-KOM-LE-Version: 1.0\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Type: application/pkcs7-mime; smime-type=" + token.encode() + b"\r\n"
    )
    assert check_outer_header(header).smime_type == token


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"Content-Type: application/pkcs7-mime\r\n", "X-KOM-LE-Version is missing"),
        (b"X-KOM-LE-Version: 1.0\r\nContent-Type: text/plain\r\n", "expected application/pkcs7"),
        (
            b"X-KOM-LE-Version: 1.0\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n",
            "smime-type is 'enveloped-data'",
        ),
        (
            b"X-KOM-LE-Version: 1.0\r\nContent-Transfer-Encoding: 8bit\r\n"
            b"Content-Type: application/pkcs7-mime; smime-type=authenticated-enveloped-data\r\n",
            "Content-Transfer-Encoding is 8bit",
        ),
    ],
)
def test_not_a_kim_outer_header_is_refused_with_the_reason(header: bytes, message: str) -> None:
    with pytest.raises(MailFormatError, match=message):
        check_outer_header(parse_header_block(header))
