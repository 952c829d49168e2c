"""The Clientmodul's SMTP side towards the PVS: CONNECT, PROXY and PROCESS (digest §1.3, §1.4).

One connection from the practice software (implicit TLS with the Clientmodul's certificate,
KOM-LE-A_2066/2067) is driven through the sans-IO :class:`SmtpServer`:

* **CONNECT** (digest §1.3, CM-1.13 Tab_SMTP_Ant_Init/Tab_SMTP_Verbindung): greeting with
  ``ESMTP``; HELO/EHLO/RSET/NOOP/QUIT answered locally; MAIL/RCPT/DATA before AUTH get
  ``530 5.7.0``; anything else ``502 5.5.1``. AUTH PLAIN/LOGIN only (KOM-LE-A_2009): the
  username (digest §1.2) is parsed (``501 5.5.4`` and close when malformed), the call context is
  checked at the Konnektor (4004-4006 and the other context faults: ``501``), the Fachdienst's
  MTA is connected over SMTPS (``454 4.7.0`` when unreachable) and logged in to with the plain
  account and the password (KOM-LE-A_2012; refused: ``535 5.7.8``); then ``235 2.7.0``.
* **PROXY/PROCESS** (digest §1.4): MAIL FROM and RCPT TO are answered 250 here and held back;
  DATA is spooled to a file; at its end getLimits (:mod:`.limits`, cached 24 h, A_22416;
  maxMailSize exceeded: ``552 5.3.4``, A_19355-01), then :mod:`.send` makes the KIM message
  (uploading a large mail to the sender's KAS, deleting the blob again if the message is not
  sent) and offers it to the MTA, whose reply the PVS gets; after a sent message the version
  bookkeeping of step 12 (:mod:`.versions`: 4017 notice or setAccount kimVersion).

Deviations of the core from the CONNECT table are corrected here (the core is shared with the
Fachdienst and stays as it is): its ``500 5.5.2`` for an unknown command and its answers to
VRFY/HELP before AUTH become ``502 5.5.1``; its ``503`` for MAIL/RCPT/DATA before EHLO becomes
``530 5.7.0``.

Choices written down here: a Konnektor that does not answer at AUTH gives ``454 4.7.0`` (the
call context cannot be checked; the PVS may try again); the sender report for dropped
recipients goes from the account to itself through the same MTA session, after the message.
One MTA connection per PVS connection, ended together (KOM-LE-A_2016/2017): when the MTA
connection has ended (the MTA closed it while the PVS was idle, a 421, a break during DATA, the
521 of A_22419), the reply to the PVS's message is followed by closing the PVS connection; the
Clientmodul never logs in at the MTA again on its own. MAIL FROM and RCPT TO are answered here,
so the loss is noticed at the end of DATA (``421 4.4.2``, nothing sent).

Resource handling: one cancel scope per session for the idle timeout (SMTP_TIMEOUT_SERVER,
digest §1.9); DATA goes to a spool file in 1 MiB writes from worker threads; the spool and the
outer mail are deleted when the transaction ends, whatever its outcome (KOM-LE-A_2005). The
upstream connection is closed with the session. Error handling: every failure is an SMTP reply
saying what went wrong; a broken PVS connection ends the session quietly; a bug in one session
gives ``421`` and never takes the listener down.
"""

from __future__ import annotations

import io
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import IO, Final

import trio

from kim_appliance.clientmodul import kas_client, send, tracing, versions
from kim_appliance.clientmodul.cards import NoSigningCardError
from kim_appliance.clientmodul.cm_certificate import CertRenewalFailed, renewal_failed_notice
from kim_appliance.clientmodul.context import ClientmodulContext
from kim_appliance.clientmodul.kas_client import KasError
from kim_appliance.clientmodul.large_mail import KasBlob
from kim_appliance.clientmodul.limits import Limits, get_limits
from kim_appliance.clientmodul.ports import (
    CardType,
    DirectoryUnreachable,
    KonnektorFault,
    KonnektorUnreachable,
)
from kim_appliance.clientmodul.spool import in_memory, spool_file
from kim_appliance.clientmodul.username import CmLogin, UsernameError, parse_smtp_username
from kim_appliance.clientmodul.versions import compare_versions
from kim_appliance.mail.errormail import DroppedRecipient, write_sender_report
from kim_appliance.mail.headers import HeaderBlock
from kim_appliance.protocols.session import SessionIO, peer_name, run_core, serve_session
from kim_appliance.protocols.smtp import (
    AuthAttempt,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    DataStart,
    MailFrom,
    ProtocolViolation,
    Quit,
    RcptTo,
    Reply,
    Rset,
    ServerEvent,
    SmtpServer,
    Vrfy,
)

RECEIVE_SIZE: Final = 256 * 1024
WRITE_BATCH: Final = 1024 * 1024
#: digest §1.3: the greeting must contain "ESMTP"
GREETING: Final = "ESMTP ready"
_NOT_IMPLEMENTED: Final = Reply(502, "5.5.1", "command not implemented")
#: Reporting-MTA of the sender report (RFC 3464 §2.2.2)
REPORTING_HOST: Final = "clientmodul.kim-appliance"
_MAILBOX: Final = re.compile(r"[!-;=?-~]+@[!-;=?-~]+")
_HELP_REPLY: Final = Reply(214, "2.0.0", "see RFC 5321").encode()


@dataclass
class _Transaction:
    mail_from: str | None = None
    recipients: list[str] = field(default_factory=list)
    spool: IO[bytes] | None = None
    pending: list[bytes] = field(default_factory=list)
    pending_size: int = 0

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None


class CmSmtpSession:
    """The decisions of one PVS session; the I/O loop is :func:`serve_cm_smtp_connection`."""

    def __init__(self, ctx: ClientmodulContext, peer: str) -> None:
        self.ctx = ctx
        self.peer = peer
        self.login: CmLogin | None = None
        self._password = ""
        self.upstream: send.Upstream | None = None
        self.tx = _Transaction()

    # --- CONNECT -------------------------------------------------------------------------

    async def decide(self, event: ServerEvent) -> tuple[Reply, bool] | None:
        """(reply, close) for a decision event; None for the others."""
        if isinstance(event, AuthAttempt):
            return await self._auth(event)
        if isinstance(event, MailFrom):
            self.abort_transaction()
            # held back until the message is made (digest §1.4, FAQ "Umgang mit dem RCPT TO")
            self.tx = _Transaction(mail_from=event.address)
            return Reply(250, "2.1.0", f"sender <{event.address}> ok"), False
        if isinstance(event, RcptTo):
            self.tx.recipients.append(event.address)
            return Reply(250, "2.1.5", f"recipient <{event.address}> ok"), False
        if isinstance(event, DataStart):
            spool_dir = self.ctx.spool_dir
            # in memory up to 1 MiB (no file to create for a small mail); closed by tx
            self.tx.spool = spool_file(spool_dir)
            return Reply(354, None, "send the message, end with <CR><LF>.<CR><LF>"), False
        if isinstance(event, DataChunk):
            await self._data(event.data)
            return None
        if isinstance(event, DataEnd):
            reply = await self._data_end(event)
            # KOM-LE-A_2016/2017: the MTA connection is gone (dropped, 421, or closed with 521
            # after A_22419): the PVS connection ends with it, after this reply
            return reply, self._upstream_gone
        if isinstance(event, Rset):
            self.abort_transaction()
        return None

    async def _auth(self, event: AuthAttempt) -> tuple[Reply, bool]:
        ctx = self.ctx
        try:
            login = parse_smtp_username(event.username, defaults=ctx.context_defaults)
        except UsernameError as exc:
            # digest §1.3: incomplete or malformed username -> 501 5.5.4, then close
            ctx.log.info("cm smtp %s AUTH refused: %s", self.peer, exc)
            return Reply(501, "5.5.4", _one_line(str(exc))), True
        context = login.context()
        try:
            await trio.to_thread.run_sync(ctx.konnektor.get_cards, context, CardType.SMC_B)
        except KonnektorFault as exc:
            if exc.context_refused:
                # digest §1.3: a SOAP fault 4004-4006 on the call context -> 501
                ctx.log.info(
                    "cm smtp %s AUTH %s: Konnektor context: %s", self.peer, login.account, exc
                )
                text = _one_line(f"Konnektor call context refused: {exc}")
                return Reply(501, "5.5.4", text), False
            return Reply(454, "4.7.0", _one_line(f"Konnektor error: {exc}")), False
        except KonnektorUnreachable as exc:
            return Reply(454, "4.7.0", _one_line(f"cannot check the call context: {exc}")), False
        host, port = ctx.resolve_upstream(login.host, login.port, "smtp", login.account)
        server_name = login.host or login.account.rpartition("@")[2]
        # the resolved MTA first, then the other live nodes serving the domain (a cluster)
        targets = [(host, port)]
        targets += [t for t in ctx.fallbacks(server_name.lower(), "smtp") if t != (host, port)]
        for n, (host, port) in enumerate(targets):
            try:
                upstream = await send.Upstream.connect(ctx, host, port, server_name)
                break
            except (OSError, ssl.SSLError, trio.TooSlowError, send.UpstreamLost) as exc:
                ctx.log.info("cm smtp %s: MTA %s:%d unreachable: %s", self.peer, host, port, exc)
                if n == len(targets) - 1:
                    return Reply(
                        454, "4.7.0", _one_line(f"the MTA {host}:{port} is unreachable: {exc}")
                    ), False
        try:
            answer = await upstream.authenticate(login.account, event.password)
        except send.UpstreamLost as exc:
            await upstream.aclose()
            return Reply(454, "4.7.0", _one_line(f"the MTA {host}:{port} failed: {exc}")), False
        if answer.code != 235:
            await upstream.quit()
            if answer.code in (535, 534, 530) or answer.code // 100 == 5:
                text = f"the Fachdienst refused the login of {login.account}: {answer.text}"
                return Reply(535, "5.7.8", _one_line(text)), False
            return Reply(454, "4.7.0", _one_line(f"MTA AUTH: {answer.code} {answer.text}")), False
        await self.close_upstream()
        self.login, self._password, self.upstream = login, event.password, upstream
        ctx.log.info("cm smtp %s AUTH %s via %s:%d", self.peer, login.account, host, port)
        return Reply(235, "2.7.0", "authentication successful"), False

    # --- PROXY/PROCESS -----------------------------------------------------------------------

    async def _data(self, data: bytes) -> None:
        tx = self.tx
        tx.pending.append(data)
        tx.pending_size += len(data)
        if tx.pending_size >= WRITE_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        tx = self.tx
        if tx.pending and tx.spool is not None:
            pieces, tx.pending, tx.pending_size = tx.pending, [], 0
            spool = tx.spool
            await trio.to_thread.run_sync(lambda: spool.write(b"".join(pieces)))

    async def _data_end(self, event: DataEnd) -> Reply:
        ctx = self.ctx
        tx, self.tx = self.tx, _Transaction()
        try:
            if event.too_big:
                return Reply(
                    552, "5.3.4", f"message exceeds the size limit of {ctx.max_message_size} bytes"
                )
            assert self.login is not None
            assert tx.spool is not None
            spool, pieces = tx.spool, tx.pending
            tx.pending, tx.pending_size = [], 0

            def finish() -> int:
                if pieces:
                    spool.write(b"".join(pieces))
                return spool.seek(0, io.SEEK_END)

            return await self._process(self.login, tx.recipients, spool, finish)
        finally:
            tx.close()

    async def _process(
        self, login: CmLogin, recipients: list[str], spool: IO[bytes], finish: Callable[[], int]
    ) -> Reply:
        """Size check and steps 1-11 of the client mail in ``spool``; ``finish`` writes its last
        pieces and returns its size, in the same worker-thread call as the sealing (issue 13:
        one hop for the whole stage)."""
        ctx = self.ctx
        # step 2: getLimits (A_22416, cached 24 h); maxMailSize -> X.3.4 (A_19355-01)
        limits = await self._limits(login)
        uploaded: list[str] = []
        kas_upload = self._uploader(login, uploaded)
        started = trio.current_time()
        size = 0

        def finish_and_prepare() -> send.Prepared | None:
            nonlocal size
            size = finish()
            if size > limits.max_mail_size:
                return None
            return send.prepare(
                ctx, login, recipients, spool,  # type: ignore[arg-type]
                kas_threshold=limits.kas_threshold, kas_upload=kas_upload,
            )  # fmt: skip

        try:
            prepared_or_none = await trio.to_thread.run_sync(
                finish_and_prepare, limiter=ctx.pipeline_limiter
            )
        except send.SendRefused as refusal:
            return await self._refused(login, recipients, size, refusal, uploaded, started)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._delete_uploads(login, uploaded)
            raise
        if prepared_or_none is None:
            too_big = Reply(
                552,
                "5.3.4",
                f"the mail has {size} bytes; maxMailSize of {login.account} is "
                f"{limits.max_mail_size} bytes (A_19355-01)",
            )
            tracing.refused(ctx.observer, account=login.account, recipients=recipients,
                            size=size, reply=too_big)  # fmt: skip
            return too_big
        prepared = prepared_or_none
        sealed = trio.current_time()
        tracing.sent(ctx.observer, account=login.account, recipients=recipients, size=size,
                     prepared=prepared, duration=sealed - started)  # fmt: skip
        sent = False
        try:
            result = await self._transmit(login, prepared)
            tracing.submitted(
                ctx.observer, account=login.account, prepared=prepared, transmitted=result,
                duration=trio.current_time() - sealed,
            )  # fmt: skip
            sent = result.reply.code == 250
            dropped = prepared.dropped + result.refused
            if dropped:
                await self._report(login, dropped, prepared.original_header)
            if sent:
                await self._versions(login)
                await self._renew_certificate(login)
            ctx.log.info(
                "cm smtp %s %s: %s for %d recipient(s), %d dropped: %d %s",
                self.peer, login.account, prepared.message_id, len(prepared.recipients),
                len(dropped), result.reply.code, result.reply.text,
            )  # fmt: skip
            return result.reply
        finally:
            if not sent:
                # step 7: sending failed after the upload -> deleteMailData
                with trio.CancelScope(shield=True):
                    await self._delete_uploads(login, uploaded)
            if in_memory(prepared.outer):
                prepared.close()  # nothing on disk: closing cannot block
            else:
                await trio.to_thread.run_sync(prepared.close)

    async def _refused(
        self,
        login: CmLogin,
        recipients: list[str],
        size: int,
        refusal: send.SendRefused,
        uploaded: list[str],
        started: float,
    ) -> Reply:
        """A mail that :func:`send.prepare` refused: uploads deleted, the MTA session reset or
        closed, the refusal traced and reported."""
        ctx = self.ctx
        ctx.log.info("cm smtp %s %s: not sent: %s", self.peer, login.account, refusal)
        await self._delete_uploads(login, uploaded)
        if refusal.close_upstream:
            # A_22419: KAS quota exhausted -> 521 and the MTA connection closed
            await self.quit_upstream()
        elif refusal.rset and self.upstream is not None:
            await self.upstream.rset()
        tracing.refused(
            ctx.observer, account=login.account, recipients=recipients, size=size,
            reply=refusal.reply, original_header=refusal.original_header,
            dropped=refusal.dropped, duration=trio.current_time() - started,
        )  # fmt: skip
        if refusal.dropped:
            await self._report(login, refusal.dropped, refusal.original_header)
        return refusal.reply

    # --- KAS, getLimits, versions ---------------------------------------------------------------

    def _https_base(self, account: str) -> str | None:
        try:
            return self.ctx.resolve_https(account.rpartition("@")[2].lower())
        except (LookupError, ValueError, OSError) as exc:
            self.ctx.log.info("cm %s: no REST services for %s: %s", self.peer, account, exc)
            return None

    async def _limits(self, login: CmLogin) -> Limits:
        ctx = self.ctx
        return await get_limits(
            ctx.limits,
            ssl_context=ctx.upstream_ssl,
            base_url=self._https_base(login.account),
            account=login.account,
            password=self._password,
            fallback_max=ctx.max_message_size,
            timeout=ctx.kas_timeout_seconds,
            log=ctx.log,
            connect_to=ctx.connect_to,
        )

    def _uploader(self, login: CmLogin, uploaded: list[str]) -> send.KasUploader:
        """addMailData to the sender's KAS, called from the pipeline's worker thread; every
        link is remembered in ``uploaded`` so that it can be deleted if the mail is not sent."""
        ctx = self.ctx
        base = self._https_base(login.account)
        password = self._password

        def upload(blob: KasBlob, message_id: str, recipients: list[str], expires: str) -> str:
            if base is None:
                raise KasError(None, f"no KAS known for {login.account}")
            link = trio.from_thread.run(
                partial(
                    kas_client.add_mail_data,
                    ctx.upstream_ssl,
                    base,
                    account=login.account,
                    password=password,
                    message_id=message_id,
                    recipients=recipients,
                    expires=expires,
                    blob=blob.file,  # type: ignore[arg-type]
                    blob_size=blob.size,
                    timeout=ctx.kas_timeout_seconds,
                    connect_to=ctx.connect_to,
                )
            )
            uploaded.append(link)
            ctx.log.info(
                "cm smtp %s %s: %d bytes to the KAS for %d recipient(s)",
                self.peer, login.account, blob.size, len(recipients),
            )  # fmt: skip
            return link

        return upload

    async def _delete_uploads(self, login: CmLogin, uploaded: list[str]) -> None:
        while uploaded:
            link = uploaded.pop()
            try:
                await kas_client.delete_mail_data(
                    self.ctx.upstream_ssl,
                    link,
                    account=login.account,
                    password=self._password,
                    timeout=self.ctx.kas_timeout_seconds,
                    connect_to=self.ctx.connect_to,
                )
                self.ctx.log.info("cm smtp %s: KAS blob deleted (not sent): %s", self.peer, link)
            except KasError as exc:
                self.ctx.log.warning(
                    "cm smtp %s: KAS blob %s not deleted: %s", self.peer, link, exc
                )

    async def _versions(self, login: CmLogin) -> None:
        """Step 12 (A_21387-01): the sender's VZD version against the Clientmodul's."""
        ctx = self.ctx
        account = login.account
        try:
            vzd_version = ctx.vzd.cached_version(account)
            if vzd_version is None:
                vzd_version = await trio.to_thread.run_sync(ctx.vzd.version, account)
        except DirectoryUnreachable as exc:
            ctx.log.warning("cm smtp %s %s: version not compared: %s", self.peer, account, exc)
            return
        order = compare_versions(vzd_version, ctx.pt_version)
        if order == 1 and ctx.version_notices.due("4017", account):
            notice = versions.version_notice(
                account, vzd_version=vzd_version, cm_version=ctx.cm_version,
                pt_version=ctx.pt_version,
            )  # fmt: skip
            upstream = self.upstream
            if upstream is not None and not upstream.closed:
                answer = await send.send_report(upstream, account, notice)
                ctx.log.info(
                    "cm smtp %s %s: VZD version %s > %s: 4017 notice %s",
                    self.peer, account, vzd_version, ctx.pt_version,
                    answer.code if answer else "lost",
                )  # fmt: skip
        elif order == -1 and ctx.version_notices.due("setAccount", account):
            await self._update_kim_version(login, vzd_version)

    async def _update_kim_version(self, login: CmLogin, vzd_version: str) -> None:
        ctx = self.ctx
        account = login.account
        version = versions.kim_version_of(ctx.pt_version)
        base = self._https_base(account)
        if base is None:
            return

        def jwt() -> str:
            sender = ctx.vzd.lookup(account, ctx.konnektor.certificate_validator(login.context()))
            card = send.signing_card(ctx, login, sender)
            return versions.account_manager_jwt(
                ctx.konnektor, login.context(), card.card_handle, account
            )

        try:
            token = await trio.to_thread.run_sync(jwt)
            await versions.set_kim_version(
                ctx.upstream_ssl,
                base,
                account=account,
                password=self._password,
                jwt=token,
                version=version,
                timeout=ctx.kas_timeout_seconds,
                connect_to=ctx.connect_to,
            )
        except (versions.SetAccountFailed, NoSigningCardError, KonnektorFault,
                KonnektorUnreachable, DirectoryUnreachable) as exc:  # fmt: skip
            ctx.log.warning("cm smtp %s %s: kimVersion not updated: %s", self.peer, account, exc)
            return
        ctx.vzd.invalidate(account)
        ctx.log.info(
            "cm smtp %s %s: kimVersion %s -> %s (setAccount)", self.peer, account, vzd_version,
            version,
        )  # fmt: skip

    async def _renew_certificate(self, login: CmLogin) -> None:
        """A_21381: the C.CM.TLS-CS of the PKCS#12 renewed through createCert a month before it
        expires, with this login's account, password and card (:mod:`.cm_certificate`); when
        that fails, the 4016 notice to the sender through this MTA session."""
        ctx = self.ctx
        keeper = ctx.cm_certificate
        if keeper is None or not keeper.due():
            return
        account = login.account
        base = self._https_base(account)

        def jwt() -> str:
            sender = ctx.vzd.lookup(account, ctx.konnektor.certificate_validator(login.context()))
            card = send.signing_card(ctx, login, sender)
            return versions.account_manager_jwt(
                ctx.konnektor, login.context(), card.card_handle, account
            )

        try:
            if base is None:
                raise CertRenewalFailed(f"no Account Manager known for {account}")
            token = await trio.to_thread.run_sync(jwt)
            ctx.upstream_ssl = await keeper.renew(
                ctx.upstream_ssl,
                base,
                account=account,
                password=self._password,
                jwt=token,
                timeout=ctx.kas_timeout_seconds,
                connect_to=ctx.connect_to,
            )
        except (CertRenewalFailed, versions.SetAccountFailed, NoSigningCardError, KonnektorFault,
                KonnektorUnreachable, DirectoryUnreachable) as exc:  # fmt: skip
            ctx.log.warning("cm smtp %s %s: PKCS#12 not renewed: %s", self.peer, account, exc)
            upstream = self.upstream
            if upstream is not None and not upstream.closed:
                notice = renewal_failed_notice(account, str(exc))
                await send.send_report(upstream, account, notice)
            return
        ctx.log.info(
            "cm smtp %s %s: TLS client certificate renewed through createCert, valid until %s",
            self.peer, account, f"{keeper.identity.not_after:%Y-%m-%d}",
        )  # fmt: skip

    @property
    def _upstream_gone(self) -> bool:
        """Logged in, and the MTA connection of this login has ended."""
        return self.login is not None and (self.upstream is None or self.upstream.closed)

    async def _transmit(self, login: CmLogin, prepared: send.Prepared) -> send.Transmitted:
        """Offer the message on the MTA connection opened at AUTH.

        KOM-LE-A_2016/2017: the Clientmodul keeps the MTA connection while the PVS connection
        lasts and closes the PVS connection when the MTA connection ends. An MTA that closed
        the connection while the PVS was idle (the Fachdienst's idle timeout, a restart, a
        ``421``) is not connected to again behind the PVS's back with its stored password:
        the PVS gets ``421 4.4.2`` (nothing was sent; it connects and sends again) and its
        connection is closed after the reply (:meth:`decide`). A connection that breaks during
        DATA gives ``451 4.4.2`` (the MTA may have the message) and ends the same way."""
        upstream = self.upstream
        if upstream is None or upstream.closed:
            return send.Transmitted(_mta_gone("the MTA connection was closed"))
        try:
            result = await send.transmit(
                upstream, login.account, prepared, limiter=self.ctx.pipeline_limiter
            )
        except (send.UpstreamLost, OSError, ssl.SSLError, trio.TooSlowError) as exc:
            await self.close_upstream()
            return send.Transmitted(_mta_gone(str(exc)))
        if upstream.closed:
            await self.close_upstream()
        return result

    async def _report(
        self, login: CmLogin, dropped: list[send.Dropped], original_header: HeaderBlock
    ) -> None:
        """One report mail to the sender for every dropped recipient (KOM-LE-A_2024-01,
        A_2192-01), unsigned and unencrypted, from the account to itself."""
        entries = [
            DroppedRecipient(d.address, d.code, d.reason, d.status)
            for d in dropped
            if _MAILBOX.fullmatch(d.address)
        ]
        if not entries:
            return
        out = io.BytesIO()
        write_sender_report(
            out,
            sender=login.account,
            original_header=original_header,
            dropped=entries,
            reporting_host=REPORTING_HOST,
        )
        upstream = self.upstream
        if upstream is None or upstream.closed:
            # KOM-LE-A_2016/2017: no new MTA connection behind the PVS's back; the message was
            # not sent either (4xx), so the report comes when the PVS sends it again
            self.ctx.log.warning(
                "cm smtp %s: report to %s not sent: the MTA connection is closed",
                self.peer, login.account,
            )  # fmt: skip
            return
        answer = await send.send_report(upstream, login.account, out.getvalue())
        tracing.reported(self.ctx.observer, account=login.account,
                         original_header=original_header, dropped=len(entries),
                         answer=answer)  # fmt: skip
        if answer is None or answer.code != 250:
            self.ctx.log.warning(
                "cm smtp %s: report to %s not accepted: %s", self.peer, login.account, answer
            )

    # --- cleanup -------------------------------------------------------------------------------

    def abort_transaction(self) -> None:
        self.tx.close()
        self.tx = _Transaction()

    async def close_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            await upstream.aclose()

    async def quit_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            await upstream.quit()


def _mta_gone(why: str) -> Reply:
    """KOM-LE-A_2016: the reply before the PVS connection is closed because the MTA's is."""
    return Reply(
        421,
        "4.4.2",
        _one_line(
            f"the Fachdienst's MTA closed the connection ({why}); the message was not sent: "
            "connect again and send it again (KOM-LE-A_2016)"
        ),
    )


def _one_line(text: str) -> str:
    return "".join(c if c >= " " and c != "\x7f" else " " for c in text)[:450]


def _adjust_connect_reply(
    event: ServerEvent, out: bytes, core: SmtpServer, *, before_auth: bool
) -> bytes:
    """The core's own answers, corrected to the CONNECT table of digest §1.3."""
    if not before_auth:
        return out
    if isinstance(event, ProtocolViolation):
        original = event.reply.encode()
        verb = event.line.split(b" ", 1)[0].split(b":", 1)[0].upper()
        if event.reply.code == 500 and event.reply.enhanced == "5.5.2":
            replacement = Reply(502, "5.5.1", event.reply.text).encode()
            return out.replace(original, replacement)
        if event.reply.code == 503 and verb in (b"MAIL", b"RCPT", b"DATA"):
            replacement = Reply(530, "5.7.0", f"{verb.decode()}: authentication required").encode()
            return out.replace(original, replacement)
    if isinstance(event, Vrfy):
        return out.replace(
            Reply(252, "2.5.0", "cannot VRFY user, but will accept message").encode(),
            _NOT_IMPLEMENTED.encode(),
        )
    return out


async def serve_cm_smtp_connection(
    ctx: ClientmodulContext, stream: trio.SSLStream[trio.SocketStream]
) -> None:
    """Handle one SMTPS connection of the PVS until QUIT, EOF, timeout or error; the plumbing
    (handshake, idle timeout, errors, close) is :mod:`kim_appliance.protocols.session`."""
    peer = peer_name(stream)
    timeout = ctx.session_timeout_seconds
    session = CmSmtpSession(ctx, peer)

    async def run() -> None:
        core = SmtpServer(
            hostname=send.CM_HOSTNAME,
            max_message_size=ctx.max_message_size,
            # digest §1.3: EHLO announces "AUTH LOGIN PLAIN" (KOM-LE-A_2009)
            auth_mechanisms=("LOGIN", "PLAIN"),
        )
        conn = SessionIO(
            stream,
            timeout=timeout,
            receive_size=RECEIVE_SIZE,
            first_timeout=ctx.listener_limits.first_command_seconds,
        )
        await conn.send_all(core.greeting(GREETING))

        async def handle(event: ServerEvent) -> bool:
            # replies are batched in conn until the next receive
            before_auth = not core.authenticated
            decision = await session.decide(event)
            if decision is not None:
                reply, close = decision
                conn.queue(core.send(reply, close=close))
            else:
                conn.queue(
                    _adjust_connect_reply(event, core.data_to_send(), core, before_auth=before_auth)
                )
            if isinstance(event, Quit):
                await session.quit_upstream()
            if isinstance(event, ConnectionClosed):
                conn.queue(core.data_to_send())
                return False
            return True

        def outgoing(out: bytes) -> bytes:
            if core.authenticated:
                return out
            return out.replace(_HELP_REPLY, _NOT_IMPLEMENTED.encode())

        await run_core(
            conn,
            core,
            handle,
            idle_reply=lambda: core.abort(Reply(421, "4.4.2", "idle timeout")),
            outgoing=outgoing,
        )

    async def cleanup() -> None:
        session.abort_transaction()
        with trio.CancelScope(shield=True):
            await session.close_upstream()

    with ctx.observer.session("clientmodul", "smtp"):
        await serve_session(
            name="cm smtp",
            peer=peer,
            log=ctx.log,
            run=run,
            cleanup=cleanup,
        )
