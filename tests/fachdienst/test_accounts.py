"""The Fachdienst's Authenticator (KOM-LE-A_2167, issue 11) against a real store: lockout per
(account, client address) with a doubling lock, one answer and one scrypt check for unknown,
wrong and locked, and the client keys (IPv4, IPv6 /64)."""

from __future__ import annotations

import datetime as dt

import pytest

from kim_appliance.fachdienst.accounts import (
    Authenticator,
    AuthOutcome,
    client_key,
    client_of_peer,
    failure_text,
)
from kim_appliance.store import Account, passwords
from kim_appliance.store.passwords import hash_password
from kim_appliance.store.sqlite import SQLiteStore

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
USER = "praxis.weber@fd1.kim.telematik-test"
PASSWORD = "Richtig-Passw0rt!"
PRAXIS, STRANGER = "192.0.2.10", "198.51.100.66"


DOMAIN = "fd1.kim.telematik-test"


@pytest.fixture
async def store(kim_store: SQLiteStore) -> SQLiteStore:
    await kim_store.accounts.create(
        Account(USER, hash_password(PASSWORD), "1-SMC-B-1", "Praxis Weber")
    )
    return kim_store


def _auth(store: SQLiteStore) -> Authenticator:
    return Authenticator(
        store, domain=DOMAIN, max_failed_logins=3, lockout_seconds=60, max_lockout_seconds=300
    )


@pytest.fixture
def auth(store: SQLiteStore) -> Authenticator:
    return _auth(store)


async def test_a_stranger_locks_out_only_himself(auth: Authenticator) -> None:
    """KOM-LE-A_2167: three failures from the stranger's address lock the account for that
    address; the practice logs in from its own address at the same moment."""
    for _ in range(3):
        assert not (await auth.authenticate(USER, "geraten", client=STRANGER, now=T0)).ok
    refused = await auth.authenticate(USER, PASSWORD, client=STRANGER, now=T0)
    assert refused.outcome is AuthOutcome.LOCKED
    assert (await auth.authenticate(USER, PASSWORD, client=PRAXIS, now=T0)).ok


async def test_an_account_of_another_fachdienst_is_unknown_here(store: SQLiteStore) -> None:
    """One store holds every Fachdienst's accounts: fd2's Authenticator does not log in an
    account of fd1, not even with the right password."""
    other = Authenticator(store, domain="fd2.kim.telematik-test", max_failed_logins=3,
                          lockout_seconds=60)  # fmt: skip
    result = await other.authenticate(USER, PASSWORD, client=PRAXIS, now=T0)
    assert result.outcome is AuthOutcome.UNKNOWN_ACCOUNT


async def test_the_lock_doubles_while_no_login_succeeds(store: SQLiteStore) -> None:
    """Backoff as the store keeps it: a client that only fails is locked 60, 120, 240, 300,
    300 s; a success would clear it."""
    auth = _auth(store)
    now = T0
    lengths = []
    for _ in range(5):
        for _ in range(3):
            await auth.authenticate(USER, "geraten", client=STRANGER, now=now)
        state = await store.logins.state(USER, STRANGER)
        assert state is not None
        assert state.locked_until is not None
        lengths.append(int((state.locked_until - now).total_seconds()))
        now = state.locked_until
    assert lengths == [60, 120, 240, 300, 300]


async def test_unknown_wrong_and_locked_give_one_answer_and_one_scrypt(
    auth: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No account enumeration: the same text (but for the username) and exactly one scrypt
    check for an unknown account, a wrong password and a locked account, so neither the answer
    nor the time taken tells them apart; the outcome for the log still does."""
    calls: list[int] = []
    real = passwords._scrypt

    def counting(*args: object) -> bytes:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(passwords, "_scrypt", counting)
    nobody = USER.replace("praxis.weber", "niemand")
    results = []
    attempts = [(nobody, "x"), (USER, "x"), (USER, "x"), (USER, "x"), (USER, PASSWORD)]
    for username, password in attempts:
        calls.clear()
        results.append(await auth.authenticate(username, password, client=STRANGER, now=T0))
        assert len(calls) == 1, (username, password)
    outcomes = [r.outcome for r in results]
    assert outcomes == [
        AuthOutcome.UNKNOWN_ACCOUNT,
        AuthOutcome.WRONG_PASSWORD,
        AuthOutcome.WRONG_PASSWORD,
        AuthOutcome.WRONG_PASSWORD,
        AuthOutcome.LOCKED,
    ]
    texts = {r.text.replace(nobody, USER) for r in results}
    assert texts == {failure_text(USER, 3)}
    assert "locked for this client" in next(iter(texts))  # explains, without saying it is


async def test_unknown_accounts_lock_like_known_ones(auth: Authenticator) -> None:
    """Before issue 11 unknown accounts never locked, which told a prober which exist."""
    nobody = "niemand@fd1.kim.telematik-test"
    for _ in range(3):
        await auth.authenticate(nobody, "x", client=STRANGER, now=T0)
    assert (await auth.authenticate(nobody, "x", client=STRANGER, now=T0)).locked


async def test_success_clears_the_clients_count(auth: Authenticator, store: SQLiteStore) -> None:
    for _ in range(2):
        await auth.authenticate(USER, "x", client=PRAXIS, now=T0)
    assert (await auth.authenticate(USER, PASSWORD, client=PRAXIS, now=T0)).ok
    assert await store.logins.state(USER, PRAXIS) is None


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.10", "192.0.2.10"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2:bbbb::7]", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.10", "192.0.2.10"),
        ("fe80::1%eth0", "fe80::/64"),
        ("?", "?"),
    ],
)
def test_client_keys(host: str, key: str) -> None:
    """An IPv6 host owns its /64: counting per address would give it 2**64 tries."""
    assert client_key(host) == key


def test_client_of_peer() -> None:
    assert client_of_peer("127.0.0.1:5123") == "127.0.0.1"
    assert client_of_peer("2001:db8::1:5123") == client_key("2001:db8::1")
    assert client_of_peer("?") == "?"


def test_failure_text_shows_no_control_characters() -> None:
    """The username comes from the client: it goes into a one-line reply printable only."""
    text = failure_text("evil\r\n250 ok\x1b[31m@x", 5)
    assert "\r" not in text
    assert "\n" not in text
    assert "\x1b" not in text


def _counting_scrypt(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = passwords._scrypt

    def counting(*args: object) -> bytes:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(passwords, "_scrypt", counting)
    return calls


async def test_a_repeated_login_skips_scrypt_but_a_wrong_password_never_does(
    auth: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 (Dovecot-style auth cache): the second login with the same right password is
    answered from the credential cache without scrypt; a wrong password always pays the full
    check (KOM-LE-A_2164: still only the salted hash is compared), and failures are not kept."""
    calls = _counting_scrypt(monkeypatch)
    assert (await auth.authenticate(USER, PASSWORD, client=PRAXIS, now=T0)).ok
    assert len(calls) == 1
    assert (await auth.authenticate(USER.upper(), PASSWORD, client=PRAXIS, now=T0)).ok
    assert len(calls) == 1
    for _ in range(2):
        assert not (await auth.authenticate(USER, "geraten", client=PRAXIS, now=T0)).ok
    assert len(calls) == 3
    assert len(auth.cache) == 1


async def test_a_changed_password_never_matches_a_cached_login(
    auth: Authenticator, store: SQLiteStore
) -> None:
    """The cache is keyed by the stored hash too: after a password change (here or on another
    node: only the store's row counts) the old password is refused at once."""
    assert (await auth.authenticate(USER, PASSWORD, client=PRAXIS, now=T0)).ok
    await store.accounts.update(USER, password_hash=hash_password("Neu-Passw0rt!"))
    old = await auth.authenticate(USER, PASSWORD, client=PRAXIS, now=T0)
    assert old.outcome is AuthOutcome.WRONG_PASSWORD
    assert (await auth.authenticate(USER, "Neu-Passw0rt!", client=PRAXIS, now=T0)).ok


async def test_a_deregistered_account_is_unknown_despite_a_cached_login(
    auth: Authenticator, store: SQLiteStore
) -> None:
    assert (await auth.authenticate(USER, PASSWORD, client=PRAXIS, now=T0)).ok
    await store.accounts.purge(USER, now=T0)
    gone = await auth.authenticate(USER, PASSWORD, client=PRAXIS, now=T0)
    assert gone.outcome is AuthOutcome.UNKNOWN_ACCOUNT


async def test_a_locked_client_is_refused_even_with_a_cached_password(
    auth: Authenticator, store: SQLiteStore
) -> None:
    """KOM-LE-A_2167 with the cache: the lock is read from the store on every login, so a
    client locked (here, or by another node writing the same store) gets no cached success,
    and the account's cached logins are dropped when the lock falls."""
    assert (await auth.authenticate(USER, PASSWORD, client=STRANGER, now=T0)).ok
    assert len(auth.cache) == 1
    for _ in range(3):
        assert not (await auth.authenticate(USER, "geraten", client=STRANGER, now=T0)).ok
    assert len(auth.cache) == 0
    other_node = _auth(store)  # a second node with its own cache, filled before the lock
    assert (await other_node.authenticate(USER, PASSWORD, client=PRAXIS, now=T0)).ok
    refused = await auth.authenticate(USER, PASSWORD, client=STRANGER, now=T0)
    assert refused.outcome is AuthOutcome.LOCKED
    assert (await other_node.authenticate(USER, PASSWORD, client=PRAXIS, now=T0)).ok
    for _ in range(3):
        await auth.authenticate(USER, "geraten", client=PRAXIS, now=T0)
    locked = await other_node.authenticate(USER, PASSWORD, client=PRAXIS, now=T0)
    assert locked.outcome is AuthOutcome.LOCKED
