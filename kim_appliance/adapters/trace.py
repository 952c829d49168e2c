"""The trace sink of an appliance: the observer's batches go to the store's ``traces.add``.

The Clientmodul and the Fachdienst record hops through :class:`kim_appliance.observe.observer.
Observer` only; this adapter is the one place that connects the observer to the store (the
appliance wires it), so the Clientmodul never imports the store (issue 14). It must never
change an event.
"""

from __future__ import annotations

from collections.abc import Sequence

from kim_appliance.observe import TraceEvent
from kim_appliance.store import Store


class StoreTraceSink:
    """Writes trace events to ``store.traces`` (one store call per batch)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def write(self, events: Sequence[TraceEvent]) -> None:
        await self._store.traces.add(events)
