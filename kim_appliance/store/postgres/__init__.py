"""The PostgreSQL `Store`: every piece of the appliance's state in one PostgreSQL database, shared
by every node that opens it (issue 12, the cluster backend).

Chosen by a URL ``postgresql://USER[:PASSWORD]@HOST:PORT/DB`` (``--store`` or ``[store] url``).
The driver is asyncpg, run from trio through trio-asyncio: `open_postgres_store` opens a
trio-asyncio loop for the store's lifetime and a pool of connections on it, and every store
operation is one asyncio coroutine (one hop, ``_db``). At open the schema is created or migrated
(``_schema``: versioned, one node at a time by a lock row), and a background task sweeps
abandoned blobs every :data:`SWEEP_INTERVAL` (``_blobs`` rule 4). Unlike the embedded store,
opening does not drop relay claims, maildrop locks or upload reservations: other nodes may be
using them, so they lapse with their leases instead.

The SQL is kept to what PostgreSQL-compatible engines (CockroachDB, YugabyteDB, and the
PostgreSQL-protocol services built on PostgreSQL itself) share: plain tables, BIGINT times,
BYTEA chunk rows instead of large objects, row locks (``FOR UPDATE``, ``FOR UPDATE SKIP
LOCKED``) and lease rows instead of advisory locks, no LISTEN/NOTIFY, no extensions. Only
PostgreSQL 15 is tested here. This package must never print or log a password: every message
names the store by its masked URL (:func:`mask_url`). asyncpg and trio-asyncio are imported
only when a PostgreSQL URL is opened, so the embedded default pays nothing for them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import trio
import trio_asyncio

from .. import check_url
from ..base import StoreError, StoreUnavailable
from ..sqlite._db import us
from ._accounts import PgAccounts, PgLogins
from ._blobs import CHUNK_SIZE, SWEEP_AGE, PgBlobs, sweep_blobs
from ._db import (
    ACQUIRE_TIMEOUT_S,
    COMMAND_TIMEOUT_S,
    POOL_MAX_SIZE,
    POOL_MIN_SIZE,
    Conn,
    Database,
    mask_url,
    secrets_of,
)
from ._kas import PgKas
from ._mail import PgMail, PgRelay
from ._misc import (
    PgAutoReplies,
    PgDirectory,
    PgMaildrops,
    PgMeta,
    PgNodes,
    PgRegistrations,
)
from ._schema import SCHEMA_VERSION, migrate
from ._traces import PgTraces

#: how often every node sweeps abandoned blobs (each sweep removes those older than SWEEP_AGE)
SWEEP_INTERVAL_S = 600.0
log = logging.getLogger("kim_appliance.store")

__all__ = [
    "CHUNK_SIZE",
    "SCHEMA_VERSION",
    "SWEEP_AGE",
    "PostgresStore",
    "mask_url",
    "open_postgres_store",
]


class PostgresStore:
    """`store.base.Store` on PostgreSQL. Open it with :func:`open_postgres_store`."""

    def __init__(self, db: Database, instance: str) -> None:
        self.db = db
        self.accounts = PgAccounts(db)
        self.logins = PgLogins(db)
        self.blobs = PgBlobs(db)
        self.mail = PgMail(db, instance)
        self.relay = PgRelay(db)
        self.kas = PgKas(db)
        self.autoreplies = PgAutoReplies(db)
        self.registrations = PgRegistrations(db)
        self.maildrops = PgMaildrops(db)
        self.directory = PgDirectory(db)
        self.nodes = PgNodes(db)
        self.meta = PgMeta(db)
        self.traces = PgTraces(db)

    @property
    def description(self) -> str:
        return f"PostgreSQL store {self.db.where}"

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.db.close()

    async def sweep(self, age: timedelta = SWEEP_AGE) -> int:
        """Remove the blobs nothing references that no writer touched for ``age``; how many
        (``_blobs`` rule 4; runs by itself every SWEEP_INTERVAL_S)."""
        return await sweep_blobs(self.db, age)

    async def _sweep_forever(self) -> None:
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            try:
                removed = await self.sweep()
            except StoreError as exc:
                log.warning("store: blob sweep failed (%s); trying again later", exc)
                continue
            if removed:
                log.info("store: swept %d abandoned blobs", removed)


async def _create_pool(loop: Any, url: str, where: str, hidden: list[str]) -> Any:
    """The connection pool (asyncio side), errors as the store's."""
    probe = Database(None, loop, where, hidden)

    async def create() -> Any:
        try:
            return await asyncpg.create_pool(
                dsn=url,
                min_size=POOL_MIN_SIZE,
                max_size=POOL_MAX_SIZE,
                timeout=ACQUIRE_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
                server_settings={"application_name": "kim-appliance"},
            )
        except asyncpg.PostgresError as exc:
            raise probe.translate(exc) from exc
        except (asyncpg.InterfaceError, ValueError) as exc:
            raise StoreError(f"store {where}: {probe._scrub(exc)}") from exc
        except (OSError, TimeoutError) as exc:
            raise StoreUnavailable(
                f"store {where}: cannot connect ({probe._scrub(exc)}); is the server running?"
            ) from exc

    return await loop.run_aio_coroutine(create())


@asynccontextmanager
async def open_postgres_store(url: str, *, sweep: bool = True) -> AsyncIterator[PostgresStore]:
    """The PostgreSQL store at ``url`` (schema created or migrated), closed when the block ends.

    `StoreUnavailable` when the server cannot be reached; `StoreError` for a malformed URL,
    refused credentials, or a database of a newer schema (nothing is changed then). An error
    leaves the block as itself, as from the embedded store, not wrapped in the exception group
    of the nurseries inside (trio-asyncio's loop, the sweeper). ``sweep=False``: no blob sweep
    (`store copy` writes blobs long before the rows that reference them)."""
    check_url(url)
    try:
        async with _open(url, sweep) as store:
            yield store
    except BaseExceptionGroup as group:
        leaf = _only(group)
        if leaf is None:
            raise
        raise leaf from leaf.__cause__


def _only(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside (nested) groups of one, else None."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup):
        if len(inner.exceptions) != 1:
            return None
        inner = inner.exceptions[0]
    return inner


@asynccontextmanager
async def _open(url: str, sweep: bool) -> AsyncIterator[PostgresStore]:
    where = mask_url(url)
    hidden = secrets_of(url)
    async with trio_asyncio.open_loop() as loop:
        pool = await _create_pool(loop, url, where, hidden)
        db = Database(pool, loop, where, hidden)
        try:
            now = us(datetime.now(UTC), "now")

            async def prepare(conn: Conn) -> str:
                before = await migrate(conn, where, now)
                if before < SCHEMA_VERSION:
                    log.info(
                        "store: %s migrated from schema %d to %d", where, before, SCHEMA_VERSION
                    )
                await conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('instance', $1) ON CONFLICT DO NOTHING",
                    secrets.token_hex(4),
                )
                value = await conn.fetchval("SELECT value FROM meta WHERE name = 'instance'")
                return str(value)

            instance = await db.run(db.plain(prepare))
            store = PostgresStore(db, instance)
            if sweep:
                await store.sweep()
            async with trio.open_nursery() as nursery:
                if sweep:
                    nursery.start_soon(store._sweep_forever)
                try:
                    yield store
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await db.close()
