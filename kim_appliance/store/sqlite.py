"""The default `MailStore`: one SQLite database plus blob files in the data directory.

`DIR/mail.sqlite3` holds accounts, message rows (mailbox, trace prefix, blob name), blob rows,
the relay queue, the relay ids already delivered and the failed-login counters; `DIR/blobs/`
holds the bodies (see `store.blobs`). SQLite runs in WAL mode with `synchronous=FULL`,
`busy_timeout` and foreign keys, so a committed transaction survives a crash or `kill -9`.
The directory is 0700 and every file in it 0600 (the database with its -wal/-shm, the blobs):
mail and password hashes are for this process only.

Crash-safety rules:
1. A body becomes a blob file first (temp file, fsync, rename, fsync of the directory); a row
   that points to it is inserted only afterwards, in one transaction with the message rows
   (`deliver`) or the relay entry (`enqueue_relay`). When that commit returns, the mail server
   may answer `250`.
2. `delete_messages`, `expire` and a finished relay remove rows first (one transaction, blob
   rows whose last message or queue entry went with them included), then the files.
3. At open the store removes every temp file and every final blob no row references: the
   orphans of a crash between rename and commit, or between commit and unlink.
4. A blob committed by a writer that is still open is pinned in memory; leaving the writer's
   block unpins it and removes the file if no row references it (refused deliveries).

Resource handling: every operation borrows a SQLite connection from a small pool (at most
MAX_IDLE_CONNECTIONS kept idle; trio's worker threads come and go, so no connection belongs to
a thread); writes are serialised by a process lock and `BEGIN IMMEDIATE`; reads run in parallel.
The data directory is locked with `flock`: one process per data directory (a shared database
across nodes is the PostgreSQL backend's job). This module must never make a row visible before its
blob is durable, and never delete a blob file before the rows that reference it are gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from .base import (
    Account,
    AccountExists,
    AccountNotFound,
    BlobRef,
    BlobUnavailable,
    LockoutPolicy,
    LockState,
    MessageNotFound,
    OutOfOffice,
    RelayEntry,
    RelayEntryNotFound,
    RelayRecipient,
    StoreCorrupted,
    StoredMessage,
    StoreError,
)
from .blobs import BlobFiles, FileBlobWriter, open_chain
from .private import FILE_MODE, private_database, private_dir

DB_NAME = "mail.sqlite3"
BLOB_DIR = "blobs"
LOCK_NAME = "store.lock"
SCHEMA_VERSION = 2
#: the oldest SQLite that can run the migrations (ALTER TABLE DROP COLUMN)
MIN_SQLITE = (3, 35, 0)
BUSY_TIMEOUT_MS = 10_000
MAX_IDLE_CONNECTIONS = 8
_US_PER_DAY = 86_400 * 1_000_000
#: how long a receiving Fachdienst remembers a delivered relay id: far longer than any sender
#: keeps retrying (relay_give_up_seconds, default 2 days), so a repeat is always recognised
RELAY_ID_KEEP = timedelta(days=14)
#: a failed-login counter with no failure for this long and no lock running is forgotten by
#: `expire` (the policy itself starts again at zero after its `forget_after`)
LOGIN_FAILURE_KEEP = timedelta(days=2)
# RFC 3461 NOTIFY values and RET values.
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY", "NEVER"})
_RET = frozenset({"HDRS", "FULL"})

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE accounts (
    key TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    telematik_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    status TEXT NOT NULL,
    quota_bytes INTEGER NOT NULL,
    data_ttl_days INTEGER NOT NULL,
    failed_logins INTEGER NOT NULL,
    locked_until INTEGER,
    kim_version TEXT NOT NULL,
    dereg_date INTEGER,
    no_vzd_mail_entry INTEGER NOT NULL,
    ooo_active INTEGER NOT NULL,
    ooo_start INTEGER,
    ooo_end INTEGER,
    ooo_message TEXT
);
CREATE TABLE blobs (
    name TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    compressed INTEGER NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox TEXT NOT NULL REFERENCES accounts(key),
    blob TEXT NOT NULL REFERENCES blobs(name),
    prefix BLOB NOT NULL,
    size INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX messages_by_mailbox ON messages(mailbox, id);
CREATE INDEX messages_by_expiry ON messages(expires_at);
CREATE INDEX messages_by_blob ON messages(blob);
CREATE TABLE relay_entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    blob TEXT NOT NULL REFERENCES blobs(name),
    sender TEXT NOT NULL,
    envid TEXT,
    ret TEXT,
    domain TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX relay_by_due ON relay_entries(next_attempt, id);
CREATE INDEX relay_by_blob ON relay_entries(blob);
CREATE TABLE relay_recipients (
    entry_id INTEGER NOT NULL REFERENCES relay_entries(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    address TEXT NOT NULL,
    notify TEXT,
    orcpt TEXT,
    PRIMARY KEY (entry_id, position)
);
"""

#: schema steps after version 1, applied in order by every open (a new database is made at
#: version 1 and migrated too, so new and migrated databases have the same tables)
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        # exactly-once relay: the sender's random id per queue entry ...
        "ALTER TABLE relay_entries ADD COLUMN relay_id TEXT",
        "UPDATE relay_entries SET relay_id = lower(hex(randomblob(16))) WHERE relay_id IS NULL",
        # ... and, on the receiving side, which (relay id, mailbox) were delivered
        """CREATE TABLE relay_deliveries (
            relay_id TEXT NOT NULL,
            mailbox TEXT NOT NULL,
            delivered_at INTEGER NOT NULL,
            PRIMARY KEY (relay_id, mailbox)
        )""",
        "CREATE INDEX relay_deliveries_by_time ON relay_deliveries(delivered_at)",
        # failed logins per (account, client address) (KOM-LE-A_2167); the per-account
        # counter of version 1 let anyone lock out a practice
        """CREATE TABLE login_failures (
            account TEXT NOT NULL,
            client TEXT NOT NULL,
            failures INTEGER NOT NULL,
            locks INTEGER NOT NULL,
            locked_until INTEGER,
            last_failure INTEGER NOT NULL,
            PRIMARY KEY (account, client)
        )""",
        "CREATE INDEX login_failures_by_time ON login_failures(last_failure)",
        "ALTER TABLE accounts DROP COLUMN failed_logins",
        "ALTER TABLE accounts DROP COLUMN locked_until",
    ),
}

#: addresses of purged accounts (KOM-LE-A_2155): the address is never given out again, except
#: to the same Telematik-ID (A_19464-02). Created with IF NOT EXISTS on every open, so data dirs
#: made before it existed get it without a schema version step.
_RETIRED_SCHEMA = """
CREATE TABLE IF NOT EXISTS retired_addresses (
    key TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    telematik_id TEXT NOT NULL,
    purged_at INTEGER NOT NULL
)
"""

_ACCOUNT_COLUMNS = (
    "key, address, password_hash, telematik_id, display_name, status, quota_bytes, "
    "data_ttl_days, kim_version, dereg_date, no_vzd_mail_entry, "
    "ooo_active, ooo_start, ooo_end, ooo_message"
)
_ACCOUNT_VALUES = ",".join("?" * 15)
_UPDATABLE = frozenset(f.name for f in dataclasses.fields(Account)) - {"address"}


def _us(when: datetime, what: str) -> int:
    """Microseconds since the epoch; naive datetimes are refused (they hide time zone bugs)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what}: {when!r} has no time zone; use an aware datetime (UTC)")
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _opt_us(when: datetime | None, what: str) -> int | None:
    return None if when is None else _us(when, what)


def _dt(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _opt_dt(us: int | None) -> datetime | None:
    return None if us is None else _dt(us)


def _account_row(a: Account) -> tuple[Any, ...]:
    o = a.out_of_office
    return (
        a.key,
        a.address,
        a.password_hash,
        a.telematik_id,
        a.display_name,
        a.status,
        a.quota_bytes,
        a.data_ttl_days,
        a.kim_version,
        _opt_us(a.dereg_date, "dereg_date"),
        int(a.no_vzd_mail_entry),
        int(o.active),
        _opt_us(o.start, "out_of_office.start"),
        _opt_us(o.end, "out_of_office.end"),
        o.message,
    )


def _account(row: sqlite3.Row) -> Account:
    return Account(
        address=row["address"],
        password_hash=row["password_hash"],
        telematik_id=row["telematik_id"],
        display_name=row["display_name"],
        status=row["status"],
        quota_bytes=row["quota_bytes"],
        data_ttl_days=row["data_ttl_days"],
        kim_version=row["kim_version"],
        dereg_date=_opt_dt(row["dereg_date"]),
        no_vzd_mail_entry=bool(row["no_vzd_mail_entry"]),
        out_of_office=OutOfOffice(
            active=bool(row["ooo_active"]),
            start=_opt_dt(row["ooo_start"]),
            end=_opt_dt(row["ooo_end"]),
            message=row["ooo_message"],
        ),
    )


def _lock_state(conn: sqlite3.Connection, key: str, client: str) -> LockState | None:
    row = conn.execute(
        "SELECT failures, locks, locked_until, last_failure FROM login_failures "
        "WHERE account = ? AND client = ?",
        (key, client),
    ).fetchone()
    if row is None:
        return None
    return LockState(
        row["failures"], row["locks"], _opt_dt(row["locked_until"]), _dt(row["last_failure"])
    )


def _blob(row: sqlite3.Row) -> BlobRef:
    return BlobRef(row["name"], row["size"], row["stored_size"], bool(row["compressed"]))


class SQLiteMailStore:
    """`MailStore` on SQLite + blob files. Create it with `open_store`."""

    def __init__(self, data_dir: Path, *, compress: bool = False) -> None:
        self.data_dir = data_dir
        self.compress = compress
        private_dir(data_dir)
        self._lock_fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreError(
                f"data dir {data_dir}: in use by another store (lock {LOCK_NAME} is held); "
                "stop the other process or use another directory"
            ) from None
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._pins: set[str] = set()
        self._closed = False
        try:
            private_database(data_dir / DB_NAME)
            self._init_schema()
            self.files = BlobFiles(data_dir / BLOB_DIR)
            self.swept = self._sweep()
        except BaseException:
            self.close()
            raise

    # -- connections and transactions -------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.data_dir}: used after close()")

    def _new_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.data_dir / DB_NAME, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for one operation, from the idle pool (worker threads come and go)."""
        with self._pool_lock:
            self._check_open()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._new_connection()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.rollback()
            with self._pool_lock:
                if self._closed or len(self._idle) >= MAX_IDLE_CONNECTIONS:
                    conn.close()
                else:
                    self._idle.append(conn)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, serialised in this process; committed durably on exit."""
        with self._write_lock, self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several statements."""
        with self._connection() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def _init_schema(self) -> None:
        """Create the version 1 schema in a new database, then run the migrations up to
        SCHEMA_VERSION, each step in the same transaction as its version number."""
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('instance', ?)", (secrets.token_hex(4),)
                )
                version = 1
                conn.execute(f"PRAGMA user_version = {version}")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.data_dir / DB_NAME}: schema version {version}, this code knows "
                    f"{SCHEMA_VERSION}; use the kim-appliance that wrote it"
                )
            if version < SCHEMA_VERSION and sqlite3.sqlite_version_info < MIN_SQLITE:
                raise StoreError(
                    f"{self.data_dir / DB_NAME}: migrating schema {version} needs SQLite "
                    f"{'.'.join(map(str, MIN_SQLITE))} or newer, Python uses "
                    f"{sqlite3.sqlite_version}"
                )
            while version < SCHEMA_VERSION:
                version += 1
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute(_RETIRED_SCHEMA)
            self._instance: str = conn.execute(
                "SELECT value FROM meta WHERE key = 'instance'"
            ).fetchone()[0]

    def _sweep(self) -> list[str]:
        """Crash-safety rule 3: drop temp files and unreferenced blob files (at open only)."""
        with self._write() as conn:
            names = {row[0] for row in conn.execute("SELECT name FROM blobs")}
            return self.files.sweep(names)

    def close(self) -> None:
        """Close every connection and release the data directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._pool_lock:
            for conn in self._idle:
                conn.close()
            self._idle.clear()
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)

    def __enter__(self) -> SQLiteMailStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- accounts ---------------------------------------------------------------------------

    def create_account(self, account: Account) -> None:
        """Add an account; AccountExists (a ValueError) if the address is taken in any case."""
        with self._write() as conn:
            try:
                conn.execute(
                    f"INSERT INTO accounts ({_ACCOUNT_COLUMNS}) VALUES ({_ACCOUNT_VALUES})",
                    _account_row(account),
                )
            except sqlite3.IntegrityError:
                raise AccountExists(f"address {account.address}: account exists") from None

    def get_account(self, address: str) -> Account | None:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE key = ?", (address.lower(),)
            ).fetchone()
        return None if row is None else _account(row)

    def update_account(self, address: str, /, **changes: object) -> Account:
        """Change fields of an account (any field but `address`) and return the new record.

        A new `data_ttl_days` applies to the messages already stored, too (digest §3.2).
        """
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValueError(
                f"update_account: no such field(s) {sorted(unknown)}; changeable: "
                f"{sorted(_UPDATABLE)}"
            )
        key = address.lower()
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                raise AccountNotFound(f"address {address}: no such account")
            old = _account(row)
            new = dataclasses.replace(old, **changes)  # type: ignore[arg-type]
            conn.execute(
                f"UPDATE accounts SET ({_ACCOUNT_COLUMNS}) = ({_ACCOUNT_VALUES}) WHERE key = ?",
                (*_account_row(new), key),
            )
            if new.data_ttl_days != old.data_ttl_days:
                conn.execute(
                    "UPDATE messages SET expires_at = received_at + ? WHERE mailbox = ?",
                    (new.data_ttl_days * _US_PER_DAY, key),
                )
        return new

    def list_accounts(self) -> list[Account]:
        with self._connection() as conn:
            rows = conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY key")
            return [_account(row) for row in rows]

    def purge_account(self, address: str, /, *, now: datetime) -> int:
        """Delete an account with its mailbox (KOM-LE-A_2155: all data after the retention).

        In one transaction: every message of the mailbox, the account row, and a tombstone that
        keeps the address and Telematik-ID (:meth:`retired_telematik_id`). Blob files go after
        the commit when nothing else references them. Returns the number of messages deleted;
        AccountNotFound if there is no such account.
        """
        key = address.lower()
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                raise AccountNotFound(f"address {address}: no such account")
            account = _account(row)
            rows = conn.execute(
                "DELETE FROM messages WHERE mailbox = ? RETURNING blob", (key,)
            ).fetchall()
            conn.execute("DELETE FROM accounts WHERE key = ?", (key,))
            conn.execute(
                "INSERT OR REPLACE INTO retired_addresses (key, address, telematik_id, purged_at)"
                " VALUES (?, ?, ?, ?)",
                (key, account.address, account.telematik_id, _us(now, "now")),
            )
            dead = self._collect_garbage(conn, {r[0] for r in rows})
        with self._write_lock:
            self._unlink(dead)
        return len(rows)

    def retired_telematik_id(self, address: str) -> str | None:
        """The Telematik-ID a purged address belonged to, or None if it was never purged."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT telematik_id FROM retired_addresses WHERE key = ?", (address.lower(),)
            ).fetchone()
        return None if row is None else str(row[0])

    def _require_account(self, conn: sqlite3.Connection, mailbox: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT key, data_ttl_days FROM accounts WHERE key = ?", (mailbox.lower(),)
        ).fetchone()
        if row is None:
            raise AccountNotFound(f"mailbox {mailbox}: no such account")
        return row

    # -- blobs ------------------------------------------------------------------------------

    def new_blob(self) -> FileBlobWriter:
        """A writer for one body; compressed with zstandard if the store was opened so."""
        self._check_open()
        return self.files.writer(
            compress=self.compress, on_commit=self._pin, on_release=self._release
        )

    def _pin(self, ref: BlobRef) -> None:
        with self._write_lock:
            self._pins.add(ref.name)

    def _release(self, ref: BlobRef) -> None:
        with self._write_lock:
            self._pins.discard(ref.name)
            if self._closed:
                return  # the next open sweeps the file if nothing references it
            with self._connection() as conn:
                row = conn.execute("SELECT 1 FROM blobs WHERE name = ?", (ref.name,)).fetchone()
            if row is None:
                self.files.unlink(ref.name, ref.compressed)

    def _claim_blob(self, conn: sqlite3.Connection, ref: BlobRef) -> None:
        """Make sure a blob row exists for `ref` (crash-safety rule 1)."""
        row = conn.execute("SELECT size, compressed FROM blobs WHERE name = ?", (ref.name,))
        found = row.fetchone()
        if found is not None:
            if found["size"] != ref.size or bool(found["compressed"]) != ref.compressed:
                raise BlobUnavailable(f"blob {ref.name}: does not match the stored blob")
            return
        if ref.name not in self._pins:
            raise BlobUnavailable(
                f"blob {ref.name}: not committed by an open writer of this store (released, "
                "or from another store)"
            )
        if not self.files.is_intact(ref):
            raise BlobUnavailable(f"blob {ref.name}: file missing or not {ref.stored_size} bytes")
        conn.execute(
            "INSERT INTO blobs (name, size, stored_size, compressed) VALUES (?, ?, ?, ?)",
            (ref.name, ref.size, ref.stored_size, int(ref.compressed)),
        )

    def _collect_garbage(self, conn: sqlite3.Connection, names: set[str]) -> list[BlobRef]:
        """Delete the blob rows of `names` that nothing references; return them (rule 2)."""
        dead: list[BlobRef] = []
        for name in names:
            row = conn.execute(
                "SELECT * FROM blobs WHERE name = ? "
                "AND NOT EXISTS (SELECT 1 FROM messages WHERE blob = ?) "
                "AND NOT EXISTS (SELECT 1 FROM relay_entries WHERE blob = ?)",
                (name, name, name),
            ).fetchone()
            if row is not None:
                conn.execute("DELETE FROM blobs WHERE name = ?", (name,))
                dead.append(_blob(row))
        return dead

    def _unlink(self, dead: list[BlobRef]) -> None:
        """After the commit: remove the files of dead blobs, unless a writer still pins them."""
        for ref in dead:
            if ref.name not in self._pins:
                self.files.unlink(ref.name, ref.compressed)

    def open_blob(self, blob: BlobRef) -> BinaryIO:
        """The body of `blob` (decompressed, length-checked), e.g. for relaying."""
        try:
            return open_chain([], blob, self.files)
        except FileNotFoundError:
            raise BlobUnavailable(f"blob {blob.name}: file is gone (released?)") from None

    # -- mailboxes --------------------------------------------------------------------------

    def _message(self, row: sqlite3.Row) -> StoredMessage:
        return StoredMessage(
            id=row["id"],
            uid=f"{row['id']}.{self._instance}",
            mailbox=row["mailbox"],
            size=row["size"],
            received_at=_dt(row["received_at"]),
            expires_at=_dt(row["expires_at"]),
        )

    def deliver(
        self,
        blob: BlobRef,
        deliveries: Sequence[tuple[str, bytes]],
        *,
        now: datetime | None = None,
        relay_id: str | None = None,
    ) -> list[StoredMessage]:
        """Store `blob` in each mailbox, each with its own trace prefix, in one transaction.

        When this returns the messages are durable and visible (crash-safety rule 1). Quota and
        account status are the caller's policy; an unknown mailbox raises AccountNotFound and
        stores nothing.

        With `relay_id` (a message relayed by another Fachdienst, `RelayEntry.relay_id`) a
        mailbox that already got this relay id is skipped, and the others are remembered in
        the same transaction: a relay attempt repeated after the sender crashed between our
        `250` and its bookkeeping delivers nothing twice. Returns the messages stored now.
        """
        if not deliveries:
            raise ValueError("deliveries: empty; give at least one (mailbox, trace_prefix)")
        keys = [mailbox.lower() for mailbox, _ in deliveries]
        if len(set(keys)) != len(keys):
            raise ValueError(f"deliveries: a mailbox appears twice in {keys}")
        received = _us(now or datetime.now(UTC), "now")
        stored: list[StoredMessage] = []
        with self._write() as conn:
            self._claim_blob(conn, blob)
            for mailbox, prefix in deliveries:
                account = self._require_account(conn, mailbox)
                if relay_id is not None:
                    seen = conn.execute(
                        "INSERT INTO relay_deliveries (relay_id, mailbox, delivered_at) "
                        "VALUES (?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                        (relay_id, account["key"], received),
                    ).fetchone()
                    if seen is None:
                        continue  # delivered by an earlier attempt of the same relay entry
                cur = conn.execute(
                    "INSERT INTO messages (mailbox, blob, prefix, size, received_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
                    (
                        account["key"],
                        blob.name,
                        bytes(prefix),
                        len(prefix) + blob.size,
                        received,
                        received + account["data_ttl_days"] * _US_PER_DAY,
                    ),
                )
                stored.append(self._message(cur.fetchone()))
            # every mailbox had it already: the blob row claimed above must not outlive this
            # transaction unreferenced (rule 2); an earlier delivery keeps its own blob
            dead = self._collect_garbage(conn, {blob.name}) if not stored else []
        with self._write_lock:
            self._unlink(dead)
        return stored

    def list_messages(self, mailbox: str) -> list[StoredMessage]:
        """The messages of `mailbox`, oldest first."""
        with self._read() as conn:
            key = self._require_account(conn, mailbox)["key"]
            rows = conn.execute("SELECT * FROM messages WHERE mailbox = ? ORDER BY id", (key,))
            return [self._message(row) for row in rows]

    def get_message(self, message_id: int) -> StoredMessage | None:
        with self._connection() as conn:
            found = conn.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return None if found is None else self._message(found)

    def open_message(self, message_id: int) -> BinaryIO:
        """Trace prefix + body of a message, streamed (what POP3 `RETR` sends)."""
        query = (
            "SELECT m.prefix, b.* FROM messages m JOIN blobs b ON b.name = m.blob WHERE m.id = ?"
        )
        with self._connection() as conn:
            row = conn.execute(query, (message_id,)).fetchone()
        if row is None:
            raise MessageNotFound(f"message {message_id}: no such message")
        try:
            return open_chain([row["prefix"]], _blob(row), self.files)
        except FileNotFoundError:
            if self.get_message(message_id) is None:
                raise MessageNotFound(f"message {message_id}: deleted meanwhile") from None
            raise StoreCorrupted(
                f"message {message_id}: blob {row['name']} is missing on disk"
            ) from None

    def delete_messages(self, mailbox: str, ids: Sequence[int]) -> None:
        """Delete messages of `mailbox` in one transaction (POP3 `DELE` + `QUIT`).

        Ids that are not (or no longer) in this mailbox are ignored. A blob file goes when no
        message and no relay entry references it any more (crash-safety rule 2).
        """
        key = mailbox.lower()
        with self._write() as conn:
            names: set[str] = set()
            for message_id in ids:
                row = conn.execute(
                    "DELETE FROM messages WHERE id = ? AND mailbox = ? RETURNING blob",
                    (message_id, key),
                ).fetchone()
                if row is not None:
                    names.add(row[0])
            dead = self._collect_garbage(conn, names)
        with self._write_lock:
            self._unlink(dead)

    def mailbox_usage(self, mailbox: str) -> int:
        """Bytes stored in `mailbox` (sum of `StoredMessage.size`), for the quota (§3.2)."""
        with self._read() as conn:
            key = self._require_account(conn, mailbox)["key"]
            row = conn.execute(
                "SELECT COALESCE(SUM(size), 0) FROM messages WHERE mailbox = ?", (key,)
            )
            return int(row.fetchone()[0])

    def expire(self, now: datetime) -> int:
        """Delete every message whose `expires_at` is not after `now` (dataTimeToLive, §3.2);
        returns how many. Also forgets relay ids older than RELAY_ID_KEEP and failed-login
        counters idle for LOGIN_FAILURE_KEEP (no lock running): bookkeeping, not mail."""
        limit = _us(now, "now")
        with self._write() as conn:
            rows = conn.execute(
                "DELETE FROM messages WHERE expires_at <= ? RETURNING blob", (limit,)
            ).fetchall()
            dead = self._collect_garbage(conn, {row[0] for row in rows})
            conn.execute(
                "DELETE FROM relay_deliveries WHERE delivered_at < ?",
                (_us(now - RELAY_ID_KEEP, "now"),),
            )
            conn.execute(
                "DELETE FROM login_failures WHERE last_failure < ? "
                "AND (locked_until IS NULL OR locked_until <= ?)",
                (_us(now - LOGIN_FAILURE_KEEP, "now"), limit),
            )
        with self._write_lock:
            self._unlink(dead)
        return len(rows)

    # -- relay queue ------------------------------------------------------------------------

    def enqueue_relay(
        self,
        blob: BlobRef,
        *,
        sender: str,
        recipients: Sequence[RelayRecipient],
        envid: str | None,
        ret: str | None,
        domain: str,
        not_after: datetime,
        now: datetime | None = None,
    ) -> RelayEntry:
        """Queue `blob` for the Fachdienst of `domain`; due at once. Durable on return."""
        if not recipients:
            raise ValueError("recipients: empty; a relay entry needs at least one RCPT")
        for r in recipients:
            if r.notify is not None and not r.notify <= _NOTIFY:
                raise ValueError(
                    f"recipients: NOTIFY {sorted(r.notify)} of {r.address} is not a subset of "
                    f"{sorted(_NOTIFY)} (RFC 3461)"
                )
        if ret is not None and ret not in _RET:
            raise ValueError(f"ret: {ret!r} is not HDRS or FULL (RFC 3461)")
        created = _us(now or datetime.now(UTC), "now")
        deadline = _us(not_after, "not_after")
        relay_id = secrets.token_hex(16)
        with self._write() as conn:
            self._claim_blob(conn, blob)
            entry_id: int = conn.execute(
                "INSERT INTO relay_entries (blob, sender, envid, ret, domain, attempts, "
                "next_attempt, not_after, last_error, created_at, relay_id) "
                "VALUES (?, ?, ?, ?, ?, 0, ?, ?, NULL, ?, ?) RETURNING id",
                (
                    blob.name,
                    sender,
                    envid,
                    ret,
                    domain.lower(),
                    created,
                    deadline,
                    created,
                    relay_id,
                ),
            ).fetchone()[0]
            conn.executemany(
                "INSERT INTO relay_recipients (entry_id, position, address, notify, orcpt) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        entry_id,
                        i,
                        r.address,
                        None if r.notify is None else ",".join(sorted(r.notify)),
                        r.orcpt,
                    )
                    for i, r in enumerate(recipients)
                ],
            )
        return RelayEntry(
            id=entry_id,
            blob=blob,
            sender=sender,
            recipients=tuple(recipients),
            envid=envid,
            ret=ret,
            domain=domain.lower(),
            attempts=0,
            next_attempt=_dt(created),
            not_after=_dt(deadline),
            last_error=None,
            relay_id=relay_id,
        )

    def due_relays(self, now: datetime, limit: int = 100) -> list[RelayEntry]:
        """Relay entries whose next attempt is due, the most overdue first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT e.*, b.name, b.size, b.stored_size, b.compressed FROM relay_entries e "
                "JOIN blobs b ON b.name = e.blob WHERE e.next_attempt <= ? "
                "ORDER BY e.next_attempt, e.id LIMIT ?",
                (_us(now, "now"), limit),
            ).fetchall()
            entries: list[RelayEntry] = []
            for row in rows:
                recipients = tuple(
                    RelayRecipient(
                        r["address"],
                        None if r["notify"] is None else frozenset(r["notify"].split(",")) - {""},
                        r["orcpt"],
                    )
                    for r in conn.execute(
                        "SELECT * FROM relay_recipients WHERE entry_id = ? ORDER BY position",
                        (row["id"],),
                    )
                )
                entries.append(
                    RelayEntry(
                        id=row["id"],
                        blob=_blob(row),
                        sender=row["sender"],
                        recipients=recipients,
                        envid=row["envid"],
                        ret=row["ret"],
                        domain=row["domain"],
                        attempts=row["attempts"],
                        next_attempt=_dt(row["next_attempt"]),
                        not_after=_dt(row["not_after"]),
                        last_error=row["last_error"],
                        relay_id=row["relay_id"],
                    )
                )
            return entries

    def relay_attempted(
        self,
        entry_id: int,
        *,
        next_attempt: datetime | None,
        error: str | None,
        done: Sequence[str] = (),
    ) -> None:
        """Record an attempt: `next_attempt=None` removes the entry (delivered or bounced);
        otherwise count the attempt and reschedule it with the error text, dropping the
        recipients in `done` (delivered or bounced by this attempt) in the same transaction.
        The entry keeps its `relay_id`, so the receiving side still recognises a repeat."""
        dead: list[BlobRef] = []
        with self._write() as conn:
            if next_attempt is None:
                row = conn.execute(
                    "DELETE FROM relay_entries WHERE id = ? RETURNING blob", (entry_id,)
                ).fetchone()
                if row is None:
                    raise RelayEntryNotFound(f"relay entry {entry_id}: no such entry")
                dead = self._collect_garbage(conn, {row[0]})
            else:
                cur = conn.execute(
                    "UPDATE relay_entries SET attempts = attempts + 1, next_attempt = ?, "
                    "last_error = ? WHERE id = ?",
                    (_us(next_attempt, "next_attempt"), error, entry_id),
                )
                if cur.rowcount == 0:
                    raise RelayEntryNotFound(f"relay entry {entry_id}: no such entry")
                left = {
                    row[0].lower()
                    for row in conn.execute(
                        "SELECT address FROM relay_recipients WHERE entry_id = ?", (entry_id,)
                    )
                }
                gone = {address.lower() for address in done}
                if left and left <= gone:
                    raise ValueError(
                        f"relay entry {entry_id}: every recipient is done; remove the entry "
                        "(next_attempt=None) instead of rescheduling it"
                    )
                conn.executemany(
                    "DELETE FROM relay_recipients WHERE entry_id = ? AND lower(address) = ?",
                    [(entry_id, address) for address in gone],
                )
        with self._write_lock:
            self._unlink(dead)

    # -- failed logins (KOM-LE-A_2167) --------------------------------------------------------

    def login_state(self, account_key: str, client: str) -> LockState | None:
        """The failed logins of `account_key` from `client` (None: none recorded); whether a
        lock runs is `LockState.locked(now)`."""
        with self._connection() as conn:
            return _lock_state(conn, account_key.lower(), client)

    def record_login_failure(
        self, account_key: str, client: str, now: datetime, policy: LockoutPolicy
    ) -> LockState:
        """Count one failed login of `account_key` from `client` (read, `policy`, write: one
        transaction) and return the new state; it is locked if this failure reached the limit."""
        key = account_key.lower()
        with self._write() as conn:
            new = policy.after_failure(_lock_state(conn, key, client), now)
            assert new.last_failure is not None
            conn.execute(
                "INSERT OR REPLACE INTO login_failures "
                "(account, client, failures, locks, locked_until, last_failure) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key,
                    client,
                    new.failures,
                    new.locks,
                    _opt_us(new.locked_until, "locked_until"),
                    _us(new.last_failure, "now"),
                ),
            )
        return new

    def clear_login_failures(self, account_key: str, client: str | None = None) -> None:
        """Forget the failed logins of `account_key` from `client` (a successful login), or
        from every client (the operator sets a new password: KOM-LE-A_2168 unlock)."""
        with self._write() as conn:
            if client is None:
                conn.execute("DELETE FROM login_failures WHERE account = ?", (account_key.lower(),))
            else:
                conn.execute(
                    "DELETE FROM login_failures WHERE account = ? AND client = ?",
                    (account_key.lower(), client),
                )

    # -- checks -----------------------------------------------------------------------------

    def verify(self) -> list[str]:
        """Problems found: blob rows whose file is missing or has the wrong size. [] = sound."""
        with self._read() as conn:
            refs = [_blob(row) for row in conn.execute("SELECT * FROM blobs")]
        return [
            f"blob {ref.name}: file missing or not {ref.stored_size} bytes"
            for ref in refs
            if not self.files.is_intact(ref)
        ]


def open_store(data_dir: Path, *, compress: bool = False) -> SQLiteMailStore:
    """Open (creating if needed) the SQLite store in `data_dir`, sweeping crash orphans."""
    return SQLiteMailStore(Path(data_dir), compress=compress)
