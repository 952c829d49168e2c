"""Certificates of every profile in both algorithms look like gematik's (digest §2.9)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from kim_appliance.pki import (
    Algorithm,
    CaKind,
    CertProfile,
    Issued,
    TestPki,
    admission_of,
    oids,
    profile_of,
)

KU_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)

# What gematik sets, written out once more by hand (not derived from PROFILE_SPECS).
EXPECTED_KU: dict[tuple[CertProfile, Algorithm], set[str]] = {}
for _alg in Algorithm:
    _enc = {"key_encipherment", "data_encipherment"} if _alg is Algorithm.RSA else {"key_agreement"}
    _aut = (
        {"digital_signature", "key_encipherment"}
        if _alg is Algorithm.RSA
        else {"digital_signature"}
    )
    EXPECTED_KU |= {
        (CertProfile.C_HCI_ENC, _alg): _enc,
        (CertProfile.C_HP_ENC, _alg): _enc,
        (CertProfile.C_HCI_OSIG, _alg): {"content_commitment"},
        (CertProfile.C_HP_QES, _alg): {"content_commitment"},
        (CertProfile.C_HCI_AUT, _alg): _aut,
        (CertProfile.C_HP_AUT, _alg): _aut,
        (CertProfile.C_AK_AUT, _alg): _aut,
        (CertProfile.C_FD_TLS_S, _alg): {"digital_signature"},
        (CertProfile.C_FD_TLS_C, _alg): {"digital_signature"},
        (CertProfile.C_ZD_TLS_S, _alg): {"digital_signature"},
        (CertProfile.C_CM_TLS_CS, _alg): {"digital_signature"},
    }

EXPECTED_TYPE_OID = {
    CertProfile.C_HCI_ENC: "1.2.276.0.76.4.76",
    CertProfile.C_HCI_AUT: "1.2.276.0.76.4.77",
    CertProfile.C_HCI_OSIG: "1.2.276.0.76.4.78",
    CertProfile.C_HP_ENC: "1.2.276.0.76.4.74",
    CertProfile.C_HP_AUT: "1.2.276.0.76.4.75",
    CertProfile.C_HP_QES: "1.2.276.0.76.4.72",
    CertProfile.C_FD_TLS_S: "1.2.276.0.76.4.169",
    CertProfile.C_FD_TLS_C: "1.2.276.0.76.4.168",
    CertProfile.C_CM_TLS_CS: "1.2.276.0.76.4.175",
    CertProfile.C_ZD_TLS_S: "1.2.276.0.76.4.157",
    CertProfile.C_AK_AUT: "1.2.276.0.76.4.79",
}

SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
EXPECTED_EKU = {
    CertProfile.C_FD_TLS_S: [SERVER],
    CertProfile.C_FD_TLS_C: [CLIENT],
    CertProfile.C_ZD_TLS_S: [SERVER],
    CertProfile.C_CM_TLS_CS: [SERVER, CLIENT],
    CertProfile.C_AK_AUT: [SERVER, CLIENT],
}

EXPECTED_ROLE = {
    CertProfile.C_FD_TLS_S: "1.2.276.0.76.4.172",  # oid_komle
    CertProfile.C_FD_TLS_C: "1.2.276.0.76.4.172",
    CertProfile.C_CM_TLS_CS: "1.2.276.0.76.4.174",  # oid_cmfd
    CertProfile.C_ZD_TLS_S: "1.2.276.0.76.4.171",  # oid_vzd_ti
    CertProfile.C_AK_AUT: "1.2.276.0.76.4.103",  # oid_ak
}

ALL = [(p, a) for p in CertProfile for a in Algorithm]
TELEMATIK_ID = "1-2-ARZT-WEBER01"


@pytest.fixture(scope="module")
def issued(pki: TestPki) -> dict[tuple[CertProfile, Algorithm], Issued]:
    return {
        (p, a): pki.issue(
            p,
            a,
            common_name=f"Praxis Weber {p.value} TEST-ONLY",
            telematik_id=TELEMATIK_ID,
            dns_names=["localhost"] if not p.spec.is_card else (),
            ip_addresses=["127.0.0.1"] if not p.spec.is_card else (),
        )
        for p, a in ALL
    }


def _id(value: object) -> str:
    return value.value if isinstance(value, CertProfile | Algorithm) else str(value)


@pytest.mark.parametrize(("profile", "algorithm"), ALL, ids=_id)
def test_key_usage_is_critical_and_as_gematik_sets_it(
    issued: dict[tuple[CertProfile, Algorithm], Issued], profile: CertProfile, algorithm: Algorithm
) -> None:
    cert = issued[profile, algorithm].certificate
    ext = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ext.critical
    flags = {flag for flag in KU_FLAGS if getattr(ext.value, flag)}
    assert flags == EXPECTED_KU[profile, algorithm]


@pytest.mark.parametrize(("profile", "algorithm"), ALL, ids=_id)
def test_policies_name_the_type_oid_and_the_gematik_policy(
    issued: dict[tuple[CertProfile, Algorithm], Issued], profile: CertProfile, algorithm: Algorithm
) -> None:
    cert = issued[profile, algorithm].certificate
    policies = [
        p.policy_identifier.dotted_string
        for p in cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    ]
    policy = "1.2.276.0.76.4.145" if profile.value.startswith("C.HP.") else "1.2.276.0.76.4.163"
    assert policies == [policy, EXPECTED_TYPE_OID[profile]]
    assert profile_of(cert) is profile


@pytest.mark.parametrize(("profile", "algorithm"), ALL, ids=_id)
def test_admission_round_trip_carries_the_telematik_id(
    issued: dict[tuple[CertProfile, Algorithm], Issued], profile: CertProfile, algorithm: Algorithm
) -> None:
    cert = issued[profile, algorithm].certificate
    admission = admission_of(cert)
    assert admission is not None
    assert admission.telematik_id == TELEMATIK_ID
    expected_oid = EXPECTED_ROLE.get(
        profile,
        oids.PROFESSION_ARZT if profile.value.startswith("C.HP.") else oids.PROFESSION_PRAXIS_ARZT,
    )
    assert admission.profession_oids == (expected_oid,)
    assert admission.profession_texts == (oids.PROFESSION_TEXTS[expected_oid],)
    assert not cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.36.8.3.3")).critical


@pytest.mark.parametrize(("profile", "algorithm"), ALL, ids=_id)
def test_key_issuer_signature_and_constraints(
    pki: TestPki,
    issued: dict[tuple[CertProfile, Algorithm], Issued],
    profile: CertProfile,
    algorithm: Algorithm,
) -> None:
    item = issued[profile, algorithm]
    cert = item.certificate
    if algorithm is Algorithm.RSA:
        assert isinstance(item.private_key, rsa.RSAPrivateKey)
        assert item.private_key.key_size == 2048
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_SHA256
    else:
        assert isinstance(item.private_key, ec.EllipticCurvePrivateKey)
        assert isinstance(item.private_key.curve, ec.BrainpoolP256R1)
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    ca = pki.ca_for(profile, algorithm)
    assert ca.kind is profile.spec.ca_kind
    assert cert.issuer == ca.certificate.subject
    cert.verify_directly_issued_by(ca.certificate)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert not bc.value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert 2**47 <= cert.serial_number < 2**48  # 6-byte serials like gematik's samples


@pytest.mark.parametrize(("profile", "algorithm"), ALL, ids=_id)
def test_extended_key_usage_only_on_tls_and_konnektor_certs(
    issued: dict[tuple[CertProfile, Algorithm], Issued], profile: CertProfile, algorithm: Algorithm
) -> None:
    cert = issued[profile, algorithm].certificate
    try:
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        eku = []
    assert eku == EXPECTED_EKU.get(profile, [])


def test_card_subject_layout_and_validity_style(pki: TestPki) -> None:
    """Subject C=DE, O=<Telematik-ID>-NOT-VALID, serialNumber, CN as the C.HCI.ENC sample;
    validity 00:00:00 .. 23:59:59, five years."""
    cert = pki.issue(
        CertProfile.C_HCI_ENC,
        Algorithm.RSA,
        common_name="Zahnarztpraxis 2 KIM-Bsp TEST-ONLY",
        telematik_id="2-290002",
        subject_serial_number="80276883110000096954",
        email="praxis@test1.kim.telematik-test",
        profession_oid=oids.PROFESSION_ZAHNARZTPRAXIS,
    ).certificate
    assert [(a.oid, a.value) for a in cert.subject] == [
        (NameOID.COUNTRY_NAME, "DE"),
        (NameOID.ORGANIZATION_NAME, "2-290002-NOT-VALID"),
        (NameOID.SERIAL_NUMBER, "80276883110000096954"),
        (NameOID.COMMON_NAME, "Zahnarztpraxis 2 KIM-Bsp TEST-ONLY"),
    ]
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert start.time() == dt.time(0, 0, 0)
    assert end.time() == dt.time(23, 59, 59)
    assert end.year - start.year == 5
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["praxis@test1.kim.telematik-test"]
    assert admission_of(cert).profession_texts == ("Zahnarztpraxis",)  # type: ignore[union-attr]


def test_tls_server_cert_names_host_and_ip(pki: TestPki) -> None:
    cert = pki.issue(
        CertProfile.C_FD_TLS_S,
        Algorithm.RSA,
        common_name="fd1.kim.telematik-test",
        dns_names=["fd1.kim.telematik-test", "localhost"],
        ip_addresses=["127.0.0.1", "::1"],
    ).certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fd1.kim.telematik-test", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "kim-appliance NOT-VALID"
    )


def test_leaf_validity_never_outlives_its_ca(pki: TestPki) -> None:
    ca = pki.ca_for(CertProfile.C_HCI_OSIG, Algorithm.ECC)
    late = ca.certificate.not_valid_after_utc - dt.timedelta(days=30)
    cert = ca.issue(
        CertProfile.C_HCI_OSIG, Algorithm.ECC, common_name="Spät TEST-ONLY", not_before=late
    ).certificate
    assert cert.not_valid_after_utc == ca.certificate.not_valid_after_utc


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ip_addresses": ["localhost"]}, "ip_addresses"),
        ({"profession_oid": "1.2.3.4"}, "profession_text"),
        (
            {"not_before": dt.datetime(2030, 1, 1), "not_after": dt.datetime(2029, 1, 1)},
            "not_after",
        ),
    ],
)
def test_bad_issue_arguments_name_the_field(
    pki: TestPki, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        pki.issue(CertProfile.C_FD_TLS_S, Algorithm.ECC, common_name="x TEST-ONLY", **kwargs)


def test_ca_names_say_kim_appliance_and_follow_gematik_layout(pki: TestPki) -> None:
    names = {
        (ca.kind, ca.algorithm): ca.certificate.subject for ca in [*pki.roots, *pki.intermediates]
    }
    assert len(names) == 8
    smcb = names[CaKind.SMCB, Algorithm.RSA]
    assert smcb.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "GEM.SMCB-CA1 TEST-ONLY"
    for subject in names.values():
        assert "kim-appliance" in str(
            subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
        )
    for ca in pki.intermediates:
        bc = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical
        assert bc.value.ca
        assert bc.value.path_length == 0
        assert ca.certificate.issuer == ca.parent.certificate.subject  # type: ignore[union-attr]
        assert ca.certificate.serial_number < 16
    for root in pki.roots:
        assert root.certificate.issuer == root.certificate.subject
        assert root.certificate.serial_number == 1
