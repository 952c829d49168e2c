"""Crash safety of the embedded store: a `250`-acknowledged message is never lost, no partial
message is visible, nothing is left behind.

The rules under test are in the docstrings of `store.sqlite` and `store.blobs`.
"""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import trio
from store_helpers import account, address, body_for, prefix_for, put, read

from kim_appliance.store.sqlite import DB_NAME, SQLiteStore, open_sqlite_store

CHILD = Path(__file__).with_name("crash_child.py")


def _disk_blobs(root: Path) -> set[str]:
    return {p.name.removesuffix(".zst") for p in (root / "blobs").glob("??/*")}


def _db_blobs(root: Path) -> set[str]:
    with sqlite3.connect(root / DB_NAME) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM blobs")}


async def _check_consistent(data_dir: Path, committed: dict[int, str]) -> int:
    """Every committed message is there and complete; every visible message is complete."""
    async with open_sqlite_store(data_dir) as store:
        root = store.root
        assert await store.verify() == []
        assert list((root / "blobs" / "tmp").iterdir()) == []
        assert _disk_blobs(root) == _db_blobs(root)
        visible = {m.id: m for box in ("alice", "bob") for m in await store.mail.list(address(box))}
        missing = set(committed) - set(visible)
        assert not missing, f"acknowledged messages lost: {sorted(missing)}"
        for msg in visible.values():
            data = await read(store, msg.id)
            assert len(data) == msg.size
            match = re.search(rb"X-Seed: (\S+)\r\n", data)
            assert match is not None, f"message {msg.id}: no seed in {data[:200]!r}"
            seed = match.group(1).decode()
            if msg.id in committed:
                assert seed == committed[msg.id]
            assert data == prefix_for(seed, msg.mailbox) + body_for(seed)
        return len(visible)


async def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """The `250` promise: a child delivering in a loop is SIGKILLed at random moments."""
    rng = random.Random(20250301)
    committed: dict[int, str] = {}
    total = 0
    for run in range(4):
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(tmp_path), f"r{run}", str(run % 2)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdout is not None
        first = await trio.to_thread.run_sync(child.stdout.readline)
        assert first.startswith(b"C "), child.stderr.read() if child.stderr else first
        await trio.sleep(rng.uniform(0.05, 0.4))
        child.send_signal(signal.SIGKILL)
        out, _ = await trio.to_thread.run_sync(child.communicate)
        assert child.returncode == -signal.SIGKILL
        lines = (first + out).split(b"\n")
        for line in lines[:-1]:  # the last piece may be cut off
            if not line.strip():
                continue
            kind, *rest = line.decode().split()
            if kind == "C":
                committed[int(rest[0])] = rest[1]
            else:
                committed.pop(int(rest[0]), None)
        total += len(lines) - 1
        await _check_consistent(tmp_path, committed)
    assert total > 20, "the children delivered too little to mean anything"


async def test_many_concurrent_deliveries_all_land_once(kim_store: SQLiteStore) -> None:
    """Many trio tasks deliver at once (each operation one worker-thread call): every message
    lands once, with its own UID and its own bytes."""
    store = kim_store
    for local in ("alice", "bob", "carol"):
        await store.accounts.create(account(local))
    results: dict[int, tuple[str, str]] = {}

    async def worker(n: int) -> None:
        for i in range(15):
            seed = f"t{n}-{i}"
            box = address(("alice", "bob", "carol")[i % 3])
            _, [msg] = await put(store, body_for(seed, 5000), [(box, prefix_for(seed, box))])
            results[msg.id] = (seed, box)
            if i % 5 == 4:
                assert (await read(store, msg.id)).endswith(body_for(seed, 5000))

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(worker, n)
    assert time.monotonic() - started < 60
    assert len(results) == 8 * 15
    listed = [m for b in ("alice", "bob", "carol") for m in await store.mail.list(address(b))]
    assert sorted(m.id for m in listed) == sorted(results)
    assert len({m.uid for m in listed}) == len(listed)
    for msg in listed:
        seed, box = results[msg.id]
        assert await read(store, msg.id) == prefix_for(seed, box) + body_for(seed, 5000)
