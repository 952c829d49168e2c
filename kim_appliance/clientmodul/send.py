"""The Clientmodul's send pipeline: a client mail from the PVS becomes a KIM message (digest §1.4).

On the end of DATA the SMTP proxy hands over the spooled client mail, the account and the held
back RCPT TOs. :func:`prepare` (blocking, run it in a worker thread under the pipeline limiter)
then, in the order of digest §1.4:

1. parses the header; a forwarded protected KIM message (``message/rfc822`` part with
   ``X-KOM-LE-Version``) is extracted and sent as it is with the forwarder's From
   (KOM-LE-A_2029); a client mail that already has an ``x-kas`` part is refused (A_22341);
2. rewrites ``From`` (and ``Sender``) to the authenticated account (digest §1.4 step 3);
3. inserts ``X-KIM-Dienstkennung: KIM-Mail;Default;V1.0`` when the PVS set none (A_19488-02);
4. looks up the sender and every recipient in the VZD (KOM-LE-A_2023, :mod:`.vzd_lookup`);
5. drops the recipients without a usable certificate (4004) or with more than one Telematik-ID
   (4005, KOM-LE-A_2178) and removes them from To/Cc/Bcc (KOM-LE-A_2028); no recipient left:
   451 (KOM-LE-A_2025); no certificate of the sender: 553;
   above the KAS threshold (getLimits' kasMailSizeThreshold, else 15 MiB) the recipients that
   are not ``1.5+`` are dropped too (4001, A_19356-06/07, after asking the VZD again), the
   client mail is encrypted with a fresh AES-256-GCM key and uploaded to the sender's KAS
   through the caller's ``kas_upload`` (:mod:`.large_mail`), and the KIM message carries the
   x-kas part with ``X-KOM-LE-Version: 1.5`` and ``X-KIM-KAS-Size`` (digest §1.4 step 7; 507:
   521 and the MTA connection closed, A_22419; other failures: 451 and a 4002 report,
   A_19363-02);
6. signs with the SMC-B's OSIG key through the Konnektor port (the card signs the digest
   in-process, SignDocument over SOAP; ECC first when configured; failure: 451, KOM-LE-A_2021)
   and encrypts for every certificate of every recipient and the sender (KOM-LE-A_2022,
   A_2111-01) with :func:`kim_appliance.mail.seal.seal`, writing the outer mail with
   X-KIM-CMVersion/PTVersion/KONVersion (A_21388-01) and Expires (A_22417) to a spool file;
   behind a Konnektor without ECC (its service versions, A_17464) it signs with RSA and leaves
   out every ECC certificate (A_17472).
   A VZD that does not answer is ``451 4.4.3``; a Konnektor that does not answer while the
   certificates are checked is ``451 4.7.0`` like a failed signature.

:func:`transmit` then offers it to the Fachdienst on the proxy's upstream session: ``MAIL
FROM`` with ``SIZE=`` of the outer mail, the filtered ``RCPT TO``s, DATA; the MTA's reply is
what the PVS hears (only its 250 is success). Recipients dropped here or refused by the MTA are
reported to the sender in one unsigned mail (KOM-LE-A_2024-01, A_2192-01).

Resource handling: the client mail stays in its spool file; the rewritten header is put in
front of the unchanged body without copying it (:class:`_HeaderThenBody`); the outer mail is
spooled once. Memory stays a few MB per message. Error handling: every refusal is a
:class:`SendRefused` carrying the SMTP reply for the PVS. This module never keeps a message
after it returns (KOM-LE-A_2005) and never touches a private key (the card does the signing).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import io
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, BinaryIO, Final

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from kim_appliance.clientmodul import cards, large_mail
from kim_appliance.clientmodul.context import ClientmodulContext
from kim_appliance.clientmodul.kas_client import KasError
from kim_appliance.clientmodul.ports import (
    CARD_NOT_INSERTED,
    RSA_ECC,
    DirectoryUnreachable,
    KonnektorFault,
    KonnektorUnreachable,
    Signer,
)
from kim_appliance.clientmodul.spool import in_memory, spool_file
from kim_appliance.clientmodul.tls_sessions import SESSIONS
from kim_appliance.clientmodul.username import CmLogin
from kim_appliance.clientmodul.versions import accepts_large_mails
from kim_appliance.clientmodul.vzd_lookup import (
    NOT_ENCRYPTABLE,
    SENDER_NOT_UNIQUE,
    AddressLookup,
    VzdLookup,
)
from kim_appliance.cms.errors import CmsError
from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import (
    HeaderBlock,
    HeaderField,
    parse_content_type,
    read_header_block,
)
from kim_appliance.mail.seal import Certified, seal
from kim_appliance.pki import CertProfile, describe, profile_of
from kim_appliance.pki.validate import CertificateValidator
from kim_appliance.protocols.session import NETWORK_ERRORS
from kim_appliance.protocols.smtp import (
    NEED_DATA,
    LocalProtocolError,
    RemoteProtocolError,
    Reply,
    ServerReply,
    SmtpClient,
)

#: A_19488-02: the Dienstkennung of a client mail that names none.
DEFAULT_DIENSTKENNUNG: Final = "KIM-Mail;Default;V1.0"
#: X-KIM-Fehlermeldung of a recipient dropped for its KIM version (A_19356-06/07, digest §1.6)
VERSION_DROPPED: Final = "4001"
#: ... and of every recipient when the upload to the KAS failed (A_19363-02)
KAS_UPLOAD_FAILED: Final = "4002"
READ_SIZE: Final = 1024 * 1024
#: the longest line the MIME scan of the forwarding rule looks at as a possible boundary
_SCAN_LINE: Final = 1000

#: the vendor X-KIM-Fehlermeldung code for a recipient the MTA refused (digest §1.4: "the CM
#: tells the sender by DSN"; openkim uses X024 for the same case)
MTA_REFUSED: Final = "X01"
#: the name the Clientmodul gives itself in EHLO/greetings
CM_HOSTNAME: Final = "KOM-LE-Clientmodul"


class SendRefused(Exception):
    """The message is not sent; ``reply`` is the answer for the PVS.

    ``rset`` says whether the MTA is to get an RSET (KOM-LE-A_2021/2025: the transaction there
    is abandoned); ``dropped`` the recipients to report to the sender even so.
    """

    def __init__(
        self,
        reply: Reply,
        *,
        rset: bool = True,
        dropped: Sequence[Dropped] = (),
        original_header: HeaderBlock | None = None,
        close_upstream: bool = False,
    ) -> None:
        super().__init__(f"{reply.code} {reply.enhanced or ''} {reply.text}")
        self.reply = reply
        self.rset = rset
        #: A_22419: the MTA connection is closed (KAS quota exhausted, 521)
        self.close_upstream = close_upstream
        self.dropped = list(dropped)
        self.original_header = original_header or HeaderBlock(())


@dataclass(frozen=True)
class Dropped:
    """A recipient the message does not go to, and why (code per digest §1.6, or the MTA's)."""

    address: str
    #: X-KIM-Fehlermeldung code: 4004, 4005 (digest §1.6), or X01 for a recipient the MTA
    #: refused (vendor code of this Clientmodul)
    code: str
    reason: str
    #: RFC 3463 status for the report (the MTA's), None for the code's default
    status: str | None = None


@dataclass
class Prepared:
    """A KIM message ready for the MTA: spooled outer mail and the recipients to send it to."""

    outer: IO[bytes]
    outer_size: int
    recipients: list[str]
    dropped: list[Dropped] = field(default_factory=list)
    message_id: str | None = None
    #: True for a forwarded KIM message sent as it is (KOM-LE-A_2029)
    forwarded: bool = False
    warnings: list[str] = field(default_factory=list)
    #: the header of the client mail as received (for the sender report)
    original_header: HeaderBlock = field(default_factory=lambda: HeaderBlock(()))
    #: the KAS sharedLink of a large mail: deleted when the message is not sent (step 7)
    kas_link: str | None = None
    #: the key types encrypted for (``RSA-2048``, ``brainpoolP256r1``), for the message trace
    key_types: tuple[str, ...] = ()

    def close(self) -> None:
        self.outer.close()


#: (blob, Message-ID, recipients, expires) -> sharedLink; raises KasError. Called from the
#: worker thread that runs :func:`prepare` (the SMTP proxy hands the upload to the event loop
#: and remembers the link, so that it can delete the blob whatever happens afterwards).
KasUploader = Callable[[large_mail.KasBlob, str, list[str], str], str]


def prepare(
    ctx: ClientmodulContext,
    login: CmLogin,
    recipients: Sequence[str],
    client_mail: BinaryIO,
    *,
    now: dt.datetime | None = None,
    lookup: VzdLookup | None = None,
    kas_threshold: int | None = None,
    kas_upload: KasUploader | None = None,
) -> Prepared:
    """Steps 1-11 of digest §1.4 up to the spooled outer mail. Blocking. Raises SendRefused.

    ``kas_threshold`` (getLimits' kasMailSizeThreshold, else ``ctx.kas_threshold``) and
    ``kas_upload`` are for large mails (step 7); without an uploader a large mail is refused.
    """
    lookup = lookup or ctx.vzd
    threshold = kas_threshold or ctx.kas_threshold
    account = login.account
    client_mail.seek(0)
    try:
        header, rest = read_header_block(client_mail)
    except MailFormatError as exc:
        raise SendRefused(Reply(554, "5.6.0", f"the mail header is malformed: {exc}")) from exc
    body_offset = client_mail.tell() - len(rest)

    mime_type, params = parse_content_type(header.get("Content-Type") or "text/plain")
    if mime_type.startswith("multipart/") and params.get("boundary"):
        scan = _scan_parts(client_mail, body_offset, params["boundary"])
        if scan.x_kas:
            # A_22341: the PVS must not send a mail that already carries an x-kas part
            raise SendRefused(
                Reply(
                    451,
                    "4.6.0",
                    "the mail already holds a part with Content-Disposition: x-kas; "
                    "a client mail must not carry KAS references (A_22341)",
                )
            )
        if scan.forwarded is not None:
            return _forward(ctx, account, recipients, client_mail, scan.forwarded, header)

    unique: list[str] = []
    for address in recipients:
        if address.casefold() not in {u.casefold() for u in unique}:
            unique.append(address)

    # step 5: the sender first (553 ends it before anything else is looked at); one VZD query
    # for all of them
    validator = ctx.konnektor.certificate_validator(login.context())
    ecc = _konnektor_supports_ecc(ctx, header)
    sender, *found = _lookup(lookup, [account, *unique], validator, header, ecc=ecc)
    if not sender.usable:
        code = SENDER_NOT_UNIQUE if sender.code == "4005" else sender.code
        raise SendRefused(
            Reply(
                553,
                "5.7.1",
                f"no valid encryption certificate of the sender {account} in the VZD "
                f"({code}: {sender.reason})",
            )
        )
    dropped = [Dropped(f.address, f.code or "4004", f.reason) for f in found if not f.usable]
    valid = [f for f in found if f.usable]
    if not valid:
        # KOM-LE-A_2025: RSET to the MTA, 451 to the PVS (ILF-PS wording)
        raise SendRefused(
            Reply(
                451,
                "4.1.0",
                "Die Nachricht wurde nicht versendet, weil fuer keinen Empfaenger gueltige "
                "Verschluesselungszertifikate ermittelt werden konnten (KOM-LE-A_2025): "
                + "; ".join(d.reason for d in dropped)[:300],
            ),
            dropped=dropped,
            original_header=header,
        )

    new_header, warnings = _rewrite_header(header, account, dropped)
    inner: io.RawIOBase = _HeaderThenBody(new_header.encode() + b"\r\n", client_mail, body_offset)
    expires = _expires(now, ctx.data_ttl_days)
    extra: tuple[tuple[str, str], ...] = (
        ("X-KIM-CMVersion", ctx.cm_version),
        ("X-KIM-PTVersion", ctx.pt_version),
        ("X-KIM-KONVersion", ctx.kon_version),
        ("Expires", expires),
    )
    kas_link: str | None = None
    if inner.seek(0, io.SEEK_END) > threshold:
        # step 7: the whole client mail goes encrypted to the sender's KAS
        large = _large_mail(
            ctx, account, header, client_mail, body_offset, valid, dropped, lookup, validator,
            threshold, expires, kas_upload, ecc=ecc,
        )  # fmt: skip
        inner, valid, new_header, kas_link = large.inner, large.valid, large.header, large.link
        extra += large.extra
    inner.seek(0)

    try:
        signer = _signing_key(ctx, login, sender, ecc=ecc)
    except SendRefused as exc:
        raise SendRefused(exc.reply, dropped=dropped, original_header=header) from exc
    sender_certs = [Certified(account, c) for c in sender.certificates]
    recipient_certs = _recipient_certificates(valid, sender.certificates)
    outer = spool_file(ctx.spool_dir)  # handed to the caller
    try:
        report = seal(
            io.BufferedReader(inner),
            outer,
            signer=signer,
            sender=sender_certs,
            recipients=recipient_certs or sender_certs,
            extra_headers=extra,
            spool_dir=str(ctx.spool_dir),
        )
    except (KonnektorFault, KonnektorUnreachable) as exc:
        outer.close()
        if isinstance(exc, KonnektorFault) and exc.code == CARD_NOT_INSERTED:
            ctx.signing_cards.forget(login.context(), account)
        raise SendRefused(_signing_failed(exc), dropped=dropped, original_header=header) from exc
    except (MailFormatError, CmsError) as exc:
        outer.close()
        raise SendRefused(
            Reply(554, "5.6.0", f"the mail cannot be sent as a KIM message: {exc}")
        ) from exc
    except BaseException:
        outer.close()
        raise
    outer.seek(0)
    return Prepared(
        outer,
        report.outer_size,
        [f.address for f in valid],
        dropped,
        report.message_id,
        warnings=warnings + report.warnings,
        original_header=header,
        kas_link=kas_link,
        key_types=tuple(sorted({r.algorithm for r in report.recipients})),
    )


@dataclass
class _Large:
    inner: io.RawIOBase
    valid: list[AddressLookup]
    header: HeaderBlock
    link: str
    extra: tuple[tuple[str, str], ...]


def _large_mail(
    ctx: ClientmodulContext,
    account: str,
    header: HeaderBlock,
    client_mail: BinaryIO,
    body_offset: int,
    valid: list[AddressLookup],
    dropped: list[Dropped],
    lookup: VzdLookup,
    validator: CertificateValidator,
    threshold: int,
    expires: str,
    kas_upload: KasUploader | None,
    *,
    ecc: bool,
) -> _Large:
    """Digest §1.4 step 7 for a client mail above ``threshold``: recipients not ``1.5+``
    dropped (4001, A_19356-06/07, after asking the VZD again), the client mail encrypted and
    uploaded to the sender's KAS, the x-kas message made. Appends to ``dropped``."""
    if kas_upload is None:
        raise SendRefused(
            Reply(
                552,
                "5.3.4",
                f"the mail exceeds the KAS threshold of {threshold} bytes and no KAS is available",
            ),
            original_header=header,
        )
    keep: list[AddressLookup] = []
    for found in valid:
        if not accepts_large_mails(found.version):
            # A_19356-07: a cached version must not exclude a recipient; ask the VZD again
            lookup.invalidate(found.address)
            found = _lookup(lookup, [found.address], validator, header, ecc=ecc)[0]
        if found.usable and accepts_large_mails(found.version):
            keep.append(found)
        else:
            dropped.append(
                Dropped(
                    found.address,
                    VERSION_DROPPED,
                    f"{found.address} has KIM version {found.version} in the VZD; a mail above "
                    f"{threshold} bytes goes through the KAS and needs 1.5+ (A_19356)",
                )
            )
    if not keep:
        raise SendRefused(
            Reply(
                451,
                "4.3.4",
                "Die Nachricht wurde nicht versendet: kein Empfaenger kann grosse Nachrichten "
                f"ueber den KAS empfangen (KIM-Version 1.5+, A_19356; {len(dropped)} entfernt)",
            ),
            dropped=dropped,
            original_header=header,
        )
    new_header, _ = _rewrite_header(header, account, dropped)
    message_id = new_header.get("Message-ID")
    if message_id is None:
        # the KAS and the KIM message must name the same Message-ID (addMailData messageID)
        message_id = f"<{uuid.uuid4()}@{account.rpartition('@')[2]}>"
        new_header = HeaderBlock(
            (HeaderField("Message-ID", b" " + message_id.encode("ascii")), *new_header.fields)
        )
    client = _HeaderThenBody(new_header.encode() + b"\r\n", client_mail, body_offset)
    blob = large_mail.encrypt_for_kas(io.BufferedReader(client), str(ctx.spool_dir))
    try:
        link = kas_upload(blob, message_id.strip(), [f.address for f in keep], expires)
    except KasError as exc:
        if exc.status == 507:
            # A_22419: the sender's KAS quota is exhausted -> 521, MTA connection closed
            raise SendRefused(
                Reply(521, "5.2.2", f"the KAS of {account} has no room for the mail: {exc}"[:400]),
                close_upstream=True,
                original_header=header,
            ) from exc
        # A_19363-02: the KOM-LE mail is not sent; the sender learns it by a 4002 report
        raise SendRefused(
            Reply(451, "4.3.0", f"the upload to the KAS failed ({KAS_UPLOAD_FAILED}): {exc}"[:400]),
            dropped=[
                *dropped,
                *(Dropped(f.address, KAS_UPLOAD_FAILED, f"KAS: {exc}"[:300]) for f in keep),
            ],
            original_header=header,
        ) from exc
    finally:
        blob.close()
    inner_mail = large_mail.kas_message(new_header, large_mail.attachment_json(link, blob))
    return _Large(
        _HeaderThenBody(inner_mail, io.BytesIO(), 0),  # a few hundred bytes
        keep,
        new_header,
        link,
        (
            ("X-KOM-LE-Version", large_mail.KAS_KOM_LE_VERSION),
            # A_23467: equals "size" of the attachment JSON
            ("X-KIM-KAS-Size", str(blob.plain_size)),
        ),
    )


def _recipient_certificates(
    valid: Sequence[AddressLookup], sender: Sequence[x509.Certificate]
) -> list[Certified]:
    """Every certificate of every recipient, without the sender's own (encrypted for anyway)."""
    own = {c.fingerprint(_SHA256) for c in sender}
    out: list[Certified] = []
    for found in valid:
        out.extend(
            Certified(found.address, c)
            for c in found.certificates
            if c.fingerprint(_SHA256) not in own
        )
    return out


def _konnektor_supports_ecc(ctx: ClientmodulContext, header: HeaderBlock) -> bool:
    """A_17464: ask the Konnektor port before any ECC certificate or key is used; a Konnektor
    whose service directory cannot be read refuses the message for now, like a failed
    signature (451)."""
    try:
        return ctx.konnektor.supports_ecc()
    except (KonnektorFault, KonnektorUnreachable) as exc:
        raise SendRefused(_signing_failed(exc), original_header=header) from exc


def _without_ecc(found: AddressLookup) -> AddressLookup:
    """A_17472: behind a Konnektor without ECC, no ECC encryption certificate is used; an
    address left without a certificate cannot be encrypted for (4004, digest §1.6)."""
    rsa = tuple(
        c for c in found.certificates if not isinstance(c.public_key(), ec.EllipticCurvePublicKey)
    )
    if len(rsa) == len(found.certificates):
        return found
    left_out = tuple(
        f"{describe(c)}: ECC, and the Konnektor does not support ECC (A_17472)"
        for c in found.certificates
        if c not in rsa
    )
    if rsa:
        return replace(found, certificates=rsa, rejected=found.rejected + left_out)
    return replace(
        found,
        certificates=(),
        code=NOT_ENCRYPTABLE,
        reason=f"{found.address} has only ECC encryption certificates, and the Konnektor does "
        "not support ECC (SignatureService 7.4.1 / EncryptionService 6.1.1, A_17464/A_17472)",
        rejected=found.rejected + left_out,
    )


def _lookup(
    lookup: VzdLookup,
    addresses: Sequence[str],
    validator: CertificateValidator,
    header: HeaderBlock,
    *,
    ecc: bool,
) -> list[AddressLookup]:
    """:meth:`VzdLookup.lookup_many` (without ECC certificates unless ``ecc``, A_17472); a VZD
    or a Konnektor that does not answer refuses the message for now (451: the PVS tries again
    later)."""
    try:
        found = lookup.lookup_many(addresses, validator)
        return found if ecc else [_without_ecc(f) for f in found]
    except DirectoryUnreachable as exc:
        text = re.sub(r"[\x00-\x1f\x7f]", " ", str(exc))[:400]
        reply = Reply(451, "4.4.3", f"the directory does not answer ({text})")
        raise SendRefused(reply, original_header=header) from exc
    except (KonnektorFault, KonnektorUnreachable) as exc:
        # VerifyCertificate failed: the recipients' certificates cannot be checked
        raise SendRefused(_signing_failed(exc), original_header=header) from exc


def signing_card(
    ctx: ClientmodulContext, login: CmLogin, sender: AddressLookup
) -> cards.SigningCard:
    """The SMC-B that signs for the account (KOM-LE-A_2020/2129); Konnektor errors as raised."""
    return ctx.signing_cards.find(
        login.context(),
        login.account,
        sender.telematik_id,
        sender.entry_certificates,
        hba_mailbox=any(profile_of(c) is CertProfile.C_HP_ENC for c in sender.certificates),
    )


def _signing_key(
    ctx: ClientmodulContext, login: CmLogin, sender: AddressLookup, *, ecc: bool
) -> Signer:
    """What signs (digest §1.4 step 8): the ECC key when preferred and the Konnektor supports
    ECC (A_17464), else RSA; SendRefused 451 when nothing can."""
    context = login.context()
    crypt = RSA_ECC if ctx.prefer_ecc and ecc else "RSA"
    for attempt in range(2):
        try:
            card = signing_card(ctx, login, sender)
            return ctx.konnektor.signer(context, card.card_handle, crypt)
        except KonnektorFault as exc:
            if exc.code == CARD_NOT_INSERTED and attempt == 0:
                # a cached handle of a card pulled and put back: look the card up once more
                ctx.signing_cards.forget(context, login.account)
                continue
            raise SendRefused(_signing_failed(exc)) from exc
        except KonnektorUnreachable as exc:
            raise SendRefused(_signing_failed(exc)) from exc
        except cards.NoSigningCardError as exc:
            raise SendRefused(_signing_failed(exc)) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _signing_failed(exc: Exception) -> Reply:
    """KOM-LE-A_2021: the signature failed; RSET to the MTA, 451 to the PVS."""
    text = re.sub(r"[\x00-\x1f\x7f]", " ", str(exc))[:400]
    return Reply(451, "4.7.0", f"the mail could not be signed (KOM-LE-A_2021): {text}")


_SHA256: Final = hashes.SHA256()


def _expires(now: dt.datetime | None, days: int) -> str:
    """Send time + dataTimeToLive days, RFC 5322 date (A_22417)."""
    moment = (now or dt.datetime.now().astimezone()) + dt.timedelta(days=days)
    return email.utils.format_datetime(moment)


# --- header rewriting ---------------------------------------------------------------------------


def _rewrite_header(
    header: HeaderBlock, account: str, dropped: Sequence[Dropped]
) -> tuple[HeaderBlock, list[str]]:
    """From/Sender to the account (step 3), the default Dienstkennung (step 4, A_19488-02), the
    dropped recipients out of To/Cc/Bcc (KOM-LE-A_2028). Untouched fields keep their bytes."""
    warnings: list[str] = []
    gone = {d.address.casefold() for d in dropped}
    fields: list[HeaderField] = []
    saw_from = False
    for f in header:
        name = f.name.lower()
        if name in ("from", "sender"):
            if name == "from":
                if saw_from:
                    warnings.append("a second From field was removed")
                    continue
                saw_from = True
            addresses = email.utils.getaddresses([f.value])
            if len(addresses) == 1 and addresses[0][1].casefold() == account.casefold():
                fields.append(f)
                continue
            display = addresses[0][0] if addresses else ""
            warnings.append(f"{f.name} {f.value!r} rewritten to the account {account}")
            fields.append(HeaderField(f.name, b" " + _format_address(display, account)))
            continue
        if name in ("to", "cc", "bcc") and gone:
            pairs = email.utils.getaddresses([f.value])
            kept = [(n, a) for n, a in pairs if a.casefold() not in gone]
            if len(kept) == len(pairs):
                fields.append(f)
            elif kept:
                value = b", ".join(_format_address(n, a) for n, a in kept)
                fields.append(HeaderField(f.name, b" " + value))
            continue
        fields.append(f)
    if not saw_from:
        fields.insert(0, HeaderField("From", b" " + account.encode("ascii")))
    if header.get("X-KIM-Dienstkennung") is None:
        fields.append(
            HeaderField("X-KIM-Dienstkennung", b" " + DEFAULT_DIENSTKENNUNG.encode("ascii"))
        )
    return HeaderBlock(tuple(fields)), warnings


def _format_address(display: str, address: str) -> bytes:
    if not display:
        return address.encode("ascii", errors="replace")
    return email.utils.formataddr((display, address), charset="utf-8").encode(
        "utf-8", errors="replace"
    )


class _HeaderThenBody(io.RawIOBase):
    """A seekable read-only view: new header bytes, then ``body`` from ``offset`` to its end."""

    def __init__(self, head: bytes, body: BinaryIO, offset: int) -> None:
        super().__init__()
        self._head = head
        self._body = body
        self._offset = offset
        body.seek(0, io.SEEK_END)
        self.size = len(head) + body.tell() - offset
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = len(view)
        if want == 0 or self._pos >= self.size:
            return 0
        if self._pos < len(self._head):
            piece = self._head[self._pos : self._pos + want]
            view[: len(piece)] = piece
            self._pos += len(piece)
            return len(piece)
        self._body.seek(self._offset + self._pos - len(self._head))
        data = self._body.read(min(want, self.size - self._pos))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


# --- the MIME scan for KOM-LE-A_2029 and A_22341 --------------------------------------------


@dataclass
class _Scan:
    x_kas: bool = False
    #: (start, end) of a forwarded KIM message in the spool
    forwarded: tuple[int, int] | None = None


def _scan_parts(spool: BinaryIO, offset: int, boundary: str) -> _Scan:
    """Look at the top-level parts of a multipart client mail: their headers only.

    The delimiter lines are found by a byte search over 1 MiB reads (a 25 MB attachment is not
    read line by line); only the part headers are read as lines. A delimiter line is a line
    (the body's first, or one after an LF) that starts with ``--boundary`` (RFC 2046 §5.1.1).
    """
    result = _Scan()
    delimiter = b"--" + boundary.encode("ascii", errors="replace")
    kim_part_start: int | None = None  # body start of a message/rfc822 part holding KIM
    position = offset  # where the search goes on: always the start of a line
    while (line_start := _find_delimiter_line(spool, position, delimiter)) is not None:
        if kim_part_start is not None and result.forwarded is None:
            # the line end before a delimiter belongs to the delimiter (RFC 2046 §5.1.1)
            result.forwarded = (kim_part_start, line_start - _eol_before(spool, line_start, offset))
        kim_part_start = None
        spool.seek(line_start)
        line = spool.readline(_SCAN_LINE)
        if line.rstrip(b"\r\n")[len(delimiter) :].startswith(b"--"):
            break  # the closing delimiter
        position = line_start + len(line)
        header_lines: list[bytes] = []
        while True:
            line = spool.readline(_SCAN_LINE)
            if not line:
                return result  # the mail ended inside a part header
            position += len(line)
            if line.rstrip(b"\r\n") == b"":
                break
            header_lines.append(line)
        part = _parse_part_header(header_lines)
        if part is not None:
            content_type, disposition = part
            result.x_kas = result.x_kas or disposition == "x-kas"
            if content_type == "message/rfc822" and _is_kim_message(spool, position):
                kim_part_start = position
    return result


def _find_delimiter_line(spool: BinaryIO, start: int, delimiter: bytes) -> int | None:
    """The offset of the first line at or after ``start`` (itself a line start) that begins
    with ``delimiter``; None at the end of the spool. Reads 1 MiB at a time and keeps the last
    ``len(delimiter)`` bytes, so a delimiter split across two reads is found."""
    spool.seek(start)
    buffer = b""
    buffer_start = start  # spool offset of buffer[0]
    search_from = start  # the first offset not yet looked at as a delimiter start
    while chunk := spool.read(READ_SIZE):
        buffer += chunk
        index = search_from - buffer_start
        while (index := buffer.find(delimiter, index)) >= 0:
            at = buffer_start + index
            if at == start or buffer[index - 1] == 0x0A:  # LF before it: a line start
                return at
            index += 1
        # a delimiter starting in the last len(delimiter) - 1 bytes may go on in the next read;
        # the byte before it is kept to tell whether it starts a line
        search_from = max(start, buffer_start + len(buffer) - len(delimiter) + 1)
        keep = buffer_start + len(buffer) - max(start, search_from - 1)
        buffer_start += len(buffer) - keep
        buffer = buffer[len(buffer) - keep :]
    return None


def _eol_before(spool: BinaryIO, line_start: int, first_line: int) -> int:
    """The length of the line end (the LF and the CRs before it) of the line before
    ``line_start``; 0 for the body's first line."""
    if line_start <= first_line:
        return 0
    back = min(line_start - first_line, _SCAN_LINE)
    spool.seek(line_start - back)
    before = spool.read(back)
    if not before.endswith(b"\n"):
        return 0
    line = before[before.rfind(b"\n", 0, len(before) - 1) + 1 :]
    return len(line) - len(line.rstrip(b"\r\n"))


def _parse_part_header(lines: list[bytes]) -> tuple[str, str] | None:
    from kim_appliance.mail.headers import parse_header_block

    try:
        block = parse_header_block(b"".join(lines))
    except MailFormatError:
        return None
    content_type, _ = parse_content_type(block.get("Content-Type") or "text/plain")
    disposition = (block.get("Content-Disposition") or "").split(";")[0].strip().lower()
    return content_type, disposition


def _is_kim_message(spool: BinaryIO, start: int) -> bool:
    spool.seek(start)
    try:
        header, _ = read_header_block(spool)
    except MailFormatError:
        return False
    return header.get("X-KOM-LE-Version") is not None


def _forward(
    ctx: ClientmodulContext,
    account: str,
    recipients: Sequence[str],
    spool: BinaryIO,
    span: tuple[int, int],
    original: HeaderBlock,
) -> Prepared:
    """KOM-LE-A_2029: the forwarded KIM message with the forwarder's From, sent as it is."""
    start, end = span
    spool.seek(start)
    header, rest = read_header_block(spool)
    body_offset = spool.tell() - len(rest)
    fields = [f for f in header if f.name.lower() != "from"]
    fields.insert(0, HeaderField("From", b" " + account.encode("ascii")))
    outer = spool_file(ctx.spool_dir)  # handed to the caller
    size = outer.write(HeaderBlock(tuple(fields)).encode() + b"\r\n")
    spool.seek(body_offset)
    remaining = end - body_offset
    while remaining > 0:
        chunk = spool.read(min(READ_SIZE, remaining))
        if not chunk:
            break
        size += outer.write(chunk)
        remaining -= len(chunk)
    outer.seek(0)
    return Prepared(
        outer,
        size,
        list(dict.fromkeys(recipients)),
        message_id=header.get("Message-ID"),
        forwarded=True,
        original_header=original,
    )


# --- the MTA side -------------------------------------------------------------------------------


class UpstreamLost(Exception):
    """The connection to the Fachdienst broke (or it closed with 421) outside a transaction's
    point of no return; the caller may connect again and repeat."""


class Upstream:
    """The Clientmodul's SMTPS session with the Fachdienst's MTA (the MUA side, digest §1.1).

    Implicit TLS from the first byte (KOM-LE-A_2074), the server certificate verified against
    the TLS CA (``ctx.upstream_ssl``). Every wait for a reply is bounded by ``timeout``
    (SMTP_TIMEOUT_CLIENT, digest §1.9).
    """

    def __init__(
        self, stream: trio.SSLStream[trio.SocketStream], client: SmtpClient, timeout: float
    ) -> None:
        self.stream = stream
        self.client = client
        self.timeout = timeout
        self.closed = False

    @classmethod
    async def connect(
        cls, ctx: ClientmodulContext, host: str, port: int, server_hostname: str
    ) -> Upstream:
        """Connect, read the greeting and EHLO. Raises OSError/ssl.SSLError/trio.TooSlowError
        or UpstreamLost when the MTA does not greet with 220 or answer EHLO with 250."""
        timeout = float(ctx.session_timeout_seconds)
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port)
        stream = trio.SSLStream(tcp, ctx.upstream_ssl, server_hostname=server_hostname)
        SESSIONS.offer(stream, port)  # TLS 1.3 resumption between our own components
        upstream = cls(stream, SmtpClient(hostname=CM_HOSTNAME), timeout)
        try:
            with trio.fail_after(timeout):
                await stream.do_handshake()
            greeting = await upstream.reply()
            SESSIONS.keep(stream, port)  # the tickets came with the greeting
            if greeting.code != 220:
                raise UpstreamLost(f"the MTA greeted with {greeting.code} {greeting.text}")
            ehlo = await upstream.command(upstream.client.ehlo())
            if ehlo.code != 250:
                raise UpstreamLost(f"the MTA answered EHLO with {ehlo.code} {ehlo.text}")
        except BaseException:
            await upstream.aclose()
            raise
        return upstream

    async def reply(self) -> ServerReply:
        """The next reply; UpstreamLost when the connection ends first."""
        try:
            with trio.fail_after(self.timeout):
                while True:
                    event = self.client.next_event()
                    if event is NEED_DATA:
                        data = await self.stream.receive_some(65536)
                        self.client.receive_data(bytes(data))
                        continue
                    if isinstance(event, ServerReply):
                        if event.code == 421:
                            self.closed = True
                            raise UpstreamLost(f"the MTA closed the session: {event.text}")
                        return event
                    self.closed = True
                    raise UpstreamLost("the MTA closed the connection")
        except (*NETWORK_ERRORS, RemoteProtocolError, trio.TooSlowError) as exc:
            self.closed = True
            raise UpstreamLost(f"the MTA connection failed: {type(exc).__name__} {exc}") from exc

    async def command(self, data: bytes) -> ServerReply:
        await self.send(data)
        return await self.reply()

    async def send(self, data: bytes) -> None:
        try:
            with trio.fail_after(self.timeout):
                await self.stream.send_all(data)
        except (*NETWORK_ERRORS, trio.TooSlowError) as exc:
            self.closed = True
            raise UpstreamLost(f"the MTA connection failed: {type(exc).__name__} {exc}") from exc

    async def authenticate(self, username: str, password: str) -> ServerReply:
        """AUTH PLAIN (or LOGIN when the MTA offers only that) with the plain account
        (KOM-LE-A_2012, A_2161)."""
        mechanisms = self.client.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms or "LOGIN" not in mechanisms:
            return await self.command(self.client.auth_plain(username, password))
        reply = await self.command(self.client.auth_login(username, password))
        while reply.code == 334:
            reply = await self.command(self.client.auth_continue())
        return reply

    async def rset(self) -> None:
        """RSET, best effort (KOM-LE-A_2021/2025: abandon the transaction at the MTA)."""
        if self.closed:
            return
        with contextlib.suppress(UpstreamLost):
            await self.command(self.client.rset())

    async def quit(self) -> None:
        if not self.closed:
            with contextlib.suppress(UpstreamLost, LocalProtocolError):
                with trio.move_on_after(5):
                    await self.command(self.client.quit())
        await self.aclose()

    async def aclose(self) -> None:
        self.closed = True
        await trio.aclose_forcefully(self.stream)


@dataclass
class Transmitted:
    """What the MTA said: ``reply`` for the PVS, and the recipients it refused."""

    reply: Reply
    refused: list[Dropped] = field(default_factory=list)


async def transmit(
    upstream: Upstream, account: str, prepared: Prepared, *, limiter: trio.CapacityLimiter
) -> Transmitted:
    """MAIL FROM with SIZE= of the outer mail, the RCPTs, DATA (digest §1.4 step 11).

    Only the MTA's 250 is success for the PVS; its refusals are relayed. Raises UpstreamLost if
    the connection breaks before DATA was accepted (nothing was sent then: safe to repeat).
    """
    client = upstream.client
    size = prepared.outer_size if "SIZE" in client.extensions else None
    if "PIPELINING" in client.extensions:
        # RFC 2920: MAIL, every RCPT and DATA in one write, the replies read in order (one
        # round trip to the MTA instead of 2 + recipients); a server that accepts DATA after
        # refusing every recipient breaks RFC 2920 §3.1 and loses the connection below
        await upstream.send(
            client.mail(account, size=size)
            + b"".join(client.rcpt(address) for address in prepared.recipients)
            + client.data()
        )
        mail = await upstream.reply()
        rcpt_replies = [await upstream.reply() for _ in prepared.recipients]
        go = await upstream.reply()
    else:
        mail = await upstream.command(client.mail(account, size=size))
        if mail.code != 250:
            await upstream.rset()
            return Transmitted(_relayed(mail))
        rcpt_replies = [await upstream.command(client.rcpt(a)) for a in prepared.recipients]
        go = None
    accepted: list[str] = []
    refused: list[Dropped] = []
    last_refusal: ServerReply | None = None
    for address, reply in zip(prepared.recipients, rcpt_replies, strict=True):
        if mail.code != 250:
            break
        if reply.code in (250, 251):
            accepted.append(address)
        else:
            last_refusal = reply
            refused.append(Dropped(address, MTA_REFUSED, _describe(reply), _status_of(reply)))
    if mail.code != 250 or not accepted:
        if go is not None and go.code == 354:
            await upstream.aclose()  # no body may follow: dropping the connection aborts DATA
            raise UpstreamLost(f"the MTA accepted DATA after refusing the transaction: {go.text}")
        await upstream.rset()
        if mail.code != 250:
            return Transmitted(_relayed(mail))
        assert last_refusal is not None
        return Transmitted(_relayed(last_refusal), refused)
    if go is None:
        go = await upstream.command(client.data())
    if go.code != 354:
        await upstream.rset()
        return Transmitted(_relayed(go), refused)
    outer = prepared.outer
    outer.seek(0)
    try:
        if in_memory(outer):
            # a small message is still in memory: read on the event loop and sent with the
            # final dot in one write (issue 13: no thread hops, one TLS record fewer)
            await upstream.send(client.body(outer.read()) + client.end_body())
        else:
            while chunk := await trio.to_thread.run_sync(outer.read, READ_SIZE, limiter=limiter):
                await upstream.send(client.body(chunk))
            await upstream.send(client.end_body())
        final = await upstream.reply()
    except UpstreamLost as exc:
        # the MTA may or may not have the message: tell the PVS to try again later
        return Transmitted(
            Reply(451, "4.4.2", f"the connection to the Fachdienst broke during DATA: {exc}"),
            refused,
        )
    return Transmitted(_relayed(final), refused)


async def send_report(upstream: Upstream, account: str, report: bytes) -> ServerReply | None:
    """The sender report (unsigned, unencrypted, KOM-LE-A_2024-01) from the account to itself
    through the MTA: MAIL FROM and RCPT TO are the account (a mail to oneself, which the
    Fachdienst's sender rules allow, A_23422 (2)). Returns the final reply, None if lost."""
    client = upstream.client
    try:
        size = len(report) if "SIZE" in client.extensions else None
        mail = await upstream.command(client.mail(account, size=size))
        if mail.code != 250:
            await upstream.rset()
            return mail
        rcpt = await upstream.command(client.rcpt(account))
        if rcpt.code not in (250, 251):
            await upstream.rset()
            return rcpt
        go = await upstream.command(client.data())
        if go.code != 354:
            await upstream.rset()
            return go
        await upstream.send(client.body(report) + client.end_body())
        return await upstream.reply()
    except UpstreamLost:
        return None


def _relayed(reply: ServerReply) -> Reply:
    """The MTA's reply as the PVS gets it (code, enhanced code and text unchanged)."""
    enhanced = reply.enhanced
    if enhanced is not None and enhanced[0] != str(reply.code)[0]:
        enhanced = None
    text = "\n".join(re.sub(r"[\x00-\x1f\x7f]", " ", line) for line in reply.lines)
    code = reply.code if 400 <= reply.code <= 599 or reply.code == 250 else 451
    return Reply(code, enhanced if code == reply.code else "4.3.0", text)


def _status_of(reply: ServerReply) -> str:
    """The RFC 3463 status of a refusal, as a permanent one (the report says "failed")."""
    status = reply.enhanced or f"{reply.code // 100}.0.0"
    return "5" + status[1:]


def _describe(reply: ServerReply) -> str:
    parts = [str(reply.code), reply.enhanced or "", reply.text]
    return "the Fachdienst refused the recipient: " + " ".join(p for p in parts if p)
