"""The appliance's one observer: every hop becomes a trace event for the store and a metric.

Issue 15: the Clientmodul and the Fachdienst call :meth:`Observer.record` once per hop of a
message (accepted, sealed, stored, relayed, fetched, opened, ...). The call updates the
Prometheus metrics at once and hands the event to a bounded in-memory queue; a background
task (:meth:`Observer.run`) writes what has queued up to the store in batches, one store call
per batch, so recording costs the hot path no thread hop and no wait. Sessions, login failures
and lockouts, KAS bytes and the relay queue (set at scrape time by whoever serves
``/metrics``) are metrics only.

One observer per appliance, each with its own :class:`prometheus_client.CollectorRegistry`
(never the library's global one: tests run several appliances in one process).

Error handling: recording must never fail a message. A full queue drops the event (counted in
``kim_trace_events_dropped_total`` and logged at most once a minute); a store write that fails
is logged and its batch dropped; the writer goes on with the next batch. Resource handling: at
most :data:`MAX_PENDING` events wait in memory. This module must never import a component or a
store backend, and never put content (subject, body) into an event: callers pass metadata.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .events import Stage, TraceEvent, message_key

#: events waiting for the store at most; beyond, new events are dropped (and counted)
MAX_PENDING: Final = 10_000
#: events per store write at most
MAX_BATCH: Final = 500
#: after the first event of a batch, the writer waits this long for more (one write for the
#: hops of several messages; a trace read flushes first, so it only delays the admin view)
GATHER_S: Final = 0.05
#: a stopping writer still writes its gathered events, for at most this long
STOP_WRITE_S: Final = 2.0
#: a dropped event or failed write is logged at most this often
LOG_INTERVAL_S: Final = 60.0
#: the trace's retention when the caller names none (dataTimeToLive's default, digest §3.2)
DEFAULT_KEEP: Final = timedelta(days=90)
#: histogram buckets of the stage durations: from a local delivery to a 25 MB relay
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

log = logging.getLogger("kim_appliance.observe")


class TraceSink(Protocol):
    """Where trace events go (the store's ``traces.add``; kim_appliance.adapters.trace)."""

    async def write(self, events: Sequence[TraceEvent]) -> None: ...


class Metrics:
    """The metric families of one appliance in their own registry (see the module docstring).

    Label values are few: component (``clientmodul``, ``fachdienst``), the Fachdienst's domain
    (empty for the Clientmodul), the trace stage, a result code, a protocol, a direction.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "kim_messages",
            "Messages per component, stage and result code (one per hop of the message trace)",
            ["component", "domain", "stage", "result"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "kim_stage_duration_seconds",
            "How long a stage took (sealing, the Fachdienst's accept, a relay attempt, opening)",
            ["component", "stage"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.sessions = Gauge(
            "kim_sessions", "Open SMTP/POP3 sessions", ["component", "protocol"], registry=r
        )
        self.sessions_started = Counter(
            "kim_sessions_started",
            "SMTP/POP3 sessions since the start",
            ["component", "protocol"],
            registry=r,
        )
        self.auth_failures = Counter(
            "kim_auth_failures",
            "Failed logins at a Fachdienst (wrong password, unknown account, locked)",
            ["domain"],
            registry=r,
        )
        self.lockouts = Counter(
            "kim_auth_lockouts",
            "Accounts locked for a client after too many failures (KOM-LE-A_2167)",
            ["domain"],
            registry=r,
        )
        self.kas_bytes = Counter(
            "kim_kas_bytes",
            "Bytes stored in and served by the KAS (encrypted attachments, digest §3.5)",
            ["domain", "direction"],
            registry=r,
        )
        self.relay_entries = Gauge(
            "kim_relay_queue_entries",
            "Messages waiting in a Fachdienst's relay queue (at scrape time)",
            ["domain"],
            registry=r,
        )
        self.relay_oldest = Gauge(
            "kim_relay_queue_oldest_seconds",
            "Age of the oldest message in a Fachdienst's relay queue (0 when empty)",
            ["domain"],
            registry=r,
        )
        self.trace_written = Counter(
            "kim_trace_events_written", "Trace events written to the store", registry=r
        )
        self.trace_dropped = Counter(
            "kim_trace_events_dropped",
            "Trace events lost (queue full or store failing); the messages were not affected",
            registry=r,
        )


class Observer:
    """The recorder of one appliance (see the module docstring).

    ``sink`` receives the events (None: metrics only, e.g. a Clientmodul built in a test);
    ``node`` names this process in every event (set by the appliance from the same place as
    ``Fachdienst.node``); ``keep`` is the default retention of an event.
    """

    def __init__(
        self,
        sink: TraceSink | None = None,
        *,
        node: str = "local",
        keep: timedelta = DEFAULT_KEEP,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.sink = sink
        self.node = node
        self.keep = keep
        self.metrics = Metrics()
        self._send, self._receive = trio.open_memory_channel[TraceEvent](max_pending)
        self._token: trio.lowlevel.TrioToken | None = None
        self._queued = 0
        self._done = 0
        self._progress = trio.Event()
        self._last_complaint = -math.inf

    # --- recording -------------------------------------------------------------------------

    def record(
        self,
        component: str,
        stage: Stage,
        *,
        ids: Sequence[str | None],
        domain: str | None = None,
        sender: str | None = None,
        recipients: Sequence[str] = (),
        result: str | int | None = None,
        size: int | None = None,
        facts: Mapping[str, str] | None = None,
        detail: str = "",
        duration: float | None = None,
        expires_at: datetime | None = None,
    ) -> TraceEvent:
        """One hop: the metrics now, the trace event to the store soon. ``ids`` are
        Message-IDs as the mails carry them (None and duplicates are skipped; normalised by
        `message_key`) or keys made by `relay_key`/`stored_key`. ``component`` is
        ``clientmodul`` or ``fachdienst`` (with ``domain``). Never raises for a full queue or
        a missing store; returns the event (for tests and logs)."""
        now = datetime.now(UTC)
        keys: list[str] = []
        for raw in ids:
            if not raw:
                continue
            key = raw if raw.startswith(("relay:", "stored:")) else message_key(raw)
            if key not in keys:
                keys.append(key)
        name = f"{component} {domain}" if domain else component
        code = None if result is None else str(result)
        event = TraceEvent(
            at=now,
            node=self.node,
            component=name,
            stage=stage,
            message_ids=tuple(keys),
            expires_at=expires_at or now + self.keep,
            sender=sender or None,
            recipients=tuple(recipients),
            result=code,
            size=size,
            facts=dict(facts or {}),
            detail=detail,
            duration=duration,
        )
        m = self.metrics
        m.messages.labels(component, domain or "", str(stage), code or "").inc()
        if duration is not None:
            m.stage_seconds.labels(component, str(stage)).observe(duration)
        if self.sink is not None:
            self._enqueue(event)
        return event

    def _enqueue(self, event: TraceEvent) -> None:
        if not trio.lowlevel.in_trio_run():
            # a worker thread: hand it to the event loop (rare; the hot paths record there)
            if self._token is None:
                self._dropped(1, "recorded outside the event loop before the writer started")
                return
            trio.from_thread.run_sync(self._enqueue, event, trio_token=self._token)
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self._dropped(1, f"more than {MAX_PENDING} events wait for the store")
            return
        self._queued += 1

    def auth_result(self, domain: str, *, ok: bool, locked: bool) -> None:
        """A login at a Fachdienst: a failure counts, and a failure that locked the account for
        the client counts as a lockout too."""
        if not ok:
            self.metrics.auth_failures.labels(domain).inc()
            if locked:
                self.metrics.lockouts.labels(domain).inc()

    def kas_bytes(self, domain: str, direction: str, size: int) -> None:
        """``direction``: ``upload`` (stored in the KAS) or ``download`` (served from it)."""
        self.metrics.kas_bytes.labels(domain, direction).inc(size)

    def relay_queue(self, domain: str, entries: int, oldest: datetime | None) -> None:
        """The relay queue of ``domain`` as the store reports it (called at scrape time)."""
        self.metrics.relay_entries.labels(domain).set(entries)
        age = 0.0 if oldest is None else max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        self.metrics.relay_oldest.labels(domain).set(age)

    @contextmanager
    def session(self, component: str, protocol: str) -> Iterator[None]:
        """Count an open session of ``component`` (``clientmodul``/``fachdienst``)."""
        self.metrics.sessions_started.labels(component, protocol).inc()
        gauge = self.metrics.sessions.labels(component, protocol)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    # --- writing ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued events to the sink in batches until cancelled (a supervised task)."""
        if self.sink is None:
            raise RuntimeError("Observer.run: no sink to write to")
        self._token = trio.lowlevel.current_trio_token()
        task_status.started()
        while True:
            batch = [await self._receive.receive()]
            try:
                # the events of the next few hops join this write (issue 13: one store write
                # for several messages instead of one per hop)
                await trio.sleep(GATHER_S)
            except trio.Cancelled:
                # stopping: write what was recorded, unless the store takes too long
                with trio.move_on_after(STOP_WRITE_S, shield=True):
                    await self._write(self._drain(batch))
                raise
            await self._write(self._drain(batch))

    def _drain(self, batch: list[TraceEvent]) -> list[TraceEvent]:
        """``batch`` and what else is queued, up to MAX_BATCH events."""
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    async def _write(self, batch: list[TraceEvent]) -> None:
        assert self.sink is not None
        try:
            await self.sink.write(batch)
        except Exception as exc:  # the store failing must not stop the recording
            self._dropped(len(batch), f"the store refused them: {exc}")
        else:
            self.metrics.trace_written.inc(len(batch))
        finally:
            self._done += len(batch)
            self._progress.set()
            self._progress = trio.Event()

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event recorded before this call has been written (or dropped);
        False if that took longer than ``timeout`` seconds (no writer running, store slow).
        The admin API calls it before it reads a trace, so a trace is complete up to now."""
        target = self._queued
        with trio.move_on_after(timeout):
            while self._done < target:
                await self._progress.wait()
            return True
        return False

    def _dropped(self, count: int, why: str) -> None:
        self.metrics.trace_dropped.inc(count)
        now = time.monotonic()
        if now - self._last_complaint >= LOG_INTERVAL_S:
            self._last_complaint = now
            log.warning("message trace: %d event(s) dropped: %s", count, why)
