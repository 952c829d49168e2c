"""Failed logins per (account, client address) in the store (KOM-LE-A_2167, issue 11): the
lockout policy (threshold, doubling lock, cap, forgetting) and the atomic store steps that
apply it, shared by every protocol and every node."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from store_helpers import address

from kim_appliance.store import LockoutPolicy, LockState, SQLiteMailStore

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = LockoutPolicy(
    max_failures=3,
    first_lockout=timedelta(minutes=1),
    max_lockout=timedelta(minutes=5),
    forget_after=timedelta(hours=24),
)
ALICE = address("alice")


def _fail(store: SQLiteMailStore, n: int, at: datetime, client: str = "192.0.2.1") -> LockState:
    state = LockState()
    for _ in range(n):
        state = store.record_login_failure(ALICE, client, at, POLICY)
    return state


def test_the_third_failure_locks_for_the_first_lockout(plain_store: SQLiteMailStore) -> None:
    """KOM-LE-A_2167: failures in a row count up; the max_failures-th locks this client."""
    assert plain_store.login_state(ALICE, "192.0.2.1") is None
    two = _fail(plain_store, 2, T0)
    assert (two.failures, two.locks, two.locked(T0)) == (2, 0, False)
    locked = _fail(plain_store, 1, T0)
    assert locked == LockState(0, 1, T0 + timedelta(minutes=1), T0)
    assert plain_store.login_state(ALICE.upper(), "192.0.2.1") == locked  # key: any case
    assert locked.locked(T0 + timedelta(seconds=59))
    assert not locked.locked(T0 + timedelta(minutes=1))


def test_each_further_lock_doubles_up_to_the_cap(plain_store: SQLiteMailStore) -> None:
    """The backoff: 1, 2, 4 minutes, then the 5-minute cap, for one client."""
    now = T0
    lengths = []
    for _ in range(5):
        state = _fail(plain_store, 3, now)
        assert state.locked_until is not None
        lengths.append(state.locked_until - now)
        now = state.locked_until
    assert lengths == [timedelta(minutes=m) for m in (1, 2, 4, 5, 5)]


def test_failures_during_a_lock_do_not_count(plain_store: SQLiteMailStore) -> None:
    """A failure while the lock runs changes nothing: the caller refuses without checking, and
    an attacker cannot make the practice's lock longer."""
    locked = _fail(plain_store, 3, T0)
    again = _fail(plain_store, 10, T0 + timedelta(seconds=30))
    assert again == locked


def test_a_quiet_day_starts_again_at_zero(plain_store: SQLiteMailStore) -> None:
    """No failure for forget_after (24 h) and no lock running: counts and backoff reset."""
    _fail(plain_store, 3, T0)
    _fail(plain_store, 2, T0 + timedelta(minutes=2))
    later = _fail(plain_store, 1, T0 + timedelta(minutes=2, hours=24))
    assert (later.failures, later.locks) == (1, 0)


def test_clients_and_accounts_are_counted_apart(plain_store: SQLiteMailStore) -> None:
    """Per (account, client address): the stranger's failures lock the stranger only."""
    _fail(plain_store, 3, T0, client="198.51.100.7")
    assert plain_store.login_state(ALICE, "192.0.2.1") is None
    assert plain_store.login_state(address("bob"), "198.51.100.7") is None
    state = plain_store.login_state(ALICE, "198.51.100.7")
    assert state is not None
    assert state.locked(T0)


def test_clear_one_client_or_all(plain_store: SQLiteMailStore) -> None:
    """A successful login clears its own client; a new password (KOM-LE-A_2168) clears all."""
    _fail(plain_store, 2, T0, client="192.0.2.1")
    _fail(plain_store, 3, T0, client="198.51.100.7")
    plain_store.clear_login_failures(ALICE, "192.0.2.1")
    assert plain_store.login_state(ALICE, "192.0.2.1") is None
    assert plain_store.login_state(ALICE, "198.51.100.7") is not None
    plain_store.clear_login_failures(ALICE.upper())
    assert plain_store.login_state(ALICE, "198.51.100.7") is None


def test_counters_survive_reopening(plain_store: SQLiteMailStore) -> None:
    """Durable: a restart does not give an attacker fresh tries."""
    from kim_appliance.store import open_store

    locked = _fail(plain_store, 3, T0)
    plain_store.close()
    with open_store(plain_store.data_dir) as again:
        assert again.login_state(ALICE, "192.0.2.1") == locked


def test_expire_forgets_idle_counters_but_not_running_locks(plain_store: SQLiteMailStore) -> None:
    """Bookkeeping is pruned by the retention pass; a lock that still runs is never pruned."""
    policy = LockoutPolicy(3, timedelta(days=5), timedelta(days=5), timedelta(hours=24))
    for _ in range(3):
        plain_store.record_login_failure(ALICE, "198.51.100.7", T0, policy)
    plain_store.record_login_failure(ALICE, "192.0.2.1", T0, POLICY)
    plain_store.expire(T0 + timedelta(days=3))
    assert plain_store.login_state(ALICE, "192.0.2.1") is None
    assert plain_store.login_state(ALICE, "198.51.100.7") is not None


def test_parallel_failures_are_all_counted(plain_store: SQLiteMailStore) -> None:
    """record_login_failure is one atomic step: 40 threads at once lose no count."""
    policy = LockoutPolicy(max_failures=1000)
    barrier = threading.Barrier(40)

    def fail() -> None:
        barrier.wait()
        plain_store.record_login_failure(ALICE, "192.0.2.1", T0, policy)

    threads = [threading.Thread(target=fail) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = plain_store.login_state(ALICE, "192.0.2.1")
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
