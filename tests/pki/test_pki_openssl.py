"""The system openssl (3.0) as an independent oracle: it accepts our chains in both algorithms
and reports a revoked certificate from our CRL."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kim_appliance.pki import Algorithm, CertProfile, Issued, TestPki

pytestmark = [
    pytest.mark.openssl,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
]


def _pem(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def _verify(
    pki: TestPki, issued: Issued, profile: CertProfile, tmp: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    algorithm = issued.algorithm
    ca = pki.ca_for(profile, algorithm)
    root = pki.root_for(algorithm)
    (tmp / "root.pem").write_bytes(_pem(root.certificate))
    (tmp / "ca.pem").write_bytes(_pem(ca.certificate))
    (tmp / "leaf.pem").write_bytes(issued.cert_pem())
    (tmp / "crls.pem").write_bytes(_pem(ca.crl()) + _pem(root.crl()))
    args = ["openssl", "verify", "-x509_strict", "-CAfile", "root.pem", "-untrusted", "ca.pem"]
    if extra:
        args += [*extra, "-CRLfile", "crls.pem"]
    return subprocess.run(
        [*args, "leaf.pem"], cwd=tmp, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize("algorithm", list(Algorithm), ids=lambda a: a.value)
@pytest.mark.parametrize(
    "profile",
    [CertProfile.C_HCI_OSIG, CertProfile.C_HCI_ENC, CertProfile.C_HP_ENC, CertProfile.C_FD_TLS_S],
    ids=lambda p: p.value,
)
def test_openssl_verify_accepts_our_chain(
    pki: TestPki, tmp_path: Path, profile: CertProfile, algorithm: Algorithm
) -> None:
    issued = pki.issue(
        profile, algorithm, common_name="Praxis Weber TEST-ONLY", telematik_id="1-2-ARZT-WEBER01"
    )
    result = _verify(pki, issued, profile, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "leaf.pem: OK" in result.stdout
    checked = _verify(pki, issued, profile, tmp_path, "-crl_check_all")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("algorithm", list(Algorithm), ids=lambda a: a.value)
def test_openssl_crl_check_reports_the_revoked_certificate(
    pki: TestPki, tmp_path: Path, algorithm: Algorithm
) -> None:
    profile = CertProfile.C_HCI_OSIG
    issued = pki.issue(profile, algorithm, common_name="Widerrufen TEST-ONLY")
    pki.revoke(issued.certificate, reason=x509.ReasonFlags.key_compromise)
    result = _verify(pki, issued, profile, tmp_path, "-crl_check")
    assert result.returncode != 0
    assert "certificate revoked" in result.stdout + result.stderr
