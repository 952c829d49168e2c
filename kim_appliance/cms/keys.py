"""The private-key operations the KIM CMS profile needs, behind one small interface.

A card in the emulated Konnektor owns its keys and offers exactly these operations; the
software implementation here serves the CLI and tests. The CMS code never sees a private key:
it hands a card the wrapped content key, the originator's ephemeral public key, or a digest.
This module must never do I/O other than reading the PEM files it is asked to load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from kim_appliance.cms.errors import CmsError


@runtime_checkable
class KeyOperations(Protocol):
    """What a card (or a software key) can do with the private key of ``certificate``."""

    @property
    def certificate(self) -> x509.Certificate: ...

    def decrypt_key_transport(self, encrypted_key: bytes) -> bytes:
        """RSAES-OAEP (SHA-256, MGF1-SHA-256, empty label) unwrap of a content key (digest §2.8)."""
        ...

    def agree_key(self, originator_public_key: ec.EllipticCurvePublicKey) -> bytes:
        """Raw ECDH shared secret Z with the originator's ephemeral key (brainpoolP256r1)."""
        ...

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a SHA-256 digest: RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32) for RSA keys,
        ECDSA with a DER-encoded Ecdsa-Sig-Value for EC keys (digest §2.8)."""
        ...


OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
PSS_SHA256_SALT32 = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


@dataclass(frozen=True)
class SoftwareKey:
    """A private key in memory with its certificate; implements :class:`KeyOperations`."""

    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes) -> SoftwareKey:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise CmsError("private key", f"unsupported key type {type(key).__name__}")
        cert = x509.load_pem_x509_certificate(cert_pem)
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise CmsError("private key", "does not belong to the certificate given with it")
        return cls(key, cert)

    @classmethod
    def from_files(cls, key_path: Path, cert_path: Path) -> SoftwareKey:
        return cls.from_pem(key_path.read_bytes(), cert_path.read_bytes())

    def decrypt_key_transport(self, encrypted_key: bytes) -> bytes:
        if not isinstance(self.private_key, rsa.RSAPrivateKey):
            raise CmsError("KeyTransRecipientInfo", "key transport needs an RSA key")
        try:
            return self.private_key.decrypt(encrypted_key, OAEP_SHA256)
        except ValueError as exc:
            raise CmsError("KeyTransRecipientInfo.encryptedKey", "RSA-OAEP unwrap failed") from exc

    def agree_key(self, originator_public_key: ec.EllipticCurvePublicKey) -> bytes:
        if not isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            raise CmsError("KeyAgreeRecipientInfo", "key agreement needs an EC key")
        return self.private_key.exchange(ec.ECDH(), originator_public_key)

    def sign_digest(self, digest: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(digest, PSS_SHA256_SALT32, Prehashed(hashes.SHA256()))
        return self.private_key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
