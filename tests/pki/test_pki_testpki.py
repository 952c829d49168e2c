"""TestPki: save/load round trip, lookups, the TLS CA bundle, renewal, progress lines."""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kim_appliance.pki import (
    Algorithm,
    CaKind,
    CertProfile,
    Issued,
    PathValidationError,
    Purpose,
    TestPki,
    TrustStore,
    admission_of,
)


def test_save_load_round_trip_keeps_keys_certs_and_revocations(tmp_path: Path) -> None:
    pki = TestPki.generate(valid_years=2)
    revoked = pki.issue(CertProfile.C_HCI_OSIG, Algorithm.ECC, common_name="Alt TEST-ONLY")
    pki.revoke(revoked.certificate, reason=x509.ReasonFlags.key_compromise)
    pki.save(tmp_path / "pki")
    saved_crl_number = pki.ca_for(CertProfile.C_HCI_OSIG, Algorithm.ECC).crl_number
    assert saved_crl_number >= 1

    loaded = TestPki.load(tmp_path / "pki")
    assert [ca.certificate for ca in loaded.roots] == [ca.certificate for ca in pki.roots]
    assert [ca.certificate for ca in loaded.intermediates] == [
        ca.certificate for ca in pki.intermediates
    ]
    for ca in loaded.intermediates:
        assert ca.parent is not None
        assert ca.parent.algorithm is ca.algorithm
    # the loaded CAs still sign, and what they sign validates against the original anchors
    fresh = loaded.issue(CertProfile.C_HP_ENC, Algorithm.RSA, common_name="Dr. Neu TEST-ONLY")
    pki.trust_store().validate(fresh.certificate, purpose=Purpose.ENCRYPTION)
    # the revocation survived, and CRL numbers keep counting up
    with pytest.raises(PathValidationError, match="keyCompromise"):
        loaded.trust_store().validate(revoked.certificate, purpose=Purpose.SIGNATURE)
    loaded_ca = loaded.ca_for(CertProfile.C_HCI_OSIG, Algorithm.ECC)
    number = loaded_ca.crl().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > saved_crl_number


def test_saved_files_are_usable_by_other_tools(tmp_path: Path) -> None:
    pki = TestPki.generate(valid_years=1)
    pki.save(tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    assert len(index["authorities"]) == 8
    for entry in index["authorities"]:
        key_path = tmp_path / entry["key"]
        assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    store = TrustStore.from_pem_files(sorted(tmp_path.glob("*.pem")))
    assert len(store.anchors) == 2
    assert len(store.intermediates) == 6
    assert len(store.crls) == 8
    leaf = pki.issue(CertProfile.C_ZD_TLS_S, Algorithm.ECC, common_name="vzd TEST-ONLY")
    path = store.validate(leaf.certificate, purpose=Purpose.TLS_SERVER)
    assert path.warnings == []


def test_load_refuses_a_key_that_does_not_match(tmp_path: Path) -> None:
    pki = TestPki.generate(valid_years=1)
    pki.save(tmp_path)
    (tmp_path / "smcb-ecc.key.pem").write_bytes((tmp_path / "hba-ecc.key.pem").read_bytes())
    with pytest.raises(ValueError, match=r"smcb-ecc\.key\.pem: does not belong"):
        TestPki.load(tmp_path)


def test_load_of_a_missing_directory_names_the_index(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"index\.json"):
        TestPki.load(tmp_path / "nothing")


def test_ca_for_picks_the_issuing_ca_of_the_profile(pki: TestPki) -> None:
    assert pki.ca_for(CertProfile.C_HCI_ENC, Algorithm.RSA).kind is CaKind.SMCB
    assert pki.ca_for(CertProfile.C_HP_QES, Algorithm.ECC).kind is CaKind.HBA
    assert pki.ca_for(CertProfile.C_CM_TLS_CS, Algorithm.ECC).kind is CaKind.KOMP
    assert pki.ca_for(CertProfile.C_AK_AUT, Algorithm.RSA).algorithm is Algorithm.RSA


def test_tls_ca_pem_holds_komp_cas_and_roots(pki: TestPki) -> None:
    certs = x509.load_pem_x509_certificates(pki.tls_ca_pem())
    names = sorted(c.subject.rfc4514_string().split(",")[0] for c in certs)
    assert names == [
        "CN=GEM.KOMP-CA1 TEST-ONLY",
        "CN=GEM.KOMP-CA2 TEST-ONLY",
        "CN=GEM.RCA1 TEST-ONLY",
        "CN=GEM.RCA2 TEST-ONLY",
    ]


def test_revoke_of_a_foreign_certificate_is_refused(pki: TestPki, other_pki: TestPki) -> None:
    foreign = other_pki.issue(CertProfile.C_HCI_ENC, Algorithm.RSA, common_name="Fremd TEST-ONLY")
    with pytest.raises(ValueError, match="not issued by this test PKI"):
        pki.revoke(foreign.certificate)
    with pytest.raises(ValueError, match=r"was not issued by GEM\.SMCB-CA1"):
        pki.ca_for(CertProfile.C_HCI_ENC, Algorithm.RSA).revoke(foreign.certificate)


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, host: str) -> ssl.SSLObject:
    """A TLS handshake through memory BIOs (no sockets); raises ssl.SSLError on failure."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=host)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(8):
        for side, outgoing, peer_incoming in ((tls_client, c_out, s_in), (tls_server, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
            peer_incoming.write(outgoing.read())
    tls_client.do_handshake()
    return tls_client


def test_tls_ca_pem_lets_a_default_client_verify_an_fd_server_and_cm_client(
    pki: TestPki, tmp_path: Path
) -> None:
    """digest §1.9 (KOM-LE-A_2074): mutual TLS between Clientmodul (C.CM.TLS-CS) and
    Fachdienst (C.FD.TLS-S), both trusted through the one ``tls_ca`` file of endpoints.json."""
    ca_file = tmp_path / "tls-ca.pem"
    ca_file.write_bytes(pki.tls_ca_pem())

    def chain_files(issued: Issued, name: str) -> tuple[Path, Path]:
        ca = pki.ca_for(CertProfile.C_FD_TLS_S, issued.algorithm)
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        cert.write_bytes(issued.cert_pem() + ca.issued.cert_pem())
        key.write_bytes(issued.key_pem())
        return cert, key

    fd = pki.issue(
        CertProfile.C_FD_TLS_S, Algorithm.RSA, common_name="localhost", dns_names=["localhost"]
    )
    cm = pki.issue(CertProfile.C_CM_TLS_CS, Algorithm.RSA, common_name="praxis#CM")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*chain_files(fd, "fd"))
    server.load_verify_locations(cafile=ca_file)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=ca_file)
    client.load_cert_chain(*chain_files(cm, "cm"))
    tls = _handshake(client, server, "localhost")
    peer = tls.getpeercert(binary_form=True)
    assert peer is not None
    assert x509.load_der_x509_certificate(peer) == fd.certificate

    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(ssl.create_default_context(cafile=ca_file), server, "fd9.example")


def test_renew_issues_a_successor_with_a_new_key_and_the_same_subject(pki: TestPki) -> None:
    """issue 15 (card renew): the successor of a card or component certificate has a new key,
    the same profile, subject, Admission and alternative names, comes from the same CA and
    validates; the old one stays as it is (revoked or not)."""
    trust = pki.trust_store()
    hba = pki.issue(
        CertProfile.C_HP_ENC,
        Algorithm.ECC,
        common_name="Dr. Renew TEST-ONLY",
        telematik_id="1-HBA-Testkarte-883110000199999",
        email="dr.renew@fd1.kim.telematik-test",
        subject_serial_number="80276883110000199999",
    ).certificate
    tls = pki.issue(
        CertProfile.C_FD_TLS_S,
        Algorithm.RSA,
        common_name="fd9.kim.telematik-test",
        dns_names=["fd9.kim.telematik-test", "localhost"],
        ip_addresses=["127.0.0.1", "::1"],
    ).certificate
    practice_osig = pki.issue(  # an HBA holder's practice signature: no Telematik-ID
        CertProfile.C_HCI_OSIG, Algorithm.RSA, common_name="Praxis Renew TEST-ONLY"
    ).certificate
    pki.revoke(hba, reason=x509.ReasonFlags.key_compromise)
    for old in (hba, tls, practice_osig):
        new = pki.renew(old)
        assert new.certificate.subject == old.subject
        assert new.certificate.issuer == old.issuer
        assert new.certificate.serial_number != old.serial_number
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        assert new.certificate.public_key().public_bytes(
            der, spki
        ) != old.public_key().public_bytes(der, spki)
        for kind in (x509.SubjectAlternativeName, x509.CertificatePolicies, x509.KeyUsage):
            with contextlib.suppress(x509.ExtensionNotFound):
                assert (
                    new.certificate.extensions.get_extension_for_class(kind).value
                    == old.extensions.get_extension_for_class(kind).value
                )
        assert admission_of(new.certificate) == admission_of(old)
        assert new.certificate.not_valid_after_utc >= old.not_valid_after_utc
    renewed = pki.renew(hba).certificate
    trust.validate(renewed, purpose=Purpose.ENCRYPTION, profile=CertProfile.C_HP_ENC)
    with pytest.raises(PathValidationError, match="revoked"):
        trust.validate(hba, purpose=Purpose.ENCRYPTION, profile=CertProfile.C_HP_ENC)


def test_renew_refuses_a_certificate_of_another_pki(pki: TestPki, other_pki: TestPki) -> None:
    foreign = other_pki.issue(CertProfile.C_HCI_ENC, Algorithm.RSA, common_name="Fremd TEST-ONLY")
    with pytest.raises(ValueError, match="not issued by this test PKI"):
        pki.renew(foreign.certificate)
    with pytest.raises(ValueError, match="no gematik certificate type"):
        pki.renew(pki.roots[0].certificate)  # a CA: only end-entity certificates are renewed


def test_generate_says_what_it_makes(caplog: pytest.LogCaptureFixture) -> None:
    """issue 15: `kim-appliance init` is not silent while the keys are made."""
    with caplog.at_level(logging.INFO, logger="kim_appliance.pki"):
        TestPki.generate(valid_years=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "kim_appliance.pki"]
    assert lines == [
        "test PKI: making the RSA-2048 root GEM.RCA1 and its 3 CAs",
        "test PKI: making the brainpoolP256r1 root GEM.RCA2 and its 3 CAs",
    ]
