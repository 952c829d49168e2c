"""Tests of undoing CRLF canonicalisation of a signed entity (kim_appliance.cms.repair, §2.10).

The oracle is gematik's own sample pair (.03 damaged, .02 clean) and an independent SignedData
verifier written here from asn1crypto and cryptography primitives only.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import pytest
from asn1crypto import algos, cms, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kim_appliance.cms.repair import repair_signed_data, undo_crlf_canonicalisation


def canonicalise(data: bytes) -> bytes:
    """The damage: every lone CR or lone LF becomes CRLF, genuine CRLFs stay."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


# --- an independent SignedData verifier (asn1crypto + cryptography only) ---------------------


class _EssCertIdV2(core.Sequence):
    _fields = [  # noqa: RUF012 (asn1crypto's declaration style)
        ("hash_algorithm", algos.DigestAlgorithm, {"default": {"algorithm": "sha256"}}),
        ("cert_hash", core.OctetString),
        ("issuer_serial", core.Any, {"optional": True}),
    ]


class _EssCertIdsV2(core.SequenceOf):
    _child_spec = _EssCertIdV2


class _SigningCertificateV2(core.Sequence):
    _fields = [  # noqa: RUF012
        ("certs", _EssCertIdsV2),
        ("policies", core.Any, {"optional": True}),
    ]


def verify_signed_data(der: bytes) -> bool:
    """RFC 5652 §5.4/§5.6 with RSASSA-PSS, plus the RFC 5035 signingCertificateV2 cert hash."""
    try:
        info = cms.ContentInfo.load(der, strict=True)
        signed = info["content"]
        content = signed["encap_content_info"]["content"].native
        signer = signed["signer_infos"][0]
        sid = signer["sid"].chosen
        certificate = next(
            c.chosen
            for c in signed["certificates"]
            if c.chosen.issuer == sid["issuer"]
            and c.chosen.serial_number == sid["serial_number"].native
        )
        attributes = {a["type"].dotted: a["values"][0] for a in signer["signed_attrs"]}
        if attributes["1.2.840.113549.1.9.4"].native != hashlib.sha256(content).digest():
            return False
        ess = _SigningCertificateV2.load(attributes["1.2.840.113549.1.9.16.2.47"].dump())
        if ess["certs"][0]["cert_hash"].native != hashlib.sha256(certificate.dump()).digest():
            return False
        signed_attrs = b"\x31" + signer["signed_attrs"].dump()[1:]
        public_key = x509.load_der_x509_certificate(certificate.dump()).public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)
        # Verify with what the SignerInfo declares (an altered algorithm OID must not pass).
        algorithm = signer["signature_algorithm"]
        digest = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[
            algorithm.hash_algo
        ]
        scheme: padding.AsymmetricPadding
        if algorithm.signature_algo == "rsassa_pss":
            salt = algorithm["parameters"]["salt_length"].native
            scheme = padding.PSS(padding.MGF1(digest), salt)
        elif algorithm.signature_algo == "rsassa_pkcs1v15":
            scheme = padding.PKCS1v15()
        else:
            return False
        public_key.verify(signer["signature"].native, signed_attrs, scheme, digest)
        return True
    except (ValueError, TypeError, KeyError, StopIteration, InvalidSignature):
        return False


@pytest.fixture(scope="module")
def sample_pair(gematik_sample: Path) -> tuple[bytes, bytes]:
    """(damaged body of .03 after its MIME header block, clean DER of .02)."""
    wrapped = (gematik_sample / "inputEmail.txt.03.signedwrap").read_bytes()
    body = wrapped[wrapped.index(b"\r\n\r\n") + 4 :]
    clean = (gematik_sample / "inputEmail.txt.02.signedcms").read_bytes()
    return body, clean


def test_sample_is_what_the_digest_says(sample_pair: tuple[bytes, bytes]) -> None:
    """Digest §2.10: .03's body is .02 canonicalised (3138 -> 3180 bytes)."""
    body, clean = sample_pair
    assert (len(clean), len(body)) == (3138, 3180)
    assert canonicalise(clean) == body


def test_sample_repaired_with_exact_verifier(sample_pair: tuple[bytes, bytes]) -> None:
    """The clean SignedData is among the candidates for gematik's damaged sample (§2.10)."""
    body, clean = sample_pair
    assert repair_signed_data(body, verify=lambda c: c == clean) == clean


def test_sample_repaired_with_signature_verifier(sample_pair: tuple[bytes, bytes]) -> None:
    """A real verifier (messageDigest, signingCertificateV2, RSASSA-PSS) selects exactly .02."""
    body, clean = sample_pair
    assert verify_signed_data(clean)
    assert not verify_signed_data(body)
    assert repair_signed_data(body, verify=verify_signed_data) == clean


def test_sample_candidates_are_preimages(sample_pair: tuple[bytes, bytes]) -> None:
    """Every candidate parses and canonicalises back to the damaged input; none repeats."""
    body, _ = sample_pair
    candidates = undo_crlf_canonicalisation(body, max_candidates=64)
    assert len(candidates) == 64
    assert len(set(candidates)) == 64
    for candidate in candidates:
        assert canonicalise(candidate) == body
        cms.ContentInfo.load(candidate)


def test_sample_verifier_rejects_other_candidates(sample_pair: tuple[bytes, bytes]) -> None:
    """The repair really is ambiguous, so the caller's verifier is what picks the right one."""
    body, clean = sample_pair
    candidates = undo_crlf_canonicalisation(body, max_candidates=64)
    assert clean in candidates
    assert [c for c in candidates if verify_signed_data(c)] == [clean]


def test_undamaged_input_returns_itself(sample_pair: tuple[bytes, bytes]) -> None:
    _, clean = sample_pair
    assert undo_crlf_canonicalisation(clean) == [clean]
    assert repair_signed_data(clean, verify=verify_signed_data) == clean


def test_large_undamaged_input_is_fast() -> None:
    """Fast path: an 8 MB DER element (with CR/LF bytes inside) comes back as is, quickly."""
    payload = bytes(range(256)) * (4 * 4096)
    der = core.Sequence(contents=core.OctetString(payload).dump() * 2).dump()
    assert len(der) > 8_000_000
    started = time.perf_counter()
    assert undo_crlf_canonicalisation(der) == [der]
    assert time.perf_counter() - started < 0.5


def test_large_damaged_input_stays_bounded() -> None:
    """800 lone CR/LF in one binary element: 2**800 readings. The answer is a bounded list of
    true preimages, found fast, and a verifier that wants the original gets None in time."""
    payload = bytes(range(256)) * 400
    der = core.OctetString(payload).dump()
    damaged = canonicalise(der)
    started = time.perf_counter()
    candidates = undo_crlf_canonicalisation(damaged)
    assert 0 < len(candidates) <= 64
    assert all(canonicalise(c) == damaged for c in candidates)
    assert repair_signed_data(damaged, verify=lambda c: c == der) is None
    assert time.perf_counter() - started < 5


def test_damaged_length_octet_is_repaired() -> None:
    """A length octet 0x0D (13) became 0D 0A: the structure says which reading is right."""
    der = core.Sequence(
        contents=core.OctetString(b"A" * 13).dump() + core.Integer(0x0A0B).dump()
    ).dump()
    assert b"\x04\x0d" in der
    damaged = canonicalise(der)
    assert damaged != der
    assert der in undo_crlf_canonicalisation(damaged)


def test_damaged_tag_octet_is_repaired() -> None:
    """An ENUMERATED tag (0x0A) became 0D 0A."""
    der = bytes.fromhex("3006") + bytes.fromhex("0a0105") + bytes.fromhex("020101")
    damaged = canonicalise(der)
    assert damaged == bytes.fromhex("3006") + bytes.fromhex("0d0a0105020101")
    assert der in undo_crlf_canonicalisation(damaged)


def test_known_oid_is_preferred() -> None:
    """1.2.840.113549.1.7.2 (signedData) with its 0x0D damaged: the known OID comes first."""
    der = core.Sequence(
        contents=core.ObjectIdentifier("1.2.840.113549.1.7.2").dump() + core.Null().dump()
    ).dump()
    candidates = undo_crlf_canonicalisation(canonicalise(der))
    assert candidates[0] == der


def test_genuine_crlf_in_text_is_kept_first() -> None:
    """In mail text a CRLF stays a CRLF and a lone LF beats a lone CR: the original, with its
    one lone LF, is among the first readings, and those collapse to LF only."""
    text = b"Subject: x\r\n\r\nHallo\nWelt\r\n"
    der = core.Sequence(contents=core.OctetString(text).dump()).dump()
    candidates = undo_crlf_canonicalisation(canonicalise(der))
    assert der in candidates[:4]
    assert all(b"\r" not in c.replace(b"\r\n", b"") for c in candidates[:4])
    assert any(b"\r" in c.replace(b"\r\n", b"") for c in candidates[4:])


def test_repair_counts_verifier_value_error_as_no() -> None:
    der = core.Sequence(contents=core.OctetString(b"\r\x01\n").dump()).dump()
    damaged = canonicalise(der)

    def picky(candidate: bytes) -> bool:
        if candidate != der:
            raise ValueError("not this one")
        return True

    assert repair_signed_data(damaged, verify=picky) == der
    assert repair_signed_data(damaged, verify=lambda c: False) is None


# --- properties ------------------------------------------------------------------------------

_BYTES = st.lists(st.one_of(st.sampled_from([0x0D, 0x0A]), st.integers(0, 255)), max_size=40).map(
    bytes
)
_OID = st.one_of(
    st.sampled_from(["1.2.840.113549.1.7.2", "2.5.4.10", "1.2.840.113549.1.1.10", "2.5.29.14"]),
    st.lists(st.integers(0, 2**20), min_size=1, max_size=5).map(
        lambda arcs: "1.2." + ".".join(map(str, arcs))
    ),
)
_LEAF = st.one_of(
    st.integers(-(2**64), 2**64).map(lambda i: core.Integer(i).dump()),
    _BYTES.map(lambda b: core.OctetString(b).dump()),
    _OID.map(lambda o: core.ObjectIdentifier(o).dump()),
    st.just(core.Null().dump()),
)


def _sequence(children: list[bytes]) -> bytes:
    return core.Sequence(contents=b"".join(children)).dump()


def _wrapped(children: list[bytes]) -> bytes:
    """DER inside an OCTET STRING (like extnValue) or inside an explicit [0]."""
    inner = _sequence(children)
    if len(inner) % 2:
        return core.OctetString(inner).dump()
    return b"\xa0" + core.Sequence(contents=inner).dump()[1:]


_DER = st.recursive(
    _LEAF,
    lambda inner: st.lists(inner, min_size=1, max_size=4).flatmap(
        lambda kids: st.sampled_from([_sequence(kids), _wrapped(kids)])
    ),
    max_leaves=12,
).map(lambda d: _sequence([d]))


def _one_ber_element(data: bytes) -> bool:
    """Independent check: ``data`` is one TLV whose definite lengths all agree."""

    def element(pos: int) -> int | None:
        if pos + 2 > len(data):
            return None
        constructed = data[pos] & 0x20
        if data[pos] & 0x1F == 0x1F:  # high tag number (X.690 8.1.2.4): >= 31, no leading 0x80
            pos += 1
            if data[pos] == 0x80 or data[pos] < 0x1F:
                return None
            while pos < len(data) and data[pos] & 0x80:
                pos += 1  # ends at the tag's last octet, as pos does for a one-octet tag
            if pos + 2 > len(data):
                return None
        first, pos = data[pos + 1], pos + 2
        if first == 0x80:
            while constructed and data[pos : pos + 2] != b"\x00\x00":
                nxt = element(pos)
                if nxt is None:
                    return None
                pos = nxt
            return pos + 2 if constructed else None
        n = first & 0x7F if first & 0x80 else 0
        length = int.from_bytes(data[pos : pos + n], "big") if n else first
        pos += n
        end = pos + length
        if end > len(data):
            return None
        while constructed and pos < end:
            nxt = element(pos)
            if nxt is None or nxt > end:
                return None
            pos = nxt
        return end

    return element(0) == len(data)


def _ambiguous_positions(der: bytes) -> int:
    return len(re.findall(rb"\r\n|\r|\n", der))


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(_DER)
def test_random_der_is_recovered(der: bytes) -> None:
    """Canonicalised random DER: the original is among the candidates when few CR/LF exist."""
    if _ambiguous_positions(der) > 4:
        return
    damaged = canonicalise(der)
    candidates = undo_crlf_canonicalisation(damaged, max_candidates=4096)
    assert der in candidates
    if damaged == der:
        assert candidates == [der]
    assert all(canonicalise(c) == damaged for c in candidates)
    assert repair_signed_data(damaged, verify=lambda c: c == der) == der


@settings(max_examples=300, deadline=2000)
@given(
    st.lists(
        st.one_of(st.sampled_from([0x0D, 0x0A, 0x30, 0x04, 0x02]), st.integers(0, 255)),
        max_size=300,
    ).map(bytes)
)
def test_garbage_never_raises(garbage: bytes) -> None:
    """Random bytes give a list (usually empty) of well-formed preimages, never an exception."""
    for data in (garbage, canonicalise(garbage)):
        candidates = undo_crlf_canonicalisation(data, max_candidates=16)
        assert len(candidates) <= 16
        for candidate in candidates:
            assert _one_ber_element(candidate)
            if canonicalise(data) == data and candidate != data:
                assert canonicalise(candidate) == data
        assert repair_signed_data(data, verify=lambda c: False, max_candidates=16) is None


def test_structural_budget_exhausted_gives_nothing(
    sample_pair: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the work cap the answer is [] / None, not a partial guess or a hang."""
    from kim_appliance.cms import repair

    body, clean = sample_pair
    monkeypatch.setattr(repair, "MAX_STEPS", 100)
    assert undo_crlf_canonicalisation(body) == []
    assert repair_signed_data(body, verify=lambda c: c == clean) is None
