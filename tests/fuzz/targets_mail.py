"""Fuzz targets of the MIME side: header blocks, the delivered mail with notes, error mails and
delivery reports, each fed what a sender controls.

The header parser declares :class:`~kim_appliance.mail.errors.MailFormatError`. The writers
that the receive path runs on a sender's mail (the notes of digest §1.5 steps 6-7, the error
mails of §1.7) and the Fachdienst's DSN builder declare nothing but MailFormatError for a mail
without a readable header: whatever the inner mail looks like, the PVS gets a mail.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io

from kim_appliance.mail import errormail
from kim_appliance.mail.dsn import DsnRecipient, build_dsn
from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import (
    HeaderBlock,
    parse_content_type,
    parse_header_block,
    read_header_block,
)
from kim_appliance.mail.notes import write_delivered_mail
from kim_appliance.mail.outer import check_outer_header, check_signed_entity_header

from .target import Finding, Runner, Target

_OUTER = parse_header_block(
    b"Return-Path: <arzt@fd2.kim.telematik-test>\r\n"
    b"Received: from fd2 by fd1; Mon, 1 Dec 2025 10:00:00 +0000\r\n"
    b"From: <arzt@fd2.kim.telematik-test>\r\nTo: <praxis@fd1.kim.telematik-test>\r\n"
)
_NOW = dt.datetime(2025, 12, 1, 10, 0, tzinfo=dt.UTC)


def _build_mime_headers() -> Runner:
    def run(data: bytes) -> None:
        header, _ = read_header_block(io.BytesIO(data))
        for name in ("From", "To", "Cc", "Subject", "X-KOM-LE-Version", "Content-Type"):
            header.get_all(name)
        header.addresses("From", "Sender", "Reply-To", "To", "Cc")
        parse_content_type(header.get("Content-Type") or "text/plain")
        header.encode()
        for check in (check_outer_header, check_signed_entity_header):
            with contextlib.suppress(MailFormatError):
                check(header)

    return run


def _build_mime_notes() -> Runner:
    """write_delivered_mail: the decrypted inner mail as the PVS gets it (text, HTML,
    multipart, anything else wrapped), status headers and notes added."""

    def run(data: bytes) -> None:
        out = io.BytesIO()
        write_delivered_mail(
            out, io.BytesIO(data), outer_header=_OUTER, decryption_result="00",
            integrity_results=["01"] if len(data) % 2 else ["02", "08"],
        )  # fmt: skip
        try:
            header, _ = read_header_block(io.BytesIO(out.getvalue()))
        except MailFormatError as exc:
            raise Finding(f"the delivered mail's header does not parse: {exc}") from exc
        if header.get_all("X-KIM-DecryptionResult") != ["00"]:
            raise Finding("delivered mail lacks its one X-KIM-DecryptionResult: 00")

    return run


def _header_of(data: bytes) -> HeaderBlock:
    """The header block a Clientmodul would have read, or an empty one."""
    try:
        return read_header_block(io.BytesIO(data))[0]
    except MailFormatError:
        return HeaderBlock(())


def _build_errormail() -> Runner:
    """The error mails of digest §1.7 with the sender's message as the original."""

    def run(data: bytes) -> None:
        header = _header_of(data)
        for write in (
            lambda out: errormail.write_decryption_error_mail(
                out, original_header=header, original=data, decryption_result="02",
                detail=data[:200].decode("utf-8", "replace"), now=_NOW,
            ),
            lambda out: errormail.write_integrity_error_mail(
                out, original_header=header, decrypted=data, integrity_results=["04"], now=_NOW
            ),
            lambda out: errormail.write_version_error_mail(
                out, original_header=header, original=data,
                version=header.get("X-KOM-LE-Version") or "9.9", now=_NOW,
            ),
        ):  # fmt: skip
            out = io.BytesIO()
            write(out)
            if b"\r\n\r\n" not in out.getvalue():
                raise Finding("error mail without a header/body separator")

    return run


def _build_dsn() -> Runner:
    """build_dsn with the stored message's header, Message-ID and an ENVID from the input."""
    recipients = [
        DsnRecipient("praxis@fd1.kim.telematik-test", "rfc822;praxis@fd1.kim.telematik-test",
                     "delivered", "2.0.0"),
        DsnRecipient("nobody@fd1.kim.telematik-test", None, "failed", "5.1.1",
                     "550 5.1.1 no such mailbox", "fd1.kim.telematik-test"),
    ]  # fmt: skip

    def run(data: bytes) -> None:
        header = _header_of(data)
        envid = data[-100:].decode("utf-8", "replace") if len(data) % 3 == 0 else None
        report = build_dsn(
            reporting_mta="fd1.kim.telematik-test", dsn_from="mds@fd1.kim.telematik-test",
            to="arzt@fd2.kim.telematik-test", original_header=data,
            original_message_id=header.get("Message-ID"), envid=envid, arrival=_NOW,
            recipients=recipients, now=_NOW,
        )  # fmt: skip
        if not report.isascii():
            raise Finding("DSN is not 7bit")

    return run


_TOKENS = (
    b"\r\n", b"\r\n\r\n", b"\n", b": ", b"\r\n ", b"\t", b"Content-Type: text/plain; charset=",
    b"Content-Type: text/html\r\n", b"Content-Type: multipart/mixed; boundary=\"b\"\r\n",
    b"\r\n--b\r\n", b"\r\n--b--\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"</body>", b"=\r\n", b"=C3=A4", b"iso-8859-1",
    b"utf-16", b"From: \"a\\\"b\" <x@y>, (c) <z@w>\r\n", b"Message-ID: <1@x>\r\n",
    b"Subject: =?utf-8?q?=C3=A4?=\r\n", b"X-KOM-LE-Version: 1.0\r\n",
)  # fmt: skip

TARGETS = [
    Target(
        "mime_headers", "read_header_block, addresses, Content-Type, outer checks",
        (MailFormatError,), _build_mime_headers, max_len=64 * 1024, dictionary=_TOKENS,
    ),
    Target(
        "mime_notes", "write_delivered_mail: status headers and notes into the inner mail",
        (MailFormatError,), _build_mime_notes, max_len=64 * 1024, dictionary=_TOKENS,
    ),
    Target(
        "errormail", "the error mails of digest §1.7 around the sender's message",
        (), _build_errormail, max_len=64 * 1024, dictionary=_TOKENS,
    ),
    Target(
        "dsn", "build_dsn around the stored message's header (RFC 3464)",
        (), _build_dsn, max_len=64 * 1024, dictionary=_TOKENS,
    ),
]  # fmt: skip
