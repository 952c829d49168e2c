"""The PostgreSQL store's core: the connection pool, one asyncio coroutine per operation run from
trio through trio-asyncio, transactions, retries, and asyncpg's errors turned into the store's.

Every operation of the PostgreSQL store is one coroutine of an asyncpg connection (``op(conn)``)
that :meth:`Database.write` or :meth:`Database.read` runs on the store's trio-asyncio loop with
``loop.run_aio_coroutine``: exactly one trio-to-asyncio hop per operation, never one per SQL
statement. A write runs in one transaction (READ COMMITTED: what must be serialised takes row
locks with ``SELECT ... FOR UPDATE``, in key order so that two nodes never deadlock); a
transaction the server aborts for a serialisation failure or a deadlock is run again, a few
times, from the start. asyncpg's and the network's exceptions never leave: a lost or refused
connection, a pool exhausted for too long, a server shutting down are `StoreUnavailable`; a
damaged database `StoreCorrupted`; any other server error a `StoreError` naming the SQLSTATE.
A password in the store URL never appears in a message (``store.mask_url``).

Group commit (issue 13): writes go through one queue per store. The write that gets the commit
lock runs every write queued by then (up to :data:`MAX_GROUP`) in ONE transaction, each inside
its own savepoint (asyncpg's nested ``transaction()``), and commits once; the rest wait for the
commit lock and find their write done. A write whose op raises is rolled back to its savepoint
and its caller gets its own error; a serialisation failure or deadlock runs the whole group
again; a failed COMMIT or a lost connection fails every write of the group. Every caller
returns only after the COMMIT that holds its write. A write cancelled while it is still queued
is taken out of the queue; once its group runs, the group finishes (shielded).

Times are integer microseconds since the epoch (UTC) in BIGINT columns, as in the embedded
store (the same helpers); blob housekeeping alone uses the database server's clock
(:data:`NOW_US`), so that nodes with skewed clocks agree on a blob's age.

This module must never decide what a row means; the sub-stores (``_accounts``, ``_mail``, ...)
do, each in coroutines that take a connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from .. import mask_url
from ..base import StoreCorrupted, StoreError, StoreUnavailable

T = TypeVar("T")
#: an asyncpg connection (asyncpg ships no type information)
Conn = Any
#: an asyncpg record: columns by name or position
Row = Any

#: how often a transaction aborted by a serialisation failure or deadlock is tried in all
MAX_ATTEMPTS = 4
#: how long an operation waits for a free pooled connection before it is StoreUnavailable
ACQUIRE_TIMEOUT_S = 10.0
#: how long one statement may run before the operation is StoreUnavailable
COMMAND_TIMEOUT_S = 60.0
#: connections of one store (one per node): parallel operations beyond this wait
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
#: the most queued writes one transaction commits together (group commit, see the docstring)
MAX_GROUP = 64
#: how long aclose waits for operations to finish before it cuts the connections
CLOSE_TIMEOUT_S = 5.0
#: the server's clock as microseconds since the epoch (blob ages; see the docstring)
NOW_US = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"

log = logging.getLogger("kim_appliance.store")

# SQLSTATE classes (PostgreSQL appendix A): connection exception, insufficient resources,
# operator intervention (shutdown, cancel, statement timeout), system error
_UNAVAILABLE_CLASSES = frozenset({"08", "53", "57", "58"})
_RETRY_STATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
#: the client side's errors of a broken or unreachable connection (asyncpg raises
#: InternalClientError, e.g., for a connection the server terminated between two statements)
_BROKEN = (
    TimeoutError,
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.exceptions.ProtocolError,
)


def secrets_of(url: str) -> list[str]:
    """The passwords in ``url`` (to scrub them from error texts that quote the URL)."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found.append(parts.password)
        found += [v for k, v in parse_qsl(parts.query) if k.lower().endswith("password") and v]
    except ValueError:
        pass
    return [s for s in found if s]


@dataclass
class _QueuedWrite:
    """One write waiting for (or done by) a group commit; ``future`` holds its outcome."""

    op: Callable[[Conn], Awaitable[Any]]
    future: asyncio.Future[Any]


class Database:
    """The pool of one PostgreSQL store and the trio-asyncio loop it runs on.

    ``where`` is the masked URL, used in every error message."""

    def __init__(self, pool: Any, loop: Any, where: str, secrets: list[str]) -> None:
        self.pool = pool
        self.loop = loop
        self.where = where
        self._secrets = secrets
        self.closed = False
        self._queue: list[_QueuedWrite] = []
        self._commit_lock: asyncio.Lock | None = None  # made on the asyncio loop, on first use
        #: writes done and transactions committed for them (group commit: commits <= writes)
        self.writes = 0
        self.commits = 0

    # -- the trio side ----------------------------------------------------------------------

    async def run(self, coro: Awaitable[T]) -> T:
        """Await an asyncio coroutine on the store's loop (one hop), errors translated."""
        if self.closed:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise StoreError(f"store {self.where}: used after it was closed")
        result: T = await self.loop.run_aio_coroutine(self._translated(coro))
        return result

    async def write(self, op: Callable[[Conn], Awaitable[T]]) -> T:
        """``op`` in a write transaction, possibly with other writes (group commit, see the
        module docstring; retried from the start after a serialisation failure or deadlock);
        committed durably when this returns."""
        return await self.run(self._grouped(op))

    async def read(self, op: Callable[[Conn], Awaitable[T]], *, snapshot: bool = False) -> T:
        """``op`` outside a transaction (one statement), or with ``snapshot`` in a read-only
        REPEATABLE READ transaction (several statements that must agree)."""
        if snapshot:
            return await self.run(self._transaction(op, readonly=True))
        return await self.run(self.plain(op))

    # -- the asyncio side -------------------------------------------------------------------

    async def plain(self, op: Callable[[Conn], Awaitable[T]]) -> T:
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            return await op(conn)

    async def _grouped(self, op: Callable[[Conn], Awaitable[T]]) -> T:
        entry = _QueuedWrite(op, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        if self._commit_lock is None:
            self._commit_lock = asyncio.Lock()
        try:
            async with self._commit_lock:
                # ``entry`` not queued any more but not done: a group whose leader was
                # cancelled holds it and still runs (shielded); wait for that below
                while not entry.future.done() and entry in self._queue:
                    group = self._queue[:MAX_GROUP]
                    del self._queue[:MAX_GROUP]
                    await asyncio.shield(self._commit_group(group))
        except asyncio.CancelledError:
            if entry in self._queue:
                self._queue.remove(entry)  # not run yet: it never will be
            raise
        result: T = await entry.future
        return result

    async def _commit_group(self, group: list[_QueuedWrite]) -> None:
        """Run ``group`` in one transaction, each op in its own savepoint; set every future."""
        attempt = 1
        while True:
            outcomes: list[tuple[bool, Any]] = []
            try:
                async with (
                    self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn,
                    conn.transaction(isolation="read_committed"),
                ):
                    for entry in group:
                        outcomes.append(await self._run_grouped(conn, entry))
            except BaseException as exc:
                if (
                    isinstance(exc, asyncpg.PostgresError)
                    and exc.sqlstate in _RETRY_STATES
                    and attempt < MAX_ATTEMPTS
                ):
                    log.info("store: %s; trying the transaction again", exc.sqlstate)
                    attempt += 1
                    await asyncio.sleep(0.01 * attempt)
                    continue
                for entry in group:
                    if entry.future.done():
                        continue
                    if isinstance(exc, Exception):
                        entry.future.set_exception(exc)
                    else:
                        entry.future.cancel()
                if not isinstance(exc, Exception):
                    raise
                return
            self.writes += len(group)
            self.commits += 1
            for entry, (ok, value) in zip(group, outcomes, strict=True):
                if ok:
                    entry.future.set_result(value)
                else:
                    entry.future.set_exception(value)
            return

    @staticmethod
    async def _run_grouped(conn: Conn, entry: _QueuedWrite) -> tuple[bool, Any]:
        """One op in its savepoint: (True, result) or (False, its error). A serialisation
        failure or deadlock is raised: the whole group runs again."""
        try:
            async with conn.transaction():
                return True, await entry.op(conn)
        except asyncpg.PostgresError as exc:
            if exc.sqlstate in _RETRY_STATES:
                raise
            return False, exc
        except _BROKEN:
            raise
        except Exception as exc:
            return False, exc

    async def _transaction(self, op: Callable[[Conn], Awaitable[T]], *, readonly: bool) -> T:
        isolation = "repeatable_read" if readonly else "read_committed"
        attempt = 1
        while True:
            try:
                async with (
                    self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn,
                    conn.transaction(isolation=isolation, readonly=readonly),
                ):
                    return await op(conn)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate not in _RETRY_STATES or attempt >= MAX_ATTEMPTS:
                    raise
                log.info("store: %s; trying the transaction again", exc.sqlstate)
                attempt += 1
                await asyncio.sleep(0.01 * attempt)

    async def _translated(self, coro: Awaitable[T]) -> T:
        try:
            return await coro
        except StoreError:
            raise
        except asyncpg.PostgresError as exc:
            raise self.translate(exc) from exc
        except asyncpg.DataError as exc:  # a value the column cannot take: our bug, not an outage
            raise StoreError(f"store {self.where}: {self._scrub(exc)}") from exc
        except _BROKEN as exc:
            raise StoreUnavailable(
                f"store {self.where}: database unreachable ({self._scrub(exc)})"
            ) from exc

    def translate(self, exc: asyncpg.PostgresError) -> StoreError:
        """The store's error for a server error (see the module docstring)."""
        state = str(exc.sqlstate or "")
        text = f"store {self.where}: {self._scrub(exc)} (SQLSTATE {state})"
        if state[:2] in _UNAVAILABLE_CLASSES or state in _RETRY_STATES:
            return StoreUnavailable(text)
        if state.startswith("XX"):
            return StoreCorrupted(text)
        if state.startswith("23"):
            return StoreError(f"store {self.where}: constraint violated: {self._scrub(exc)}")
        return StoreError(text)

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def close(self) -> None:
        """Wait briefly for operations in flight, then cut every connection."""
        if self.closed:
            return
        self.closed = True

        async def shut() -> None:
            try:
                await asyncio.wait_for(self.pool.close(), CLOSE_TIMEOUT_S)
            except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                self.pool.terminate()

        await self.loop.run_aio_coroutine(shut())


__all__ = ["Conn", "Database", "Row", "mask_url", "secrets_of"]
