"""The Clientmodul's POP3 side: the PVS talks POP3S to us, we talk POP3S to the Fachdienst.

Digest §1.5 (CM-1.13 §3.4, Tab_POP3_Ant_Init, Tab_POP3_Verbindung), in three states:

* **CONNECT**: greeting ``+OK KOM-LE Clientmodul POP3``; ``CAPA`` lists TOP, USER, SASL PLAIN
  and UIDL; ``USER``/``PASS`` or ``AUTH PLAIN`` parse the POP3 username (digest §1.2,
  KOM-LE-A_2032), check the Konnektor call context, open POP3S to the Fachdienst
  (``ctx.resolve_upstream``, implicit TLS verified against the TLS CA, KOM-LE-A_2074) and log in
  there with the plain account and the password (KOM-LE-A_2161), by SASL PLAIN or USER/PASS
  as the server's ``CAPA`` offers, the PVS's own mechanism first (KOM-LE-A_2035,
  :func:`_log_in`). Every failure is a plain
  ``-ERR`` (no response code) whose text says what failed; ``QUIT`` is ``+OK``; anything else
  ``-ERR``.
* **PROXY**: UIDL, DELE, RSET, NOOP and QUIT are relayed 1:1. ``TOP n m`` always goes upstream
  as ``TOP n 0``, so no fragment of an encrypted body reaches the PVS (KOM-LE-A_2041): the PVS
  gets the header (with ``X-KIM-Dienstkennung``) and no body lines.
* **PROCESS**: ``RETR`` fetches the message upstream into a spool file and runs the receive
  pipeline (:mod:`kim_appliance.clientmodul.receive`) on it; the blob of a large mail is
  fetched from the sender's KAS over HTTPS (:mod:`.kas_client`) on the pipeline's behalf.

LIST and STAT must give the sizes RETR then returns, and those are only known after
processing. So the session processes a message on first need (LIST, STAT or RETR) and keeps
the processed spool until DELE or the end of the session (our choice, see docs): STAT and
``LIST`` without argument therefore process every message of the mailbox. Spools are anonymous
temporary files in ``ctx.spool_dir``; nothing stays on disk after the session
(KOM-LE-A_2005).

Resource handling: one upstream connection per session; message bodies move in chunks of at
most 1 MiB (disk writes, dot-stuffing and the pipeline run in worker threads, the pipeline under
``ctx.pipeline_limiter``). Error handling: a broken or silent upstream ends the session with
``-ERR``; a bug in one session is logged and ends that session only. This module never deletes
anything upstream on its own: only the PVS's DELE + QUIT do.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

import trio

from kim_appliance.clientmodul import tracing
from kim_appliance.clientmodul.context import ClientmodulContext
from kim_appliance.clientmodul.kas_client import read_mail_data
from kim_appliance.clientmodul.keys import DecryptionKeyFinder
from kim_appliance.clientmodul.ports import KonnektorFault, KonnektorUnreachable
from kim_appliance.clientmodul.receive import KasFetcher, ReceivedMessage, process_message
from kim_appliance.clientmodul.spool import in_memory, spool_file
from kim_appliance.clientmodul.tls_sessions import SESSIONS
from kim_appliance.clientmodul.username import CmLogin, UsernameError, parse_pop3_username
from kim_appliance.protocols.pop3 import (
    NEED_DATA,
    AuthAttempt,
    BodyChunk,
    BodyEnd,
    ConnectionClosed,
    Dele,
    Event,
    List,
    Noop,
    Pop3Client,
    Pop3Reply,
    Pop3Server,
    ProtocolViolation,
    Quit,
    RemoteProtocolError,
    Response,
    Retr,
    Rset,
    Stat,
    Top,
    Uidl,
)
from kim_appliance.protocols.session import (
    NETWORK_ERRORS,
    SessionIO,
    peer_name,
    run_core,
    serve_session,
)

#: The greeting of digest §1.5 (Tab_POP3_Ant_Init).
GREETING = "KOM-LE Clientmodul POP3"
READ_SIZE = 1024 * 1024
#: A processed message up to this size, still in memory, is dot-stuffed on the event loop
#: (tens of microseconds natively, less than the thread hop it saves); larger ones in a worker.
INLINE_RETR_MAX = 64 * 1024
#: The listing of a mailbox (LIST/UIDL) is small; refuse an upstream that sends more.
MAX_LISTING = 16 * 1024 * 1024
RECEIVE_SIZE = 65536


class UpstreamError(Exception):
    """The Fachdienst connection failed, broke the protocol, or went silent."""


class _Upstream:
    """The POP3S connection to the Fachdienst, driven through the sans-IO Pop3Client."""

    def __init__(self, stream: trio.abc.Stream, timeout: float) -> None:
        self.stream = stream
        self.client = Pop3Client()
        self.timeout = timeout

    async def _event(
        self, idle: trio.CancelScope | None = None
    ) -> Pop3Reply | BodyChunk | BodyEnd | ConnectionClosed:
        """The next upstream event. With ``idle`` (a scope the caller holds around a long body),
        the idle timeout moves that scope's deadline instead of opening a scope per TLS record,
        which costs measurably on a 35 MB RETR."""
        while True:
            try:
                event = self.client.next_event()
            except RemoteProtocolError as exc:
                raise UpstreamError(f"the Fachdienst broke POP3: {exc}") from exc
            if event is not NEED_DATA:
                assert not isinstance(event, type)
                return event
            if idle is not None:
                idle.deadline = trio.current_time() + self.timeout
                data = await self._receive()
            else:
                with trio.move_on_after(self.timeout) as scope:
                    data = await self._receive()
                if scope.cancelled_caught:
                    raise self._timed_out()
            self.client.receive_data(data if isinstance(data, bytes) else bytes(data))

    async def _receive(self) -> bytes | bytearray:
        try:
            return await self.stream.receive_some(65536)
        except NETWORK_ERRORS as exc:
            raise UpstreamError(f"the Fachdienst connection broke: {exc!r}") from exc

    def _timed_out(self) -> UpstreamError:
        return UpstreamError(f"the Fachdienst did not answer within {self.timeout:g} s")

    async def reply(self) -> Pop3Reply:
        event = await self._event()
        if not isinstance(event, Pop3Reply):
            raise UpstreamError(f"expected a status line from the Fachdienst, got {event!r}")
        return event

    async def command(self, data: bytes) -> Pop3Reply:
        try:
            await self.stream.send_all(data)
        except NETWORK_ERRORS as exc:
            raise UpstreamError(f"the Fachdienst connection broke: {exc!r}") from exc
        return await self.reply()

    async def body(self) -> AsyncIterator[bytes]:
        """The (unstuffed) body of the multi-line answer just announced."""
        while True:
            event = await self._event()
            if isinstance(event, BodyEnd):
                return
            if not isinstance(event, BodyChunk):
                raise UpstreamError(f"expected a multi-line body from the Fachdienst: {event!r}")
            yield event.data

    async def listing(self) -> list[str]:
        """The lines of a small multi-line answer (LIST, UIDL)."""
        data = bytearray()
        async for chunk in self.body():
            data += chunk
            if len(data) > MAX_LISTING:
                raise UpstreamError(f"listing from the Fachdienst exceeds {MAX_LISTING} bytes")
        return [line for line in bytes(data).decode("ascii", "replace").splitlines() if line]

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


@dataclass
class CmPop3Session:
    """The state of one PVS session: login, upstream, and the processed messages."""

    ctx: ClientmodulContext
    core: Pop3Server
    peer: str
    finder: DecryptionKeyFinder
    login: CmLogin | None = None
    upstream: _Upstream | None = None
    #: message number -> the processed message (what RETR returns), see the module docstring
    processed: dict[int, ReceivedMessage] = field(default_factory=dict)

    # --- answers --------------------------------------------------------------------------

    async def answer(self, event: Event, stream: trio.abc.SendStream) -> bool:
        """Write the answer to one decision event; False when the session must end."""
        core = self.core
        if isinstance(event, AuthAttempt):
            await stream.send_all(core.send(await self._auth(event)))
            return True
        upstream = self.upstream
        assert upstream is not None  # the core hands out no transaction command before login
        if isinstance(event, Stat):
            await self._stat(upstream, stream)
        elif isinstance(event, List):
            await self._list(upstream, event, stream)
        elif isinstance(event, Uidl):
            await self._uidl(upstream, event, stream)
        elif isinstance(event, Retr):
            await self._retr(upstream, event, stream)
        elif isinstance(event, Top):
            await self._top(upstream, event, stream)
        elif isinstance(event, Dele):
            reply = await upstream.command(upstream.client.dele(event.msg))
            if reply.ok:
                self._drop(event.msg)
            await stream.send_all(core.send(_relayed(reply)))
        elif isinstance(event, Rset):
            await stream.send_all(
                core.send(_relayed(await upstream.command(upstream.client.rset())))
            )
        elif isinstance(event, Noop):
            await stream.send_all(
                core.send(_relayed(await upstream.command(upstream.client.noop())))
            )
        elif isinstance(event, Quit):
            reply = await upstream.command(upstream.client.quit())
            self.ctx.log.info("cm pop3 %s QUIT %s: %s", self.peer, self._account, reply.text)
            await stream.send_all(core.send(_relayed(reply)))
            return False
        return True

    @property
    def _account(self) -> str:
        return self.login.account if self.login else "?"

    async def _auth(self, event: AuthAttempt) -> Response:
        """CONNECT: username, Konnektor context, upstream login (digest §1.5); plain -ERR."""
        if event.password is None:
            return Response(False, "only USER/PASS and AUTH PLAIN are offered")
        try:
            login = parse_pop3_username(event.username, defaults=self.ctx.context_defaults)
        except UsernameError as exc:
            self.ctx.log.info("cm pop3 %s: %s", self.peer, exc)
            return Response(False, _line(str(exc)))
        context = login.context()
        try:
            # the call context must be one the Konnektor accepts (4004-4006 and friends -> -ERR)
            await trio.to_thread.run_sync(self.ctx.konnektor.get_cards, context)
        except KonnektorUnreachable as exc:
            # the PVS may still fetch mail; every KIM message will say 03/4011 (digest §1.6)
            self.ctx.log.warning("cm pop3 %s: context not checked: %s", self.peer, exc)
        except KonnektorFault as exc:
            return Response(False, _line(f"Konnektor refused the call context: {exc}"))
        try:
            host, port = self.ctx.resolve_upstream(login.host, login.port, "pop3", login.account)
        except (LookupError, ValueError, OSError) as exc:
            return Response(False, _line(f"no POP3 server for {login.account}: {exc}"))
        # the resolved server first, then the other live nodes serving the domain (a cluster)
        domain = (login.host or login.account.rpartition("@")[2]).lower()
        targets = [(host, port)]
        targets += [t for t in self.ctx.fallbacks(domain, "pop3") if t != (host, port)]
        for n, (host, port) in enumerate(targets):
            try:
                upstream = await self._connect(host, port, login.host or host)
                break
            except (UpstreamError, trio.TooSlowError, *NETWORK_ERRORS) as exc:
                self.ctx.log.info("cm pop3 %s: upstream %s:%d: %r", self.peer, host, port, exc)
                if n == len(targets) - 1:
                    return Response(False, _line(f"POP3 server {host}:{port} not reachable: {exc}"))
        try:
            greeting = await upstream.reply()
            SESSIONS.keep(upstream.stream, port)  # the tickets came with the greeting
            if not greeting.ok:
                raise UpstreamError(f"greeting: -ERR {greeting.text}")
            reply = await _log_in(upstream, login.account, event.password, event.mechanism)
        except UpstreamError as exc:
            await upstream.aclose()
            return Response(False, _line(f"POP3 server {host}:{port}: {exc}"))
        if not reply.ok:
            await upstream.aclose()
            self.ctx.log.info("cm pop3 %s: login %s refused upstream", self.peer, login.account)
            return Response(False, _line(f"login refused by the POP3 server: {reply.text}"))
        self.login, self.upstream = login, upstream
        self.ctx.log.info("cm pop3 %s: %s logged in at %s:%d", self.peer, login.account, host,
                          port)  # fmt: skip
        return Response(True, _line(reply.text or f"{login.account} logged in"))

    async def _connect(self, host: str, port: int, server_hostname: str) -> _Upstream:
        timeout = self.ctx.session_timeout_seconds
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port)
            stream = trio.SSLStream(tcp, self.ctx.upstream_ssl, server_hostname=server_hostname)
            SESSIONS.offer(stream, port)  # TLS 1.3 resumption between our own components
            try:
                await stream.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return _Upstream(stream, timeout)

    async def _numbers(self, upstream: _Upstream) -> list[int] | Pop3Reply:
        """The message numbers the Fachdienst lists (deleted ones left out)."""
        reply = await upstream.command(upstream.client.list())
        if not reply.ok:
            return reply
        numbers = []
        for line in await upstream.listing():
            try:
                numbers.append(int(line.split()[0]))
            except (ValueError, IndexError) as exc:
                raise UpstreamError(f"bad LIST line from the Fachdienst: {line!r}") from exc
        return numbers

    async def _stat(self, upstream: _Upstream, stream: trio.abc.SendStream) -> None:
        numbers = await self._numbers(upstream)
        if isinstance(numbers, Pop3Reply):
            await stream.send_all(self.core.send(_relayed(numbers)))
            return
        total = 0
        for n in numbers:
            processed = await self._ensure(upstream, n)
            if isinstance(processed, Pop3Reply):
                await stream.send_all(self.core.send(_relayed(processed)))
                return
            total += processed.size
        await stream.send_all(self.core.send(Response(True, f"{len(numbers)} {total}")))

    async def _list(self, upstream: _Upstream, event: List, stream: trio.abc.SendStream) -> None:
        core = self.core
        if event.msg is not None:
            reply = await upstream.command(upstream.client.list(event.msg))
            if not reply.ok:
                await stream.send_all(core.send(_relayed(reply)))
                return
            processed = await self._ensure(upstream, event.msg)
            if isinstance(processed, Pop3Reply):
                await stream.send_all(core.send(_relayed(processed)))
            else:
                await stream.send_all(core.send(Response(True, f"{event.msg} {processed.size}")))
            return
        numbers = await self._numbers(upstream)
        if isinstance(numbers, Pop3Reply):
            await stream.send_all(core.send(_relayed(numbers)))
            return
        rows = []
        for n in numbers:
            processed = await self._ensure(upstream, n)
            if isinstance(processed, Pop3Reply):
                await stream.send_all(core.send(_relayed(processed)))
                return
            rows.append(f"{n} {processed.size}\r\n")
        out = core.send_multiline(f"{len(rows)} messages")
        body = "".join(rows).encode("ascii")
        await stream.send_all(out + core.send_body(body) + core.end_multiline())

    async def _uidl(self, upstream: _Upstream, event: Uidl, stream: trio.abc.SendStream) -> None:
        """UIDL passes through (KOM-LE-A_2152: the Fachdienst's UIDs are the PVS's)."""
        core = self.core
        reply = await upstream.command(upstream.client.uidl(event.msg))
        if not reply.multiline:
            await stream.send_all(core.send(_relayed(reply)))
            return
        rows = await upstream.listing()
        out = core.send_multiline(_line(reply.text))
        body = "".join(f"{row}\r\n" for row in rows).encode("ascii", "replace")
        await stream.send_all(out + core.send_body(body) + core.end_multiline())

    async def _top(self, upstream: _Upstream, event: Top, stream: trio.abc.SendStream) -> None:
        """KOM-LE-A_2041: ``TOP n m`` goes upstream as ``TOP n 0``, whatever ``m`` is."""
        core = self.core
        reply = await upstream.command(upstream.client.top(event.msg, 0))
        if not reply.ok:
            await stream.send_all(core.send(_relayed(reply)))
            return
        await stream.send_all(core.send_multiline(_line(reply.text)))
        async for chunk in upstream.body():
            await stream.send_all(core.send_body(chunk))
        await stream.send_all(core.end_multiline())

    async def _retr(self, upstream: _Upstream, event: Retr, stream: trio.abc.SendStream) -> None:
        core = self.core
        processed = await self._ensure(upstream, event.msg)
        if isinstance(processed, Pop3Reply):
            await stream.send_all(core.send(_relayed(processed)))
            return
        pending = core.send_multiline(f"{processed.size} octets")
        source = processed.file
        if processed.size <= INLINE_RETR_MAX and in_memory(source):
            # small and in memory: read and dot-stuffed on the event loop, sent in one write
            # with the status line and the final dot (issue 13: no thread hop)
            source.seek(0)
            body = source.read()
            await stream.send_all(pending + core.send_body(body) + core.end_multiline())
            return
        rewind = True

        def next_piece() -> tuple[bytes, bool]:
            nonlocal rewind
            if rewind:  # in the first read's thread call (one hop fewer)
                source.seek(0)
                rewind = False
            data = source.read(READ_SIZE)
            # a spool (memory or a regular file, buffered) returns less than asked only at its
            # end: the end is known in the same call (issue 13: one hop for a small message)
            return (core.send_body(data) if data else b""), len(data) < READ_SIZE

        while True:
            piece, end = await trio.to_thread.run_sync(next_piece)
            if end:
                break
            # the status line goes with the first piece: one TLS record fewer
            await stream.send_all(pending + piece if pending else piece)
            pending = b""
        await stream.send_all(pending + piece + core.end_multiline())

    # --- PROCESS ----------------------------------------------------------------------------

    async def _ensure(self, upstream: _Upstream, number: int) -> ReceivedMessage | Pop3Reply:
        """The processed message ``number``: from this session's cache, or RETR upstream into
        a spool file and run the receive pipeline (digest §1.5 PROCESS)."""
        cached = self.processed.get(number)
        if cached is not None:
            return cached
        reply = await upstream.command(upstream.client.retr(number))
        if not reply.ok:
            return reply
        # in memory up to 1 MiB: made on the event loop, no file is created yet
        raw = _spool_file(self.ctx.spool_dir)
        started = trio.current_time()
        try:
            tail = await _spool_body(upstream, raw)
            assert self.login is not None
            process = partial(
                process_message,
                raw,
                login=self.login,
                finder=self.finder,
                ctx=self.ctx,
                fetch_kas=self._kas_fetcher(),
            )

            def write_tail_and_process() -> ReceivedMessage:
                # the body's last piece is written in the pipeline's own thread call (issue
                # 13: one worker-thread call per stage; a small message has only this piece)
                if tail:
                    raw.write(tail)
                return process()

            received = await trio.to_thread.run_sync(
                write_tail_and_process, limiter=self.ctx.pipeline_limiter
            )
        except BaseException:
            raw.close()
            raise
        self.ctx.log.info(
            "cm pop3 %s: message %d for %s: %s", self.peer, number, self._account,
            received.summary(),
        )  # fmt: skip
        tracing.received(self.ctx.observer, account=self._account, message=received,
                         duration=trio.current_time() - started)  # fmt: skip
        self.processed[number] = received
        return received

    def _kas_fetcher(self) -> KasFetcher:
        """readMailData for the receive pipeline's worker thread, run in the event loop
        (digest §1.5 step 5: GET from the sender's KAS with ``recipient: <own address>``)."""
        ctx = self.ctx

        def fetch(link: str, recipient: str, out: BinaryIO) -> None:
            trio.from_thread.run(
                partial(
                    read_mail_data,
                    ctx.upstream_ssl,
                    link,
                    recipient=recipient,
                    out=out,
                    timeout=ctx.kas_timeout_seconds,
                    connect_to=ctx.connect_to,
                )
            )

        return fetch

    def _drop(self, number: int) -> None:
        received = self.processed.pop(number, None)
        if received is not None:
            received.close()

    def close(self) -> None:
        for number in list(self.processed):
            self._drop(number)


def _spool_file(spool_dir: Path) -> BinaryIO:
    """An anonymous spool (no name on disk: gone when closed, KOM-LE-A_2005); in memory up
    to 1 MiB."""
    return spool_file(spool_dir)


async def _spool_body(upstream: _Upstream, raw: BinaryIO) -> bytes:
    """The RETR body into ``raw`` in writes of 1 MiB (disk I/O in a worker thread); returns
    the last piece (under 1 MiB), not yet written, for the caller's next worker-thread call."""
    pending: list[bytes] = []
    size = 0
    # one idle scope for the whole body (not one per TLS record); lifted while writing to disk
    with trio.CancelScope() as idle:
        while True:
            event = await upstream._event(idle)
            idle.deadline = math.inf
            if isinstance(event, BodyEnd):
                break
            if not isinstance(event, BodyChunk):
                raise UpstreamError(f"expected a multi-line body from the Fachdienst: {event!r}")
            pending.append(event.data)
            size += len(event.data)
            if size >= READ_SIZE:
                await trio.to_thread.run_sync(raw.write, b"".join(pending))
                pending, size = [], 0
    if idle.cancelled_caught:
        raise upstream._timed_out()
    return b"".join(pending)


async def _log_in(upstream: _Upstream, account: str, password: str, pvs_used: str) -> Pop3Reply:
    """Log in at the Fachdienst with the client part of USER/PASS or SASL PLAIN
    (KOM-LE-A_2035: the Clientmodul must support both; the text does not say which it uses).

    Our choice follows the example of gemSpec_CM_KOMLE §3.4.5: ``CAPA`` first, then the
    mechanism the PVS used (``pvs_used``: ``USER`` or ``PLAIN``) when the server announces it,
    else the other one. USER/PASS counts as announced when ``CAPA`` lists ``USER`` or is
    answered ``-ERR`` (an RFC 1939 server without extensions). Never both for one login: a
    refused password must count once towards the Fachdienst's lockout (KOM-LE-A_2167), so a
    refusal is not retried with the other mechanism. A server that announces neither gets no
    password (KOM-LE-A_2036: other mechanisms are optional and not built).
    """
    capa = await upstream.command(upstream.client.capa())
    capabilities = [line.upper().split() for line in await upstream.listing()] if capa.ok else []
    sasl_plain = any(c[:1] == ["SASL"] and "PLAIN" in c[1:] for c in capabilities)
    user_pass = not capa.ok or any(c[:1] == ["USER"] for c in capabilities)
    if not (sasl_plain or user_pass):
        raise UpstreamError("the POP3 server offers neither SASL PLAIN nor USER/PASS (CAPA)")
    if sasl_plain and (pvs_used == "PLAIN" or not user_pass):
        return await upstream.command(
            upstream.client.auth_plain(account, password, initial_response=True)
        )
    reply = await upstream.command(upstream.client.user(account))
    if not reply.ok:
        return reply
    return await upstream.command(upstream.client.pass_(password))


def _relayed(reply: Pop3Reply) -> Response:
    """A single-line upstream reply as ours (digest §1.5 PROXY: relayed unchanged)."""
    return Response(reply.ok, _line(reply.text), reply.code)


def _line(text: str) -> str:
    """One response line: no CR/LF, within RFC 2449's 512 octets."""
    text = text.replace("\r", " ").replace("\n", " ")
    encoded = text.encode("utf-8")
    if len(encoded) > 400:
        text = encoded[:397].decode("utf-8", "ignore") + "..."
    return text


async def serve_cm_pop3_connection(
    ctx: ClientmodulContext, stream: trio.SSLStream[trio.SocketStream]
) -> None:
    """Handle one POP3S connection from the PVS until QUIT, EOF, timeout or error; the plumbing
    (handshake, idle timeout, errors, close) is :mod:`kim_appliance.protocols.session`."""
    peer = peer_name(stream)
    timeout = ctx.session_timeout_seconds
    core = Pop3Server(hostname="clientmodul")
    session = CmPop3Session(ctx, core, peer, ctx.key_finder)
    conn = SessionIO(
        stream,
        timeout=timeout,
        receive_size=RECEIVE_SIZE,
        first_timeout=ctx.listener_limits.first_command_seconds,
    )

    async def handle(event: Event) -> bool:
        if isinstance(event, ConnectionClosed):
            conn.queue(core.data_to_send())
            return False
        if isinstance(event, ProtocolViolation):
            return True  # answered by the core (digest §1.5: anything else -> -ERR)
        try:
            return await session.answer(event, stream)
        except UpstreamError as exc:
            ctx.log.warning("cm pop3 %s: %s", peer, exc)
            await conn.send_all(core.data_to_send() + _error_line(str(exc)))
            return False

    async def run() -> None:
        ctx.log.info("cm pop3 %s connected", peer)
        await conn.send_all(Response(True, GREETING).render())
        await run_core(conn, core, handle, idle_reply=lambda: b"-ERR idle timeout, closing\r\n")

    async def cleanup() -> None:
        session.close()
        if session.upstream is not None:
            await session.upstream.aclose()

    with ctx.observer.session("clientmodul", "pop3"):
        await serve_session(
            name="cm pop3",
            peer=peer,
            log=ctx.log,
            run=run,
            cleanup=cleanup,
        )


def _error_line(text: str) -> bytes:
    return Response(False, _line(f"Fachdienst connection failed: {text}")).render()
