"""The store contract: records, errors and the async `Store` protocol every backend implements.

All durable or shared state of the Fachdienste and the VZD of one appliance sits behind one
`Store` (docs/decisions.md "One store"): accounts and their tombstones, the lockout counters,
message blobs, mailboxes, the relay queue, the KAS attachments with their upload reservations,
the absence-note reply ledger, registration codes and OTPs, POP3 maildrop locks, the directory
(VZD) entries, node registrations and leases, and the message traces. The store is made of
small sub-interfaces (`store.accounts`, `store.mail`, ...), each a `typing.Protocol` below whose
docstrings state the contract; one contract test suite (tests/store/contract/) runs unchanged
against every backend. This module holds only plain data, the policy-free lockout arithmetic
and the protocols; it must never touch a file, a database or the network, and never know about
SMTP, POP3 or HTTP.

Promises every backend keeps:
- Durability: once `mail.deliver`, `relay.enqueue` or any other write has returned, it survives
  a crash or `kill -9` (so the mail server may answer `250` after `deliver`). A crash at any
  other moment leaves no partial message visible.
- Atomicity: every method is one transaction, also across the nodes sharing a backend; where a
  check and a change belong together (quota and delivery, a lock and its holder, a directory
  change and the version it was validated against) they are one step.
- Async (trio): every call may be made from the trio thread; a backend does its blocking work
  inside (the embedded one in worker threads, one thread call per operation).
- Errors: only the `StoreError` hierarchy below leaves a backend; a lost or failing database is
  `StoreUnavailable`, which callers answer as a temporary failure (451, -ERR [SYS/TEMP], 503).
- Times are aware `datetime`s (UTC); a naive one is a `ValueError`. Backends keep them as integer
  microseconds since the epoch (UTC).
- Addresses are matched case-insensitively (their lower-case form is the key) and keep the
  spelling they were created with.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Protocol

from ..observe.events import TraceEvent as TraceEvent  # re-exported: a record of the store

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
#: the node name of a single-process appliance (relay claims, maildrop holders, leases)
LOCAL_NODE = "local"


# --- errors ----------------------------------------------------------------------------------


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached or fails (database gone, disk error, lock timeout).

    Nothing was changed by the call that raised it. A temporary condition: the mail server
    answers 451, POP3 ``-ERR [SYS/TEMP]``, the REST services 503."""


class StoreInUse(StoreError):
    """`open_store` on an embedded store that another process has open (one per data dir)."""


class AccountExists(StoreError, ValueError):
    """`accounts.create` for an address that is already taken (any case)."""


class AccountNotFound(StoreError, LookupError):
    """An operation named an account (mailbox) that does not exist."""


class MessageNotFound(StoreError, LookupError):
    """A message id that does not exist (never did, or was deleted or expired)."""


class RelayEntryNotFound(StoreError, LookupError):
    """A relay queue entry id that does not exist (already done)."""


class AttachmentNotFound(StoreError, LookupError):
    """No (unexpired) KAS attachment with this id at this Fachdienst."""


class BlobUnavailable(StoreError, ValueError):
    """A `BlobRef` that is not committed, was released, or whose bytes are gone."""


class StoreCorrupted(StoreError):
    """The rows and the blob bytes disagree (a row points to a missing or short blob)."""


class RegistrationCodeUsed(StoreError, ValueError):
    """`registrations.put_code` for a referenceID that has been used for a registration."""


class DirectoryConflict(StoreError):
    """A directory change was validated against a version that is no longer current (another
    writer, maybe on another node, changed the directory meanwhile): refresh and retry."""


class QuotaExceeded(StoreError):
    """An account has no room for the bytes asked for (552 5.2.2 in SMTP, 507 in the KAS).

    ``used`` counts the mailbox, the committed KAS uploads and the live upload reservations of
    the account (digest §3.2/§3.5)."""

    def __init__(self, address: str, *, quota: int, used: int, size: int, what: str) -> None:
        super().__init__(
            f"mailbox {address} is full: {used} of {quota} bytes used (mailbox and KAS "
            f"together), the {what} has {size}"
        )
        self.address = address
        self.quota = quota
        self.used = used
        self.size = size
        self.what = what


# --- records ---------------------------------------------------------------------------------


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

    def running(self, now: datetime) -> bool:
        """True if the note is active and ``now`` lies within start..end."""
        return (
            self.active
            and self.start is not None
            and self.end is not None
            and self.start <= now <= self.end
        )


@dataclass(frozen=True)
class Account:
    """A mail account of a Fachdienst (digest §3.2, §3.3).

    `address` keeps the spelling it was registered with; lookups use its lower-cased form; its
    domain part names the Fachdienst the account belongs to. `password_hash` is never a
    password (KOM-LE-A_2164): see `store.passwords`.
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

    @property
    def domain(self) -> str:
        """The domain of the Fachdienst the account belongs to (lower case)."""
        return domain_of(self.address)


def domain_of(address: str) -> str:
    """The domain part of ``address`` in lower case."""
    return address.rpartition("@")[2].lower()


@dataclass(frozen=True)
class BlobRef:
    """A committed, immutable body (a message or a KAS attachment) on durable storage.

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
    """A message waiting in the relay queue of Fachdienst `source_domain` for the Fachdienst of
    `domain`.

    `relay_id` is random (128 bits), made at `relay.enqueue` and kept for the entry's life: the
    receiving Fachdienst remembers (relay_id, mailbox) of what it delivered, so an attempt
    repeated after a crash between its `250` and `relay.attempted` is not delivered twice
    (`mail.deliver(..., relay_id=...)`, docs/decisions.md "exactly once between Fachdienste").
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
    source_domain: str


@dataclass(frozen=True)
class RelayDepth:
    """How many entries a relay queue holds and since when the oldest waits (for metrics)."""

    entries: int
    oldest: datetime | None


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
    again at zero. Pure policy: the store applies it atomically in `logins.record_failure`.
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


@dataclass(frozen=True)
class Attachment:
    """One KAS attachment (digest §3.5): the encrypted mail data of a large mail. Addresses
    are kept in lower case; `domain` is the Fachdienst whose KAS stored it."""

    id: str
    domain: str
    uploader: str
    message_id: str
    filename: str | None
    size: int
    created_at: datetime
    expires_at: datetime
    recipients: tuple[str, ...]
    blob: BlobRef

    def is_recipient(self, address: str) -> bool:
        return address.lower() in self.recipients


@dataclass(frozen=True)
class RegistrationCode:
    """One referenceID of a Fachdienst (`domain`) for registerAccount (digest §3.3): its hashed
    initial password, the Telematik-ID it was issued for (``None``: any card may use it) and
    the address registered with it, once used."""

    domain: str
    reference_id: str
    ini_password_hash: str
    telematik_id: str | None = None
    used_by: str | None = None


class OtpCheck(StrEnum):
    """The outcomes of `registrations.take_otp`."""

    OK = "ok"
    INVALID = "invalid"
    EXPIRED = "expired"


@dataclass(frozen=True)
class DirectoryRow:
    """One VZD entry as the store keeps it: the entry's uid (its DN's RDN value), its
    Telematik-ID (unique) and the entry as JSON text (`DirectoryEntry.to_json`); what the JSON
    means is the directory's business (kim_appliance.directory), not the store's."""

    uid: str
    telematik_id: str
    data: str


@dataclass(frozen=True)
class DirectorySnapshot:
    """Every directory row as of change number `version`."""

    version: int
    rows: tuple[DirectoryRow, ...]


@dataclass(frozen=True)
class Purged:
    """What `accounts.purge` deleted with the account."""

    messages: int
    attachments: int


@dataclass(frozen=True)
class NodeInfo:
    """A node of the appliance as it last reported itself (`nodes.heartbeat`)."""

    name: str
    endpoints: Mapping[str, object]
    components: tuple[str, ...]
    seen_at: datetime


# --- the sub-interfaces ----------------------------------------------------------------------


class Accounts(Protocol):
    """The mail accounts of every Fachdienst, and the tombstones of purged ones."""

    async def create(self, account: Account, *, reference_id: str | None = None) -> None:
        """Add an account; `AccountExists` if the address is taken in any case. With
        ``reference_id`` the registration code of that referenceID at the account's domain is
        marked used by it in the same transaction (registerAccount, digest §3.3):
        `RegistrationCodeUsed` if it is unknown or was used meanwhile, and nothing is added."""

    async def get(self, address: str) -> Account | None:
        """The account of ``address`` (any case), or None."""

    async def update(self, address: str, /, **changes: object) -> Account:
        """Change fields of an account (any field but `address`) in one transaction and return
        the new record; `AccountNotFound`, or `ValueError` naming an unknown field. A new
        `data_ttl_days` applies to the messages already stored, too (digest §3.2)."""

    async def list(self, domain: str | None = None) -> builtins.list[Account]:
        """Every account (of ``domain`` only, if given), ordered by key."""

    async def purge(self, address: str, /, *, now: datetime) -> Purged:
        """Delete an account with everything it owns (KOM-LE-A_2155: all data after the
        retention): in one transaction every message of its mailbox, its KAS uploads and upload
        reservations, its lockout counters, maildrop lock and reply ledger, the account row,
        and a tombstone keeping the address and Telematik-ID (`retired_telematik_id`). Blob
        bytes go after the commit when nothing references them any more. Returns how many
        messages and attachments went; `AccountNotFound` if there is no such account."""

    async def retired_telematik_id(self, address: str) -> str | None:
        """The Telematik-ID a purged address belonged to, or None if it was never purged."""


class Logins(Protocol):
    """Failed-login counters per account key (lower-cased username) and client address
    (KOM-LE-A_2167). Keys need no account: failures for unknown names are counted alike."""

    async def state(self, account_key: str, client: str) -> LockState | None:
        """The counter of ``account_key`` from ``client`` (None: none recorded)."""

    async def record_failure(
        self, account_key: str, client: str, now: datetime, policy: LockoutPolicy
    ) -> LockState:
        """Count one failure (read, ``policy.after_failure``, write: one transaction) and return
        the new state; it is locked if this failure reached the limit."""

    async def clear(self, account_key: str, client: str | None = None) -> None:
        """Forget the failures of ``account_key`` from ``client`` (a successful login), or from
        every client (a new password: KOM-LE-A_2168 unlock)."""

    async def expire(self, now: datetime, keep: timedelta) -> int:
        """Forget counters with no failure for ``keep`` and no lock running; how many."""


class BlobWriter(Protocol):
    """Writes one body. Use it as an async context manager around the uses of the body:

    ```
    async with store.blobs.writer() as writer:
        await writer.write(chunk) ...
        blob = await writer.commit()              # durable, not yet referenced
        await store.mail.deliver(blob, [...], now, check_quota=True)
        await store.relay.enqueue(blob, ...)
    ```
    Leaving the block releases the blob: if nothing references it by then (the deliveries were
    refused, or an exception occurred), its bytes are removed. `abort` does the same outside a
    block. A body never sits whole in memory: chunks go to durable storage as they come.
    """

    @property
    def size(self) -> int:
        """Bytes written so far (logical, before compression)."""

    async def write(self, data: bytes) -> None:
        """Append ``data``; ValueError after commit or abort."""

    async def commit(self) -> BlobRef:
        """Make the body durable (it survives a crash from now on) and return its reference;
        only a reference a writer of this store committed may be delivered or queued."""

    async def abort(self) -> None:
        """Before commit: drop what was written. After: release (see above). Idempotent."""

    async def __aenter__(self) -> BlobWriter: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class BlobReader(Protocol):
    """Reads a stored body (a message: its trace prefix first) as a stream. Use it as an async
    context manager; opening fails with the owner's not-found error (`MessageNotFound`,
    `AttachmentNotFound`, `BlobUnavailable`). A body that turns out shorter or longer than its
    recorded size raises `StoreCorrupted` instead of ending quietly."""

    async def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` (at least 1) bytes; b"" at the end."""

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> BlobReader: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Blobs(Protocol):
    """Bodies, written once and read as streams; referenced by messages, relay entries and KAS
    attachments, and removed when the last reference goes."""

    def writer(self, *, compress: bool | None = None) -> BlobWriter:
        """A new writer (no I/O until its first write). ``compress``: None uses the store's
        setting; the KAS passes False (its data is encrypted, so incompressible)."""

    def reader(self, blob: BlobRef) -> BlobReader:
        """The logical bytes of a committed blob (e.g. for relaying)."""

    async def space(self) -> int | None:
        """Bytes the blob storage can still take, or None if the backend cannot tell (the KAS
        answers 507 for an upload larger than this, digest §3.5)."""


class Mail(Protocol):
    """The mailboxes: one row per (message, mailbox), the body a shared blob."""

    async def deliver(
        self,
        blob: BlobRef,
        deliveries: Sequence[tuple[str, bytes]],
        now: datetime,
        *,
        check_quota: bool,
        relay_id: str | None = None,
    ) -> builtins.list[StoredMessage]:
        """Store ``blob`` in each mailbox of ``deliveries`` with its own trace prefix, in one
        transaction; when this returns the messages are durable and visible.

        With ``check_quota`` each mailbox's account must have room for prefix + body beside its
        usage (`usage`): otherwise `QuotaExceeded` with the figures and nothing is stored. The
        check and the insert are one transaction, so two deliveries that each fit but together
        overshoot cannot both pass, also on two nodes. An unknown mailbox is `AccountNotFound`
        and stores nothing; account status is the caller's policy.

        With ``relay_id`` (a message relayed by another Fachdienst, `RelayEntry.relay_id`) a
        mailbox that already got this relay id is skipped and the others are remembered in the
        same transaction. Returns the messages stored now."""

    async def list(self, mailbox: str) -> builtins.list[StoredMessage]:
        """The messages of ``mailbox``, oldest first; `AccountNotFound`."""

    async def get(self, message_id: int) -> StoredMessage | None: ...

    def reader(self, message_id: int) -> BlobReader:
        """Trace prefix + body of a message as one stream (what POP3 `RETR` sends)."""

    async def delete(self, mailbox: str, ids: Sequence[int]) -> None:
        """Delete messages of ``mailbox`` in one transaction (POP3 `DELE` + `QUIT`); ids that
        are not (or no longer) in this mailbox are ignored."""

    async def usage(self, mailbox: str, now: datetime) -> int:
        """Bytes counted against the quota of ``mailbox`` at ``now`` (digest §3.2): its
        messages (prefix + body), its committed KAS uploads and its live upload reservations.
        `AccountNotFound`."""

    async def expire(self, now: datetime) -> int:
        """Delete every message whose `expires_at` is not after ``now`` (dataTimeToLive, §3.2)
        and forget delivered relay ids older than the backend's keep time (far longer than any
        sender retries); returns how many messages."""


class Relay(Protocol):
    """The relay queues of the Fachdienste (one per `source_domain`)."""

    async def enqueue(
        self,
        blob: BlobRef,
        *,
        sender: str,
        recipients: Sequence[RelayRecipient],
        envid: str | None,
        ret: str | None,
        source_domain: str,
        domain: str,
        not_after: datetime,
        now: datetime,
    ) -> RelayEntry:
        """Queue ``blob`` from Fachdienst ``source_domain`` for the Fachdienst of ``domain``,
        due at ``now``, with a fresh relay id. Durable on return. ValueError for no recipients
        or RFC 3461 NOTIFY/RET values that do not exist."""

    async def claim(
        self,
        node: str,
        source_domain: str,
        now: datetime,
        *,
        limit: int,
        lease: timedelta,
    ) -> list[RelayEntry]:
        """Up to ``limit`` due entries of ``source_domain`` (the most overdue first), claimed
        for ``node`` until ``now + lease``: no other claim returns them meanwhile, also on
        another node. A claim whose node died lapses after the lease (an embedded backend,
        which has one process, drops every claim when it opens)."""

    async def renew(
        self, node: str, entry_ids: Sequence[int], now: datetime, *, lease: timedelta
    ) -> builtins.list[int]:
        """Extend ``node``'s claims of ``entry_ids`` to ``now + lease`` (one transaction) and
        return the ids it still holds: a claim that lapsed and was taken by another node, or
        whose entry is gone, is not among them. A live node renews what it is attempting, so
        the lease can be short and a dead node's claims lapse soon."""

    async def release_claims(self, node: str) -> int:
        """Drop every claim of ``node`` at once and return how many: a node that starts under
        the name of a dead process of its own (same host, pid gone) need not wait for the
        lease of what that process held."""

    async def attempted(
        self,
        entry_id: int,
        *,
        next_attempt: datetime | None,
        error: str | None,
        done: Sequence[str] = (),
    ) -> None:
        """Record an attempt and drop the claim: ``next_attempt=None`` removes the entry
        (delivered or bounced); otherwise count the attempt and reschedule it with the error
        text, dropping the recipients in ``done`` (delivered or bounced by this attempt) in the
        same transaction; the entry keeps its relay id. `RelayEntryNotFound`; ValueError when
        ``done`` covers every recipient (remove the entry instead)."""

    async def pending(self, source_domain: str | None = None, *, limit: int) -> list[RelayEntry]:
        """Queued entries (of ``source_domain`` only, if given), claimed or not, the next due
        first: what an operator looks at."""

    async def depth(self, source_domain: str) -> RelayDepth:
        """How many entries wait in the queue of ``source_domain``, and the oldest's age."""


class Kas(Protocol):
    """The KAS attachments of every Fachdienst (digest §3.5) on the shared blob store, their
    download counts, and the quota reservations of uploads in flight."""

    async def reserve(self, mailbox: str, size: int, now: datetime, ttl: timedelta) -> str:
        """Check that ``mailbox`` has room for ``size`` more bytes (`mail.usage`) and reserve
        them until committed, released, or ``now + ttl`` (one transaction); returns the
        reservation id. `QuotaExceeded` (what="attachment"), `AccountNotFound`."""

    async def release(self, reservation_id: str) -> None:
        """Give a reservation back (the upload failed); unknown ids are ignored."""

    async def commit(
        self,
        blob: BlobRef,
        *,
        reservation_id: str | None,
        domain: str,
        uploader: str,
        recipients: Sequence[str],
        message_id: str,
        filename: str | None,
        expires_at: datetime,
        now: datetime,
    ) -> Attachment:
        """Store a committed blob as an attachment with a fresh UUID and drop its reservation,
        in one transaction: the bytes move from the reservation to the stored uploads without
        being counted twice or not at all."""

    async def get(self, attachment_id: str, domain: str, now: datetime) -> Attachment:
        """The attachment, unless unknown, of another Fachdienst or expired (then
        `AttachmentNotFound`; also for an id that is not a canonical UUID)."""

    def reader(self, attachment: Attachment) -> BlobReader:
        """The stored bytes (`AttachmentNotFound` when it went away meanwhile)."""

    async def delete(self, attachment_id: str, domain: str) -> None:
        """Rows first (committed), then the bytes; `AttachmentNotFound`."""

    async def expire(self, now: datetime, domain: str | None = None) -> int:
        """Delete the attachments whose expiry is not after ``now``, and forget the download
        counts and lapsed reservations older than that; returns how many attachments."""

    async def delete_uploads_of(self, uploader: str) -> int:
        """Delete every attachment ``uploader`` stored; returns how many."""

    async def uploaders(self, domain: str | None = None) -> set[str]:
        """Every address (lower case) with at least one stored attachment."""

    async def record_download(
        self, attachment_id: str, recipient: str, *, now: datetime, limit: int, window: timedelta
    ) -> bool:
        """Count one download of (recipient, attachment) unless ``limit`` were counted within
        ``window`` before ``now`` (one transaction); False means refused (429, KAS-ref
        max-attachment-requests)."""


class AutoReplies(Protocol):
    """Which senders got which absence note (RFC 3834 §2: at most one reply per sender and
    note; KOM-LE-A_2223). Durable: the "once" survives restarts and holds across nodes."""

    async def remember(
        self, mailbox: str, sender: str, note_start: datetime, now: datetime
    ) -> bool:
        """True the first time (mailbox, sender, note_start) is seen (and it is remembered, one
        insert-if-absent), False every later time."""

    async def expire(self, now: datetime) -> int:
        """Forget the rows of notes that no longer run (the account's note ended, was switched
        off or replaced by one with another start, or the account is gone); how many."""


class Registrations(Protocol):
    """The Account Manager's registration codes (per Fachdienst) and porting OTPs (digest
    §3.3). Secrets arrive hashed; the store never sees an initial password or an OTP."""

    async def put_code(self, code: RegistrationCode) -> None:
        """Issue a code, or replace an unused one; `RegistrationCodeUsed` if it was used."""

    async def get_code(self, domain: str, reference_id: str) -> RegistrationCode | None: ...

    async def code_of(self, address: str) -> RegistrationCode | None:
        """The code ``address`` was registered with (getAccount's referenceID), or None."""

    async def use_code(self, domain: str, reference_id: str, address: str) -> bool:
        """Mark an unused code as used by ``address``; False if it is unknown or was used
        meanwhile (two registrations with one code: only one wins)."""

    async def put_otp(self, address: str, digest: str, expires_at: datetime) -> None:
        """The OTP (its digest) of ``address``; it replaces every older one (digest §3.3)."""

    async def take_otp(self, address: str, digest: str, now: datetime) -> OtpCheck:
        """Check an OTP and consume it if it is valid (one-time, one transaction)."""


class Maildrops(Protocol):
    """RFC 1939 §8 maildrop locks: one POP3 session per mailbox at a time, across nodes. A
    lock is a lease: its holder renews it while the session is open, and a lock whose holder
    died lapses after its ttl (an embedded backend drops every lock when it opens)."""

    async def lock(self, mailbox: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Take the lock of ``mailbox`` for ``holder`` until ``now + ttl``; False if another
        holder's lock runs."""

    async def renew(self, mailbox: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Extend ``holder``'s lock to ``now + ttl``; False if ``holder`` holds it no more."""

    async def unlock(self, mailbox: str, holder: str) -> None:
        """Release ``holder``'s lock (nothing if another holder has it)."""

    async def release_holders(self, prefix: str) -> int:
        """Release every lock whose holder starts with ``prefix`` (taken literally, no
        wildcards) and return how many: the sessions of a process known to be dead."""


class Directory(Protocol):
    """The VZD entries with a change counter: every change increments `version`, so that
    readers on every node notice a change and reload (kim_appliance.directory.store)."""

    async def version(self) -> int:
        """The current change number (0 for a directory never written)."""

    async def snapshot(self) -> DirectorySnapshot:
        """Every row and the version they are the state of (one consistent read)."""

    async def put(self, row: DirectoryRow, *, expected_version: int) -> int:
        """Insert or replace the row of ``row.uid`` if the directory is still at
        ``expected_version``, and return the new version; `DirectoryConflict` if it is not,
        or if another uid has ``row.telematik_id``."""

    async def delete(self, uid: str, *, expected_version: int) -> int:
        """Remove the row of ``uid`` (if any) under the same condition; the new version."""


class Nodes(Protocol):
    """The nodes sharing a store: who is alive, and named leases (one holder at a time)."""

    async def heartbeat(
        self, name: str, endpoints: Mapping[str, object], components: Sequence[str], now: datetime
    ) -> None:
        """Record that node ``name`` is alive at ``now`` with these endpoints and components."""

    async def live(self, now: datetime, max_age: timedelta) -> list[NodeInfo]:
        """The nodes whose last heartbeat is at most ``max_age`` old."""

    async def leave(self, name: str) -> None:
        """Forget node ``name`` (a clean stop): it is no longer among the live nodes, and its
        listeners are no longer offered to the others. Nothing if it is unknown."""

    async def acquire(self, lease: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Take or extend lease ``lease`` for ``holder`` until ``now + ttl``; False while
        another holder's lease runs."""

    async def release(self, lease: str, holder: str) -> None: ...


class Traces(Protocol):
    """The message traces (issue 15, kim_appliance.observe.events): one event per hop of a
    message, linked by the ids it carries, kept until its `expires_at` (the mail's retention).
    Outer metadata only; the store keeps what it is given and never reads a message for it."""

    async def add(self, events: Sequence[TraceEvent]) -> None:
        """Store ``events`` in one transaction (the recorder writes them in batches)."""

    async def trace(self, message_id: str, *, limit: int) -> builtins.list[TraceEvent]:
        """The whole trace of the message with the id ``message_id`` (a key in the normal form
        of `observe.events`: a Message-ID, a relay key or a stored key), oldest first, at most
        ``limit`` events: every event carrying that id, and, transitively, every event sharing
        another id with one of them (the PVS's Message-ID finds the relay worker's events
        through the KIM Message-ID and the relay key). [] when nothing is known."""

    async def search(
        self, *, sender: str | None = None, recipient: str | None = None, limit: int
    ) -> builtins.list[TraceEvent]:
        """Events whose sender is ``sender`` and (if given) among whose recipients is
        ``recipient`` (addresses case-insensitive), newest first, at most ``limit``."""

    async def expire(self, now: datetime) -> int:
        """Forget the events whose `expires_at` is not after ``now``; how many."""


class Meta(Protocol):
    """Small named facts about the store itself (e.g. that the demo state was written)."""

    async def get(self, name: str) -> str | None: ...

    async def put_if_absent(self, name: str, value: str) -> bool:
        """Set ``name`` unless it is set; True if this call set it."""


class Store(Protocol):
    """All durable and shared state of one appliance (see the module docstring)."""

    @property
    def accounts(self) -> Accounts: ...

    @property
    def logins(self) -> Logins: ...

    @property
    def blobs(self) -> Blobs: ...

    @property
    def mail(self) -> Mail: ...

    @property
    def relay(self) -> Relay: ...

    @property
    def kas(self) -> Kas: ...

    @property
    def autoreplies(self) -> AutoReplies: ...

    @property
    def registrations(self) -> Registrations: ...

    @property
    def maildrops(self) -> Maildrops: ...

    @property
    def directory(self) -> Directory: ...

    @property
    def nodes(self) -> Nodes: ...

    @property
    def meta(self) -> Meta: ...

    @property
    def traces(self) -> Traces: ...

    @property
    def description(self) -> str:
        """Where the store is, for logs and errors (no password)."""

    async def aclose(self) -> None:
        """Release every connection; the store must not be used afterwards. Idempotent."""
