"""The failover campaign (issue 12 §5): two real ``kim-appliance run --store URL --node a|b``
processes on one throwaway PostgreSQL; ``kill -9`` node A while clients send through it and
while its relay worker holds claims; then account for every message through node B.

One trial: nodes ``a`` and ``b`` start on a fresh database (the demo's state written by
``init --store URL``) with short cluster times (:data:`CLUSTER_CONFIG`: a node is dead after
2 s of silence, a relay claim lapses 3 s after its last renewal). Five client threads send
through node A only: two to mailboxes of their own Fachdienst, three across Fachdienste (relay).
Once every client has its first ``250`` and A has relayed at least one message, A is killed at
a random moment (the number of relay claims A held at that moment is in the note). Then, through
node B alone: the relay queue must empty (B takes A's lapsed claims; a repeat of what A had
already handed over is recognised by its KIM-Relay-ID), and every mailbox is fetched (POP3,
then DELE): every message A acknowledged must be there exactly once and byte for byte after the
trace fields, no delivery report (bounce) may appear, and a message A did not acknowledge may
be there only complete. The accounting is crash_campaign's (``settle_and_account``).

Run from the repository root (it starts its own PostgreSQL server):

    python -m tests.e2e.cluster_campaign --trials 20 [--seed S] [--json PATH]

The suite runs one trial (tests/e2e/test_e2e_cluster.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

try:
    from crash_campaign import (
        SENDING_TIMEOUT,
        Senders,
        TrialResult,
        _wait,
        make_template,
        settle_and_account,
    )
    from e2e_appliance import Appliance, Launcher, cli
except ModuleNotFoundError:  # run as ``python -m tests.e2e.cluster_campaign``
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from crash_campaign import (
        SENDING_TIMEOUT,
        Senders,
        TrialResult,
        _wait,
        make_template,
        settle_and_account,
    )
    from e2e_appliance import Appliance, Launcher, cli

from kim_appliance.testing import write_config

#: short cluster times, so that a trial waits seconds, not the defaults' half minute
CLUSTER_CONFIG: dict[str, Any] = {
    "fachdienst": {"relay_retry_seconds": [1]},
    "cluster": {"heartbeat_seconds": 0.5, "node_timeout_seconds": 2, "relay_lease_seconds": 3},
}


def pg_rows(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of one query on the store's database (asyncpg on a loop of its own; read only)."""
    import asyncpg

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


def init_on_postgresql(template: Path, root: Path, url: str) -> Path:
    """A copy of ``template`` whose state (accounts, directory, codes) is in ``url``."""
    data_dir = root / "kim-data"
    shutil.copytree(template, data_dir)
    shutil.rmtree(data_dir / "store", ignore_errors=True)  # the embedded store is not used
    done = cli("init", "--data-dir", str(data_dir), "--store", url, cwd=root)
    if done.returncode != 0:
        raise AssertionError(f"init --store failed: {done.stderr}")
    write_config(data_dir, CLUSTER_CONFIG)
    return data_dir


class ClusterRig:
    """Nodes ``a`` and ``b`` on one data dir and one database; ``app`` is the node the clients
    use (A until it is killed, then B). Duck-types crash_campaign's Rig for its accounting."""

    def __init__(self, data_dir: Path, launcher: Launcher, url: str) -> None:
        self.data_dir = data_dir
        self.url = url
        self.a: Appliance = launcher.start(data_dir, "--store", url, "--node", "a")
        self.b: Appliance = launcher.start(data_dir, "--store", url, "--node", "b")
        self.app: Appliance = self.a

    def participant(self, local: str) -> dict[str, Any]:
        return self.app.participant(local)

    def kill_a(self) -> None:
        self.a.kill9()
        self.app = self.b

    def stores(self) -> list[Path]:
        return []  # no blob files: the blobs are rows of the database

    def relay_queue(self) -> tuple[int, list[str]]:
        rows = pg_rows(self.url, "SELECT last_error FROM relay_entries")
        return len(rows), [str(r[0]) for r in rows if r[0]]

    def claims_of(self, node: str) -> int:
        [(count,)] = pg_rows(
            self.url, "SELECT count(*) FROM relay_entries WHERE claimed_by = $1", node
        )
        return int(count)


def kill_node(rig: ClusterRig, rng: random.Random, result: TrialResult) -> None:
    """Clients send through node A (local and relayed mail); A is killed while they send and
    while it relays; B must deliver what A acknowledged, once."""
    senders = Senders(rig, f"node{result.trial}", rng)  # type: ignore[arg-type]
    senders.add("praxis.weber", "zahnarzt.klein", (100_000, 1_500_000))
    senders.add("dr.meyer", "apotheke.sonne", (100_000, 1_500_000))
    senders.add("praxis.weber", "apotheke.sonne", (200_000, 2_000_000))
    senders.add("zahnarzt.klein", "dr.meyer", (200_000, 2_000_000))
    senders.add("apotheke.sonne", "praxis.weber", (200_000, 2_000_000))
    senders.start()
    _wait(
        lambda: " delivered, " in rig.a.stderr() and senders.all_sending(),
        SENDING_TIMEOUT,
        f"a relayed message and a 250 for every sender ({senders.errors})",
    )
    time.sleep(rng.uniform(0.0, 0.6))
    # the first moment at which A holds relay claims (within a second): it is relaying
    deadline = time.monotonic() + 1.0
    while (held := rig.claims_of("a")) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    in_flight = senders.in_flight()
    rig.kill_a()
    killed_at = time.monotonic()
    senders.join()
    result.problems += senders.errors
    settle_and_account(rig, senders.sent, result)  # type: ignore[arg-type]
    left = rig.claims_of("a")
    if left:
        result.problems.append(f"{left} relay entries still claimed by the dead node a")
    result.note = (
        f"{in_flight} sends in flight and {held} relay claims held by a at the kill; "
        f"settled through b {time.monotonic() - killed_at:.1f} s after it"
    )


def run_trials(
    trials: int,
    *,
    template: Path,
    work: Path,
    new_url: Any,
    seed: int,
    report: Any = None,
) -> list[TrialResult]:
    """``trials`` failover trials, each on a fresh database (``new_url()``) and a copy of
    ``template``. A failed trial keeps its data dir and logs under ``work`` (file KEEP)."""
    results: list[TrialResult] = []
    rng = random.Random(f"{seed}-failover")
    for n in range(1, trials + 1):
        trial_seed = rng.randrange(1 << 32)
        result = TrialResult("failover", n, trial_seed)
        root = Path(tempfile.mkdtemp(prefix="failover-", dir=work))
        (root / "logs").mkdir()
        launcher = Launcher(root / "logs")
        begin = time.monotonic()
        try:
            url = new_url()
            data_dir = init_on_postgresql(template, root, url)
            rig = ClusterRig(data_dir, launcher, url)
            kill_node(rig, random.Random(trial_seed), result)
            code, _ = rig.b.stop()
            if code != 0:
                result.problems.append(f"node b exited with {code}")
        except Exception as exc:  # the trial's own failure is its result too
            result.problems.append(f"the trial could not run: {exc!r}")
        finally:
            launcher.close()
        result.seconds = time.monotonic() - begin
        results.append(result)
        if report is not None:
            report(result)
        if not result.ok:
            (root / "KEEP").write_text(result.line(), "utf-8")
            break
        shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import trio
    from pg_server import TEMPLATE, start_server

    from kim_appliance.store import open_store

    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    work = Path(tempfile.mkdtemp(prefix="failover-campaign-"))
    server = start_server()
    try:

        async def migrate() -> None:
            async with open_store(server.url(TEMPLATE), Path(server.root)):
                pass

        trio.run(migrate)
        template = make_template(work / "template")
        print(f"failover campaign: {args.trials} trials, seed {seed}, work {work}", flush=True)
        results = run_trials(
            args.trials,
            template=template,
            work=work,
            new_url=lambda: server.url(server.new_database()),
            seed=seed,
            report=lambda r: print(r.line(), flush=True),
        )
    finally:
        server.stop()
    totals = {
        key: sum(getattr(r, key) for r in results)
        for key in ("acknowledged", "delivered_once", "lost", "duplicated", "bounced",
                    "truncated", "unacknowledged_arrived", "repeats_recognised")
    }  # fmt: skip
    ok = all(r.ok for r in results) and len(results) == args.trials
    print(f"{len(results)} trials: " + ", ".join(f"{v} {k}" for k, v in totals.items()))
    if args.json:
        args.json.write_text(
            json.dumps({"seed": seed, "totals": totals, "trials": [asdict(r) for r in results]},
                       indent=2), "utf-8",
        )  # fmt: skip
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
