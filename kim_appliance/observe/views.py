"""The message trace as JSON: what the REST admin API, ``kim-appliance trace`` and the console
show (issue 15), read from the store's ``traces``.

:func:`message_trace` is one message, hop by hop, oldest first, found by any of its ids (the
PVS's Message-ID, the KIM Message-ID, with or without angle brackets). :func:`find_messages`
is the console's and the CLI's search: a Message-ID, or an address that sent or received,
answered as a list of messages, newest first, each with its latest hop. Read only; this module
must never show more than the events hold (metadata, no content).
"""

from __future__ import annotations

from typing import Any, Final

from kim_appliance.store import Store, TraceEvent

from .events import is_message_id, message_key

#: the most hops one trace shows (a message to many recipients over several relays has dozens)
MAX_EVENTS: Final = 500
#: the most messages a search lists
MAX_MESSAGES: Final = 50
#: events a search by address looks at to find its messages
_SEARCH_EVENTS: Final = 2000


def trace_key(query: str) -> str:
    """The store key of what a user typed as a message's id (see `events.message_key`)."""
    query = query.strip()
    if query.startswith(("relay:", "stored:")):
        return query
    return message_key(query)


def _ids_of(events: list[TraceEvent]) -> list[str]:
    ids: list[str] = []
    for event in events:
        for key in event.message_ids:
            if is_message_id(key) and key not in ids:
                ids.append(key)
    return ids


async def message_trace(
    store: Store, message_id: str, *, limit: int = MAX_EVENTS
) -> dict[str, Any] | None:
    """The trace of the message ``message_id`` (None: nothing is known of it)."""
    events = await store.traces.trace(trace_key(message_id), limit=limit)
    if not events:
        return None
    ids = _ids_of(events)
    return {
        "message_id": ids[0] if ids else trace_key(message_id),
        "message_ids": ids,
        "events": [e.to_json() for e in events],
    }


def _summary(message_id: str, events: list[TraceEvent]) -> dict[str, Any]:
    first, last = events[0], events[-1]
    sender = next((e.sender for e in events if e.sender), None)
    recipients: list[str] = []
    for event in events:
        if event.stage in ("accepted", "sealed"):
            recipients += [r for r in event.recipients if r not in recipients]
    return {
        "message_id": message_id,
        "sender": sender,
        "recipients": recipients or list(first.recipients),
        "first": first.at.isoformat(),
        "last": last.at.isoformat(),
        "stage": str(last.stage),
        "result": last.result,
        "component": last.component,
        "hops": len(events),
    }


async def find_messages(
    store: Store,
    *,
    query: str | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    limit: int = MAX_MESSAGES,
) -> list[dict[str, Any]]:
    """The messages matching ``query`` (a Message-ID, or an address as sender or recipient),
    or ``sender`` and/or ``recipient``; newest first, at most ``limit``."""
    found: list[TraceEvent] = []
    if query is not None:
        query = query.strip()
        if not query:
            return []
        trace = await store.traces.trace(trace_key(query), limit=MAX_EVENTS)
        if trace:
            ids = _ids_of(trace)
            return [_summary(ids[0] if ids else trace_key(query), trace)]
        if "@" not in query or "<" in query:
            return []
        found = await store.traces.search(sender=query, limit=_SEARCH_EVENTS)
        found += await store.traces.search(recipient=query, limit=_SEARCH_EVENTS)
        found.sort(key=lambda e: e.at, reverse=True)
    elif sender is not None or recipient is not None:
        found = await store.traces.search(sender=sender, recipient=recipient, limit=_SEARCH_EVENTS)
    messages: list[str] = []
    for event in found:
        key = next((k for k in event.message_ids if is_message_id(k)), None)
        if key is not None and key not in messages:
            messages.append(key)
        if len(messages) >= limit:
            break
    result: list[dict[str, Any]] = []
    seen: set[str] = set()
    for key in messages:
        if key in seen:
            continue  # the PVS's and the KIM Message-ID of one message
        trace = await store.traces.trace(key, limit=MAX_EVENTS)
        ids = _ids_of(trace)
        seen.update(ids)
        if trace:
            result.append(_summary(ids[0] if ids else key, trace))
    result.sort(key=lambda m: str(m["last"]), reverse=True)
    return result
