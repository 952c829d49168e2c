"""Several nodes on one PostgreSQL (issue 12 §3, §5): real ``kim-appliance run --store URL
--node NAME`` processes on one throwaway database, seen only through their endpoints files and
the standard library's clients. Mail sent through node A is read through node B; a POP3
maildrop lock holds across nodes (RFC 1939 §8); a node without a Fachdienst reaches the
Fachdienste through the live nodes, also right after one of them died; a second process under
a live node's name is refused; ``card import`` is refused while nodes run; and ``kill -9`` of a
node during sends and relay loses nothing it acknowledged (tests/e2e/cluster_campaign.py)."""

from __future__ import annotations

import json
import os
import poplib
import random
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_campaign import ClusterRig, init_on_postgresql, run_trials
from e2e_appliance import (
    Appliance,
    Launcher,
    cli,
    cm_send,
    cm_wait,
    mail,
    pop3_fetch,
    smtp_send,
    trace_prefix_of,
)


def _wait_for(app: Appliance, who: dict[str, Any], count: int, wait: float = 30.0) -> list[bytes]:
    """POP3 (no DELE) through ``app`` until ``count`` messages are there (relay is async)."""
    deadline = time.monotonic() + wait
    while len(got := pop3_fetch(app, who)) < count:
        assert time.monotonic() < deadline, f"{who['address']}: {len(got)} of {count} messages"
        time.sleep(0.2)
    return got


def _pop3_login(app: Appliance, who: dict[str, Any]) -> poplib.POP3_SSL:
    host, port = app.fd_of(who, "pop3")
    pop = poplib.POP3_SSL(host, port, context=app.ssl_context(), timeout=30)
    pop.user(who["address"])
    pop.pass_(who["password"])
    return pop


@pytest.fixture
def cluster_dir(template_dir: Path, tmp_path: Path, pg_url: str) -> Path:
    return init_on_postgresql(template_dir, tmp_path, pg_url)


def test_two_nodes_serve_the_same_mailboxes(
    cluster_dir: Path, launcher: Launcher, pg_url: str
) -> None:
    """KOM-LE-A_2151/2152 across nodes: mail sent through node A (to its own Fachdienst and
    relayed to the other) is read through node B byte for byte; while a POP3 session on A holds
    a maildrop, B answers [IN-USE] for it (RFC 1939 §8, RFC 2449); each node writes its own
    endpoints-NAME.json; a second process as node A is refused with the name and pid of the
    live one; `account` works through a node's endpoints file, and `card import` is refused
    while the nodes run. A node killed with a POP3 session open and started again under its
    name takes its name and that session's maildrop over at once."""
    rig = ClusterRig(cluster_dir, launcher, pg_url)
    a, b = rig.a, rig.b
    assert not (cluster_dir / "endpoints.json").exists()
    files = {n: json.loads((cluster_dir / f"endpoints-{n}.json").read_text()) for n in "ab"}
    assert (files["a"]["pid"], files["b"]["pid"]) == (a.process.pid, b.process.pid)
    assert files["a"]["fachdienste"].keys() == files["b"]["fachdienste"].keys()

    weber, klein = a.participant("praxis.weber"), a.participant("zahnarzt.klein")
    sonne = a.participant("apotheke.sonne")
    big = b"".join(b"Zeile %06d des Befunds\r\n" % i for i in range(40_000))  # 1 MB
    local = mail(weber["address"], klein["address"], "local@cluster", big)
    relayed = mail(weber["address"], sonne["address"], "relayed@cluster", b"Hallo.\r\n")
    smtp_send(a, weber, [klein["address"]], local)
    smtp_send(a, weber, [sonne["address"]], relayed)
    [stored] = _wait_for(b, klein, 1)
    trace_prefix_of(stored, local, weber["address"])
    [stored] = _wait_for(b, sonne, 1)
    trace_prefix_of(stored, relayed, weber["address"])

    held = _pop3_login(a, klein)
    try:
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            _pop3_login(b, klein)
    finally:
        held.quit()
    _pop3_login(b, klein).quit()  # free again once A's session ended

    twin = cli(
        "run", "--ephemeral-ports", "--data-dir", str(cluster_dir), "--store", pg_url,
        "--node", "a", cwd=cluster_dir.parent, timeout=60,
    )  # fmt: skip
    assert twin.returncode == 1, twin.stderr[-2000:]
    assert f"node name 'a' is in use: pid {a.process.pid}" in twin.stderr
    assert json.loads((cluster_dir / "endpoints-a.json").read_text())["pid"] == a.process.pid

    # the admin commands find a running node's endpoints-NAME.json (no endpoints.json here)
    listed = cli("account", "--data-dir", str(cluster_dir), "list", cwd=cluster_dir.parent)
    assert listed.returncode == 0, listed.stderr
    assert klein["address"] in listed.stdout

    refused = cli(
        "card", "import", "--data-dir", str(cluster_dir), "--iccsn", "80276883110000999999",
        "--key", "k.pem", "--cert", "c.pem", cwd=cluster_dir.parent,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "nodes a, b running on it; stop them first" in refused.stderr

    # kill -9 node A with a POP3 session open; restarted under its name it takes the name
    # over at once (same host, pid gone) and frees the maildrop its dead session had locked
    cut = _pop3_login(a, klein)
    a.kill9()
    cut.close()
    again = launcher.start(cluster_dir, "--store", pg_url, "--node", "a")
    assert f"node a: pid {a.process.pid} of this host is gone" in again.stderr()
    _pop3_login(b, klein).quit()  # not [IN-USE] for the lock's 90 s
    for node in (again, b):
        assert node.stop()[0] == 0
    assert not list(cluster_dir.glob("endpoints*.json"))
    after = cli(
        "card", "import", "--data-dir", str(cluster_dir), "--iccsn", "80276883110000999999",
        "--key", "k.pem", "--cert", "c.pem", cwd=cluster_dir.parent,
    )  # fmt: skip
    assert "running on it" not in after.stderr  # stopped nodes left the live list at once


def test_a_clientmodul_node_reaches_the_fachdienste_through_any_live_node(
    cluster_dir: Path, launcher: Launcher, pg_url: str
) -> None:
    """A node that runs only the Clientmodul, Konnektor and VZD (no Fachdienst) sends and
    receives KIM mail through the Fachdienst nodes it finds in the store (equal-preference
    MX records), and right after node A is killed (still listed until its heartbeat ages) a
    send through it still succeeds: a refused connection moves on to node B."""
    rig = ClusterRig(cluster_dir, launcher, pg_url)
    practice = launcher.start(
        cluster_dir, "--store", pg_url, "--node", "praxis",
        "--components", "clientmodul,konnektor,directory",
    )  # fmt: skip
    assert "fachdienste" not in practice.endpoints
    weber, klein = practice.participant("praxis.weber"), practice.participant("zahnarzt.klein")
    first = mail(weber["address"], klein["address"], "cm-1@cluster", b"Vor dem Ausfall.\r\n")
    assert cm_send(practice, weber, [klein["address"]], first) == {}
    rig.kill_a()
    for n in range(2, 7):  # several: the live list offers A first half of the time
        sent = mail(weber["address"], klein["address"], f"cm-{n}@cluster", b"Danach.\r\n")
        assert cm_send(practice, weber, [klein["address"]], sent) == {}
    got = cm_wait(practice, klein, 6, wait=60)
    bodies = sorted(m[m.find(b"\r\n\r\n") :] for m in got)
    assert sum(b"Vor dem Ausfall." in m for m in bodies) == 1
    assert sum(b"Danach." in m for m in bodies) == 5
    assert all(b"X-KIM-DecryptionResult: " in m for m in got)
    assert practice.stop()[0] == 0


@pytest.mark.slow
def test_kill_9_of_a_node_during_sends_and_relay_loses_nothing_it_acknowledged(
    template_dir: Path, tmp_path: Path, pg_server: Any
) -> None:
    """Issue 12 §5, KOM-LE-A_2152: five clients send through node A (local and relayed mail);
    A is killed with SIGKILL while they send and while its relay worker holds claims. Through
    node B every message A acknowledged is delivered exactly once and complete, none bounced;
    A's relay claims lapse after [cluster] relay_lease_seconds and B delivers them (a repeat
    of what A had handed over already is recognised by its KIM-Relay-ID)."""
    seed = random.randrange(1 << 32)
    results = run_trials(
        1,
        template=template_dir,
        work=tmp_path,
        new_url=lambda: pg_server.url(pg_server.new_database()),
        seed=seed,
    )
    report = f"failover, seed {seed}:\n" + "\n".join(r.line() for r in results)
    print(report)
    assert len(results) == 1, report
    assert results[0].ok, report
    assert results[0].acknowledged >= 5, report


def test_node_with_the_embedded_store_is_refused(data_dir: Path) -> None:
    """The embedded store admits one process per data dir: `--node` with it is an error that
    says what to use instead, before anything is bound or written."""
    done = cli("run", "--data-dir", str(data_dir), "--node", "a", cwd=data_dir.parent)
    assert done.returncode == 1
    assert "--node a: several nodes need a shared store" in done.stderr
    assert "--store postgresql://" in done.stderr
    assert not list(data_dir.glob("endpoints*.json"))
    assert os.path.exists(data_dir / "store" / "kim.sqlite3")  # untouched, still there
