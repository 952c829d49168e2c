"""The PostgreSQL store's message traces (`store.base.Traces`, issue 15).

The same tables, keys and queries as the embedded store (``store.sqlite._traces``: one row per
event, one ``trace_keys`` row per id, sender and recipient; a trace is the closure over shared
ids in one recursive query), in PostgreSQL's parameter syntax. Each coroutine is one
transaction in one trio-to-asyncio hop; a batch of events is one transaction. This module must
never read a message; it stores what the recorder hands it.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime

from ...observe.events import TraceEvent
from ..sqlite._db import us
from ..sqlite._traces import TRACE_SQL, event_keys, event_of, event_values, search_filters
from ._accounts import rowcount
from ._db import Conn, Database

_TRACE_SQL = TRACE_SQL.replace("SELECT ?", "SELECT $1::text").replace("LIMIT ?", "LIMIT $2")
_INSERT = (
    "INSERT INTO trace_events (at, expires_at, node, component, stage, ids, sender, recipients, "
    "result, size, facts, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
    "RETURNING id"
)


class PgTraces:
    """`store.base.Traces` of the PostgreSQL store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, events: Sequence[TraceEvent]) -> None:
        rows = [(event_values(e), list(event_keys(e))) for e in events]
        if not rows:
            return

        async def op(conn: Conn) -> None:
            for values, keys in rows:
                event_id = await conn.fetchval(_INSERT, *values)
                await conn.executemany(
                    "INSERT INTO trace_keys (event_id, kind, key) VALUES ($1, $2, $3)",
                    [(event_id, kind, key) for kind, key in keys],
                )

        await self._db.write(op)

    async def trace(self, message_id: str, *, limit: int) -> builtins.list[TraceEvent]:
        async def op(conn: Conn) -> builtins.list[TraceEvent]:
            return [event_of(r) for r in await conn.fetch(_TRACE_SQL, message_id, limit)]

        return await self._db.read(op)

    async def search(
        self, *, sender: str | None = None, recipient: str | None = None, limit: int
    ) -> builtins.list[TraceEvent]:
        where, params = search_filters(sender, recipient, None)
        sql = (
            f"SELECT e.* FROM trace_events e WHERE {where} ORDER BY e.at DESC, e.id DESC "
            f"LIMIT ${len(params) + 1}"
        )

        async def op(conn: Conn) -> builtins.list[TraceEvent]:
            return [event_of(r) for r in await conn.fetch(sql, *params, limit)]

        return await self._db.read(op)

    async def expire(self, now: datetime) -> int:
        when = us(now, "now")

        async def op(conn: Conn) -> int:
            return rowcount(
                await conn.execute("DELETE FROM trace_events WHERE expires_at <= $1", when)
            )

        return await self._db.write(op)
