"""TrustStore's validation caches never hide a change: a revocation, a new CRL, another
validation time, a changed trust store or a tampered certificate after a cached good answer."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from kim_appliance.pki import (
    Algorithm,
    CertProfile,
    PathValidationError,
    Purpose,
    TestPki,
    TrustStore,
)
from kim_appliance.pki.authority import generate_key


def _leaf(pki: TestPki, algorithm: Algorithm = Algorithm.ECC) -> x509.Certificate:
    start = pki.roots[0].certificate.not_valid_before_utc
    return pki.issue(
        CertProfile.C_HCI_OSIG,
        algorithm,
        common_name="Praxis Cache TEST-ONLY",
        telematik_id="1-2-ARZT-CACHE01",
        not_before=start,
    ).certificate


def _fresh_copy(cert: x509.Certificate) -> x509.Certificate:
    """The same certificate as a new object, as a VZD lookup or a SignedData hands it over."""
    return x509.load_der_x509_certificate(cert.public_bytes(serialization.Encoding.DER))


def _static_store(pki: TestPki, crls: list[x509.CertificateRevocationList]) -> TrustStore:
    return TrustStore(
        anchors=[r.certificate for r in pki.roots],
        intermediates=[c.certificate for c in pki.intermediates],
        crls=crls,
    )


@pytest.mark.parametrize("algorithm", list(Algorithm), ids=lambda a: a.value)
def test_revocation_is_seen_after_cached_good_validations(algorithm: Algorithm) -> None:
    """KOM-LE-A_2050 (digest §1.6): a signer certificate revoked after it validated (twice,
    so every cache holds the good answer) fails at the next validation with reason
    'revoked', for a new object of the same certificate too; other certificates of the same
    CA stay valid."""
    pki = TestPki.generate(valid_years=1)
    store = pki.trust_store()
    leaf, other = _leaf(pki, algorithm), _leaf(pki, algorithm)
    for _ in range(2):
        assert store.validate(leaf, purpose=Purpose.SIGNATURE).warnings == []
        store.validate(other, purpose=Purpose.SIGNATURE)
    pki.revoke(leaf, reason=x509.ReasonFlags.key_compromise)
    for cert in (leaf, _fresh_copy(leaf)):
        with pytest.raises(PathValidationError) as info:
            store.validate(cert, purpose=Purpose.SIGNATURE)
        assert info.value.reason == "revoked"
        assert "keyCompromise" in str(info.value)
    assert len(store.validate(other, purpose=Purpose.SIGNATURE)) == 3


def test_a_replaced_fixed_crl_is_used_at_once() -> None:
    """A store with fixed CRLs: replacing the CA's CRL by a newer one that lists the leaf
    makes it 'revoked'; replacing it by one with a bad signature makes the CRL ignored with
    a warning, and the verdict of the good CRL is not kept."""
    pki = TestPki.generate(valid_years=1)
    leaf = _leaf(pki)
    ca = pki.ca_for(CertProfile.C_HCI_OSIG, Algorithm.ECC)
    store = _static_store(pki, pki.current_crls())
    assert store.validate(leaf, purpose=Purpose.SIGNATURE).warnings == []

    ca.revoke(leaf, reason=x509.ReasonFlags.superseded)
    store.crls = pki.current_crls()
    with pytest.raises(PathValidationError, match="superseded") as info:
        store.validate(leaf, purpose=Purpose.SIGNATURE)
    assert info.value.reason == "revoked"

    now = dt.datetime.now(dt.UTC)
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - dt.timedelta(hours=1))
        .next_update(now + dt.timedelta(days=1))
        .sign(generate_key(Algorithm.ECC), hashes.SHA256())
    )
    store.crls = [c for c in pki.current_crls() if c.issuer != ca.certificate.subject]
    store.crls.append(forged)
    warnings = store.validate(leaf, purpose=Purpose.SIGNATURE).warnings
    assert any("does not verify" in w for w in warnings), warnings
    assert any("no CRL of 'CN=GEM.SMCB-CA" in w for w in warnings), warnings


def test_validity_is_checked_at_every_validation_time() -> None:
    """A cached good path is still checked against the time asked: after the leaf's notAfter
    it is 'expired', before its notBefore 'not-yet-valid'."""
    pki = TestPki.generate(valid_years=1)
    leaf = _leaf(pki)
    store = pki.trust_store()
    store.validate(leaf, purpose=Purpose.SIGNATURE)
    late = leaf.not_valid_after_utc + dt.timedelta(seconds=1)
    with pytest.raises(PathValidationError) as info:
        store.validate(leaf, purpose=Purpose.SIGNATURE, at=late)
    assert info.value.reason == "expired"
    early = leaf.not_valid_before_utc - dt.timedelta(seconds=1)
    with pytest.raises(PathValidationError) as info:
        store.validate(leaf, purpose=Purpose.SIGNATURE, at=early)
    assert info.value.reason == "not-yet-valid"


def test_purpose_and_profile_are_checked_per_request() -> None:
    """KOM-LE-A_2128 (digest §2.9): a certificate that passed as a signature certificate is
    still refused for encryption and as another profile."""
    pki = TestPki.generate(valid_years=1)
    leaf = _leaf(pki, Algorithm.RSA)
    store = pki.trust_store()
    store.validate(leaf, purpose=Purpose.SIGNATURE, profile=CertProfile.C_HCI_OSIG)
    with pytest.raises(PathValidationError) as info:
        store.validate(leaf, purpose=Purpose.ENCRYPTION)
    assert info.value.reason == "wrong-key-usage"
    with pytest.raises(PathValidationError) as info:
        store.validate(leaf, purpose=Purpose.SIGNATURE, profile=CertProfile.C_HP_QES)
    assert info.value.reason == "wrong-profile"


def test_removing_an_anchor_drops_the_cached_path() -> None:
    """A path remembered for a leaf is not used once its root is no longer an anchor."""
    pki = TestPki.generate(valid_years=1)
    leaf = _leaf(pki)
    store = pki.trust_store()
    store.validate(leaf, purpose=Purpose.SIGNATURE)
    root = pki.root_for(Algorithm.ECC).certificate
    store.anchors = [a for a in store.anchors if a != root]
    with pytest.raises(PathValidationError) as info:
        store.validate(leaf, purpose=Purpose.SIGNATURE)
    assert info.value.reason == "untrusted-issuer"


def test_tampered_copy_of_a_cached_certificate_has_a_bad_signature() -> None:
    """The signature verdict is remembered per exact certificate: a copy with one byte of
    the signature changed is a different key and fails with 'bad-signature'."""
    pki = TestPki.generate(valid_years=1)
    leaf = _leaf(pki, Algorithm.RSA)
    store = pki.trust_store()
    store.validate(leaf, purpose=Purpose.SIGNATURE)
    der = bytearray(leaf.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the RSA signature value at the end of the DER
    tampered = x509.load_der_x509_certificate(bytes(der))
    with pytest.raises(PathValidationError) as info:
        store.validate(tampered, purpose=Purpose.SIGNATURE)
    assert info.value.reason == "bad-signature"


def test_current_crl_is_one_object_until_a_revocation() -> None:
    """The CA re-signs its CRL only after a revocation (what the caches key on): the same
    object twice, then a new one with a higher crlNumber that lists the certificate."""
    pki = TestPki.generate(valid_years=1)
    ca = pki.ca_for(CertProfile.C_HCI_OSIG, Algorithm.ECC)
    first = ca.current_crl()
    assert ca.current_crl() is first
    leaf = _leaf(pki)
    ca.revoke(leaf)
    second = ca.current_crl()
    assert second is not first
    assert second.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
    number = second.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert ca.current_crl() is second
