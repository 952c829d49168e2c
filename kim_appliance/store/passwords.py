"""Password hashing for Fachdienst accounts: scrypt, salted, compared in constant time.

Passwords are never stored in clear (KOM-LE-A_2164, digest §3.2); the store keeps only the
string `hash_password` returns. This module must never log, return or persist a password, and
never compare hashes with `==`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets

# scrypt parameters for new hashes: n=2**14, r=8, p=1 (about 16 MiB and some 10s of ms).
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# Refuse stored parameters beyond these: a damaged row must not make a login eat the RAM.
_MAX_N = 2**20
_MAX_RP = 16
_PREFIX = "scrypt"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * n * r + (1 << 20),
        dklen=dklen,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """`scrypt$n$r$p$salt_b64$hash_b64` with a fresh random salt (KOM-LE-A_2164)."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return f"{_PREFIX}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, hashed: str) -> bool:
    """True if `password` matches `hashed`; the digest comparison runs in constant time.

    Raises ValueError if `hashed` is not a string `hash_password` could have made.
    """
    parts = hashed.split("$")
    if len(parts) != 6 or parts[0] != _PREFIX:
        raise ValueError("password_hash: not of the form scrypt$n$r$p$salt$hash")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"password_hash: unreadable parameters ({exc})") from None
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_RP and 1 <= p <= _MAX_RP):
        raise ValueError(f"password_hash: scrypt parameters n={n} r={r} p={p} out of range")
    if not salt or not 16 <= len(expected) <= 64:
        raise ValueError("password_hash: empty salt or implausible hash length")
    actual = _scrypt(password, salt, n, r, p, len(expected))
    return hmac.compare_digest(actual, expected)


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def prepare_dummy() -> None:
    """Make the hash ``dummy_verify`` checks against now, so that not even the first unknown
    login after a start takes longer than a real one."""
    _dummy_hash()


def dummy_verify(password: str) -> bool:
    """Spend the time of a real check and return False.

    For logins to unknown addresses, so that timing does not tell which addresses exist.
    """
    verify_password(password, _dummy_hash())
    return False
