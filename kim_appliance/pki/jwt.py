"""The JWT a Clientmodul presents to the Account Manager, signed with the card's AUT key.

A compact JWS (RFC 7515/7519) in ``Authorization: Bearer`` (digest §1.10, A_19457-02 /
KOM-LE-A_2187). The signature is made by whoever holds the card: the caller passes
``sign(sha256_digest) -> signature``, e.g. the Konnektor's ExternalAuthenticate (RSASSA-PSS for
RSA AUT keys, plain ``r||s`` ECDSA for brainpool ones) or a card key directly. Verification
checks the ``x5c`` certificate against the test PKI (purpose AUTHENTICATION), the signature,
and the lifetime. This module never sees a private key.

Choices (the claims are not published, digest §7.2; the coordinator records them):

* header: ``{"alg", "typ": "JWT", "x5c": [AUT certificate (base64 DER), CA certs...]}``;
* ``alg``: ``PS256`` for RSA (RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32, as the card signs);
  ``BP256R1`` for brainpoolP256r1 (gematik's JOSE name for ECDSA on brainpoolP256r1 with
  SHA-256, ``r||s`` 64 bytes, as in gematik's api-vzd and IDP jose4j extensions), ``ES256``
  only for a NIST P-256 key (RFC 7518);
* payload: ``iat``, ``exp`` (``exp - iat`` at most ``jwtExpiration``, 300-21600 s, §3.4),
  ``jti`` (random), ``sub`` (the KIM address the call is about, if known) and
  ``telematikID`` (the Telematik-ID of the AUT certificate's Admission, digest §2.9; the
  verifier requires it to match the certificate).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kim_appliance.errors import KimError
from kim_appliance.pki import PathValidationError, Purpose, TrustStore, admission_of
from kim_appliance.pki.untrusted import UntrustedCertificateError, load_untrusted_certificate
from kim_appliance.protocols.jsonbody import JsonBodyError, load_json_body

#: JWT lifetime announced by ServiceInformation (gematik's example value, digest §3.4)
DEFAULT_JWT_EXPIRATION_SECONDS = 300
#: clock skew tolerated on ``iat`` and ``exp``
DEFAULT_LEEWAY_SECONDS = 60
#: at most this many bytes of token are parsed (a JWT with two certificates is ~4 KiB)
MAX_TOKEN_LENGTH = 16384
#: header and claims are flat objects with one array (x5c); anything deeper is not a KIM token
MAX_JSON_DEPTH = 4

ALG_PS256 = "PS256"
ALG_ES256 = "ES256"
ALG_BP256R1 = "BP256R1"

#: sign(SHA-256 digest of the JWS signing input) -> the JWS signature bytes
Signer = Callable[[bytes], bytes]

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


class JwtError(KimError, ValueError):
    """A token that is malformed, untrusted, wrongly signed or outside its lifetime."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"JWT {field}: {reason}")
        self.field = field
        self.reason = reason


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str, what: str) -> bytes:
    if not text or any(c not in _B64URL_ALPHABET for c in text) or len(text) % 4 == 1:
        raise JwtError(what, "not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JwtError(what, "not base64url") from exc


_B64URL_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def algorithm_for(certificate: x509.Certificate) -> str:
    """The JWS ``alg`` for the key of ``certificate`` (see the module docstring)."""
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return ALG_PS256
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.BrainpoolP256R1):
            return ALG_BP256R1
        if isinstance(key.curve, ec.SECP256R1):
            return ALG_ES256
    raise JwtError("x5c", f"no JWS algorithm for a {type(key).__name__} key")


def signature_scheme_for(certificate: x509.Certificate) -> str:
    """The Konnektor ExternalAuthenticate scheme that produces the right JWS signature:
    ``RSASSA-PSS`` for RSA, ``ECDSA`` (plain ``r||s``) for ECC AUT keys."""
    return "RSASSA-PSS" if algorithm_for(certificate) == ALG_PS256 else "ECDSA"


def telematik_id_of(certificate: x509.Certificate) -> str | None:
    admission = admission_of(certificate)
    return None if admission is None else admission.telematik_id


def _utc_now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def build_jwt(
    *,
    certificate: x509.Certificate,
    sign: Signer,
    subject: str | None = None,
    chain: tuple[x509.Certificate, ...] = (),
    lifetime_seconds: int = DEFAULT_JWT_EXPIRATION_SECONDS,
    now: dt.datetime | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """A compact JWS for the Account Manager, signed through ``sign`` with the key of the AUT
    ``certificate`` (which goes into ``x5c``, followed by ``chain``)."""
    issued = int(_utc_now(now).timestamp())
    header = {
        "alg": algorithm_for(certificate),
        "typ": "JWT",
        "x5c": [
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode("ascii")
            for c in (certificate, *chain)
        ],
    }
    claims: dict[str, Any] = {
        "iat": issued,
        "exp": issued + lifetime_seconds,
        "jti": secrets.token_hex(16),
    }
    if subject is not None:
        claims["sub"] = subject
    telematik_id = telematik_id_of(certificate)
    if telematik_id is not None:
        claims["telematikID"] = telematik_id
    claims.update(extra_claims or {})
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = sign(hashlib.sha256(signing_input.encode("ascii")).digest())
    return signing_input + "." + _b64url(signature)


@dataclass(frozen=True)
class VerifiedJwt:
    """A token whose certificate, signature and lifetime were checked."""

    certificate: x509.Certificate
    header: dict[str, Any]
    claims: dict[str, Any]
    telematik_id: str | None
    warnings: tuple[str, ...] = field(default=())

    @property
    def subject(self) -> str | None:
        sub = self.claims.get("sub")
        return sub if isinstance(sub, str) else None


def _json_object(part: str, what: str) -> dict[str, Any]:
    raw = _unb64url(part, what)
    try:
        # bounded: no recursion on deep nesting, no NaN/Infinity/1e999 (issue 11)
        value = load_json_body(raw, max_bytes=MAX_TOKEN_LENGTH, max_depth=MAX_JSON_DEPTH)
    except JsonBodyError as exc:
        raise JwtError(what, f"not acceptable JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise JwtError(what, "not a JSON object")
    return value


def _certificates(header: Mapping[str, Any]) -> list[x509.Certificate]:
    x5c = header.get("x5c")
    if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
        raise JwtError("x5c", "missing or not a list of base64 certificates")
    certificates = []
    for i, text in enumerate(x5c):
        try:
            der = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise JwtError(f"x5c[{i}]", f"not base64: {exc}") from exc
        try:
            # read completely now, not half-read into path validation (issue 11)
            certificates.append(load_untrusted_certificate(der))
        except UntrustedCertificateError as exc:
            raise JwtError(f"x5c[{i}]", f"not a usable DER certificate: {exc}") from exc
    return certificates


def _check_signature(
    certificate: x509.Certificate, alg: str, signing_input: bytes, signature: bytes
) -> None:
    key = certificate.public_key()
    try:
        if alg == ALG_PS256 and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, _PSS, hashes.SHA256())
            return
        if alg in (ALG_ES256, ALG_BP256R1) and isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != 64:
                raise JwtError("signature", f"{alg} needs 64 bytes r||s, got {len(signature)}")
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
            return
    except InvalidSignature as exc:
        raise JwtError("signature", "does not verify with the x5c certificate") from exc
    raise JwtError("alg", f"{alg!r} does not fit the x5c certificate's key")


def _int_claim(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtError(name, "missing or not a number (NumericDate)")
    return int(value)


def verify_jwt(
    token: str,
    *,
    trust: TrustStore,
    now: dt.datetime | None = None,
    leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
    max_lifetime_seconds: int = DEFAULT_JWT_EXPIRATION_SECONDS,
) -> VerifiedJwt:
    """Check ``token`` completely; raises :class:`JwtError` naming the part that failed.

    The certificate must chain to ``trust`` and be valid for AUTHENTICATION at ``now``; the
    signature must verify; ``iat`` must not lie in the future and ``exp`` not in the past
    (each with ``leeway_seconds``); ``exp - iat`` must not exceed ``max_lifetime_seconds``; a
    ``telematikID`` claim must equal the certificate's Telematik-ID.
    """
    when = _utc_now(now)
    if len(token) > MAX_TOKEN_LENGTH:
        raise JwtError("token", f"longer than {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("token", f"a compact JWS has 3 parts, this one has {len(parts)}")
    header = _json_object(parts[0], "header")
    claims = _json_object(parts[1], "payload")
    signature = _unb64url(parts[2], "signature")
    alg = header.get("alg")
    if alg not in (ALG_PS256, ALG_ES256, ALG_BP256R1):
        raise JwtError("alg", f"{alg!r} is not PS256, ES256 or BP256R1")
    certificates = _certificates(header)
    leaf = certificates[0]
    try:
        path = trust.validate(
            leaf, purpose=Purpose.AUTHENTICATION, at=when, extra_intermediates=certificates[1:]
        )
    except PathValidationError as exc:
        raise JwtError("x5c", f"certificate not trusted: {exc}") from exc
    _check_signature(leaf, alg, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)
    issued, expires = _int_claim(claims, "iat"), _int_claim(claims, "exp")
    current = int(when.timestamp())
    if issued > current + leeway_seconds:
        raise JwtError("iat", f"{issued} lies in the future (now {current})")
    if expires < current - leeway_seconds:
        raise JwtError("exp", f"token expired at {expires} (now {current})")
    if expires - issued > max_lifetime_seconds:
        raise JwtError(
            "exp", f"lifetime {expires - issued} s exceeds jwtExpiration {max_lifetime_seconds} s"
        )
    telematik_id = telematik_id_of(leaf)
    claimed = claims.get("telematikID")
    if claimed is not None and claimed != telematik_id:
        raise JwtError(
            "telematikID", f"{claimed!r} is not the certificate's Telematik-ID {telematik_id!r}"
        )
    return VerifiedJwt(leaf, header, claims, telematik_id, tuple(path.warnings))
