"""Child process of the kill -9 test: delivers (and deletes) in a loop until killed.

Prints `C <id> <seed>` after `mail.deliver` returned for each message and `D <id>` before
`mail.delete` is called, flushing each line: the parent holds the store to exactly that.
Usage: python crash_child.py DATA_DIR RUN_TAG COMPRESS(0|1)
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio
from store_helpers import account, address, body_for, prefix_for, put

from kim_appliance.store.sqlite import open_sqlite_store


async def main() -> None:
    data_dir, tag, compress = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    async with open_sqlite_store(data_dir, compress=compress) as store:
        for local in ("alice", "bob"):
            if await store.accounts.get(address(local)) is None:
                await store.accounts.create(account(local))
        mine: list[int] = []
        i = 0
        while True:
            seed = f"{tag}-{i}"
            boxes = [address("alice")] if i % 3 else [address("alice"), address("bob")]
            _, msgs = await put(
                store, body_for(seed), [(box, prefix_for(seed, box)) for box in boxes]
            )
            for msg in msgs:
                print(f"C {msg.id} {seed}", flush=True)
                mine.append(msg.id)
            if i % 4 == 3:
                victim = mine.pop(0)
                # announce before deleting: killed in between, the message may or may not be there
                print(f"D {victim}", flush=True)
                await store.mail.delete(address("alice"), [victim])
                await store.mail.delete(address("bob"), [victim])
            i += 1


if __name__ == "__main__":
    trio.run(main)
