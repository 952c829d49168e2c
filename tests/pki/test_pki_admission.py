"""The Admission extension (1.3.36.8.3.3): encoding checked against gematik's sample certs and
against cryptography's own (independent, Rust) parser of the extension."""

from __future__ import annotations

from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509

from kim_appliance.pki import Admission, Algorithm, CertProfile, TestPki, admission_of
from kim_appliance.pki.admission import ADMISSION_OID, AdmissionSyntax


def _osig_sample(root: Path) -> x509.Certificate:
    info = cms.ContentInfo.load((root / "inputEmail.txt.02.signedcms").read_bytes())
    [choice] = info["content"]["certificates"]
    return x509.load_der_x509_certificate(choice.chosen.dump())


def _raw_admission(cert: x509.Certificate) -> bytes:
    value = cert.extensions.get_extension_for_oid(ADMISSION_OID).value
    if isinstance(value, x509.UnrecognizedExtension):
        return value.value
    return value.public_bytes()


def test_sample_osig_admission_decodes_and_reencodes_byte_identical(gematik_certs: Path) -> None:
    """digest §2.9: the SM-B OSIG sample's Telematik-ID sits in registrationNumber; our encoder
    writes exactly gematik's bytes for the same values."""
    cert = _osig_sample(gematik_certs)
    admission = admission_of(cert)
    assert admission == Admission(
        "3-SMC-B-Testkarte-883110000096954", ("1.2.276.0.76.4.54",), ("Öffentliche Apotheke",)
    )
    assert admission.to_der() == _raw_admission(cert)


def test_sample_enc_admission_matches_except_the_admission_authority(gematik_certs: Path) -> None:
    """The C.HCI.ENC sample also names an admissionAuthority (Zahnärztekammer); the
    contentsOfAdmissions we write for the same values are byte-identical to gematik's."""
    cert = x509.load_der_x509_certificate((gematik_certs / "A/hci-enc-2-kim-bsp.crt").read_bytes())
    admission = admission_of(cert)
    assert admission == Admission("2-290002", ("1.2.276.0.76.4.51",), ("Zahnarztpraxis",))
    theirs = AdmissionSyntax.load(_raw_admission(cert))
    ours = AdmissionSyntax.load(admission.to_der())
    assert theirs["admission_authority"].native is not None
    assert ours["admission_authority"].native is None
    assert ours["contents_of_admissions"].dump() == theirs["contents_of_admissions"].dump()


def test_cryptography_parses_our_encoding_to_the_same_values(pki: TestPki) -> None:
    """cryptography >= 44 has its own parser of the extension: an independent oracle."""
    if not hasattr(x509, "Admissions"):
        pytest.skip("cryptography < 44 has no parser for the Admission extension")
    cert = pki.issue(
        CertProfile.C_HCI_ENC,
        Algorithm.ECC,
        common_name="Praxis Weber TEST-ONLY",
        telematik_id="1-2-ARZT-WEBER01",
    ).certificate
    value = cert.extensions.get_extension_for_oid(ADMISSION_OID).value
    assert isinstance(value, x509.Admissions)
    [entry] = list(value)
    [info] = entry.profession_infos
    assert info.registration_number == "1-2-ARZT-WEBER01"
    assert list(info.profession_items) == ["Betriebsstätte Arzt"]
    assert [oid.dotted_string for oid in info.profession_oids or []] == ["1.2.276.0.76.4.50"]


@pytest.mark.parametrize("bad", ["", "1-2-ARZT_WEBER", "1-2-ÄRZT"])
def test_telematik_id_outside_printable_string_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="registrationNumber"):
        Admission(bad, ("1.2.276.0.76.4.50",), ("Betriebsstätte Arzt",)).to_der()


def test_garbage_admission_is_refused_with_the_extension_named() -> None:
    with pytest.raises(ValueError, match=r"Admission extension \(1.3.36.8.3.3\) is malformed"):
        Admission.from_der(b"\x30\x03\x02\x01\x05")
