"""Benchmark: round trips on the embedded store, one node on PostgreSQL, and two nodes on one
PostgreSQL (issue 12 §6).

The same client mails as ``bench/roundtrip.py`` (whose client, mails and data dir preparation
this reuses): ``--small`` round trips of 20 KiB (1,000 by default) and ``--large`` round trips
of 25 MiB (10), each through the Clientmodul (sign, encrypt, Fachdienst, relay where the
recipient is on the other Fachdienst, decrypt, verify) in three setups:

* ``embedded``: one ``kim-appliance run`` on the embedded store (SQLite + blob files);
* ``pg-1``: one node (``run --store URL --node a``) on PostgreSQL;
* ``pg-2``: nodes ``a`` and ``b`` on the same database and data dir; the ten PVS senders and
  receivers are spread over both nodes' Clientmoduln (even ones on A, odd ones on B), so mail
  sent through one node is often read through the other.

Per setup and workload: round trips per second (messages / (send + wait for delivery +
receive)), the latency of each message's send (MAIL FROM to the 250 after the data: the
Clientmodul has signed and encrypted it and the Fachdienst stored it durably) and of each RETR
(the Clientmodul decrypts and verifies), p50 and p99; the peak RSS (VmHWM) of every node; the
CPU seconds of the node processes and of PostgreSQL (the postmaster, its live backends and its
reaped children). Every attachment is compared with what was sent (``verified``).

PostgreSQL: a throwaway server of this machine (tests/pg_server.py's initdb/pg_ctl, in a temp
dir), restarted with durable settings (fsync, synchronous_commit and full_page_writes on, as a
production server has them; the test fixture turns them off), one fresh database per run. On 2
cores the nodes, PostgreSQL and the bench's client share the same CPUs: ``pg-2`` shows the cost
of coordination (two processes, their heartbeats and claims, one more network hop per store
call), not scaling; the README's "Several nodes on one PostgreSQL" works out what a node on
its own cores adds. This is a benchmark only: it touches no data dir or database but its own.

Usage:

    python bench/cluster.py [--setups embedded,pg-1,pg-2] [--small N] [--large N]
                            [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import roundtrip as rt

SETUPS: Final = ("embedded", "pg-1", "pg-2")
SMALL_MESSAGES: Final = 1000
SMALL_SIZE: Final = 20 * 1024
LARGE_MESSAGES: Final = 10
LARGE_SIZE: Final = 25 * rt.MIB
PARTICIPANTS: Final = rt.MAX_PARTICIPANTS
DURABLE: Final = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"


# --- PostgreSQL ------------------------------------------------------------------------------


def start_postgres() -> Any:
    """A throwaway server (tests/pg_server.py), restarted with a production's durability and
    the store's schema in its template database."""
    import trio
    from pg_server import TEMPLATE, start_server

    from kim_appliance.store import open_store

    server = start_server()
    data = str(server.data)
    server.run("pg_ctl", "-D", data, "-m", "fast", "-w", "stop", log="ctl.log")
    options = (
        f"-p {server.port} -h 127.0.0.1 -k {server.socket_dir} {DURABLE} "
        "-c max_connections=200 -c shared_buffers=128MB"
    )
    server.run(
        "pg_ctl", "-D", data, "-l", str(server.root / "server.log"), "-o", options, "-w",
        "start", log="ctl.log",
    )  # fmt: skip

    async def migrate() -> None:
        async with open_store(server.url(TEMPLATE), Path(server.root)):
            pass

    trio.run(migrate)
    return server


def postgres_cpu(server: Any) -> float:
    """CPU seconds of the server so far: the postmaster with its reaped children (cutime,
    cstime) and the backends alive now."""
    pid = int((Path(server.data) / "postmaster.pid").read_text().split()[0])
    total = _cpu_with_children(pid)
    for child in _children(pid):
        total += rt.process_cpu(child)
    return total


def _cpu_with_children(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / rt.CLK_TCK


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def pg_activity(url: str) -> tuple[int, int]:
    """(transactions committed in the database, WAL bytes written by the server) so far: the
    deltas over a run are the store's writes per message and the bytes the disk must take."""
    import asyncpg

    async def run() -> tuple[int, int]:
        conn = await asyncpg.connect(url)
        try:
            commits = await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
            wal = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        finally:
            await conn.close()
        return int(commits), int(wal)

    return asyncio.run(run())


def pg_counts(url: str) -> dict[str, int]:
    """Messages per mailbox in the PostgreSQL store (read only, no login)."""
    import asyncpg

    async def run() -> dict[str, int]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT a.address, count(*) FROM messages m JOIN accounts a "
                "ON a.key = m.mailbox GROUP BY a.address"
            )
        finally:
            await conn.close()
        return {str(r[0]).lower(): int(r[1]) for r in rows}

    return asyncio.run(run())


# --- the timed PVS sessions ------------------------------------------------------------------


def send_timed(
    address: tuple[str, int], context: Any, participant: dict[str, Any], mails: list[Any]
) -> list[float]:
    """rt.smtp_session with the seconds of each message (MAIL FROM to the final 250)."""
    conn = rt.Conn(address, context, "localhost")
    latencies = []
    try:
        conn.reply("220")
        conn.send(b"EHLO pvs.bench\r\n")
        conn.reply("250")
        token = rt.plain_token(participant["smtp_username"], participant["password"])
        conn.send(f"AUTH PLAIN {token}\r\n".encode())
        conn.reply("235")
        for mail in mails:
            recipient = mail.data.split(b"\r\nTo: ", 1)[1].split(b"\r\n", 1)[0].decode()
            began = time.perf_counter()
            conn.send(f"MAIL FROM:<{participant['address']}>\r\nRCPT TO:<{recipient}>\r\n"
                      "DATA\r\n".encode())  # fmt: skip
            for expect in ("250", "250", "354"):
                conn.reply(expect)
            for piece in rt.stuffed_pieces(mail.data):
                conn.send(piece)
            conn.reply("250")
            latencies.append(time.perf_counter() - began)
        conn.send(b"QUIT\r\n")
        conn.reply("221")
    finally:
        conn.close()
    return latencies


def receive_timed(
    address: tuple[str, int], context: Any, participant: dict[str, Any], expected: int
) -> tuple[list[bytes], list[float]]:
    """rt.pop3_session with the seconds of each RETR."""
    conn = rt.Conn(address, context, "localhost")
    mails, latencies = [], []
    try:
        conn.ok()
        conn.send(f"USER {participant['pop3_username']}\r\n".encode())
        conn.ok()
        conn.send(f"PASS {participant['password']}\r\n".encode())
        conn.ok()
        listed = rt.uidl(conn)
        if len(listed) != expected:
            raise RuntimeError(f"{participant['address']}: {len(listed)} listed, not {expected}")
        for row in listed:
            number = row.split()[0]
            began = time.perf_counter()
            conn.send(f"RETR {number}\r\n".encode())
            conn.ok()
            mails.append(conn.read_multiline())
            latencies.append(time.perf_counter() - began)
            conn.send(f"DELE {number}\r\n".encode())
            conn.ok()
        conn.send(b"QUIT\r\n")
        conn.ok()
    finally:
        conn.close()
    return mails, latencies


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


# --- one setup -------------------------------------------------------------------------------


def start_node(data_dir: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "kim_appliance.cli", "run", "--data-dir", str(data_dir)]
    command += ["--ephemeral-ports", "--log-level", "WARNING", *extra]
    with log.open("wb") as stderr:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=stderr)
    name = extra[extra.index("--node") + 1] if "--node" in extra else None
    endpoints = data_dir / ("endpoints.json" if name is None else f"endpoints-{name}.json")
    rt.wait_for(endpoints, proc, f"node {name or 'embedded'}")
    return proc


def run_setup(
    setup: str, template: Path, work: Path, server: Any, workload: str, count: int
) -> dict[str, Any]:
    """One workload (``small`` or ``large``) on one setup; the figures."""
    import trio

    from kim_appliance.appliance import prepare_data_dir

    size = SMALL_SIZE if workload == "small" else LARGE_SIZE
    root = Path(tempfile.mkdtemp(prefix=f"{setup}-{workload}-", dir=work))
    data_dir = root / "kim-data"
    shutil.copytree(template, data_dir)
    url = None
    extra: list[tuple[str, ...]] = [()]
    if setup != "embedded":
        url = server.url(server.new_database())
        shutil.rmtree(data_dir / "store", ignore_errors=True)
        trio.run(prepare_data_dir, data_dir, url)
        extra = [("--store", url, "--node", "a")]
        if setup == "pg-2":
            extra.append(("--store", url, "--node", "b"))
    demo = json.loads((data_dir / "demo.json").read_text("utf-8"))
    participants: list[dict[str, Any]] = demo["participants"][:PARTICIPANTS]
    addresses = [p["address"] for p in participants]
    pairs = len(participants)
    mails = [
        rt.make_client_mail(j, j % pairs, (j % pairs + 1) % pairs, addresses, size)
        for j in range(count)
    ]
    nodes = [start_node(data_dir, root / f"node-{n}.log", *e) for n, e in enumerate(extra)]
    try:
        files = ["endpoints.json"] if setup == "embedded" else [
            f"endpoints-{name}.json" for name in "ab"[: len(nodes)]
        ]  # fmt: skip
        endpoints = [json.loads((data_dir / f).read_text("utf-8")) for f in files]
        context = ssl.create_default_context(cafile=endpoints[0]["tls_ca"])

        def node_of(i: int) -> dict[str, Any]:
            return endpoints[i % len(endpoints)]["clientmodul"]

        pg_cpu0 = postgres_cpu(server) if url else 0.0
        activity0 = pg_activity(url) if url else (0, 0)
        polls = 0
        cpu0 = [rt.process_cpu(p.pid) for p in nodes]
        sends: list[Callable[[], Any]] = [
            (lambda s=s: send_timed(rt.address_of(node_of(s)["smtp"]), context,
                                    participants[s], [m for m in mails if m.sender == s]))
            for s in range(pairs)
        ]  # fmt: skip
        sent = rt.parallel(sends, nodes[0].pid)
        expected = [sum(1 for m in mails if m.recipient == r) for r in range(pairs)]
        want = {addresses[r].lower(): n for r, n in enumerate(expected)}
        began = time.perf_counter()
        while True:
            polls += 1
            counts = pg_counts(url) if url else rt.stored_counts(data_dir)
            if all(counts.get(a, 0) >= n for a, n in want.items()):
                break
            if time.perf_counter() - began > rt.WAIT_FOR_MAIL_SECONDS:
                raise SystemExit(f"{setup}: not delivered: {counts} of {want}")
            time.sleep(0.05)
        relay_wait = time.perf_counter() - began
        receives: list[Callable[[], Any]] = [
            (lambda r=r: receive_timed(rt.address_of(node_of(r)["pop3"]), context,
                                       participants[r], expected[r]))
            for r in range(pairs)
        ]  # fmt: skip
        got = rt.parallel(receives, nodes[0].pid)
        node_cpu = [rt.process_cpu(p.pid) - c for p, c in zip(nodes, cpu0, strict=True)]
        peak = [rt.vm_status_mb(p.pid, "VmHWM") for p in nodes]
    finally:
        for proc in nodes:
            rt.stop(proc)
    # after the nodes stopped: their backends have ended, so PostgreSQL's statistics hold all
    # their commits, and the postmaster's reaped-children CPU all their work
    pg_cpu = postgres_cpu(server) - pg_cpu0 if url else 0.0
    activity1 = pg_activity(url) if url else (0, 0)
    # every poll for delivery and the first pg_activity are one read-only commit each
    commits = activity1[0] - activity0[0] - polls - 2 if url else 0
    verified, problems = rt.verify(mails, [mails_of for mails_of, _ in got.results])
    send_lat = [x for result in sent.results for x in result]
    retr_lat = [x for _, lat in got.results for x in lat]
    total = sent.seconds + relay_wait + got.seconds
    shutil.rmtree(root, ignore_errors=True)
    return {
        "setup": setup,
        "workload": workload,
        "messages": count,
        "size_bytes": size,
        "round_trips_per_s": round(count / total, 1),
        "total_s": round(total, 2),
        "send_s": round(sent.seconds, 2),
        "delivery_wait_s": round(relay_wait, 2),
        "receive_s": round(got.seconds, 2),
        "send_latency_ms": {"p50": round(percentile(send_lat, 50) * 1000, 1),
                            "p99": round(percentile(send_lat, 99) * 1000, 1)},
        "retr_latency_ms": {"p50": round(percentile(retr_lat, 50) * 1000, 1),
                            "p99": round(percentile(retr_lat, 99) * 1000, 1)},
        "peak_rss_mb_per_node": [round(x, 1) for x in peak],
        "cpu_s_per_node": [round(x, 2) for x in node_cpu],
        "postgres_cpu_s": round(pg_cpu, 2),
        "postgres_commits_per_message": round(commits / count, 1),
        "postgres_wal_bytes_per_message": round((activity1[1] - activity0[1]) / count),
        "verified": verified,
        "problems": problems[:5],
    }  # fmt: skip


def print_row(r: dict[str, Any]) -> None:
    print(
        f"{r['setup']:9} {r['workload']:5} {r['messages']:5} msgs  "
        f"{r['round_trips_per_s']:7.1f}/s  total {r['total_s']:7.1f} s  "
        f"send p50/p99 {r['send_latency_ms']['p50']:7.1f}/{r['send_latency_ms']['p99']:7.1f} ms  "
        f"RETR p50/p99 {r['retr_latency_ms']['p50']:7.1f}/{r['retr_latency_ms']['p99']:7.1f} ms  "
        f"RSS {'/'.join(f'{x:.0f}' for x in r['peak_rss_mb_per_node'])} MB  "
        f"CPU nodes {'+'.join(f'{x:.1f}' for x in r['cpu_s_per_node'])} s, "
        f"PostgreSQL {r['postgres_cpu_s']:.1f} s, {r['postgres_commits_per_message']} commits "
        f"and {r['postgres_wal_bytes_per_message'] / 1024:.0f} KiB WAL per message  "
        f"verified {r['verified']}/{r['messages']}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated")
    parser.add_argument("--small", type=int, default=SMALL_MESSAGES, help="20 KiB round trips")
    parser.add_argument("--large", type=int, default=LARGE_MESSAGES, help="25 MiB round trips")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    # a SIGTERM (timeout, kill) unwinds like Ctrl-C: the nodes and the server are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if unknown := set(setups) - set(SETUPS):
        parser.error(f"unknown setups {sorted(unknown)}; expected {', '.join(SETUPS)}")
    work = Path(tempfile.mkdtemp(prefix="kim-bench-cluster-"))
    server = None
    results: list[dict[str, Any]] = []
    try:
        template = work / "template"
        print(f"preparing {template} with {PARTICIPANTS} participants ...", file=sys.stderr)
        rt.prepare(template, PARTICIPANTS)
        if any(s != "embedded" for s in setups):
            server = start_postgres()
        for workload, count in (("small", args.small), ("large", args.large)):
            if count <= 0:
                continue
            for setup in setups:
                print(f"{setup} {workload} ({count}) ...", file=sys.stderr, flush=True)
                result = run_setup(setup, template, work, server, workload, count)
                results.append(result)
                print_row(result)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = {"cpus": os.cpu_count(), "postgres": DURABLE, "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    return 0 if all(r["verified"] == r["messages"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
