"""Contract: what only shows with two nodes on one store: two Store objects (two connection
pools, as two processes have) opened on the same database. A maildrop lock, a relay claim, a
quota, the reply ledger and the directory's change counter hold across them, not only within
one process. Runs on the backends several nodes share (``shared_store_url``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from store_helpers import account, address, put

from kim_appliance.store import (
    DirectoryConflict,
    DirectoryRow,
    QuotaExceeded,
    RelayRecipient,
    Store,
    open_store,
)

NOW = datetime(2025, 8, 1, 10, tzinfo=UTC)
TTL = timedelta(seconds=90)
LEASE = timedelta(minutes=5)
SOURCE, REMOTE = "test1.kim.telematik-test", "test2.kim.telematik-test"
ALICE = address("alice")


@pytest.fixture
async def nodes(shared_store_url: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two nodes' stores on one database, with the account alice."""
    async with (
        open_store(shared_store_url, tmp_path / "node1") as one,
        open_store(shared_store_url, tmp_path / "node2") as two,
    ):
        await one.accounts.create(account("alice"))
        yield one, two


async def test_a_maildrop_locked_on_one_node_is_refused_on_the_other(
    nodes: tuple[Store, Store],
) -> None:
    """RFC 1939 §8 across nodes: a POP3 session on node 2 gets [IN-USE] while node 1's
    session holds the maildrop; it gets the lock once node 1 unlocks, or once node 1's lock
    lapsed (node 1 died)."""
    one, two = nodes
    assert await one.maildrops.lock(ALICE, "node1/s1", NOW, TTL)
    assert not await two.maildrops.lock(ALICE, "node2/s1", NOW + TTL / 2, TTL)
    assert await one.maildrops.renew(ALICE, "node1/s1", NOW + TTL / 2, TTL)
    await one.maildrops.unlock(ALICE, "node1/s1")
    assert await two.maildrops.lock(ALICE, "node2/s1", NOW, TTL)
    # node 2 dies holding it: node 1 gets it after the ttl, node 2's renew then fails
    assert not await one.maildrops.lock(ALICE, "node1/s2", NOW + TTL - timedelta(seconds=1), TTL)
    assert await one.maildrops.lock(ALICE, "node1/s2", NOW + TTL, TTL)
    assert not await two.maildrops.renew(ALICE, "node2/s1", NOW + TTL, TTL)


async def test_two_nodes_racing_for_a_maildrop_get_it_once(nodes: tuple[Store, Store]) -> None:
    winners: list[str] = []

    async def session(store: Store, holder: str) -> None:
        if await store.maildrops.lock(ALICE, holder, NOW, TTL):
            winners.append(holder)

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(session, nodes[n % 2], f"node{n % 2 + 1}/s{n}")
    assert len(winners) == 1


async def _enqueue(store: Store, n: int) -> int:
    async with store.blobs.writer() as writer:
        await writer.write(f"relayed message {n}".encode())
        blob = await writer.commit()
        entry = await store.relay.enqueue(
            blob,
            sender=ALICE,
            recipients=[RelayRecipient(f"dr.x@{REMOTE}")],
            envid=None,
            ret=None,
            source_domain=SOURCE,
            domain=REMOTE,
            not_after=NOW + timedelta(days=2),
            now=NOW,
        )
    return entry.id


async def test_a_relay_entry_claimed_by_one_node_waits_for_its_lease(
    nodes: tuple[Store, Store],
) -> None:
    """Exactly one node attempts an entry at a time; a node that died with a claim gives the
    entry back when its lease lapses, and the other node's attempt then carries it on."""
    one, two = nodes
    entry_id = await _enqueue(one, 1)
    [claimed] = await one.relay.claim("node1", SOURCE, NOW, limit=10, lease=LEASE)
    assert claimed.id == entry_id
    assert await two.relay.claim("node2", SOURCE, NOW, limit=10, lease=LEASE) == []
    almost = NOW + LEASE - timedelta(seconds=1)
    assert await two.relay.claim("node2", SOURCE, almost, limit=10, lease=LEASE) == []
    [again] = await two.relay.claim("node2", SOURCE, NOW + LEASE, limit=10, lease=LEASE)
    assert (again.id, again.relay_id) == (entry_id, claimed.relay_id)
    await two.relay.attempted(entry_id, next_attempt=None, error=None)
    assert await one.relay.pending(SOURCE, limit=10) == []


async def test_two_nodes_claiming_at_once_split_the_queue(nodes: tuple[Store, Store]) -> None:
    """Claims made at the same moment on both nodes return disjoint entries and together every
    due entry (FOR UPDATE SKIP LOCKED: neither waits for the other)."""
    one, two = nodes
    ids = {await _enqueue(one, n) for n in range(12)}
    got: dict[str, list[int]] = {"node1": [], "node2": []}

    async def claimer(store: Store, node: str) -> None:
        for _ in range(6):
            claimed = await store.relay.claim(node, SOURCE, NOW, limit=2, lease=LEASE)
            got[node] += [e.id for e in claimed]
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(claimer, one, "node1")
        nursery.start_soon(claimer, two, "node2")
    claimed = got["node1"] + got["node2"]
    assert sorted(claimed) == sorted(ids)  # each entry exactly once


async def test_deliveries_on_two_nodes_together_never_exceed_the_quota(
    nodes: tuple[Store, Store],
) -> None:
    """digest §3.2 across nodes: ten deliveries of 300 bytes, five per node, at once, into a
    mailbox with room for three: exactly three are stored; a KAS reservation on one node
    counts against a delivery on the other."""
    one, two = nodes
    await one.accounts.update(ALICE, quota_bytes=1000)
    outcomes: list[str] = []

    async def deliver(store: Store) -> None:
        try:
            await put(store, b"x" * 300, [(ALICE, b"")], now=NOW, check_quota=True)
            outcomes.append("stored")
        except QuotaExceeded:
            outcomes.append("refused")

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(deliver, nodes[n % 2])
    assert sorted(outcomes) == ["refused"] * 7 + ["stored"] * 3
    assert await two.mail.usage(ALICE, NOW) == 900
    await one.mail.delete(ALICE, [m.id for m in await one.mail.list(ALICE)][:2])
    await one.kas.reserve(ALICE, 500, NOW, timedelta(hours=1))
    with pytest.raises(QuotaExceeded, match="800 of 1000"):
        await put(two, b"y" * 201, [(ALICE, b"")], now=NOW, check_quota=True)


async def test_a_message_delivered_on_one_node_is_read_on_the_other(
    nodes: tuple[Store, Store],
) -> None:
    """The mailbox and its bodies are shared: what node 1 stored node 2 lists and reads with
    the same UID, and a deletion on node 2 is gone on node 1."""
    one, two = nodes
    body = b"shared body\r\n" * 100_000  # 1.3 MB: more than one chunk row
    _, [stored] = await put(one, body, [(ALICE, b"P:\r\n")], now=NOW)
    [seen] = await two.mail.list(ALICE)
    assert seen == stored
    async with two.mail.reader(seen.id) as reader:
        data = b""
        while chunk := await reader.read(65536):
            data += chunk
    assert data == b"P:\r\n" + body
    await two.mail.delete(ALICE, [seen.id])
    assert await one.mail.list(ALICE) == []


async def test_the_reply_ledger_answers_a_sender_once_across_nodes(
    nodes: tuple[Store, Store],
) -> None:
    """KOM-LE-A_2223, RFC 3834 §2: two nodes receiving mail from one sender at once send one
    absence note between them."""
    answers: list[bool] = []

    async def remember(store: Store) -> None:
        answers.append(await store.autoreplies.remember(ALICE, "x@y.de", NOW, NOW))

    async with trio.open_nursery() as nursery:
        for n in range(6):
            nursery.start_soon(remember, nodes[n % 2])
    assert sorted(answers) == [False] * 5 + [True]


async def test_a_directory_change_on_one_node_moves_the_other_nodes_version(
    nodes: tuple[Store, Store],
) -> None:
    """The change counter tells every node's LDAP listener that it must reload; a change
    validated on node 2 against a version node 1 has moved on from is a conflict."""
    one, two = nodes
    start = await two.directory.version()
    v1 = await one.directory.put(DirectoryRow("u1", "1-a", "{}"), expected_version=start)
    assert await two.directory.version() == v1
    with pytest.raises(DirectoryConflict):
        await two.directory.put(DirectoryRow("u2", "1-b", "{}"), expected_version=start)
    snapshot = await two.directory.snapshot()
    assert (snapshot.version, [r.uid for r in snapshot.rows]) == (v1, ["u1"])


async def test_two_nodes_registering_with_one_code_register_one_account(
    nodes: tuple[Store, Store],
) -> None:
    """registerAccount (digest §3.3): a referenceID is used once, whichever node gets it."""
    from kim_appliance.store import RegistrationCode, RegistrationCodeUsed

    one, two = nodes
    await one.registrations.put_code(RegistrationCode(SOURCE, "REF-9", "scrypt$1"))
    winners: list[str] = []

    async def register(store: Store, local: str) -> None:
        with contextlib.suppress(RegistrationCodeUsed):
            await store.accounts.create(account(local), reference_id="REF-9")
            winners.append(local)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(register, one, "neu.eins")
        nursery.start_soon(register, two, "neu.zwei")
    assert len(winners) == 1
    assert len(await two.accounts.list()) == 2  # alice and the winner
