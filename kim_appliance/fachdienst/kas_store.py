"""Storage of the KAS (attachment service): encrypted mail data blobs plus their metadata.

Layout under the KAS root (the Fachdienst's data dir ``kas/``): ``tmp/<uuid>.part`` while an
upload is being written, ``<2 hex>/<uuid>`` once committed, and ``kas.sqlite3`` with one row per
attachment (uploader, recipients, messageID, expiry, size) and one per counted download.
Crash-safety follows :mod:`kim_appliance.store.blobs`: the blob is fsync'd and renamed (and its
directory fsync'd) before its row is committed; deleting removes the row first, then the file;
:meth:`KasStore.open` sweeps temp files and unreferenced blobs. Every method blocks (SQLite, file
I/O): callers in trio run them through ``trio.to_thread``.

This module never checks credentials or HTTP input and never decides on quotas; it stores what
the routes (:mod:`kim_appliance.fachdienst.kas`) have validated.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from kim_appliance.store.blobs import SHARDS, TMP_DIR, fsync_dir, make_blob_root
from kim_appliance.store.private import create_private, private_database

DB_NAME = "kas.sqlite3"
READ_CHUNK = 1 << 20
_PART = ".part"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attachments (
    id TEXT PRIMARY KEY,
    uploader TEXT NOT NULL,
    message_id TEXT NOT NULL,
    filename TEXT,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS attachments_uploader ON attachments(uploader);
CREATE INDEX IF NOT EXISTS attachments_expires ON attachments(expires_at);
CREATE TABLE IF NOT EXISTS recipients (
    attachment TEXT NOT NULL REFERENCES attachments(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    PRIMARY KEY (attachment, address)
);
CREATE TABLE IF NOT EXISTS downloads (
    attachment TEXT NOT NULL REFERENCES attachments(id) ON DELETE CASCADE,
    recipient TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS downloads_key ON downloads(attachment, recipient, at);
"""


def _us(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError(f"time {when!r} has no time zone")
    return int(when.timestamp() * 1_000_000)


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)


class AttachmentNotFound(LookupError):
    """No (unexpired) attachment with this id."""


class SizeMismatch(ValueError):
    """The upload's bytes differ from the size it declared (part Content-Length)."""


@dataclass(frozen=True)
class Attachment:
    """One stored mail data file (digest §3.5). Addresses are kept in lower case."""

    id: str
    uploader: str
    message_id: str
    filename: str | None
    size: int
    created_at: datetime
    expires_at: datetime
    recipients: tuple[str, ...]

    def is_recipient(self, address: str) -> bool:
        return address.lower() in self.recipients


class KasUpload:
    """Writes one attachment to ``tmp/``; :meth:`commit` makes it durable and visible.

    Use as a context manager: leaving it without commit removes the temp file.
    """

    def __init__(self, store: KasStore, *, declared_size: int) -> None:
        self._store = store
        self.id = str(uuid.uuid4())
        self.declared_size = declared_size
        self.size = 0
        self._tmp = store.root / TMP_DIR / (self.id + _PART)
        self._fh: BinaryIO | None = create_private(self._tmp)  # closed in commit/abort

    def write(self, data: bytes) -> None:
        if self._fh is None:
            raise ValueError(f"attachment {self.id}: write after commit or abort")
        if self.size + len(data) > self.declared_size:
            raise SizeMismatch(
                f"attachment: more bytes than its declared Content-Length {self.declared_size}"
            )
        self._fh.write(data)
        self.size += len(data)

    def commit(
        self,
        *,
        uploader: str,
        recipients: Sequence[str],
        message_id: str,
        filename: str | None,
        expires_at: datetime,
        now: datetime,
    ) -> Attachment:
        """fsync, rename to the final name, fsync the directory, then insert the row."""
        fh = self._fh
        if fh is None:
            raise ValueError(f"attachment {self.id}: commit after commit or abort")
        if self.size != self.declared_size:
            raise SizeMismatch(
                f"attachment: {self.size} bytes received, its Content-Length declared "
                f"{self.declared_size}"
            )
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        self._fh = None
        final = self._store.blob_path(self.id)
        os.rename(self._tmp, final)
        fsync_dir(final.parent)
        attachment = Attachment(
            id=self.id,
            uploader=uploader.lower(),
            message_id=message_id,
            filename=filename,
            size=self.size,
            created_at=now,
            expires_at=expires_at,
            recipients=tuple(dict.fromkeys(r.lower() for r in recipients)),
        )
        try:
            self._store._insert(attachment)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                final.unlink()
            raise
        return attachment

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()

    def __enter__(self) -> KasUpload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class KasStore:
    """The attachments of one Fachdienst's KAS. Thread-safe (one connection, one lock)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        make_blob_root(root)
        private_database(root / DB_NAME)  # 0600, and so its -wal/-shm (issue 11)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            root / DB_NAME, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        self._sweep()

    @classmethod
    def open(cls, root: Path) -> KasStore:
        """Open (creating if needed) the KAS store under ``root``, sweeping crash orphans."""
        return cls(Path(root))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> KasStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise ValueError(f"KAS store {self.root}: used after close()")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def blob_path(self, attachment_id: str) -> Path:
        try:
            canonical = str(uuid.UUID(attachment_id))
        except ValueError:
            raise AttachmentNotFound(f"attachment {attachment_id!r}: not a UUID") from None
        if canonical != attachment_id:
            raise AttachmentNotFound(f"attachment {attachment_id!r}: not a canonical UUID")
        return self.root / attachment_id[:2] / attachment_id

    def _sweep(self) -> None:
        """Remove temp files and blob files no row references (crash orphans)."""
        for entry in os.scandir(self.root / TMP_DIR):
            os.unlink(entry.path)
        with self._tx() as conn:
            known = {row[0] for row in conn.execute("SELECT id FROM attachments")}
        for shard in SHARDS:
            for entry in os.scandir(self.root / shard):
                if entry.name not in known:
                    os.unlink(entry.path)

    # -- writing ----------------------------------------------------------------------------

    def new_upload(self, *, declared_size: int) -> KasUpload:
        return KasUpload(self, declared_size=declared_size)

    def _insert(self, a: Attachment) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO attachments (id, uploader, message_id, filename, size, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    a.id,
                    a.uploader,
                    a.message_id,
                    a.filename,
                    a.size,
                    _us(a.created_at),
                    _us(a.expires_at),
                ),
            )
            conn.executemany(
                "INSERT INTO recipients (attachment, address) VALUES (?, ?)",
                [(a.id, r) for r in a.recipients],
            )

    def delete(self, attachment_id: str) -> None:
        """Row first (committed), then the file. Raises AttachmentNotFound."""
        path = self.blob_path(attachment_id)
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM attachments WHERE id = ?", (attachment_id,))
            if cur.rowcount == 0:
                raise AttachmentNotFound(f"attachment {attachment_id}: not found")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def expire(self, now: datetime) -> int:
        """Delete every attachment whose expiry is not after ``now``; returns how many."""
        with self._tx() as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    "DELETE FROM attachments WHERE expires_at <= ? RETURNING id", (_us(now),)
                )
            ]
        for attachment_id in ids:
            with contextlib.suppress(FileNotFoundError):
                self.blob_path(attachment_id).unlink()
        return len(ids)

    def delete_uploads_of(self, uploader: str) -> int:
        """Delete every attachment ``uploader`` stored (the purge of a deregistered account,
        KOM-LE-A_2155); rows first, then the files. Returns how many."""
        with self._tx() as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    "DELETE FROM attachments WHERE uploader = ? RETURNING id", (uploader.lower(),)
                )
            ]
        for attachment_id in ids:
            with contextlib.suppress(FileNotFoundError):
                self.blob_path(attachment_id).unlink()
        return len(ids)

    def uploaders(self) -> set[str]:
        """Every address (lower case) with at least one stored attachment."""
        with self._tx() as conn:
            return {row[0] for row in conn.execute("SELECT DISTINCT uploader FROM attachments")}

    # -- reading ----------------------------------------------------------------------------

    def get(self, attachment_id: str, *, now: datetime) -> Attachment:
        """The attachment, unless unknown or expired (then AttachmentNotFound)."""
        self.blob_path(attachment_id)  # rejects non-UUIDs
        with self._tx() as conn:
            row = conn.execute(
                "SELECT uploader, message_id, filename, size, created_at, expires_at "
                "FROM attachments WHERE id = ?",
                (attachment_id,),
            ).fetchone()
            recipients = tuple(
                r[0]
                for r in conn.execute(
                    "SELECT address FROM recipients WHERE attachment = ? ORDER BY rowid",
                    (attachment_id,),
                )
            )
        if row is None or row[5] <= _us(now):
            raise AttachmentNotFound(f"attachment {attachment_id}: not found")
        return Attachment(
            id=attachment_id,
            uploader=row[0],
            message_id=row[1],
            filename=row[2],
            size=row[3],
            created_at=_dt(row[4]),
            expires_at=_dt(row[5]),
            recipients=recipients,
        )

    def open_blob(self, attachment: Attachment) -> BinaryIO:
        """The stored bytes (raises AttachmentNotFound if the file went away meanwhile)."""
        try:
            return open(self.blob_path(attachment.id), "rb")
        except FileNotFoundError:
            raise AttachmentNotFound(f"attachment {attachment.id}: not found") from None

    def usage(self, uploader: str) -> int:
        """Bytes of the uploader's stored attachments (part of the account's quota, §3.2)."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(size), 0) FROM attachments WHERE uploader = ?",
                (uploader.lower(),),
            ).fetchone()
        return int(row[0])

    def record_download(
        self, attachment_id: str, recipient: str, *, now: datetime, limit: int, window: timedelta
    ) -> bool:
        """Count one download of (recipient, attachment) unless ``limit`` were reached within
        ``window`` before ``now``; False means refused (429, KAS-ref max-attachment-requests)."""
        since = _us(now - window)
        key = recipient.lower()
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM downloads WHERE attachment = ? AND recipient = ? AND at <= ?",
                (attachment_id, key, since),
            )
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM downloads WHERE attachment = ? AND recipient = ?",
                (attachment_id, key),
            ).fetchone()
            if count >= limit:
                return False
            conn.execute(
                "INSERT INTO downloads (attachment, recipient, at) VALUES (?, ?, ?)",
                (attachment_id, key, _us(now)),
            )
        return True
