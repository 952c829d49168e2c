"""Tests of the recipient-emails attribute (digest §2.7) against gematik's sample and fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import asn1crypto.cms
import asn1crypto.core
import asn1crypto.x509
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kim_appliance.cms.errors import CmsError, CmsFormatError
from kim_appliance.cms.oids import ID_RECIPIENT_EMAILS
from kim_appliance.cms.recipient_emails import (
    RecipientEmail,
    decode_recipient_emails,
    encode_recipient_emails,
)

if TYPE_CHECKING:
    from tests.conftest import Party

SAMPLE_SERIALS = {
    "mustersender@komle.de": 0xFF22A88FFD24,
    "musterempfaenger@komle.de": 0x9F52A80078E4,
}


def _sample_attributes(sample: Path) -> tuple[bytes, bytes]:
    """(signed copy from .02, unprotected copy from .04), read with asn1crypto only."""
    signed = asn1crypto.cms.ContentInfo.load((sample / "inputEmail.txt.02.signedcms").read_bytes())
    signer_info = signed["content"]["signer_infos"][0]
    signed_copy = [
        a.dump() for a in signer_info["signed_attrs"] if a["type"].dotted == ID_RECIPIENT_EMAILS
    ]
    enveloped = asn1crypto.cms.ContentInfo.load(
        (sample / "inputEmail.txt.04.encryptedcms").read_bytes()
    )
    unauth_copy = [
        a.dump()
        for a in enveloped["content"]["unauth_attrs"]
        if a["type"].dotted == ID_RECIPIENT_EMAILS
    ]
    assert len(signed_copy) == 1
    assert len(unauth_copy) == 1
    return signed_copy[0], unauth_copy[0]


def _sample_cert(sample: Path, who: str, n: int) -> x509.Certificate:
    return x509.load_pem_x509_certificate((sample / who / f"hci-enc-{n}-kim-bsp.pem").read_bytes())


def _der_issuer(certificate: x509.Certificate) -> bytes:
    der = certificate.public_bytes(serialization.Encoding.DER)
    return bytes(asn1crypto.x509.Certificate.load(der)["tbs_certificate"]["issuer"].dump())


def test_sample_unauth_attrs_decode_to_the_two_recipients(gematik_sample: Path) -> None:
    """KOM-LE-A_2114-01: the unprotected attribute of gematik's .04 names both recipients."""
    _, unauth = _sample_attributes(gematik_sample)
    entries = decode_recipient_emails(unauth)
    assert {e.address: e.serial for e in entries} == SAMPLE_SERIALS
    for entry in entries:
        assert entry.issuer.native["common_name"] == "GEM.KOMP-CA24 TEST-ONLY"


def test_sample_signed_copy_equals_unprotected_copy(gematik_sample: Path) -> None:
    """KOM-LE-A_2127: the signed copy in .02 decodes to the same entries as .04's copy."""
    signed, unauth = _sample_attributes(gematik_sample)
    assert signed == unauth
    assert decode_recipient_emails(signed) == decode_recipient_emails(unauth)


def test_sample_round_trip_is_byte_identical(gematik_sample: Path) -> None:
    """Re-encoding the decoded sample gives gematik's bytes exactly (digest §2.7)."""
    signed, _ = _sample_attributes(gematik_sample)
    assert signed.startswith(bytes.fromhex("3082016c06082a8214004c04812d"))
    entries = decode_recipient_emails(signed)
    assert encode_recipient_emails(entries, kim_domain=False) == signed
    # the SET is DER-sorted, so the order of the entries given does not matter
    assert encode_recipient_emails(entries[::-1], kim_domain=False) == signed


def test_sample_entries_match_the_sample_certificates(gematik_sample: Path) -> None:
    """KOM-LE-A_2115-02: each entry points at exactly one recipient certificate."""
    _, unauth = _sample_attributes(gematik_sample)
    by_address = {e.address: e for e in decode_recipient_emails(unauth)}
    cert_2 = _sample_cert(gematik_sample, "A", 2)
    cert_3 = _sample_cert(gematik_sample, "B", 3)
    matching_2 = [a for a, e in by_address.items() if e.matches(cert_2)]
    matching_3 = [a for a, e in by_address.items() if e.matches(cert_3)]
    assert len(matching_2) == 1
    assert len(matching_3) == 1
    assert matching_2 != matching_3


def test_sample_addresses_are_not_kim_addresses_and_are_refused_by_default(
    gematik_sample: Path,
) -> None:
    """digest §2.10: a KIM address ends .kim.telematik[-test]; the sample's @komle.de does not."""
    _, unauth = _sample_attributes(gematik_sample)
    with pytest.raises(CmsError) as info:
        encode_recipient_emails(decode_recipient_emails(unauth))
    assert info.value.field == "recipient-emails[0].emailAddress"
    assert "kim.telematik" in info.value.reason


def test_for_certificate_copies_issuer_bytes_and_serial(
    rsa_recipient: Party, ecc_recipient: Party
) -> None:
    """KOM-LE-A_2117: rid is the IssuerAndSerialNumber with the certificate's issuer DER as is."""
    entries = [
        RecipientEmail.for_certificate(rsa_recipient.address, rsa_recipient.key.certificate),
        RecipientEmail.for_certificate(ecc_recipient.address, ecc_recipient.key.certificate),
    ]
    der = encode_recipient_emails(entries)
    # independent parse: asn1crypto generic structures only
    parsed = asn1crypto.core.Sequence.load(der)
    assert asn1crypto.core.ObjectIdentifier.load(parsed[0].dump()).dotted == ID_RECIPIENT_EMAILS
    values = asn1crypto.core.SetOf.load(parsed[1].dump(), spec=asn1crypto.core.Sequence)
    found = {}
    for value in values:
        address = asn1crypto.core.IA5String.load(value[0].dump()).native
        ias = asn1crypto.cms.IssuerAndSerialNumber.load(value[1].dump())
        found[address] = (ias["issuer"].dump(), ias["serial_number"].native)
    for party in (rsa_recipient, ecc_recipient):
        cert = party.key.certificate
        assert found[party.address] == (_der_issuer(cert), cert.serial_number)


def test_same_address_with_rsa_and_ecc_certificates_gives_two_entries(
    rsa_recipient: Party, ecc_recipient: Party
) -> None:
    """KOM-LE-A_2115-02: one entry per RecipientInfo, so one per certificate of an address."""
    address = "praxis.dual@test1.kim.telematik-test"
    entries = [
        RecipientEmail.for_certificate(address, rsa_recipient.key.certificate),
        RecipientEmail.for_certificate(address, ecc_recipient.key.certificate),
    ]
    decoded = decode_recipient_emails(encode_recipient_emails(entries))
    assert sorted(e.serial for e in decoded) == sorted(e.serial for e in entries)
    assert {e.address for e in decoded} == {address}


def test_matches_only_its_own_certificate(rsa_recipient: Party, other_rsa_recipient: Party) -> None:
    entry = RecipientEmail.for_certificate(rsa_recipient.address, rsa_recipient.key.certificate)
    assert entry.matches(rsa_recipient.key.certificate)
    assert not entry.matches(other_rsa_recipient.key.certificate)  # same issuer, other serial


def test_address_is_kept_as_given_and_compared_case_insensitively(rsa_recipient: Party) -> None:
    """digest §2.10: addresses are never rewritten; the domain check ignores case."""
    address = "Praxis.Weber@Test1.KIM.Telematik-Test"
    entry = RecipientEmail.for_certificate(address, rsa_recipient.key.certificate)
    decoded = decode_recipient_emails(encode_recipient_emails([entry]))
    assert decoded[0].address == address


@pytest.mark.parametrize(
    ("address", "reason_part"),
    [
        ("no-at-sign.kim.telematik", "local@domain"),
        ("@test1.kim.telematik", "local@domain"),
        ("praxis weber@test1.kim.telematik", "local part"),
        ("m\u00fcller@test1.kim.telematik", "local part"),
        ("x" * 65 + "@test1.kim.telematik", "local part"),
        ("praxis@test_1.kim.telematik", "domain"),
        ("praxis@example.org", "kim.telematik"),
        ("praxis@kim.telematik.example.org", "kim.telematik"),
    ],
)
def test_invalid_addresses_are_refused_naming_them(
    rsa_recipient: Party, address: str, reason_part: str
) -> None:
    """digest §2.10: local part [A-Za-z0-9._-]{1,64}, domain [a-z0-9.-] in a KIM domain."""
    with pytest.raises(CmsError) as info:
        RecipientEmail.for_certificate(address, rsa_recipient.key.certificate)
    assert reason_part in info.value.reason
    assert repr(address) in info.value.reason


def test_encode_refuses_an_empty_list() -> None:
    with pytest.raises(CmsError, match=r"SIZE \(1\.\.MAX\)"):
        encode_recipient_emails([])


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _attribute(oid: str, entries: list[bytes]) -> bytes:
    oid_der = bytes(asn1crypto.core.ObjectIdentifier(oid).dump())
    return _tlv(0x30, oid_der + _tlv(0x31, b"".join(entries)))


def _entry(address_der: bytes, rid_der: bytes) -> bytes:
    return _tlv(0x30, address_der + rid_der)


def _ias(party: Party) -> bytes:
    cert = party.key.certificate
    return bytes(
        asn1crypto.cms.IssuerAndSerialNumber(
            {
                "issuer": asn1crypto.x509.Name.load(_der_issuer(cert)),
                "serial_number": cert.serial_number,
            }
        ).dump()
    )


def test_decode_refuses_wrong_attribute_type(rsa_recipient: Party) -> None:
    entry = _entry(asn1crypto.core.IA5String("a@b.kim.telematik").dump(), _ias(rsa_recipient))
    with pytest.raises(CmsFormatError) as info:
        decode_recipient_emails(_attribute("1.2.840.113549.1.9.3", [entry]))
    assert info.value.field == "recipient-emails.attrType"


def test_decode_refuses_an_empty_set() -> None:
    with pytest.raises(CmsFormatError) as info:
        decode_recipient_emails(_attribute(ID_RECIPIENT_EMAILS, []))
    assert info.value.field == "recipient-emails.attrValues"


def test_decode_refuses_subject_key_identifier_rid(rsa_recipient: Party) -> None:
    """KOM-LE-A_2117: rid MUST be issuerAndSerialNumber, not [0] subjectKeyIdentifier."""
    ski = bytes(asn1crypto.core.OctetString(b"\x01" * 20, implicit=0).dump())
    entry = _entry(asn1crypto.core.IA5String("a@b.kim.telematik").dump(), ski)
    with pytest.raises(CmsFormatError) as info:
        decode_recipient_emails(_attribute(ID_RECIPIENT_EMAILS, [entry]))
    assert info.value.field == "recipient-emails[0].rid"
    assert "KOM-LE-A_2117" in info.value.reason


def test_decode_refuses_non_ia5_address(rsa_recipient: Party) -> None:
    utf8 = asn1crypto.core.UTF8String("m\u00fcller@b.kim.telematik").dump()
    entry = _entry(utf8, _ias(rsa_recipient))
    with pytest.raises(CmsFormatError) as info:
        decode_recipient_emails(_attribute(ID_RECIPIENT_EMAILS, [entry]))
    assert info.value.field.startswith("recipient-emails[0]")


def test_decode_refuses_trailing_bytes_and_truncation(rsa_recipient: Party) -> None:
    der = encode_recipient_emails(
        [RecipientEmail.for_certificate(rsa_recipient.address, rsa_recipient.key.certificate)]
    )
    assert len(decode_recipient_emails(der)) == 1
    for bad in (der + b"\x00", der[:-1], b"", der[:10]):
        with pytest.raises(CmsFormatError) as info:
            decode_recipient_emails(bad)
        assert info.value.field.startswith("recipient-emails")


def test_an_issuer_name_that_cannot_be_compared_is_refused_when_decoded() -> None:
    """Issue 11 (found by fuzzing): an issuer name asn1crypto parses but cannot prepare for
    RFC 5280 comparison (an unassigned code point) raised ValueError from ``matches`` long
    after decoding. decode_recipient_emails refuses it, naming the entry."""
    name = asn1crypto.x509.Name.build({"common_name": "Praxis \u0378"})
    entry = RecipientEmail("praxis@fd1.kim.telematik-test", name, 7)
    der = encode_recipient_emails([entry])
    with pytest.raises(CmsFormatError) as info:
        decode_recipient_emails(der)
    assert info.value.field == "recipient-emails[0]"
    assert "unassigned code points" in info.value.reason
