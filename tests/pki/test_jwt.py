"""The Account Manager JWT: built through a signing callable, verified against the test PKI
(digest §1.10, §7.2; A_19457-02 / KOM-LE-A_2187)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from kim_appliance.pki import Algorithm, CertProfile, Issued, TestPki
from kim_appliance.pki.jwt import (
    JwtError,
    Signer,
    build_jwt,
    signature_scheme_for,
    verify_jwt,
)

TID = "5-SMC-B-Testkarte-883110000123456"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return TestPki.generate()


def _aut(pki: TestPki, algorithm: Algorithm) -> Issued:
    return pki.issue(CertProfile.C_HCI_AUT, algorithm, common_name="Praxis Weber", telematik_id=TID)


def card_signer(issued: Issued) -> Signer:
    """What the card does for ExternalAuthenticate: PSS-32 / plain r||s over the hash."""
    key = issued.private_key

    def sign(digest: bytes) -> bytes:
        if isinstance(key, rsa.RSAPrivateKey):
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            return key.sign(digest, pss, Prehashed(hashes.SHA256()))
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


def _parts(token: str) -> tuple[dict[str, object], dict[str, object]]:
    def dec(part: str) -> dict[str, object]:
        value: dict[str, object] = json.loads(
            base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        )
        return value

    head, body, _ = token.split(".")
    return dec(head), dec(body)


@pytest.mark.parametrize(
    ("algorithm", "alg", "scheme"),
    [(Algorithm.RSA, "PS256", "RSASSA-PSS"), (Algorithm.ECC, "BP256R1", "ECDSA")],
)
def test_round_trip(pki: TestPki, algorithm: Algorithm, alg: str, scheme: str) -> None:
    """A token signed by the AUT key verifies; alg, x5c, sub, telematikID as chosen (§7.2).
    KOM-LE-A_2188, A_19457-02: the RFC 7519 token whose signature the AUT key of the card
    makes (RSASSA-PSS for RSA) is what the Account Manager's verifier accepts."""
    aut = _aut(pki, algorithm)
    assert signature_scheme_for(aut.certificate) == scheme
    token = build_jwt(
        certificate=aut.certificate,
        sign=card_signer(aut),
        subject="weber@a.kim.telematik-test",
        now=NOW,
    )
    header, claims = _parts(token)
    assert header["alg"] == alg
    assert claims["exp"] == claims["iat"] + 300  # type: ignore[operator]
    verified = verify_jwt(token, trust=pki.trust_store(), now=NOW + dt.timedelta(seconds=10))
    assert verified.telematik_id == TID
    assert verified.subject == "weber@a.kim.telematik-test"
    assert verified.certificate == aut.certificate


def test_expired_token_is_refused(pki: TestPki) -> None:
    aut = _aut(pki, Algorithm.RSA)
    token = build_jwt(certificate=aut.certificate, sign=card_signer(aut), now=NOW)
    with pytest.raises(JwtError, match=r"exp.*expired"):
        verify_jwt(token, trust=pki.trust_store(), now=NOW + dt.timedelta(seconds=300 + 61))
    # inside the leeway it still passes
    verify_jwt(token, trust=pki.trust_store(), now=NOW + dt.timedelta(seconds=300 + 59))


def test_token_from_the_future_and_too_long_lived_are_refused(pki: TestPki) -> None:
    aut = _aut(pki, Algorithm.RSA)
    future = build_jwt(
        certificate=aut.certificate, sign=card_signer(aut), now=NOW + dt.timedelta(minutes=5)
    )
    with pytest.raises(JwtError, match="iat"):
        verify_jwt(future, trust=pki.trust_store(), now=NOW)
    long = build_jwt(
        certificate=aut.certificate, sign=card_signer(aut), now=NOW, lifetime_seconds=3600
    )
    with pytest.raises(JwtError, match="exceeds jwtExpiration"):
        verify_jwt(long, trust=pki.trust_store(), now=NOW)


def test_certificate_of_another_pki_is_refused(pki: TestPki) -> None:
    """Wrong issuer: an AUT certificate that does not chain to the trust anchors."""
    foreign = _aut(TestPki.generate(), Algorithm.RSA)
    token = build_jwt(certificate=foreign.certificate, sign=card_signer(foreign), now=NOW)
    with pytest.raises(JwtError, match="x5c: certificate not trusted"):
        verify_jwt(token, trust=pki.trust_store(), now=NOW)


def test_encryption_certificate_is_refused(pki: TestPki) -> None:
    """Only an AUT (digitalSignature) certificate may sign the token (KOM-LE-A_2188)."""
    enc = pki.issue(CertProfile.C_HCI_ENC, Algorithm.RSA, common_name="Weber", telematik_id=TID)
    token = build_jwt(certificate=enc.certificate, sign=card_signer(enc), now=NOW)
    with pytest.raises(JwtError, match="x5c"):
        verify_jwt(token, trust=pki.trust_store(), now=NOW)


@pytest.mark.parametrize("algorithm", [Algorithm.RSA, Algorithm.ECC])
def test_tampered_payload_or_signature_is_refused(pki: TestPki, algorithm: Algorithm) -> None:
    aut = _aut(pki, algorithm)
    token = build_jwt(certificate=aut.certificate, sign=card_signer(aut), subject="a@b", now=NOW)
    head, body, sig = token.split(".")
    _, claims = _parts(token)
    claims["sub"] = "mallory@b"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(JwtError, match="signature"):
        verify_jwt(f"{head}.{forged_body}.{sig}", trust=pki.trust_store(), now=NOW)
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    with pytest.raises(JwtError, match="signature"):
        verify_jwt(f"{head}.{body}.{flipped}", trust=pki.trust_store(), now=NOW)


def test_wrong_telematik_id_claim_is_refused(pki: TestPki) -> None:
    aut = _aut(pki, Algorithm.RSA)
    token = build_jwt(
        certificate=aut.certificate,
        sign=card_signer(aut),
        now=NOW,
        extra_claims={"telematikID": "1-other"},
    )
    with pytest.raises(JwtError, match="telematikID"):
        verify_jwt(token, trust=pki.trust_store(), now=NOW)


@pytest.mark.parametrize(
    ("token", "field"),
    [
        ("", "3 parts"),
        ("a.b", "3 parts"),
        ("!!.e30.AA", "header: not base64url"),
        ("e30.e30.AA", "alg"),
        ("WzFd.e30.AA", "header: not a JSON object"),
        ("eyJhbGciOiJQUzI1NiJ9.e30.AA", "x5c: missing"),
        ("eyJhbGciOiJQUzI1NiIsIng1YyI6WyIhIl19.e30.AA", r"x5c\[0\]"),
        ("x" * 20000, "longer than"),
    ],
)
def test_malformed_tokens_name_the_part(pki: TestPki, token: str, field: str) -> None:
    with pytest.raises(JwtError, match=field):
        verify_jwt(token, trust=pki.trust_store(), now=NOW)


def _token(header: object, payload: object, signature: bytes = b"\0" * 64) -> str:
    def part(value: object) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(header)}.{part(payload)}.{part(signature)}"


@pytest.mark.parametrize(
    ("token", "field"),
    [
        # issue 11 (found by fuzzing): deep JSON was a RecursionError, 1e999 an OverflowError
        (_token(b"[" * 5000, {}), "header"),
        (_token({"alg": "PS256"}, b'{"exp": 1e999, "iat": NaN}'), "payload"),
        # half-readable certificates were ValueError / InvalidVersion / DuplicateExtension
        (_token({"alg": "PS256", "x5c": ["MAMCAQE="]}, {}), "x5c[0]"),
    ],
)
def test_malformed_tokens_are_jwt_errors(pki: TestPki, token: str, field: str) -> None:
    with pytest.raises(JwtError) as info:
        verify_jwt(token, trust=pki.trust_store(), now=NOW)
    assert info.value.field == field


def test_a_certificate_with_a_broken_extension_is_refused_as_x5c(pki: TestPki) -> None:
    """The leaf's extensions are read before path validation: a DER certificate whose
    extension cryptography cannot parse is JwtError x5c[0], not a ValueError from pki."""
    aut = _aut(pki, Algorithm.RSA)
    token = build_jwt(certificate=aut.certificate, sign=card_signer(aut), now=NOW)
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(header + "=="))
    der = base64.b64decode(decoded["x5c"][0])
    key_usage = bytes.fromhex("0603551d0f")  # id-ce-keyUsage: make its value unparsable
    at = der.index(key_usage) + len(key_usage)
    broken = der[:at] + der[at:].replace(b"\x03\x02", b"\x05\x02", 1)
    decoded["x5c"][0] = base64.b64encode(broken).decode()
    forged = _token(decoded, base64.urlsafe_b64decode(payload + "=="))
    with pytest.raises(JwtError) as info:
        verify_jwt(forged.rsplit(".", 1)[0] + "." + signature, trust=pki.trust_store(), now=NOW)
    assert info.value.field == "x5c[0]"
    assert "extensions cannot be read" in info.value.reason
