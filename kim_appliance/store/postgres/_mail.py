"""The PostgreSQL store's mailboxes and relay queues (see `store.base` and ``_blobs``).

Across nodes: a delivery with a quota check locks the rows of its accounts with ``SELECT ...
FOR UPDATE`` in key order, then counts the usage and inserts, in one transaction, so two
deliveries (on two nodes) into one mailbox are checked one after the other and never overshoot
the quota together; a KAS reservation locks the same row. Relay claims take due entries with
``FOR UPDATE SKIP LOCKED`` and write the claim as a lease (``claimed_by``, ``claim_until``): two
nodes claiming at once get disjoint entries, and a dead node's claims lapse with their lease.
A row that references a blob is inserted only after `claim_blob` (rule 1 of ``_blobs``). This
module must never read or write a blob's bytes itself.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from ..base import (
    UNLIMITED,
    Account,
    AccountNotFound,
    BlobRef,
    MessageNotFound,
    QuotaExceeded,
    RelayDepth,
    RelayEntry,
    RelayEntryNotFound,
    RelayRecipient,
    StoredMessage,
)
from ..sqlite._db import US_PER_DAY, dt, span_us, us
from ._accounts import ACCOUNT_COLUMNS, account_of, require_account, rowcount
from ._blobs import OPEN_COLUMNS, Opened, PgReader, blob_of, claim_blob, collect_garbage, opened
from ._db import Conn, Database, Row

#: a receiving Fachdienst remembers a delivered relay id this long (as the embedded store)
RELAY_ID_KEEP = timedelta(days=14)
# RFC 3461 NOTIFY values and RET values.
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY", "NEVER"})
_RET = frozenset({"HDRS", "FULL"})


async def usage_of(conn: Conn, key: str, now_us: int) -> int:
    """Bytes counted against the quota of mailbox ``key`` (digest §3.2): messages, committed
    KAS uploads and live upload reservations."""
    value = await conn.fetchval(
        "SELECT (SELECT COALESCE(SUM(size), 0) FROM messages WHERE mailbox = $1) "
        "+ (SELECT COALESCE(SUM(size), 0) FROM kas_attachments WHERE uploader = $1) "
        "+ (SELECT COALESCE(SUM(size), 0) FROM kas_reservations "
        "   WHERE mailbox = $1 AND expires_at > $2)",
        key,
        now_us,
    )
    return int(value)


async def check_room(conn: Conn, account: Account, size: int, now_us: int, what: str) -> None:
    """`QuotaExceeded` unless ``account`` (its row locked by the caller) has room for ``size``
    more bytes."""
    if account.quota_bytes == UNLIMITED:
        return
    used = await usage_of(conn, account.key, now_us)
    if used + size > account.quota_bytes:
        raise QuotaExceeded(
            account.address, quota=account.quota_bytes, used=used, size=size, what=what
        )


async def lock_accounts(
    conn: Conn, addresses: Sequence[str], *, exclusive: bool
) -> dict[str, Account]:
    """The accounts of ``addresses`` by key, their rows locked in key order (no deadlock between
    two nodes locking overlapping sets): exclusively for a quota check, else only against
    deletion. `AccountNotFound` names the first address (in the given order) without one."""
    keys = sorted({a.lower() for a in addresses})
    rows = await conn.fetch(
        f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE key = ANY($1::text[]) ORDER BY key "
        + ("FOR UPDATE" if exclusive else "FOR KEY SHARE"),
        keys,
    )
    found = {row["key"]: account_of(row) for row in rows}
    for address in addresses:
        if address.lower() not in found:
            raise AccountNotFound(f"mailbox {address}: no such account")
    return found


class PgMail:
    """`store.base.Mail` of the PostgreSQL store."""

    def __init__(self, db: Database, instance: str) -> None:
        self._db = db
        self._instance = instance

    def _message(self, row: Row) -> StoredMessage:
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

        async def op(conn: Conn) -> builtins.list[StoredMessage]:
            await claim_blob(conn, blob)
            accounts = await lock_accounts(
                conn, [mailbox for mailbox, _ in deliveries], exclusive=check_quota
            )
            stored: builtins.list[StoredMessage] = []
            for mailbox, prefix in deliveries:
                account = accounts[mailbox.lower()]
                if relay_id is not None:
                    seen = await conn.fetchrow(
                        "INSERT INTO relay_deliveries (relay_id, mailbox, delivered_at) "
                        "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1",
                        relay_id,
                        account.key,
                        received,
                    )
                    if seen is None:
                        continue  # delivered by an earlier attempt of the same relay entry
                size = len(prefix) + blob.size
                if check_quota:
                    await check_room(conn, account, size, received, "message")
                row = await conn.fetchrow(
                    "INSERT INTO messages (mailbox, blob, prefix, size, received_at, expires_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                    account.key,
                    blob.name,
                    bytes(prefix),
                    size,
                    received,
                    received + account.data_ttl_days * US_PER_DAY,
                )
                stored.append(self._message(row))
            return stored

        return await self._db.write(op)

    async def list(self, mailbox: str) -> builtins.list[StoredMessage]:
        async def op(conn: Conn) -> builtins.list[StoredMessage]:
            # one query: the account (so an unknown mailbox is told apart from an empty one)
            # and its messages
            rows = await conn.fetch(
                "SELECT a.key AS account, m.* FROM accounts a "
                "LEFT JOIN messages m ON m.mailbox = a.key WHERE a.key = $1 ORDER BY m.id",
                mailbox.lower(),
            )
            if not rows:
                raise AccountNotFound(f"mailbox {mailbox}: no such account")
            return [self._message(row) for row in rows if row["id"] is not None]

        return await self._db.read(op)

    async def get(self, message_id: int) -> StoredMessage | None:
        async def op(conn: Conn) -> StoredMessage | None:
            row = await conn.fetchrow("SELECT * FROM messages WHERE id = $1", message_id)
            return None if row is None else self._message(row)

        return await self._db.read(op)

    def reader(self, message_id: int) -> PgReader:
        async def opener(conn: Conn) -> Opened:
            row = await conn.fetchrow(
                f"SELECT m.prefix, {OPEN_COLUMNS} FROM messages m "
                "JOIN blobs b ON b.name = m.blob WHERE m.id = $1",
                message_id,
            )
            if row is None:
                raise MessageNotFound(f"message {message_id}: no such message")
            return opened(row, row["prefix"])

        return PgReader(
            self._db,
            opener,
            lambda: MessageNotFound(f"message {message_id}: deleted while being read"),
        )

    async def delete(self, mailbox: str, ids: Sequence[int]) -> None:
        key = mailbox.lower()
        wanted = [int(i) for i in ids]
        if not wanted:
            return

        async def op(conn: Conn) -> None:
            rows = await conn.fetch(
                "DELETE FROM messages WHERE id = ANY($1::bigint[]) AND mailbox = $2 RETURNING blob",
                wanted,
                key,
            )
            await collect_garbage(conn, {r["blob"] for r in rows})

        await self._db.write(op)

    async def usage(self, mailbox: str, now: datetime) -> int:
        when = us(now, "now")

        async def op(conn: Conn) -> int:
            account = await require_account(conn, mailbox)
            return await usage_of(conn, account.key, when)

        return await self._db.read(op, snapshot=True)

    async def expire(self, now: datetime) -> int:
        limit = us(now, "now")

        async def op(conn: Conn) -> int:
            rows = await conn.fetch(
                "DELETE FROM messages WHERE expires_at <= $1 RETURNING blob", limit
            )
            await collect_garbage(conn, {r["blob"] for r in rows})
            await conn.execute(
                "DELETE FROM relay_deliveries WHERE delivered_at < $1",
                limit - span_us(RELAY_ID_KEEP),
            )
            return len(rows)

        return await self._db.write(op)


_ENTRY_QUERY = (
    "SELECT e.*, b.name AS b_name, b.size AS b_size, b.stored_size AS b_stored_size, "
    "b.compressed AS b_compressed FROM relay_entries e JOIN blobs b ON b.name = e.blob "
)


async def _entries(conn: Conn, rows: Sequence[Row]) -> builtins.list[RelayEntry]:
    """RelayEntry records of entry rows (with the blob columns), recipients in one query."""
    if not rows:
        return []
    recipients: dict[int, builtins.list[RelayRecipient]] = {row["id"]: [] for row in rows}
    for r in await conn.fetch(
        "SELECT * FROM relay_recipients WHERE entry_id = ANY($1::bigint[]) "
        "ORDER BY entry_id, position",
        list(recipients),
    ):
        recipients[r["entry_id"]].append(
            RelayRecipient(
                r["address"],
                None if r["notify"] is None else frozenset(r["notify"].split(",")) - {""},
                r["orcpt"],
            )
        )
    return [
        RelayEntry(
            id=row["id"],
            blob=blob_of(row, "b_"),
            sender=row["sender"],
            recipients=tuple(recipients[row["id"]]),
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
        for row in rows
    ]


class PgRelay:
    """`store.base.Relay` of the PostgreSQL store."""

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

        async def op(conn: Conn) -> int:
            await claim_blob(conn, blob)
            entry_id = await conn.fetchval(
                "INSERT INTO relay_entries (blob, sender, envid, ret, source_domain, domain, "
                "attempts, next_attempt, not_after, last_error, created_at, relay_id) "
                "VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, NULL, $7, $9) RETURNING id",
                blob.name,
                sender,
                envid,
                ret,
                source_domain.lower(),
                domain.lower(),
                created,
                deadline,
                relay_id,
            )
            await conn.executemany(
                "INSERT INTO relay_recipients (entry_id, position, address, notify, orcpt) "
                "VALUES ($1, $2, $3, $4, $5)",
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
            return int(entry_id)

        entry_id = await self._db.write(op)
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

        async def op(conn: Conn) -> builtins.list[RelayEntry]:
            # entries another node is claiming right now are skipped, not waited for
            claimed = await conn.fetch(
                "WITH picked AS (SELECT id FROM relay_entries WHERE source_domain = $1 "
                "AND next_attempt <= $2 AND (claim_until IS NULL OR claim_until <= $2) "
                "ORDER BY next_attempt, id LIMIT $3 FOR UPDATE SKIP LOCKED) "
                "UPDATE relay_entries e SET claimed_by = $4, claim_until = $5 "
                "FROM picked WHERE e.id = picked.id RETURNING e.id",
                source_domain.lower(),
                when,
                limit,
                node,
                until,
            )
            if not claimed:
                return []
            rows = await conn.fetch(
                _ENTRY_QUERY + "WHERE e.id = ANY($1::bigint[]) ORDER BY e.next_attempt, e.id",
                [r["id"] for r in claimed],
            )
            return await _entries(conn, rows)

        return await self._db.write(op)

    async def renew(
        self, node: str, entry_ids: Sequence[int], now: datetime, *, lease: timedelta
    ) -> builtins.list[int]:
        until = us(now, "now") + span_us(lease)
        ids = [int(i) for i in entry_ids]

        async def op(conn: Conn) -> builtins.list[int]:
            # a lapsed claim is still ours unless another node took the entry meanwhile
            rows = await conn.fetch(
                "UPDATE relay_entries SET claim_until = $1 "
                "WHERE id = ANY($2::bigint[]) AND claimed_by = $3 RETURNING id",
                until,
                ids,
                node,
            )
            return sorted(int(r["id"]) for r in rows)

        if not ids:
            return []
        return await self._db.write(op)

    async def release_claims(self, node: str) -> int:
        async def op(conn: Conn) -> int:
            status = await conn.execute(
                "UPDATE relay_entries SET claimed_by = NULL, claim_until = NULL "
                "WHERE claimed_by = $1",
                node,
            )
            return rowcount(status)

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

        async def op(conn: Conn) -> None:
            if when is None:
                name = await conn.fetchval(
                    "DELETE FROM relay_entries WHERE id = $1 RETURNING blob", entry_id
                )
                if name is None:
                    raise RelayEntryNotFound(f"relay entry {entry_id}: no such entry")
                await collect_garbage(conn, {name})
                return
            status = await conn.execute(
                "UPDATE relay_entries SET attempts = attempts + 1, next_attempt = $1, "
                "last_error = $2, claimed_by = NULL, claim_until = NULL WHERE id = $3",
                when,
                error,
                entry_id,
            )
            if status == "UPDATE 0":
                raise RelayEntryNotFound(f"relay entry {entry_id}: no such entry")
            left = {
                row["address"].lower()
                for row in await conn.fetch(
                    "SELECT address FROM relay_recipients WHERE entry_id = $1", entry_id
                )
            }
            gone = {address.lower() for address in done}
            if left and left <= gone:
                raise ValueError(
                    f"relay entry {entry_id}: every recipient is done; remove the entry "
                    "(next_attempt=None) instead of rescheduling it"
                )
            if gone:
                await conn.execute(
                    "DELETE FROM relay_recipients WHERE entry_id = $1 "
                    "AND lower(address) = ANY($2::text[])",
                    entry_id,
                    sorted(gone),
                )

        await self._db.write(op)

    async def pending(
        self, source_domain: str | None = None, *, limit: int
    ) -> builtins.list[RelayEntry]:
        async def op(conn: Conn) -> builtins.list[RelayEntry]:
            if source_domain is None:
                rows = await conn.fetch(
                    _ENTRY_QUERY + "ORDER BY e.next_attempt, e.id LIMIT $1", limit
                )
            else:
                rows = await conn.fetch(
                    _ENTRY_QUERY + "WHERE e.source_domain = $1 ORDER BY e.next_attempt, e.id "
                    "LIMIT $2",
                    source_domain.lower(),
                    limit,
                )
            return await _entries(conn, rows)

        return await self._db.read(op, snapshot=True)

    async def depth(self, source_domain: str) -> RelayDepth:
        async def op(conn: Conn) -> RelayDepth:
            row = await conn.fetchrow(
                "SELECT COUNT(*), MIN(created_at) FROM relay_entries WHERE source_domain = $1",
                source_domain.lower(),
            )
            return RelayDepth(int(row[0]), None if row[1] is None else dt(row[1]))

        return await self._db.read(op)
