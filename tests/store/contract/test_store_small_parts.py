"""Contract: the small shared state of the appliance: the absence-note reply ledger (RFC 3834),
registration codes and OTPs (digest §3.3), POP3 maildrop locks (RFC 1939 §8), the directory
with its change counter (digest §4), nodes and leases, and the store's meta facts."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import pytest
import trio
from store_helpers import account, address

from kim_appliance.store import (
    DirectoryConflict,
    DirectoryRow,
    OtpCheck,
    OutOfOffice,
    RegistrationCode,
    RegistrationCodeUsed,
    Store,
)

NOW = datetime(2025, 7, 1, 8, tzinfo=UTC)
Opener = Callable[[], AbstractAsyncContextManager[Store]]
TTL = timedelta(seconds=90)
DOMAIN = "test1.kim.telematik-test"


# --- the reply ledger of absence notes ------------------------------------------------------


async def test_a_sender_gets_a_note_once_also_after_a_reopen(opener: Opener) -> None:
    """KOM-LE-A_2223, RFC 3834 §2: once per sender and note; durable, so a restart does not
    answer the same sender again; a new note (another start) answers again."""
    async with opener() as store:
        await store.accounts.create(account("alice"))
        assert await store.autoreplies.remember(address("alice"), "x@y.de", NOW, NOW)
        assert not await store.autoreplies.remember(address("ALICE"), "X@y.de", NOW, NOW)
    async with opener() as store:
        assert not await store.autoreplies.remember(address("alice"), "x@y.de", NOW, NOW)
        assert await store.autoreplies.remember(address("alice"), "other@y.de", NOW, NOW)
        later = NOW + timedelta(days=30)
        assert await store.autoreplies.remember(address("alice"), "x@y.de", later, later)


async def test_expire_forgets_the_ledger_of_notes_that_no_longer_run(store: Store) -> None:
    note = OutOfOffice(True, NOW, NOW + timedelta(days=7), "Urlaub")
    await store.accounts.update(address("alice"), out_of_office=note)
    await store.autoreplies.remember(address("alice"), "x@y.de", NOW, NOW)
    await store.autoreplies.remember(address("bob"), "x@y.de", NOW, NOW)  # bob has no note
    assert await store.autoreplies.expire(NOW + timedelta(days=1)) == 1
    assert not await store.autoreplies.remember(address("alice"), "x@y.de", NOW, NOW)
    assert await store.autoreplies.expire(NOW + timedelta(days=8)) == 1  # alice's note ended
    assert await store.autoreplies.remember(address("alice"), "x@y.de", NOW, NOW)


async def test_concurrent_replies_to_one_sender_are_remembered_once(store: Store) -> None:
    answers: list[bool] = []

    async def remember() -> None:
        answers.append(await store.autoreplies.remember(address("bob"), "x@y.de", NOW, NOW))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(remember)
    assert sorted(answers) == [False] * 7 + [True]


# --- registration codes and OTPs ------------------------------------------------------------


async def test_registration_codes_per_domain(store: Store) -> None:
    code = RegistrationCode(DOMAIN.upper(), "REF-1", "scrypt$1", "1-SMC-B-1")
    await store.registrations.put_code(code)
    got = await store.registrations.get_code(DOMAIN, "REF-1")
    assert got == RegistrationCode(DOMAIN, "REF-1", "scrypt$1", "1-SMC-B-1")
    assert await store.registrations.get_code("other.kim.telematik-test", "REF-1") is None
    # an unused code may be issued again (a new initial password)
    await store.registrations.put_code(RegistrationCode(DOMAIN, "REF-1", "scrypt$2"))
    assert (await store.registrations.get_code(DOMAIN, "REF-1")).ini_password_hash == "scrypt$2"  # type: ignore[union-attr]
    assert await store.registrations.use_code(DOMAIN, "REF-1", address("Neu"))
    assert not await store.registrations.use_code(DOMAIN, "REF-1", address("zweit"))
    assert not await store.registrations.use_code(DOMAIN, "REF-404", address("zweit"))
    used = await store.registrations.code_of(address("NEU"))
    assert used is not None
    assert (used.reference_id, used.used_by) == ("REF-1", address("Neu"))
    with pytest.raises(RegistrationCodeUsed, match="already used"):
        await store.registrations.put_code(RegistrationCode(DOMAIN, "REF-1", "scrypt$3"))


async def test_an_otp_works_once_and_only_the_newest(store: Store) -> None:
    """digest §3.3: an OTP is valid for a week, once; a new one cancels the older."""
    week = NOW + timedelta(days=7)
    await store.registrations.put_otp(address("alice"), "d1", week)
    await store.registrations.put_otp(address("ALICE"), "d2", week)
    assert await store.registrations.take_otp(address("alice"), "d1", NOW) is OtpCheck.INVALID
    assert await store.registrations.take_otp(address("alice"), "d2", week) is OtpCheck.EXPIRED
    assert await store.registrations.take_otp(address("alice"), "d2", NOW) is OtpCheck.OK
    assert await store.registrations.take_otp(address("alice"), "d2", NOW) is OtpCheck.INVALID


# --- POP3 maildrop locks --------------------------------------------------------------------


async def test_a_maildrop_has_one_holder_at_a_time(store: Store) -> None:
    """RFC 1939 §8: a second session on a locked maildrop gets [IN-USE] (lock is False); the
    holder renews; after unlock the next one gets it."""
    mailbox = address("alice")
    assert await store.maildrops.lock(mailbox, "node1/s1", NOW, TTL)
    assert not await store.maildrops.lock(mailbox.upper(), "node2/s2", NOW, TTL)
    assert await store.maildrops.lock(address("bob"), "node2/s2", NOW, TTL)
    assert await store.maildrops.renew(mailbox, "node1/s1", NOW + TTL / 2, TTL)
    assert not await store.maildrops.renew(mailbox, "node2/s2", NOW, TTL)
    await store.maildrops.unlock(mailbox, "node2/s2")  # not the holder: nothing happens
    assert not await store.maildrops.lock(mailbox, "node2/s2", NOW + TTL, TTL)
    await store.maildrops.unlock(mailbox, "node1/s1")
    assert await store.maildrops.lock(mailbox, "node2/s2", NOW, TTL)


async def test_the_locks_of_a_dead_process_are_released_by_holder_prefix(store: Store) -> None:
    """A node restarted after its process died frees that process's maildrops at once: every
    lock whose holder starts with the prefix, taken literally (``_`` and ``%`` are no
    wildcards); other holders' locks stay."""
    for who, holder in (("alice", "n_1/s1"), ("bob", "n_1/s2"), ("carol", "nx1/s3")):
        assert await store.maildrops.lock(address(who), holder, NOW, TTL)
    assert await store.maildrops.lock(address("dave"), "n_10/s4", NOW, TTL)
    assert await store.maildrops.release_holders("n_1/") == 2
    assert await store.maildrops.release_holders("n_1/") == 0
    assert await store.maildrops.lock(address("alice"), "n2/s5", NOW, TTL)
    assert not await store.maildrops.lock(address("carol"), "n2/s5", NOW, TTL)
    assert not await store.maildrops.lock(address("dave"), "n2/s5", NOW, TTL)


async def test_the_lock_of_a_dead_session_lapses(store: Store) -> None:
    """A node died with a session open: its lock lapses after the TTL, and the holder that
    comes back finds it taken (renew is False)."""
    mailbox = address("alice")
    assert await store.maildrops.lock(mailbox, "dead/s1", NOW, TTL)
    assert not await store.maildrops.lock(mailbox, "live/s2", NOW + TTL - timedelta(seconds=1), TTL)
    assert await store.maildrops.lock(mailbox, "live/s2", NOW + TTL, TTL)
    assert not await store.maildrops.renew(mailbox, "dead/s1", NOW + TTL, TTL)


async def test_two_sessions_racing_for_a_maildrop_get_it_once(store: Store) -> None:
    got: list[str] = []

    async def session(holder: str) -> None:
        if await store.maildrops.lock(address("carol"), holder, NOW, TTL):
            got.append(holder)

    async with trio.open_nursery() as nursery:
        for n in range(6):
            nursery.start_soon(session, f"node/s{n}")
    assert len(got) == 1


# --- the directory ------------------------------------------------------------------------


async def test_every_directory_change_moves_the_version(store: Store) -> None:
    start = await store.directory.version()
    v1 = await store.directory.put(DirectoryRow("u1", "1-a", '{"a": 1}'), expected_version=start)
    v2 = await store.directory.put(DirectoryRow("u2", "1-b", '{"b": 2}'), expected_version=v1)
    v3 = await store.directory.put(DirectoryRow("u1", "1-a", '{"a": 3}'), expected_version=v2)
    assert [v1, v2, v3] == [start + 1, start + 2, start + 3]
    snapshot = await store.directory.snapshot()
    assert snapshot.version == v3
    assert sorted(snapshot.rows, key=lambda r: r.uid) == [
        DirectoryRow("u1", "1-a", '{"a": 3}'),
        DirectoryRow("u2", "1-b", '{"b": 2}'),
    ]
    v4 = await store.directory.delete("u2", expected_version=v3)
    assert [r.uid for r in (await store.directory.snapshot()).rows] == ["u1"]
    assert await store.directory.version() == v4


async def test_a_directory_change_against_an_old_version_is_a_conflict(store: Store) -> None:
    """Two nodes validated a change against the same version: the second write must fail, so
    that it is validated again against what the first wrote."""
    start = await store.directory.version()
    await store.directory.put(DirectoryRow("u1", "1-a", "{}"), expected_version=start)
    with pytest.raises(DirectoryConflict):
        await store.directory.put(DirectoryRow("u2", "1-b", "{}"), expected_version=start)
    with pytest.raises(DirectoryConflict):
        await store.directory.delete("u1", expected_version=start)
    version = await store.directory.version()
    with pytest.raises(DirectoryConflict, match="1-a"):  # a Telematik-ID has one entry
        await store.directory.put(DirectoryRow("u9", "1-a", "{}"), expected_version=version)
    assert len((await store.directory.snapshot()).rows) == 1


async def test_directory_rows_survive_a_reopen(opener: Opener) -> None:
    async with opener() as store:
        version = await store.directory.put(
            DirectoryRow("u1", "1-a", '{"x": "ä"}'),
            expected_version=await store.directory.version(),
        )
    async with opener() as store:
        snapshot = await store.directory.snapshot()
        assert snapshot.version == version
        assert snapshot.rows == (DirectoryRow("u1", "1-a", '{"x": "ä"}'),)


# --- nodes, leases, meta --------------------------------------------------------------------


async def test_nodes_report_themselves_and_leases_have_one_holder(store: Store) -> None:
    await store.nodes.heartbeat("n1", {"smtp": "127.0.0.1:1"}, ["fachdienst"], NOW)
    await store.nodes.heartbeat("n2", {}, ["console"], NOW - timedelta(minutes=5))
    [live] = await store.nodes.live(NOW, timedelta(minutes=1))
    assert (live.name, dict(live.endpoints), live.components) == (
        "n1", {"smtp": "127.0.0.1:1"}, ("fachdienst",),
    )  # fmt: skip
    assert await store.nodes.acquire("retention", "n1", NOW, TTL)
    assert not await store.nodes.acquire("retention", "n2", NOW, TTL)
    assert await store.nodes.acquire("retention", "n1", NOW + TTL / 2, TTL)  # extends
    assert await store.nodes.acquire("retention", "n2", NOW + TTL * 2, TTL)  # lapsed
    await store.nodes.release("retention", "n2")
    assert await store.nodes.acquire("retention", "n1", NOW + TTL * 2, TTL)


async def test_a_node_that_leaves_is_no_longer_live(store: Store) -> None:
    """A clean stop takes the node out of the live list at once (not after its heartbeat
    ages); the other nodes stay, and leaving twice is harmless."""
    await store.nodes.heartbeat("n1", {"pid": 1}, ["fachdienst"], NOW)
    await store.nodes.heartbeat("n2", {"pid": 2}, ["fachdienst"], NOW)
    await store.nodes.leave("n1")
    await store.nodes.leave("n1")
    assert [n.name for n in await store.nodes.live(NOW, timedelta(minutes=1))] == ["n2"]
    await store.nodes.heartbeat("n1", {"pid": 3}, ["console"], NOW)  # back again
    assert [n.name for n in await store.nodes.live(NOW, timedelta(minutes=1))] == ["n1", "n2"]


async def test_meta_facts_are_set_once(store: Store) -> None:
    assert await store.meta.get("fact") is None
    assert await store.meta.put_if_absent("fact", "first")
    assert not await store.meta.put_if_absent("fact", "second")
    assert await store.meta.get("fact") == "first"
