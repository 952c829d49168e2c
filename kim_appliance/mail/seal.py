"""Sealing: an inner mail becomes a KIM message (sign, then encrypt, then the outer mail).

The layering is digest §2.1 (KOM-LE-A_2095/2096): eContent = ``Content-Type: message/rfc822``
CRLF CRLF + the inner mail (KOM-LE-A_2097); SignedData over it (digest §2.5); the signed entity
(MIME header + binary DER, never line-end canonicalised) encrypted as AuthEnvelopedData for every
recipient certificate and the sender's own (KOM-LE-A_2111-01), with recipient-emails signed and
unprotected (KOM-LE-A_2027, A_2114-01, A_2127); then the outer mail of digest §2.2 with the CMS
in base64 lines of 76 characters.

Resource handling: the inner mail is read twice (a hashing pass for the SignedData, then the
encryption pass), so a non-seekable input is first spooled to an anonymous temporary file. Every
stage streams in chunks of :data:`READ_SIZE`; memory stays a few MB whatever the message size.
This module never touches a private key: signing goes through :class:`KeyOperations` (a card
signs the digest, the content streams) or a :class:`DocumentSigner` (a Konnektor's SignDocument
signs the whole eContent and returns the SignedData, digest §1.8).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, runtime_checkable

from cryptography import x509

from kim_appliance import _native
from kim_appliance.cms.enveloped import AuthEnvelopedWriter, EncryptionRecipient
from kim_appliance.cms.keys import KeyOperations
from kim_appliance.cms.oids import RFC822_CONTENT_PREFIX
from kim_appliance.cms.recipient_emails import RecipientEmail, encode_recipient_emails
from kim_appliance.cms.signed import SignedDataWriter
from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import HeaderBlock, parse_header_block, read_header_block
from kim_appliance.mail.outer import SIGNED_ENTITY_HEADER, build_outer_header

READ_SIZE = 1024 * 1024
#: Size of the primitive OCTET STRING segments of the encrypted content (digest §2.6).
CONTENT_CHUNK_SIZE = 65536


@runtime_checkable
class DocumentSigner(Protocol):
    """Signs a whole eContent at once, as a Konnektor's SignDocument does (KOM-LE-A_2190):
    returns the DER SignedData with the eContent included and ``recipient_emails`` (the DER
    Attribute, digest §2.7) among the signed attributes."""

    def sign_document(self, econtent: bytes, recipient_emails: bytes) -> bytes: ...


@dataclass(frozen=True)
class Certified:
    """A KIM address with one of its encryption certificates (C.HCI.ENC or C.HP.ENC)."""

    address: str
    certificate: x509.Certificate

    @property
    def algorithm(self) -> str:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        key = self.certificate.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            return f"RSA-{key.key_size}"
        if isinstance(key, ec.EllipticCurvePublicKey):
            return key.curve.name
        return type(key).__name__


@dataclass
class SealReport:
    """What :func:`seal` did, for the CLI's report and the Clientmodul's log."""

    message_id: str
    recipients: list[Certified]
    added_headers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    outer_size: int = 0


def seal(
    inner: BinaryIO,
    out: BinaryIO,
    *,
    signer: KeyOperations | DocumentSigner,
    sender: Sequence[Certified],
    recipients: Sequence[Certified],
    signing_time: dt.datetime | None = None,
    extra_headers: tuple[tuple[str, str], ...] = (),
    spool_dir: str | None = None,
) -> SealReport:
    """Read the inner mail from ``inner`` and write the KIM message to ``out``.

    ``sender`` are the sender's own encryption certificates (the sender can read what it sent,
    KOM-LE-A_2111-01); ``recipients`` every recipient certificate (a recipient with RSA and ECC
    certificates appears twice). Raises MailFormatError for an inner mail KIM cannot carry.
    A :class:`DocumentSigner` gets the eContent in one piece (a Konnektor signs at most just
    under 25 MiB, digest §1.8; larger mails go through the KAS); its errors propagate.
    """
    if not recipients:
        raise MailFormatError("no recipient to encrypt for")
    if not sender:
        raise MailFormatError("no encryption certificate of the sender (KOM-LE-A_2111-01)")
    with _seekable(inner, spool_dir) as source:
        header, _ = read_header_block(source)
        added, message_id = _missing_fields(header)
        report = SealReport(message_id=message_id, recipients=[*recipients, *sender])
        report.added_headers = [line.split(":", 1)[0] for line in added]
        report.warnings = _recipient_warnings(header, recipients, sender)
        added_bytes = "".join(added).encode("ascii")
        # the header as it will be signed: the added fields, then the original ones
        inner_header = HeaderBlock(parse_header_block(added_bytes).fields + header.fields)

        def econtent() -> Iterator[bytes]:
            yield RFC822_CONTENT_PREFIX + added_bytes
            source.seek(0)
            while chunk := source.read(READ_SIZE):
                yield chunk

        entries = [
            RecipientEmail.for_certificate(r.address, r.certificate) for r in report.recipients
        ]
        recipient_emails = encode_recipient_emails(entries)
        signed_entity = (
            _signed_by_document(signer, econtent, recipient_emails)
            if isinstance(signer, DocumentSigner)
            else _signed_by_key(signer, econtent, recipient_emails, signing_time)
        )
        enveloped = AuthEnvelopedWriter(
            [EncryptionRecipient(r.address, r.certificate) for r in report.recipients],
            unauth_recipient_emails=recipient_emails,
            chunk_size=CONTENT_CHUNK_SIZE,
        )
        encoder = _native.Base64Encoder(76)
        written = 0

        def emit(data: bytes) -> None:
            nonlocal written
            if data:
                out.write(data)
                written += len(data)

        emit(build_outer_header(inner_header, extra=extra_headers))
        emit(encoder.update(enveloped.header()))
        emit(encoder.update(enveloped.update(SIGNED_ENTITY_HEADER)))
        for piece in signed_entity:
            emit(encoder.update(enveloped.update(piece)))
        emit(encoder.update(enveloped.finalize()))
        emit(encoder.finalize())
        report.outer_size = written
        return report


def _signed_by_key(
    signer: KeyOperations,
    econtent: Callable[[], Iterator[bytes]],
    recipient_emails: bytes,
    signing_time: dt.datetime | None,
) -> Iterator[bytes]:
    """The SignedData in pieces, the content streamed: pass 1 hashes eContent (the SignedData
    is DER with definite lengths), the key signs the digest, pass 2 yields the content."""
    hasher = _native.Sha256()
    length = 0
    for piece in econtent():
        hasher.update(piece)
        length += len(piece)
    signed = SignedDataWriter(
        signer,
        content_length=length,
        content_digest=hasher.finalize(),
        recipient_emails=recipient_emails,
        signing_time=signing_time,
    )
    yield signed.prefix()
    yield from econtent()
    yield signed.suffix()


def _signed_by_document(
    signer: DocumentSigner, econtent: Callable[[], Iterator[bytes]], recipient_emails: bytes
) -> Iterator[bytes]:
    """The SignedData the signer makes of the whole eContent, in :data:`READ_SIZE` pieces."""
    signed = signer.sign_document(b"".join(econtent()), recipient_emails)
    view = memoryview(signed)
    for start in range(0, len(view), READ_SIZE):
        yield bytes(view[start : start + READ_SIZE])


def _missing_fields(header: HeaderBlock) -> tuple[list[str], str]:
    """Fields an MSA adds when the PS left them out: Date and Message-ID (RFC 5322 §3.6).

    The Message-ID must be the same inside and outside (KOM-LE-A_2101-01), so it is added to the
    inner mail before signing. Per the ILF-PS it carries no FQDN or personal data: a UUID.
    """
    added: list[str] = []
    if header.get("From") is None:
        raise MailFormatError("the inner mail has no From header")
    if header.get("Date") is None:
        added.append(f"Date: {email.utils.formatdate(localtime=True)}\r\n")
    message_id = header.get("Message-ID")
    if message_id is None:
        message_id = f"<{uuid.uuid4()}@kim>"
        added.append(f"Message-ID: {message_id}\r\n")
    return added, message_id


def _recipient_warnings(
    header: HeaderBlock, recipients: Sequence[Certified], sender: Sequence[Certified]
) -> list[str]:
    warnings: list[str] = []
    listed = {a.lower() for a in header.addresses("To", "Cc", "Bcc")}
    for address in sorted({r.address.lower() for r in recipients}):
        if address not in listed:
            warnings.append(f"{address} is encrypted for but not in To/Cc/Bcc of the mail")
    from_addresses = {a.lower() for a in header.addresses("From")}
    for address in sorted({s.address.lower() for s in sender}):
        if address not in from_addresses:
            warnings.append(f"sender certificate address {address} is not the From address")
    return warnings


class _seekable:
    """Context manager giving a seekable binary file: the input itself, or a spooled copy."""

    def __init__(self, stream: BinaryIO, spool_dir: str | None) -> None:
        self._stream = stream
        self._spool_dir = spool_dir
        self._copy: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        try:
            if self._stream.seekable():
                self._stream.seek(0)
                return self._stream
        except OSError:
            pass
        copy: BinaryIO = tempfile.TemporaryFile(dir=self._spool_dir)
        copy_stream(self._stream.read, copy.write)
        copy.seek(0)
        self._copy = copy
        return copy

    def __exit__(self, *exc: object) -> None:
        if self._copy is not None:
            self._copy.close()


def copy_stream(read: Callable[[int], bytes], write: Callable[[bytes], object]) -> int:
    total = 0
    while chunk := read(READ_SIZE):
        write(chunk)
        total += len(chunk)
    return total
