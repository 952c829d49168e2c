"""Key material and services the fuzz targets run against, built once per process.

The CMS and mail seeds are real KIM messages, so the keys that open them are committed with the
corpus (``corpus/_keys``: a test CA, RSA and brainpoolP256r1 encryption keys of one recipient,
RSA and ECC signer keys, all TEST-ONLY and valid 2020-2049). :func:`make_keys` wrote them;
:func:`keys` reads them. Opening a fuzzed message unwraps the same content key again and again,
so :class:`CachingKey` remembers each unwrap (the RSA operation is not what is being fuzzed).
The Konnektor of the SOAP target and the test PKI of the JWT target are made fresh per process
(:func:`demo_world`, about a second): their seeds carry placeholders for card handles.
"""

from __future__ import annotations

import datetime as dt
import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from kim_appliance.cms.keys import SoftwareKey

from .target import CORPUS

KEYS_DIR = CORPUS / "_keys"
ADDRESS = "praxis.fuzz@fd1.kim.telematik-test"
SENDER = "arzt.fuzz@fd2.kim.telematik-test"
_VALID = (dt.datetime(2020, 1, 1, tzinfo=dt.UTC), dt.datetime(2049, 12, 31, tzinfo=dt.UTC))
_KEY_NAMES = ("enc-rsa", "enc-ecc", "sign-rsa", "sign-ecc")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kim-appliance fuzz NOT-VALID"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_keys(directory: Path = KEYS_DIR) -> None:
    """Write a fresh CA and the four keys (PKCS#8 PEM) with their certificates."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("FUZZ-CA TEST-ONLY"))
        .issuer_name(_name("FUZZ-CA TEST-ONLY"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_VALID[0])
        .not_valid_after(_VALID[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.cert.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for name in _KEY_NAMES:
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if name.endswith("rsa"):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.BrainpoolP256R1())
        address = ADDRESS if name.startswith("enc") else SENDER
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{address} {name} TEST-ONLY"))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_VALID[0])
            .not_valid_after(_VALID[1])
            .sign(ca_key, hashes.SHA256())
        )
        (directory / f"{name}.key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (directory / f"{name}.cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class Keys:
    ca: x509.Certificate
    enc_rsa: SoftwareKey
    enc_ecc: SoftwareKey
    sign_rsa: SoftwareKey
    sign_ecc: SoftwareKey


@functools.cache
def keys() -> Keys:
    loaded = {
        name: SoftwareKey.from_files(KEYS_DIR / f"{name}.key.pem", KEYS_DIR / f"{name}.cert.pem")
        for name in _KEY_NAMES
    }
    ca = x509.load_pem_x509_certificate((KEYS_DIR / "ca.cert.pem").read_bytes())
    return Keys(ca, loaded["enc-rsa"], loaded["enc-ecc"], loaded["sign-rsa"], loaded["sign-ecc"])


class CachingKey:
    """A :class:`~kim_appliance.cms.keys.KeyOperations` that remembers every unwrap: the same
    RSA-OAEP or ECDH input gives the same answer, so it is computed once (failures too)."""

    def __init__(self, key: SoftwareKey) -> None:
        self._key = key
        self._transport: dict[bytes, bytes | Exception] = {}
        self._agreed: dict[bytes, bytes | Exception] = {}

    @property
    def certificate(self) -> x509.Certificate:
        return self._key.certificate

    @staticmethod
    def _remember(cache: dict[bytes, bytes | Exception], key: bytes, compute: Any) -> bytes:
        if key not in cache:
            if len(cache) > 4096:
                cache.clear()
            try:
                cache[key] = compute()
            except Exception as exc:
                cache[key] = exc
        value = cache[key]
        if isinstance(value, Exception):
            raise value
        return value

    def decrypt_key_transport(self, encrypted_key: bytes) -> bytes:
        return self._remember(
            self._transport, encrypted_key, lambda: self._key.decrypt_key_transport(encrypted_key)
        )

    def agree_key(self, originator_public_key: ec.EllipticCurvePublicKey) -> bytes:
        point = originator_public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return self._remember(
            self._agreed, point, lambda: self._key.agree_key(originator_public_key)
        )

    def sign_digest(self, digest: bytes) -> bytes:
        return self._key.sign_digest(digest)


@dataclass(frozen=True)
class DemoWorld:
    data_dir: Path
    demo: dict[str, Any]


@functools.cache
def demo_world() -> DemoWorld:
    """A demo data dir (test PKI, cards, Fachdienste) in a temporary directory that lives as
    long as the process."""
    import atexit
    import json
    import shutil

    from kim_appliance import demo

    root = Path(tempfile.mkdtemp(prefix="kim-fuzz-world-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    directory = root / "data"
    demo.initialise(directory)
    return DemoWorld(directory, json.loads((directory / "demo.json").read_text()))


GEMATIK_SAMPLE = Path(__file__).resolve().parents[1] / "data/gematik/SMIME-Profil.zip"


@functools.cache
def gematik_files() -> dict[str, bytes]:
    """gematik's S/MIME sample (tests/data/gematik): the message stages and recipient A's key
    (``A/<name>``), so that the gematik message decrypts in the fuzz targets too."""
    import io
    import zipfile

    files: dict[str, bytes] = {}
    with zipfile.ZipFile(GEMATIK_SAMPLE) as outer:
        for name in outer.namelist():
            data = outer.read(name)
            if name == "recipientAkeys.zip":
                with zipfile.ZipFile(io.BytesIO(data)) as inner:
                    files.update({f"A/{n}": inner.read(n) for n in inner.namelist()})
            else:
                files[name] = data
    return files


@functools.cache
def gematik_key() -> SoftwareKey:
    files = gematik_files()
    certificate = x509.load_der_x509_certificate(files["A/hci-enc-2-kim-bsp.crt"])
    return SoftwareKey.from_pem(
        files["A/hci-enc-2-kim-bsp.prv.pem"], certificate.public_bytes(serialization.Encoding.PEM)
    )
