"""The relay worker: sends queued mail to the Fachdienst of another domain over SMTPS.

Each queue entry is one message for the recipients of one domain. The worker connects with
implicit TLS, presents C.FD.TLS-C and verifies the other side against the TLS CA, and offers
the message with the sender's DSN parameters (RFC 3461: NOTIFY, ORCPT, RET, ENVID). Per
recipient: accepted -> done; refused 5xx -> a bounce to the sender (RFC 3464, if NOTIFY allows
it); 4xx or no connection -> tried again after the configured waits, and bounced when
``relay_give_up_seconds`` have passed. An entry is removed from the queue only after the other
Fachdienst has acknowledged or the sender has been told, so a crash repeats a delivery rather
than losing it; the repeat carries the entry's relay id (``KIM-Relay-ID``, first field), by
which the other Fachdienst recognises what it already delivered (fachdienst.delivery), so a
repeat is never a second copy.

Claims: the worker takes due entries from its Fachdienst's queue in the store with a claim
(``relay.claim``, a lease of ``fd.relay_lease``, 30 s by default) and renews the claims of its
round while the attempts run (``relay.renew``, :data:`RENEWALS_PER_LEASE` times per lease), so
that two nodes sharing a store never attempt one entry at once, and an entry whose node died is
attempted by another soon after its last renewal. Where the other Fachdienst is: its listener
in this process first, then the other live nodes of a cluster that serve its domain
(``RelayEndpoints.candidates``), a connection failure moving on to the next.

Restarts: the workers of an appliance start working only once every Fachdienst of the
appliance has registered its endpoint (``RelayEndpoints.complete``), and a domain without a
known endpoint is a temporary failure for a TI domain (see :func:`no_route_reply`): a queued
message is never bounced because its Fachdienst had not bound yet (issue 11).

Connections are reused (issue 7: a mutual-TLS handshake per message cost more than the
message): after a transaction the connection goes back to :class:`RelayConnections`, idle,
for ``IDLE_SECONDS``; the next message to the same Fachdienst takes it, sends RSET and only
then MAIL. A connection that fails the RSET (the other side closed it, e.g. its idle timeout
with 421) is closed and a new one opened in the same attempt, so nothing is lost or delayed;
a connection on which anything else failed is never reused. It never sends a message twice on
purpose: a failure after DATA leaves the recipients deferred, as before.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass, field
from types import TracebackType

import trio

from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.delivery import relay_id_field, send_report
from kim_appliance.fachdienst.rules import is_ti_address
from kim_appliance.mail.dsn import DsnRecipient
from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import parse_header_block
from kim_appliance.observe import FACHDIENST, Stage, relay_key
from kim_appliance.protocols.smtp import (
    NEED_DATA,
    OriginalRecipient,
    RemoteProtocolError,
    ServerReply,
    SmtpClient,
)
from kim_appliance.store import RelayEntry, RelayRecipient, StoreError

#: the worker looks at the queue at least this often, and whenever a message is queued
POLL_SECONDS = 5.0
#: one attempt (connect, send, QUIT) may take this long
ATTEMPT_TIMEOUT = 300.0
PARALLEL_ATTEMPTS = 4
#: entries claimed per round: what the parallel attempts finish in two rounds of attempts
CLAIM_BATCH = 2 * PARALLEL_ATTEMPTS
#: the claims of a round are renewed this many times per lease (``fd.relay_lease``, ``[cluster]
#: relay_lease_seconds``): a live node keeps what it works on however long the attempts take,
#: and two renewals in a row may fail before another node may take an entry
RENEWALS_PER_LEASE = 3
READ_SIZE = 1024 * 1024
#: a delivery report carries at most this much of the relayed message's header
HEADER_READ = 256 * 1024
#: an unused relay connection is closed (QUIT) after this long; well below the receiving
#: side's session timeout (300 s by default), and a closed one is noticed by the RSET anyway
IDLE_SECONDS = 30.0
#: QUIT on an idle connection being closed may take this long
QUIT_TIMEOUT = 2.0


class _TemporaryFailure(Exception):
    pass


_NETWORK_ERRORS = (
    OSError,
    ssl.SSLError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    RemoteProtocolError,
    _TemporaryFailure,
)


@dataclass(eq=False)
class _Connection:
    """One open SMTPS session with another Fachdienst, greeted and past EHLO."""

    target: tuple[str, str, int]  # (domain, host, port)
    stream: trio.SSLStream[trio.SocketStream]
    client: SmtpClient
    idle_since: float = 0.0
    messages: int = 0


class RelayConnections:
    """The relay's open connections per target Fachdienst, idle ones kept for reuse.

    ``acquire`` hands out an idle connection that still answers RSET with 250, or opens a new
    one; ``release`` takes back a connection whose transaction ended normally; ``discard``
    closes one after any failure. ``close_idle`` closes those unused for ``idle_seconds``
    (the worker calls it every round), ``aclose`` all of them. ``opened`` counts the TLS
    connections made, for the log and the tests.

    Resource handling: at most ``max_idle`` idle connections per target (one per parallel
    attempt); a connection is in the pool or with exactly one attempt, never both.
    """

    def __init__(
        self,
        fd: Fachdienst,
        *,
        idle_seconds: float = IDLE_SECONDS,
        max_idle: int = PARALLEL_ATTEMPTS,
    ) -> None:
        self._fd = fd
        self.idle_seconds = idle_seconds
        self.max_idle = max_idle
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self.opened = 0

    async def __aenter__(self) -> RelayConnections:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def acquire(self, domain: str, host: str, port: int) -> _Connection:
        target = (domain, host, port)
        idle = self._idle.get(target, [])
        while idle:
            conn = idle.pop()  # the most recently used one: the least likely to be closed
            if trio.current_time() - conn.idle_since >= self.idle_seconds:
                await self._quit(conn)
                continue
            try:
                await conn.stream.send_all(conn.client.rset())
                reply = await _reply(conn.stream, conn.client)
            except _NETWORK_ERRORS as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if reply.code == 250:
                    return conn
                why = f"RSET {reply.code} {reply.text}"
            self._fd.log.info("relay connection to %s dropped (%s); reconnecting", domain, why)
            await trio.aclose_forcefully(conn.stream)
        return await self._open(target)

    async def release(self, conn: _Connection) -> None:
        conn.messages += 1
        conn.idle_since = trio.current_time()
        idle = self._idle.setdefault(conn.target, [])
        idle.append(conn)
        if len(idle) > self.max_idle:  # more parallel attempts than the limiter allows
            await self._quit(idle.pop(0))

    async def discard(self, conn: _Connection) -> None:
        await trio.aclose_forcefully(conn.stream)

    async def close_idle(self) -> None:
        """Close (QUIT) every connection unused for ``idle_seconds``."""
        now = trio.current_time()
        for target, idle in list(self._idle.items()):
            expired = [c for c in idle if now - c.idle_since >= self.idle_seconds]
            self._idle[target] = [c for c in idle if c not in expired]
            for conn in expired:
                await self._quit(conn)

    async def aclose(self) -> None:
        """Close every idle connection (QUIT if there is time; the worker may be cancelled)."""
        idle = [c for conns in self._idle.values() for c in conns]
        self._idle.clear()
        for conn in idle:
            await self._quit(conn)

    @property
    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    async def _open(self, target: tuple[str, str, int]) -> _Connection:
        domain, host, port = target
        tcp = await trio.open_tcp_stream(host, port)
        stream = trio.SSLStream(tcp, self._fd.client_ssl, server_hostname=domain)
        client = SmtpClient(hostname=self._fd.hostname)
        try:
            greeting = await _reply(stream, client)
            if greeting.code != 220:
                raise _TemporaryFailure(f"greeting {greeting.code} {greeting.text}")
            await stream.send_all(client.ehlo())
            ehlo = await _reply(stream, client)
            if ehlo.code != 250:
                raise _TemporaryFailure(f"EHLO {ehlo.code} {ehlo.text}")
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        self.opened += 1
        self._fd.log.info("relay connection to %s (%s:%d) opened", domain, host, port)
        return _Connection(target, stream, client)

    async def _quit(self, conn: _Connection) -> None:
        with trio.move_on_after(QUIT_TIMEOUT) as scope:
            scope.shield = True  # also on shutdown: say goodbye, briefly
            try:
                await conn.stream.send_all(conn.client.quit())
                await _reply(conn.stream, conn.client)
            except _NETWORK_ERRORS:
                pass
        await trio.aclose_forcefully(conn.stream)


@dataclass
class _Outcome:
    delivered: list[RelayRecipient] = field(default_factory=list)
    failed: list[tuple[RelayRecipient, ServerReply]] = field(default_factory=list)
    deferred: list[RelayRecipient] = field(default_factory=list)
    error: str | None = None
    #: seconds the attempt took (the relay's latency histogram, issue 15)
    duration: float | None = None


def no_route_reply(domain: str) -> ServerReply:
    """The outcome for a queued entry whose domain has no known Fachdienst endpoint.

    Digest §3.2 (mail for another provider is relayed by MX): a real MTA treats an MX lookup
    that fails or has no answer (SERVFAIL, timeout) as temporary and tries again, and only a
    name that does not exist (NXDOMAIN) as permanent. Here the endpoint table stands in for
    DNS: a TI domain (``*.kim.telematik[-test]``, KOM-LE-A_2185) that is not (yet) in it is
    temporary, ``451 4.4.3``, retried per ``relay_retry_seconds`` and reported as failed only
    at ``not_after`` (the Fachdienst may come up, or the configuration may be completed); a
    domain outside the TI can never be reached: ``550 5.1.2`` at once.
    """
    if is_ti_address(f"postmaster@{domain}"):
        return ServerReply(
            451, "4.4.3", (f"no Fachdienst known for domain {domain} yet; will try again",)
        )
    return ServerReply(550, "5.1.2", (f"no Fachdienst known for domain {domain}: not a TI domain",))


async def relay_worker(fd: Fachdienst) -> None:
    """Run forever (until cancelled): attempt every due queue entry.

    Starts working once every Fachdienst of the process has registered its endpoint
    (``fd.endpoints.complete``): before that a due entry for a sibling would find no route.
    Each round claims up to CLAIM_BATCH due entries; a full batch is followed by the next round
    at once. Between rounds it sleeps until woken, until the earliest retry it scheduled, or at
    most ``POLL_SECONDS`` (so a retry wait shorter than the poll interval is kept).
    """
    await fd.endpoints.complete.wait()
    limiter = trio.CapacityLimiter(PARALLEL_ATTEMPTS)
    async with RelayConnections(fd) as connections:
        while True:
            fd.relay_wakeup = trio.Event()
            now = dt.datetime.now(dt.UTC)
            due = await fd.store.relay.claim(
                fd.node, fd.domain, now, limit=CLAIM_BATCH, lease=fd.relay_lease
            )
            retries: list[dt.datetime] = []
            unsettled = {entry.id for entry in due}
            async with trio.open_nursery() as nursery:
                if due:
                    renewing = trio.CancelScope()
                    nursery.start_soon(_renew_claims, fd, unsettled, renewing)
                async with trio.open_nursery() as attempts:
                    for entry in due:
                        attempts.start_soon(
                            _attempt_limited, fd, entry, limiter, retries, connections, unsettled
                        )
                if due:
                    renewing.cancel()
            await connections.close_idle()
            if len(due) >= CLAIM_BATCH:
                continue  # more may be due now
            if not due:
                with trio.move_on_after(POLL_SECONDS):
                    await fd.relay_wakeup.wait()
            elif retries:
                wait = (min(retries) - dt.datetime.now(dt.UTC)).total_seconds()
                if wait > 0:
                    with trio.move_on_after(min(wait, POLL_SECONDS)):
                        await fd.relay_wakeup.wait()


async def _renew_claims(fd: Fachdienst, unsettled: set[int], scope: trio.CancelScope) -> None:
    """Renew the claims of the round's entries not yet settled, until ``scope`` is cancelled.
    A claim that could not be kept (this node was silent longer than the lease and another
    took the entry) is logged: the other node may deliver it too, and the receiving
    Fachdienst recognises the repeat by its relay id."""
    interval = fd.relay_lease.total_seconds() / RENEWALS_PER_LEASE
    with scope:
        while True:
            await trio.sleep(interval)
            ids = sorted(unsettled)
            try:
                held = await fd.store.relay.renew(
                    fd.node, ids, dt.datetime.now(dt.UTC), lease=fd.relay_lease
                )
            except StoreError as exc:
                fd.log.warning("relay: renewing %d claims failed: %s", len(ids), exc)
                continue
            lost = (set(ids) - set(held)) & unsettled
            if lost:
                fd.log.warning("relay: claims lapsed before renewal: %s", sorted(lost))


async def _attempt_limited(
    fd: Fachdienst,
    entry: RelayEntry,
    limiter: trio.CapacityLimiter,
    retries: list[dt.datetime],
    connections: RelayConnections,
    unsettled: set[int] | None = None,
) -> None:
    async with limiter:
        started = trio.current_time()
        outcome = await attempt(fd, entry, connections)
        outcome.duration = trio.current_time() - started
    try:
        next_attempt = await _settle(fd, entry, outcome)
    except Exception:
        # a bug or a store failure must not stop the worker (and with it the Fachdienst):
        # log it and try the entry again after the next wait
        fd.log.exception("relay %s -> %s: settling the attempt failed", entry.id, entry.domain)
        waits = fd.config.relay_retry_seconds
        next_attempt = dt.datetime.now(dt.UTC) + dt.timedelta(
            seconds=waits[min(entry.attempts, len(waits) - 1)]
        )
        await fd.store.relay.attempted(entry.id, next_attempt=next_attempt, error="internal")
    finally:
        if unsettled is not None:
            unsettled.discard(entry.id)  # settled, or left to lapse: no more renewals
    if next_attempt is not None:
        retries.append(next_attempt)


async def attempt(
    fd: Fachdienst, entry: RelayEntry, connections: RelayConnections | None = None
) -> _Outcome:
    """One delivery attempt of ``entry``; never raises for network or protocol trouble.

    Uses (and gives back) a connection of ``connections``; without one, a connection of its
    own that is closed afterwards."""
    if connections is None:
        async with RelayConnections(fd) as own:
            return await attempt(fd, entry, own)
    targets = fd.endpoints.candidates(entry.domain)
    outcome = _Outcome()
    if not targets:
        reply = no_route_reply(entry.domain)
        if reply.code >= 500:
            outcome.failed = [(r, reply) for r in entry.recipients]
        else:
            outcome.deferred = list(entry.recipients)
            outcome.error = f"{reply.code} {reply.enhanced} {reply.text}"
        return outcome
    try:
        with trio.fail_after(ATTEMPT_TIMEOUT):
            conn = await _connect_any(connections, entry.domain, targets)
            reusable = False
            try:
                reusable = await _send(fd, entry, conn, outcome)
            finally:
                if reusable:
                    await connections.release(conn)
                else:
                    await connections.discard(conn)
    except (*_NETWORK_ERRORS, trio.TooSlowError) as exc:
        done = {r.address for r in outcome.delivered} | {r.address for r, _ in outcome.failed}
        outcome.deferred = [r for r in entry.recipients if r.address not in done]
        outcome.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return outcome


async def _connect_any(
    connections: RelayConnections, domain: str, targets: list[tuple[str, int]]
) -> _Connection:
    """A connection to the first of ``targets`` that answers (equal-preference MX records: a
    node of a cluster that is down, or still listed after it died, is skipped); the last
    failure if none does."""
    for n, (host, port) in enumerate(targets):
        try:
            return await connections.acquire(domain, host, port)
        except _NETWORK_ERRORS:
            if n == len(targets) - 1:
                raise
    raise AssertionError("no targets")  # the caller checked that there is one


async def _send(fd: Fachdienst, entry: RelayEntry, conn: _Connection, outcome: _Outcome) -> bool:
    """One transaction on ``conn`` (greeted, past EHLO or RSET); True if it ended in a state
    where the connection may carry the next message."""
    stream, client = conn.stream, conn.client
    relay_id = relay_id_field(entry.relay_id, fd.domain)
    size = len(relay_id) + entry.blob.size
    dsn = "DSN" in client.extensions
    mail_command = client.mail(
        entry.sender,
        size=size if "SIZE" in client.extensions else None,
        ret=entry.ret if dsn else None,
        envid=entry.envid if dsn else None,
    )
    rcpt_commands: list[bytes] = []
    for r in entry.recipients:
        orcpt = OriginalRecipient(*r.orcpt.split(";", 1)) if r.orcpt and ";" in r.orcpt else None
        rcpt_commands.append(
            client.rcpt(r.address, notify=r.notify if dsn else None, orcpt=orcpt if dsn else None)
        )
    go: ServerReply | None = None
    if "PIPELINING" in client.extensions:
        # RFC 2920: MAIL, every RCPT and DATA in one write, the replies read in order (issue
        # 13: one round trip to the other Fachdienst instead of 2 + recipients)
        await stream.send_all(mail_command + b"".join(rcpt_commands) + client.data())
        mail = await _reply(stream, client)
        rcpt_replies = [await _reply(stream, client) for _ in entry.recipients]
        go = await _reply(stream, client)
    else:
        await stream.send_all(mail_command)
        mail = await _reply(stream, client)
        rcpt_replies = []
        if mail.code < 400:
            for command in rcpt_commands:
                await stream.send_all(command)
                rcpt_replies.append(await _reply(stream, client))
    accepted: list[RelayRecipient] = []
    if mail.code < 400:
        for r, reply in zip(entry.recipients, rcpt_replies, strict=True):
            if reply.code < 400:
                accepted.append(r)
            elif reply.code >= 500:
                outcome.failed.append((r, reply))
            else:
                outcome.deferred.append(r)
    if mail.code >= 400 or not accepted:
        if go is not None and go.code == 354:
            # a server that takes DATA after refusing the transaction breaks RFC 2920 §3.1: no
            # body may follow, and only dropping the connection ends the DATA it opened
            # (the caller defers every recipient not refused for good)
            raise _TemporaryFailure(f"DATA accepted after MAIL {mail.code} / no recipient")
        if mail.code >= 500:
            outcome.failed = [(r, mail) for r in entry.recipients]
            return True
        if mail.code >= 400:
            raise _TemporaryFailure(f"MAIL {mail.code} {mail.text}")
        return True  # the RSET before the next message ends the transaction
    if go is None:
        await stream.send_all(client.data())
        go = await _reply(stream, client)
    if go.code != 354:
        raise _TemporaryFailure(f"DATA {go.code} {go.text}")
    async with fd.store.blobs.reader(entry.blob) as blob:
        # a small message goes in one write with the relay id and the final dot (issue 13)
        pending = client.body(relay_id)
        while chunk := await blob.read(READ_SIZE):
            pending += client.body(chunk)
            if len(pending) >= READ_SIZE:
                await stream.send_all(pending)
                pending = b""
    await stream.send_all(pending + client.end_body())
    final = await _reply(stream, client)
    if final.code < 400:
        outcome.delivered.extend(accepted)
    elif final.code >= 500:
        outcome.failed.extend((r, final) for r in accepted)
    else:
        outcome.deferred.extend(accepted)
    fd.log.info(
        "relay %s -> %s: %d delivered, %d refused, %d deferred",
        entry.id, entry.domain, len(outcome.delivered), len(outcome.failed),
        len(outcome.deferred),
    )  # fmt: skip
    return final.code != 421


async def _reply(stream: trio.SSLStream[trio.SocketStream], client: SmtpClient) -> ServerReply:
    while True:
        event = client.next_event()
        if event is NEED_DATA:
            data = await stream.receive_some(65536)
            client.receive_data(bytes(data))
            continue
        if isinstance(event, ServerReply):
            return event
        raise _TemporaryFailure("the other Fachdienst closed the connection")


async def _settle(fd: Fachdienst, entry: RelayEntry, outcome: _Outcome) -> dt.datetime | None:
    """Record the attempt, reschedule what is deferred, bounce what failed.

    Returns when the entry is next due, or None if it is done.
    """
    now = dt.datetime.now(dt.UTC)
    if outcome.error:
        fd.log.info("relay %s -> %s deferred: %s", entry.id, entry.domain, outcome.error)
    failed = list(outcome.failed)
    deferred = outcome.deferred
    if deferred and now >= entry.not_after:
        reply = ServerReply(
            450, "4.4.7", (f"gave up after {entry.attempts + 1} attempts: {outcome.error}",)
        )
        failed += [(r, reply) for r in deferred]
        deferred = []
    _trace(fd, entry, outcome.delivered, failed, deferred, outcome.error, outcome.duration)
    if failed and entry.sender:
        reports = [
            DsnRecipient(
                final_recipient=r.address,
                original_recipient=r.orcpt,
                action="failed",
                status=_final_status(reply),
                diagnostic=" ".join(
                    part for part in (str(reply.code), reply.enhanced, reply.text) if part
                ),
                remote_mta=entry.domain,
            )
            for r, reply in failed
            if r.notify is None or "FAILURE" in r.notify
        ]
        if reports:
            original_header = await _original_header(fd, entry)
            await send_report(
                fd,
                to=entry.sender,
                original_header=original_header,
                # KOM-LE-A_2130/2147: In-Reply-To = the outer Message-ID, bounces included
                message_id=_message_id(original_header),
                envid=entry.envid,
                arrival=entry.not_after - dt.timedelta(seconds=fd.config.relay_give_up_seconds),
                recipients=reports,
            )
    if deferred:
        # the recipients that are done leave the entry in the same transaction as the
        # reschedule; the rest keeps the entry and its relay id, so that the other Fachdienst
        # still recognises a repeat of what it got in this attempt
        waits = fd.config.relay_retry_seconds
        wait = waits[min(entry.attempts, len(waits) - 1)]
        next_attempt = now + dt.timedelta(seconds=wait)
        pending = {r.address.lower() for r in deferred}
        await fd.store.relay.attempted(
            entry.id,
            next_attempt=next_attempt,
            error=outcome.error,
            done=[r.address for r in entry.recipients if r.address.lower() not in pending],
        )
        return next_attempt
    await fd.store.relay.attempted(entry.id, next_attempt=None, error=None)
    return None


def _trace(
    fd: Fachdienst,
    entry: RelayEntry,
    delivered: list[RelayRecipient],
    failed: list[tuple[RelayRecipient, ServerReply]],
    deferred: list[RelayRecipient],
    error: str | None,
    duration: float | None,
) -> None:
    """The attempt's hops in the message trace (issue 15), named by the entry's relay key
    (the Fachdienst that queued it linked the key to the Message-ID)."""

    def record(stage: Stage, recipients: list[str], result: object, detail: str) -> None:
        fd.observer.record(
            FACHDIENST,
            stage,
            domain=fd.domain,
            ids=[relay_key(entry.relay_id)],
            sender=entry.sender,
            recipients=recipients,
            result=None if result is None else str(result),
            size=entry.blob.size,
            facts={"to_domain": entry.domain, "attempt": str(entry.attempts + 1)},
            detail=detail,
            duration=duration,
        )

    if delivered:
        record(Stage.RELAYED, [r.address for r in delivered], 250, f"to {entry.domain}")
    for r, reply in failed:
        text = " ".join(p for p in (str(reply.code), reply.enhanced, reply.text) if p)
        record(Stage.BOUNCED, [r.address], reply.code, text)
    if deferred:
        record(Stage.DEFERRED, [r.address for r in deferred], None, error or "")


def _final_status(reply: ServerReply) -> str:
    status = reply.enhanced or f"{reply.code // 100}.0.0"
    return "5" + status[1:] if status.startswith("4") else status


async def _original_header(fd: Fachdienst, entry: RelayEntry) -> bytes:
    """The header of the relayed message (RET=HDRS: reports carry headers only)."""
    head = b""
    async with fd.store.blobs.reader(entry.blob) as blob:
        while len(head) < HEADER_READ and (chunk := await blob.read(HEADER_READ - len(head))):
            head += chunk
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = head.find(separator)
        if end >= 0:
            return head[: end + len(separator)]
    return head


def _message_id(header: bytes) -> str | None:
    """The Message-ID of a header block, or None if it has none or cannot be parsed."""
    try:
        value = parse_header_block(header.rstrip(b"\r\n") + b"\r\n").get("Message-ID")
    except MailFormatError:
        return None
    return value.strip() if value else None
