"""The embedded store's bodies for trio: async writers and readers over `store.blobs` files.

A writer creates its temp file on the first write. Small uncompressed chunks (at most
:data:`INLINE_WRITE_MAX`) are written to the page cache on the event loop: measured on the CI
machine, 64 KiB take about 16 us and 256 KiB about 57 us, less than the ~80 us a thread hop
costs; larger or compressed chunks, the fsync of `commit` and every read run in a worker thread.
Leaving a writer's block releases its blob (shielded from cancellation: a file no row references
must not outlive the process's knowledge of it). This module must never decide whether a blob
is referenced; the database does (``_db.Database``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import BinaryIO

import trio

from ..base import BlobRef, BlobUnavailable, StoreError, StoreUnavailable
from ..blobs import FileBlobWriter, open_chain
from ._db import Database

#: chunks up to this size (uncompressed) are written on the event loop (see the docstring)
INLINE_WRITE_MAX = 256 * 1024
#: bytes a reader reads in the worker call that opens it (see ThreadedReader)
READ_AHEAD = 256 * 1024
log = logging.getLogger("kim_appliance.store")


class SQLiteBlobWriter:
    """`store.base.BlobWriter` of the embedded store."""

    def __init__(self, db: Database, compress: bool) -> None:
        self._db = db
        self._compress = compress
        self._file: FileBlobWriter | None = None
        self._done = False

    @property
    def size(self) -> int:
        return self._file.size if self._file is not None else 0

    def _open(self) -> FileBlobWriter:
        if self._done:
            raise ValueError("blob writer: write or commit after commit or abort")
        if self._file is None:
            if self._db.closed:
                raise StoreError(f"store {self._db.path}: used after it was closed")
            try:
                self._file = self._db.files.writer(
                    compress=self._compress, on_commit=self._pin, on_release=self._release
                )
            except OSError as exc:
                raise StoreUnavailable(f"blob file: {exc.strerror or exc}") from exc
        return self._file

    async def write(self, data: bytes) -> None:
        file = self._open()
        if len(data) <= INLINE_WRITE_MAX and not self._compress:
            try:
                file.write(data)
            except OSError as exc:
                raise StoreUnavailable(f"blob {file.name}: {exc.strerror or exc}") from exc
        else:
            await self._db.run(partial(file.write, data))

    async def commit(self) -> BlobRef:
        file = self._open()
        ref = await self._db.run(file.commit)
        self._done = True
        return ref

    async def abort(self) -> None:
        self._done = True
        file = self._file
        if file is None:
            return
        with trio.CancelScope(shield=True):
            try:
                await self._db.run(file.abort)
            except StoreError as exc:
                # the file stays; the sweep at the next open removes it if nothing refers to it
                log.warning("blob %s: release failed (%s); left for the next sweep", file.name, exc)

    def _pin(self, ref: BlobRef) -> None:
        with self._db.lock:
            self._db.pins.add(ref.name)

    def _release(self, ref: BlobRef) -> None:
        """Unpin; remove the file unless a row references it (worker thread)."""
        db = self._db
        with db.lock:
            db.pins.discard(ref.name)
            if db.closed:
                return  # the next open sweeps the file if nothing references it
            referenced = db.read_sync(
                lambda tx: tx.one("SELECT 1 FROM blobs WHERE name = ?", (ref.name,)) is not None
            )
            if not referenced:
                db.files.unlink(ref.name, ref.compressed)

    async def __aenter__(self) -> SQLiteBlobWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.abort()


class ThreadedReader:
    """`store.base.BlobReader` over a blocking stream opened (and read) in worker threads.

    Thread hops are the cost of a small message (issue 13): opening reads the first
    :data:`READ_AHEAD` bytes in the same worker call, and every worker read goes on until it
    has what was asked or has seen the end, so a message of up to READ_AHEAD bytes takes one
    hop (open, read, end) instead of three.
    """

    def __init__(self, db: Database, opener: Callable[[], BinaryIO]) -> None:
        self._db = db
        self._opener = opener
        self._stream: BinaryIO | None = None
        self._closed = False
        self._ahead = b""  # read in the opening hop, not yet handed out
        self._eof = False  # the stream said so: later reads need no worker call

    def _open_sync(self) -> tuple[BinaryIO, bytes, bool]:
        stream = self._opener()
        try:
            data, eof = _read_fully(stream, READ_AHEAD)
        except BaseException:
            stream.close()
            raise
        return stream, data, eof

    async def _open(self) -> BinaryIO:
        if self._closed:
            raise ValueError("blob reader: read after close")
        if self._stream is not None:
            return self._stream
        stream, self._ahead, self._eof = await self._db.run(self._open_sync)
        self._stream = stream
        return stream

    async def read(self, max_bytes: int) -> bytes:
        if max_bytes < 1:
            raise ValueError(f"read: max_bytes {max_bytes}; at least 1")
        stream = await self._open()
        if self._ahead:
            data, self._ahead = self._ahead[:max_bytes], self._ahead[max_bytes:]
            return data
        if self._eof:
            return b""
        data, self._eof = await self._db.run(partial(_read_fully, stream, max_bytes))
        return data

    async def aclose(self) -> None:
        self._closed = True
        self._ahead = b""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    async def __aenter__(self) -> ThreadedReader:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _read_fully(stream: BinaryIO, max_bytes: int) -> tuple[bytes, bool]:
    """Up to ``max_bytes`` from ``stream`` (worker thread): reads until it has them or the
    stream ends; True as the second value once the end was seen."""
    data = stream.read(max_bytes)
    if not data:
        return b"", True
    if len(data) == max_bytes:
        return data, False
    pieces = [data]
    got = len(data)
    while got < max_bytes:
        more = stream.read(max_bytes - got)
        if not more:
            return b"".join(pieces), True
        pieces.append(more)
        got += len(more)
    return b"".join(pieces), False


class SQLiteBlobs:
    """`store.base.Blobs` of the embedded store."""

    def __init__(self, db: Database, *, compress: bool) -> None:
        self._db = db
        self.compress = compress

    def writer(self, *, compress: bool | None = None) -> SQLiteBlobWriter:
        return SQLiteBlobWriter(self._db, self.compress if compress is None else compress)

    def reader(self, blob: BlobRef) -> ThreadedReader:
        files = self._db.files

        def opener() -> BinaryIO:
            try:
                return open_chain([], blob, files)
            except FileNotFoundError:
                raise BlobUnavailable(f"blob {blob.name}: its file is gone (released?)") from None

        return ThreadedReader(self._db, opener)

    async def space(self) -> int | None:
        root = self._db.files.root
        return (await self._db.run(lambda: shutil.disk_usage(root))).free
