"""Password hashing: never the password itself, salted, verified in constant time."""

from __future__ import annotations

import pytest

from kim_appliance.store import dummy_verify, hash_password, verify_password


def test_hash_is_not_the_password_and_verifies() -> None:
    """KOM-LE-A_2164: passwords are never stored in clear."""
    hashed = hash_password("Geheim-Passwort-1!")
    assert "Geheim" not in hashed
    assert hashed.startswith("scrypt$16384$8$1$")
    assert verify_password("Geheim-Passwort-1!", hashed)
    assert not verify_password("Geheim-Passwort-2!", hashed)
    assert not verify_password("", hashed)


def test_same_password_gets_different_salts() -> None:
    first, second = hash_password("same"), hash_password("same")
    assert first != second
    assert first.split("$")[4] != second.split("$")[4]
    assert verify_password("same", first)
    assert verify_password("same", second)


def test_non_ascii_password() -> None:
    hashed = hash_password("Müller-Lüdenscheidt-ß")
    assert verify_password("Müller-Lüdenscheidt-ß", hashed)
    assert not verify_password("Muller-Ludenscheidt-ss", hashed)


@pytest.mark.parametrize(
    "bad",
    ["", "plaintext", "bcrypt$1$2$3$AAAA$AAAA", "scrypt$16384$8$1$!!$AAAA", "scrypt$3$8$1$AA==$"],
)
def test_malformed_hash_is_an_error_not_a_match(bad: str) -> None:
    with pytest.raises(ValueError, match="password_hash"):
        verify_password("x", bad)


def test_dummy_verify_never_matches() -> None:
    assert dummy_verify("anything") is False
