"""Observing the appliance (issue 15): message traces and metrics.

:mod:`.events` is the trace's plain data (every component and the store may import it);
:mod:`.observer` the one recorder per appliance that turns each hop into a trace event for the
store and into Prometheus metrics. This package must never import a component (Clientmodul,
Fachdienst) or a store backend: they reach it, not it them.
"""

from __future__ import annotations

from .events import (
    CLIENTMODUL,
    FACHDIENST,
    Stage,
    TraceEvent,
    is_message_id,
    message_key,
    relay_key,
    stored_key,
)

__all__ = [
    "CLIENTMODUL",
    "FACHDIENST",
    "Stage",
    "TraceEvent",
    "is_message_id",
    "message_key",
    "relay_key",
    "stored_key",
]
