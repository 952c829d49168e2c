"""The Fachdienst's credential cache (issue 13): successes remembered for a bounded time under
an HMAC key, never more than MAX_ENTRIES, dropped per account on demand."""

from __future__ import annotations

import pytest

from kim_appliance.fachdienst.credential_cache import CredentialCache

ADDRESS = "praxis.weber@fd1.kim.telematik-test"
HASH = "scrypt$16384$8$1$c2FsdA==$aGFzaA=="


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_remembered_login_expires_after_the_ttl() -> None:
    clock = Clock()
    cache = CredentialCache(ttl_seconds=60, clock=clock)
    assert not cache.verified(ADDRESS, HASH, "pw")
    cache.remember(ADDRESS, HASH, "pw")
    assert cache.verified(ADDRESS.upper(), HASH, "pw")
    clock.now += 59.9
    assert cache.verified(ADDRESS, HASH, "pw")
    clock.now += 0.2
    assert not cache.verified(ADDRESS, HASH, "pw")
    assert len(cache) == 0


@pytest.mark.parametrize(
    ("address", "stored_hash", "password"),
    [
        (ADDRESS, HASH, "pw2"),  # another password
        (ADDRESS, HASH + "x", "pw"),  # the password changed: a new stored hash
        ("praxis.roth@fd1.kim.telematik-test", HASH, "pw"),  # another account
        (ADDRESS, HASH, "pw\0"),  # no ambiguity between the parts
    ],
)
def test_only_the_same_triple_matches(address: str, stored_hash: str, password: str) -> None:
    cache = CredentialCache()
    cache.remember(ADDRESS, HASH, "pw")
    assert not cache.verified(address, stored_hash, password)


def test_the_cache_keeps_no_password_and_differs_per_process() -> None:
    """The keys are HMACs under a secret made per cache: neither the password nor an unkeyed
    hash of it is kept, and another process's cache cannot use them."""
    one, two = CredentialCache(), CredentialCache()
    one.remember(ADDRESS, HASH, "Richtig-Passw0rt!")
    assert not two.verified(ADDRESS, HASH, "Richtig-Passw0rt!")
    assert "Richtig" not in repr(vars(one))


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = CredentialCache(max_entries=2)
    cache.remember(ADDRESS, HASH, "a")
    cache.remember(ADDRESS, HASH, "b")
    assert cache.verified(ADDRESS, HASH, "a")  # a is used, so b is the oldest now
    cache.remember(ADDRESS, HASH, "c")
    assert len(cache) == 2
    assert cache.verified(ADDRESS, HASH, "a")
    assert not cache.verified(ADDRESS, HASH, "b")
    assert cache.verified(ADDRESS, HASH, "c")


def test_forget_drops_every_entry_of_one_account() -> None:
    cache = CredentialCache()
    cache.remember(ADDRESS, HASH, "a")
    cache.remember(ADDRESS, HASH, "b")
    cache.remember("praxis.roth@fd1.kim.telematik-test", HASH, "a")
    assert cache.forget(ADDRESS.upper()) == 2
    assert not cache.verified(ADDRESS, HASH, "a")
    assert cache.verified("praxis.roth@fd1.kim.telematik-test", HASH, "a")


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        CredentialCache(ttl_seconds=0)
    with pytest.raises(ValueError, match="must be positive"):
        CredentialCache(max_entries=0)
