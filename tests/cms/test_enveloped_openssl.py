"""AuthEnvelopedData interop with the system OpenSSL (3.0.x) as an independent oracle.

digest §2.6/§2.10/§7.3/§7.10: OpenSSL must read what we write (without unauthAttrs, which
OpenSSL 3.0 cannot parse) and we must read what ``openssl cms -encrypt -aes-256-gcm`` writes,
for RSA-OAEP and for brainpoolP256r1 ECDH recipients.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import asn1crypto.x509
import pytest
from asn1crypto import cms, core
from cryptography.hazmat.primitives import serialization

from kim_appliance.cms.enveloped import (
    AuthEnvelopedReader,
    AuthEnvelopedWriter,
    EncryptionRecipient,
    find_recipient,
)
from kim_appliance.cms.keys import SoftwareKey

pytestmark = [
    pytest.mark.openssl,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
]


def _emails(address: str, key: SoftwareKey) -> bytes:
    cert = asn1crypto.x509.Certificate.load(
        key.certificate.public_bytes(serialization.Encoding.DER)
    )
    ias = cms.IssuerAndSerialNumber({"issuer": cert.issuer, "serial_number": cert.serial_number})
    entry = core.Sequence(contents=core.IA5String(address).dump() + ias.dump()).dump()
    values = core.SetOf(contents=entry).dump()
    oid = core.ObjectIdentifier("1.2.276.0.76.4.173").dump()
    return bytes(core.Sequence(contents=oid + values).dump())


def _seal(party: object, content: bytes, *, emails: bool) -> bytes:
    address, key = party.address, party.key  # type: ignore[attr-defined]
    writer = AuthEnvelopedWriter(
        [EncryptionRecipient(address, key.certificate)],
        unauth_recipient_emails=_emails(address, key) if emails else None,
        chunk_size=1000,
    )
    return writer.header() + writer.update(content) + writer.finalize()


def _open(der: bytes, key: SoftwareKey) -> bytes:
    reader = AuthEnvelopedReader()
    reader.feed(der)
    reader.feed_eof()
    assert reader.recipient_infos is not None
    info, k = find_recipient(reader.recipient_infos, [key])
    reader.set_content_key(info.unwrap(k))
    with reader.finish() as plaintext:
        return plaintext.read()


def _openssl_decrypt(
    tmp_path: Path, party: object, der: bytes
) -> subprocess.CompletedProcess[bytes]:
    key_path, cert_path = party.write_pem(tmp_path)  # type: ignore[attr-defined]
    (tmp_path / "in.der").write_bytes(der)
    return subprocess.run(
        [
            "openssl",
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-binary",
            "-in",
            str(tmp_path / "in.der"),
            "-recip",
            str(cert_path),
            "-inkey",
            str(key_path),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )


CONTENT = random.Random(5).randbytes(70_000)


@pytest.mark.parametrize("which", ["rsa_recipient", "ecc_recipient"])
def test_openssl_decrypts_ours_without_unauth_attrs(
    request: pytest.FixtureRequest, tmp_path: Path, which: str
) -> None:
    """OpenSSL decrypts our KTRI (RSA-OAEP-SHA256) and KARI (brainpoolP256r1, stdDH-sha256kdf,
    aes256-wrap) output when written with unauth_recipient_emails=None."""
    party = request.getfixturevalue(which)
    result = _openssl_decrypt(tmp_path, party, _seal(party, CONTENT, emails=False))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == CONTENT


@pytest.mark.parametrize("which", ["rsa_recipient", "ecc_recipient"])
def test_with_unauth_attrs_openssl_3_0_fails_while_we_succeed(
    request: pytest.FixtureRequest, tmp_path: Path, which: str
) -> None:
    """digest §2.10/§7.10 (KOM-LE-A_2107): OpenSSL 3.0's CMS parser refuses an
    AuthEnvelopedData with unauthAttrs ("Field=unauthAttrs"); our reader decrypts it. If the
    installed OpenSSL has the upstream fix, it must decrypt it correctly instead."""
    party = request.getfixturevalue(which)
    der = _seal(party, CONTENT, emails=True)
    assert _open(der, party.key) == CONTENT
    version = subprocess.run(["openssl", "version"], capture_output=True, check=True).stdout
    result = _openssl_decrypt(tmp_path, party, der)
    if result.returncode == 0:
        assert result.stdout == CONTENT
    else:
        assert version.startswith(b"OpenSSL 3.0."), version
        assert b"unauthAttrs" in result.stderr, result.stderr.decode()


def _openssl_encrypt(tmp_path: Path, party: object, content: bytes, *keyopts: str) -> bytes:
    _, cert_path = party.write_pem(tmp_path)  # type: ignore[attr-defined]
    (tmp_path / "plain.bin").write_bytes(content)
    args = [
        "openssl",
        "cms",
        "-encrypt",
        "-aes-256-gcm",
        "-binary",
        "-outform",
        "DER",
        "-in",
        str(tmp_path / "plain.bin"),
        "-recip",
        str(cert_path),
    ]
    for opt in keyopts:
        args += ["-keyopt", opt]
    result = subprocess.run(args, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


OAEP_OPTS = ("rsa_padding_mode:oaep", "rsa_oaep_md:sha256", "rsa_mgf1_md:sha256")


@pytest.mark.parametrize("size", [0, 1, 17, 70_000])
def test_we_decrypt_openssl_rsa_oaep_output(
    rsa_recipient: object, tmp_path: Path, size: int
) -> None:
    """`openssl cms -encrypt -aes-256-gcm` with RSA-OAEP-SHA256 decrypts with ours."""
    content = CONTENT[:size]
    der = _openssl_encrypt(tmp_path, rsa_recipient, content, *OAEP_OPTS)
    assert _open(der, rsa_recipient.key) == content  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("keyopts", "kdf"),
    [
        ((), "sha1kdf"),
        (("ecdh_kdf_md:sha256",), "sha256kdf"),
        (("ecdh_kdf_md:sha512",), "sha512kdf"),
    ],
)
def test_we_decrypt_openssl_brainpool_output(
    ecc_recipient: object, tmp_path: Path, keyopts: tuple[str, ...], kdf: str
) -> None:
    """`openssl cms -encrypt -aes-256-gcm` to a brainpoolP256r1 certificate (default KDF
    sha1 and the -keyopt ecdh_kdf_md variants) decrypts with ours."""
    der = _openssl_encrypt(tmp_path, ecc_recipient, CONTENT, *keyopts)
    reader = AuthEnvelopedReader()
    reader.feed(der)
    reader.feed_eof()
    assert reader.recipient_infos is not None
    assert reader.recipient_infos[0].kind == "kari"
    assert kdf in reader.recipient_infos[0].key_encryption_algorithm
    assert _open(der, ecc_recipient.key) == CONTENT  # type: ignore[attr-defined]
