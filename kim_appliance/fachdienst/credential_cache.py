"""A bounded, short-lived memory of successful logins, so that a login does not pay scrypt twice.

Every Fachdienst login checks the password against the stored scrypt hash (16 MiB and tens of
milliseconds of a core, store/passwords.py); the Clientmodul logs in again for every KAS and
AccountLimit request (HTTP Basic), so without a cache a 25 MB message costs several scrypt runs.
Like Dovecot's auth cache, a *successful* verification is remembered for :data:`CACHE_TTL_SECONDS`
under a keyed hash: HMAC-SHA-256 with a secret made at process start over the account's address,
its stored password hash and the password. Nothing here is a password or a password-equivalent
outside this process: the secret never leaves memory and an entry is useless without it.

Why the stored hash is part of the key: a password change (Account Manager, another node of a
cluster, an operator) stores a new hash with a fresh salt, so an old entry never matches again,
on every node, without any message between nodes. A deregistered account has no row, so the
cache is never consulted for it. A lockout is read from the store on every login before the
result counts (fachdienst/accounts.py), so an entry never lets a locked client in; the
account's entries are dropped at once when it is locked as well. Failures are never cached:
a wrong password always costs a full scrypt check.

This module must never store a password or an unkeyed hash of one, never remember a failure,
and never grow past :data:`MAX_ENTRIES`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

#: how long a successful verification is remembered (Dovecot's auth_cache_ttl is 1 h; shorter
#: here, as a password changed outside the store's hash, e.g. a restored backup, should not
#: keep working for long)
CACHE_TTL_SECONDS: Final = 600.0
#: the most entries kept; the least recently used goes first (about 150 bytes each)
MAX_ENTRIES: Final = 10_000
_SECRET_BYTES: Final = 32


class CredentialCache:
    """Successful (address, stored hash, password) triples, keyed by HMAC (see module doc).

    Not thread-safe on purpose: it is used on the trio event loop only."""

    def __init__(
        self,
        *,
        ttl_seconds: float = CACHE_TTL_SECONDS,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds <= 0 or max_entries < 1:
            raise ValueError(
                f"credential cache: ttl_seconds {ttl_seconds} and max_entries {max_entries} "
                "must be positive"
            )
        self._secret = secrets.token_bytes(_SECRET_BYTES)
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        # key -> (address, expiry); the address lets forget() drop an account's entries
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _key(self, address: str, stored_hash: str, password: str) -> bytes:
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in (address.lower(), stored_hash, password):
            data = part.encode("utf-8", "surrogatepass")
            # length-prefixed, so that no two different triples give the same input
            mac.update(len(data).to_bytes(4, "big"))
            mac.update(data)
        return mac.digest()

    def verified(self, address: str, stored_hash: str, password: str) -> bool:
        """True if this password was verified against this stored hash within the TTL."""
        key = self._key(address, stored_hash, password)
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry[1] <= self._clock():
            del self._entries[key]
            return False
        self._entries.move_to_end(key)
        return True

    def remember(self, address: str, stored_hash: str, password: str) -> None:
        """Note a successful scrypt verification (never call this for a failure)."""
        key = self._key(address, stored_hash, password)
        self._entries[key] = (address.lower(), self._clock() + self._ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget(self, address: str) -> int:
        """Drop every entry of ``address`` (lockout, deregistration, password change seen
        here); returns how many went."""
        wanted = address.lower()
        gone = [k for k, (a, _) in self._entries.items() if a == wanted]
        for key in gone:
            del self._entries[key]
        return len(gone)

    def clear(self) -> None:
        self._entries.clear()
