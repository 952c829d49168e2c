"""Benchmark: the store alone, embedded (SQLite + blob files) against PostgreSQL.

What a Fachdienst does per small message, as store operations: write a 20 KiB body as a blob
and deliver it to one mailbox (``deliver``), list the mailbox (``list``) and read one message
back whole (``read``). Each phase runs ``--parallel`` trio tasks for ``--seconds`` and reports
operations per second; a 25 MiB body written and read once gives the streaming rate. The
embedded store runs in a temporary data dir; PostgreSQL in the database of ``--store URL``
(which must be empty: the benchmark makes its own accounts and leaves them). This is a
benchmark only: it never touches a data dir or a database it was not given.

Usage: python bench/store_ops.py [--store postgresql://...] [--seconds 5] [--parallel 10]
       [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from kim_appliance.store import Account, Store, mask_url, open_store

BODY = (b"A" * 76 + b"\r\n") * (20 * 1024 // 78)
BIG = 25 * 1024 * 1024
PIECE = 64 * 1024


async def _deliver(store: Store, mailbox: str) -> int:
    async with store.blobs.writer() as writer:
        await writer.write(BODY)
        blob = await writer.commit()
        [msg] = await store.mail.deliver(
            blob, [(mailbox, b"Received: bench\r\n")], datetime.now(UTC), check_quota=True
        )
    return msg.id


async def _read(store: Store, message_id: int) -> int:
    total = 0
    async with store.mail.reader(message_id) as reader:
        while chunk := await reader.read(PIECE):
            total += len(chunk)
    return total


async def _phase(seconds: float, parallel: int, step: Any) -> float:
    """Operations per second of ``step(task_number)`` run by ``parallel`` tasks."""
    done = 0
    deadline = trio.current_time() + seconds

    async def worker(n: int) -> None:
        nonlocal done
        while trio.current_time() < deadline:
            await step(n)
            done += 1

    begin = time.monotonic()
    async with trio.open_nursery() as nursery:
        for n in range(parallel):
            nursery.start_soon(worker, n)
    return done / (time.monotonic() - begin)


async def bench(url: str | None, seconds: float, parallel: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with open_store(url, Path(tmp) / "kim-data") as store:
            boxes = [f"bench{n}@bench.kim.telematik-test" for n in range(parallel)]
            for box in boxes:
                await store.accounts.create(Account(box, "scrypt$1$1$1$AA$AA", f"1-{box}", box))
            ids: dict[int, int] = {}

            async def deliver(n: int) -> None:
                ids[n] = await _deliver(store, boxes[n])

            async def listing(n: int) -> None:
                await store.mail.list(boxes[n])

            async def read(n: int) -> None:
                await _read(store, ids[n])

            result: dict[str, Any] = {"store": store.description}
            result["deliver_per_s"] = round(await _phase(seconds, parallel, deliver), 1)
            result["messages_per_mailbox"] = len(await store.mail.list(boxes[0]))
            result["list_per_s"] = round(await _phase(seconds, parallel, listing), 1)
            result["read_per_s"] = round(await _phase(seconds, parallel, read), 1)
            piece = b"B" * PIECE
            begin = time.monotonic()
            async with store.blobs.writer() as writer:
                for _ in range(BIG // PIECE):
                    await writer.write(piece)
                blob = await writer.commit()
                [msg] = await store.mail.deliver(
                    blob, [(boxes[0], b"")], datetime.now(UTC), check_quota=False
                )
            wrote = time.monotonic() - begin
            begin = time.monotonic()
            assert await _read(store, msg.id) == BIG
            read_s = time.monotonic() - begin
            result["write_25mib_mib_per_s"] = round(25 / wrote, 1)
            result["read_25mib_mib_per_s"] = round(25 / read_s, 1)
            return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="postgresql://... (an empty database); default embedded")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--parallel", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = trio.run(bench, args.store, args.seconds, args.parallel)
    result["url"] = mask_url(args.store)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
