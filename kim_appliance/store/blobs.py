"""Message bodies as immutable blob files, written crash-safely, optionally zstd-compressed.

Layout under the blob root: `tmp/<name>.part` while a body is being written, then
`<2 hex>/<name>` (plain) or `<2 hex>/<name>.zst` (zstandard, level 3, with a frame checksum)
once committed. Crash-safety rules (the store's database relies on them):

1. A body is written to `tmp/`, fsync'd, renamed to its final name, and the final directory is
   fsync'd; only then does `commit` return a `BlobRef`. Only after that may a database row
   point to the blob.
2. A file in `tmp/` is never referenced; a final file no row references is an orphan of a crash
   between rename and database commit. `sweep` removes both, at open, before anything runs.
3. Deleting goes the other way round: rows first (committed), then the file.

Readers check the length: a body shorter or longer than its recorded size raises
`StoreCorrupted` instead of handing out a truncated message. This module must never decide
whether a blob is referenced (that is the database's job) and never delete a file on its own.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import zstandard

from .base import BlobRef, StoreCorrupted
from .private import DIR_MODE, create_private, private_dir

ZSTD_LEVEL = 3
READ_CHUNK = 1 << 20
TMP_DIR = "tmp"
_PART = ".part"
_ZST = ".zst"
#: the 256 shard directories ``00`` .. ``ff`` of a blob root
SHARDS = tuple(f"{i:02x}" for i in range(256))


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (POSIX: fsync the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_blob_root(root: Path) -> None:
    """Create a blob root (``tmp/`` plus the shard directories, 0700) if missing; a new root is
    made durable in its parent."""
    created = not root.exists()
    private_dir(root)
    (root / TMP_DIR).mkdir(mode=DIR_MODE, exist_ok=True)
    for shard in SHARDS:
        (root / shard).mkdir(mode=DIR_MODE, exist_ok=True)
    if created:
        fsync_dir(root)
        fsync_dir(root.parent)


class BlobFiles:
    """The blob directory of one store. Thread-safe: every file has its own random name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        make_blob_root(root)

    def path(self, name: str, compressed: bool) -> Path:
        if len(name) != 32 or not all(c in "0123456789abcdef" for c in name):
            raise ValueError(f"blob name: {name!r} is not 32 lower-case hex digits")
        return self.root / name[:2] / (name + (_ZST if compressed else ""))

    def writer(
        self,
        *,
        compress: bool,
        on_commit: Callable[[BlobRef], None],
        on_release: Callable[[BlobRef], None],
        name: str | None = None,
    ) -> FileBlobWriter:
        return FileBlobWriter(
            self, compress=compress, on_commit=on_commit, on_release=on_release, name=name
        )

    def open(self, ref: BlobRef) -> BinaryIO:
        """The logical bytes of `ref`, decompressed if needed, length-checked."""
        return open_chain([], ref, self)

    def unlink(self, name: str, compressed: bool) -> None:
        path = self.path(name, compressed)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def is_intact(self, ref: BlobRef) -> bool:
        """True if the file exists with the stored size the database recorded."""
        try:
            return self.path(ref.name, ref.compressed).stat().st_size == ref.stored_size
        except FileNotFoundError:
            return False

    def sweep(self, referenced: Container[str]) -> list[str]:
        """Remove temp files and final files whose name is not in `referenced`.

        Only safe while no writer is active (at open). Returns the removed file names.
        """
        removed: list[str] = []
        for entry in os.scandir(self.root / TMP_DIR):
            os.unlink(entry.path)
            removed.append(f"{TMP_DIR}/{entry.name}")
        for shard in SHARDS:
            for entry in os.scandir(self.root / shard):
                name = entry.name.removesuffix(_ZST)
                if name not in referenced:
                    os.unlink(entry.path)
                    removed.append(f"{shard}/{entry.name}")
        return removed


class FileBlobWriter:
    """Writes one body to `tmp/`, and on `commit` makes it durable under its final name.

    The blocking half of the embedded store's `store.base.BlobWriter` (``store.sqlite._blobs``
    wraps it for trio). Not for use by several threads at once.
    """

    def __init__(
        self,
        files: BlobFiles,
        *,
        compress: bool,
        on_commit: Callable[[BlobRef], None],
        on_release: Callable[[BlobRef], None],
        name: str | None = None,
    ) -> None:
        self._files = files
        self._compress = compress
        self._on_commit = on_commit
        self._on_release = on_release
        self.name = name or secrets.token_hex(16)
        self._tmp = files.root / TMP_DIR / (self.name + _PART)
        self._fh: BinaryIO | None = create_private(self._tmp)  # closed in commit/abort
        self._zw: zstandard.ZstdCompressionWriter | None = None
        if compress:
            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
            self._zw = cctx.stream_writer(self._fh, closefd=False)
        self._ref: BlobRef | None = None
        self._released = False
        self.size = 0

    def write(self, data: bytes) -> None:
        if self._fh is None:
            raise ValueError(f"blob {self.name}: write after commit or abort")
        if self._zw is not None:
            self._zw.write(data)
        else:
            self._fh.write(data)
        self.size += len(data)

    def commit(self) -> BlobRef:
        """fsync the temp file, rename it to its final name, fsync the directory."""
        fh = self._fh
        if fh is None:
            raise ValueError(f"blob {self.name}: commit after commit or abort")
        if self._zw is not None:
            self._zw.flush(zstandard.FLUSH_FRAME)
        fh.flush()
        os.fsync(fh.fileno())
        stored_size = fh.tell()
        fh.close()
        self._fh = None
        final = self._files.path(self.name, self._compress)
        os.rename(self._tmp, final)
        fsync_dir(final.parent)
        ref = BlobRef(self.name, self.size, stored_size, self._compress)
        self._ref = ref
        self._on_commit(ref)
        return ref

    def abort(self) -> None:
        """Before commit: remove the temp file. After commit: release the blob (see base).
        Idempotent."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()
        elif self._ref is not None and not self._released:
            self._released = True
            self._on_release(self._ref)

    def __enter__(self) -> FileBlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class _ChainReader(io.RawIOBase):
    """Reads `prefix` parts and then one blob body, checking the body's length at its end."""

    def __init__(self, prefix: Sequence[bytes], body: BinaryIO, ref: BlobRef) -> None:
        self._head = b"".join(prefix)
        self._body: BinaryIO | None = body
        self._ref = ref
        self._body_read = 0

    def readable(self) -> bool:
        return True

    def _read_body(self, n: int) -> bytes:
        body = self._body
        if body is None:
            return b""
        try:
            data = body.read(n)
        except zstandard.ZstdError as exc:
            raise StoreCorrupted(f"blob {self._ref.name}: damaged zstd data ({exc})") from None
        self._body_read += len(data)
        if self._body_read > self._ref.size:
            raise StoreCorrupted(
                f"blob {self._ref.name}: longer than its recorded {self._ref.size} bytes"
            )
        if not data:
            if self._body_read != self._ref.size:
                raise StoreCorrupted(
                    f"blob {self._ref.name}: ends after {self._body_read} of "
                    f"{self._ref.size} bytes (short file)"
                )
            body.close()
            self._body = None
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = len(buffer)
        if self._head:
            data = self._head[:n]
            self._head = self._head[n:]
        else:
            data = self._read_body(n)
            while not data and self._body is not None:
                data = self._read_body(n)
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        parts = [self._head]
        self._head = b""
        while self._body is not None:
            parts.append(self._read_body(READ_CHUNK))
        return b"".join(parts)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()


def open_chain(prefix: Sequence[bytes], ref: BlobRef, files: BlobFiles) -> BinaryIO:
    """A buffered reader over `prefix` followed by the logical bytes of `ref`.

    Raises FileNotFoundError if the blob file is gone.
    """
    raw_file = open(files.path(ref.name, ref.compressed), "rb")  # noqa: SIM115 - owned by chain
    body: BinaryIO = raw_file
    if ref.compressed:
        body = zstandard.ZstdDecompressor().stream_reader(raw_file, closefd=True)
    return io.BufferedReader(_ChainReader(prefix, body, ref), buffer_size=1 << 16)
