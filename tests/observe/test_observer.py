"""The observer (issue 15): a hop updates the metrics at once and reaches the store in batches;
recording never blocks or fails the message, whatever the store does."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
import trio

from kim_appliance.observe import Stage, TraceEvent, message_key, relay_key
from kim_appliance.observe.observer import Observer


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[TraceEvent]] = []
        self.fail = fail

    async def write(self, events: Sequence[TraceEvent]) -> None:
        if self.fail:
            raise OSError("database gone")
        self.batches.append(list(events))


def sample(observer: Observer, name: str, **labels: str) -> float:
    value = observer.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_hop_is_counted_and_written_in_one_batch() -> None:
    sink = Sink()
    observer = Observer(sink, node="n1")
    async with trio.open_nursery() as nursery:
        await nursery.start(observer.run)
        for _ in range(3):
            observer.record(
                "fachdienst",
                Stage.STORED,
                domain="fd1.kim.telematik-test",
                ids=["abc@x", "<abc@x>", None, relay_key("<0A@fd1>")],
                result=250,
                duration=0.02,
            )
        assert await observer.flush()
        nursery.cancel_scope.cancel()
    assert [len(b) for b in sink.batches] == [3]  # queued together: one store call
    event = sink.batches[0][0]
    assert event.message_ids == (message_key("abc@x"), "relay:0a")
    assert event.component == "fachdienst fd1.kim.telematik-test"
    assert event.node == "n1"
    assert event.result == "250"
    labels = {"component": "fachdienst", "domain": "fd1.kim.telematik-test", "stage": "stored"}
    assert sample(observer, "kim_messages_total", **labels, result="250") == 3
    assert (
        sample(observer, "kim_stage_duration_seconds_count", component="fachdienst", stage="stored")
        == 3
    )
    assert sample(observer, "kim_trace_events_written_total") == 3


async def test_a_failing_store_drops_the_batch_and_recording_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink(fail=True)
    observer = Observer(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(observer.run)
        observer.record("clientmodul", Stage.SEALED, ids=["<m@x>"])
        assert await observer.flush()
        sink.fail = False
        observer.record("clientmodul", Stage.SUBMITTED, ids=["<m@x>"], result=250)
        assert await observer.flush()
        nursery.cancel_scope.cancel()
    assert [e.stage for b in sink.batches for e in b] == [Stage.SUBMITTED]
    assert sample(observer, "kim_trace_events_dropped_total") == 1
    assert "1 event(s) dropped: the store refused them: database gone" in caplog.text


async def test_a_full_queue_drops_new_events_without_blocking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing writes (the store hangs): the hot path still returns at once."""
    caplog.set_level(logging.WARNING)
    observer = Observer(Sink(), max_pending=2)
    for _ in range(5):
        observer.record("clientmodul", Stage.ACCEPTED, ids=["<m@x>"])
    assert sample(observer, "kim_trace_events_dropped_total") == 3
    assert sample(observer, "kim_messages_total", component="clientmodul", domain="",
                  stage="accepted", result="") == 5  # fmt: skip
    assert caplog.text.count("dropped") == 1  # logged once, not per event
    assert not await observer.flush(timeout=0.05)  # no writer runs


async def test_events_recorded_in_a_worker_thread_reach_the_store() -> None:
    sink = Sink()
    observer = Observer(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(observer.run)
        await trio.to_thread.run_sync(
            lambda: observer.record("clientmodul", Stage.OPENED, ids=["<t@x>"], result="00")
        )
        assert await observer.flush()
        nursery.cancel_scope.cancel()
    assert [e.result for b in sink.batches for e in b] == ["00"]


def test_metrics_only_without_a_sink_and_sessions_are_counted() -> None:
    observer = Observer()
    with observer.session("fachdienst", "pop3"):
        assert sample(observer, "kim_sessions", component="fachdienst", protocol="pop3") == 1
    assert sample(observer, "kim_sessions", component="fachdienst", protocol="pop3") == 0
    observer.auth_result("fd1", ok=False, locked=True)
    observer.auth_result("fd1", ok=True, locked=False)
    observer.kas_bytes("fd1", "upload", 1000)
    assert sample(observer, "kim_auth_failures_total", domain="fd1") == 1
    assert sample(observer, "kim_auth_lockouts_total", domain="fd1") == 1
    assert sample(observer, "kim_kas_bytes_total", domain="fd1", direction="upload") == 1000


def test_two_observers_do_not_share_metrics() -> None:
    """One registry per appliance: tests start several appliances in one process."""
    a, b = Observer(), Observer()
    a.record("clientmodul", Stage.ACCEPTED, ids=[])
    assert sample(b, "kim_messages_total", component="clientmodul", domain="",
                  stage="accepted", result="") == 0  # fmt: skip
