"""The Account Manager's own small records: registration codes and porting OTPs of a Fachdienst.

A registration code (``referenceID`` + initial password, digest §3.3 registerAccount) is what
a KIM provider hands a participant with the contract; an OTP (getOTP/setTID) lets the address
move to another Telematik-ID within one week. Both live in the appliance's store
(``store.registrations``, per Fachdienst domain); this layer hashes the secrets before they
get there: initial passwords as salted scrypt (KOM-LE-A_2164 applies to them as much as to
passwords, the check runs in a worker thread), OTPs as SHA-256 (192 random bits need no work
factor). A code is used exactly once, also when two registrations race for it: the store marks
it used in the transaction that creates the account (``accounts.create(reference_id=...)``).
This module must never speak HTTP, touch a mailbox or the VZD, or decide who is authorised.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from functools import partial

import trio

from kim_appliance.store import OtpCheck, RegistrationCode, Store
from kim_appliance.store.passwords import hash_password, verify_password

#: digest §3.3: "An OTP is valid for one week."
OTP_VALIDITY = dt.timedelta(days=7)
#: digest §3.3: referenceID is at most 256 characters
MAX_REFERENCE_ID = 256

__all__ = ["OTP_VALIDITY", "AccountManagerState", "OtpCheck", "RegistrationCode"]


class AccountManagerState:
    """Registration codes and OTPs of the Fachdienst ``domain`` in ``store``."""

    def __init__(self, store: Store, domain: str) -> None:
        self.store = store
        self.domain = domain.lower()

    # --- registration codes --------------------------------------------------------------

    async def add_code(
        self, reference_id: str, ini_password: str, *, telematik_id: str | None = None
    ) -> RegistrationCode:
        """Issue (or replace an unused) registration code; `RegistrationCodeUsed` (a
        ValueError) if it was used."""
        if not reference_id or len(reference_id) > MAX_REFERENCE_ID:
            raise ValueError("referenceID: must be 1..256 characters (digest §3.3)")
        hashed = await trio.to_thread.run_sync(hash_password, ini_password)
        code = RegistrationCode(self.domain, reference_id, hashed, telematik_id)
        await self.store.registrations.put_code(code)
        return code

    async def get_code(self, reference_id: str) -> RegistrationCode | None:
        return await self.store.registrations.get_code(self.domain, reference_id)

    async def code_of(self, address: str) -> RegistrationCode | None:
        """The code an address was registered with (for getAccount's referenceID)."""
        return await self.store.registrations.code_of(address)

    async def check_code(self, reference_id: str, ini_password: str) -> RegistrationCode | None:
        """The unused code if ``ini_password`` matches, else ``None`` (slow: scrypt)."""
        code = await self.get_code(reference_id)
        if code is None or code.used_by is not None:
            return None
        check = partial(verify_password, ini_password, code.ini_password_hash)
        if not await trio.to_thread.run_sync(check):
            return None
        return code

    # --- OTPs (digest §3.3 getOTP / setTID) -----------------------------------------------

    async def new_otp(self, address: str, now: dt.datetime) -> str:
        """A fresh OTP for ``address``; it cancels every older one (digest §3.3)."""
        otp = secrets.token_urlsafe(24)
        await self.store.registrations.put_otp(address, _sha256(otp), now + OTP_VALIDITY)
        return otp

    async def check_otp(self, address: str, otp: str, now: dt.datetime) -> OtpCheck:
        """:class:`OtpCheck`; a matching OTP is consumed (one-time)."""
        return await self.store.registrations.take_otp(address, _sha256(otp), now)


def _sha256(text: str) -> str:
    # OTPs are 192-bit random values: a plain hash is enough, no salt or work factor needed
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
