"""The Clientmodul's VZD lookup: encryption certificates and KIM version of an address, cached.

For every recipient and for the sender the send pipeline asks the directory ``(mail=<addr>)``
(KOM-LE-A_2023, digest §1.4 step 5) and keeps what it learned: the certificates for
``TTL_ENC_CERT`` (default 12 h, KOM-LE-A_2026), the KIM version for at most 24 h (A_22340).
Each use then checks the cached certificates again (validity period, path to the trust anchors,
revocation), so a revocation takes effect at once while the directory is asked rarely. Only
C.HCI.ENC and C.HP.ENC certificates are used (KOM-LE-A_2128); a recipient whose certificates
carry more than one Telematik-ID is not encrypted for (KOM-LE-A_2178, code 4005).

The directory is the Clientmodul's directory port (:mod:`.ports`: the in-process VZD, or LDAPS
to a VZD); the certificates are checked by the Konnektor port's validator (the trust store of
an in-process Konnektor, or VerifyCertificate), as a real Clientmodul asks its Konnektor. The
addresses of one message are asked in one directory query (:meth:`VzdLookup.lookup_many`).
The lookups block (directory, certificate checks): call them in a worker thread. This module
never decides what to do with a dropped recipient (the pipeline does) and never writes to the
directory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509

from kim_appliance.clientmodul.ports import DirectoryPort
from kim_appliance.pki import (
    CertProfile,
    PathValidationError,
    Purpose,
    admission_of,
    describe,
    profile_of,
)
from kim_appliance.pki.validate import CertificateValidator

#: TTL_ENC_CERT (Tab_Konf_Param, KOM-LE-A_2026): how long fetched certificates are reused.
TTL_ENC_CERT: Final = 12 * 3600.0
#: A_22340: a KIM version learned from the VZD is reused for at most 24 h.
TTL_VERSION: Final = 24 * 3600.0
#: digest §4.1: a missing komLeData/kimData for an address means 1.0
DEFAULT_VERSION: Final = "1.0"

#: X-KIM-Fehlermeldung codes of a dropped recipient (digest §1.6)
NOT_ENCRYPTABLE: Final = "4004"
DIFFERENT_TELEMATIK_IDS: Final = "4005"
#: ... and of a sender without one Telematik-ID with encryption certificates
SENDER_NOT_UNIQUE: Final = "4003"

_ENC_PROFILES: Final = (CertProfile.C_HCI_ENC, CertProfile.C_HP_ENC)


@dataclass(frozen=True)
class AddressLookup:
    """What the VZD says about one address, after the certificate checks.

    ``certificates`` are the usable encryption certificates (RSA and ECC side by side);
    ``telematik_id`` the one Telematik-ID they carry. When the address cannot be encrypted for,
    ``certificates`` is empty, ``code`` is 4004 or 4005 (digest §1.6) and ``reason`` says why.
    """

    address: str
    certificates: tuple[x509.Certificate, ...]
    telematik_id: str | None
    version: str
    code: str | None = None
    reason: str = ""
    #: the certificates that were left out, with why (for logs and reports)
    rejected: tuple[str, ...] = ()
    #: every certificate of the entry as the VZD published it (DER), usable or not: the
    #: signing card is found by them (:mod:`.cards`)
    entry_certificates: tuple[bytes, ...] = ()

    @property
    def usable(self) -> bool:
        return bool(self.certificates)


@dataclass
class _Cached:
    certificates: tuple[bytes, ...]
    entry_telematik_id: str | None
    found: bool
    cert_expires: float
    version: str
    version_expires: float


@dataclass
class VzdLookup:
    """Directory lookups with the TTL caches of KOM-LE-A_2026 and A_22340. Thread-safe."""

    directory: DirectoryPort
    ttl_enc_cert: float = TTL_ENC_CERT
    ttl_version: float = TTL_VERSION
    clock: Callable[[], float] = time.monotonic
    _cache: dict[str, _Cached] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: how often the directory was asked (tests look at it)
    queries: int = 0

    def invalidate(self, address: str | None = None) -> None:
        """Forget one address (or everything), e.g. before re-asking for a current version."""
        with self._lock:
            if address is None:
                self._cache.clear()
            else:
                self._cache.pop(address.casefold(), None)

    def lookup(self, address: str, validator: CertificateValidator) -> AddressLookup:
        """The usable encryption certificates of ``address``, each checked by ``validator``
        (blocking; run it in a thread). Raises DirectoryUnreachable, and the validator's own
        errors (a Konnektor that does not answer)."""
        return self.lookup_many([address], validator)[0]

    def lookup_many(
        self, addresses: Sequence[str], validator: CertificateValidator
    ) -> list[AddressLookup]:
        """:meth:`lookup` of every address, with one directory query for those not cached."""
        entries, fresh = self._entries(addresses)
        found = [self._checked(a, entries[a.casefold()], validator) for a in addresses]
        stale = [
            a
            for a, result in zip(addresses, found, strict=True)
            if not result.certificates
            and result.code == NOT_ENCRYPTABLE
            and entries[a.casefold()].found
            and a.casefold() not in fresh
        ]
        if not stale:
            return found
        # the cached certificates failed their checks: the VZD may hold a renewed one
        for address in stale:
            self.invalidate(address)
        again, _ = self._entries(stale)
        redone = {a.casefold(): self._checked(a, again[a.casefold()], validator) for a in stale}
        return [
            redone.get(a.casefold(), result) for a, result in zip(addresses, found, strict=True)
        ]

    def _checked(
        self, address: str, cached: _Cached, validator: CertificateValidator
    ) -> AddressLookup:
        if not cached.found:
            return AddressLookup(
                address,
                (),
                None,
                DEFAULT_VERSION,
                NOT_ENCRYPTABLE,
                f"{address} is not in the directory (VZD search mail={address} found nothing)",
            )
        usable: list[x509.Certificate] = []
        rejected: list[str] = []
        for der in cached.certificates:
            try:
                certificate = x509.load_der_x509_certificate(der)
            except ValueError as exc:
                rejected.append(f"a userCertificate of the entry is not a certificate: {exc}")
                continue
            problem = _check(certificate, validator)
            if problem is None:
                usable.append(certificate)
            else:
                rejected.append(problem)
        if not usable:
            detail = "; ".join(rejected) if rejected else "the entry has no certificate"
            return AddressLookup(
                address,
                (),
                cached.entry_telematik_id,
                cached.version,
                NOT_ENCRYPTABLE,
                f"{address} has no valid encryption certificate: {detail}",
                tuple(rejected),
                cached.certificates,
            )
        ids = sorted({_telematik_id(c) or "(none)" for c in usable})
        if len(ids) != 1 or ids[0] == "(none)":
            # KOM-LE-A_2178: one recipient, one Telematik-ID; otherwise it is not sent to
            return AddressLookup(
                address,
                (),
                None,
                cached.version,
                DIFFERENT_TELEMATIK_IDS,
                f"the encryption certificates of {address} carry different or no "
                f"Telematik-IDs ({', '.join(ids)}; KOM-LE-A_2178)",
                tuple(rejected),
                cached.certificates,
            )
        return AddressLookup(
            address,
            tuple(usable),
            ids[0],
            cached.version,
            rejected=tuple(rejected),
            entry_certificates=cached.certificates,
        )

    def telematik_id(self, address: str) -> str | None:
        """The Telematik-ID of the entry publishing ``address`` (None when none does)."""
        return self._entries([address])[0][address.casefold()].entry_telematik_id

    def version(self, address: str) -> str:
        """The KIM version of ``address`` in the VZD (``1.0`` when none is published)."""
        return self._entries([address])[0][address.casefold()].version

    def cached_version(self, address: str) -> str | None:
        """:meth:`version` if the cache holds it (still within both TTLs), else None. Never
        asks the directory, so the event loop may call it (the sender was looked up while the
        message was prepared: issue 13, one thread hop fewer per message)."""
        now = self.clock()
        with self._lock:
            cached = self._cache.get(address.casefold())
            if cached is None or now >= cached.cert_expires or now >= cached.version_expires:
                return None
            return cached.version

    def _entries(self, addresses: Sequence[str]) -> tuple[dict[str, _Cached], set[str]]:
        """What the VZD says about each address (keyed case-folded): from the cache, or from one
        directory query for the others. An unknown address is not cached: it is asked again
        next time (it may just have been registered). The set names the keys just asked."""
        out: dict[str, _Cached] = {}
        wanted: list[str] = []
        now = self.clock()
        with self._lock:
            for key in dict.fromkeys(a.casefold() for a in addresses):
                cached = self._cache.get(key)
                if (
                    cached is not None
                    and now < cached.cert_expires
                    and now < cached.version_expires
                ):
                    out[key] = cached
                else:
                    wanted.append(key)
        if not wanted:
            return out, set()
        records = self.directory.find_by_mail(wanted)
        now = self.clock()
        with self._lock:
            self.queries += 1
            for key in wanted:
                record = records.get(key)
                if record is None:
                    out[key] = _Cached((), None, False, now, DEFAULT_VERSION, now)
                    continue
                out[key] = self._cache[key] = _Cached(
                    record.certificates,
                    record.telematik_id,
                    True,
                    now + self.ttl_enc_cert,
                    record.version,
                    now + self.ttl_version,
                )
        return out, set(wanted)


def _check(certificate: x509.Certificate, validator: CertificateValidator) -> str | None:
    """None if ``certificate`` may be encrypted for, else why not."""
    profile = profile_of(certificate)
    if profile not in _ENC_PROFILES:
        kind = profile.value if profile else "no gematik certificate type"
        return (
            f"{describe(certificate)} is {kind}: KIM encrypts to C.HCI.ENC or C.HP.ENC only "
            "(KOM-LE-A_2128)"
        )
    try:
        validator.validate(certificate, purpose=Purpose.ENCRYPTION, profile=profile)
    except PathValidationError as exc:
        return str(exc)
    return None


def _telematik_id(certificate: x509.Certificate) -> str | None:
    try:
        admission = admission_of(certificate)
    except ValueError:
        return None
    return admission.telematik_id if admission else None
