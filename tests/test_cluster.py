"""kim_appliance.cluster: node names, taking a name in the store (refused while a live process
holds it, taken over from a dead process of this host), the heartbeat and the view of the live
nodes the relay and the Clientmodul use. On the embedded store (the same contract as
PostgreSQL's; the two-node behaviour with real processes is tests/e2e/test_e2e_cluster.py)."""

from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
import sys

import pytest

from kim_appliance import cluster
from kim_appliance.config import ClusterConfig
from kim_appliance.errors import ConfigError
from kim_appliance.store import NodeInfo, RelayRecipient, Store

PG = "postgresql://kim:pw@db:5432/kim"
SETTINGS = ClusterConfig(heartbeat_seconds=1, node_timeout_seconds=5)
SOURCE = "fd1.kim.telematik-test"


def test_node_names() -> None:
    """`--node` needs a shared store and a name fit for endpoints-NAME.json; without it the
    embedded store's node is "local" and a PostgreSQL node is named after the machine."""
    assert cluster.node_name(None, None) == "local"
    assert cluster.node_name("node-1.a", PG) == "node-1.a"
    assert cluster.node_name(None, PG) not in ("", "local")
    with pytest.raises(ConfigError, match="--node a: several nodes need a shared store"):
        cluster.node_name("a", None)
    with pytest.raises(ConfigError, match="--node a: several nodes need a shared store"):
        cluster.node_name("a", "sqlite")
    for bad in ("", "../x", "a/b", "-a", "x" * 64):
        with pytest.raises(ConfigError, match="a node name is 1 to 63"):
            cluster.node_name(bad, PG)
    assert cluster.endpoints_file_name(None) == "endpoints.json"
    assert cluster.endpoints_file_name("a") == "endpoints-a.json"


def _reaped_pid() -> int:
    """The pid of a process that has ended (and was reaped): no process has it now."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not cluster.pid_running(child.pid)
    return child.pid


async def _claimed(store: Store, node: str) -> int:
    now = dt.datetime.now(dt.UTC)
    async with store.blobs.writer() as writer:
        await writer.write(b"Subject: x\r\n\r\nx\r\n")
        entry = await store.relay.enqueue(
            await writer.commit(),
            sender=f"a@{SOURCE}",
            recipients=[RelayRecipient("b@fd2.kim.telematik-test")],
            envid=None,
            ret=None,
            source_domain=SOURCE,
            domain="fd2.kim.telematik-test",
            not_after=now + dt.timedelta(days=1),
            now=now,
        )
    [claimed] = await store.relay.claim(node, SOURCE, now, limit=1, lease=dt.timedelta(hours=1))
    assert claimed.id == entry.id
    return entry.id


async def test_a_live_name_is_refused(kim_store: Store) -> None:
    """Two processes under one name would share relay claims and maildrop holders: the second
    is refused, naming the pid and host of the first, which keeps the name."""
    first = cluster.Identity("a")
    await cluster.register(kim_store, first, SETTINGS)
    twins = (
        cluster.Identity("a", pid=os.getppid()),  # another live process of this host
        cluster.Identity("a", host="elsewhere"),
        cluster.Identity("a", host="elsewhere", pid=_reaped_pid()),
    )
    for twin in twins:
        with pytest.raises(cluster.NodeNameTaken, match=f"pid {first.pid} on host {first.host}"):
            await cluster.register(kim_store, twin, SETTINGS)
    await cluster.register(kim_store, cluster.Identity("b"), SETTINGS)  # another name: fine


async def test_the_name_of_a_dead_process_of_this_host_is_taken_over(kim_store: Store) -> None:
    """A node restarted after kill -9 under its name need not wait for its old leases: its
    previous process (same host, pid gone) gives up the name, its relay claims and the
    maildrops its POP3 sessions had locked at once; another node's locks stay."""
    dead = cluster.Identity("a", pid=_reaped_pid())
    await cluster.register(kim_store, dead, SETTINGS)
    entry_id = await _claimed(kim_store, "a")
    now = dt.datetime.now(dt.UTC)
    ttl = dt.timedelta(seconds=90)
    assert await kim_store.maildrops.lock(f"klein@{SOURCE}", "a/session1", now, ttl)
    assert await kim_store.maildrops.lock(f"weber@{SOURCE}", "b/session2", now, ttl)
    again = cluster.Identity("a")
    assert await cluster.register(kim_store, again, SETTINGS) == 1
    assert await kim_store.maildrops.lock(f"klein@{SOURCE}", "b/session3", now, ttl)
    assert not await kim_store.maildrops.lock(f"weber@{SOURCE}", "c/session4", now, ttl)
    [entry] = await kim_store.relay.claim("a", SOURCE, now, limit=1, lease=dt.timedelta(hours=1))
    assert entry.id == entry_id
    [node] = await kim_store.nodes.live(now, dt.timedelta(minutes=1))
    assert (node.name, node.endpoints["pid"]) == ("a", again.pid)


async def test_heartbeats_show_the_live_nodes_and_a_clean_stop_leaves(kim_store: Store) -> None:
    """What a node reports is what the others see (its listeners, components); the view
    offers the other nodes' listeners of a domain, not its own; a clean stop leaves at once
    and frees the name."""
    a, b = cluster.Identity("a"), cluster.Identity("b")
    for me in (a, b):
        await cluster.register(kim_store, me, SETTINGS)
    fd = {"fachdienste": {SOURCE: {"smtp": "127.0.0.1:1", "pop3": "127.0.0.1:2",
                                   "https": "https://127.0.0.1:3"}}}  # fmt: skip
    view = cluster.ClusterView("a")
    assert await cluster.heartbeat_once(kim_store, b, SETTINGS, fd, ["fachdienst"], view)
    assert await cluster.heartbeat_once(kim_store, a, SETTINGS, {}, ["clientmodul"], view)
    assert view.names() == ["a", "b"]
    assert view.mail_endpoints(SOURCE.upper(), "pop3") == [("127.0.0.1", 2)]
    assert view.https_endpoints(SOURCE) == ["https://127.0.0.1:3"]
    assert view.mail_endpoints("fd2.kim.telematik-test", "smtp") == []
    await kim_store.nodes.leave("b")
    await kim_store.nodes.release(cluster.NAME_LEASE + "b", b.holder)
    assert [n.name for n in await cluster.live_nodes(kim_store, SETTINGS)] == ["a"]
    await cluster.register(kim_store, cluster.Identity("b", host="elsewhere"), SETTINGS)


def test_equal_preference_order_is_random() -> None:
    """The other nodes' listeners come in random order (equal-preference MX records), so
    that senders spread over them."""
    now = dt.datetime.now(dt.UTC)
    view = cluster.ClusterView("me", rng=random.Random(7))
    view.nodes = [
        NodeInfo(f"n{i}", {"fachdienste": {SOURCE: {"smtp": f"10.0.0.{i}:465"}}}, (), now)
        for i in range(1, 6)
    ]
    orders = {tuple(view.mail_endpoints(SOURCE, "smtp")) for _ in range(20)}
    assert len(orders) > 1
    assert all(sorted(o) == [(f"10.0.0.{i}", 465) for i in range(1, 6)] for o in orders)


def test_advertised_listeners() -> None:
    """What other nodes are told: the bound addresses, or the advertised host (needed when a
    node binds every interface)."""
    endpoints = {
        "pid": 7,
        "tls_ca": "/data/pki/tls-ca.pem",
        "fachdienste": {SOURCE: {"smtp": "0.0.0.0:2465", "https": "https://0.0.0.0:2443"}},
        "konnektor": {"sds": "https://[::]:4443/connector.sds"},
    }
    assert cluster.advertise(endpoints, None) == endpoints
    told = cluster.advertise(endpoints, "node1.example")
    assert told["fachdienste"][SOURCE] == {
        "smtp": "node1.example:2465",
        "https": "https://node1.example:2443",
    }
    assert told["konnektor"]["sds"] == "https://node1.example:4443/connector.sds"
    assert (told["pid"], told["tls_ca"]) == (7, "/data/pki/tls-ca.pem")
    assert cluster.advertised_host("127.0.0.1", ClusterConfig()) is None
    assert cluster.advertised_host("0.0.0.0", ClusterConfig()) not in (None, "")
    assert cluster.advertised_host("127.0.0.1", ClusterConfig(advertise="n1")) == "n1"
