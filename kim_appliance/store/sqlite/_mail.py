"""The embedded store's mailboxes and relay queues (see `store.base` and `store.sqlite`).

Crash-safety rules 1 and 2 of the package docstring are kept here: a row that references a blob
is inserted only once the blob's file is durable (`claim_blob` checks that an open writer of
this store committed it), and rows go before files (`Tx.collect_garbage`, files removed after
the commit). This module must never read or write a blob's bytes itself except through
`store.blobs`.
"""

from __future__ import annotations

import builtins
import secrets
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import BinaryIO

from ..base import (
    UNLIMITED,
    BlobRef,
    BlobUnavailable,
    MessageNotFound,
    QuotaExceeded,
    RelayDepth,
    RelayEntry,
    RelayEntryNotFound,
    RelayRecipient,
    StoreCorrupted,
    StoredMessage,
)
from ..blobs import open_chain
from ._accounts import require_account
from ._blobs import ThreadedReader
from ._db import US_PER_DAY, Database, Tx, blob_of, dt, span_us, us

#: a receiving Fachdienst remembers a delivered relay id this long: far longer than any sender
#: keeps retrying (relay_give_up_seconds, default 2 days), so a repeat is always recognised
RELAY_ID_KEEP = timedelta(days=14)
# RFC 3461 NOTIFY values and RET values.
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY", "NEVER"})
_RET = frozenset({"HDRS", "FULL"})


def claim_blob(db: Database, tx: Tx, ref: BlobRef) -> None:
    """Make sure a blob row exists for ``ref`` (crash-safety rule 1): either one does already,
    or an open writer of this store committed it and its file is intact."""
    found = tx.one("SELECT size, compressed FROM blobs WHERE name = ?", (ref.name,))
    if found is not None:
        if found["size"] != ref.size or bool(found["compressed"]) != ref.compressed:
            raise BlobUnavailable(f"blob {ref.name}: does not match the stored blob")
        return
    if ref.name not in db.pins:
        raise BlobUnavailable(
            f"blob {ref.name}: not committed by an open writer of this store (released, "
            "or from another store)"
        )
    if not db.files.is_intact(ref):
        raise BlobUnavailable(f"blob {ref.name}: file missing or not {ref.stored_size} bytes")
    tx.execute(
        "INSERT INTO blobs (name, size, stored_size, compressed) VALUES (?, ?, ?, ?)",
        (ref.name, ref.size, ref.stored_size, int(ref.compressed)),
    )


def usage_of(tx: Tx, key: str, now_us: int) -> int:
    """Bytes counted against the quota of mailbox ``key`` (digest §3.2): messages, committed
    KAS uploads and live upload reservations."""
    row = tx.one(
        "SELECT (SELECT COALESCE(SUM(size), 0) FROM messages WHERE mailbox = ?) "
        "+ (SELECT COALESCE(SUM(size), 0) FROM kas_attachments WHERE uploader = ?) "
        "+ (SELECT COALESCE(SUM(size), 0) FROM kas_reservations "
        "   WHERE mailbox = ? AND expires_at > ?)",
        (key, key, key, now_us),
    )
    assert row is not None
    return int(row[0])


def check_room(tx: Tx, address: str, size: int, now_us: int, what: str) -> None:
    """`QuotaExceeded` unless the account of ``address`` has room for ``size`` more bytes."""
    account = require_account(tx, address)
    if account.quota_bytes == UNLIMITED:
        return
    used = usage_of(tx, account.key, now_us)
    if used + size > account.quota_bytes:
        raise QuotaExceeded(
            account.address, quota=account.quota_bytes, used=used, size=size, what=what
        )


class SQLiteMail:
    """`store.base.Mail` of the embedded store."""

    def __init__(self, db: Database, instance: str) -> None:
        self._db = db
        self._instance = instance

    def _message(self, row: sqlite3.Row) -> StoredMessage:
        return StoredMessage(
            id=row["id"],
            uid=row["uid"] or f"{row['id']}.{self._instance}",
            mailbox=row["mailbox"],
            size=row["size"],
            received_at=dt(row["received_at"]),
            expires_at=dt(row["expires_at"]),
        )

    async def deliver(
        self,
        blob: BlobRef,
        deliveries: Sequence[tuple[str, bytes]],
        now: datetime,
        *,
        check_quota: bool,
        relay_id: str | None = None,
    ) -> builtins.list[StoredMessage]:
        if not deliveries:
            raise ValueError("deliveries: empty; give at least one (mailbox, trace_prefix)")
        keys = [mailbox.lower() for mailbox, _ in deliveries]
        if len(set(keys)) != len(keys):
            raise ValueError(f"deliveries: a mailbox appears twice in {keys}")
        received = us(now, "now")
        db = self._db

        def op(tx: Tx) -> builtins.list[StoredMessage]:
            claim_blob(db, tx, blob)
            stored: builtins.list[StoredMessage] = []
            for mailbox, prefix in deliveries:
                account = require_account(tx, mailbox)
                if relay_id is not None:
                    seen = tx.one(
                        "INSERT INTO relay_deliveries (relay_id, mailbox, delivered_at) "
                        "VALUES (?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                        (relay_id, account.key, received),
                    )
                    if seen is None:
                        continue  # delivered by an earlier attempt of the same relay entry
                size = len(prefix) + blob.size
                if check_quota:
                    check_room(tx, account.address, size, received, "message")
                row = tx.one(
                    "INSERT INTO messages (mailbox, blob, prefix, size, received_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
                    (
                        account.key,
                        blob.name,
                        bytes(prefix),
                        size,
                        received,
                        received + account.data_ttl_days * US_PER_DAY,
                    ),
                )
                assert row is not None
                stored.append(self._message(row))
            if not stored:
                # every mailbox had it already: the blob row claimed above must not outlive
                # this transaction unreferenced (rule 2); an earlier delivery has its own blob
                tx.collect_garbage({blob.name})
            return stored

        return await db.write(op)

    async def list(self, mailbox: str) -> builtins.list[StoredMessage]:
        def op(tx: Tx) -> builtins.list[StoredMessage]:
            key = require_account(tx, mailbox).key
            rows = tx.execute("SELECT * FROM messages WHERE mailbox = ? ORDER BY id", (key,))
            return [self._message(row) for row in rows]

        return await self._db.read(op)

    async def get(self, message_id: int) -> StoredMessage | None:
        def op(tx: Tx) -> StoredMessage | None:
            row = tx.one("SELECT * FROM messages WHERE id = ?", (message_id,))
            return None if row is None else self._message(row)

        return await self._db.read(op)

    def reader(self, message_id: int) -> ThreadedReader:
        db = self._db
        query = (
            "SELECT m.prefix, b.* FROM messages m JOIN blobs b ON b.name = m.blob WHERE m.id = ?"
        )

        def opener() -> BinaryIO:
            row = db.read_sync(lambda tx: tx.one(query, (message_id,)))
            if row is None:
                raise MessageNotFound(f"message {message_id}: no such message")
            try:
                return open_chain([row["prefix"]], blob_of(row), db.files)
            except FileNotFoundError:
                gone = db.read_sync(
                    lambda tx: tx.one("SELECT 1 FROM messages WHERE id = ?", (message_id,))
                )
                if gone is None:
                    raise MessageNotFound(f"message {message_id}: deleted meanwhile") from None
                raise StoreCorrupted(
                    f"message {message_id}: blob {row['name']} is missing on disk"
                ) from None

        return ThreadedReader(db, opener)

    async def delete(self, mailbox: str, ids: Sequence[int]) -> None:
        key = mailbox.lower()

        def op(tx: Tx) -> None:
            names: set[str] = set()
            for message_id in ids:
                row = tx.one(
                    "DELETE FROM messages WHERE id = ? AND mailbox = ? RETURNING blob",
                    (message_id, key),
                )
                if row is not None:
                    names.add(row[0])
            tx.collect_garbage(names)

        await self._db.write(op)

    async def usage(self, mailbox: str, now: datetime) -> int:
        when = us(now, "now")

        def op(tx: Tx) -> int:
            return usage_of(tx, require_account(tx, mailbox).key, when)

        return await self._db.read(op)

    async def expire(self, now: datetime) -> int:
        limit = us(now, "now")

        def op(tx: Tx) -> int:
            rows = tx.execute(
                "DELETE FROM messages WHERE expires_at <= ? RETURNING blob", (limit,)
            ).fetchall()
            tx.collect_garbage({row[0] for row in rows})
            tx.execute(
                "DELETE FROM relay_deliveries WHERE delivered_at < ?",
                (limit - span_us(RELAY_ID_KEEP),),
            )
            return len(rows)

        return await self._db.write(op)


_ENTRY_QUERY = (
    "SELECT e.*, b.name AS b_name, b.size AS b_size, b.stored_size AS b_stored_size, "
    "b.compressed AS b_compressed FROM relay_entries e JOIN blobs b ON b.name = e.blob "
)


def _entries(tx: Tx, rows: Sequence[sqlite3.Row]) -> builtins.list[RelayEntry]:
    entries: builtins.list[RelayEntry] = []
    for row in rows:
        recipients = tuple(
            RelayRecipient(
                r["address"],
                None if r["notify"] is None else frozenset(r["notify"].split(",")) - {""},
                r["orcpt"],
            )
            for r in tx.execute(
                "SELECT * FROM relay_recipients WHERE entry_id = ? ORDER BY position",
                (row["id"],),
            )
        )
        entries.append(
            RelayEntry(
                id=row["id"],
                blob=blob_of(row, "b_"),
                sender=row["sender"],
                recipients=recipients,
                envid=row["envid"],
                ret=row["ret"],
                domain=row["domain"],
                attempts=row["attempts"],
                next_attempt=dt(row["next_attempt"]),
                not_after=dt(row["not_after"]),
                last_error=row["last_error"],
                relay_id=row["relay_id"],
                source_domain=row["source_domain"],
            )
        )
    return entries


def insert_relay_entry(
    db: Database,
    tx: Tx,
    blob: BlobRef,
    *,
    sender: str,
    recipients: Sequence[RelayRecipient],
    envid: str | None,
    ret: str | None,
    source_domain: str,
    domain: str,
    created: int,
    deadline: int,
    relay_id: str,
) -> int:
    claim_blob(db, tx, blob)
    row = tx.one(
        "INSERT INTO relay_entries (blob, sender, envid, ret, source_domain, domain, attempts, "
        "next_attempt, not_after, last_error, created_at, relay_id) "
        "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, NULL, ?, ?) RETURNING id",
        (
            blob.name,
            sender,
            envid,
            ret,
            source_domain.lower(),
            domain.lower(),
            created,
            deadline,
            created,
            relay_id,
        ),
    )
    assert row is not None
    entry_id = int(row[0])
    tx.conn.executemany(
        "INSERT INTO relay_recipients (entry_id, position, address, notify, orcpt) "
        "VALUES (?, ?, ?, ?, ?)",
        [
            (
                entry_id,
                i,
                r.address,
                None if r.notify is None else ",".join(sorted(r.notify)),
                r.orcpt,
            )
            for i, r in enumerate(recipients)
        ],
    )
    return entry_id


class SQLiteRelay:
    """`store.base.Relay` of the embedded store."""

    def __init__(self, db: Database) -> None:
        self._db = db

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
        if not recipients:
            raise ValueError("recipients: empty; a relay entry needs at least one RCPT")
        for r in recipients:
            if r.notify is not None and not r.notify <= _NOTIFY:
                raise ValueError(
                    f"recipients: NOTIFY {sorted(r.notify)} of {r.address} is not a subset of "
                    f"{sorted(_NOTIFY)} (RFC 3461)"
                )
        if ret is not None and ret not in _RET:
            raise ValueError(f"ret: {ret!r} is not HDRS or FULL (RFC 3461)")
        created = us(now, "now")
        deadline = us(not_after, "not_after")
        relay_id = secrets.token_hex(16)
        db = self._db

        def op(tx: Tx) -> int:
            return insert_relay_entry(
                db,
                tx,
                blob,
                sender=sender,
                recipients=recipients,
                envid=envid,
                ret=ret,
                source_domain=source_domain,
                domain=domain,
                created=created,
                deadline=deadline,
                relay_id=relay_id,
            )

        entry_id = await db.write(op)
        return RelayEntry(
            id=entry_id,
            blob=blob,
            sender=sender,
            recipients=tuple(recipients),
            envid=envid,
            ret=ret,
            domain=domain.lower(),
            attempts=0,
            next_attempt=dt(created),
            not_after=dt(deadline),
            last_error=None,
            relay_id=relay_id,
            source_domain=source_domain.lower(),
        )

    async def claim(
        self,
        node: str,
        source_domain: str,
        now: datetime,
        *,
        limit: int,
        lease: timedelta,
    ) -> builtins.list[RelayEntry]:
        when = us(now, "now")
        until = when + span_us(lease)

        def op(tx: Tx) -> builtins.list[RelayEntry]:
            rows = tx.execute(
                _ENTRY_QUERY + "WHERE e.source_domain = ? AND e.next_attempt <= ? "
                "AND (e.claim_until IS NULL OR e.claim_until <= ?) "
                "ORDER BY e.next_attempt, e.id LIMIT ?",
                (source_domain.lower(), when, when, limit),
            ).fetchall()
            tx.conn.executemany(
                "UPDATE relay_entries SET claimed_by = ?, claim_until = ? WHERE id = ?",
                [(node, until, row["id"]) for row in rows],
            )
            return _entries(tx, rows)

        return await self._db.write(op)

    async def renew(
        self, node: str, entry_ids: Sequence[int], now: datetime, *, lease: timedelta
    ) -> builtins.list[int]:
        when = us(now, "now")
        until = when + span_us(lease)
        ids = [int(i) for i in entry_ids]

        def op(tx: Tx) -> builtins.list[int]:
            held = []
            for entry_id in ids:
                # a lapsed claim is still ours unless another node took the entry meanwhile
                cur = tx.execute(
                    "UPDATE relay_entries SET claim_until = ? WHERE id = ? AND claimed_by = ?",
                    (until, entry_id, node),
                )
                if cur.rowcount == 1:
                    held.append(entry_id)
            return held

        if not ids:
            return []
        return await self._db.write(op)

    async def release_claims(self, node: str) -> int:
        def op(tx: Tx) -> int:
            cur = tx.execute(
                "UPDATE relay_entries SET claimed_by = NULL, claim_until = NULL "
                "WHERE claimed_by = ?",
                (node,),
            )
            return int(cur.rowcount)

        return await self._db.write(op)

    async def attempted(
        self,
        entry_id: int,
        *,
        next_attempt: datetime | None,
        error: str | None,
        done: Sequence[str] = (),
    ) -> None:
        when = None if next_attempt is None else us(next_attempt, "next_attempt")

        def op(tx: Tx) -> None:
            if when is None:
                row = tx.one("DELETE FROM relay_entries WHERE id = ? RETURNING blob", (entry_id,))
                if row is None:
                    raise RelayEntryNotFound(f"relay entry {entry_id}: no such entry")
                tx.collect_garbage({row[0]})
                return
            cur = tx.execute(
                "UPDATE relay_entries SET attempts = attempts + 1, next_attempt = ?, "
                "last_error = ?, claimed_by = NULL, claim_until = NULL WHERE id = ?",
                (when, error, entry_id),
            )
            if cur.rowcount == 0:
                raise RelayEntryNotFound(f"relay entry {entry_id}: no such entry")
            left = {
                row[0].lower()
                for row in tx.execute(
                    "SELECT address FROM relay_recipients WHERE entry_id = ?", (entry_id,)
                )
            }
            gone = {address.lower() for address in done}
            if left and left <= gone:
                raise ValueError(
                    f"relay entry {entry_id}: every recipient is done; remove the entry "
                    "(next_attempt=None) instead of rescheduling it"
                )
            tx.conn.executemany(
                "DELETE FROM relay_recipients WHERE entry_id = ? AND lower(address) = ?",
                [(entry_id, address) for address in gone],
            )

        await self._db.write(op)

    async def pending(
        self, source_domain: str | None = None, *, limit: int
    ) -> builtins.list[RelayEntry]:
        def op(tx: Tx) -> builtins.list[RelayEntry]:
            if source_domain is None:
                rows = tx.execute(
                    _ENTRY_QUERY + "ORDER BY e.next_attempt, e.id LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = tx.execute(
                    _ENTRY_QUERY + "WHERE e.source_domain = ? ORDER BY e.next_attempt, e.id "
                    "LIMIT ?",
                    (source_domain.lower(), limit),
                ).fetchall()
            return _entries(tx, rows)

        return await self._db.read(op)

    async def depth(self, source_domain: str) -> RelayDepth:
        def op(tx: Tx) -> RelayDepth:
            row = tx.one(
                "SELECT COUNT(*), MIN(created_at) FROM relay_entries WHERE source_domain = ?",
                (source_domain.lower(),),
            )
            assert row is not None
            return RelayDepth(int(row[0]), None if row[1] is None else dt(row[1]))

        return await self._db.read(op)
