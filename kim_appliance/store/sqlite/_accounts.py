"""The embedded store's accounts, tombstones and failed-login counters (see `store.base`).

Each public coroutine is one transaction in one worker-thread call (``_db.Database``). This
module must never check a password or decide a lockout; `LockoutPolicy` does the arithmetic.
"""

from __future__ import annotations

import builtins
import dataclasses
import sqlite3
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
from ._db import US_PER_DAY, Database, Tx, dt, opt_dt, opt_us, span_us, us

ACCOUNT_COLUMNS = (
    "key, domain, address, password_hash, telematik_id, display_name, status, quota_bytes, "
    "data_ttl_days, kim_version, dereg_date, no_vzd_mail_entry, "
    "ooo_active, ooo_start, ooo_end, ooo_message"
)
_ACCOUNT_VALUES = ",".join("?" * 16)
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
        int(a.no_vzd_mail_entry),
        int(o.active),
        opt_us(o.start, "out_of_office.start"),
        opt_us(o.end, "out_of_office.end"),
        o.message,
    )


def account_of(row: sqlite3.Row) -> Account:
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
        no_vzd_mail_entry=bool(row["no_vzd_mail_entry"]),
        out_of_office=OutOfOffice(
            active=bool(row["ooo_active"]),
            start=opt_dt(row["ooo_start"]),
            end=opt_dt(row["ooo_end"]),
            message=row["ooo_message"],
        ),
    )


def get_account(tx: Tx, address: str) -> Account | None:
    row = tx.one(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE key = ?", (address.lower(),))
    return None if row is None else account_of(row)


def require_account(tx: Tx, address: str) -> Account:
    account = get_account(tx, address)
    if account is None:
        raise AccountNotFound(f"mailbox {address}: no such account")
    return account


def insert_account(tx: Tx, account: Account) -> None:
    try:
        tx.execute(
            f"INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES ({_ACCOUNT_VALUES})",
            account_row(account),
        )
    except sqlite3.IntegrityError:
        raise AccountExists(f"address {account.address}: account exists") from None


class SQLiteAccounts:
    """`store.base.Accounts` of the embedded store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, account: Account, *, reference_id: str | None = None) -> None:
        def op(tx: Tx) -> None:
            insert_account(tx, account)
            if reference_id is None:
                return
            cur = tx.execute(
                "UPDATE registration_codes SET used_by = ?, used_key = ? "
                "WHERE domain = ? AND reference_id = ? AND used_by IS NULL",
                (account.address, account.key, account.domain, reference_id),
            )
            if cur.rowcount != 1:
                raise RegistrationCodeUsed(
                    f"referenceID {reference_id!r}: unknown at {account.domain} or used already"
                )

        await self._db.write(op)

    async def get(self, address: str) -> Account | None:
        return await self._db.read(lambda tx: get_account(tx, address))

    async def update(self, address: str, /, **changes: object) -> Account:
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValueError(
                f"accounts.update: no such field(s) {sorted(unknown)}; changeable: "
                f"{sorted(_UPDATABLE)}"
            )
        key = address.lower()

        def op(tx: Tx) -> Account:
            old = get_account(tx, key)
            if old is None:
                raise AccountNotFound(f"address {address}: no such account")
            new = dataclasses.replace(old, **changes)  # type: ignore[arg-type]
            tx.execute(
                f"UPDATE accounts SET ({ACCOUNT_COLUMNS}) = ({_ACCOUNT_VALUES}) WHERE key = ?",
                (*account_row(new), key),
            )
            if new.data_ttl_days != old.data_ttl_days:
                tx.execute(
                    "UPDATE messages SET expires_at = received_at + ? WHERE mailbox = ?",
                    (new.data_ttl_days * US_PER_DAY, key),
                )
            return new

        return await self._db.write(op)

    async def list(self, domain: str | None = None) -> builtins.list[Account]:
        def op(tx: Tx) -> builtins.list[Account]:
            if domain is None:
                rows = tx.execute(f"SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY key")
            else:
                rows = tx.execute(
                    f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE domain = ? ORDER BY key",
                    (domain.lower(),),
                )
            return [account_of(row) for row in rows]

        return await self._db.read(op)

    async def purge(self, address: str, /, *, now: datetime) -> Purged:
        key = address.lower()
        when = us(now, "now")

        def op(tx: Tx) -> Purged:
            account = require_account(tx, key)
            rows = tx.execute(
                "DELETE FROM messages WHERE mailbox = ? RETURNING blob", (key,)
            ).fetchall()
            kas = tx.execute(
                "DELETE FROM kas_attachments WHERE uploader = ? RETURNING blob", (key,)
            ).fetchall()
            for sql in (
                "DELETE FROM kas_reservations WHERE mailbox = ?",
                "DELETE FROM login_failures WHERE account = ?",
                "DELETE FROM maildrop_locks WHERE mailbox = ?",
                "DELETE FROM auto_replies WHERE mailbox = ?",
                "DELETE FROM otps WHERE address = ?",
                "DELETE FROM accounts WHERE key = ?",
            ):
                tx.execute(sql, (key,))
            tx.execute(
                "INSERT OR REPLACE INTO retired_addresses (key, address, telematik_id, purged_at)"
                " VALUES (?, ?, ?, ?)",
                (key, account.address, account.telematik_id, when),
            )
            tx.collect_garbage({r[0] for r in rows} | {r[0] for r in kas})
            return Purged(len(rows), len(kas))

        return await self._db.write(op)

    async def retired_telematik_id(self, address: str) -> str | None:
        def op(tx: Tx) -> str | None:
            row = tx.one(
                "SELECT telematik_id FROM retired_addresses WHERE key = ?", (address.lower(),)
            )
            return None if row is None else str(row[0])

        return await self._db.read(op)


def _lock_state(tx: Tx, key: str, client: str) -> LockState | None:
    row = tx.one(
        "SELECT failures, locks, locked_until, last_failure FROM login_failures "
        "WHERE account = ? AND client = ?",
        (key, client),
    )
    if row is None:
        return None
    return LockState(
        row["failures"], row["locks"], opt_dt(row["locked_until"]), dt(row["last_failure"])
    )


class SQLiteLogins:
    """`store.base.Logins` of the embedded store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def state(self, account_key: str, client: str) -> LockState | None:
        return await self._db.read(lambda tx: _lock_state(tx, account_key.lower(), client))

    async def record_failure(
        self, account_key: str, client: str, now: datetime, policy: LockoutPolicy
    ) -> LockState:
        key = account_key.lower()

        def op(tx: Tx) -> LockState:
            new = policy.after_failure(_lock_state(tx, key, client), now)
            assert new.last_failure is not None
            tx.execute(
                "INSERT OR REPLACE INTO login_failures "
                "(account, client, failures, locks, locked_until, last_failure) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key,
                    client,
                    new.failures,
                    new.locks,
                    opt_us(new.locked_until, "locked_until"),
                    us(new.last_failure, "now"),
                ),
            )
            return new

        return await self._db.write(op)

    async def clear(self, account_key: str, client: str | None = None) -> None:
        key = account_key.lower()

        def op(tx: Tx) -> None:
            if client is None:
                tx.execute("DELETE FROM login_failures WHERE account = ?", (key,))
            else:
                tx.execute(
                    "DELETE FROM login_failures WHERE account = ? AND client = ?", (key, client)
                )

        await self._db.write(op)

    async def expire(self, now: datetime, keep: timedelta) -> int:
        limit = us(now, "now")
        cutoff = limit - span_us(keep)

        def op(tx: Tx) -> int:
            cur = tx.execute(
                "DELETE FROM login_failures WHERE last_failure < ? "
                "AND (locked_until IS NULL OR locked_until <= ?)",
                (cutoff, limit),
            )
            return cur.rowcount

        return await self._db.write(op)
