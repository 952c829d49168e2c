"""The embedded `Store`: one SQLite database plus blob files in the data directory.

``DIR/store/kim.sqlite3`` holds every row of the appliance's state (see `store.base`);
``DIR/store/blobs/`` the bodies of messages and KAS attachments (see `store.blobs`). SQLite
runs in WAL mode with ``synchronous=FULL``, ``busy_timeout`` and foreign keys, so a committed
transaction survives a crash or ``kill -9``. The directory is 0700 and every file in it 0600
(the database with its -wal/-shm, the blobs): mail and password hashes are for this process only.
The schema is versioned and migrated at open (``_schema``); a data dir of an earlier version
(one store per Fachdienst, a KAS database, JSON files) is imported at the first open
(`store.legacy`).

Crash-safety rules:
1. A body becomes a blob file first (temp file, fsync, rename, fsync of the directory); a row
   that points to it is inserted only afterwards, in one transaction with the rows that use it
   (`mail.deliver`, `relay.enqueue`, `kas.commit`). When that commit returns, the mail server
   may answer ``250``.
2. `mail.delete`, `mail.expire`, a finished relay, a purge and the KAS's deletions remove rows
   first (one transaction, blob rows whose last reference went with them included), then the
   files.
3. At open the store removes every temp file and every final blob no row references: the
   orphans of a crash between rename and commit, or between commit and unlink. It also drops
   the relay claims, maildrop locks and upload reservations (their process is gone: the data
   directory is locked, one process at a time).
4. A blob committed by a writer that is still open is pinned in memory; leaving the writer's
   block unpins it and removes the file if no row references it (refused deliveries).

Resource handling: every operation runs in one worker thread call with a pooled connection
(``_db``); writes are serialised in the process and by ``BEGIN IMMEDIATE``, reads run in
parallel. ``DIR/store/store.lock`` is held with ``flock``: one process per data directory (a
store shared by several nodes is the PostgreSQL backend's job). This package must never make a
row visible before its blob is durable, and never delete a blob file before the rows that
reference it are gone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import trio

from .. import legacy
from ..base import BlobRef, StoreInUse
from ..blobs import BlobFiles
from ..private import FILE_MODE, private_database, private_dir
from ._accounts import SQLiteAccounts, SQLiteLogins
from ._blobs import SQLiteBlobs
from ._db import Database, Tx, blob_of
from ._kas import SQLiteKas
from ._mail import SQLiteMail, SQLiteRelay
from ._misc import (
    SQLiteAutoReplies,
    SQLiteDirectory,
    SQLiteMaildrops,
    SQLiteMeta,
    SQLiteNodes,
    SQLiteRegistrations,
)
from ._schema import SCHEMA_VERSION, migrate
from ._traces import SQLiteTraces

STORE_DIR = "store"
DB_NAME = "kim.sqlite3"
BLOB_DIR = "blobs"
LOCK_NAME = "store.lock"
log = logging.getLogger("kim_appliance.store")

__all__ = ["BLOB_DIR", "DB_NAME", "SCHEMA_VERSION", "STORE_DIR", "SQLiteStore", "open_sqlite_store"]


class SQLiteStore:
    """`store.base.Store` on SQLite + blob files. Open it with :func:`open_sqlite_store`.

    ``swept`` lists the files removed at open (crash orphans); ``imported`` what the legacy
    import of this open brought in (empty when there was nothing to import)."""

    def __init__(self, db: Database, *, compress: bool, instance: str, lock_fd: int) -> None:
        self._db = db
        self._lock_fd = lock_fd
        self.root = db.path.parent
        self.accounts = SQLiteAccounts(db)
        self.logins = SQLiteLogins(db)
        self.blobs = SQLiteBlobs(db, compress=compress)
        self.mail = SQLiteMail(db, instance)
        self.relay = SQLiteRelay(db)
        self.kas = SQLiteKas(db)
        self.autoreplies = SQLiteAutoReplies(db)
        self.registrations = SQLiteRegistrations(db)
        self.maildrops = SQLiteMaildrops(db)
        self.directory = SQLiteDirectory(db)
        self.nodes = SQLiteNodes(db)
        self.meta = SQLiteMeta(db)
        self.traces = SQLiteTraces(db)
        self.swept: list[str] = []
        self.imported: list[legacy.Imported] = []

    @property
    def description(self) -> str:
        return f"embedded SQLite store {self._db.path}"

    async def aclose(self) -> None:
        if self._lock_fd < 0:
            return
        self._db.close()
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = -1

    async def verify(self) -> list[str]:
        """Problems found: blob rows whose file is missing or has the wrong size ([]: sound)."""
        db = self._db

        def check() -> list[str]:
            refs: list[BlobRef] = db.read_sync(
                lambda tx: [blob_of(row) for row in tx.execute("SELECT * FROM blobs")]
            )
            return [
                f"blob {ref.name}: file missing or not {ref.stored_size} bytes"
                for ref in refs
                if not db.files.is_intact(ref)
            ]

        return await db.run(check)


def _open(data_dir: Path, compress: bool) -> SQLiteStore:
    """Lock, create or migrate, import a legacy data dir, sweep (blocking: a worker thread)."""
    root = data_dir / STORE_DIR
    private_dir(data_dir)
    private_dir(root)
    lock_fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise StoreInUse(
            f"data dir {data_dir}: its store is in use by another process (lock "
            f"{root / LOCK_NAME} is held); stop the other process or use another directory"
        ) from None
    db: Database | None = None
    try:
        private_database(root / DB_NAME)
        db = Database(root / DB_NAME, BlobFiles(root / BLOB_DIR))
        now = datetime.now(UTC)
        path = db.path

        def prepare(tx: Tx) -> str:
            migrate(tx.conn, path, now)
            tx.execute(
                "INSERT INTO meta (name, value) VALUES ('instance', ?) ON CONFLICT DO NOTHING",
                (secrets.token_hex(4),),
            )
            row = tx.one("SELECT value FROM meta WHERE name = 'instance'")
            assert row is not None
            return str(row[0])

        instance = db.write_sync(prepare)
        store = SQLiteStore(db, compress=compress, instance=instance, lock_fd=lock_fd)
        store.imported = legacy.import_data_dir(db, data_dir, now)
        store.swept = db.write_sync(lambda tx: _sweep(db, tx))
        return store
    except BaseException:
        if db is not None:
            db.close()
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)
        raise


def _sweep(db: Database, tx: Tx) -> list[str]:
    """Crash-safety rule 3 (at open only, no writer is active)."""
    for table in ("maildrop_locks", "kas_reservations"):
        tx.execute(f"DELETE FROM {table}")
    tx.execute("UPDATE relay_entries SET claimed_by = NULL, claim_until = NULL")
    names = {row[0] for row in tx.execute("SELECT name FROM blobs")}
    return db.files.sweep(names)


@asynccontextmanager
async def open_sqlite_store(
    data_dir: Path, *, compress: bool = False
) -> AsyncIterator[SQLiteStore]:
    """The embedded store of ``data_dir`` (created if missing), closed when the block ends.

    `StoreInUse` if another process has it open; `StoreError` for a database of a newer schema
    or a legacy data dir that cannot be imported (nothing is changed then)."""
    store = await trio.to_thread.run_sync(_open, Path(data_dir), compress)
    if store.imported:
        for item in store.imported:
            log.info("store: imported %s", item)
    try:
        yield store
    finally:
        await store.aclose()
