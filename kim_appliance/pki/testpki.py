"""The appliance's own test PKI: one root per algorithm, with SMC-B, HBA and component CAs.

Laid out like gematik's TI PKI (GEM.RCA -> GEM.SMCB-CA / GEM.HBA-CA / GEM.KOMP-CA; digest
§2.9), once for RSA-2048 and once for brainpoolP256r1, without cross certificates. Every name
carries ``kim-appliance NOT-VALID`` in O, so nobody mistakes these CAs for gematik's. ``save``
writes PEM files and an ``index.json`` into a directory; ``load`` reads them back, including
revocations; ``renew`` issues a successor for one of its end-entity certificates (new key,
same subject and profile). Making the PKI takes seconds (RSA key generation): ``generate`` logs
its progress on the ``kim_appliance.pki`` logger, so ``kim-appliance init`` is not silent. This
module must never touch files outside the directory it is given.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from kim_appliance.pki.admission import admission_of
from kim_appliance.pki.authority import (
    CertificateAuthority,
    Issued,
    add_years,
    algorithm_of,
    start_of_day,
)
from kim_appliance.pki.profiles import Algorithm, CaKind, CertProfile, profile_of
from kim_appliance.pki.validate import TrustStore

log = logging.getLogger("kim_appliance.pki")
#: how ``generate`` names the algorithms in its progress lines
_ALGORITHM_NAMES = {Algorithm.RSA: "RSA-2048", Algorithm.ECC: "brainpoolP256r1"}

INDEX_FORMAT = "kim-appliance-testpki/1"
ROOT_UNIT = "Zentrale Root-CA der Telematikinfrastruktur"
CA_LAYOUT: dict[CaKind, tuple[str, str]] = {
    CaKind.SMCB: ("SMCB-CA", "Institution des Gesundheitswesens-CA der Telematikinfrastruktur"),
    CaKind.HBA: ("HBA-CA", "Heilberufsausweis-CA der Telematikinfrastruktur"),
    CaKind.KOMP: ("KOMP-CA", "Komponenten-CA der Telematikinfrastruktur"),
}
#: Generation number in the CA names: GEM.RCA1 / GEM.SMCB-CA1 are RSA, ...2 are ECC.
GENERATION = {Algorithm.RSA: 1, Algorithm.ECC: 2}


def _ca_id(kind: CaKind | None, algorithm: Algorithm) -> str:
    return f"{kind.value.lower() if kind else 'rca'}-{algorithm.value.lower()}"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


class TestPki:
    """Root GEM.RCA-like per algorithm (RSA root + ECC root, cross-free) with issuing CAs
    SMCB-CA, HBA-CA, KOMP-CA per algorithm; names like 'GEM.SMCB-CA1 TEST-ONLY' but with
    'kim-appliance' in O so nobody mistakes them for gematik's."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self, roots: list[CertificateAuthority], intermediates: list[CertificateAuthority]
    ) -> None:
        self.roots = roots
        self.intermediates = intermediates

    @classmethod
    def generate(cls, *, valid_years: int = 5) -> TestPki:
        """Fresh keys for two roots and six issuing CAs. Roots are valid ``valid_years`` + 2
        years, issuing CAs + 1, end-entity certificates ``valid_years`` (capped by their CA);
        everything starts yesterday 00:00:00 UTC."""
        if valid_years < 1:
            raise ValueError(f"valid_years: must be at least 1, got {valid_years}")
        start = start_of_day(dt.datetime.now(dt.UTC)) - dt.timedelta(days=1)
        roots: list[CertificateAuthority] = []
        intermediates: list[CertificateAuthority] = []
        for algorithm in Algorithm:
            number = GENERATION[algorithm]
            log.info(
                "test PKI: making the %s root GEM.RCA%d and its %d CAs",
                _ALGORITHM_NAMES[algorithm],
                number,
                len(CA_LAYOUT),
            )
            root = CertificateAuthority.create_root(
                f"GEM.RCA{number} TEST-ONLY",
                algorithm,
                organizational_unit=ROOT_UNIT,
                not_before=start,
                not_after=add_years(start, valid_years + 2),
            )
            roots.append(root)
            for kind, (prefix, unit) in CA_LAYOUT.items():
                intermediates.append(
                    root.create_subordinate(
                        f"GEM.{prefix}{number} TEST-ONLY",
                        kind,
                        organizational_unit=unit,
                        not_before=start,
                        not_after=add_years(start, valid_years + 1),
                        leaf_validity_years=valid_years,
                    )
                )
        return cls(roots, intermediates)

    # -- lookups --------------------------------------------------------------------------

    def root_for(self, algorithm: Algorithm) -> CertificateAuthority:
        for root in self.roots:
            if root.algorithm is algorithm:
                return root
        raise KeyError(f"no {algorithm.value} root in this test PKI")

    def ca_for(self, profile: CertProfile, algorithm: Algorithm) -> CertificateAuthority:
        """The issuing CA of ``profile`` (SMCB, HBA or KOMP) for keys of ``algorithm``."""
        kind = profile.spec.ca_kind
        for ca in self.intermediates:
            if ca.kind is kind and ca.algorithm is algorithm:
                return ca
        raise KeyError(f"no {kind.value} CA for {algorithm.value} in this test PKI")

    def issue(self, profile: CertProfile, algorithm: Algorithm, **kwargs: Any) -> Issued:
        """:meth:`CertificateAuthority.issue` on :meth:`ca_for` (same keyword arguments)."""
        return self.ca_for(profile, algorithm).issue(profile, algorithm, **kwargs)

    def renew(self, certificate: x509.Certificate) -> Issued:
        """A successor of ``certificate`` from the CA that issued it: a new key of the same
        algorithm, a certificate of the same profile with the same subject (CN, serialNumber,
        Telematik-ID and profession in the Admission, e-mail, DNS and IP alternative names),
        valid from today. ValueError when this PKI did not issue it, or it is no end-entity
        certificate of a gematik profile.

        A new key, not the old one certified again: a real card renewal is a new card with new
        keys, and a certificate revoked for key compromise (what the fault switch says) must
        never be certified again (RFC 5280 §5.3.1).
        """
        ca = self.issuer_of(certificate)
        if ca is None:
            raise ValueError(
                f"renew: '{certificate.subject.rfc4514_string()}' (serial "
                f"0x{certificate.serial_number:x}) was not issued by this test PKI"
            )
        profile = profile_of(certificate)
        if profile is None:
            raise ValueError(
                f"renew: '{certificate.subject.rfc4514_string()}' has no gematik certificate "
                "type among its policies"
            )
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ValueError(f"renew: {type(key).__name__} keys are not issued here (RSA, ECC)")
        admission = admission_of(certificate)
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        serials = certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        emails: list[str] = []
        dns_names: list[str] = []
        addresses: list[str] = []
        try:
            alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            pass
        else:
            emails = alt.value.get_values_for_type(x509.RFC822Name)
            dns_names = alt.value.get_values_for_type(x509.DNSName)
            addresses = [str(a) for a in alt.value.get_values_for_type(x509.IPAddress)]
        return ca.issue(
            profile,
            algorithm_of(key),
            common_name=str(names[0].value) if names else "",
            telematik_id=admission.telematik_id if admission else None,
            profession_oid=admission.profession_oids[0]
            if admission and admission.profession_oids
            else None,
            profession_text=admission.profession_texts[0]
            if admission and admission.profession_texts
            else None,
            email=emails[0] if emails else None,
            dns_names=dns_names,
            ip_addresses=addresses,
            subject_serial_number=str(serials[0].value) if serials else None,
        )

    def authorities(self) -> list[CertificateAuthority]:
        return [*self.roots, *self.intermediates]

    def issuer_of(self, certificate: x509.Certificate) -> CertificateAuthority | None:
        """The CA of this PKI that signed ``certificate``, if any."""
        for ca in self.authorities():
            if ca.issued_by_me(certificate):
                return ca
        return None

    def revoke(
        self,
        certificate: x509.Certificate,
        *,
        reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
        when: dt.datetime | None = None,
    ) -> None:
        """Revoke ``certificate`` at whichever CA of this PKI issued it."""
        ca = self.issuer_of(certificate)
        if ca is None:
            raise ValueError(
                f"revoke: '{certificate.subject.rfc4514_string()}' (serial "
                f"0x{certificate.serial_number:x}) was not issued by this test PKI"
            )
        ca.revoke(certificate, reason=reason, when=when)

    def trust_store(self) -> TrustStore:
        """Anchors = the roots, intermediates = the issuing CAs; CRLs are read live from the
        CAs, so a later :meth:`revoke` is seen by this store at once."""
        return TrustStore(
            anchors=[root.certificate for root in self.roots],
            intermediates=[ca.certificate for ca in self.intermediates],
            crl_provider=self.current_crls,
        )

    def current_crls(self) -> list[x509.CertificateRevocationList]:
        return [ca.current_crl() for ca in self.authorities()]

    def tls_ca_pem(self) -> bytes:
        """PEM of the CA chain that signs every TLS server cert (KOMP): both KOMP-CAs and both
        roots, so a client given this one file can build the chain from any of them."""
        komp = [ca for ca in self.intermediates if ca.kind is CaKind.KOMP]
        return b"".join(_pem(ca.certificate) for ca in [*komp, *self.roots])

    def anchors_pem(self) -> bytes:
        return b"".join(_pem(root.certificate) for root in self.roots)

    # -- persistence ----------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write ``<id>.cert.pem``, ``<id>.key.pem`` (PKCS#8, mode 0600), ``<id>.crl.pem``
        per CA, ``trust-anchors.pem``, ``tls-ca.pem`` and last ``index.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        entries: list[dict[str, Any]] = []
        for ca in self.authorities():
            ca_id = _ca_id(ca.kind, ca.algorithm)
            files = {
                "cert": f"{ca_id}.cert.pem",
                "key": f"{ca_id}.key.pem",
                "crl": f"{ca_id}.crl.pem",
            }
            _write(directory / files["cert"], ca.issued.cert_pem())
            _write(directory / files["key"], ca.issued.key_pem(), private=True)
            _write(
                directory / files["crl"],
                ca.current_crl().public_bytes(serialization.Encoding.PEM),
            )
            parent_id = _ca_id(ca.parent.kind, ca.parent.algorithm) if ca.parent else None
            entries.append(
                {"id": ca_id, "parent": parent_id, "algorithm": ca.algorithm.value}
                | files
                | ca.state()
            )
        _write(directory / "trust-anchors.pem", self.anchors_pem())
        _write(directory / "tls-ca.pem", self.tls_ca_pem())
        index = {"format": INDEX_FORMAT, "authorities": entries}
        _write(directory / "index.json", json.dumps(index, indent=2).encode())

    @classmethod
    def load(cls, directory: Path) -> TestPki:
        """Read what :meth:`save` wrote; errors name the file and what is wrong with it."""
        directory = Path(directory)
        index_path = directory / "index.json"
        try:
            index = json.loads(index_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{index_path}: cannot read the test PKI index: {exc}") from exc
        if index.get("format") != INDEX_FORMAT:
            raise ValueError(
                f"{index_path}: format {index.get('format')!r}, expected {INDEX_FORMAT!r}"
            )
        by_id: dict[str, CertificateAuthority] = {}
        roots: list[CertificateAuthority] = []
        intermediates: list[CertificateAuthority] = []
        pending = list(index["authorities"])
        while pending:
            ready = [e for e in pending if e["parent"] is None or e["parent"] in by_id]
            if not ready:
                raise ValueError(f"{index_path}: parents missing for {[e['id'] for e in pending]}")
            for entry in ready:
                pending.remove(entry)
                issued = _load_issued(directory / entry["cert"], directory / entry["key"])
                parent = by_id[entry["parent"]] if entry["parent"] else None
                ca = CertificateAuthority.from_state(entry, issued, parent)
                by_id[entry["id"]] = ca
                (intermediates if parent else roots).append(ca)
        return cls(roots, intermediates)


def _load_issued(cert_path: Path, key_path: Path) -> Issued:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{cert_path} / {key_path}: cannot load: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: unsupported key type {type(key).__name__}")
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ValueError(f"{key_path}: does not belong to the certificate {cert_path}")
    return Issued(cert, key)
