"""The embedded store's message traces (`store.base.Traces`, issue 15).

An event is one row of ``trace_events`` (its ids, recipients and facts as JSON text, in the
order given) and one row of ``trace_keys`` per id (kind ``id``), per sender (``from``) and per
recipient (``to``), addresses in lower case: the index the trace and the searches use. A trace
is the closure over shared ids, one recursive query (:data:`TRACE_SQL`, the same SQL in the
PostgreSQL backend but for its parameter syntax). Deleting an event deletes its keys (foreign
key, ``ON DELETE CASCADE``). This module must never read a message; it stores what the
recorder hands it.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from ...observe.events import Stage, TraceEvent
from ._db import Database, Tx, dt, us

#: the whole trace of one id, oldest first (``?`` = the id, the limit)
TRACE_SQL = """
WITH RECURSIVE linked(key) AS (
    SELECT ?
    UNION
    SELECT k2.key FROM linked
    JOIN trace_keys k1 ON k1.kind = 'id' AND k1.key = linked.key
    JOIN trace_keys k2 ON k2.event_id = k1.event_id AND k2.kind = 'id'
)
SELECT e.* FROM trace_events e
WHERE e.id IN (
    SELECT k.event_id FROM trace_keys k JOIN linked l ON k.kind = 'id' AND k.key = l.key
)
ORDER BY e.at, e.id
LIMIT ?
"""


def event_values(event: TraceEvent) -> tuple[Any, ...]:
    """The column values of ``trace_events`` (without id) for ``event``, in schema order."""
    return (
        us(event.at, "at"),
        us(event.expires_at, "expires_at"),
        event.node,
        event.component,
        str(event.stage),
        json.dumps(list(event.message_ids)),
        event.sender,
        json.dumps(list(event.recipients)),
        event.result,
        event.size,
        json.dumps(dict(event.facts), sort_keys=True),
        event.detail,
    )


def event_keys(event: TraceEvent) -> Iterator[tuple[str, str]]:
    """(kind, key) rows of ``trace_keys`` for ``event``, each once."""
    seen: set[tuple[str, str]] = set()
    keys = [("id", i) for i in event.message_ids]
    if event.sender:
        keys.append(("from", event.sender.lower()))
    keys += [("to", r.lower()) for r in event.recipients]
    for item in keys:
        if item not in seen:
            seen.add(item)
            yield item


def event_of(row: Any) -> TraceEvent:
    """A ``trace_events`` row (sqlite3.Row or asyncpg Record) as a TraceEvent."""
    return TraceEvent(
        at=dt(row["at"]),
        node=row["node"],
        component=row["component"],
        stage=Stage(row["stage"]),
        message_ids=tuple(json.loads(row["ids"])),
        expires_at=dt(row["expires_at"]),
        sender=row["sender"],
        recipients=tuple(json.loads(row["recipients"])),
        result=row["result"],
        size=row["size"],
        facts=json.loads(row["facts"]),
        detail=row["detail"],
    )


_INSERT = (
    "INSERT INTO trace_events (at, expires_at, node, component, stage, ids, sender, recipients, "
    "result, size, facts, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SQLiteTraces:
    """`store.base.Traces` of the embedded store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, events: Sequence[TraceEvent]) -> None:
        rows = [(event_values(e), list(event_keys(e))) for e in events]
        if not rows:
            return

        def op(tx: Tx) -> None:
            for values, keys in rows:
                event_id = tx.execute(_INSERT, values).lastrowid
                tx.conn.executemany(
                    "INSERT INTO trace_keys (event_id, kind, key) VALUES (?, ?, ?)",
                    [(event_id, kind, key) for kind, key in keys],
                )

        await self._db.write(op)

    async def trace(self, message_id: str, *, limit: int) -> builtins.list[TraceEvent]:
        def op(tx: Tx) -> builtins.list[TraceEvent]:
            return [event_of(r) for r in tx.execute(TRACE_SQL, (message_id, limit))]

        return await self._db.read(op)

    async def search(
        self, *, sender: str | None = None, recipient: str | None = None, limit: int
    ) -> builtins.list[TraceEvent]:
        where, params = search_filters(sender, recipient, "?")

        def op(tx: Tx) -> builtins.list[TraceEvent]:
            rows = tx.execute(
                f"SELECT e.* FROM trace_events e WHERE {where} ORDER BY e.at DESC, e.id DESC "
                "LIMIT ?",
                (*params, limit),
            )
            return [event_of(r) for r in rows]

        return await self._db.read(op)

    async def expire(self, now: datetime) -> int:
        when = us(now, "now")

        def op(tx: Tx) -> int:
            return tx.execute("DELETE FROM trace_events WHERE expires_at <= ?", (when,)).rowcount

        return await self._db.write(op)


def search_filters(
    sender: str | None, recipient: str | None, marker: str | None
) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause of a search and its parameters; ``marker`` is ``?`` (SQLite) or None
    for PostgreSQL's numbered ``$n``. ValueError without any filter (a search for everything
    is not a search)."""
    clauses: list[str] = []
    params: list[str] = []
    for kind, value in (("from", sender), ("to", recipient)):
        if value is None:
            continue
        params.append(value.strip().lower())
        placeholder = marker or f"${len(params)}"
        clauses.append(
            "EXISTS (SELECT 1 FROM trace_keys k WHERE k.event_id = e.id "
            f"AND k.kind = '{kind}' AND k.key = {placeholder})"
        )
    if not clauses:
        raise ValueError("trace search: give a sender or a recipient")
    return " AND ".join(clauses), tuple(params)
