"""All durable and shared state of the appliance: the `Store` and how to open one.

Re-exports the contract (`store.base`), the password hashing (`store.passwords`) and
:func:`open_store`, which picks the backend from a URL: the embedded SQLite store in the data
dir (the default; ``None``, ``""`` or ``"sqlite"``) or PostgreSQL (``postgresql://...``, the
cluster backend). Nothing here may run I/O at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from .base import (
    LOCAL_NODE,
    Account,
    AccountExists,
    AccountNotFound,
    Attachment,
    AttachmentNotFound,
    BlobReader,
    BlobRef,
    BlobUnavailable,
    BlobWriter,
    DirectoryConflict,
    DirectoryRow,
    DirectorySnapshot,
    LockoutPolicy,
    LockState,
    MessageNotFound,
    OtpCheck,
    OutOfOffice,
    Purged,
    QuotaExceeded,
    RegistrationCode,
    RegistrationCodeUsed,
    RelayDepth,
    RelayEntry,
    RelayEntryNotFound,
    RelayRecipient,
    Store,
    StoreCorrupted,
    StoredMessage,
    StoreError,
    StoreInUse,
    StoreUnavailable,
    domain_of,
)
from .passwords import dummy_verify, hash_password, verify_password

#: the URLs that name the embedded store
EMBEDDED = frozenset({"", "sqlite", "sqlite:", "embedded"})


@asynccontextmanager
async def open_store(
    url: str | None, data_dir: Path, *, compress: bool = False
) -> AsyncIterator[Store]:
    """The store named by ``url`` for the appliance of ``data_dir``, closed when the block ends.

    ``None`` (or ``"sqlite"``) is the embedded store in ``data_dir/store`` (``compress``: new
    message bodies are zstd-compressed). Raises `StoreInUse` when another process has the
    embedded store open, `StoreError` for a URL no backend understands."""
    if url is None or url.strip().lower() in EMBEDDED:
        from .sqlite import open_sqlite_store

        async with open_sqlite_store(Path(data_dir), compress=compress) as store:
            yield store
        return
    scheme = url.partition(":")[0].lower()
    if scheme in ("postgresql", "postgres"):
        raise StoreError(
            "store: the PostgreSQL backend is not part of this version yet; use the embedded "
            'store (no --store, or [store] url = "sqlite")'
        )
    raise StoreError(f"store: {scheme!r} is not a store URL; use sqlite or postgresql://...")


__all__ = [
    "EMBEDDED",
    "LOCAL_NODE",
    "Account",
    "AccountExists",
    "AccountNotFound",
    "Attachment",
    "AttachmentNotFound",
    "BlobReader",
    "BlobRef",
    "BlobUnavailable",
    "BlobWriter",
    "DirectoryConflict",
    "DirectoryRow",
    "DirectorySnapshot",
    "LockState",
    "LockoutPolicy",
    "MessageNotFound",
    "OtpCheck",
    "OutOfOffice",
    "Purged",
    "QuotaExceeded",
    "RegistrationCode",
    "RegistrationCodeUsed",
    "RelayDepth",
    "RelayEntry",
    "RelayEntryNotFound",
    "RelayRecipient",
    "Store",
    "StoreCorrupted",
    "StoreError",
    "StoreInUse",
    "StoreUnavailable",
    "StoredMessage",
    "domain_of",
    "dummy_verify",
    "hash_password",
    "open_store",
    "verify_password",
]
