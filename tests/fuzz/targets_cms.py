"""Fuzz targets of the KIM CMS profile and the KIM message (outer mail) parsing.

Every CMS parser declares :class:`~kim_appliance.cms.errors.CmsError` (and its subclasses
CmsFormatError, SignatureError, DecryptionError, NoMatchingRecipientError) and nothing else.
:func:`~kim_appliance.mail.unseal.open_message` declares nothing at all: whatever the message, it
returns a report (DecryptionResult 01/02, IntegrityCheckResult 02-09), because the Clientmodul
must turn every message into either the mail or an error mail (digest §1.6, §1.7); an exception
there is the poison message of issue 11 that blocks a mailbox.
"""

from __future__ import annotations

import base64
import io

from kim_appliance.cms.enveloped import AuthEnvelopedReader, find_recipient
from kim_appliance.cms.errors import CmsError
from kim_appliance.cms.recipient_emails import decode_recipient_emails
from kim_appliance.cms.repair import repair_signed_data
from kim_appliance.cms.signed import SignedDataReader, read_signed_data
from kim_appliance.mail.unseal import (
    DECRYPTED,
    REPAIR_CANDIDATES,
    REPAIR_SECONDS,
    open_message,
)
from kim_appliance.mail.unseal import candidate_verifies as unseal_verifies
from kim_appliance.pki import TrustStore

from .target import Finding, Runner, Target
from .world import CachingKey, gematik_key, keys


def _split(data: bytes) -> list[bytes]:
    """The input in two or three pieces at offsets that depend on its length."""
    if len(data) < 8:
        return [data]
    third = len(data) // 3
    return [data[:third], data[third : 2 * third + 1], data[2 * third + 1 :]]


def _build_cms_signed() -> Runner:
    def run(data: bytes) -> None:
        received = bytearray()
        reader = SignedDataReader(received.extend)
        for piece in _split(data):
            reader.feed(piece)
        reader.feed_eof()
        reader.verify()

    return run


def _caching_keys() -> list[CachingKey]:
    world = keys()
    return [CachingKey(world.enc_rsa), CachingKey(world.enc_ecc), CachingKey(gematik_key())]


def _build_cms_enveloped() -> Runner:
    """AuthEnvelopedReader with the recipient's keys: parse, unwrap, decrypt, verify the tag."""
    opened = _caching_keys()

    def run(data: bytes) -> None:
        reader = AuthEnvelopedReader()
        keyed = False

        def unwrap() -> None:
            nonlocal keyed
            infos = reader.recipient_infos
            if keyed or infos is None:
                return
            for info in infos:  # every info's accessors, as the Clientmodul's report uses them
                _ = (info.kind, info.rid, info.key_encryption_algorithm, info.serial)
            info, key = find_recipient(infos, opened)
            reader.set_content_key(info.unwrap(key))
            keyed = True

        for piece in _split(data):
            reader.feed(piece)
            unwrap()
        reader.feed_eof()
        unwrap()
        if keyed:
            with reader.finish() as plaintext:
                while plaintext.read(65536):
                    pass

    return run


def _build_recipient_emails() -> Runner:
    def run(data: bytes) -> None:
        for entry in decode_recipient_emails(data):
            entry.matches(keys().enc_rsa.certificate)

    return run


def _fully_verifies(candidate: bytes) -> bool:
    try:
        read_signed_data(candidate)
    except CmsError:
        return False
    return True


def _build_cms_repair() -> Runner:
    """repair_signed_data as unseal calls it; it must never raise and never run long."""

    def run(data: bytes) -> None:
        repaired = repair_signed_data(
            data, verify=unseal_verifies, max_candidates=REPAIR_CANDIDATES,
            max_seconds=REPAIR_SECONDS,
        )  # fmt: skip
        if repaired is not None and not _fully_verifies(repaired):
            raise Finding("repair_signed_data returned a candidate that does not verify")

    return run


def as_outer_mail(data: bytes) -> bytes:
    """Seed format of the unseal target: the first byte says whether the body after the header
    is binary DER to be base64-encoded (1) or taken as it is (0); mutations of a binary body hit
    the CMS structure rather than the base64 alphabet."""
    if not data:
        return b""
    mode, rest = data[0], data[1:]
    if not mode & 1:
        return rest
    split = rest.find(b"\r\n\r\n")
    if split < 0:
        return rest
    head, body = rest[: split + 4], rest[split + 4 :]
    encoded = base64.encodebytes(body).replace(b"\n", b"\r\n")
    return head + encoded


def _build_mime_unseal() -> Runner:
    """open_message on the whole KIM message, as the Clientmodul and ``message open`` call it."""
    opened = _caching_keys()
    trust = TrustStore(anchors=[keys().ca])

    def run(data: bytes) -> None:
        out = io.BytesIO()
        report = open_message(io.BytesIO(as_outer_mail(data)), out, keys=opened, trust=trust)
        if report.decryption_result != DECRYPTED and out.getvalue():
            raise Finding("open_message wrote an inner mail it did not decrypt")
        if report.decrypted and not report.integrity_results:
            raise Finding("open_message decrypted without an IntegrityCheckResult")
        report.lines()

    return run


_DER_TOKENS = (
    b"\x30\x80", b"\x00\x00", b"\x24\x80", b"\x04\x00", b"\x04\x81\xff",
    b"\x30\x84\x7f\xff\xff\xff",
    b"\x02\x01\x00", b"\x02\x81\x80", b"\x06\x00", b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01",
    b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x7f", b"\x06\x03\x2b\x65\x71", b"\x31\x00",
    b"\xa0\x80", b"\xa1\x00", b"\x17\x0d", b"\x18\x0f", b"\x05\x00", b"\x01\x01\xff",
    b"\x03\x01\x00", b"\x0c\x00", b"\x16\x01@", b"\r\n", b"\x1f\x81\x80\x00",
)  # fmt: skip
_MAIL_TOKENS = (
    b"\r\n", b"\r\n\r\n", b"\n", b": ", b"\r\n ", b"X-KOM-LE-Version: 1.0\r\n",
    b"Content-Type: application/pkcs7-mime; smime-type=authenticated-enveloped-data\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"From: <a@b>\r\n", b"To: <c@d>, <e@f>\r\n",
    b"=?utf-8?b?", b"?=", b"boundary=", b"--",
)  # fmt: skip

TARGETS = [
    Target(
        "cms_signed", "SignedDataReader: parse and verify (signer certificate inside)",
        (CmsError,), _build_cms_signed, max_len=64 * 1024, dictionary=_DER_TOKENS,
    ),
    Target(
        "cms_enveloped", "AuthEnvelopedReader: recipient infos, unwrap, AES-GCM, tag",
        (CmsError,), _build_cms_enveloped, max_len=64 * 1024, dictionary=_DER_TOKENS,
    ),
    Target(
        "recipient_emails", "decode_recipient_emails of the KIM attribute",
        (CmsError,), _build_recipient_emails, max_len=16 * 1024, dictionary=_DER_TOKENS,
    ),
    Target(
        "cms_repair", "repair_signed_data: undo CRLF canonicalisation (digest §2.10)",
        (), _build_cms_repair, max_len=16 * 1024, dictionary=_DER_TOKENS,
    ),
    Target(
        "mime_unseal", "open_message: outer mail, decrypt, verify, compare headers",
        (), _build_mime_unseal, max_len=64 * 1024, dictionary=_MAIL_TOKENS + _DER_TOKENS,
    ),
]  # fmt: skip
