"""The interpreter settings of a running appliance (issue 13, round 3): what `run` applies."""

from __future__ import annotations

import gc
import sys
import threading

import trio
from trio._core import _thread_cache

from kim_appliance.serving.interpreter import (
    GC_YOUNG_THRESHOLD,
    SWITCH_INTERVAL_S,
    freeze_startup_heap,
    tune_interpreter,
)


def test_tuning_sets_the_switch_interval_the_collector_and_trio_thread_names() -> None:
    """The GIL is handed back to the event loop within SWITCH_INTERVAL_S, young collections
    are rarer, and a worker job no longer renames its OS thread (Python's name still shows the
    job, for logs and tracebacks)."""
    interval, threshold = sys.getswitchinterval(), gc.get_threshold()
    namer = _thread_cache.set_os_thread_name
    try:
        tune_interpreter()
        assert sys.getswitchinterval() == SWITCH_INTERVAL_S
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert _thread_cache.set_os_thread_name is None

        async def main() -> str:
            return await trio.to_thread.run_sync(
                lambda: threading.current_thread().name, thread_name="the job"
            )

        assert trio.run(main) == "the job"
    finally:
        sys.setswitchinterval(interval)
        gc.set_threshold(*threshold)
        _thread_cache.set_os_thread_name = namer


def test_the_startup_heap_is_frozen() -> None:
    """What start-up allocated leaves the collector's generations (gc.freeze)."""
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
