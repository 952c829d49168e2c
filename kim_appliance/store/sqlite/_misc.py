"""The embedded store's small tables: the reply ledger, registration codes and OTPs, maildrop
locks, the directory with its change counter, nodes and leases, and the meta facts.

Each coroutine is one transaction in one worker-thread call. Check-and-change steps (a lock, an
OTP, a code's use, a directory change against its version) are single statements or one
``BEGIN IMMEDIATE`` transaction, so they are atomic. This module must never interpret a
directory entry's JSON or a secret; it stores what the domain code hands it.
"""

from __future__ import annotations

import builtins
import hmac
import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from ..base import (
    DirectoryConflict,
    DirectoryRow,
    DirectorySnapshot,
    NodeInfo,
    OtpCheck,
    RegistrationCode,
    RegistrationCodeUsed,
)
from ._db import Database, Tx, dt, span_us, us


class SQLiteAutoReplies:
    """`store.base.AutoReplies` of the embedded store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def remember(
        self, mailbox: str, sender: str, note_start: datetime, now: datetime
    ) -> bool:
        values = (mailbox.lower(), sender.lower(), us(note_start, "note_start"), us(now, "now"))

        def op(tx: Tx) -> bool:
            row = tx.one(
                "INSERT INTO auto_replies (mailbox, sender, note_start, replied_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                values,
            )
            return row is not None

        return await self._db.write(op)

    async def expire(self, now: datetime) -> int:
        when = us(now, "now")

        def op(tx: Tx) -> int:
            cur = tx.execute(
                "DELETE FROM auto_replies WHERE NOT EXISTS (SELECT 1 FROM accounts a "
                "WHERE a.key = auto_replies.mailbox AND a.ooo_active = 1 "
                "AND a.ooo_start = auto_replies.note_start AND a.ooo_end >= ?)",
                (when,),
            )
            return cur.rowcount

        return await self._db.write(op)


def _code(row: sqlite3.Row) -> RegistrationCode:
    return RegistrationCode(
        row["domain"], row["reference_id"], row["ini_password_hash"], row["telematik_id"],
        row["used_by"],
    )  # fmt: skip


class SQLiteRegistrations:
    """`store.base.Registrations` of the embedded store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put_code(self, code: RegistrationCode) -> None:
        domain = code.domain.lower()

        def op(tx: Tx) -> None:
            old = tx.one(
                "SELECT used_by FROM registration_codes WHERE domain = ? AND reference_id = ?",
                (domain, code.reference_id),
            )
            if old is not None and old["used_by"] is not None:
                raise RegistrationCodeUsed(
                    f"referenceID {code.reference_id!r}: already used by {old['used_by']}"
                )
            tx.execute(
                "INSERT OR REPLACE INTO registration_codes (domain, reference_id, "
                "ini_password_hash, telematik_id, used_by, used_key) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    domain,
                    code.reference_id,
                    code.ini_password_hash,
                    code.telematik_id,
                    code.used_by,
                    None if code.used_by is None else code.used_by.lower(),
                ),
            )

        await self._db.write(op)

    async def get_code(self, domain: str, reference_id: str) -> RegistrationCode | None:
        def op(tx: Tx) -> RegistrationCode | None:
            row = tx.one(
                "SELECT * FROM registration_codes WHERE domain = ? AND reference_id = ?",
                (domain.lower(), reference_id),
            )
            return None if row is None else _code(row)

        return await self._db.read(op)

    async def code_of(self, address: str) -> RegistrationCode | None:
        def op(tx: Tx) -> RegistrationCode | None:
            row = tx.one("SELECT * FROM registration_codes WHERE used_key = ?", (address.lower(),))
            return None if row is None else _code(row)

        return await self._db.read(op)

    async def use_code(self, domain: str, reference_id: str, address: str) -> bool:
        def op(tx: Tx) -> bool:
            cur = tx.execute(
                "UPDATE registration_codes SET used_by = ?, used_key = ? "
                "WHERE domain = ? AND reference_id = ? AND used_by IS NULL",
                (address, address.lower(), domain.lower(), reference_id),
            )
            return cur.rowcount == 1

        return await self._db.write(op)

    async def put_otp(self, address: str, digest: str, expires_at: datetime) -> None:
        values = (address.lower(), digest, us(expires_at, "expires_at"))
        await self._db.write(
            lambda tx: tx.execute(
                "INSERT OR REPLACE INTO otps (address, digest, expires_at) VALUES (?, ?, ?)",
                values,
            )
        )

    async def take_otp(self, address: str, digest: str, now: datetime) -> OtpCheck:
        key = address.lower()
        when = us(now, "now")

        def op(tx: Tx) -> OtpCheck:
            row = tx.one("SELECT digest, expires_at FROM otps WHERE address = ?", (key,))
            if row is None or not hmac.compare_digest(row["digest"], digest):
                return OtpCheck.INVALID
            if when >= row["expires_at"]:
                return OtpCheck.EXPIRED
            tx.execute("DELETE FROM otps WHERE address = ?", (key,))
            return OtpCheck.OK

        return await self._db.write(op)


def _take(tx: Tx, table: str, column: str, key: str, holder: str, now: int, until: int) -> bool:
    """Take or extend the lease row ``key`` of ``table`` for ``holder``: one statement that
    succeeds if the row is free, lapsed or already ``holder``'s."""
    row = tx.one(
        f"INSERT INTO {table} AS t VALUES (?, ?, ?) ON CONFLICT ({column}) DO UPDATE "
        "SET holder = excluded.holder, until = excluded.until "
        "WHERE t.holder = excluded.holder OR t.until <= ? RETURNING 1",
        (key, holder, until, now),
    )
    return row is not None


class SQLiteMaildrops:
    """`store.base.Maildrops` of the embedded store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def lock(self, mailbox: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        when = us(now, "now")
        until = when + span_us(ttl)
        key = mailbox.lower()
        return await self._db.write(
            lambda tx: _take(tx, "maildrop_locks", "mailbox", key, holder, when, until)
        )

    async def renew(self, mailbox: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        until = us(now, "now") + span_us(ttl)

        def op(tx: Tx) -> bool:
            cur = tx.execute(
                "UPDATE maildrop_locks SET until = ? WHERE mailbox = ? AND holder = ?",
                (until, mailbox.lower(), holder),
            )
            return cur.rowcount == 1

        return await self._db.write(op)

    async def unlock(self, mailbox: str, holder: str) -> None:
        await self._db.write(
            lambda tx: tx.execute(
                "DELETE FROM maildrop_locks WHERE mailbox = ? AND holder = ?",
                (mailbox.lower(), holder),
            )
        )

    async def release_holders(self, prefix: str) -> int:
        def op(tx: Tx) -> int:
            cur = tx.execute(
                "DELETE FROM maildrop_locks WHERE substr(holder, 1, length(?)) = ?",
                (prefix, prefix),
            )
            return int(cur.rowcount)

        return await self._db.write(op)


def _version(tx: Tx) -> int:
    row = tx.one("SELECT version FROM directory_version WHERE id = 1")
    assert row is not None
    return int(row[0])


def _bump(tx: Tx, expected: int) -> int:
    current = _version(tx)
    if current != expected:
        raise DirectoryConflict(
            f"directory changed meanwhile (version {current}, the change was made against "
            f"{expected}); reload and try again"
        )
    tx.execute("UPDATE directory_version SET version = ? WHERE id = 1", (current + 1,))
    return current + 1


class SQLiteDirectory:
    """`store.base.Directory` of the embedded store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def version(self) -> int:
        return await self._db.read(_version)

    async def snapshot(self) -> DirectorySnapshot:
        def op(tx: Tx) -> DirectorySnapshot:
            rows = tuple(
                DirectoryRow(r["uid"], r["telematik_id"], r["data"])
                for r in tx.execute("SELECT * FROM directory_entries ORDER BY uid")
            )
            return DirectorySnapshot(_version(tx), rows)

        return await self._db.read(op)

    async def put(self, row: DirectoryRow, *, expected_version: int) -> int:
        def op(tx: Tx) -> int:
            version = _bump(tx, expected_version)
            other = tx.one(
                "SELECT uid FROM directory_entries WHERE telematik_id = ? AND uid != ?",
                (row.telematik_id, row.uid),
            )
            if other is not None:
                raise DirectoryConflict(
                    f"telematikID {row.telematik_id!r}: already the entry {other[0]}"
                )
            tx.execute(
                "INSERT OR REPLACE INTO directory_entries (uid, telematik_id, data) "
                "VALUES (?, ?, ?)",
                (row.uid, row.telematik_id, row.data),
            )
            return version

        return await self._db.write(op)

    async def delete(self, uid: str, *, expected_version: int) -> int:
        def op(tx: Tx) -> int:
            version = _bump(tx, expected_version)
            tx.execute("DELETE FROM directory_entries WHERE uid = ?", (uid,))
            return version

        return await self._db.write(op)


class SQLiteNodes:
    """`store.base.Nodes` of the embedded store (one process, but the same contract)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def heartbeat(
        self, name: str, endpoints: Mapping[str, object], components: Sequence[str], now: datetime
    ) -> None:
        values = (name, json.dumps(dict(endpoints)), json.dumps(list(components)), us(now, "now"))
        await self._db.write(
            lambda tx: tx.execute(
                "INSERT OR REPLACE INTO nodes (name, endpoints, components, seen_at) "
                "VALUES (?, ?, ?, ?)",
                values,
            )
        )

    async def live(self, now: datetime, max_age: timedelta) -> builtins.list[NodeInfo]:
        since = us(now, "now") - span_us(max_age)

        def op(tx: Tx) -> builtins.list[NodeInfo]:
            return [
                NodeInfo(
                    r["name"],
                    json.loads(r["endpoints"]),
                    tuple(json.loads(r["components"])),
                    dt(r["seen_at"]),
                )
                for r in tx.execute(
                    "SELECT * FROM nodes WHERE seen_at >= ? ORDER BY name", (since,)
                )
            ]

        return await self._db.read(op)

    async def leave(self, name: str) -> None:
        await self._db.write(lambda tx: tx.execute("DELETE FROM nodes WHERE name = ?", (name,)))

    async def acquire(self, lease: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        when = us(now, "now")
        until = when + span_us(ttl)
        return await self._db.write(
            lambda tx: _take(tx, "leases", "name", lease, holder, when, until)
        )

    async def release(self, lease: str, holder: str) -> None:
        await self._db.write(
            lambda tx: tx.execute(
                "DELETE FROM leases WHERE name = ? AND holder = ?", (lease, holder)
            )
        )


class SQLiteMeta:
    """`store.base.Meta` of the embedded store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, name: str) -> str | None:
        def op(tx: Tx) -> str | None:
            row = tx.one("SELECT value FROM meta WHERE name = ?", (name,))
            return None if row is None else str(row[0])

        return await self._db.read(op)

    async def put_if_absent(self, name: str, value: str) -> bool:
        def op(tx: Tx) -> bool:
            row = tx.one(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                (name, value),
            )
            return row is not None

        return await self._db.write(op)
