"""Certificates from outside, read completely at once (issue 11): a certificate cryptography
loads but cannot read in full is refused by load_untrusted_certificate with a message naming the
part, instead of failing later inside path validation with a library's own exception type."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from kim_appliance.pki import Algorithm, CertProfile, TestPki
from kim_appliance.pki.untrusted import UntrustedCertificateError, load_untrusted_certificate


@pytest.fixture(scope="module")
def der(pki: TestPki) -> bytes:
    issued = pki.issue(CertProfile.C_HCI_ENC, Algorithm.RSA, common_name="x")
    return issued.certificate.public_bytes(serialization.Encoding.DER)


def test_a_good_certificate_loads(der: bytes) -> None:
    certificate = load_untrusted_certificate(der)
    assert certificate.public_bytes(serialization.Encoding.DER) == der


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        # keyUsage's BIT STRING made a NULL: loads, but the extension cannot be read
        (lambda d: d[: d.index(bytes.fromhex("0603551d0f")) + 5]
         + d[d.index(bytes.fromhex("0603551d0f")) + 5 :].replace(b"\x03\x02", b"\x05\x02", 1),
         "extensions cannot be read"),
        # rsaEncryption -> an OID nobody knows: UnsupportedAlgorithm for the key
        (lambda d: d.replace(bytes.fromhex("06092a864886f70d010101"),
                             bytes.fromhex("06092a864886f70d01017f")),
         "subjectPublicKeyInfo: algorithm 1.2.840.113549.1.1.127 is not supported"),
        # version 34: InvalidVersion, not a ValueError
        (lambda d: d.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x22", 1),
         "not a DER X.509 certificate (InvalidVersion"),
        (lambda d: d[:40], "not a DER X.509 certificate"),
    ],
)  # fmt: skip
def test_half_readable_certificates_are_refused_naming_the_part(
    der: bytes, change: object, reason: str
) -> None:
    assert callable(change)
    with pytest.raises(UntrustedCertificateError, match=reason.replace("(", r"\(")):
        load_untrusted_certificate(change(der))
