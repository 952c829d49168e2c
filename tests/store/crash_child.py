"""Child process of the kill -9 test: delivers (and deletes) in a loop until killed.

Prints `C <id> <seed>` after `deliver` returned for each message and `D <id>` after
`delete_messages` returned, flushing each line: the parent holds the store to exactly that.
Usage: python crash_child.py DATA_DIR RUN_TAG COMPRESS(0|1)
"""

from __future__ import annotations

import sys
from pathlib import Path

from store_helpers import account, address, body_for, prefix_for, put

from kim_appliance.store import open_store


def main() -> None:
    data_dir, tag, compress = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    store = open_store(data_dir, compress=compress)
    for local in ("alice", "bob"):
        if store.get_account(address(local)) is None:
            store.create_account(account(local))
    mine: list[int] = []
    i = 0
    while True:
        seed = f"{tag}-{i}"
        boxes = [address("alice")] if i % 3 else [address("alice"), address("bob")]
        _, msgs = put(store, body_for(seed), [(box, prefix_for(seed, box)) for box in boxes])
        for msg in msgs:
            print(f"C {msg.id} {seed}", flush=True)
            mine.append(msg.id)
        if i % 4 == 3:
            victim = mine.pop(0)
            # announce before deleting: killed in between, the message may or may not be there
            print(f"D {victim}", flush=True)
            store.delete_messages(address("alice"), [victim])
            store.delete_messages(address("bob"), [victim])
        i += 1


if __name__ == "__main__":
    main()
