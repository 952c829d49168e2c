"""The Account Manager's own small records: registration codes and porting OTPs.

A registration code (``referenceID`` + initial password, digest §3.3 registerAccount) is what
a KIM provider hands a participant with the contract; an OTP (getOTP/setTID) lets the address
move to another Telematik-ID within one week. Both live in one JSON file per Fachdienst
(``registration-codes.json`` in the Fachdienst's data dir, or in memory with ``path=None``),
written atomically (temp file, fsync, rename). Secrets are kept only as salted hashes
(KOM-LE-A_2164 applies to initial passwords as much as to passwords). This module must never
speak HTTP, touch the mail store or the VZD, or decide who is authorised.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kim_appliance.store.passwords import hash_password, verify_password

CODES_FILE = "registration-codes.json"
FORMAT = "kim-appliance-account-manager/1"
#: digest §3.3: "An OTP is valid for one week."
OTP_VALIDITY = dt.timedelta(days=7)


@dataclass(frozen=True)
class RegistrationCode:
    """One referenceID: its hashed initial password, the Telematik-ID it was issued for
    (``None``: any card may use it) and the address registered with it, once used."""

    reference_id: str
    ini_password_hash: str
    telematik_id: str | None = None
    used_by: str | None = None


class OtpCheck:
    """The outcomes of :meth:`AccountManagerState.check_otp`."""

    OK = "ok"
    INVALID = "invalid"
    EXPIRED = "expired"


class AccountManagerState:
    """Registration codes and OTPs of one Fachdienst; thread-safe, persisted on each change."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._codes: dict[str, RegistrationCode] = {}
        self._otps: dict[str, tuple[str, dt.datetime]] = {}  # address key -> (sha256, expiry)
        if path is not None and path.exists():
            self._load(path)

    @classmethod
    def open(cls, fachdienst_dir: Path) -> AccountManagerState:
        return cls(fachdienst_dir / CODES_FILE)

    # --- registration codes --------------------------------------------------------------

    def add_code(
        self, reference_id: str, ini_password: str, *, telematik_id: str | None = None
    ) -> RegistrationCode:
        """Issue (or replace an unused) registration code; ValueError if it was used."""
        if not reference_id or len(reference_id) > 256:
            raise ValueError("referenceID: must be 1..256 characters (digest §3.3)")
        with self._lock:
            old = self._codes.get(reference_id)
            if old is not None and old.used_by is not None:
                raise ValueError(f"referenceID {reference_id!r}: already used by {old.used_by}")
            code = RegistrationCode(reference_id, hash_password(ini_password), telematik_id)
            self._codes[reference_id] = code
            self._save()
            return code

    def get_code(self, reference_id: str) -> RegistrationCode | None:
        with self._lock:
            return self._codes.get(reference_id)

    def code_of(self, address: str) -> RegistrationCode | None:
        """The code an address was registered with (for getAccount's referenceID)."""
        key = address.lower()
        with self._lock:
            for code in self._codes.values():
                if code.used_by is not None and code.used_by.lower() == key:
                    return code
        return None

    def check_code(self, reference_id: str, ini_password: str) -> RegistrationCode | None:
        """The unused code if ``ini_password`` matches, else ``None`` (slow: scrypt)."""
        code = self.get_code(reference_id)
        if code is None or code.used_by is not None:
            return None
        if not verify_password(ini_password, code.ini_password_hash):
            return None
        return code

    def mark_used(self, reference_id: str, address: str) -> None:
        with self._lock:
            code = self._codes[reference_id]
            self._codes[reference_id] = RegistrationCode(
                code.reference_id, code.ini_password_hash, code.telematik_id, address
            )
            self._save()

    # --- OTPs (digest §3.3 getOTP / setTID) -----------------------------------------------

    def new_otp(self, address: str, now: dt.datetime) -> str:
        """A fresh OTP for ``address``; it cancels every older one (digest §3.3)."""
        otp = secrets.token_urlsafe(24)
        with self._lock:
            self._otps[address.lower()] = (_sha256(otp), now + OTP_VALIDITY)
            self._save()
        return otp

    def check_otp(self, address: str, otp: str, now: dt.datetime) -> str:
        """:class:`OtpCheck` value; a matching OTP is consumed (one-time)."""
        with self._lock:
            stored = self._otps.get(address.lower())
            if stored is None or not hmac.compare_digest(stored[0], _sha256(otp)):
                return OtpCheck.INVALID
            if now >= stored[1]:
                return OtpCheck.EXPIRED
            del self._otps[address.lower()]
            self._save()
            return OtpCheck.OK

    # --- persistence ---------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: format is not {FORMAT!r}")
        for c in data.get("codes", []):
            self._codes[c["reference_id"]] = RegistrationCode(
                c["reference_id"], c["ini_password_hash"], c.get("telematik_id"), c.get("used_by")
            )
        for key, o in data.get("otps", {}).items():
            self._otps[key] = (o["sha256"], dt.datetime.fromisoformat(o["expires"]))

    def _save(self) -> None:
        if self.path is None:
            return
        data: dict[str, Any] = {
            "format": FORMAT,
            "codes": [
                {
                    "reference_id": c.reference_id,
                    "ini_password_hash": c.ini_password_hash,
                    "telematik_id": c.telematik_id,
                    "used_by": c.used_by,
                }
                for c in self._codes.values()
            ],
            "otps": {
                k: {"sha256": h, "expires": e.isoformat()} for k, (h, e) in self._otps.items()
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _sha256(text: str) -> str:
    # OTPs are 192-bit random values: a plain hash is enough, no salt or work factor needed
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
