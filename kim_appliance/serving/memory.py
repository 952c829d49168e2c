"""Bounds on the C heap of a long-running appliance process (issue 13, item 4).

Measured with ``bench/roundtrip.py`` (ten parallel 25 MiB messages, bench/README.md): after the
credential cache took scrypt's 16 MiB buffers out of most logins, the peak RSS above the idle
process was mostly glibc malloc keeping freed memory: every worker thread gets an arena of its
own (up to 8 per core), and 1 MiB chunk buffers freed in one thread's arena stay resident there;
and glibc's *dynamic* mmap threshold rises to the largest block freed (up to 32 MiB), after
which even a 16 MiB scrypt buffer comes from an arena and stays. :func:`bound_malloc` caps the
arenas at :data:`MALLOC_ARENAS` and fixes the mmap threshold at :data:`MMAP_THRESHOLD_BYTES`
(blocks above it are mapped and given back to the system on free). Both are ``mallopt(3)``
calls, made once at start; on a C library without ``mallopt`` (musl, macOS) nothing happens.

This module must never change anything but these allocator settings, and never fail a start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Final

#: glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8
#: malloc arenas at most: two, as the machine the appliance is sized for has two cores; more
#: arenas buy less lock contention than they cost in memory kept per thread
MALLOC_ARENAS: Final = 2
#: blocks of this size and larger are mmap'd and returned on free (scrypt's 16 MiB, 25 MB KAS
#: pieces); below it (the 1 MiB stream chunks, reused all the time) the arenas serve them
MMAP_THRESHOLD_BYTES: Final = 4 * 1024 * 1024

log = logging.getLogger("kim_appliance.serving")


def bound_malloc() -> bool:
    """Apply the bounds (see the module docstring); True if the C library took both."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in the C library: heap bounds not set")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    arenas = mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    threshold = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    return bool(arenas) and bool(threshold)
