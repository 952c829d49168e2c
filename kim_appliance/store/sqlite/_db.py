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
        """Run ``op`` in one write transaction, then remove the files of the blobs it killed."""
        with _translated(self.path), self.lock, self.connection() as conn:
            tx = Tx(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = op(tx)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self.unlink(tx.dead)
            return result

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
