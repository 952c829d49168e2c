"""The storage contract of a Fachdienst: records, errors and the `MailStore` protocol.

This module is what the Fachdienst (mail server, relay queue, Account Manager) codes against;
the SQLite backend (`store.sqlite`) is the default and a PostgreSQL backend can follow with the
same shape. It holds only plain data and the protocol; it must never touch a file, a database
or the network, and never know about SMTP, POP3 or trio.

The promise every backend keeps: once `deliver` or `enqueue_relay` has returned, the message
survives a crash or `kill -9` (so the mail server may answer `250`), and a crash at any other
moment leaves no partial message visible. Every method is one atomic step (one transaction), so
that a backend shared by several nodes gives the same answers as the embedded one. The API is
synchronous and thread-safe; trio code calls it through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import BinaryIO, Protocol

# digest §3.2 / §3.3: dataTimeToLive is 10..365 days, default 90.
MIN_DATA_TTL_DAYS = 10
MAX_DATA_TTL_DAYS = 365
DEFAULT_DATA_TTL_DAYS = 90
# digest §3.2: quota per account in bytes, -1 = unlimited.
UNLIMITED = -1
# KOM-LE-A_2149/2150: a deregistered account neither sends nor receives.
ACCOUNT_STATUSES = frozenset({"active", "deregistered"})
# digest §3.3: kimVersion is one of these (at most four characters).
KIM_VERSIONS = frozenset({"1.0", "1.5", "1.5+"})


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class AccountExists(StoreError, ValueError):
    """`create_account` for an address that is already taken (any case)."""


class AccountNotFound(StoreError, LookupError):
    """An operation named an account (mailbox) that does not exist."""


class MessageNotFound(StoreError, LookupError):
    """A message id that does not exist (never did, or was deleted or expired)."""


class RelayEntryNotFound(StoreError, LookupError):
    """A relay queue entry id that does not exist (already done)."""


class BlobUnavailable(StoreError, ValueError):
    """A `BlobRef` that is not committed, was released, or whose file is gone."""


class StoreCorrupted(StoreError):
    """The database and the blob files disagree (a row points to a missing or short blob)."""


@dataclass(frozen=True)
class OutOfOffice:
    """An absence note (digest §3.3 OutOfOfficeNotification; KOM-LE-A_2223/2224)."""

    active: bool = False
    start: datetime | None = None
    end: datetime | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        if self.message is not None and len(self.message) > 2048:
            raise ValueError("out_of_office.message: longer than 2048 characters (digest §3.3)")
        if self.active and (self.start is None or self.end is None or self.message is None):
            raise ValueError("out_of_office: active=true needs start, end and message (§3.3)")


@dataclass(frozen=True)
class Account:
    """A mail account of the Fachdienst (digest §3.2, §3.3).

    `address` keeps the spelling it was registered with; lookups use its lower-cased form.
    `password_hash` is never a password (KOM-LE-A_2164): see `store.passwords`.
    """

    address: str
    password_hash: str
    telematik_id: str
    display_name: str
    status: str = "active"
    quota_bytes: int = UNLIMITED
    data_ttl_days: int = DEFAULT_DATA_TTL_DAYS
    kim_version: str = "1.5+"
    dereg_date: datetime | None = None
    no_vzd_mail_entry: bool = False
    out_of_office: OutOfOffice = field(default_factory=OutOfOffice)

    def __post_init__(self) -> None:
        if "@" not in self.address or self.address != self.address.strip():
            raise ValueError(f"address: {self.address!r} is not a mail address")
        if self.status not in ACCOUNT_STATUSES:
            raise ValueError(
                f"status: {self.status!r} is not one of {sorted(ACCOUNT_STATUSES)} "
                "(KOM-LE-A_2149/2150)"
            )
        if not MIN_DATA_TTL_DAYS <= self.data_ttl_days <= MAX_DATA_TTL_DAYS:
            raise ValueError(
                f"data_ttl_days: {self.data_ttl_days} is outside "
                f"{MIN_DATA_TTL_DAYS}..{MAX_DATA_TTL_DAYS} (dataTimeToLive, digest §3.2)"
            )
        if self.quota_bytes < UNLIMITED:
            raise ValueError(f"quota_bytes: {self.quota_bytes} is below -1 (= unlimited)")
        if self.kim_version not in KIM_VERSIONS:
            raise ValueError(
                f"kim_version: {self.kim_version!r} is not one of {sorted(KIM_VERSIONS)}"
            )

    @property
    def key(self) -> str:
        """The lookup key: the address in lower case."""
        return self.address.lower()


@dataclass(frozen=True)
class BlobRef:
    """A committed, immutable message body on durable storage.

    `size` is the logical (uncompressed) length; `stored_size` what the backend keeps.
    """

    name: str
    size: int
    stored_size: int
    compressed: bool


@dataclass(frozen=True)
class StoredMessage:
    """One message in one mailbox. `uid` is the POP3 UIDL (KOM-LE-A_2151): never reused.

    `size` is what `RETR` sends: the trace prefix plus the body.
    """

    id: int
    uid: str
    mailbox: str
    size: int
    received_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class RelayRecipient:
    """One `RCPT TO` of a relayed message with its DSN parameters (RFC 3461; digest §3.2)."""

    address: str
    notify: frozenset[str] | None = None
    orcpt: str | None = None


@dataclass(frozen=True)
class RelayEntry:
    """A message waiting in the relay queue for another Fachdienst (`domain`).

    `relay_id` is random (128 bits), made at `enqueue_relay` and kept for the entry's life: the
    receiving Fachdienst remembers (relay_id, mailbox) of what it delivered, so an attempt
    repeated after a crash between its `250` and `relay_attempted` is not delivered twice
    (`deliver(..., relay_id=...)`, docs/decisions.md "exactly once between Fachdienste").
    """

    id: int
    blob: BlobRef
    sender: str
    recipients: tuple[RelayRecipient, ...]
    envid: str | None
    ret: str | None
    domain: str
    attempts: int
    next_attempt: datetime
    not_after: datetime
    last_error: str | None
    relay_id: str


@dataclass(frozen=True)
class LockState:
    """Failed logins of one account from one client address (KOM-LE-A_2167).

    `failures` counts the failures in a row since the last lock, success or quiet period;
    `locks` how often this client has been locked out (the backoff level); `locked_until` the
    end of the current or last lock; `last_failure` when the last failure was recorded.
    """

    failures: int = 0
    locks: int = 0
    locked_until: datetime | None = None
    last_failure: datetime | None = None

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and self.locked_until > now


@dataclass(frozen=True)
class LockoutPolicy:
    """When failed logins lock an account for one client address, and for how long.

    After `max_failures` failures in a row from one client the account is locked for that
    client for `first_lockout`; every further lock of the same client doubles the time, up to
    `max_lockout`. A client with no failure for `forget_after` (and no lock running) starts
    again at zero. Pure policy: the store applies it atomically in `record_login_failure`.
    """

    max_failures: int = 5
    first_lockout: timedelta = timedelta(seconds=900)
    max_lockout: timedelta = timedelta(hours=4)
    forget_after: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError(f"max_failures: {self.max_failures}; at least 1")
        if not timedelta(0) < self.first_lockout <= self.max_lockout:
            raise ValueError(
                f"lockout: first {self.first_lockout} must be positive and at most the "
                f"maximum {self.max_lockout}"
            )

    def lockout(self, locks_before: int) -> timedelta:
        """The length of a lock after ``locks_before`` earlier locks: doubling, capped."""
        doubled = self.first_lockout.total_seconds() * 2.0 ** min(locks_before, 64)
        return timedelta(seconds=min(doubled, self.max_lockout.total_seconds()))

    def after_failure(self, state: LockState | None, now: datetime) -> LockState:
        """The state after one more failure at ``now``. A failure while a lock runs changes
        nothing (the caller refuses without checking; counting it would only extend the lock
        an attacker chose)."""
        if state is not None and state.locked(now):
            return state
        if state is None or (
            state.last_failure is not None and now - state.last_failure >= self.forget_after
        ):
            state = LockState()
        failures = state.failures + 1
        if failures >= self.max_failures:
            return LockState(0, state.locks + 1, now + self.lockout(state.locks), now)
        return LockState(failures, state.locks, state.locked_until, now)


class BlobWriter(Protocol):
    """Writes one body. Use it as a context manager around the deliveries of that body:

    ```
    with store.new_blob() as writer:
        writer.write(chunk) ...
        blob = writer.commit()          # durable, not yet visible
        store.deliver(blob, [...])      # visible
        store.enqueue_relay(blob, ...)
    ```
    Leaving the block releases the blob: if nothing references it by then (the deliveries
    were refused, or an exception occurred), its file is removed.
    """

    size: int

    def write(self, data: bytes) -> None: ...
    def commit(self) -> BlobRef: ...
    def abort(self) -> None: ...
    def __enter__(self) -> BlobWriter: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class MailStore(Protocol):
    """Durable storage of one Fachdienst: accounts, mailboxes and the relay queue."""

    # accounts
    def create_account(self, account: Account) -> None: ...
    def get_account(self, address: str) -> Account | None: ...
    def update_account(self, address: str, /, **changes: object) -> Account: ...
    def list_accounts(self) -> list[Account]: ...
    def purge_account(self, address: str, /, *, now: datetime) -> int: ...
    def retired_telematik_id(self, address: str) -> str | None: ...

    # delivery
    def new_blob(self) -> BlobWriter: ...
    def deliver(
        self,
        blob: BlobRef,
        deliveries: Sequence[tuple[str, bytes]],
        *,
        now: datetime | None = None,
        relay_id: str | None = None,
    ) -> list[StoredMessage]: ...
    def list_messages(self, mailbox: str) -> list[StoredMessage]: ...
    def get_message(self, message_id: int) -> StoredMessage | None: ...
    def open_message(self, message_id: int) -> BinaryIO: ...
    def delete_messages(self, mailbox: str, ids: Sequence[int]) -> None: ...
    def mailbox_usage(self, mailbox: str) -> int: ...
    def expire(self, now: datetime) -> int: ...

    # relay queue
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
    ) -> RelayEntry: ...
    def due_relays(self, now: datetime, limit: int = 100) -> list[RelayEntry]: ...
    def relay_attempted(
        self,
        entry_id: int,
        *,
        next_attempt: datetime | None,
        error: str | None,
        done: Sequence[str] = (),
    ) -> None: ...
    def open_blob(self, blob: BlobRef) -> BinaryIO: ...

    # failed logins (KOM-LE-A_2167), per account key (lower-cased username) and client address
    def login_state(self, account_key: str, client: str) -> LockState | None: ...
    def record_login_failure(
        self, account_key: str, client: str, now: datetime, policy: LockoutPolicy
    ) -> LockState: ...
    def clear_login_failures(self, account_key: str, client: str | None = None) -> None: ...

    def close(self) -> None: ...
