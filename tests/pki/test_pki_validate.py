"""TrustStore.validate: the happy path for every profile and every failure reason."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kim_appliance.pki import (
    Algorithm,
    CertProfile,
    Issued,
    PathValidationError,
    Purpose,
    TestPki,
    TrustStore,
)
from kim_appliance.pki.authority import generate_key

PURPOSE_OF = {
    CertProfile.C_HCI_ENC: Purpose.ENCRYPTION,
    CertProfile.C_HP_ENC: Purpose.ENCRYPTION,
    CertProfile.C_HCI_OSIG: Purpose.SIGNATURE,
    CertProfile.C_HP_QES: Purpose.SIGNATURE,
    CertProfile.C_HCI_AUT: Purpose.AUTHENTICATION,
    CertProfile.C_HP_AUT: Purpose.AUTHENTICATION,
    CertProfile.C_AK_AUT: Purpose.TLS_SERVER,
    CertProfile.C_FD_TLS_S: Purpose.TLS_SERVER,
    CertProfile.C_FD_TLS_C: Purpose.TLS_CLIENT,
    CertProfile.C_ZD_TLS_S: Purpose.TLS_SERVER,
    CertProfile.C_CM_TLS_CS: Purpose.TLS_CLIENT,
}
NOW = dt.datetime.now(dt.UTC)


def _issue(pki: TestPki, profile: CertProfile, algorithm: Algorithm, **kw: object) -> Issued:
    kw.setdefault("common_name", "Praxis Weber TEST-ONLY")
    kw.setdefault("telematik_id", "1-2-ARZT-WEBER01")
    return pki.issue(profile, algorithm, **kw)


def _reason(store: TrustStore, cert: x509.Certificate, **kw: object) -> PathValidationError:
    kw.setdefault("purpose", Purpose.SIGNATURE)
    with pytest.raises(PathValidationError) as info:
        store.validate(cert, **kw)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize("algorithm", list(Algorithm), ids=lambda a: a.value)
@pytest.mark.parametrize("profile", list(CertProfile), ids=lambda p: p.value)
def test_every_profile_validates_for_its_purpose(
    pki: TestPki, profile: CertProfile, algorithm: Algorithm
) -> None:
    leaf = _issue(pki, profile, algorithm).certificate
    path = pki.trust_store().validate(leaf, purpose=PURPOSE_OF[profile], profile=profile)
    ca = pki.ca_for(profile, algorithm)
    assert path == [leaf, ca.certificate, pki.root_for(algorithm).certificate]
    assert path.warnings == []  # the test PKI supplies CRLs for every CA


def test_expired(pki: TestPki) -> None:
    leaf = _issue(
        pki,
        CertProfile.C_HCI_OSIG,
        Algorithm.RSA,
        not_before=NOW - dt.timedelta(days=10),
        not_after=NOW - dt.timedelta(days=1),
    ).certificate
    error = _reason(pki.trust_store(), leaf)
    assert error.reason == "expired"
    assert "C.HCI.OSIG of 'Praxis Weber TEST-ONLY'" in str(error)
    assert error.certificate_subject == leaf.subject.rfc4514_string()


def test_not_yet_valid(pki: TestPki) -> None:
    leaf = _issue(
        pki, CertProfile.C_HCI_OSIG, Algorithm.ECC, not_before=NOW + dt.timedelta(days=2)
    ).certificate
    error = _reason(pki.trust_store(), leaf)
    assert error.reason == "not-yet-valid"
    # ... and it becomes valid once its time has come
    pki.trust_store().validate(leaf, purpose=Purpose.SIGNATURE, at=NOW + dt.timedelta(days=3))


def test_expired_ca_fails_the_path(pki: TestPki) -> None:
    leaf = _issue(pki, CertProfile.C_HCI_OSIG, Algorithm.RSA).certificate
    ca_end = pki.ca_for(CertProfile.C_HCI_OSIG, Algorithm.RSA).certificate.not_valid_after_utc
    leaf_end = leaf.not_valid_after_utc
    assert leaf_end <= ca_end
    error = _reason(pki.trust_store(), leaf, at=ca_end + dt.timedelta(days=1))
    assert error.reason == "expired"


def test_leaf_of_another_root_is_untrusted(pki: TestPki, other_pki: TestPki) -> None:
    """The other PKI's CAs have the very same names; the key identifiers tell them apart."""
    leaf = _issue(other_pki, CertProfile.C_HCI_OSIG, Algorithm.RSA).certificate
    error = _reason(pki.trust_store(), leaf)
    assert error.reason == "untrusted-issuer"
    assert "GEM.SMCB-CA1 TEST-ONLY" in str(error)


def test_self_signed_non_anchor_is_untrusted(pki: TestPki, other_pki: TestPki) -> None:
    error = _reason(
        pki.trust_store(), other_pki.roots[0].certificate, purpose=Purpose.AUTHENTICATION
    )
    assert error.reason == "untrusted-issuer"
    assert "self-signed" in str(error)


def _tamper(cert: x509.Certificate, old: bytes, new: bytes) -> x509.Certificate:
    der = cert.public_bytes(serialization.Encoding.DER)
    assert der.count(old) == 1
    return x509.load_der_x509_certificate(der.replace(old, new))


@pytest.mark.parametrize("algorithm", list(Algorithm), ids=lambda a: a.value)
def test_tampered_certificate_has_a_bad_signature(pki: TestPki, algorithm: Algorithm) -> None:
    leaf = _issue(pki, CertProfile.C_HCI_OSIG, algorithm, common_name="Praxis Weber").certificate
    forged = _tamper(leaf, b"Praxis Weber", b"Praxis Weiss")
    error = _reason(pki.trust_store(), forged)
    assert error.reason == "bad-signature"
    assert "Praxis Weiss" in str(error)


@pytest.mark.parametrize(
    ("profile", "algorithm", "purpose", "lacking"),
    [
        (CertProfile.C_HCI_ENC, Algorithm.RSA, Purpose.SIGNATURE, "nonRepudiation"),
        (CertProfile.C_HCI_OSIG, Algorithm.RSA, Purpose.ENCRYPTION, "keyEncipherment"),
        (CertProfile.C_HCI_OSIG, Algorithm.ECC, Purpose.ENCRYPTION, "keyAgreement"),
        (CertProfile.C_HCI_ENC, Algorithm.ECC, Purpose.TLS_SERVER, "digitalSignature"),
        (CertProfile.C_FD_TLS_S, Algorithm.RSA, Purpose.TLS_CLIENT, "id-kp-clientAuth"),
    ],
)
def test_wrong_key_usage_for_purpose(
    pki: TestPki, profile: CertProfile, algorithm: Algorithm, purpose: Purpose, lacking: str
) -> None:
    """KOM-LE-A_2128: encryption only to ENC certificates; signatures only by signing keys."""
    leaf = _issue(pki, profile, algorithm).certificate
    error = _reason(pki.trust_store(), leaf, purpose=purpose)
    assert error.reason == "wrong-key-usage"
    assert lacking in str(error)


def test_hba_qes_is_not_an_smcb_osig(pki: TestPki) -> None:
    """KOM-LE-A_2129: the KIM signer certificate is C.HCI.OSIG, never an HBA certificate."""
    leaf = _issue(pki, CertProfile.C_HP_QES, Algorithm.RSA).certificate
    error = _reason(
        pki.trust_store(), leaf, purpose=Purpose.SIGNATURE, profile=CertProfile.C_HCI_OSIG
    )
    assert error.reason == "wrong-profile"
    assert "is a C.HP.QES, expected C.HCI.OSIG" in str(error)


@pytest.mark.parametrize("algorithm", list(Algorithm), ids=lambda a: a.value)
def test_revoked_with_date_and_reason_in_the_message(pki: TestPki, algorithm: Algorithm) -> None:
    store = pki.trust_store()
    # valid since the CA's start (yesterday 00:00, at least 24 h ago), revoked an hour ago,
    # whatever the time of day the test runs at
    now = dt.datetime.now(dt.UTC)
    ca_start = pki.roots[0].certificate.not_valid_before_utc
    leaf = _issue(pki, CertProfile.C_HCI_OSIG, algorithm, not_before=ca_start).certificate
    store.validate(leaf, purpose=Purpose.SIGNATURE)
    when = (now - dt.timedelta(hours=1)).replace(microsecond=0)
    pki.revoke(leaf, reason=x509.ReasonFlags.key_compromise, when=when)
    error = _reason(store, leaf)  # the store sees the revocation without being rebuilt
    assert error.reason == "revoked"
    assert str(error) == (
        f"C.HCI.OSIG of 'Praxis Weber TEST-ONLY' (serial 0x{leaf.serial_number:x}) "
        f"was revoked on {when.date().isoformat()} (keyCompromise)"
    )
    # a signature made before the revocation still validates at its signing time
    earlier = store.validate(leaf, purpose=Purpose.SIGNATURE, at=when - dt.timedelta(minutes=1))
    assert any("revoked" in w for w in earlier.warnings)


def test_revoked_intermediate_fails_every_leaf_below_it(pki: TestPki) -> None:
    own = TestPki.generate(valid_years=1)
    leaf = _issue(own, CertProfile.C_HCI_ENC, Algorithm.ECC).certificate
    ca = own.ca_for(CertProfile.C_HCI_ENC, Algorithm.ECC)
    own.roots[1].revoke(ca.certificate, reason=x509.ReasonFlags.ca_compromise)
    error = _reason(own.trust_store(), leaf, purpose=Purpose.ENCRYPTION)
    assert error.reason == "revoked"
    assert "CA certificate 'GEM.SMCB-CA2 TEST-ONLY'" in str(error)
    assert "cACompromise" in str(error)


def _static_store(pki: TestPki, crls: list[x509.CertificateRevocationList]) -> TrustStore:
    return TrustStore(
        anchors=[r.certificate for r in pki.roots],
        intermediates=[c.certificate for c in pki.intermediates],
        crls=crls,
    )


def test_crl_signed_by_a_wrong_key_is_ignored(pki: TestPki, other_pki: TestPki) -> None:
    leaf = _issue(pki, CertProfile.C_HCI_OSIG, Algorithm.ECC).certificate
    ca = pki.ca_for(CertProfile.C_HCI_OSIG, Algorithm.ECC)
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(NOW - dt.timedelta(hours=1))
        .next_update(NOW + dt.timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(leaf.serial_number)
            .revocation_date(NOW - dt.timedelta(hours=1))
            .build()
        )
        .sign(generate_key(Algorithm.ECC), hashes.SHA256())
    )
    # and the namesake CA of the other PKI revoking a certificate with the same serial
    namesake = other_pki.ca_for(CertProfile.C_HCI_OSIG, Algorithm.ECC)
    twin = namesake.issue(CertProfile.C_HCI_OSIG, Algorithm.ECC, common_name="Zwilling")
    namesake_crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(namesake.certificate.subject)
        .last_update(NOW - dt.timedelta(hours=1))
        .next_update(NOW + dt.timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(leaf.serial_number)
            .revocation_date(NOW - dt.timedelta(hours=1))
            .build()
        )
        .sign(namesake.issued.private_key, hashes.SHA256())
    )
    assert twin.certificate.issuer == leaf.issuer
    store = _static_store(pki, [forged, namesake_crl, *pki.current_crls()])
    path = store.validate(leaf, purpose=Purpose.SIGNATURE)
    ignored = [w for w in path.warnings if "does not verify" in w]
    assert len(ignored) == 2


def test_missing_crl_is_not_revoked_but_warned(pki: TestPki) -> None:
    leaf = _issue(pki, CertProfile.C_HCI_OSIG, Algorithm.RSA).certificate
    path = _static_store(pki, []).validate(leaf, purpose=Purpose.SIGNATURE)
    assert len(path) == 3
    assert len(path.warnings) == 2
    assert all("no CRL" in w for w in path.warnings)


def test_end_entity_acting_as_ca_breaks_the_ca_constraint(pki: TestPki) -> None:
    signer = _issue(pki, CertProfile.C_HCI_OSIG, Algorithm.ECC)
    key = ec.generate_private_key(ec.BrainpoolP256R1())
    child = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=Untergeschoben,C=DE"))
        .issuer_name(signer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(
            x509.KeyUsage(False, True, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.private_key.public_key()),
            critical=False,
        )
        .sign(signer.private_key, hashes.SHA256())
    )
    error = _reason(pki.trust_store(), child, extra_intermediates=[signer.certificate])
    assert error.reason == "ca-constraint"
    assert "is not a CA" in str(error)


def test_unknown_critical_extension_is_malformed(pki: TestPki) -> None:
    ca = pki.ca_for(CertProfile.C_HCI_OSIG, Algorithm.RSA)
    key = generate_key(Algorithm.ECC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=Seltsam,C=DE"))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(8)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5"), b"\x05\x00"),
            critical=True,
        )
        .sign(ca.issued.private_key, hashes.SHA256())
    )
    error = _reason(pki.trust_store(), cert)
    assert error.reason == "malformed"
    assert "1.2.3.4.5" in str(error)


def test_from_pem_files_sorts_anchors_intermediates_and_crls(pki: TestPki, tmp_path: Path) -> None:
    leaf = _issue(pki, CertProfile.C_HCI_ENC, Algorithm.RSA).certificate
    pki.revoke(leaf, reason=x509.ReasonFlags.superseded)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(
        pki.tls_ca_pem()
        + b"".join(
            ca.crl().public_bytes(serialization.Encoding.PEM)
            for ca in [*pki.roots, *pki.intermediates]
        )
    )
    smcb = tmp_path / "smcb.der"
    smcb.write_bytes(
        pki.ca_for(CertProfile.C_HCI_ENC, Algorithm.RSA).certificate.public_bytes(
            serialization.Encoding.DER
        )
    )
    store = TrustStore.from_pem_files([bundle, smcb])
    assert len(store.anchors) == 2
    assert len(store.intermediates) == 3
    assert len(store.crls) == 8
    error = _reason(store, leaf, purpose=Purpose.ENCRYPTION)
    assert error.reason == "revoked"
    assert "superseded" in str(error)


def test_from_pem_files_names_a_bad_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a certificate")
    with pytest.raises(ValueError, match=r"junk\.pem"):
        TrustStore.from_pem_files([junk])


def test_gematik_sample_certs_validate_against_their_own_ca(gematik_certs: Path) -> None:
    """gematik's C.HCI.ENC test certificates chain to GEM.KOMP-CA24 and GEM.RCA2 (all expired
    by now, so validated at a date inside their validity)."""
    for who, name in (("A", "hci-enc-2-kim-bsp"), ("B", "hci-enc-3-kim-bsp")):
        folder = gematik_certs / who
        store = TrustStore.from_pem_files(
            [folder / "GEM.RCA2-TEST-ONLY.pem", folder / "GEM.KOMP-CA24-TEST-ONLY.pem"]
        )
        leaf = x509.load_der_x509_certificate((folder / f"{name}.crt").read_bytes())
        path = store.validate(
            leaf,
            purpose=Purpose.ENCRYPTION,
            profile=CertProfile.C_HCI_ENC,
            at=dt.datetime(2022, 6, 1, tzinfo=dt.UTC),
        )
        assert [c.serial_number for c in path[1:]] == [9, 1]
        assert any("no CRL" in w for w in path.warnings)
        assert _reason(store, leaf, purpose=Purpose.ENCRYPTION).reason == "expired"
