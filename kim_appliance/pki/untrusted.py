"""Loading a certificate someone else sent: every part read now, or a clear refusal.

cryptography parses a certificate lazily: ``load_der_x509_certificate`` checks the outer
structure, and the subject, the issuer, each extension and the public key are decoded only when
first used, deep inside path validation or a profile check, each raising its own type
(``ValueError``, ``DuplicateExtension``, ``InvalidVersion``, ``UnsupportedAlgorithm``, issue 11).
:func:`load_untrusted_certificate` reads every part the appliance ever uses at once, so that a
certificate from a SOAP request, a JWT's ``x5c`` or a SignedData is either completely readable
or refused here with :class:`UntrustedCertificateError` saying what was wrong. It never decides
whether the certificate is trustworthy: that is :class:`~kim_appliance.pki.TrustStore`'s job.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from kim_appliance.errors import KimError
from kim_appliance.pki.admission import admission_of


class UntrustedCertificateError(KimError, ValueError):
    """A certificate that cannot be read completely; ``str()`` says which part and why."""


def _reason(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def check_untrusted_certificate(certificate: x509.Certificate) -> x509.Certificate:
    """Read every lazily parsed part of ``certificate`` (names, validity, extensions, the
    Admission, the key); raise :class:`UntrustedCertificateError` naming the first that fails.
    Returns the certificate."""
    part = "certificate"
    try:
        part = "subject"
        certificate.subject.rfc4514_string()
        part = "issuer"
        certificate.issuer.rfc4514_string()
        part = "serial number"
        _ = certificate.serial_number
        part = "validity"
        _ = (certificate.not_valid_before_utc, certificate.not_valid_after_utc)
        part = "extensions"
        for extension in certificate.extensions:
            _ = extension.value
        part = "Admission extension"
        admission_of(certificate)
        part = "subjectPublicKeyInfo"
        certificate.public_key()
    except UnsupportedAlgorithm as exc:
        try:
            oid = certificate.public_key_algorithm_oid.dotted_string
        except ValueError:
            oid = "?"
        raise UntrustedCertificateError(
            f"{part}: algorithm {oid} is not supported ({_reason(exc)})"
        ) from exc
    except Exception as exc:  # cryptography's and asn1crypto's many types; see the docstring
        raise UntrustedCertificateError(f"{part} cannot be read ({_reason(exc)})") from exc
    return certificate


def load_untrusted_certificate(der: bytes) -> x509.Certificate:
    """A DER certificate from outside, read completely (see the module docstring)."""
    try:
        certificate = x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as exc:
        raise UntrustedCertificateError(f"not a DER X.509 certificate ({_reason(exc)})") from exc
    return check_untrusted_certificate(certificate)
