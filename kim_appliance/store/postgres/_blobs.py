"""The PostgreSQL store's bodies: blobs as rows of 1 MiB chunks, written and read as streams.

A body is a ``blobs`` row plus ``blob_chunks(blob, seq, data)`` rows of at most
:data:`CHUNK_SIZE` bytes (no large objects: they are not portable to PostgreSQL-compatible
distributed engines, and their lifetime is not bound to a row). Rules:

1. Streaming: a writer holds at most one chunk in memory and commits each full chunk as it
   comes, in its own short transaction (a 25 MB message never sits whole in memory, and no
   transaction or connection is held while a slow client sends). The first chunk creates the
   ``blobs`` row with ``committed = false``; `commit` writes the last chunk and sets
   ``committed`` and the size in one transaction. Nothing may reference a blob that is not
   committed (`claim_blob`), so a half-written body is never visible, whatever happens.
2. A blob is ``pinned`` while the writer that made it is open: deleting the last message of a
   blob leaves a pinned blob alone (the writer may still deliver or queue it). Leaving the
   writer's block unpins it and deletes it if nothing references it (a refused delivery).
3. Rows that reference a blob and the blob itself go in one transaction (`collect_garbage`: the
   blob row, and with it its chunks by ON DELETE CASCADE, once no message, relay entry or KAS
   attachment references it). A blob is locked (``FOR UPDATE``) before the references are
   counted, in a statement of its own, so a delivery that references it at the same moment
   either finishes first and is counted, or finds the blob gone (`BlobUnavailable`).
4. The sweep (:func:`sweep_blobs`, at open and every few minutes on every node) removes blobs
   no row references whose writer last wrote longer ago than :data:`SWEEP_AGE`: the leftovers
   of a node that died while writing, or between commit and delivery. Ages use the database
   server's clock (``touched_at``), so skewed node clocks do not matter.

Compression: the store's zstd setting does not apply here: PostgreSQL compresses large BYTEA
values itself (TOAST), so every BlobRef of this backend says ``compressed=False`` and
``stored_size == size``. Readers check the length: a body shorter or longer than its recorded
size raises `StoreCorrupted`. This module must never reference a blob from a row itself; the
sub-stores do, after `claim_blob`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from types import TracebackType

import trio

from ..base import BlobRef, BlobUnavailable, StoreCorrupted, StoreError
from ..sqlite._db import span_us
from ._db import NOW_US, Conn, Database

#: bytes per chunk row (the issue: 1 MiB rows)
CHUNK_SIZE = 1 << 20
#: unreferenced blobs older than this are swept (a writer that has not written for an hour)
SWEEP_AGE = timedelta(hours=1)
#: blobs one sweep transaction removes at most (the rest go in the next round)
SWEEP_BATCH = 100
log = logging.getLogger("kim_appliance.store")

_UNREFERENCED = (
    "NOT EXISTS (SELECT 1 FROM messages m WHERE m.blob = b.name) "
    "AND NOT EXISTS (SELECT 1 FROM relay_entries r WHERE r.blob = b.name) "
    "AND NOT EXISTS (SELECT 1 FROM kas_attachments k WHERE k.blob = b.name)"
)


def blob_of(row: object, prefix: str = "") -> BlobRef:
    """The BlobRef of a row with the blob columns (``b_name`` ... with ``prefix="b_"``)."""
    r = row  # an asyncpg Record
    return BlobRef(
        r[prefix + "name"],  # type: ignore[index]
        r[prefix + "size"],  # type: ignore[index]
        r[prefix + "stored_size"],  # type: ignore[index]
        r[prefix + "compressed"],  # type: ignore[index]
    )


async def claim_blob(conn: Conn, ref: BlobRef) -> None:
    """Check that ``ref`` is a committed blob of this store and keep it from being deleted until
    the transaction ends (rule 1; a key-share lock, as the foreign key takes anyway)."""
    row = await conn.fetchrow(
        "SELECT size, compressed, committed FROM blobs WHERE name = $1 FOR KEY SHARE", ref.name
    )
    if row is None or not row["committed"]:
        raise BlobUnavailable(
            f"blob {ref.name}: not committed by a writer of this store (released, or from "
            "another store)"
        )
    if row["size"] != ref.size or row["compressed"] != ref.compressed:
        raise BlobUnavailable(f"blob {ref.name}: does not match the stored blob")


async def _delete_unreferenced(conn: Conn, names: Iterable[str], *, pinned_too: bool) -> list[str]:
    """Rule 3: lock the blobs of ``names`` (in name order: no deadlock between two nodes), then
    delete those nothing references, chunks included; the names deleted."""
    wanted = sorted(set(names))
    if not wanted:
        return []
    locked = await conn.fetch(
        "SELECT name FROM blobs WHERE name = ANY($1::text[])"
        + ("" if pinned_too else " AND NOT pinned")
        + " ORDER BY name FOR UPDATE",
        wanted,
    )
    if not locked:
        return []
    # a new statement, so a new snapshot: references committed while we waited for the locks
    # are seen
    rows = await conn.fetch(
        f"DELETE FROM blobs b WHERE b.name = ANY($1::text[]) AND {_UNREFERENCED} RETURNING name",
        [r["name"] for r in locked],
    )
    return [r["name"] for r in rows]


async def collect_garbage(conn: Conn, names: Iterable[str]) -> None:
    """Delete the blobs of ``names`` that nothing references any more and no writer pins."""
    await _delete_unreferenced(conn, names, pinned_too=False)


async def sweep_blobs(db: Database, age: timedelta = SWEEP_AGE) -> int:
    """Rule 4: remove unreferenced blobs not written to for ``age``; how many."""
    cutoff = span_us(age)
    total = 0
    while True:

        async def op(conn: Conn) -> tuple[int, bool]:
            candidates = await conn.fetch(
                f"SELECT name FROM blobs b WHERE b.touched_at <= {NOW_US} - $1 "
                f"AND {_UNREFERENCED} LIMIT $2",
                cutoff,
                SWEEP_BATCH,
            )
            gone = await _delete_unreferenced(
                conn, [r["name"] for r in candidates], pinned_too=True
            )
            return len(gone), len(candidates) == SWEEP_BATCH

        removed, more = await db.write(op)
        total += removed
        if not more or removed == 0:
            return total


class PgBlobWriter:
    """`store.base.BlobWriter` of the PostgreSQL store (rules 1 and 2)."""

    def __init__(self, db: Database, name: str | None = None) -> None:
        self._db = db
        self.name = name or secrets.token_hex(16)
        self._buffer = bytearray()
        self._seq = 0
        self._size = 0
        self._ref: BlobRef | None = None
        self._done = False
        self._released = False

    @property
    def size(self) -> int:
        return self._size

    def _check(self) -> None:
        if self._done:
            raise ValueError("blob writer: write or commit after commit or abort")

    async def write(self, data: bytes) -> None:
        self._check()
        self._buffer += data
        self._size += len(data)
        while len(self._buffer) >= CHUNK_SIZE:
            chunk = bytes(self._buffer[:CHUNK_SIZE])
            del self._buffer[:CHUNK_SIZE]
            await self._run(partial(self._put_chunk, chunk, self._seq, final=False))
            self._seq += 1

    async def commit(self) -> BlobRef:
        self._check()
        tail = bytes(self._buffer)
        self._buffer.clear()
        await self._run(partial(self._put_chunk, tail, self._seq, final=True))
        self._seq += 1
        self._ref = BlobRef(self.name, self._size, self._size, False)
        self._done = True
        return self._ref

    async def _run(self, op: Callable[[Conn], Awaitable[None]]) -> None:
        try:
            await self._db.write(op)
        except BaseException:
            self._done = True  # a chunk may be missing: this body can never be committed
            raise

    async def _put_chunk(self, chunk: bytes, seq: int, conn: Conn, *, final: bool) -> None:
        """One chunk (the first creates the blob row; the final one commits the blob)."""
        if seq == 0:
            await conn.execute(
                "INSERT INTO blobs (name, size, stored_size, compressed, committed, pinned, "
                f"touched_at) VALUES ($1, 0, 0, false, false, true, {NOW_US})",
                self.name,
            )
        else:
            status = await conn.execute(
                f"UPDATE blobs SET touched_at = {NOW_US} WHERE name = $1 AND NOT committed",
                self.name,
            )
            if status != "UPDATE 1":
                raise BlobUnavailable(f"blob {self.name}: swept while being written")
        if chunk:
            await conn.execute(
                "INSERT INTO blob_chunks (blob, seq, data) VALUES ($1, $2, $3)",
                self.name,
                seq,
                chunk,
            )
        if final:
            await conn.execute(
                "UPDATE blobs SET size = $2, stored_size = $2, committed = true WHERE name = $1",
                self.name,
                self._size,
            )

    async def abort(self) -> None:
        self._done = True
        if self._seq == 0 or self._released:
            return  # nothing reached the database, or released already
        self._released = True
        name = self.name

        async def release(conn: Conn) -> None:
            # unpin, and delete unless referenced (an uncommitted blob never is)
            await conn.execute("UPDATE blobs SET pinned = false WHERE name = $1", name)
            await _delete_unreferenced(conn, [name], pinned_too=False)

        with trio.CancelScope(shield=True):
            try:
                await self._db.write(release)
            except StoreError as exc:
                log.warning("blob %s: release failed (%s); left for the sweep", name, exc)

    async def __aenter__(self) -> PgBlobWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.abort()


@dataclass
class Opened:
    """What a reader learns when it opens: the bytes before the body (a message's trace
    prefix), the body's blob, how many chunk rows and bytes the body has, and its first chunk."""

    prefix: bytes
    blob: BlobRef
    chunks: int
    stored: int
    first: bytes | None


#: the columns an opener selects beside its own (blob ``b``): chunk count, bytes, first chunk
OPEN_COLUMNS = (
    "b.name, b.size, b.stored_size, b.compressed, "
    "(SELECT count(*) FROM blob_chunks c WHERE c.blob = b.name) AS chunks, "
    "(SELECT COALESCE(sum(octet_length(c.data)), 0) FROM blob_chunks c WHERE c.blob = b.name) "
    "AS stored, "
    "(SELECT c.data FROM blob_chunks c WHERE c.blob = b.name AND c.seq = 0) AS first"
)


def opened(row: object, prefix: bytes = b"") -> Opened:
    r = row  # an asyncpg Record
    return Opened(
        prefix,
        blob_of(r),
        int(r["chunks"]),  # type: ignore[index]
        int(r["stored"]),  # type: ignore[index]
        r["first"],  # type: ignore[index]
    )


class PgReader:
    """`store.base.BlobReader` over chunk rows: the opener (one query: the owner's row, the
    blob's and its first chunk) runs at the first read or on entering; every further chunk is
    one query. ``gone`` is the owner's not-found error, raised when the blob disappears while
    it is read (the message was deleted meanwhile)."""

    def __init__(
        self,
        db: Database,
        opener: Callable[[Conn], Awaitable[Opened]],
        gone: Callable[[], StoreError],
    ) -> None:
        self._db = db
        self._opener = opener
        self._gone = gone
        self._opened: Opened | None = None
        self._head = b""
        self._chunk = b""
        self._pos = 0
        self._next_seq = 0
        self._body_read = 0
        self._closed = False

    async def _open(self) -> Opened:
        if self._closed:
            raise ValueError("blob reader: read after close")
        if self._opened is None:
            found = await self._db.read(self._opener)
            ref = found.blob
            if found.stored != ref.size or (found.chunks == 0) != (ref.size == 0):
                raise StoreCorrupted(
                    f"blob {ref.name}: {found.stored} bytes in {found.chunks} chunks, recorded "
                    f"{ref.size}"
                )
            self._opened = found
            self._head = found.prefix
            if found.first is not None:
                self._chunk = found.first
                self._next_seq = 1
        return self._opened

    async def read(self, max_bytes: int) -> bytes:
        if max_bytes < 1:
            raise ValueError(f"read: max_bytes {max_bytes}; at least 1")
        opened_ = await self._open()
        if self._head:
            data, self._head = self._head[:max_bytes], self._head[max_bytes:]
            return data
        if self._pos >= len(self._chunk):
            if self._next_seq >= opened_.chunks:
                if self._body_read != opened_.blob.size:
                    raise StoreCorrupted(
                        f"blob {opened_.blob.name}: ends after {self._body_read} of "
                        f"{opened_.blob.size} bytes"
                    )
                return b""
            await self._fetch(opened_)
        data = self._chunk[self._pos : self._pos + max_bytes]
        self._pos += len(data)
        self._body_read += len(data)
        if self._body_read > opened_.blob.size:
            raise StoreCorrupted(
                f"blob {opened_.blob.name}: longer than its recorded {opened_.blob.size} bytes"
            )
        return data

    async def _fetch(self, opened_: Opened) -> None:
        name, seq = opened_.blob.name, self._next_seq

        async def op(conn: Conn) -> tuple[bytes | None, bool]:
            data = await conn.fetchval(
                "SELECT data FROM blob_chunks WHERE blob = $1 AND seq = $2", name, seq
            )
            if data is not None:
                return data, True
            exists = await conn.fetchval("SELECT 1 FROM blobs WHERE name = $1", name)
            return None, exists is not None

        data, exists = await self._db.read(op)
        if data is None:
            if not exists:
                raise self._gone()
            raise StoreCorrupted(f"blob {name}: chunk {seq} is missing")
        self._chunk, self._pos, self._next_seq = data, 0, seq + 1

    async def aclose(self) -> None:
        self._closed = True
        self._chunk = b""
        self._head = b""

    async def __aenter__(self) -> PgReader:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class PgBlobs:
    """`store.base.Blobs` of the PostgreSQL store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def writer(self, *, compress: bool | None = None, name: str | None = None) -> PgBlobWriter:
        """A writer (``compress`` is accepted and ignored: PostgreSQL compresses BYTEA itself,
        TOAST). ``name``: the blob's name, for `store copy`, which keeps the names."""
        return PgBlobWriter(self._db, name)

    def reader(self, blob: BlobRef) -> PgReader:
        async def opener(conn: Conn) -> Opened:
            row = await conn.fetchrow(
                f"SELECT {OPEN_COLUMNS} FROM blobs b WHERE b.name = $1 AND b.committed",
                blob.name,
            )
            if row is None:
                raise BlobUnavailable(f"blob {blob.name}: not stored (released?)")
            return opened(row)

        return PgReader(
            self._db, opener, lambda: BlobUnavailable(f"blob {blob.name}: released meanwhile")
        )

    async def space(self) -> int | None:
        return None  # a database server does not say how much room its disks have left
