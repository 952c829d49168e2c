"""Certificate path validation against the test trust anchors, with CRL revocation checks.

This is what the Clientmodul and the Konnektor emulation ask before they trust a signer,
an encryption certificate or a TLS peer (digest §1.9, §2.5, §2.9; KOM-LE-A_2128/A_2129 make the
profile matter). It checks: the chain by issuer/subject and AKI/SKI, every signature, the
validity of every certificate at the given time, CA basicConstraints, keyUsage and path length,
the leaf's keyUsage/extendedKeyUsage for the purpose, the profile's type OID, and revocation by
the issuers' CRLs (a CRL whose signature does not verify is ignored and reported in
``warnings``). It never fetches anything from the network and never changes the trust store.

Caching (issue 7: a KIM round trip validates several certificates): a :class:`TrustStore`
remembers work whose answer cannot change while its inputs stay the same, keyed by content, so
it never needs a TTL: the verdict of each signature check per (certificate, issuer) pair; the
path built for a leaf (dropped when the anchors or intermediates change); which (path, purpose,
profile) passed the static checks; and, per path and per exact set of current CRL objects, the
verified CRLs and the leaf's entries in them. A revocation (the Konnektor fault "certificate
revoked") makes the CA sign a new CRL object, which is a new cache key, so it is seen at the
next validation. Validity times and CRL times are compared with the validation time on every
call. The cache must never hold an answer that depends on anything not in its key.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kim_appliance.errors import KimError
from kim_appliance.pki.admission import Admission, admission_of
from kim_appliance.pki.authority import utc
from kim_appliance.pki.profiles import CertProfile, policy_oids_of, profile_of

MAX_PATH_LENGTH = 8
#: entries per validation cache before it is emptied (a bound, not an LRU: the working set of
#: an appliance is a few dozen certificates)
CACHE_LIMIT = 4096

REASONS = frozenset(
    {
        "expired",
        "not-yet-valid",
        "untrusted-issuer",
        "bad-signature",
        "wrong-key-usage",
        "wrong-profile",
        "revoked",
        "ca-constraint",
        "malformed",
    }
)


class Purpose(enum.Enum):
    """What the caller wants to use the leaf certificate for."""

    ENCRYPTION = "encryption"  # keyEncipherment (RSA) or keyAgreement (ECC)
    SIGNATURE = "signature"  # nonRepudiation (C.HCI.OSIG, C.HP.QES)
    AUTHENTICATION = "authentication"  # digitalSignature
    TLS_SERVER = "tls-server"  # digitalSignature, EKU id-kp-serverAuth if an EKU is present
    TLS_CLIENT = "tls-client"  # digitalSignature, EKU id-kp-clientAuth if an EKU is present


def describe(certificate: x509.Certificate) -> str:
    """``C.HCI.OSIG of 'Praxis Weber TEST-ONLY' (serial 0x1a2b)`` for messages."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else certificate.subject.rfc4514_string()
    serial = f"serial 0x{certificate.serial_number:x}"
    if _is_ca(certificate):
        return f"CA certificate '{name}' ({serial})"
    profile = profile_of(certificate)
    kind = profile.value if profile else "certificate"
    return f"{kind} of '{name}' ({serial})"


class PathValidationError(KimError, ValueError):
    """A certificate cannot be trusted for the purpose asked.

    ``reason`` is one of :data:`REASONS`; ``certificate_subject`` is the RFC 4514 subject of
    the certificate that failed (the leaf or a CA on its path); the message says what failed
    and why, e.g. ``C.HCI.OSIG of 'Praxis Weber TEST-ONLY' (serial 0x1a2b) was revoked on
    2026-11-02 (keyCompromise)``.
    """

    def __init__(self, reason: str, certificate: x509.Certificate, detail: str) -> None:
        if reason not in REASONS:  # pragma: no cover - programming error
            raise AssertionError(f"unknown reason {reason!r}")
        super().__init__(f"{describe(certificate)} {detail}")
        self.reason = reason
        self.certificate = certificate
        self.certificate_subject = certificate.subject.rfc4514_string()


class Validated(Protocol):
    """What a :class:`CertificateValidator` found: ``warnings`` name what could not be checked
    (a warning containing "not checked" means the certificate's status is unknown)."""

    @property
    def warnings(self) -> list[str]: ...


class CertificateValidator(Protocol):
    """What checks a certificate before it is trusted: a :class:`TrustStore`, or a Konnektor's
    VerifyCertificate behind the Clientmodul's Konnektor port. Raises
    :class:`PathValidationError` when ``certificate`` cannot be trusted for ``purpose`` (and
    ``profile``, when given) at ``at``."""

    def validate(
        self,
        certificate: x509.Certificate,
        *,
        purpose: Purpose,
        profile: CertProfile | None = None,
        at: dt.datetime | None = None,
    ) -> Validated: ...


class ValidatedPath(list[x509.Certificate]):
    """The path leaf..anchor, with ``warnings`` about what could not be checked fully (no
    CRL for an issuer, a CRL ignored for a bad signature, a stale CRL)."""

    def __init__(self, path: Iterable[x509.Certificate], warnings: Iterable[str] = ()) -> None:
        super().__init__(path)
        self.warnings: list[str] = list(warnings)


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        bc = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return bc.ca


def _ski_of(certificate: x509.Certificate) -> bytes | None:
    try:
        return certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value.digest
    except x509.ExtensionNotFound:
        return None


def _aki_of(certificate: x509.Certificate) -> bytes | None:
    try:
        return certificate.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def _key_usage(certificate: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


_SignatureCache = dict[tuple[x509.Certificate, x509.Certificate], str | None]


def _signature_error(
    cert: x509.Certificate, issuer: x509.Certificate, cache: _SignatureCache | None = None
) -> str | None:
    """None if ``issuer``'s key verifies ``cert``'s signature (and the names chain), else
    why not; remembered per (cert, issuer) pair in ``cache``, keyed by both DER encodings."""
    key = (cert, issuer)
    if cache is not None and key in cache:
        return cache[key]
    try:
        cert.verify_directly_issued_by(issuer)
        error = None
    except (InvalidSignature, ValueError, TypeError) as exc:
        error = str(exc) or "the signature does not verify"
    if cache is not None:
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[key] = error
    return error


def _self_signed(certificate: x509.Certificate, cache: _SignatureCache | None = None) -> bool:
    if certificate.subject != certificate.issuer:
        return False
    return _signature_error(certificate, certificate, cache) is None


@dataclass(frozen=True)
class _UsableCrl:
    """A CRL of the issuer whose signature verified: when it expires, and the entry of the
    certificate under check in it (revocation time, reason), if any."""

    next_update: dt.datetime | None
    entry: tuple[dt.datetime, str] | None


@dataclass(frozen=True)
class _PairPlan:
    """What the current CRLs say about one (certificate, issuer) step of a path, in the order
    the checks report it: static warnings (``str``) interleaved with usable CRLs."""

    cert: x509.Certificate
    issuer_name: str
    items: tuple[str | _UsableCrl, ...]

    @property
    def usable(self) -> list[_UsableCrl]:
        return [item for item in self.items if isinstance(item, _UsableCrl)]


@dataclass(frozen=True)
class _RevocationPlan:
    #: the CRL objects the plan was made from: holding them keeps their ids unique
    crls: tuple[x509.CertificateRevocationList, ...]
    pairs: tuple[_PairPlan, ...]


_PathKey = tuple[x509.Certificate, tuple[x509.Certificate, ...]]
_Path = tuple[x509.Certificate, ...]


class _Caches:
    """The memo of one :class:`TrustStore` (see the module docstring for what is kept and
    why each key is sound). Plain dict operations only, so worker threads may share it."""

    def __init__(self) -> None:
        self.signatures: _SignatureCache = {}
        self.pool: tuple[_Path, _Path] = ((), ())
        self.paths: dict[_PathKey, _Path] = {}
        self.checked: dict[tuple[_Path, Purpose, CertProfile | None], bool] = {}
        self.revocation: dict[tuple[_Path, tuple[int, ...]], _RevocationPlan] = {}

    def clear(self) -> None:
        self.signatures.clear()
        self.paths.clear()
        self.checked.clear()
        self.revocation.clear()


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----\r?\n?", re.DOTALL)


@dataclass
class TrustStore:
    """Trust anchors, intermediate CA certificates and CRLs.

    ``crl_provider``, if set, is asked for the current CRLs at every validation (the test PKI
    sets it so that a revocation is seen at once); ``crls`` holds fixed ones.
    """

    anchors: list[x509.Certificate] = field(default_factory=list)
    intermediates: list[x509.Certificate] = field(default_factory=list)
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)
    crl_provider: Callable[[], Sequence[x509.CertificateRevocationList]] | None = field(
        default=None, repr=False, compare=False
    )
    _caches: _Caches = field(default_factory=_Caches, init=False, repr=False, compare=False)

    @classmethod
    def from_pem_files(cls, paths: Iterable[Path]) -> TrustStore:
        """Certificates (self-signed ones become anchors, others intermediates) and CRLs from
        PEM files; a file without PEM blocks is tried as one DER certificate or CRL."""
        store = cls()
        for path in paths:
            data = Path(path).read_bytes()
            blocks = list(_PEM_BLOCK.finditer(data))
            try:
                if not blocks:
                    store._add_der(data)
                for block in blocks:
                    label = block.group(1)
                    if label in (b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"):
                        store._add_certificate(x509.load_pem_x509_certificate(block.group(0)))
                    elif label == b"X509 CRL":
                        store.crls.append(x509.load_pem_x509_crl(block.group(0)))
            except ValueError as exc:
                raise ValueError(f"{path}: not a certificate or CRL: {exc}") from exc
        return store

    def _add_der(self, data: bytes) -> None:
        try:
            self._add_certificate(x509.load_der_x509_certificate(data))
        except ValueError:
            self.crls.append(x509.load_der_x509_crl(data))

    def _add_certificate(self, certificate: x509.Certificate) -> None:
        target = (
            self.anchors
            if _self_signed(certificate, self._caches.signatures)
            else self.intermediates
        )
        if certificate not in target:
            target.append(certificate)

    def clear_caches(self) -> None:
        """Forget every remembered validation step. Never needed for correctness (every cache
        is keyed by content, see the module docstring); for measurements and tests."""
        self._caches.clear()

    def current_crls(self) -> list[x509.CertificateRevocationList]:
        crls = list(self.crls)
        if self.crl_provider is not None:
            crls.extend(self.crl_provider())
        return crls

    # -- validation -----------------------------------------------------------------------

    def validate(
        self,
        certificate: x509.Certificate,
        *,
        purpose: Purpose,
        profile: CertProfile | None = None,
        at: dt.datetime | None = None,
        extra_intermediates: Sequence[x509.Certificate] = (),
    ) -> ValidatedPath:
        """The path leaf..anchor if ``certificate`` is trustworthy for ``purpose`` at ``at``
        (default: now); raises :class:`PathValidationError` otherwise."""
        when = utc(at) if at else dt.datetime.now(dt.UTC)
        path = self._cached_path(certificate, tuple(extra_intermediates))
        checked_key = (path, purpose, profile)
        if checked_key in self._caches.checked:
            for cert in path:  # the one static-looking check that depends on the time
                _check_validity(cert, when)
        else:
            for cert in path:
                _check_well_formed(cert)
            for cert in path:
                _check_validity(cert, when)
            _check_ca_constraints(list(path))
            _check_purpose(certificate, purpose)
            if profile is not None:
                _check_profile(certificate, profile)
            _remember(self._caches.checked, checked_key, True)
        warnings = self._check_revocation(path, when)
        return ValidatedPath(path, warnings)

    def _cached_path(self, leaf: x509.Certificate, extra: tuple[x509.Certificate, ...]) -> _Path:
        """:meth:`_build_path`, remembered per (leaf, extra) while the pool is unchanged.
        Failures are not remembered (they are rare and their messages should stay fresh)."""
        caches = self._caches
        pool = (tuple(self.anchors), tuple(self.intermediates))
        if pool != caches.pool:  # identity first: cheap while the lists hold the same objects
            caches.paths.clear()
            caches.pool = pool
        key = (leaf, extra)
        path = caches.paths.get(key)
        if path is None:
            path = tuple(self._build_path(leaf, extra))
            _remember(caches.paths, key, path)
        return path

    def _build_path(
        self, leaf: x509.Certificate, extra: Sequence[x509.Certificate]
    ) -> list[x509.Certificate]:
        pool = [*self.intermediates, *extra, *self.anchors]
        failures: list[PathValidationError] = []
        signatures = self._caches.signatures

        def extend(path: list[x509.Certificate]) -> list[x509.Certificate] | None:
            cert = path[-1]
            if cert in self.anchors:
                return path
            if len(path) > MAX_PATH_LENGTH:
                failures.append(
                    PathValidationError(
                        "ca-constraint", leaf, f"has a path longer than {MAX_PATH_LENGTH}"
                    )
                )
                return None
            if _self_signed(
                cert, signatures
            ):  # a root, but not ours (perhaps one of the same name)
                failures.append(
                    PathValidationError(
                        "untrusted-issuer", cert, "is self-signed and not one of the trust anchors"
                    )
                )
                return None
            aki = _aki_of(cert)
            candidates = [
                c
                for c in pool
                if c.subject == cert.issuer
                and c not in path
                and (aki is None or _ski_of(c) in (None, aki))
            ]
            if not candidates:
                key_id = f" with key id {aki.hex()}" if aki else ""
                detail = (
                    f"was issued by '{cert.issuer.rfc4514_string()}'{key_id}, "
                    "which is not in the trust store"
                )
                failures.append(PathValidationError("untrusted-issuer", cert, detail))
                return None
            for candidate in candidates:
                why = _signature_error(cert, candidate, signatures)
                if why is not None:
                    failures.append(
                        PathValidationError(
                            "bad-signature",
                            cert,
                            f"has a signature that does not verify with the key of "
                            f"'{candidate.subject.rfc4514_string()}': {why}",
                        )
                    )
                    continue
                found = extend([*path, candidate])
                if found is not None:
                    return found
            return None

        path = extend([leaf])
        if path is not None:
            return path
        # A signature failure says more than "no issuer" found on another branch.
        for reason in ("bad-signature", "untrusted-issuer", "ca-constraint"):
            for failure in failures:
                if failure.reason == reason:
                    raise failure
        raise PathValidationError("untrusted-issuer", leaf, "has no path to a trust anchor")

    def _check_revocation(self, path: _Path, when: dt.datetime) -> list[str]:
        warnings: list[str] = []
        for pair in self._revocation_plan(path).pairs:
            for item in pair.items:
                if isinstance(item, str):
                    warnings.append(item)
                elif item.next_update is not None and item.next_update < when:
                    warnings.append(
                        f"the CRL of '{pair.issuer_name}' expired on "
                        f"{item.next_update.isoformat()}; used anyway"
                    )
            usable = pair.usable
            if not usable:
                warnings.append(
                    f"no CRL of '{pair.issuer_name}' available: revocation of "
                    f"{describe(pair.cert)} not checked"
                )
            for crl in usable:
                if crl.entry is None:
                    continue
                revoked_at, reason = crl.entry
                if revoked_at <= when:
                    raise PathValidationError(
                        "revoked",
                        pair.cert,
                        f"was revoked on {revoked_at.date().isoformat()} ({reason})",
                    )
                warnings.append(
                    f"{describe(pair.cert)} was revoked on {revoked_at.isoformat()} ({reason}), "
                    f"after the validation time {when.isoformat()}"
                )
        return warnings

    def _revocation_plan(self, path: _Path) -> _RevocationPlan:
        """What the current CRLs say about each step of ``path``, remembered per (path, the
        exact CRL objects). A new CRL (a revocation) is a new object and so a new key; the
        plan holds the CRL objects it was made from, so their ids cannot be reused while it
        is remembered."""
        crls = tuple(self.current_crls())
        key = (path, tuple(map(id, crls)))
        plan = self._caches.revocation.get(key)
        if plan is not None and all(a is b for a, b in zip(plan.crls, crls, strict=True)):
            return plan
        pairs = tuple(
            _plan_pair(cert, issuer, crls, self._caches.signatures)
            for cert, issuer in itertools.pairwise(path)
        )
        plan = _RevocationPlan(crls, pairs)
        _remember(self._caches.revocation, key, plan)
        return plan


def _plan_pair(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crls: Sequence[x509.CertificateRevocationList],
    signatures: _SignatureCache,
) -> _PairPlan:
    items: list[str | _UsableCrl] = []
    issuer_name = issuer.subject.rfc4514_string()
    for crl in crls:
        if crl.issuer != issuer.subject:
            continue
        key = issuer.public_key()
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            continue
        if not crl.is_signature_valid(key):
            items.append(
                f"a CRL naming '{issuer_name}' as issuer has a signature that does not "
                "verify with that CA's key; ignored"
            )
            continue
        ku = _key_usage(issuer)
        if ku is not None and not ku.crl_sign:
            items.append(f"CA '{issuer_name}' may not sign CRLs; its CRL is ignored")
            continue
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        items.append(
            _UsableCrl(
                crl.next_update_utc,
                None if entry is None else (entry.revocation_date_utc, _reason_of(entry)),
            )
        )
    return _PairPlan(cert, issuer_name, tuple(items))


def _reason_of(entry: x509.RevokedCertificate) -> str:
    try:
        return str(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value)
    except x509.ExtensionNotFound:
        return "unspecified"


def _check_well_formed(cert: x509.Certificate) -> None:
    try:
        extensions = list(cert.extensions)
    except ValueError as exc:  # duplicate or undecodable extensions
        raise PathValidationError("malformed", cert, f"has malformed extensions: {exc}") from exc
    for ext in extensions:
        if ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
            raise PathValidationError(
                "malformed",
                cert,
                f"has a critical extension {ext.oid.dotted_string} that is not understood",
            )


def _check_validity(cert: x509.Certificate, when: dt.datetime) -> None:
    if when < cert.not_valid_before_utc:
        raise PathValidationError(
            "not-yet-valid",
            cert,
            f"is not valid before {cert.not_valid_before_utc.isoformat()} "
            f"(checked at {when.isoformat()})",
        )
    if when > cert.not_valid_after_utc:
        raise PathValidationError(
            "expired",
            cert,
            f"expired on {cert.not_valid_after_utc.isoformat()} (checked at {when.isoformat()})",
        )


def _check_ca_constraints(path: list[x509.Certificate]) -> None:
    for depth, ca in enumerate(path[1:]):
        try:
            bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise PathValidationError(
                "ca-constraint", ca, "signed another certificate but is not a CA (basicConstraints)"
            )
        ku = _key_usage(ca)
        if ku is not None and not ku.key_cert_sign:
            raise PathValidationError(
                "ca-constraint", ca, "signed another certificate without keyUsage keyCertSign"
            )
        # depth = number of CA certificates between this CA and the leaf
        if bc.path_length is not None and depth > bc.path_length:
            raise PathValidationError(
                "ca-constraint",
                ca,
                f"allows {bc.path_length} CA certificates below it, the path has {depth}",
            )


def _check_purpose(cert: x509.Certificate, purpose: Purpose) -> None:
    ku = _key_usage(cert)
    if ku is None:
        raise PathValidationError(
            "wrong-key-usage", cert, f"has no keyUsage, needed for {purpose.value}"
        )
    is_rsa = isinstance(cert.public_key(), rsa.RSAPublicKey)
    if purpose is Purpose.ENCRYPTION:
        ok, needed = (
            (ku.key_encipherment, "keyEncipherment")
            if is_rsa
            else (ku.key_agreement, "keyAgreement")
        )
    elif purpose is Purpose.SIGNATURE:
        ok, needed = ku.content_commitment, "nonRepudiation"
    else:
        ok, needed = ku.digital_signature, "digitalSignature"
    if not ok:
        raise PathValidationError(
            "wrong-key-usage", cert, f"lacks keyUsage {needed}, needed for {purpose.value}"
        )
    if purpose in (Purpose.TLS_SERVER, Purpose.TLS_CLIENT):
        wanted, wanted_name = (
            (ExtendedKeyUsageOID.SERVER_AUTH, "id-kp-serverAuth")
            if purpose is Purpose.TLS_SERVER
            else (ExtendedKeyUsageOID.CLIENT_AUTH, "id-kp-clientAuth")
        )
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return
        if wanted not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
            raise PathValidationError(
                "wrong-key-usage",
                cert,
                f"lacks extendedKeyUsage {wanted_name}, needed for {purpose.value}",
            )


def _check_profile(cert: x509.Certificate, profile: CertProfile) -> None:
    policies = policy_oids_of(cert)
    if profile.spec.type_oid in policies:
        return
    actual = profile_of(cert)
    what = f"is a {actual.value}" if actual else f"has policies {list(policies) or 'none'}"
    raise PathValidationError(
        "wrong-profile",
        cert,
        f"{what}, expected {profile.value} (type OID {profile.spec.type_oid})",
    )


__all__ = [
    "REASONS",
    "Admission",
    "PathValidationError",
    "Purpose",
    "TrustStore",
    "ValidatedPath",
    "admission_of",
    "describe",
    "profile_of",
]
