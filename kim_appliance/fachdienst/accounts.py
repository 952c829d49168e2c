"""Authentication of KIM participants at the Fachdienst, with lockout after failed logins.

The username is the plain KIM address (KOM-LE-A_2161); passwords are compared against the
stored salted hash only (KOM-LE-A_2164). Lockout (KOM-LE-A_2167; gematik publishes no numbers,
digest §7.1) is kept per (account, client address), never per account alone: a stranger who
guesses passwords locks out only himself, and the practice logs in from its own address as
before. After ``max_failed_logins`` failures in a row from one client the account is locked for
that client for ``lockout_seconds``, each further lock of the same client twice as long, up to
``max_lockout_seconds``; a successful login from that client starts again at zero. The counters
are in the store (durable, shared by every node and protocol: SMTP, POP3, AccountLimit, KAS,
Account Manager). An IPv6 client counts by its /64 prefix (one host has a whole /64). The store
holds every Fachdienst's accounts: an account of another domain is an unknown account here.

No account enumeration: an unknown account, a wrong password and a running lock give the SAME
answer text, and the same work (one scrypt check; an unknown account's failures are counted
like any other). The outcome in :class:`AuthResult` tells the log which one it was; the text is
what the client sees. The scrypt check runs in a worker thread under the caller's limiter.

A successful check is remembered for a while in a :class:`CredentialCache` (keyed by HMAC over
the address, the stored hash and the password), so that the Clientmodul's many logins with the
same credentials (one per KAS and AccountLimit request) do not each pay scrypt; a password
change never matches an old entry, failures are never cached, and the lock state is read from
the store on every login as before (issue 13).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING

import trio

from kim_appliance.fachdienst.credential_cache import CredentialCache
from kim_appliance.observe.observer import Observer
from kim_appliance.store import LockoutPolicy, Store, domain_of
from kim_appliance.store.passwords import dummy_verify, prepare_dummy, verify_password

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

#: the longest a lock of one client grows to by doubling (and at least ``lockout_seconds``)
MAX_LOCKOUT_SECONDS = 4 * 3600
#: scrypt needs 16 MiB and a core per check: at most two at a time, so that ten parallel
#: logins neither spike the memory nor starve the sessions (bench/fachdienst.py)
PARALLEL_CHECKS = 2
#: failed logins on one SMTP/POP3 connection before the server closes it (after its answer)
MAX_AUTH_FAILURES_PER_CONNECTION = 3
#: a username longer than this is never an account; its counter key is cut to this length
_MAX_KEY = 320
_SHOWN_MAX = 120


class AuthOutcome(Enum):
    OK = "ok"
    WRONG_PASSWORD = "wrong-password"
    UNKNOWN_ACCOUNT = "unknown-account"
    LOCKED = "locked"


@dataclass(frozen=True)
class AuthResult:
    """``address`` is the account's address when ``ok``, else the username as given;
    ``locked`` says that this client is locked out now (for the log only, never the client)."""

    outcome: AuthOutcome
    address: str
    text: str
    locked: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.OK

    @property
    def for_log(self) -> str:
        """The outcome for the operator's log: ``wrong-password, locked`` and the like."""
        if self.locked and self.outcome is not AuthOutcome.LOCKED:
            return f"{self.outcome.value}, now locked for this client"
        return self.outcome.value


def client_key(host: str) -> str:
    """The client part of the lockout key: an IPv4 address as is, an IPv6 address as its /64
    (an IPv4-mapped one as the IPv4 address), anything else (``?``) as given."""
    host = host.strip().strip("[]")
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host[:_MAX_KEY]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def client_of_peer(peer: str) -> str:
    """:func:`client_key` of a session's ``host:port`` peer name (``?`` when unknown)."""
    host, colon, _ = peer.rpartition(":")
    return client_key(host if colon else peer)


def client_of_request(request: HTTPConnection) -> str:
    """:func:`client_key` of an HTTP request's peer (AccountLimit, KAS, Account Manager)."""
    return client_key(request.client.host) if request.client is not None else "?"


def failure_text(username: str, max_failures: int) -> str:
    """The one answer to every failed login: it names the username (printable, cut short) and
    explains a lock without saying whether one runs (no account enumeration)."""
    shown = "".join(c if " " <= c <= "~" else "?" for c in username)
    if len(shown) > _SHOWN_MAX:
        shown = shown[: _SHOWN_MAX - 3] + "..."
    return (
        f"authentication failed for {shown}: wrong username or password; after {max_failures} "
        "failures in a row the account is locked for this client for a while (KOM-LE-A_2167)"
    )


class Authenticator:
    """Checks credentials against one Fachdienst's accounts (see the module docstring).

    ``limiter`` bounds the scrypt checks running at once (default: :data:`PARALLEL_CHECKS`);
    ``cache`` remembers successful checks (default: a fresh :class:`CredentialCache`)."""

    def __init__(
        self,
        store: Store,
        *,
        domain: str,
        max_failed_logins: int,
        lockout_seconds: int,
        max_lockout_seconds: int = MAX_LOCKOUT_SECONDS,
        limiter: trio.CapacityLimiter | None = None,
        observer: Observer | None = None,
        cache: CredentialCache | None = None,
    ) -> None:
        self._store = store
        #: counts failures and lockouts (metrics, issue 15)
        self.observer = observer or Observer()
        self.cache = cache if cache is not None else CredentialCache()
        self.domain = domain.lower()
        self.limiter = limiter or trio.CapacityLimiter(PARALLEL_CHECKS)
        self.policy = LockoutPolicy(
            max_failures=max_failed_logins,
            first_lockout=dt.timedelta(seconds=lockout_seconds),
            max_lockout=dt.timedelta(seconds=max(lockout_seconds, max_lockout_seconds)),
        )
        prepare_dummy()

    async def authenticate(
        self, username: str, password: str, *, client: str, now: dt.datetime | None = None
    ) -> AuthResult:
        """Check ``username``/``password`` from ``client`` (a :func:`client_key`)."""
        result = await self._check(username, password, client=client, now=now)
        # a lockout is counted when a failure starts it, not for each refusal while it runs
        newly_locked = result.locked and result.outcome is not AuthOutcome.LOCKED
        self.observer.auth_result(self.domain, ok=result.ok, locked=newly_locked)
        return result

    async def _check(
        self, username: str, password: str, *, client: str, now: dt.datetime | None
    ) -> AuthResult:
        now = now or dt.datetime.now(dt.UTC)
        key = username.lower()[:_MAX_KEY]
        store = self._store
        state = await store.logins.state(key, client)
        account = None
        if domain_of(username) == self.domain:
            account = await store.accounts.get(username)
        # exactly one scrypt check on every path, so that the time taken tells nothing either;
        # only a login that already succeeded with this very password and stored hash skips it
        # (a cache hit tells nothing to whoever does not know the password)
        if account is None:
            right = await trio.to_thread.run_sync(
                partial(dummy_verify, password), limiter=self.limiter
            )
        elif self.cache.verified(account.address, account.password_hash, password):
            right = True
        else:
            right = await trio.to_thread.run_sync(
                partial(verify_password, password, account.password_hash), limiter=self.limiter
            )
            if right:
                self.cache.remember(account.address, account.password_hash, password)
        failed = AuthResult(
            AuthOutcome.UNKNOWN_ACCOUNT if account is None else AuthOutcome.WRONG_PASSWORD,
            username,
            failure_text(username, self.policy.max_failures),
        )
        if state is not None and state.locked(now):
            # refused without looking at the result, and not counted: counting would only make
            # the lock the attacker chose longer; a cached success of the account goes too
            if account is not None:
                self.cache.forget(account.address)
            return AuthResult(AuthOutcome.LOCKED, username, failed.text, locked=True)
        if right and account is not None:
            if state is not None:
                await store.logins.clear(key, client)
            return AuthResult(AuthOutcome.OK, account.address, "authentication successful")
        after = await store.logins.record_failure(key, client, now, self.policy)
        if account is not None and after.locked(now):
            self.cache.forget(account.address)
        return AuthResult(failed.outcome, username, failed.text, locked=after.locked(now))
