"""A CA of the test PKI: issues gematik-profile certificates, revokes them, signs CRLs.

Certificates imitate gematik's test certificates (SMIME-Profil.zip; digest §2.5, §2.9): C=DE,
O, optional serialNumber and CN in the subject; the Admission extension with the Telematik-ID;
keyUsage and basicConstraints critical; certificatePolicies with the type OID and the policy
OID; subjectAltName where given; AKI/SKI; validity from 00:00:00 to 23:59:59; 48-bit random
serials for end-entity certificates and small sequential ones for CA certificates. RSA CAs sign
with sha256WithRSAEncryption, ECC CAs with ecdsa-with-SHA256 on brainpoolP256r1.

Everything here is for tests and emulation: the keys are plain in memory, and this module must
never be used to issue anything that looks like a real TI certificate (every O carries
NOT-VALID). It does no I/O; :mod:`kim_appliance.pki.testpki` saves and loads.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from kim_appliance.pki import oids
from kim_appliance.pki.admission import Admission
from kim_appliance.pki.profiles import Algorithm, CaKind, CertProfile

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: O of every CA and component certificate: says whose test PKI this is, and that it is not
#: valid anywhere (gematik marks its own test PKI "gematik GmbH NOT-VALID").
ORGANIZATION = "kim-appliance NOT-VALID"

ONE_SECOND = dt.timedelta(seconds=1)
DEFAULT_CRL_LIFETIME = dt.timedelta(days=7)


def generate_key(algorithm: Algorithm) -> PrivateKey:
    """A fresh RSA-2048 (e=65537) or brainpoolP256r1 key (digest §2.8)."""
    if algorithm is Algorithm.RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.BrainpoolP256R1())


def algorithm_of(key: PrivateKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> Algorithm:
    return Algorithm.RSA if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) else Algorithm.ECC


def utc(value: dt.datetime) -> dt.datetime:
    """``value`` as an aware UTC datetime; naive values are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def start_of_day(value: dt.datetime) -> dt.datetime:
    return utc(value).replace(hour=0, minute=0, second=0, microsecond=0)


def add_years(value: dt.datetime, years: int) -> dt.datetime:
    """Same day and time ``years`` later (29 February becomes 28 February)."""
    try:
        return value.replace(year=value.year + years)
    except ValueError:
        return value.replace(year=value.year + years, day=28)


@dataclass(frozen=True)
class Issued:
    """A key pair with its certificate."""

    certificate: x509.Certificate
    private_key: PrivateKey

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def algorithm(self) -> Algorithm:
        return algorithm_of(self.private_key)


@dataclass(frozen=True)
class RevokedEntry:
    """One CRL entry: which serial, since when, why."""

    serial_number: int
    revocation_date: dt.datetime
    reason: x509.ReasonFlags


def _name(*attributes: tuple[x509.ObjectIdentifier, str | None]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes if value])


def ca_name(common_name: str, organizational_unit: str) -> x509.Name:
    """Subject of a CA certificate, laid out like gematik's (C, O, OU, CN)."""
    return _name(
        (NameOID.COUNTRY_NAME, "DE"),
        (NameOID.ORGANIZATION_NAME, ORGANIZATION),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, organizational_unit),
        (NameOID.COMMON_NAME, common_name),
    )


def _ski(key: PrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _key_usage(flags: frozenset[str]) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    )
    unknown = flags - set(names)
    if unknown:
        raise ValueError(f"keyUsage: unknown flags {sorted(unknown)}")
    kwargs: dict[str, bool] = {name: name in flags for name in names}
    return x509.KeyUsage(**kwargs, encipher_only=False, decipher_only=False)


class CertificateAuthority:
    """A CA of the test PKI: its own key and certificate, its parent, what it has revoked.

    Thread-safe: ``issue``, ``revoke`` and ``crl`` may be called from worker threads.
    """

    def __init__(
        self,
        name: str,
        issued: Issued,
        parent: CertificateAuthority | None,
        *,
        kind: CaKind | None = None,
        leaf_validity_years: int = 5,
        revoked: Sequence[RevokedEntry] = (),
        crl_number: int = 0,
        next_ca_serial: int = 2,
    ) -> None:
        self.name = name
        self.issued = issued
        self.parent = parent
        self.kind = kind
        self.leaf_validity_years = leaf_validity_years
        self._revoked: list[RevokedEntry] = list(revoked)
        self._crl_number = crl_number
        self._next_ca_serial = next_ca_serial
        self._lock = threading.Lock()
        #: bumped by every revocation; a cached CRL made before the last bump is not used
        self._revision = 0
        #: (CRL, the revision it was made at, when to re-sign it)
        self._cached_crl: tuple[x509.CertificateRevocationList, int, dt.datetime] | None = None

    def __repr__(self) -> str:
        return f"<CertificateAuthority {self.name!r} {self.algorithm.value}>"

    @property
    def certificate(self) -> x509.Certificate:
        return self.issued.certificate

    @property
    def algorithm(self) -> Algorithm:
        return self.issued.algorithm

    @property
    def revoked(self) -> tuple[RevokedEntry, ...]:
        with self._lock:
            return tuple(self._revoked)

    @property
    def crl_number(self) -> int:
        """The number of the last CRL signed (0: none yet)."""
        return self._crl_number

    @property
    def next_ca_serial(self) -> int:
        return self._next_ca_serial

    # -- creating CAs ---------------------------------------------------------------------

    @classmethod
    def create_root(
        cls,
        name: str,
        algorithm: Algorithm,
        *,
        organizational_unit: str = "Zentrale Root-CA der Telematikinfrastruktur",
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> CertificateAuthority:
        """A self-signed root like GEM.RCA2 (serial 1, SKI, no AKI, no path length limit)."""
        key = generate_key(algorithm)
        subject = ca_name(name, organizational_unit)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(utc(not_before))
            .not_valid_after(utc(not_after))
            .add_extension(_ski(key), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(frozenset({"key_cert_sign", "crl_sign"})), critical=True)
            .add_extension(_policies(oids.OID_POLICY_GEM_OR_CP), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(name, Issued(cert, key), None)

    def create_subordinate(
        self,
        name: str,
        kind: CaKind,
        *,
        organizational_unit: str,
        not_before: dt.datetime,
        not_after: dt.datetime,
        algorithm: Algorithm | None = None,
        leaf_validity_years: int = 5,
    ) -> CertificateAuthority:
        """An issuing CA below this one, like GEM.KOMP-CA24 (pathLenConstraint 0)."""
        key = generate_key(algorithm or self.algorithm)
        with self._lock:
            serial = self._next_ca_serial
            self._next_ca_serial += 1
        cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name(name, organizational_unit))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(utc(not_before))
            .not_valid_after(utc(not_after))
            .add_extension(_ski(key), critical=False)
            .add_extension(self._aki(), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(frozenset({"key_cert_sign", "crl_sign"})), critical=True)
            .add_extension(_policies(oids.OID_POLICY_GEM_OR_CP), critical=False)
            .sign(self.issued.private_key, hashes.SHA256())
        )
        return CertificateAuthority(
            name, Issued(cert, key), self, kind=kind, leaf_validity_years=leaf_validity_years
        )

    def _aki(self) -> x509.AuthorityKeyIdentifier:
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            _ski(self.issued.private_key)
        )

    # -- issuing --------------------------------------------------------------------------

    def issue(
        self,
        profile: CertProfile,
        algorithm: Algorithm,
        *,
        common_name: str,
        telematik_id: str | None = None,
        profession_oid: str | None = None,
        profession_text: str | None = None,
        email: str | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        subject_serial_number: str | None = None,
    ) -> Issued:
        """A fresh key of ``algorithm`` and a certificate of ``profile`` signed by this CA.

        ``telematik_id`` goes into the Admission extension as registrationNumber (digest
        §2.9); ``profession_oid`` defaults to the profile's institution, profession or
        technical role, ``profession_text`` to gemSpec_OID's wording of it. Card subjects are
        C=DE, O=<Telematik-ID>-NOT-VALID (as gematik's C.HCI.ENC sample; HBA subjects have no
        O), serialNumber (if ``subject_serial_number``), CN; component subjects C=DE,
        O=kim-appliance NOT-VALID, CN.
        Without explicit dates the certificate runs from today 00:00:00 UTC for
        ``leaf_validity_years`` to 23:59:59, never beyond this CA's own certificate.
        """
        spec = profile.spec
        role_oid = profession_oid or spec.default_role
        role_text = profession_text or oids.PROFESSION_TEXTS.get(role_oid)
        if role_text is None:
            raise ValueError(
                f"profession_text: needed for profession OID {role_oid}, which has no known text"
            )
        admission = Admission(telematik_id, (role_oid,), (role_text,))
        admission_ext = admission.to_extension()  # validates the Telematik-ID first

        if spec.is_card:
            organization = f"{telematik_id}-NOT-VALID" if telematik_id else ORGANIZATION
        else:
            organization = ORGANIZATION
        subject = _name(
            (NameOID.COUNTRY_NAME, "DE"),
            (NameOID.ORGANIZATION_NAME, organization if spec.ca_kind is not CaKind.HBA else None),
            (NameOID.SERIAL_NUMBER, subject_serial_number),
            (NameOID.COMMON_NAME, common_name),
        )

        ca_not_after = self.certificate.not_valid_after_utc
        start = utc(not_before) if not_before else start_of_day(dt.datetime.now(dt.UTC))
        if not_after is not None:
            end = utc(not_after)
        else:
            end = min(
                add_years(start_of_day(start), self.leaf_validity_years) - ONE_SECOND, ca_not_after
            )
        if end <= start:
            raise ValueError(
                f"not_after: {end.isoformat()} is not after not_before {start.isoformat()}"
            )

        alt_names: list[x509.GeneralName] = []
        if email:
            alt_names.append(x509.RFC822Name(email))
        alt_names.extend(x509.DNSName(name) for name in dns_names)
        for address in ip_addresses:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(address)))
            except ValueError as exc:
                raise ValueError(f"ip_addresses: {address!r} is not an IP address") from exc

        key = generate_key(algorithm)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(self._new_serial())
            .not_valid_before(start)
            .not_valid_after(end)
            # extension order of gematik's C.HCI.ENC sample
            .add_extension(admission_ext, critical=False)
            .add_extension(_key_usage(spec.key_usage(algorithm)), critical=True)
            .add_extension(_policies(spec.policy_oid, spec.type_oid), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        if spec.extended_key_usage:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(list(spec.extended_key_usage)), critical=False
            )
        builder = builder.add_extension(self._aki(), critical=False)
        builder = builder.add_extension(_ski(key), critical=False)
        cert = builder.sign(self.issued.private_key, hashes.SHA256())
        return Issued(cert, key)

    def _new_serial(self) -> int:
        # 48-bit serials like gematik's test certificates (e.g. 0xFF22A88FFD24); collisions
        # with this CA's own CA-certificate serials are impossible (top bit set).
        return secrets.randbits(47) | (1 << 47)

    # -- revocation -----------------------------------------------------------------------

    def issued_by_me(self, certificate: x509.Certificate) -> bool:
        if certificate.issuer != self.certificate.subject:
            return False
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    def revoke(
        self,
        certificate: x509.Certificate,
        *,
        reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
        when: dt.datetime | None = None,
    ) -> None:
        """Put ``certificate`` on this CA's next CRL (revoking twice keeps the first entry)."""
        if not self.issued_by_me(certificate):
            raise ValueError(
                f"revoke: certificate serial 0x{certificate.serial_number:x} of "
                f"'{certificate.subject.rfc4514_string()}' was not issued by {self.name}"
            )
        entry = RevokedEntry(
            certificate.serial_number, utc(when or dt.datetime.now(dt.UTC)), reason
        )
        with self._lock:
            if any(e.serial_number == entry.serial_number for e in self._revoked):
                return
            self._revoked.append(entry)
            self._revision += 1

    def crl(
        self,
        *,
        this_update: dt.datetime | None = None,
        lifetime: dt.timedelta = DEFAULT_CRL_LIFETIME,
    ) -> x509.CertificateRevocationList:
        """A freshly signed CRL of every revocation so far (crlNumber increments, AKI set)."""
        now = utc(this_update) if this_update else dt.datetime.now(dt.UTC).replace(microsecond=0)
        with self._lock:
            self._crl_number += 1
            number = self._crl_number
            entries = list(self._revoked)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now)
            .next_update(now + lifetime)
            .add_extension(self._aki(), critical=False)
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        for entry in entries:
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(entry.serial_number)
                .revocation_date(entry.revocation_date)
            )
            if entry.reason is not x509.ReasonFlags.unspecified:  # RFC 5280 §5.3.1
                revoked = revoked.add_extension(x509.CRLReason(entry.reason), critical=False)
            builder = builder.add_revoked_certificate(revoked.build())
        return builder.sign(self.issued.private_key, hashes.SHA256())

    def current_crl(self) -> x509.CertificateRevocationList:
        """The last CRL, re-signed only after a revocation or when it is a day from expiry.

        Returns the same object until then, so validation caches keyed by the CRL object stay
        valid (pki/validate.py). A revocation racing with the re-signing cannot leave a CRL
        without it in the cache: the CRL is tagged with the revision read before its entries.
        """
        cached = self._cached_crl
        now = dt.datetime.now(dt.UTC)
        if cached is not None and cached[1] == self._revision and now < cached[2]:
            return cached[0]
        with self._lock:
            revision = self._revision
        fresh = self.crl()
        refresh_at = (fresh.next_update_utc or now) - dt.timedelta(days=1)
        self._cached_crl = (fresh, revision, refresh_at)
        return fresh

    # -- persistence helpers (used by testpki) -------------------------------------------

    def state(self) -> dict[str, Any]:
        """JSON-ready bookkeeping (not keys or certificates) for save/load."""
        return {
            "name": self.name,
            "kind": self.kind.value if self.kind else None,
            "leaf_validity_years": self.leaf_validity_years,
            "crl_number": self._crl_number,
            "next_ca_serial": self._next_ca_serial,
            "revoked": [
                {
                    "serial": f"{e.serial_number:x}",
                    "when": e.revocation_date.isoformat(),
                    "reason": e.reason.value,
                }
                for e in self.revoked
            ],
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], issued: Issued, parent: CertificateAuthority | None
    ) -> CertificateAuthority:
        return cls(
            str(state["name"]),
            issued,
            parent,
            kind=CaKind(state["kind"]) if state.get("kind") else None,
            leaf_validity_years=int(state["leaf_validity_years"]),
            crl_number=int(state["crl_number"]),
            next_ca_serial=int(state["next_ca_serial"]),
            revoked=[
                RevokedEntry(
                    int(r["serial"], 16),
                    utc(dt.datetime.fromisoformat(r["when"])),
                    x509.ReasonFlags(r["reason"]),
                )
                for r in state["revoked"]
            ],
        )


def _policies(*policy_oids: str) -> x509.CertificatePolicies:
    return x509.CertificatePolicies(
        [x509.PolicyInformation(x509.ObjectIdentifier(oid), None) for oid in policy_oids]
    )


__all__ = [
    "ORGANIZATION",
    "CertificateAuthority",
    "Issued",
    "PrivateKey",
    "RevokedEntry",
    "add_years",
    "generate_key",
    "start_of_day",
    "utc",
]
