"""Crash safety: a `250`-acknowledged message is never lost, no partial message is visible.

The rules under test are in the docstrings of `store.sqlite` and `store.blobs`.
"""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from store_helpers import account, address, body_for, prefix_for, put, read

from kim_appliance.store import SQLiteMailStore, open_store

CHILD = Path(__file__).with_name("crash_child.py")


def _disk_blobs(data_dir: Path) -> set[str]:
    return {p.name.removesuffix(".zst") for p in (data_dir / "blobs").glob("??/*")}


def _db_blobs(data_dir: Path) -> set[str]:
    with sqlite3.connect(data_dir / "mail.sqlite3") as conn:
        return {row[0] for row in conn.execute("SELECT name FROM blobs")}


def test_orphan_of_crash_between_rename_and_deliver_is_removed(tmp_path: Path) -> None:
    """A blob renamed into place but never delivered is invisible and gone after reopen."""
    store = open_store(tmp_path)
    store.create_account(account("alice"))
    writer = store.new_blob()
    writer.write(b"never acknowledged")
    blob = writer.commit()  # durable, but the process "dies" before deliver
    half = store.new_blob()
    half.write(b"half written")  # and another one is still in tmp/
    assert blob.name in _disk_blobs(tmp_path)
    store.close()  # no __exit__ of the writers: the crash

    with open_store(tmp_path) as reopened:
        assert reopened.list_messages(address("alice")) == []
        assert _disk_blobs(tmp_path) == set()
        assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
        assert len(reopened.swept) == 2


def _check_consistent(data_dir: Path, committed: dict[int, str]) -> int:
    """Every committed message is there and complete; every visible message is complete."""
    with open_store(data_dir) as store:
        assert store.verify() == []
        assert list((data_dir / "blobs" / "tmp").iterdir()) == []
        assert _disk_blobs(data_dir) == _db_blobs(data_dir)
        visible = {m.id: m for box in ("alice", "bob") for m in store.list_messages(address(box))}
        missing = set(committed) - set(visible)
        assert not missing, f"acknowledged messages lost: {sorted(missing)}"
        for msg in visible.values():
            data = read(store, msg.id)
            assert len(data) == msg.size
            match = re.search(rb"X-Seed: (\S+)\r\n", data)
            assert match is not None, f"message {msg.id}: no seed in {data[:200]!r}"
            seed = match.group(1).decode()
            if msg.id in committed:
                assert seed == committed[msg.id]
            assert data == prefix_for(seed, msg.mailbox) + body_for(seed)
        return len(visible)


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
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
        first = child.stdout.readline() if child.stdout else b""
        assert first.startswith(b"C "), child.stderr.read() if child.stderr else first
        time.sleep(rng.uniform(0.05, 0.4))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
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
        _check_consistent(tmp_path, committed)
    assert total > 20, "the children delivered too little to mean anything"


def test_eight_threads_deliver_concurrently(plain_store: SQLiteMailStore) -> None:
    """trio calls the store from worker threads; concurrent deliveries all land, once."""
    errors: list[BaseException] = []
    results: dict[int, tuple[str, str]] = {}
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            for i in range(15):
                seed = f"t{n}-{i}"
                box = address(("alice", "bob", "carol")[i % 3])
                _, [msg] = put(plain_store, body_for(seed, 5000), [(box, prefix_for(seed, box))])
                with lock:
                    results[msg.id] = (seed, box)
                if i % 5 == 4:
                    assert read(plain_store, msg.id).endswith(body_for(seed, 5000))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 8 * 15
    listed = [m for b in ("alice", "bob", "carol") for m in plain_store.list_messages(address(b))]
    assert sorted(m.id for m in listed) == sorted(results)
    assert len({m.uid for m in listed}) == len(listed)
    for msg in listed:
        seed, box = results[msg.id]
        assert read(plain_store, msg.id) == prefix_for(seed, box) + body_for(seed, 5000)
