"""The embedded store's database core: connections, transactions in worker threads, time values.

Every operation of the embedded store is one function of a connection that runs in a worker
thread, in one transaction: :meth:`Database.write` (``BEGIN IMMEDIATE``, serialised in this
process by a lock, committed durably before it returns) or :meth:`Database.read` (a consistent
snapshot; reads run in parallel). The trio side makes exactly one thread call per operation,
never one per SQL statement. Connections come from a small pool (trio's worker threads come and
go, so no connection belongs to a thread). sqlite3's exceptions never leave: a failing or
locked database is :class:`StoreUnavailable`, a damaged one :class:`StoreCorrupted`.

This module must never decide what a row means; the sub-stores (``_accounts``, ``_mail``, ...)
do, each in functions that take a :class:`Tx`.

Group commit (issue 13): writes that arrive while another write holds the lock queue up; the
next thread to get the lock runs every queued write (up to :data:`MAX_GROUP`) in ONE transaction,
each under its own SAVEPOINT, and commits once: one WAL fsync for all of them instead of one
each. A write that raises is rolled back to its savepoint and its caller gets its own error;
the others commit. Every caller returns only after the COMMIT that holds its write, so "durable
before it returns" holds for each (a 250 is still sent only after its message is on disk). If
the COMMIT itself fails, every write of the group fails.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import trio

from ..base import BlobRef, StoreCorrupted, StoreError, StoreUnavailable
from ..blobs import BlobFiles

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
MAX_IDLE_CONNECTIONS = 8
#: worker threads the store uses at most at once (reads run in parallel, writes queue on the
#: write lock; blob reads and writes count too)
MAX_THREADS = 16
#: the most queued writes one transaction commits together (group commit, see the docstring)
MAX_GROUP = 64
US_PER_DAY = 86_400 * 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us(when: datetime, what: str) -> int:
    """Microseconds since the epoch; naive datetimes are refused (they hide time zone bugs)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what}: {when!r} has no time zone; use an aware datetime (UTC)")
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def opt_us(when: datetime | None, what: str) -> int | None:
    return None if when is None else us(when, what)


def dt(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def opt_dt(value: int | None) -> datetime | None:
    return None if value is None else dt(value)


def span_us(span: timedelta) -> int:
    return (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds


def blob_of(row: sqlite3.Row, prefix: str = "") -> BlobRef:
    """The BlobRef of a row with the blob columns (``b_name`` ... with ``prefix="b_"``)."""
    return BlobRef(
        row[prefix + "name"],
        row[prefix + "size"],
        row[prefix + "stored_size"],
        bool(row[prefix + "compressed"]),
    )


@dataclass
class Tx:
    """One transaction: its connection, and the blobs whose files go once it has committed
    (crash-safety rule 2: rows first, then files)."""

    conn: sqlite3.Connection
    dead: list[BlobRef] = field(default_factory=list)

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def one(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def collect_garbage(self, names: set[str]) -> None:
        """Delete the blob rows of ``names`` that nothing references any more (no message, no
        relay entry, no KAS attachment); their files go after the commit."""
        for name in names:
            row = self.one(
                "SELECT * FROM blobs WHERE name = ? "
                "AND NOT EXISTS (SELECT 1 FROM messages WHERE blob = ?) "
                "AND NOT EXISTS (SELECT 1 FROM relay_entries WHERE blob = ?) "
                "AND NOT EXISTS (SELECT 1 FROM kas_attachments WHERE blob = ?)",
                (name, name, name, name),
            )
            if row is not None:
                self.execute("DELETE FROM blobs WHERE name = ?", (name,))
                self.dead.append(blob_of(row))


@dataclass
class _QueuedWrite:
    """One write waiting for (or done by) a group commit."""

    op: Callable[[Tx], object]
    done: bool = False
    result: object = None
    error: BaseException | None = None


class Database:
    """The SQLite database of an embedded store plus its blob files (see the module docstring).

    ``pins`` are the blobs committed by writers that are still open: their files must stay
    even while no row references them (store.sqlite crash-safety rule 4). ``lock`` guards the
    pins and makes "no row references it, so remove the file" atomic with claiming a blob.
    """

    def __init__(self, path: Path, files: BlobFiles) -> None:
        self.path = path
        self.files = files
        self.lock = threading.RLock()
        self.pins: set[str] = set()
        self.limiter = trio.CapacityLimiter(MAX_THREADS)
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._queue: list[_QueuedWrite] = []
        self._queue_lock = threading.Lock()
        #: writes done and transactions committed for them (group commit: commits <= writes)
        self.writes = 0
        self.commits = 0
        self.closed = False

    # -- connections ------------------------------------------------------------------------

    def _new_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for one operation, from the idle pool."""
        with self._pool_lock:
            if self.closed:
                raise StoreError(f"store {self.path}: used after it was closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._new_connection()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.rollback()
            with self._pool_lock:
                if self.closed or len(self._idle) >= MAX_IDLE_CONNECTIONS:
                    conn.close()
                else:
                    self._idle.append(conn)

    def close(self) -> None:
        with self._pool_lock:
            self.closed = True
            for conn in self._idle:
                conn.close()
            self._idle.clear()

    # -- transactions (blocking: worker threads only) ---------------------------------------

    def write_sync(self, op: Callable[[Tx], T]) -> T:
        """Run ``op`` in a write transaction, possibly together with other threads' writes
        (group commit, see the module docstring); returns after the COMMIT that holds it, and
        after the files of the blobs it killed are removed."""
        entry = _QueuedWrite(op)
        with self._queue_lock:
            self._queue.append(entry)
        with self.lock:
            if not entry.done:
                self._commit_group()
        assert entry.done
        if entry.error is not None:
            raise entry.error
        return entry.result  # type: ignore[return-value]

    def _commit_group(self) -> None:
        """Run the queued writes (ours among them) in one transaction (caller holds the lock)."""
        with self._queue_lock:
            group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
        dead: list[BlobRef] = []
        try:
            with self.connection() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for entry in group:
                        dead += self._run_grouped(conn, entry)
                    conn.execute("COMMIT")
                    self.writes += len(group)
                    self.commits += 1
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except BaseException as exc:
            failed = _translate(exc, self.path)
            for entry in group:
                if entry.error is None:
                    entry.error = failed
                entry.done = True
            return
        try:
            self.unlink(dead)
        finally:
            for entry in group:
                entry.done = True

    def _run_grouped(self, conn: sqlite3.Connection, entry: _QueuedWrite) -> list[BlobRef]:
        """One write of a group under its own savepoint; its error stays with it."""
        tx = Tx(conn)
        conn.execute("SAVEPOINT grouped_write")
        try:
            entry.result = entry.op(tx)
        except Exception as exc:
            if not conn.in_transaction:
                raise  # SQLite rolled the whole transaction back (I/O error, full disk): all fail
            conn.execute("ROLLBACK TO grouped_write")
            conn.execute("RELEASE grouped_write")
            entry.error = _translate(exc, self.path)
            return []
        conn.execute("RELEASE grouped_write")
        return tx.dead

    def read_sync(self, op: Callable[[Tx], T]) -> T:
        """Run ``op`` in one read transaction (a consistent snapshot)."""
        with _translated(self.path), self.connection() as conn:
            conn.execute("BEGIN")
            try:
                return op(Tx(conn))
            finally:
                conn.execute("COMMIT")

    def unlink(self, dead: list[BlobRef]) -> None:
        """After a commit: remove the files of dead blobs, unless a writer still pins them."""
        with self.lock:
            for ref in dead:
                if ref.name not in self.pins:
                    self.files.unlink(ref.name, ref.compressed)

    # -- the trio side ----------------------------------------------------------------------

    async def write(self, op: Callable[[Tx], T]) -> T:
        """:meth:`write_sync` in a worker thread (one thread call for the whole operation)."""
        return await trio.to_thread.run_sync(self.write_sync, op, limiter=self.limiter)

    async def read(self, op: Callable[[Tx], T]) -> T:
        return await trio.to_thread.run_sync(self.read_sync, op, limiter=self.limiter)

    async def run(self, fn: Callable[[], T]) -> T:
        """Any other blocking step of the store (files) in a worker thread."""
        return await trio.to_thread.run_sync(_files_translated(fn), limiter=self.limiter)


def _translate(exc: BaseException, path: Path) -> BaseException:
    """``exc`` as :func:`_translated` would raise it (the original as its cause)."""
    try:
        with _translated(path):
            raise exc
    except BaseException as translated:
        return translated


@contextlib.contextmanager
def _translated(path: Path) -> Iterator[None]:
    """sqlite3's exceptions as the store's (a backend never lets its driver's errors out)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(f"store database {path}: {exc}") from exc
    except sqlite3.IntegrityError as exc:
        raise StoreError(f"store database {path}: constraint violated: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise StoreCorrupted(f"store database {path}: {exc}") from exc


def _files_translated(fn: Callable[[], T]) -> Callable[[], T]:
    def run() -> T:
        try:
            return fn()
        except StoreError:
            raise
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise StoreUnavailable(f"store files: {exc.strerror or exc}") from exc

    return run
