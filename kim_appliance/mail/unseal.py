"""Opening: a KIM message becomes the inner mail again (decrypt, verify, compare headers).

The receive path of digest §2.1 in reverse: check the outer header (§2.2), stream the base64
body into the AuthEnvelopedData reader (§2.6), unwrap the content key with the reader's own key
operations (KOM-LE-A_2042, A_2045), verify the GCM tag before any plaintext is released, read
the signed entity (forgiving a SignedData damaged by CRLF canonicalisation, digest §2.10),
verify the signature (§2.5, KOM-LE-A_2048) and the signer's certificate path, compare the signed
and the unprotected recipient-emails (KOM-LE-A_2127) and the outer and inner headers.

The outcome is reported in the Clientmodul's terms (digest §1.6): an ``X-KIM-DecryptionResult``
(00 decrypted, 01 key not available, 02 wrong format) and one or more
``X-KIM-IntegrityCheckResult`` values (01 valid ... 09). The inner mail goes to ``out`` only once
it has been decrypted and authenticated; the caller decides what to do with a mail whose
signature or header check failed (the CLI exits 3, the Clientmodul builds an error mail).
This module never touches a private key: it uses :class:`KeyOperations` (a card unwraps the
content key, the content streams) or a :class:`DocumentDecryptor` (a Konnektor's DecryptDocument
decrypts the whole AuthEnvelopedData, digest §1.8).
"""

from __future__ import annotations

import datetime as dt
import io
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, cast, runtime_checkable

from kim_appliance import _native
from kim_appliance.cms.enveloped import AuthEnvelopedReader, find_recipient
from kim_appliance.cms.errors import (
    PARSER_FAILURES,
    CmsError,
    NoMatchingRecipientError,
    SignatureError,
)
from kim_appliance.cms.keys import KeyOperations
from kim_appliance.cms.oids import RFC822_CONTENT_PREFIX
from kim_appliance.cms.recipient_emails import decode_recipient_emails
from kim_appliance.cms.repair import repair_signed_data
from kim_appliance.cms.signed import SignatureReport, SignedDataReader, read_signed_data
from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import HeaderBlock, read_header_block
from kim_appliance.mail.outer import check_outer_header, check_signed_entity_header
from kim_appliance.pki import CertProfile, PathValidationError, Purpose
from kim_appliance.pki.validate import CertificateValidator

READ_SIZE = 1024 * 1024
#: Work a damaged signed entity may cause before it counts as unrepairable (digest §2.10):
#: gematik's sample repairs at its 7th candidate in about 30 ms; fuzzing found entities with
#: thousands of candidates costing seconds (issue 11). The candidate count is the bound; the
#: time is a safety net for large entities, never reached by an honest one.
REPAIR_CANDIDATES = 16
REPAIR_SECONDS = 1.0
#: bytes of eContent kept in memory before the spool moves to a nameless file on disk
SPOOL_IN_MEMORY = 1024 * 1024

# X-KIM-DecryptionResult (digest §1.6, Tab_Fehlertext_Entschl)
DECRYPTED = "00"
KEY_NOT_AVAILABLE = "01"
WRONG_FORMAT = "02"
# X-KIM-IntegrityCheckResult (digest §1.6, Tab_Verm_Sig_Prüf)
VALID = "01"
MANIPULATED = "02"
NO_SIGNATURE = "03"
WRONG_SIGNATURE_FORMAT = "04"
PATH_NOT_VALIDATABLE = "05"
UNEXPECTED = "06"
#: INCONCLUSIVE / 4264, "maths OK, certificate status unknown": a path without CRLs, and also
#: no trust anchors at all, so a signer that was not checked is never reported VALID (issue 15)
SIGNER_NOT_CHECKED = "07"
HEADERS_DIFFER = "08"
RECIPIENT_EMAILS_DIFFER = "09"

#: Headers whose addresses must agree between outer and inner mail (IntegrityCheckResult 08).
COMPARED_HEADERS = ("From", "Sender", "Reply-To", "To", "Cc")


@runtime_checkable
class DocumentDecryptor(Protocol):
    """Decrypts a whole AuthEnvelopedData at once, as a Konnektor's DecryptDocument does: returns
    the plaintext (the signed entity). Raises NoMatchingRecipientError when none of its keys is
    a recipient, CmsError when the document is malformed or its tag does not verify; anything
    else (a Konnektor's refusal, no answer) propagates. ``max_document_size``: the largest
    AuthEnvelopedData it takes (a Konnektor: just under 25 MiB per operation, digest §1.8)."""

    @property
    def max_document_size(self) -> int: ...

    def decrypt_document(self, auth_enveloped_data: bytes | bytearray) -> bytes: ...


@dataclass
class OpenReport:
    """What :func:`open_message` found; ``lines()`` is the CLI's report."""

    decryption_result: str = WRONG_FORMAT
    integrity_results: list[str] = field(default_factory=list)
    recipient_infos: list[str] = field(default_factory=list)
    used_recipient: str | None = None
    content_algorithm: str | None = None
    signer: str | None = None
    signature_algorithm: str | None = None
    signing_time: dt.datetime | None = None
    repaired_crlf: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def decrypted(self) -> bool:
        return self.decryption_result == DECRYPTED

    @property
    def verified(self) -> bool:
        return self.decrypted and self.integrity_results == [VALID]

    @property
    def exit_code(self) -> int:
        """The CLI contract: 0 decrypted and verified, 2 not decrypted, 3 verification failed
        or not done (a signer that was not checked is not verified)."""
        if not self.decrypted:
            return 2
        return 0 if self.verified else 3

    def lines(self) -> list[str]:
        out = [f"recipient info: {info}" for info in self.recipient_infos]
        if self.used_recipient:
            out.append(f"decrypted with: {self.used_recipient}")
        if self.content_algorithm:
            out.append(f"content encryption: {self.content_algorithm}")
        if self.signer:
            out.append(f"signer: {self.signer}")
        if self.signature_algorithm:
            out.append(f"signature: {self.signature_algorithm}")
        if self.signing_time:
            out.append(f"signing time: {self.signing_time.isoformat()}")
        if self.repaired_crlf:
            out.append("note: the signed entity was CRLF-canonicalised; repaired before verifying")
        out.extend(f"note: {n}" for n in self.notes)
        out.extend(f"problem: {p}" for p in self.problems)
        out.append(f"X-KIM-DecryptionResult: {self.decryption_result}")
        out.extend(f"X-KIM-IntegrityCheckResult: {r}" for r in self.integrity_results)
        verdict = {0: "decrypted and verified", 2: "NOT decrypted", 3: "verification FAILED"}
        if self.decrypted and self.integrity_results == [SIGNER_NOT_CHECKED]:
            verdict[3] = "decrypted, signature verifies, signer's certificate NOT fully checked"
        out.append(f"result: {verdict[self.exit_code]}")
        return out


def open_message(
    outer: BinaryIO,
    out: BinaryIO,
    *,
    keys: Sequence[KeyOperations] | DocumentDecryptor,
    trust: CertificateValidator | None = None,
    at: dt.datetime | None = None,
    spool_dir: str | None = None,
) -> OpenReport:
    """Decrypt and verify the KIM message read from ``outer``; write the inner mail to ``out``.

    The inner mail is written when it was decrypted and authenticated (the GCM tag verified),
    also when the signature or header check then fails: the report says so, and callers must
    look at ``report.verified``. Nothing is written when decryption fails.

    ``keys`` are the card's keys, or a :class:`DocumentDecryptor` that decrypts the whole
    AuthEnvelopedData; ``trust`` checks the signer's certificate (a TrustStore, or the
    Konnektor's VerifyCertificate).

    Error handling: whatever the message holds, the answer is a report (DecryptionResult 01/02,
    IntegrityCheckResult 02-09); the only exceptions are those of ``keys`` and ``trust``
    themselves (a card's or a Konnektor's refusal, no answer) and I/O errors of ``out`` or the
    spool (issue 11: any other exception here blocked a mailbox).
    """
    report = OpenReport()
    try:
        outer_header, body_start = read_header_block(outer)
        check_outer_header(outer_header)
    except MailFormatError as exc:
        report.problems.append(str(exc))
        return report
    try:
        if isinstance(keys, DocumentDecryptor):
            entity = _decrypt_document(outer, body_start, keys, report)
        else:
            entity = _decrypt(outer, body_start, keys, report, spool_dir)
    except (NoMatchingRecipientError, _DocumentTooLarge) as exc:
        report.decryption_result = KEY_NOT_AVAILABLE
        report.problems.append(str(exc))
        return report
    except (CmsError, ValueError) as exc:  # native BER/base64/GCM errors are ValueErrors
        report.decryption_result = WRONG_FORMAT
        report.problems.append(f"cannot decrypt: {exc}")
        return report
    report.decryption_result = DECRYPTED
    # a small eContent stays in memory: a file created and deleted per message cost more
    # than the message (issue 7); a large one moves to a nameless file at 1 MiB
    with entity.plaintext, _spool(spool_dir) as econtent:
        signature = _verify_entity(entity.plaintext, econtent, report)
        if signature is None:
            # A_23165: the decrypted original goes along with the integrity error mail: the
            # eContent if it was read whole, else the decrypted signed entity as it is
            if econtent.tell():
                _copy_inner(econtent, out)
            else:
                entity.plaintext.seek(0)
                shutil.copyfileobj(entity.plaintext, out, READ_SIZE)
            return report
        _check_signer(signature, trust, at, report)
        _compare_recipient_emails(signature.recipient_emails, entity.recipient_emails, report)
        if not _skip_prefix(econtent):
            report.notes.append("eContent does not start with Content-Type: message/rfc822")
        inner_start = econtent.tell()
        try:
            inner_header, _ = read_header_block(econtent)
            _compare_headers(outer_header, inner_header, report)
        except MailFormatError as exc:
            report.problems.append(f"inner mail: {exc}")
            report.integrity_results.append(UNEXPECTED)
        econtent.seek(inner_start)
        shutil.copyfileobj(econtent, out, READ_SIZE)
    if not report.integrity_results:
        report.integrity_results.append(VALID)
    return report


def _skip_prefix(econtent: BinaryIO) -> bool:
    """Position ``econtent`` after ``Content-Type: message/rfc822`` CRLF CRLF (KOM-LE-A_2097),
    or at its start when it does not begin with that; True if it did."""
    econtent.seek(0)
    if econtent.read(len(RFC822_CONTENT_PREFIX)) == RFC822_CONTENT_PREFIX:
        return True
    econtent.seek(0)
    return False


def _copy_inner(econtent: BinaryIO, out: BinaryIO) -> None:
    _skip_prefix(econtent)
    shutil.copyfileobj(econtent, out, READ_SIZE)


@dataclass
class _Decrypted:
    plaintext: _native.Plaintext | io.BytesIO
    recipient_emails: bytes | None


def _decrypt(
    outer: BinaryIO,
    body_start: bytes,
    keys: Sequence[KeyOperations],
    report: OpenReport,
    spool_dir: str | None,
) -> _Decrypted:
    decoder = _native.Base64Decoder()
    reader = AuthEnvelopedReader(spool_dir=spool_dir)
    keyed = False

    def unwrap() -> None:
        # the recipientInfos precede the content: unwrap as soon as they are parsed, so that the
        # content is decrypted while it streams in (spooled, released only after the tag)
        nonlocal keyed
        infos = reader.recipient_infos
        if keyed or infos is None:
            return
        report.recipient_infos = [
            f"{i.kind} {i.key_encryption_algorithm} issuer={i.issuer.human_friendly} "
            f"serial={i.serial:X}"
            for i in infos
        ]
        info, key = find_recipient(infos, keys)
        report.used_recipient = (
            f"{key.certificate.subject.rfc4514_string()} (serial {info.serial:X})"
        )
        reader.set_content_key(info.unwrap(key))
        keyed = True

    data = body_start
    while data:
        reader.feed(decoder.update(data))
        unwrap()
        data = outer.read(READ_SIZE)
    reader.feed(decoder.finalize())
    reader.feed_eof()
    unwrap()
    if not keyed:
        raise CmsError("AuthEnvelopedData.recipientInfos", "missing or incomplete")
    plaintext = reader.finish()
    report.content_algorithm = "AES-256-GCM (tag verified)"
    return _Decrypted(plaintext, reader.recipient_emails)


def _decrypt_document(
    outer: BinaryIO, body_start: bytes, decryptor: DocumentDecryptor, report: OpenReport
) -> _Decrypted:
    """The whole AuthEnvelopedData to ``decryptor`` (at most its ``max_document_size``); its
    structure is read here as well, for the report and the unprotected recipient-emails."""
    decoder = _native.Base64Decoder()
    reader = AuthEnvelopedReader(discard_content=True)
    document = bytearray()
    data = body_start
    while data:
        piece = decoder.update(data)
        document += piece
        reader.feed(piece)
        if len(document) > decryptor.max_document_size:
            raise _DocumentTooLarge(len(document), decryptor.max_document_size)
        data = outer.read(READ_SIZE)
    piece = decoder.finalize()
    document += piece
    reader.feed(piece)
    reader.feed_eof()
    if len(document) > decryptor.max_document_size:
        raise _DocumentTooLarge(len(document), decryptor.max_document_size)
    infos = reader.recipient_infos or []
    report.recipient_infos = [
        f"{i.kind} {i.key_encryption_algorithm} issuer={i.issuer.human_friendly} "
        f"serial={i.serial:X}"
        for i in infos
    ]
    plaintext = decryptor.decrypt_document(document)
    report.used_recipient = "the Konnektor's DecryptDocument"
    report.content_algorithm = "AES-256-GCM (tag verified by the Konnektor)"
    return _Decrypted(io.BytesIO(plaintext), reader.recipient_emails)


class _DocumentTooLarge(Exception):
    """The message is larger than the :class:`DocumentDecryptor` takes (digest §1.8: just under
    25 MiB per Konnektor operation): the key is not available for it (DecryptionResult 01)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the AuthEnvelopedData has more than {limit} bytes ({size} read so far): the "
            f"Konnektor decrypts at most {limit} bytes per operation (digest §1.8)"
        )
        self.size = size
        self.limit = limit


def _spool(spool_dir: str | None) -> BinaryIO:
    """A read/write spool in memory up to SPOOL_IN_MEMORY bytes, then a nameless file."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, mode="w+b", dir=spool_dir)  # noqa: SIM115
    return cast(BinaryIO, spool)


def _verify_entity(
    plaintext: _native.Plaintext | io.BytesIO, econtent: BinaryIO, report: OpenReport
) -> SignatureReport | None:
    """Read the signed entity from ``plaintext``; eContent goes to ``econtent``."""
    try:
        entity_header, rest = read_header_block(plaintext)  # type: ignore[arg-type]
        check_signed_entity_header(entity_header)
    except MailFormatError as exc:
        report.problems.append(str(exc))
        report.integrity_results.append(NO_SIGNATURE)
        return None
    der_start = plaintext.tell() - len(rest)

    def sink(data: bytes) -> None:
        econtent.write(data)

    reader = SignedDataReader(sink)
    try:
        data = rest
        while data:
            reader.feed(data)
            data = plaintext.read(READ_SIZE)
        reader.feed_eof()
        return reader.verify()
    except SignatureError as exc:
        report.problems.append(f"signature: {exc}")
        report.integrity_results.append(MANIPULATED)
        return None
    except CmsError as exc:
        first_error = exc
        if not reader.content_complete:  # a part of the content is no original to show
            econtent.seek(0)
            econtent.truncate()
    # digest §2.10: a signed entity damaged by CRLF canonicalisation (gematik's own sample)
    plaintext.seek(der_start)
    damaged = plaintext.read()
    repaired = repair_signed_data(
        damaged,
        verify=candidate_verifies,
        max_candidates=REPAIR_CANDIDATES,
        max_seconds=REPAIR_SECONDS,
    )
    if repaired is None:
        report.problems.append(f"signed data: {first_error}")
        report.integrity_results.append(WRONG_SIGNATURE_FORMAT)
        return None
    report.repaired_crlf = True
    econtent.seek(0)
    econtent.truncate()
    content, signature = read_signed_data(repaired)
    econtent.write(content)
    return signature


def candidate_verifies(candidate: bytes) -> bool:
    """Whether a repair candidate is the signed entity: the cheap messageDigest test first,
    then the full verification."""
    reader = SignedDataReader(lambda _: None)
    try:
        reader.feed(candidate)
        reader.feed_eof()
        if reader.digest_mismatch():
            return False
        reader.verify()
    except CmsError:
        return False
    return True


def _check_signer(
    signature: SignatureReport,
    trust: CertificateValidator | None,
    at: dt.datetime | None,
    report: OpenReport,
) -> None:
    cert = signature.signer_certificate
    report.signer = f"{cert.subject.rfc4514_string()} (serial {cert.serial_number:X})"
    report.signature_algorithm = (
        f"{signature.signature_algorithm} with {signature.digest_algorithm}"
    )
    report.signing_time = signature.signing_time
    if trust is None:
        # the signature verifies, but nobody checked whose key made it: Tab_Verm_Sig_Prüf's
        # INCONCLUSIVE "certificate status unknown" (07), never VALID (digest §1.6)
        report.problems.append("signer certificate NOT checked: no trust anchors given")
        report.integrity_results.append(SIGNER_NOT_CHECKED)
        return
    try:
        # the signer must be the SM-B's C.HCI.OSIG (KOM-LE-A_2129)
        path = trust.validate(
            cert,
            purpose=Purpose.SIGNATURE,
            profile=CertProfile.C_HCI_OSIG,
            # the Konnektor checks a nonQES signature at the current time, not the signing
            # time (which the sender controls); ``at`` lets tests and old messages move it
            at=at,
        )
    except PathValidationError as exc:
        report.problems.append(f"signer certificate: {exc}")
        report.integrity_results.append(PATH_NOT_VALIDATABLE)
        return
    except PARSER_FAILURES as exc:
        # a sender's certificate that the path checks cannot even read (an extension
        # cryptography refuses lazily, an unknown key type): no path can be validated
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        report.problems.append(f"signer certificate: cannot be checked ({detail})")
        report.integrity_results.append(PATH_NOT_VALIDATABLE)
        return
    unchecked = [w for w in path.warnings if "not checked" in w]
    if unchecked:
        # a path without CRLs: the signer's status is unknown, as the Konnektor answers
        # INCONCLUSIVE/4264 then (digest §1.6, IntegrityCheckResult 07), never VALID
        report.problems.append(f"signer certificate: {unchecked[0]}")
        report.integrity_results.append(SIGNER_NOT_CHECKED)


def _compare_recipient_emails(signed: bytes, unprotected: bytes | None, report: OpenReport) -> None:
    """KOM-LE-A_2127: the signed and the unprotected recipient-emails must be identical."""
    if unprotected is None:
        report.problems.append("AuthEnvelopedData has no unprotected recipient-emails (A_2107)")
        report.integrity_results.append(RECIPIENT_EMAILS_DIFFER)
        return
    if signed == unprotected:
        return
    try:
        same = decode_recipient_emails(signed) == decode_recipient_emails(unprotected)
    except CmsError:
        same = False
    if not same:
        report.problems.append("signed and unprotected recipient-emails differ (A_2127)")
        report.integrity_results.append(RECIPIENT_EMAILS_DIFFER)


def _compare_headers(outer: HeaderBlock, inner: HeaderBlock, report: OpenReport) -> None:
    """Outer and inner From/Sender/Reply-To/To/Cc must name the same addresses (result 08)."""
    for name in COMPARED_HEADERS:
        outer_set = {a.lower() for a in outer.addresses(name)}
        inner_set = {a.lower() for a in inner.addresses(name)}
        if outer_set != inner_set:
            report.problems.append(
                f"{name} differs: outer {sorted(outer_set)} vs inner {sorted(inner_set)}"
            )
            if HEADERS_DIFFER not in report.integrity_results:
                report.integrity_results.append(HEADERS_DIFFER)
    outer_id, inner_id = outer.get("Message-ID"), inner.get("Message-ID")
    if outer_id and inner_id and outer_id != inner_id:
        report.notes.append(f"Message-ID differs: outer {outer_id} vs inner {inner_id}")
