"""All durable and shared state of the appliance: the `Store` and how to open one.

Re-exports the contract (`store.base`), the password hashing (`store.passwords`) and
:func:`open_store`, which picks the backend from a URL: the embedded SQLite store in the data
dir (the default; ``None``, ``""`` or ``"sqlite"``) or PostgreSQL (``postgresql://...``, the
cluster backend; its driver is imported only then). :func:`mask_url` is how a store URL may
appear in logs and errors. Nothing here may run I/O at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
    NodeInfo,
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
    TraceEvent,
    Traces,
    domain_of,
)
from .passwords import dummy_verify, hash_password, verify_password

#: the URLs that name the embedded store
EMBEDDED = frozenset({"", "sqlite", "sqlite:", "embedded"})
#: query parameters of a store URL that are secrets (libpq's names)
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


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
    check_url(url)
    # imported here: asyncpg and trio-asyncio cost the embedded default nothing
    from .postgres import open_postgres_store

    async with open_postgres_store(url) as pg_store:
        yield pg_store


#: URL schemes of the PostgreSQL backend
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})


def check_url(url: str | None) -> None:
    """`StoreError` (naming the URL masked) unless ``url`` names the embedded store or looks
    like ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE``; connects to nothing."""
    if url is None or url.strip().lower() in EMBEDDED:
        return
    where = mask_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise StoreError(f"store {where}: not a store URL ({exc})") from None
    if parts.scheme.lower() not in POSTGRES_SCHEMES:
        raise StoreError(
            f"store {where}: not a store URL; use sqlite (the embedded store) or "
            "postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE"
        )
    if not parts.hostname or not parts.path.strip("/") or (port is not None and port < 1):
        raise StoreError(
            f"store {where}: expected postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE "
            "(host and database are required)"
        )


def mask_url(url: str | None) -> str:
    """A store URL fit for logs and errors: a password in it (``user:PASSWORD@`` or
    ``?password=``) replaced by ``***``; the embedded store is ``embedded``."""
    if url is None or url.strip().lower() in EMBEDDED:
        return "embedded"
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user, sep, _password = userinfo.partition(":")
            netloc = f"{user}:***@{hostinfo}" if sep else f"{user}@{hostinfo}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*"
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return url.partition("://")[0] + "://***"


__all__ = [
    "EMBEDDED",
    "LOCAL_NODE",
    "POSTGRES_SCHEMES",
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
    "NodeInfo",
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
    "TraceEvent",
    "Traces",
    "check_url",
    "domain_of",
    "dummy_verify",
    "hash_password",
    "mask_url",
    "open_store",
    "verify_password",
]
