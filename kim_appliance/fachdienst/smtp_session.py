"""One SMTP session of the Fachdienst mail server (digest §3.2): bytes between a TLS stream and
the sans-IO :class:`~kim_appliance.protocols.smtp.SmtpServer`, and the server's decisions.

Participants submit with AUTH (KOM-LE-A_2148/2161); another Fachdienst relays without AUTH but
with its C.FD.TLS-C client certificate, and then only to this Fachdienst's mailboxes. The rules
(TI only, sender integrity, size, quota) are in :mod:`kim_appliance.fachdienst.rules`; storing
and routing an accepted message is :mod:`kim_appliance.fachdienst.delivery`.

Resource handling: the message body streams to a blob of the store in 1 MiB writes; nothing is
acknowledged before the blob is durable and the delivery committed, and a session that ends
before that leaves no trace (the blob writer is aborted). Error handling: every refusal is an
SMTP reply that says why; a store that fails (`StoreUnavailable`) is ``451 4.3.0``, try again
later; a broken connection ends the session quietly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import trio

from kim_appliance.fachdienst import delivery, quota, rules
from kim_appliance.fachdienst.accounts import MAX_AUTH_FAILURES_PER_CONNECTION, client_of_peer
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import read_header_block
from kim_appliance.pki import CertProfile, profile_of
from kim_appliance.protocols.session import SessionIO, peer_name, run_core, serve_session
from kim_appliance.protocols.smtp import (
    AuthAttempt,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    DataStart,
    Ehlo,
    Helo,
    MailFrom,
    RcptTo,
    Reply,
    ServerEvent,
    SmtpServer,
)
from kim_appliance.store import BlobWriter, StoreUnavailable

RECEIVE_SIZE = 256 * 1024
WRITE_BATCH = 1024 * 1024
#: the header is parsed from the first bytes of the body; a longer header is refused
HEADER_LIMIT = 256 * 1024


@dataclass
class _Transaction:
    mail_from: str | None = None
    #: the SIZE= of MAIL FROM (RFC 1870), None if not announced
    size: int | None = None
    ret: str | None = None
    envid: str | None = None
    recipients: list[delivery.Recipient] = field(default_factory=list)
    blob: BlobWriter | None = None
    head: bytearray = field(default_factory=bytearray)
    pending: list[bytes] = field(default_factory=list)
    pending_size: int = 0


class SmtpSession:
    def __init__(self, fd: Fachdienst, peer: str, *, relay_peer: str | None) -> None:
        self.fd = fd
        self.peer = peer
        #: the C.FD.TLS-C subject of a relaying Fachdienst, or None for a participant
        self.relay_peer = relay_peer
        self.login: str | None = None
        self.helo = ""
        self.tx = _Transaction()
        #: failed AUTHs on this connection; at MAX_AUTH_FAILURES_PER_CONNECTION the answer
        #: closes the connection (``closing``), whatever the lockout of the account says
        self.auth_failures = 0
        self.closing = False

    async def decide(self, event: ServerEvent) -> Reply | None:
        """The reply to a decision event (None for events that need none)."""
        if isinstance(event, Ehlo | Helo):
            self.helo = event.domain
            return None
        if isinstance(event, AuthAttempt):
            return await self._auth(event)
        if isinstance(event, MailFrom):
            return await self._mail_from(event)
        if isinstance(event, RcptTo):
            return await self._rcpt(event)
        if isinstance(event, DataStart):
            self.tx.blob = self.fd.store.blobs.writer()
            return Reply(354, None, "send the message, end with <CR><LF>.<CR><LF>")
        if isinstance(event, DataChunk):
            await self._data(event.data)
            return None
        if isinstance(event, DataEnd):
            return await self._data_end(event)
        return None

    async def _auth(self, event: AuthAttempt) -> Reply:
        if self.relay_peer is not None:
            return Reply(503, "5.5.1", "already identified by the Fachdienst client certificate")
        result = await self.fd.auth.authenticate(
            event.username, event.password, client=client_of_peer(self.peer)
        )
        self.fd.log.info("smtp %s AUTH %s %s", self.peer, event.username, result.for_log)
        if result.ok:
            self.login = result.address
            return Reply(235, "2.7.0", result.text)
        self.auth_failures += 1
        if self.auth_failures >= MAX_AUTH_FAILURES_PER_CONNECTION:
            self.closing = True
            text = f"{result.text}; {self.auth_failures} failures, closing the connection"
            return Reply(535, "5.7.8", text)
        return Reply(535, "5.7.8", result.text)

    async def _mail_from(self, event: MailFrom) -> Reply:
        await self.abort_transaction()
        if self.relay_peer is not None:
            refusal = rules.check_relay_mail_from(event.address)
        else:
            assert self.login is not None  # the core requires AUTH first
            refusal = rules.check_mail_from(event.address, self.login)
            if refusal is None:
                account = await self.fd.local_account(self.login)
                if account is not None and account.status != "active":
                    # KOM-LE-A_2150: a deregistered account sends nothing
                    refusal = rules.Refusal(
                        550, "5.7.1", f"account {self.login} is deregistered and cannot send"
                    )
        if refusal is None and event.size is not None:
            refusal = rules.check_size(
                event.size, max_message_size=self.fd.config.max_message_size, quota_remaining=None
            )
        if refusal is not None:
            self.fd.log.info("smtp %s MAIL FROM refused: %s", self.peer, refusal.text)
            return Reply(refusal.code, refusal.enhanced, refusal.text)
        self.tx = _Transaction(
            mail_from=event.address, size=event.size, ret=event.ret, envid=event.envid
        )
        return Reply(250, "2.1.0", f"sender <{event.address}> ok")

    async def _rcpt(self, event: RcptTo) -> Reply:
        fd = self.fd
        account = None
        if rules.is_ti_address(event.address) and fd.is_local(event.address):
            account = await fd.local_account(event.address)
        refusal = rules.check_rcpt(
            event.address,
            local_domains={fd.domain},
            # a relaying Fachdienst may only deliver here: no open relay
            relay_domains=() if self.relay_peer else set(fd.endpoints.by_domain),
            mailbox_exists=lambda _: account is not None,
            mailbox_active=lambda _: account is not None and account.status == "active",
        )
        if refusal is None and account is not None and account.quota_bytes >= 0:
            # a full mailbox is refused here, per recipient, so that the other recipients
            # still get the message (after DATA one reply answers for all); the final check
            # with the real size, atomic with the delivery, is the store's (delivery.accept;
            # mailbox and KAS uploads count, fachdienst.quota)
            remaining = account.quota_bytes - await quota.usage(fd, account)
            size = self.tx.size
            refusal = rules.check_size(
                size if size is not None else 1,
                max_message_size=fd.config.max_message_size,
                quota_remaining=remaining,
                mailbox=account.address,
            )
        if refusal is not None:
            self.fd.log.info("smtp %s RCPT refused: %s", self.peer, refusal.text)
            return Reply(refusal.code, refusal.enhanced, refusal.text)
        orcpt = None
        if event.orcpt is not None:
            orcpt = f"{event.orcpt.addr_type};{event.orcpt.address}"
        self.tx.recipients.append(delivery.Recipient(event.address, event.notify, orcpt, account))
        return Reply(250, "2.1.5", f"recipient <{event.address}> ok")

    async def _data(self, data: bytes) -> None:
        tx = self.tx
        if len(tx.head) < HEADER_LIMIT:
            tx.head += data[: HEADER_LIMIT - len(tx.head)]
        tx.pending.append(data)
        tx.pending_size += len(data)
        if tx.pending_size >= WRITE_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        tx = self.tx
        if tx.pending and tx.blob is not None:
            pieces, tx.pending, tx.pending_size = tx.pending, [], 0
            # one write per batch: a large one goes to the store's worker thread
            await tx.blob.write(b"".join(pieces))

    async def _data_end(self, event: DataEnd) -> Reply:
        tx = self.tx
        if event.too_big:
            await self.abort_transaction()
            limit = self.fd.config.max_message_size
            return Reply(552, "5.3.4", f"message exceeds the size limit of {limit} bytes")
        await self._flush()
        if event.bare_lf or event.bare_cr:
            # RFC 5321 §2.3.8: CR and LF only as CRLF; stored mail must come back byte for byte
            # through POP3, whose clients split lines on LF (a bare LF before a dot would end it)
            await self.abort_transaction()
            return Reply(
                550, "5.6.0", "the message has bare CR or LF line ends; send CRLF (RFC 5321)"
            )
        try:
            header, _ = read_header_block(io.BytesIO(bytes(tx.head)))
        except MailFormatError as exc:
            await self.abort_transaction()
            return Reply(550, "5.6.0", f"the message header is malformed: {exc}")
        assert tx.mail_from is not None
        if tx.mail_from:  # DSNs (null sender) carry no participant headers to check
            refusal = rules.check_header_senders(
                header, mail_from=tx.mail_from, rcpt_to=[r.address for r in tx.recipients]
            )
            if refusal is not None:
                await self.abort_transaction()
                self.fd.log.info("smtp %s DATA refused: %s", self.peer, refusal.text)
                return Reply(refusal.code, refusal.enhanced, refusal.text)
        envelope = delivery.Envelope(
            mail_from=tx.mail_from,
            recipients=tuple(tx.recipients),
            ret=tx.ret,
            envid=tx.envid,
            helo=self.helo,
            peer=self.peer,
            authenticated=self.login is not None,
            message_id=header.get("Message-ID"),
            original_header=_header_bytes(bytes(tx.head)),
        )
        blob, tx.blob = tx.blob, None
        assert blob is not None
        try:
            result = await delivery.accept(self.fd, envelope, blob)
        except quota.QuotaExceeded as exc:
            return Reply(552, "5.2.2", str(exc))
        except StoreUnavailable as exc:
            self.fd.log.error("smtp %s: the store failed: %s", self.peer, exc)
            return Reply(451, "4.3.0", "the mail store is unavailable; try again later")
        finally:
            self.tx = _Transaction()
        if result.relayed:
            self.fd.wake_relay()
        self.fd.log.info(
            "smtp %s accepted %s from <%s> for %d recipient(s), %d bytes",
            self.peer, result.queue_id, envelope.mail_from, len(envelope.recipients), event.size,
        )  # fmt: skip
        return Reply(250, "2.0.0", f"{result.queue_id} message accepted")

    async def abort_transaction(self) -> None:
        blob = self.tx.blob
        self.tx = _Transaction()
        if blob is not None:
            await blob.abort()


def _header_bytes(head: bytes) -> bytes:
    """The header block (for RET=HDRS delivery reports), without the body."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = head.find(separator)
        if end >= 0:
            return head[: end + len(separator)]
    return head


def relay_peer_of(stream: trio.SSLStream[trio.SocketStream]) -> str | None:
    """The subject of a verified C.FD.TLS-C client certificate, or None (a participant)."""
    from cryptography import x509

    der = stream.getpeercert(binary_form=True)
    if not der:
        return None
    certificate = x509.load_der_x509_certificate(der)
    if profile_of(certificate) is not CertProfile.C_FD_TLS_C:
        return None
    return certificate.subject.rfc4514_string()


async def serve_smtp_connection(fd: Fachdienst, stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Handle one SMTPS connection until QUIT, EOF, timeout or error (implicit TLS); the
    plumbing (handshake, idle timeout, errors, close) is :mod:`kim_appliance.protocols.session`."""
    peer = peer_name(stream)
    timeout = fd.config.session_timeout_seconds
    session: SmtpSession | None = None

    async def run() -> None:
        nonlocal session
        relay_peer = relay_peer_of(stream)
        core = SmtpServer(
            hostname=fd.hostname,
            max_message_size=fd.config.max_message_size,
            require_auth=relay_peer is None,
        )
        session = current = SmtpSession(fd, peer, relay_peer=relay_peer)
        fd.log.info(
            "smtp %s connected%s", peer, f" (Fachdienst {relay_peer})" if relay_peer else ""
        )
        conn = SessionIO(
            stream,
            timeout=timeout,
            receive_size=RECEIVE_SIZE,
            first_timeout=fd.listener_limits.first_command_seconds,
        )
        await conn.send_all(core.greeting(f"{fd.domain} KIM Fachdienst ESMTP ready"))

        async def handle(event: ServerEvent) -> bool:
            reply = await current.decide(event)
            if reply is not None:
                await conn.send_all(core.send(reply, close=current.closing))
            if isinstance(event, ConnectionClosed):
                conn.queue(core.data_to_send())
                return False
            return True

        await run_core(
            conn, core, handle, idle_reply=lambda: core.abort(Reply(421, "4.4.2", "idle timeout"))
        )

    async def cleanup() -> None:
        # nothing unacknowledged is kept, whatever ended the session
        if session is not None:
            await session.abort_transaction()

    with fd.observer.session("fachdienst", "smtp"):
        await serve_session(
            name="smtp",
            peer=peer,
            log=fd.log,
            run=run,
            cleanup=cleanup,
        )
