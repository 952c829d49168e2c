"""One POP3 session of the Fachdienst mail server: bytes between a TLS stream and the sans-IO
:class:`~kim_appliance.protocols.pop3.Pop3Server`, and the mailbox behind it.

The username is the plain KIM address (KOM-LE-A_2161); USER/PASS and AUTH PLAIN are offered.
APOP (listed in KOM-LE-A_2151) needs the password in clear on the server, which KOM-LE-A_2164
forbids: the Fachdienst offers no APOP timestamp and answers APOP with ``-ERR`` (our choice,
written down in docs/conformance.md). The maildrop is locked for the session (RFC 1939 §8,
``[IN-USE]``) by a lease in the store, so the lock holds across the nodes sharing it
(:mod:`kim_appliance.fachdienst.maildrops` renews it while the session is open). UIDs come
from the store and are never reused (KOM-LE-A_2152); deletions take effect at QUIT only.
Messages stream from the store in 1 MiB reads, dot-stuffed natively.
"""

from __future__ import annotations

import secrets

import trio

from kim_appliance.fachdienst.accounts import MAX_AUTH_FAILURES_PER_CONNECTION, client_of_peer
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.maildrops import holder_prefix
from kim_appliance.observe import FACHDIENST, Stage, stored_key
from kim_appliance.protocols.pop3 import (
    AuthAttempt,
    ConnectionClosed,
    Dele,
    Event,
    List,
    Noop,
    Pop3Server,
    Quit,
    RespCode,
    Response,
    Retr,
    Rset,
    Stat,
    Top,
    Uidl,
)
from kim_appliance.protocols.session import SessionIO, peer_name, run_core, serve_session
from kim_appliance.store import BlobReader, MessageNotFound, StoredMessage, StoreError

READ_SIZE = 1024 * 1024
#: a RETR piece up to this size is dot-stuffed on the event loop (tens of microseconds, less
#: than the thread hop it saves); larger ones in a worker thread
INLINE_STUFF_MAX = 64 * 1024
RECEIVE_SIZE = 65536


class Pop3Session:
    def __init__(self, fd: Fachdienst, core: Pop3Server, peer: str) -> None:
        self.fd = fd
        self.core = core
        self.peer = peer
        self.mailbox: str | None = None
        self.messages: list[StoredMessage] = []
        self.deleted: set[int] = set()
        #: failed logins on this connection; at MAX_AUTH_FAILURES_PER_CONNECTION the -ERR is
        #: the last line and the connection closes (``closing``)
        self.auth_failures = 0
        self.closing = False
        #: who holds the maildrop lock in the store: this session, on this node
        self.holder = holder_prefix(fd.node) + secrets.token_hex(8)

    async def release(self) -> None:
        """Give the maildrop lock back."""
        if self.mailbox is not None:
            self.mailbox = None
            await self.fd.maildrops.unlock(self.holder)

    def _message(self, number: int) -> StoredMessage | None:
        if 1 <= number <= len(self.messages) and number not in self.deleted:
            return self.messages[number - 1]
        return None

    async def answer(self, event: Event, stream: trio.abc.SendStream) -> None:
        """Write the answer to one decision event."""
        core = self.core
        if isinstance(event, AuthAttempt):
            await stream.send_all(core.send(await self._auth(event)))
        elif isinstance(event, Stat):
            live = [m for i, m in enumerate(self.messages, 1) if i not in self.deleted]
            size = sum(m.size for m in live)
            await stream.send_all(core.send(Response(True, f"{len(live)} {size}")))
        elif isinstance(event, List | Uidl):
            await self._listing(event, stream)
        elif isinstance(event, Retr | Top):
            await self._retrieve(event, stream)
        elif isinstance(event, Dele):
            if self._message(event.msg) is None:
                await stream.send_all(core.send(Response(False, f"no message {event.msg}")))
            else:
                self.deleted.add(event.msg)
                await stream.send_all(core.send(Response(True, f"message {event.msg} deleted")))
        elif isinstance(event, Rset):
            self.deleted.clear()
            await stream.send_all(core.send(Response(True, f"{len(self.messages)} messages")))
        elif isinstance(event, Noop):
            await stream.send_all(core.send(Response(True, "")))
        elif isinstance(event, Quit):
            await stream.send_all(core.send(await self._quit()))

    async def _auth(self, event: AuthAttempt) -> Response:
        if event.mechanism == "APOP" or event.password is None:
            return Response(
                False, "APOP is not offered: passwords are stored hashed only", RespCode.AUTH
            )
        result = await self.fd.auth.authenticate(
            event.username, event.password, client=client_of_peer(self.peer)
        )
        self.fd.log.info("pop3 %s AUTH %s %s", self.peer, event.username, result.for_log)
        if not result.ok:
            self.auth_failures += 1
            if self.auth_failures >= MAX_AUTH_FAILURES_PER_CONNECTION:
                self.closing = True
                text = f"{result.text}; {self.auth_failures} failures, closing the connection"
                return Response(False, text, RespCode.AUTH)
            return Response(False, result.text, RespCode.AUTH)
        account = await self.fd.local_account(result.address)
        # KOM-LE-A_2149/2150 (digest §3.2): a deregistered account reads its mailbox by POP3
        # until deregDate, and not after
        dereg_date = account.dereg_date if account is not None else None
        if (
            account is not None
            and account.status == "deregistered"
            and dereg_date is not None
            and dereg_date <= self.fd.clock()
        ):
            since = dereg_date.strftime("%Y-%m-%d %H:%M:%S UTC")
            self.fd.log.info("pop3 %s AUTH %s after deregDate", self.peer, result.address)
            return Response(
                False,
                f"account {result.address} is deregistered since {since} (deregDate): "
                "the mailbox can no longer be read",
                RespCode.AUTH,
            )
        if not await self.fd.maildrops.lock(result.address, self.holder):
            return Response(False, f"mailbox {result.address} is in use", RespCode.IN_USE)
        self.mailbox = result.address
        self.messages = await self.fd.store.mail.list(result.address)
        size = sum(m.size for m in self.messages)
        return Response(True, f"{result.address} has {len(self.messages)} messages ({size} octets)")

    async def _listing(self, event: List | Uidl, stream: trio.abc.SendStream) -> None:
        def line(number: int, message: StoredMessage) -> str:
            value = message.size if isinstance(event, List) else message.uid
            return f"{number} {value}"

        core = self.core
        if event.msg is not None:
            message = self._message(event.msg)
            if message is None:
                await stream.send_all(core.send(Response(False, f"no message {event.msg}")))
            else:
                await stream.send_all(core.send(Response(True, line(event.msg, message))))
            return
        rows = [line(i, m) for i, m in enumerate(self.messages, 1) if i not in self.deleted]
        out = core.send_multiline(f"{len(rows)} messages")
        body = "".join(f"{row}\r\n" for row in rows).encode("ascii")
        await stream.send_all(out + core.send_body(body) + core.end_multiline())

    async def _retrieve(self, event: Retr | Top, stream: trio.abc.SendStream) -> None:
        core = self.core
        message = self._message(event.msg)
        if message is None:
            await stream.send_all(core.send(Response(False, f"no message {event.msg}")))
            return
        opened = False
        started = trio.current_time()
        try:
            async with self.fd.store.mail.reader(message.id) as source:
                opened = True
                # what is not sent yet: a small message goes out in one send with its status
                # line and the final dot (issue 13: fewer TLS records and thread hops)
                pending = core.send_multiline(f"{message.size} octets")
                if isinstance(event, Retr):
                    while data := await source.read(READ_SIZE):
                        if len(data) <= INLINE_STUFF_MAX:
                            pending += core.send_body(data)
                            if len(pending) >= INLINE_STUFF_MAX:
                                await stream.send_all(pending)
                                pending = b""
                            continue
                        # dot-stuffing 1 MiB natively is too long a call for the trio thread
                        # (DESIGN: large native calls run via to_thread)
                        piece = await trio.to_thread.run_sync(core.send_body, data)
                        await stream.send_all(pending + piece if pending else piece)
                        pending = b""
                else:
                    pending += core.send_body(await _top(source, event.lines))
                await stream.send_all(pending + core.end_multiline())
        except MessageNotFound:
            if opened:
                raise
            # expired or deleted by another session meanwhile (retention runs on its own)
            await stream.send_all(
                core.send(Response(False, f"message {event.msg} has expired", RespCode.SYS_PERM))
            )
            return
        if isinstance(event, Retr):
            self.fd.observer.record(
                FACHDIENST,
                Stage.FETCHED,
                domain=self.fd.domain,
                ids=[stored_key(message.id)],
                recipients=[message.mailbox],
                size=message.size,
                detail=f"RETR by {self.peer}",
                duration=trio.current_time() - started,
                expires_at=message.expires_at,
            )

    async def _quit(self) -> Response:
        if self.mailbox is None:
            return Response(True, "bye")
        mailbox = self.mailbox
        ids = [self.messages[n - 1].id for n in sorted(self.deleted)]
        if ids and self.fd.maildrops.lost(self.holder):
            await self.release()
            return Response(
                False, "the maildrop lock lapsed during the session; no message was removed",
                RespCode.SYS_TEMP,
            )  # fmt: skip
        if ids:
            try:
                await self.fd.store.mail.delete(mailbox, ids)
            except StoreError as exc:
                self.fd.log.error("pop3 %s QUIT %s: deleting failed: %s", self.peer, mailbox, exc)
                await self.release()
                return Response(
                    False, "the mail store is unavailable; no message was removed",
                    RespCode.SYS_TEMP,
                )  # fmt: skip
        await self.release()
        self.fd.log.info("pop3 %s QUIT %s: %d deleted", self.peer, mailbox, len(ids))
        return Response(True, f"{len(ids)} messages deleted, bye")


async def _top(source: BlobReader, lines: int) -> bytes:
    """The header, the empty line and the first ``lines`` lines of the body (RFC 1939 TOP)."""
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = await source.read(64 * 1024)
        if not chunk:
            return data
        data += chunk
    header_end = end + 4
    body = data[header_end:]
    while body.count(b"\r\n") < lines:
        chunk = await source.read(64 * 1024)
        if not chunk:
            break
        body += chunk
    if lines == 0:
        return data[:header_end]
    cut = 0
    for _ in range(lines):
        nxt = body.find(b"\r\n", cut)
        if nxt < 0:
            cut = len(body)
            break
        cut = nxt + 2
    return data[:header_end] + body[:cut]


async def serve_pop3_connection(fd: Fachdienst, stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Handle one POP3S connection until QUIT, EOF, timeout or error (implicit TLS); the
    plumbing (handshake, idle timeout, errors, close) is :mod:`kim_appliance.protocols.session`."""
    peer = peer_name(stream)
    timeout = fd.config.session_timeout_seconds
    core = Pop3Server(hostname=fd.hostname)
    session = Pop3Session(fd, core, peer)

    async def handle(event: Event) -> bool:
        if isinstance(event, ConnectionClosed):
            io.queue(core.data_to_send())
            return False
        await session.answer(event, stream)
        return not session.closing

    io = SessionIO(
        stream,
        timeout=timeout,
        receive_size=RECEIVE_SIZE,
        first_timeout=fd.listener_limits.first_command_seconds,
    )

    async def run() -> None:
        fd.log.info("pop3 %s connected", peer)
        await io.send_all(core.greeting())
        # RFC 1939 §3: an idle session is closed without entering UPDATE
        await run_core(
            io, core, handle, idle_reply=lambda: b"-ERR [SYS/TEMP] idle timeout, closing\r\n"
        )

    async def cleanup() -> None:
        # nothing is deleted unless QUIT reached UPDATE; the maildrop lock goes
        await session.release()

    with fd.observer.session("fachdienst", "pop3"):
        await serve_session(
            name="pop3",
            peer=peer,
            log=fd.log,
            run=run,
            cleanup=cleanup,
        )
