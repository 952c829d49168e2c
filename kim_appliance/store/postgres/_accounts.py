"""The PostgreSQL store's accounts, tombstones and failed-login counters (see `store.base`).

Each public coroutine is one transaction in one trio-to-asyncio hop (``_db.Database``). Steps
that read and then change a row (update, purge, a failed login) lock that row first
(``FOR UPDATE``, or an upsert that locks it), so two nodes never lose each other's change. This
module must never check a password or decide a lockout; `LockoutPolicy` does the arithmetic.
"""

from __future__ import annotations

import builtins
import dataclasses
from datetime import datetime, timedelta
from typing import Any

from ..base import (
    Account,
    AccountExists,
    AccountNotFound,
    LockoutPolicy,
    LockState,
    OutOfOffice,
    Purged,
    RegistrationCodeUsed,
    domain_of,
)
from ..sqlite._db import US_PER_DAY, dt, opt_dt, opt_us, span_us, us
from ._blobs import collect_garbage
from ._db import Conn, Database, Row

ACCOUNT_COLUMNS = (
    "key, domain, address, password_hash, telematik_id, display_name, status, quota_bytes, "
    "data_ttl_days, kim_version, dereg_date, no_vzd_mail_entry, "
    "ooo_active, ooo_start, ooo_end, ooo_message"
)
_ACCOUNT_VALUES = ", ".join(f"${i}" for i in range(1, 17))
_UPDATABLE = frozenset(f.name for f in dataclasses.fields(Account)) - {"address"}


def account_row(a: Account) -> tuple[Any, ...]:
    o = a.out_of_office
    return (
        a.key,
        domain_of(a.address),
        a.address,
        a.password_hash,
        a.telematik_id,
        a.display_name,
        a.status,
        a.quota_bytes,
        a.data_ttl_days,
        a.kim_version,
        opt_us(a.dereg_date, "dereg_date"),
        a.no_vzd_mail_entry,
        o.active,
        opt_us(o.start, "out_of_office.start"),
        opt_us(o.end, "out_of_office.end"),
        o.message,
    )


def account_of(row: Row) -> Account:
    return Account(
        address=row["address"],
        password_hash=row["password_hash"],
        telematik_id=row["telematik_id"],
        display_name=row["display_name"],
        status=row["status"],
        quota_bytes=row["quota_bytes"],
        data_ttl_days=row["data_ttl_days"],
        kim_version=row["kim_version"],
        dereg_date=opt_dt(row["dereg_date"]),
        no_vzd_mail_entry=row["no_vzd_mail_entry"],
        out_of_office=OutOfOffice(
            active=row["ooo_active"],
            start=opt_dt(row["ooo_start"]),
            end=opt_dt(row["ooo_end"]),
            message=row["ooo_message"],
        ),
    )


async def get_account(conn: Conn, address: str, *, lock: bool = False) -> Account | None:
    row = await conn.fetchrow(
        f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE key = $1" + (" FOR UPDATE" if lock else ""),
        address.lower(),
    )
    return None if row is None else account_of(row)


async def require_account(conn: Conn, address: str, *, lock: bool = False) -> Account:
    account = await get_account(conn, address, lock=lock)
    if account is None:
        raise AccountNotFound(f"mailbox {address}: no such account")
    return account


class PgAccounts:
    """`store.base.Accounts` of the PostgreSQL store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, account: Account, *, reference_id: str | None = None) -> None:
        values = account_row(account)

        async def op(conn: Conn) -> None:
            row = await conn.fetchrow(
                f"INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES ({_ACCOUNT_VALUES}) "
                "ON CONFLICT (key) DO NOTHING RETURNING 1",
                *values,
            )
            if row is None:
                raise AccountExists(f"address {account.address}: account exists")
            if reference_id is None:
                return
            status = await conn.execute(
                "UPDATE registration_codes SET used_by = $1, used_key = $2 "
                "WHERE domain = $3 AND reference_id = $4 AND used_by IS NULL",
                account.address,
                account.key,
                account.domain,
                reference_id,
            )
            if status != "UPDATE 1":
                raise RegistrationCodeUsed(
                    f"referenceID {reference_id!r}: unknown at {account.domain} or used already"
                )

        await self._db.write(op)

    async def get(self, address: str) -> Account | None:
        return await self._db.read(lambda conn: get_account(conn, address))

    async def update(self, address: str, /, **changes: object) -> Account:
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValueError(
                f"accounts.update: no such field(s) {sorted(unknown)}; changeable: "
                f"{sorted(_UPDATABLE)}"
            )
        key = address.lower()

        async def op(conn: Conn) -> Account:
            old = await get_account(conn, key, lock=True)
            if old is None:
                raise AccountNotFound(f"address {address}: no such account")
            new = dataclasses.replace(old, **changes)  # type: ignore[arg-type]
            await conn.execute(
                f"UPDATE accounts SET ({ACCOUNT_COLUMNS}) = ({_ACCOUNT_VALUES}) WHERE key = $17",
                *account_row(new),
                key,
            )
            if new.data_ttl_days != old.data_ttl_days:
                await conn.execute(
                    "UPDATE messages SET expires_at = received_at + $1 WHERE mailbox = $2",
                    new.data_ttl_days * US_PER_DAY,
                    key,
                )
            return new

        return await self._db.write(op)

    async def list(self, domain: str | None = None) -> builtins.list[Account]:
        async def op(conn: Conn) -> builtins.list[Account]:
            if domain is None:
                rows = await conn.fetch(f"SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY key")
            else:
                rows = await conn.fetch(
                    f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE domain = $1 ORDER BY key",
                    domain.lower(),
                )
            return [account_of(row) for row in rows]

        return await self._db.read(op)

    async def purge(self, address: str, /, *, now: datetime) -> Purged:
        key = address.lower()
        when = us(now, "now")

        async def op(conn: Conn) -> Purged:
            account = await require_account(conn, key, lock=True)
            rows = await conn.fetch("DELETE FROM messages WHERE mailbox = $1 RETURNING blob", key)
            kas = await conn.fetch(
                "DELETE FROM kas_attachments WHERE uploader = $1 RETURNING blob", key
            )
            for sql in (
                "DELETE FROM kas_reservations WHERE mailbox = $1",
                "DELETE FROM login_failures WHERE account = $1",
                "DELETE FROM maildrop_locks WHERE mailbox = $1",
                "DELETE FROM auto_replies WHERE mailbox = $1",
                "DELETE FROM otps WHERE address = $1",
                "DELETE FROM accounts WHERE key = $1",
            ):
                await conn.execute(sql, key)
            await conn.execute(
                "INSERT INTO retired_addresses (key, address, telematik_id, purged_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO UPDATE SET "
                "address = excluded.address, telematik_id = excluded.telematik_id, "
                "purged_at = excluded.purged_at",
                key,
                account.address,
                account.telematik_id,
                when,
            )
            await collect_garbage(conn, {r[0] for r in rows} | {r[0] for r in kas})
            return Purged(len(rows), len(kas))

        return await self._db.write(op)

    async def retired_telematik_id(self, address: str) -> str | None:
        async def op(conn: Conn) -> str | None:
            value = await conn.fetchval(
                "SELECT telematik_id FROM retired_addresses WHERE key = $1", address.lower()
            )
            return None if value is None else str(value)

        return await self._db.read(op)


async def _lock_state(conn: Conn, key: str, client: str, *, lock: bool = False) -> LockState | None:
    row = await conn.fetchrow(
        "SELECT failures, locks, locked_until, last_failure FROM login_failures "
        "WHERE account = $1 AND client = $2" + (" FOR UPDATE" if lock else ""),
        key,
        client,
    )
    if row is None:
        return None
    return LockState(
        row["failures"], row["locks"], opt_dt(row["locked_until"]), dt(row["last_failure"])
    )


class PgLogins:
    """`store.base.Logins` of the PostgreSQL store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def state(self, account_key: str, client: str) -> LockState | None:
        return await self._db.read(lambda conn: _lock_state(conn, account_key.lower(), client))

    async def record_failure(
        self, account_key: str, client: str, now: datetime, policy: LockoutPolicy
    ) -> LockState:
        key = account_key.lower()
        when = us(now, "now")

        async def op(conn: Conn) -> LockState:
            old = await _lock_state(conn, key, client, lock=True)
            if old is None:
                new = policy.after_failure(None, now)
                assert new.last_failure is not None
                inserted = await conn.fetchrow(
                    "INSERT INTO login_failures "
                    "(account, client, failures, locks, locked_until, last_failure) "
                    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1",
                    key,
                    client,
                    new.failures,
                    new.locks,
                    opt_us(new.locked_until, "locked_until"),
                    when,
                )
                if inserted is not None:
                    return new
                # another node counted a first failure meanwhile: count on top of it
                old = await _lock_state(conn, key, client, lock=True)
            new = policy.after_failure(old, now)
            assert new.last_failure is not None
            await conn.execute(
                "UPDATE login_failures SET failures = $3, locks = $4, locked_until = $5, "
                "last_failure = $6 WHERE account = $1 AND client = $2",
                key,
                client,
                new.failures,
                new.locks,
                opt_us(new.locked_until, "locked_until"),
                us(new.last_failure, "now"),
            )
            return new

        return await self._db.write(op)

    async def clear(self, account_key: str, client: str | None = None) -> None:
        key = account_key.lower()

        async def op(conn: Conn) -> None:
            if client is None:
                await conn.execute("DELETE FROM login_failures WHERE account = $1", key)
            else:
                await conn.execute(
                    "DELETE FROM login_failures WHERE account = $1 AND client = $2", key, client
                )

        await self._db.write(op)

    async def expire(self, now: datetime, keep: timedelta) -> int:
        limit = us(now, "now")
        cutoff = limit - span_us(keep)

        async def op(conn: Conn) -> int:
            status = await conn.execute(
                "DELETE FROM login_failures WHERE last_failure < $1 "
                "AND (locked_until IS NULL OR locked_until <= $2)",
                cutoff,
                limit,
            )
            return rowcount(status)

        return await self._db.write(op)


def rowcount(status: str) -> int:
    """The row count of a command status (``DELETE 3`` -> 3)."""
    return int(status.rpartition(" ")[2] or 0)
