"""Contract: the relay queues (digest §3.2): entries per source Fachdienst, claimed with a lease
so that two nodes never attempt one entry at once and a dead node's entries come back, and the
relay ids that make a repeated attempt deliver nothing twice (issue 11)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from store_helpers import address, body_for, drain, put

from kim_appliance.store import RelayEntryNotFound, RelayRecipient, Store

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SOURCE = "test1.kim.telematik-test"
REMOTE = "test2.kim.telematik-test"
NOTIFY = frozenset({"SUCCESS", "FAILURE"})
LEASE = timedelta(minutes=15)


async def _enqueue(
    store: Store, body: bytes, *, local: bool = False, source: str = SOURCE, at: datetime = T0
) -> int:
    recipients = [
        RelayRecipient(f"dr.x@{REMOTE}", NOTIFY, f"rfc822;dr.x@{REMOTE}"),
        RelayRecipient(f"dr.y@{REMOTE}"),
    ]
    async with store.blobs.writer() as w:
        await w.write(body)
        blob = await w.commit()
        if local:
            await store.mail.deliver(blob, [(address("alice"), b"L:")], at, check_quota=False)
        entry = await store.relay.enqueue(
            blob,
            sender=address("bob"),
            recipients=recipients,
            envid="env-1",
            ret="HDRS",
            source_domain=source.upper(),
            domain=REMOTE.upper(),
            not_after=at + timedelta(days=5),
            now=at,
        )
    return entry.id


async def _claim(store: Store, at: datetime, node: str = "n1", limit: int = 100) -> list[int]:
    return [e.id for e in await store.relay.claim(node, SOURCE, at, limit=limit, lease=LEASE)]


async def test_lifecycle_claim_reschedule_done(store: Store) -> None:
    body = body_for("relay", 50_000)
    entry_id = await _enqueue(store, body)
    assert (
        await store.relay.claim("n1", SOURCE, T0 - timedelta(seconds=1), limit=9, lease=LEASE) == []
    )
    [entry] = await store.relay.claim("n1", SOURCE, T0, limit=9, lease=LEASE)
    assert (entry.id, entry.attempts, entry.last_error) == (entry_id, 0, None)
    assert (entry.domain, entry.source_domain) == (REMOTE, SOURCE)
    assert (entry.sender, entry.envid, entry.ret) == (address("bob"), "env-1", "HDRS")
    assert entry.not_after == T0 + timedelta(days=5)
    assert entry.recipients == (
        RelayRecipient(f"dr.x@{REMOTE}", NOTIFY, f"rfc822;dr.x@{REMOTE}"),
        RelayRecipient(f"dr.y@{REMOTE}", None, None),
    )
    async with store.blobs.reader(entry.blob) as reader:
        assert await drain(reader) == body

    await store.relay.attempted(
        entry_id, next_attempt=T0 + timedelta(minutes=5), error="421 4.3.2 busy"
    )
    assert await _claim(store, T0 + timedelta(minutes=4)) == []
    [again] = await store.relay.claim("n1", SOURCE, T0 + timedelta(minutes=5), limit=9, lease=LEASE)
    assert (again.attempts, again.last_error) == (1, "421 4.3.2 busy")

    await store.relay.attempted(entry_id, next_attempt=None, error=None)
    assert await store.relay.pending(SOURCE, limit=9) == []
    with pytest.raises(RelayEntryNotFound):
        await store.relay.attempted(entry_id, next_attempt=None, error=None)


async def test_a_claimed_entry_is_nobody_elses_until_its_lease_lapses(store: Store) -> None:
    """Two nodes share the queue: what one claimed the other does not get; when the first dies
    (no `attempted`), its claim lapses after the lease and the other node takes the entry."""
    entry_id = await _enqueue(store, b"one")
    assert await _claim(store, T0, node="n1") == [entry_id]
    assert await _claim(store, T0 + timedelta(seconds=1), node="n2") == []
    assert await _claim(store, T0 + LEASE - timedelta(seconds=1), node="n2") == []
    assert await _claim(store, T0 + LEASE, node="n2") == [entry_id]
    # an attempt drops the claim: the rescheduled entry is due for anyone again
    await store.relay.attempted(entry_id, next_attempt=T0 + LEASE, error="451")
    assert await _claim(store, T0 + LEASE, node="n1") == [entry_id]


async def test_a_renewed_claim_outlives_its_first_lease_and_lapses_after_the_last(
    store: Store,
) -> None:
    """A live node renews the claims it is attempting (a short lease: a dead node's entries
    come back soon); renewing returns only what the node still holds, and a claim that
    lapsed and went to another node is not renewed back."""
    first, second = await _enqueue(store, b"one"), await _enqueue(store, b"two")
    assert sorted(await _claim(store, T0, node="n1")) == sorted([first, second])
    later = T0 + LEASE - timedelta(seconds=1)
    assert await store.relay.renew("n1", [first], later, lease=LEASE) == [first]
    # the unrenewed one lapsed: n2 takes it; the renewed one is n1's for another lease
    assert await _claim(store, T0 + LEASE, node="n2") == [second]
    assert await store.relay.renew("n1", [first, second], T0 + LEASE, lease=LEASE) == [first]
    assert await _claim(store, later + LEASE - timedelta(seconds=1), node="n2") == []
    assert await store.relay.renew("n2", [], T0, lease=LEASE) == []


async def test_releasing_a_nodes_claims_frees_its_entries_at_once(store: Store) -> None:
    """A node restarting under the name of its dead process drops that process's claims
    without waiting for their lease; another node's claims stay."""
    mine, theirs = await _enqueue(store, b"one"), await _enqueue(store, b"two")
    assert await _claim(store, T0, node="n1", limit=1) == [mine]
    assert await _claim(store, T0, node="n2", limit=1) == [theirs]
    assert await store.relay.release_claims("n1") == 1
    assert await store.relay.release_claims("n1") == 0
    assert await _claim(store, T0 + timedelta(seconds=1), node="n3") == [mine]


async def test_claims_are_per_source_fachdienst_in_due_order(store: Store) -> None:
    ids = [await _enqueue(store, bytes([i])) for i in range(3)]
    other = await _enqueue(store, b"fd2's", source="test3.kim.telematik-test")
    await store.relay.attempted(ids[0], next_attempt=T0 + timedelta(seconds=30), error="later")
    later = T0 + timedelta(minutes=1)
    assert await _claim(store, later, limit=2) == ids[1:]
    assert await _claim(store, later) == [ids[0]]
    claimed = await store.relay.claim("n1", "test3.kim.telematik-test", later, limit=9, lease=LEASE)
    assert [e.id for e in claimed] == [other]
    assert [e.id for e in await store.relay.pending(SOURCE, limit=9)] == [ids[1], ids[2], ids[0]]
    assert len(await store.relay.pending(limit=9)) == 4
    depth = await store.relay.depth(SOURCE)
    assert (depth.entries, depth.oldest) == (3, T0)
    assert (await store.relay.depth("nowhere.kim.telematik-test")).entries == 0


async def test_the_body_stays_while_mailbox_or_queue_needs_it(store: Store) -> None:
    entry_id = await _enqueue(store, b"both", local=True)
    [msg] = await store.mail.list(address("alice"))
    await store.mail.delete(address("alice"), [msg.id])
    [entry] = await store.relay.claim("n1", SOURCE, T0, limit=9, lease=LEASE)
    async with store.blobs.reader(entry.blob) as reader:
        assert await drain(reader) == b"both"
    await store.relay.attempted(entry_id, next_attempt=None, error=None)


async def test_bad_dsn_parameters_are_refused(store: Store) -> None:
    async with store.blobs.writer() as w:
        await w.write(b"x")
        blob = await w.commit()
        common = {"sender": address("bob"), "envid": None, "source_domain": SOURCE,
                  "domain": REMOTE, "not_after": T0, "now": T0}  # fmt: skip
        with pytest.raises(ValueError, match="NOTIFY"):
            await store.relay.enqueue(
                blob, recipients=[RelayRecipient("a@b", frozenset({"ALWAYS"}))], ret=None,
                **common,  # type: ignore[arg-type]
            )  # fmt: skip
        with pytest.raises(ValueError, match="ret"):
            await store.relay.enqueue(
                blob, recipients=[RelayRecipient("a@b")], ret="ALL",
                **common,  # type: ignore[arg-type]
            )  # fmt: skip
        with pytest.raises(ValueError, match="empty"):
            await store.relay.enqueue(blob, recipients=[], ret=None, **common)  # type: ignore[arg-type]
    assert await store.relay.pending(limit=9) == []


async def test_relay_id_is_random_and_kept_across_attempts(store: Store) -> None:
    """Exactly-once relay (issue 11): every entry has its own random relay id (32 hex digits)
    and keeps it when an attempt is recorded, so the receiving Fachdienst recognises a repeat."""
    first, second = await _enqueue(store, b"one"), await _enqueue(store, b"two")
    ids = {e.id: e.relay_id for e in await store.relay.pending(SOURCE, limit=9)}
    assert len(set(ids.values())) == 2
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in ids.values())
    await store.relay.attempted(first, next_attempt=T0 + timedelta(seconds=30), error="451")
    again = {e.id: e.relay_id for e in await store.relay.pending(SOURCE, limit=9)}
    assert again == ids
    assert second in again


async def test_done_recipients_leave_the_entry_in_the_same_step(store: Store) -> None:
    """A partly delivered entry keeps its id and relay id with only the recipients still
    pending (issue 11: a split into a new entry was two transactions)."""
    entry_id = await _enqueue(store, b"partly")
    [before] = await store.relay.pending(SOURCE, limit=9)
    await store.relay.attempted(
        entry_id,
        next_attempt=T0 + timedelta(seconds=30),
        error="451 4.2.1 try later",
        done=[f"DR.X@{REMOTE}"],  # compared case-insensitively
    )
    [after] = await store.relay.pending(SOURCE, limit=9)
    assert (after.id, after.relay_id, after.attempts) == (entry_id, before.relay_id, 1)
    assert after.recipients == (RelayRecipient(f"dr.y@{REMOTE}", None, None),)
    with pytest.raises(ValueError, match="every recipient is done"):
        await store.relay.attempted(
            entry_id, next_attempt=T0 + timedelta(hours=1), error=None, done=[f"dr.y@{REMOTE}"]
        )
    assert await store.relay.pending(SOURCE, limit=9) == [after]


async def test_entries_survive_a_reopen_and_old_claims_do_not_block(opener) -> None:  # type: ignore[no-untyped-def]
    """A queued message survives a restart (the 250 was sent); the claim of the process that
    died with it does not keep the entry from the next attempt past its lease."""
    from store_helpers import account

    async with opener() as store:
        await store.accounts.create(account("bob"))
        entry_id = await _enqueue(store, b"queued")
        assert await _claim(store, T0) == [entry_id]
    async with opener() as store:
        assert await _claim(store, T0 + LEASE) == [entry_id]
        _, stored = await put(store, b"", [(address("bob"), b"")])
        assert stored
