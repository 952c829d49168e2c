"""The PostgreSQL store's small tables: the reply ledger, registration codes and OTPs, maildrop
locks, the directory with its change counter, nodes and leases, and the meta facts.

Each coroutine is one transaction in one trio-to-asyncio hop. Check-and-change steps are single
statements that PostgreSQL makes atomic across connections (``INSERT ... ON CONFLICT DO
NOTHING``, an upsert whose ``DO UPDATE ... WHERE`` only takes a free or lapsed lease row, an
``UPDATE ... WHERE used_by IS NULL``), or lock the row they check first (an OTP, the directory's
version row). Locks and leases are rows with an expiry, never advisory or session locks: a
node that dies leaves rows that lapse. This module must never interpret a directory entry's
JSON or a secret; it stores what the domain code hands it.
"""

from __future__ import annotations

import builtins
import hmac
import json
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
from ..sqlite._db import dt, span_us, us
from ._accounts import rowcount
from ._db import Conn, Database, Row


class PgAutoReplies:
    """`store.base.AutoReplies` of the PostgreSQL store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def remember(
        self, mailbox: str, sender: str, note_start: datetime, now: datetime
    ) -> bool:
        values = (mailbox.lower(), sender.lower(), us(note_start, "note_start"), us(now, "now"))

        async def op(conn: Conn) -> bool:
            row = await conn.fetchrow(
                "INSERT INTO auto_replies (mailbox, sender, note_start, replied_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
                *values,
            )
            return row is not None

        return await self._db.write(op)

    async def expire(self, now: datetime) -> int:
        when = us(now, "now")

        async def op(conn: Conn) -> int:
            status = await conn.execute(
                "DELETE FROM auto_replies r WHERE NOT EXISTS (SELECT 1 FROM accounts a "
                "WHERE a.key = r.mailbox AND a.ooo_active AND a.ooo_start = r.note_start "
                "AND a.ooo_end >= $1)",
                when,
            )
            return rowcount(status)

        return await self._db.write(op)


def _code(row: Row) -> RegistrationCode:
    return RegistrationCode(
        row["domain"], row["reference_id"], row["ini_password_hash"], row["telematik_id"],
        row["used_by"],
    )  # fmt: skip


class PgRegistrations:
    """`store.base.Registrations` of the PostgreSQL store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put_code(self, code: RegistrationCode) -> None:
        domain = code.domain.lower()

        async def op(conn: Conn) -> None:
            # insert, or replace the code while it is unused: one statement
            row = await conn.fetchrow(
                "INSERT INTO registration_codes AS c (domain, reference_id, ini_password_hash, "
                "telematik_id, used_by, used_key) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (domain, reference_id) DO UPDATE SET "
                "ini_password_hash = excluded.ini_password_hash, "
                "telematik_id = excluded.telematik_id, used_by = excluded.used_by, "
                "used_key = excluded.used_key WHERE c.used_by IS NULL RETURNING 1",
                domain,
                code.reference_id,
                code.ini_password_hash,
                code.telematik_id,
                code.used_by,
                None if code.used_by is None else code.used_by.lower(),
            )
            if row is None:
                used_by = await conn.fetchval(
                    "SELECT used_by FROM registration_codes WHERE domain = $1 "
                    "AND reference_id = $2",
                    domain,
                    code.reference_id,
                )
                raise RegistrationCodeUsed(
                    f"referenceID {code.reference_id!r}: already used by {used_by}"
                )

        await self._db.write(op)

    async def get_code(self, domain: str, reference_id: str) -> RegistrationCode | None:
        async def op(conn: Conn) -> RegistrationCode | None:
            row = await conn.fetchrow(
                "SELECT * FROM registration_codes WHERE domain = $1 AND reference_id = $2",
                domain.lower(),
                reference_id,
            )
            return None if row is None else _code(row)

        return await self._db.read(op)

    async def code_of(self, address: str) -> RegistrationCode | None:
        async def op(conn: Conn) -> RegistrationCode | None:
            row = await conn.fetchrow(
                "SELECT * FROM registration_codes WHERE used_key = $1", address.lower()
            )
            return None if row is None else _code(row)

        return await self._db.read(op)

    async def use_code(self, domain: str, reference_id: str, address: str) -> bool:
        async def op(conn: Conn) -> bool:
            status = await conn.execute(
                "UPDATE registration_codes SET used_by = $1, used_key = $2 "
                "WHERE domain = $3 AND reference_id = $4 AND used_by IS NULL",
                address,
                address.lower(),
                domain.lower(),
                reference_id,
            )
            return bool(rowcount(status) == 1)

        return await self._db.write(op)

    async def put_otp(self, address: str, digest: str, expires_at: datetime) -> None:
        values = (address.lower(), digest, us(expires_at, "expires_at"))

        async def op(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO otps (address, digest, expires_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (address) DO UPDATE SET digest = excluded.digest, "
                "expires_at = excluded.expires_at",
                *values,
            )

        await self._db.write(op)

    async def take_otp(self, address: str, digest: str, now: datetime) -> OtpCheck:
        key = address.lower()
        when = us(now, "now")

        async def op(conn: Conn) -> OtpCheck:
            row = await conn.fetchrow(
                "SELECT digest, expires_at FROM otps WHERE address = $1 FOR UPDATE", key
            )
            if row is None or not hmac.compare_digest(row["digest"], digest):
                return OtpCheck.INVALID
            if when >= row["expires_at"]:
                return OtpCheck.EXPIRED
            await conn.execute("DELETE FROM otps WHERE address = $1", key)
            return OtpCheck.OK

        return await self._db.write(op)


async def _take(
    conn: Conn, table: str, column: str, key: str, holder: str, now: int, until: int
) -> bool:
    """Take or extend the lease row ``key`` of ``table`` for ``holder``: one statement that
    succeeds if the row is free, lapsed or already ``holder``'s (two nodes racing for a free
    row: one inserts, the other's conflict waits for it and then finds it taken)."""
    row = await conn.fetchrow(
        f"INSERT INTO {table} AS t ({column}, holder, until) VALUES ($1, $2, $3) "
        f"ON CONFLICT ({column}) DO UPDATE SET holder = excluded.holder, until = excluded.until "
        "WHERE t.holder = excluded.holder OR t.until <= $4 RETURNING 1",
        key,
        holder,
        until,
        now,
    )
    return row is not None


class PgMaildrops:
    """`store.base.Maildrops` of the PostgreSQL store: lock rows with an expiry."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def lock(self, mailbox: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        when = us(now, "now")
        until = when + span_us(ttl)
        key = mailbox.lower()
        return await self._db.write(
            lambda conn: _take(conn, "maildrop_locks", "mailbox", key, holder, when, until)
        )

    async def renew(self, mailbox: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        until = us(now, "now") + span_us(ttl)

        async def op(conn: Conn) -> bool:
            status = await conn.execute(
                "UPDATE maildrop_locks SET until = $1 WHERE mailbox = $2 AND holder = $3",
                until,
                mailbox.lower(),
                holder,
            )
            return bool(rowcount(status) == 1)

        return await self._db.write(op)

    async def unlock(self, mailbox: str, holder: str) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM maildrop_locks WHERE mailbox = $1 AND holder = $2",
                mailbox.lower(),
                holder,
            )

        await self._db.write(op)

    async def release_holders(self, prefix: str) -> int:
        async def op(conn: Conn) -> int:
            status = await conn.execute(
                "DELETE FROM maildrop_locks WHERE substr(holder, 1, length($1)) = $1", prefix
            )
            return rowcount(status)

        return await self._db.write(op)


async def _version(conn: Conn, *, lock: bool = False) -> int:
    value = await conn.fetchval(
        "SELECT version FROM directory_version WHERE id = 1" + (" FOR UPDATE" if lock else "")
    )
    return int(value)


async def _bump(conn: Conn, expected: int) -> int:
    current = await _version(conn, lock=True)
    if current != expected:
        raise DirectoryConflict(
            f"directory changed meanwhile (version {current}, the change was made against "
            f"{expected}); reload and try again"
        )
    await conn.execute("UPDATE directory_version SET version = $1 WHERE id = 1", current + 1)
    return current + 1


class PgDirectory:
    """`store.base.Directory` of the PostgreSQL store: every change locks the version row, so
    changes from every node are serialised and each moves the counter by one."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def version(self) -> int:
        return await self._db.read(_version)

    async def snapshot(self) -> DirectorySnapshot:
        async def op(conn: Conn) -> DirectorySnapshot:
            rows = tuple(
                DirectoryRow(r["uid"], r["telematik_id"], r["data"])
                for r in await conn.fetch("SELECT * FROM directory_entries ORDER BY uid")
            )
            return DirectorySnapshot(await _version(conn), rows)

        return await self._db.read(op, snapshot=True)

    async def put(self, row: DirectoryRow, *, expected_version: int) -> int:
        async def op(conn: Conn) -> int:
            version = await _bump(conn, expected_version)
            other = await conn.fetchval(
                "SELECT uid FROM directory_entries WHERE telematik_id = $1 AND uid != $2",
                row.telematik_id,
                row.uid,
            )
            if other is not None:
                raise DirectoryConflict(
                    f"telematikID {row.telematik_id!r}: already the entry {other}"
                )
            await conn.execute(
                "INSERT INTO directory_entries (uid, telematik_id, data) VALUES ($1, $2, $3) "
                "ON CONFLICT (uid) DO UPDATE SET telematik_id = excluded.telematik_id, "
                "data = excluded.data",
                row.uid,
                row.telematik_id,
                row.data,
            )
            return version

        return await self._db.write(op)

    async def delete(self, uid: str, *, expected_version: int) -> int:
        async def op(conn: Conn) -> int:
            version = await _bump(conn, expected_version)
            await conn.execute("DELETE FROM directory_entries WHERE uid = $1", uid)
            return version

        return await self._db.write(op)


class PgNodes:
    """`store.base.Nodes` of the PostgreSQL store: heartbeat rows and lease rows."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def heartbeat(
        self, name: str, endpoints: Mapping[str, object], components: Sequence[str], now: datetime
    ) -> None:
        values = (name, json.dumps(dict(endpoints)), json.dumps(list(components)), us(now, "now"))

        async def op(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO nodes (name, endpoints, components, seen_at) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (name) DO UPDATE SET endpoints = excluded.endpoints, "
                "components = excluded.components, seen_at = excluded.seen_at",
                *values,
            )

        await self._db.write(op)

    async def live(self, now: datetime, max_age: timedelta) -> builtins.list[NodeInfo]:
        since = us(now, "now") - span_us(max_age)

        async def op(conn: Conn) -> builtins.list[NodeInfo]:
            return [
                NodeInfo(
                    r["name"],
                    json.loads(r["endpoints"]),
                    tuple(json.loads(r["components"])),
                    dt(r["seen_at"]),
                )
                for r in await conn.fetch(
                    "SELECT * FROM nodes WHERE seen_at >= $1 ORDER BY name", since
                )
            ]

        return await self._db.read(op)

    async def leave(self, name: str) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute("DELETE FROM nodes WHERE name = $1", name)

        await self._db.write(op)

    async def acquire(self, lease: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        when = us(now, "now")
        until = when + span_us(ttl)
        return await self._db.write(
            lambda conn: _take(conn, "leases", "name", lease, holder, when, until)
        )

    async def release(self, lease: str, holder: str) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute("DELETE FROM leases WHERE name = $1 AND holder = $2", lease, holder)

        await self._db.write(op)


class PgMeta:
    """`store.base.Meta` of the PostgreSQL store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, name: str) -> str | None:
        async def op(conn: Conn) -> str | None:
            value = await conn.fetchval("SELECT value FROM meta WHERE name = $1", name)
            return None if value is None else str(value)

        return await self._db.read(op)

    async def put_if_absent(self, name: str, value: str) -> bool:
        async def op(conn: Conn) -> bool:
            row = await conn.fetchrow(
                "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
                name,
                value,
            )
            return row is not None

        return await self._db.write(op)
