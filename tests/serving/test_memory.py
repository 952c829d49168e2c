"""The heap bounds of a running appliance (issue 13, item 4): after a burst of parallel logins
(scrypt's 16 MiB each) and 1 MiB stream buffers in many threads, the memory goes back to the
system instead of staying in per-thread malloc arenas."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_BURST = r"""
import hashlib, sys, threading
from kim_appliance.serving.memory import bound_malloc
if sys.argv[1] == "bound":
    assert bound_malloc(), "mallopt refused the bounds"
def work():
    for _ in range(2):
        hashlib.scrypt(b"pw", salt=b"salt" * 4, n=2**14, r=8, p=1, maxmem=64 << 20, dklen=32)
        buffers = [bytes(1 << 20) for _ in range(8)]
        del buffers
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmHWM"].split()[0]) // 1024, int(status["VmRSS"].split()[0]) // 1024)
"""


def _burst(mode: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _BURST, mode], check=True, capture_output=True, text=True
    ).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc mallopt"
)
def test_memory_of_a_burst_goes_back_to_the_system() -> None:
    peak, after = _burst("bound")
    assert peak > 100, "the burst did not use the memory it should"
    assert after < peak / 2, (peak, after)
    # without the bounds glibc keeps most of it (the dynamic mmap threshold and 8 arenas)
    _, after_unbound = _burst("free")
    assert after_unbound > after + 40, (after_unbound, after)
