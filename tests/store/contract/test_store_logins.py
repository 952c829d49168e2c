"""Contract: failed logins per (account, client address) (KOM-LE-A_2167, issue 11): the
lockout policy (threshold, doubling lock, cap, forgetting) and the atomic store steps that
apply it, shared by every protocol and every node; durable across a reopen."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import pytest
import trio
from store_helpers import address

from kim_appliance.store import LockoutPolicy, LockState, Store

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = LockoutPolicy(
    max_failures=3,
    first_lockout=timedelta(minutes=1),
    max_lockout=timedelta(minutes=5),
    forget_after=timedelta(hours=24),
)
ALICE = address("alice")
Opener = Callable[[], AbstractAsyncContextManager[Store]]


async def _fail(store: Store, n: int, at: datetime, client: str = "192.0.2.1") -> LockState:
    state = LockState()
    for _ in range(n):
        state = await store.logins.record_failure(ALICE, client, at, POLICY)
    return state


async def test_the_third_failure_locks_for_the_first_lockout(store: Store) -> None:
    """KOM-LE-A_2167: failures in a row count up; the max_failures-th locks this client."""
    assert await store.logins.state(ALICE, "192.0.2.1") is None
    two = await _fail(store, 2, T0)
    assert (two.failures, two.locks, two.locked(T0)) == (2, 0, False)
    locked = await _fail(store, 1, T0)
    assert locked == LockState(0, 1, T0 + timedelta(minutes=1), T0)
    assert await store.logins.state(ALICE.upper(), "192.0.2.1") == locked  # key: any case
    assert locked.locked(T0 + timedelta(seconds=59))
    assert not locked.locked(T0 + timedelta(minutes=1))


async def test_each_further_lock_doubles_up_to_the_cap(store: Store) -> None:
    """The backoff: 1, 2, 4 minutes, then the 5-minute cap, for one client."""
    now = T0
    lengths = []
    for _ in range(5):
        state = await _fail(store, 3, now)
        assert state.locked_until is not None
        lengths.append(state.locked_until - now)
        now = state.locked_until
    assert lengths == [timedelta(minutes=m) for m in (1, 2, 4, 5, 5)]


async def test_failures_during_a_lock_do_not_count(store: Store) -> None:
    """A failure while the lock runs changes nothing: the caller refuses without checking, and
    an attacker cannot make the practice's lock longer."""
    locked = await _fail(store, 3, T0)
    again = await _fail(store, 10, T0 + timedelta(seconds=30))
    assert again == locked


async def test_a_quiet_day_starts_again_at_zero(store: Store) -> None:
    """No failure for forget_after (24 h) and no lock running: counts and backoff reset."""
    await _fail(store, 3, T0)
    await _fail(store, 2, T0 + timedelta(minutes=2))
    later = await _fail(store, 1, T0 + timedelta(minutes=2, hours=24))
    assert (later.failures, later.locks) == (1, 0)


async def test_clients_and_accounts_are_counted_apart(store: Store) -> None:
    """Per (account, client address): the stranger's failures lock the stranger only."""
    await _fail(store, 3, T0, client="198.51.100.7")
    assert await store.logins.state(ALICE, "192.0.2.1") is None
    assert await store.logins.state(address("bob"), "198.51.100.7") is None
    state = await store.logins.state(ALICE, "198.51.100.7")
    assert state is not None
    assert state.locked(T0)


async def test_clear_one_client_or_all(store: Store) -> None:
    """A successful login clears its own client; a new password (KOM-LE-A_2168) clears all."""
    await _fail(store, 2, T0, client="192.0.2.1")
    await _fail(store, 3, T0, client="198.51.100.7")
    await store.logins.clear(ALICE, "192.0.2.1")
    assert await store.logins.state(ALICE, "192.0.2.1") is None
    assert await store.logins.state(ALICE, "198.51.100.7") is not None
    await store.logins.clear(ALICE.upper())
    assert await store.logins.state(ALICE, "198.51.100.7") is None


async def test_counters_survive_a_reopen(opener: Opener) -> None:
    """Durable: a restart does not give an attacker fresh tries (KOM-LE-A_2167)."""
    async with opener() as store:
        locked = await _fail(store, 3, T0)
    async with opener() as store:
        assert await store.logins.state(ALICE, "192.0.2.1") == locked
        # and the next failures continue the backoff where it was
        after = await _fail(store, 3, T0 + timedelta(minutes=1))
        assert after.locks == 2


async def test_expire_forgets_idle_counters_but_not_running_locks(store: Store) -> None:
    """Bookkeeping is pruned by the retention pass; a lock that still runs is never pruned."""
    policy = LockoutPolicy(3, timedelta(days=5), timedelta(days=5), timedelta(hours=24))
    for _ in range(3):
        await store.logins.record_failure(ALICE, "198.51.100.7", T0, policy)
    await store.logins.record_failure(ALICE, "192.0.2.1", T0, POLICY)
    assert await store.logins.expire(T0 + timedelta(days=3), timedelta(days=2)) == 1
    assert await store.logins.state(ALICE, "192.0.2.1") is None
    assert await store.logins.state(ALICE, "198.51.100.7") is not None


async def test_parallel_failures_are_all_counted(store: Store) -> None:
    """record_failure is one atomic step: 40 failures at once lose no count."""
    policy = LockoutPolicy(max_failures=1000)
    async with trio.open_nursery() as nursery:
        for _ in range(40):
            nursery.start_soon(store.logins.record_failure, ALICE, "192.0.2.1", T0, policy)
    state = await store.logins.state(ALICE, "192.0.2.1")
    assert state is not None
    assert state.failures == 40


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_failures": 0}, "max_failures"),
        ({"first_lockout": timedelta(0)}, "positive"),
        ({"first_lockout": timedelta(hours=5), "max_lockout": timedelta(hours=1)}, "at most"),
    ],
)
def test_policy_refuses_nonsense(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LockoutPolicy(**kwargs)  # type: ignore[arg-type]
