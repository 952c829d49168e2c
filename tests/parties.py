"""Test parties for the CMS, mail and CLI tests: keys and certificates, RSA-2048 and brainpool.

These are plain cryptography-built certificates (one CA per algorithm) so that the CMS tests
do not depend on the test PKI's profiles; tests of the full profile use kim_appliance.pki.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from kim_appliance.cms.keys import SoftwareKey

# gematik's S/MIME sample (github.com/gematik/api-kim, Apache-2.0), copied into the repo
SAMPLE_ZIP = Path(__file__).resolve().parent / "data/gematik/SMIME-Profil.zip"


@dataclass(frozen=True)
class Party:
    address: str
    key: SoftwareKey
    ca_certificate: x509.Certificate

    def write_pem(self, directory: Path) -> tuple[Path, Path]:
        """Write key (PKCS#8) and certificate PEM files; return (key_path, cert_path)."""
        stem = self.address.split("@")[0]
        key_path = directory / f"{stem}.key.pem"
        cert_path = directory / f"{stem}.cert.pem"
        key_path.write_bytes(
            self.key.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_path.write_bytes(self.key.certificate.public_bytes(serialization.Encoding.PEM))
        return key_path, cert_path


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kim-appliance tests NOT-VALID"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _new_key(kind: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.BrainpoolP256R1())


class SimpleCa:
    def __init__(self, kind: str) -> None:
        self.key = _new_key(kind)
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"TEST-CA-{kind} TEST-ONLY"))
            .issuer_name(_name(f"TEST-CA-{kind} TEST-ONLY"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, kind: str, cn: str, *, usage: str) -> SoftwareKey:
        key = _new_key(kind)
        now = dt.datetime.now(dt.UTC)
        ku = {
            "digital_signature": False,
            "content_commitment": usage == "sign",
            "key_encipherment": usage == "enc" and kind == "RSA",
            "data_encipherment": False,
            "key_agreement": usage == "enc" and kind == "ECC",
            "key_cert_sign": False,
            "crl_sign": False,
            "encipher_only": False,
            "decipher_only": False,
        }
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.KeyUsage(**ku), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return SoftwareKey(key, cert)
