"""The outer mail of a KIM message (digest §2.2) and the signed entity inside it (digest §2.1).

Building copies the inner mail's routing headers byte for byte (KOM-LE-A_2098-03, A_2101-01),
sets the fixed Subject (KOM-LE-A_2102) and ``X-KOM-LE-Version`` (KOM-LE-A_2100-02), copies every
``X-KIM-*`` header, and declares the base64 ``application/pkcs7-mime`` body. Parsing checks the
same on arrival. This module writes and reads headers only; the body is streamed by the callers.
"""

from __future__ import annotations

from dataclasses import dataclass

from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import HeaderBlock, HeaderField, parse_content_type

#: Subject of every outer mail (KOM-LE-A_2102).
OUTER_SUBJECT = "KOM-LE-Nachricht"
#: X-KOM-LE-Version without KAS (KOM-LE-A_2100-02); "1.5" marks a KAS message.
KOM_LE_VERSION = "1.0"

#: Headers copied from the inner to the outer mail unchanged, in this order (digest §2.2).
COPIED_HEADERS = ("Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Message-ID", "Expires")

#: Both smime-type tokens in use for AuthEnvelopedData: RFC 8551 writes
#: ``authEnveloped-data``; gematik's profile and sample write ``authenticated-enveloped-data``.
SMIME_TYPES_AUTH_ENVELOPED = ("authenticated-enveloped-data", "authenveloped-data")

#: The MIME entity around the SignedData inside the encryption (digest §2.1): binary, never
#: line-end canonicalised (KOM-LE-A_2103/2121).
SIGNED_ENTITY_HEADER = (
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"Content-Disposition: attachment; filename=smime.p7m\r\n"
    b"\r\n"
)


def build_outer_header(inner: HeaderBlock, *, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The outer header block, ending with the empty line, for the inner mail's header ``inner``.

    ``extra`` adds CM-set fields such as ``X-KIM-CMVersion`` (digest §2.3) after the copied ones.
    """
    fields: list[HeaderField] = []
    for name in COPIED_HEADERS:
        fields.extend(inner.find(name))
    fields.append(HeaderField("Subject", b" " + OUTER_SUBJECT.encode()))
    fields.append(HeaderField("MIME-Version", b" 1.0"))
    fields.append(
        HeaderField(
            "Content-Type",
            b" application/pkcs7-mime;\r\n\tsmime-type=authenticated-enveloped-data;"
            b" name=smime.p7m",
        )
    )
    fields.append(HeaderField("Content-Transfer-Encoding", b" base64"))
    fields.append(HeaderField("Content-Disposition", b" attachment; filename=smime.p7m"))
    fields.append(HeaderField("X-KOM-LE-Version", b" " + KOM_LE_VERSION.encode()))
    # every X-KIM-* header of the inner mail, as written (KOM-LE-A_2098-03)
    fields.extend(f for f in inner if f.name.lower().startswith("x-kim-"))
    extra_names = {name.lower() for name, _ in extra}
    fields = [f for f in fields if f.name.lower() not in extra_names]
    fields.extend(HeaderField(name, b" " + value.encode()) for name, value in extra)
    return HeaderBlock(tuple(fields)).encode() + b"\r\n"


@dataclass(frozen=True)
class OuterMail:
    """What the outer header of a received KIM message says."""

    header: HeaderBlock
    kom_le_version: str
    smime_type: str


def check_outer_header(header: HeaderBlock) -> OuterMail:
    """Check that ``header`` is the outer header of a KIM message (digest §2.2, A_21390).

    Raises MailFormatError saying which field is missing or wrong.
    """
    version = header.get("X-KOM-LE-Version")
    if version is None:
        raise MailFormatError("X-KOM-LE-Version is missing: this is not a KIM message (A_21390)")
    smime_type = _pkcs7_smime_type(header, "")
    if smime_type.lower() not in SMIME_TYPES_AUTH_ENVELOPED:
        raise MailFormatError(
            f"Content-Type smime-type is {smime_type!r}; expected authenticated-enveloped-data"
        )
    encoding = (header.get("Content-Transfer-Encoding") or "7bit").lower()
    if encoding != "base64":
        raise MailFormatError(f"Content-Transfer-Encoding is {encoding}; expected base64")
    return OuterMail(header, version, smime_type)


def check_signed_entity_header(header: HeaderBlock) -> None:
    """Check the MIME header of the signed entity inside the encryption (digest §2.1)."""
    smime_type = _pkcs7_smime_type(header, "signed entity: ")
    if smime_type.lower() != "signed-data":
        raise MailFormatError(f"signed entity: smime-type is {smime_type!r}, expected signed-data")
    encoding = (header.get("Content-Transfer-Encoding") or "binary").lower()
    if encoding not in ("binary", "8bit", "7bit"):
        raise MailFormatError(
            f"signed entity: Content-Transfer-Encoding {encoding} is not supported (binary)"
        )


def _pkcs7_smime_type(header: HeaderBlock, where: str) -> str:
    """The smime-type of an ``application/pkcs7-mime`` Content-Type; MailFormatError otherwise."""
    content_type = header.get("Content-Type")
    if content_type is None:
        raise MailFormatError(f"{where}Content-Type is missing; expected application/pkcs7-mime")
    mime_type, params = parse_content_type(content_type)
    if mime_type not in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
        raise MailFormatError(
            f"{where}Content-Type is {mime_type}; expected application/pkcs7-mime"
        )
    return params.get("smime-type", "")
