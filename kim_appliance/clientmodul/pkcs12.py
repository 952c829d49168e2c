"""The Clientmodul's TLS client identity from the PKCS#12 file its KIM provider issues.

The Account Manager's createCert (digest §1.10, §3.3) answers with a PKCS#12 file holding the
C.CM.TLS-CS key and certificate (CN ``<commonName>#CM``) and the issuing CA, encrypted with the
``certPassword`` the Administrationsmodul chose. :func:`unpack_pkcs12` opens it and hands the key
and certificates out (A_19513, A_18783: a password-protected PKCS#12 is importable) after the
checks a Clientmodul makes before it uses them: a key that belongs to the certificate, the
C.CM.TLS-CS profile (KOM-LE-A_2182-01), and a certificate valid now (A_21381: the validity is
checked when TLS connections are made). :func:`write_identity` writes them as the PEM files
``ssl.SSLContext.load_cert_chain`` reads (the key unencrypted, mode 0600, next to the
appliance's other TLS keys). Parsing is the cryptography library's; this module never logs or
echoes the password, and never accepts a file whose certificate is not a C.CM.TLS-CS.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    pkcs12,
)

from kim_appliance.errors import KimError
from kim_appliance.pki import CertProfile, profile_of

#: a PKCS#12 of one key and a short chain is a few KB; refuse anything absurd before parsing
MAX_PKCS12: Final = 1024 * 1024


class Pkcs12Error(KimError):
    """The PKCS#12 file cannot serve as the Clientmodul's TLS client identity; says why."""


@dataclass(frozen=True)
class ClientIdentity:
    """The unpacked C.CM.TLS-CS: its private key (PKCS#8 PEM), certificate and CA chain."""

    key_pem: bytes
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def chain_pem(self) -> bytes:
        """The certificate, then its CAs, as TLS presents them."""
        return b"".join(c.public_bytes(Encoding.PEM) for c in (self.certificate, *self.chain))


def unpack_pkcs12(
    data: bytes, password: str, *, source: str, now: dt.datetime | None = None
) -> ClientIdentity:
    """A_19513: the key and certificates of a createCert PKCS#12 file (``source`` names it in
    errors). Raises :class:`Pkcs12Error` for a wrong password or a broken file, a file without
    key or certificate, a certificate that is not a C.CM.TLS-CS, or one not valid at ``now``."""
    if len(data) > MAX_PKCS12:
        raise Pkcs12Error(f"{source}: {len(data)} bytes is no PKCS#12 file of a C.CM.TLS-CS")
    try:
        key, certificate, chain = pkcs12.load_key_and_certificates(
            data, password.encode("utf-8") if password else None
        )
    except ValueError:
        # cryptography says "Invalid password or PKCS12 data" for both
        raise Pkcs12Error(
            f"{source}: cannot open the PKCS#12 file: wrong password (certPassword of "
            "createCert) or not a PKCS#12 file"
        ) from None
    if key is None or certificate is None:
        raise Pkcs12Error(f"{source}: the PKCS#12 file holds no private key and certificate")
    if profile_of(certificate) is not CertProfile.C_CM_TLS_CS:
        raise Pkcs12Error(
            f"{source}: the certificate ({certificate.subject.rfc4514_string()}) is not a "
            "C.CM.TLS-CS (KOM-LE-A_2182-01)"
        )
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if certificate.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise Pkcs12Error(f"{source}: the private key does not belong to the certificate")
    moment = now or dt.datetime.now(dt.UTC)
    if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
        raise Pkcs12Error(
            f"{source}: the certificate is valid from {certificate.not_valid_before_utc:%Y-%m-%d}"
            f" to {certificate.not_valid_after_utc:%Y-%m-%d}, not now: fetch a new one with "
            "createCert (A_21381)"
        )
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return ClientIdentity(key_pem, certificate, tuple(chain))


def write_identity(identity: ClientIdentity, directory: Path, name: str) -> tuple[Path, Path]:
    """``directory/name.chain.pem`` and ``directory/name.key.pem`` (0600, written atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    chain, key = directory / f"{name}.chain.pem", directory / f"{name}.key.pem"
    files = ((chain, identity.chain_pem(), 0o644), (key, identity.key_pem, 0o600))
    for path, content, mode in files:
        partial = path.with_suffix(".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.replace(partial, path)
    return chain, key
