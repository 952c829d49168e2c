"""Authentication of KIM participants at the Fachdienst, with lockout after failed logins.

The username is the plain KIM address (KOM-LE-A_2161); passwords are compared against the
stored salted hash only (KOM-LE-A_2164). After ``max_failed_logins`` failures in a row the
account is locked for ``lockout_seconds`` (KOM-LE-A_2167; gematik publishes no threshold, digest
§7.1, so both are configuration values), and a successful login resets the count. Every outcome
comes back as an :class:`AuthResult` whose text tells the user what happened, never the
password. Blocking (store, scrypt): callers run it in a worker thread.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum

from kim_appliance.store import MailStore
from kim_appliance.store.passwords import dummy_verify, verify_password


class AuthOutcome(Enum):
    OK = "ok"
    WRONG_PASSWORD = "wrong-password"
    UNKNOWN_ACCOUNT = "unknown-account"
    LOCKED = "locked"


@dataclass(frozen=True)
class AuthResult:
    outcome: AuthOutcome
    address: str
    text: str

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.OK


class Authenticator:
    """Checks credentials against one Fachdienst's accounts."""

    def __init__(self, store: MailStore, *, max_failed_logins: int, lockout_seconds: int) -> None:
        self._store = store
        self._max_failed = max_failed_logins
        self._lockout = dt.timedelta(seconds=lockout_seconds)

    def authenticate(
        self, username: str, password: str, *, now: dt.datetime | None = None
    ) -> AuthResult:
        now = now or dt.datetime.now(dt.UTC)
        account = self._store.get_account(username)
        if account is None:
            # same text and the same scrypt work as a wrong password: no account enumeration
            dummy_verify(password)
            return AuthResult(
                AuthOutcome.UNKNOWN_ACCOUNT,
                username,
                f"authentication failed for {username}: wrong username or password",
            )
        if account.locked_until is not None and account.locked_until > now:
            until = account.locked_until.strftime("%Y-%m-%d %H:%M:%S UTC")
            return AuthResult(
                AuthOutcome.LOCKED,
                account.address,
                f"account {account.address} is locked until {until} after "
                f"{self._max_failed} failed logins",
            )
        if verify_password(password, account.password_hash):
            if account.failed_logins or account.locked_until is not None:
                self._store.update_account(account.address, failed_logins=0, locked_until=None)
            return AuthResult(AuthOutcome.OK, account.address, "authentication successful")
        failed = account.failed_logins + 1
        if failed >= self._max_failed:
            self._store.update_account(
                account.address, failed_logins=0, locked_until=now + self._lockout
            )
            return AuthResult(
                AuthOutcome.LOCKED,
                account.address,
                f"authentication failed for {account.address}: wrong password; the account is "
                f"now locked for {int(self._lockout.total_seconds())} s after {failed} failures",
            )
        self._store.update_account(account.address, failed_logins=failed)
        return AuthResult(
            AuthOutcome.WRONG_PASSWORD,
            account.address,
            f"authentication failed for {account.address}: wrong username or password",
        )
