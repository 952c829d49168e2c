"""The receive pipeline: what the Clientmodul makes of one message fetched with RETR.

Digest §1.5 PROCESS, in order:

1. no ``X-KOM-LE-Version`` in the outer header: the message (a DSN, an absence note, an error
   mail) goes to the PVS unchanged (A_21390);
2. a version this Clientmodul does not support: the error mail of A_21391-02 (4008) with the
   original attached;
3. the key: the unprotected recipient-emails entries of the fetching account, the card holding
   those ENC certificates, only that user's keys (:mod:`kim_appliance.clientmodul.keys`,
   KOM-LE-A_2043/2044/2045/2059/2060/2061); failures give the decryption error mail
   (KOM-LE-A_2046, A_2047-01) with the still-encrypted message attached: 01/4009 key not
   available (no entry, card removed, PIN not verified), 02/4010 wrong format, 03/4011
   Konnektor not reachable;
4. decryption and verification with :func:`kim_appliance.mail.unseal.open_message` (the card
   unwraps the content key and the message streams, or the Konnektor's DecryptDocument
   decrypts it whole: the Konnektor port's choice; GCM tag, signature, the signer's path
   checked through the Konnektor port (trust store or VerifyCertificate), signed vs
   unprotected recipient-emails, outer vs inner headers; IntegrityCheckResult 01-09);
5. integrity result 01 only: the inner mail with Return-Path/Received carried over, the status
   headers ``X-KIM-DecryptionResult: 00`` / ``X-KIM-IntegrityCheckResult`` and the notes
   (KOM-LE-A_2179-01, A_2050, A_21236, A_20628; :mod:`kim_appliance.mail.notes`); any other
   result: the integrity error mail with the *decrypted* original attached (A_23165).

The result is an anonymous spool file whose exact size LIST/STAT report. Blocking from start to
end (card operations, CPU work, disk): the POP3 session runs it in a worker thread under
``ctx.pipeline_limiter``. This module never talks to the network and never keeps a plaintext
anywhere but in anonymous temporary files.

Large mails (digest §1.5 step 5, :mod:`.large_mail`): when the verified inner mail is an
``x-kas`` part, the fetching account must accept large mails (``1.5+`` in the VZD, A_23512;
otherwise the account-settings error mail with the encrypted original); the blob is fetched
from the sender's KAS through ``fetch_kas`` (the POP3 session runs the download in the event
loop), decrypted, its hash checked, and the recovered client mail is delivered with the status
headers. A failed download is the A_19370 error mail with 4006 (4013 for a 429), a blob that
does not decrypt 4007, a hash mismatch 4012 (digest §1.6), the encrypted original attached.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Final, Literal, cast

from kim_appliance.clientmodul import large_mail
from kim_appliance.clientmodul.context import ClientmodulContext
from kim_appliance.clientmodul.kas_client import KasError
from kim_appliance.clientmodul.keys import (
    KEY_NOT_AVAILABLE,
    KONNEKTOR_UNREACHABLE,
    WRONG_FORMAT,
    DecryptionKeyFinder,
    KeySelectionError,
    scan_recipient_emails,
)
from kim_appliance.clientmodul.ports import (
    DirectoryUnreachable,
    KonnektorFault,
    KonnektorUnreachable,
)
from kim_appliance.clientmodul.spool import spool_file
from kim_appliance.clientmodul.username import CmLogin
from kim_appliance.clientmodul.versions import accepts_large_mails
from kim_appliance.mail import errormail, notes
from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import HeaderBlock, read_header_block
from kim_appliance.mail.unseal import DECRYPTED, VALID, open_message

#: X-KOM-LE-Version values this Clientmodul reads (KOM-LE-A_2100-02: 1.0, and 1.5 for KAS).
SUPPORTED_VERSIONS: Final = ("1.0", "1.5")
#: X-KIM-Fehlermeldung per X-KIM-DecryptionResult (digest §1.6, §1.7)
_ERROR_CODES: Final = {"01": "4009", "02": "4010", "03": "4011"}
#: an address in a From or Return-Path value (for the trace; the header's own checks are
#: the unseal step's)
_ADDRESS: Final = re.compile(r"[!#-'*+\-/-9=?A-Z^-~.]+@[A-Za-z0-9.-]+")

Kind = Literal[
    "passthrough",
    "delivered",
    "decryption-error",
    "integrity-error",
    "version-error",
    "kas-error",
    "account-settings-error",
]
#: (link, the fetching account, out) -> the KAS blob appended to ``out``; raises KasError
KasFetcher = Callable[[str, str, BinaryIO], None]


@dataclass
class ReceivedMessage:
    """What RETR returns for one message: ``file`` (read from offset 0) of ``size`` octets."""

    file: BinaryIO
    size: int
    kind: Kind
    decryption_result: str | None = None
    integrity_results: list[str] = field(default_factory=list)
    error_codes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: the outer message's Message-ID and From (for the message trace; None if it has none)
    message_id: str | None = None
    sender: str | None = None

    def summary(self) -> str:
        parts = [f"{self.kind}, {self.size} octets"]
        if self.decryption_result is not None:
            parts.append(f"DecryptionResult {self.decryption_result}")
        if self.integrity_results:
            parts.append(f"IntegrityCheckResult {'/'.join(self.integrity_results)}")
        if self.error_codes:
            parts.append(f"Fehlermeldung {'/'.join(self.error_codes)}")
        parts.extend(self.problems[:3])
        return "; ".join(parts)

    def close(self) -> None:
        self.file.close()


def process_message(
    raw: BinaryIO,
    *,
    login: CmLogin,
    finder: DecryptionKeyFinder,
    ctx: ClientmodulContext,
    fetch_kas: KasFetcher | None = None,
) -> ReceivedMessage:
    """Run the receive pipeline on the outer message in ``raw`` (seekable; taken over: it is
    closed, or returned as the result's file, in every case). ``fetch_kas`` downloads the
    blob of a large mail (None: a large mail gets the 4006 error mail)."""
    spool_dir = str(ctx.spool_dir)
    try:
        raw.seek(0)
        try:
            header, _ = read_header_block(raw)
        except MailFormatError:
            return _passthrough(raw)  # not a mail we can read: not ours to change (A_21390)
        version = header.get("X-KOM-LE-Version")
        if version is None:
            return _named(_passthrough(raw), header)  # A_21390
        try:
            return _named(
                _process_kim_message(
                    raw, header, version, login=login, finder=finder, ctx=ctx, fetch_kas=fetch_kas
                ),
                header,
            )
        except OSError:
            raise  # the spool's disk, not the message: a temporary error of this session
        except Exception as exc:
            # issue 11: a message that makes any step fail in a way nobody foresaw must still
            # arrive as an error mail (digest §1.7: 02/4010, the original attached), or it
            # would fail STAT/LIST/RETR of the whole mailbox on every fetch
            ctx.log.exception("receive pipeline failed on a message; delivering an error mail")
            reason = f"the message could not be read ({type(exc).__name__}: {exc})"
            return _named(
                _decryption_error(raw, header, WRONG_FORMAT[0], reason, spool_dir), header
            )
    except BaseException:
        raw.close()
        raise


def _process_kim_message(
    raw: BinaryIO,
    header: HeaderBlock,
    version: str,
    *,
    login: CmLogin,
    finder: DecryptionKeyFinder,
    ctx: ClientmodulContext,
    fetch_kas: KasFetcher | None,
) -> ReceivedMessage:
    """Steps 2-5 of the module docstring for a message with ``X-KOM-LE-Version``; ``raw``
    stays open when this raises (the caller then attaches it to an error mail)."""
    spool_dir = str(ctx.spool_dir)
    if not _supported(version):
        return _version_error(raw, header, version, spool_dir)
    context = login.context()
    try:
        raw.seek(0)
        entries = scan_recipient_emails(raw)
        owner = _owner(ctx, login.account)
        decryption = finder.decryption_for(context, login.account, entries, telematik_id=owner)
    except KeySelectionError as exc:
        return _decryption_error(raw, header, exc.decryption_result, exc.reason, spool_dir)
    with spool_file(spool_dir) as decrypted:
        raw.seek(0)
        try:
            report = open_message(
                raw,
                decrypted,
                keys=decryption,
                trust=ctx.konnektor.certificate_validator(context),
                spool_dir=spool_dir,
            )
        except KonnektorUnreachable as exc:
            # the card unwraps the content key (or DecryptDocument, VerifyCertificate): the
            # Konnektor went away meanwhile
            return _decryption_error(raw, header, KONNEKTOR_UNREACHABLE[0], str(exc), spool_dir)
        except KonnektorFault as exc:  # card pulled, PIN reset: key not available
            detail = f"Konnektor: {exc}"
            return _decryption_error(raw, header, KEY_NOT_AVAILABLE[0], detail, spool_dir)
        if report.decryption_result != DECRYPTED:
            reason = "; ".join(report.problems) or "cannot decrypt"
            result = report.decryption_result
            if result not in _ERROR_CODES:
                result = WRONG_FORMAT[0]
            return _decryption_error(raw, header, result, reason, spool_dir)
        integrity = list(report.integrity_results)
        if integrity == [VALID]:
            try:
                reference = large_mail.kas_reference(_rewound(decrypted))
            except large_mail.KasDataError as exc:
                return _kas_error(raw, header, exc.code, str(exc), spool_dir)
            if reference is not None:
                return _large_mail(
                    raw, header, reference, integrity, login, ctx, fetch_kas, spool_dir
                )
        received = ReceivedMessage(
            decrypted, 0, "delivered", DECRYPTED, integrity, problems=list(report.problems)
        )
        if integrity == [VALID]:
            delivered = _result(
                received,
                lambda out: notes.write_delivered_mail(
                    out,
                    _rewound(decrypted),
                    outer_header=header,
                    decryption_result=DECRYPTED,
                    integrity_results=integrity,
                ),
                spool_dir,
            )
            raw.close()
            return delivered
        # A_23165: a security violation; the decrypted original goes along
        received.kind = "integrity-error"
        integrity_error = _result(
            received,
            lambda out: errormail.write_integrity_error_mail(
                out,
                original_header=header,
                decrypted=_rewound(decrypted),
                integrity_results=integrity,
            ),
            spool_dir,
        )
        raw.close()
        return integrity_error


def _owner(ctx: ClientmodulContext, account: str) -> str | None:
    """The account's Telematik-ID in the VZD (None when it publishes none, A_24039, or when the
    VZD does not answer: then only the certificate decides, as before there was a VZD)."""
    try:
        return ctx.vzd.telematik_id(account)
    except DirectoryUnreachable as exc:
        ctx.log.warning("cm pop3: VZD not reachable, key chosen by certificate only: %s", exc)
        return None


def _large_mail(
    raw: BinaryIO,
    header: HeaderBlock,
    reference: large_mail.KasReference,
    integrity: list[str],
    login: CmLogin,
    ctx: ClientmodulContext,
    fetch_kas: KasFetcher | None,
    spool_dir: str,
) -> ReceivedMessage:
    """Digest §1.5 step 5: a verified x-kas message; ``raw`` is taken over."""
    try:
        own = ctx.vzd.version(login.account)
        if not accepts_large_mails(own):
            ctx.vzd.invalidate(login.account)  # A_23512 decides on the current entry
            own = ctx.vzd.version(login.account)
    except DirectoryUnreachable as exc:
        # the consent cannot be checked: nothing is downloaded; the encrypted original goes
        # along, so that the user can fetch it again later (A_19370)
        reason = f"the VZD does not answer, large-mail consent not checked (A_23512): {exc}"
        return _kas_error(raw, header, "4006", reason, spool_dir)
    if not accepts_large_mails(own):
        problem = f"{login.account} has KIM version {own}, large mails need 1.5+ (A_23512)"
        return _result(
            ReceivedMessage(
                raw, 0, "account-settings-error", DECRYPTED, integrity, problems=[problem]
            ),
            lambda out: errormail.write_account_settings_error_mail(
                out, original_header=header, original=_rewound(raw)
            ),
            spool_dir,
        )
    with tempfile.TemporaryFile(dir=spool_dir) as blob:
        try:
            if fetch_kas is None:
                raise KasError(None, "this Clientmodul session cannot reach a KAS")
            fetch_kas(reference.link, login.account, blob)
        except KasError as exc:
            # 429 -> 4013, anything else -> 4006 (digest §1.6, A_19370)
            code = "4013" if exc.status == 429 else "4006"
            return _kas_error(raw, header, code, str(exc), spool_dir)
        try:
            plaintext = large_mail.decrypt_blob(blob, reference, spool_dir)
        except large_mail.KasDataError as exc:
            return _kas_error(raw, header, exc.code, str(exc), spool_dir)
    with plaintext:
        received = ReceivedMessage(raw, 0, "delivered", DECRYPTED, integrity)
        return _result(
            received,
            lambda out: notes.write_delivered_mail(
                out,
                cast(BinaryIO, plaintext),
                outer_header=header,
                decryption_result=DECRYPTED,
                integrity_results=integrity,
            ),
            spool_dir,
        )


def _kas_error(
    raw: BinaryIO, header: HeaderBlock, code: str, reason: str, spool_dir: str
) -> ReceivedMessage:
    """A_19370: the KAS data could not be had (4006/4007/4012/4013); the encrypted original
    is attached, so that the user can forward it to themselves and try again."""
    return _result(
        ReceivedMessage(
            raw, 0, "kas-error", DECRYPTED, [VALID], error_codes=[code], problems=[reason]
        ),
        lambda out: errormail.write_kas_download_error_mail(
            out, original_header=header, original=_rewound(raw), code=code, detail=reason
        ),
        spool_dir,
    )


def _supported(version: str) -> bool:
    """``1.0`` and ``1.5`` (also written with a patch level such as ``1.5.2``)."""
    parts = version.strip().split(".")
    return ".".join(parts[:2]) in SUPPORTED_VERSIONS and all(p.isdigit() for p in parts)


def _rewound(stream: BinaryIO) -> BinaryIO:
    stream.seek(0)
    return stream


def _named(received: ReceivedMessage, header: HeaderBlock) -> ReceivedMessage:
    """``received`` with the outer header's Message-ID and sender (the message trace)."""
    received.message_id = (header.get("Message-ID") or "").strip() or None
    for name in ("Return-Path", "From"):
        match = _ADDRESS.search(header.get(name) or "")
        if match:
            received.sender = match.group(0)
            break
    return received


def _passthrough(raw: BinaryIO) -> ReceivedMessage:
    raw.seek(0, os.SEEK_END)
    _end_with_crlf(raw)
    return ReceivedMessage(raw, raw.tell(), "passthrough")


def _end_with_crlf(out: BinaryIO) -> None:
    """POP3 sends a message as lines: one without a final CRLF gets one on the wire, so the
    spool gets it too and LIST/STAT sizes match the octets of RETR (RFC 1939 §11)."""
    size = out.tell()
    if size == 0:
        return
    out.seek(size - min(size, 2))
    tail = out.read(2)
    out.seek(0, os.SEEK_END)
    if not tail.endswith(b"\r\n"):
        out.write(b"\n" if tail.endswith(b"\r") else b"\r\n")


def _result(
    received: ReceivedMessage, write: Callable[[BinaryIO], object], spool_dir: str
) -> ReceivedMessage:
    """Write the delivered or error mail with ``write(out)`` into a new spool file, which
    becomes ``received.file``; the file it was made from is closed (no longer needed)."""
    out = spool_file(spool_dir)
    try:
        write(out)
        out.seek(0, os.SEEK_END)
        _end_with_crlf(out)
        received.size = out.tell()
    except BaseException:
        out.close()
        raise
    received.file.close()
    received.file = out
    return received


def _version_error(
    raw: BinaryIO, header: HeaderBlock, version: str, spool_dir: str
) -> ReceivedMessage:
    """A_21391-02: an X-KOM-LE-Version we cannot read; code 4008, the original attached."""
    problem = f"X-KOM-LE-Version {version} is not supported (A_21391-02)"
    return _result(
        ReceivedMessage(raw, 0, "version-error", error_codes=["4008"], problems=[problem]),
        lambda out: errormail.write_version_error_mail(
            out,
            original_header=header,
            original=_rewound(raw),
            version=version,
            supported=SUPPORTED_VERSIONS,
        ),
        spool_dir,
    )


def _decryption_error(
    raw: BinaryIO, header: HeaderBlock, result: str, reason: str, spool_dir: str
) -> ReceivedMessage:
    """KOM-LE-A_2046: the still-encrypted message attached, DecryptionResult 01/02/03."""
    code = _ERROR_CODES[result]
    return _result(
        ReceivedMessage(raw, 0, "decryption-error", result, error_codes=[code], problems=[reason]),
        lambda out: errormail.write_decryption_error_mail(
            out,
            original_header=header,
            original=_rewound(raw),
            decryption_result=result,
            detail=reason,
        ),
        spool_dir,
    )
