"""Durable storage of a Fachdienst: accounts, mailboxes, message blobs and the relay queue.

Re-exports the contract (`store.base`), the password hashing (`store.passwords`) and the
default SQLite backend (`open_store`). Nothing here may run I/O at import time.
"""

from .base import (
    Account,
    AccountExists,
    AccountNotFound,
    BlobRef,
    BlobUnavailable,
    BlobWriter,
    LockoutPolicy,
    LockState,
    MailStore,
    MessageNotFound,
    OutOfOffice,
    RelayEntry,
    RelayEntryNotFound,
    RelayRecipient,
    StoreCorrupted,
    StoredMessage,
    StoreError,
)
from .passwords import dummy_verify, hash_password, verify_password
from .sqlite import SQLiteMailStore, open_store

__all__ = [
    "Account",
    "AccountExists",
    "AccountNotFound",
    "BlobRef",
    "BlobUnavailable",
    "BlobWriter",
    "LockState",
    "LockoutPolicy",
    "MailStore",
    "MessageNotFound",
    "OutOfOffice",
    "RelayEntry",
    "RelayEntryNotFound",
    "RelayRecipient",
    "SQLiteMailStore",
    "StoreCorrupted",
    "StoreError",
    "StoredMessage",
    "dummy_verify",
    "hash_password",
    "open_store",
    "verify_password",
]
