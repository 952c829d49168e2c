"""Interpreter settings of a long-running appliance process (issue 13, round 3).

Measured with ``bench/roundtrip.py --small`` (bench/README.md): the appliance is one trio event
loop thread (every TLS record and protocol step) plus worker threads (CMS, card operations,
SQLite, blob files) that share one GIL. Three interpreter defaults cost time there:

* the GIL switch interval (5 ms): the event loop releases the GIL for every socket call and
  then waits up to a whole interval for a busy worker to hand it back; with ten sessions that
  convoy, not the work, set the pace. :data:`SWITCH_INTERVAL_S` shortens the wait;
* trio names the OS thread of every worker job and names it back afterwards (two
  ``pthread_setname_np`` calls through ctypes per thread hop, each a system call that also
  drops and retakes the GIL; about 25 hops per small round trip): :func:`tune_interpreter`
  leaves the OS name at trio's default ``Trio thread N`` (the Python-level ``Thread.name``, which
  logs and tracebacks show, is still set per job);
* the cyclic garbage collector: a young-generation pass every 700 allocations, over a heap that
  holds every module and certificate loaded at start. :func:`freeze_startup_heap` moves what
  start-up allocated out of the collector's view (``gc.freeze``), and
  :data:`GC_YOUNG_THRESHOLD` makes the young passes rarer (the objects of one message are
  mostly freed by reference counting anyway).

This module must never change what the appliance does, only how the interpreter schedules it;
every setting is made once at start and none may fail a start.
"""

from __future__ import annotations

import gc
import logging
import sys
from typing import Final

#: GIL switch interval in seconds (Python's default is 0.005); see the module docstring
SWITCH_INTERVAL_S: Final = 0.0005
#: allocations between young-generation garbage collections (Python's default is 700)
GC_YOUNG_THRESHOLD: Final = 10_000

log = logging.getLogger("kim_appliance.serving")


def tune_interpreter() -> None:
    """Apply the switch interval, the collector threshold and trio's thread naming (see the
    module docstring); call before the event loop starts."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
    try:
        # trio's worker cache calls this per job when it is set (trio/_core/_thread_cache.py);
        # a trio without it simply keeps naming threads
        from trio._core import _thread_cache

        if hasattr(_thread_cache, "set_os_thread_name"):
            _thread_cache.set_os_thread_name = None
    except ImportError:  # pragma: no cover - a trio that moved its thread cache
        log.debug("trio's thread cache not found: worker OS thread names stay per job")


def freeze_startup_heap() -> None:
    """Move every object alive now (modules, configuration, certificates, caches built at
    start) out of the collector's generations: later passes no longer walk them."""
    gc.collect()
    gc.freeze()
