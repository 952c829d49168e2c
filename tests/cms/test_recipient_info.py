"""build_ktri / build_kari write DER by hand: the bytes must be what asn1crypto writes for the
same values, and an independent decoder must unwrap the content key from them."""

from __future__ import annotations

import os

import asn1crypto.x509
from asn1crypto import cms, core
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from parties import Party

from kim_appliance.cms.recipient_info import (
    RSAES_OAEP_SHA256_DER,
    build_kari,
    build_ktri,
    find_recipient,
    parse_recipient_infos,
)


def _ias_of(party: Party) -> cms.IssuerAndSerialNumber:
    cert = asn1crypto.x509.Certificate.load(
        party.key.certificate.public_bytes(serialization.Encoding.DER)
    )
    return cms.IssuerAndSerialNumber({"issuer": cert.issuer, "serial_number": cert.serial_number})


def test_ktri_is_the_der_asn1crypto_writes(rsa_recipient: Party) -> None:
    """KOM-LE-A_2108/2109 (digest §2.6): KeyTransRecipientInfo v0, rid issuerAndSerialNumber,
    RSAES-OAEP-SHA256 as in gematik's sample; re-encoding the parsed value with asn1crypto
    gives the same bytes, and the recipient's key recovers the content key."""
    cek = os.urandom(32)
    der = build_ktri(rsa_recipient.key.certificate, cek)
    ktri = cms.KeyTransRecipientInfo.load(der)
    assert ktri.dump(force=True) == der
    assert ktri["version"].native == "v0"
    assert ktri["rid"].chosen.dump() == _ias_of(rsa_recipient).dump(force=True)
    assert ktri["key_encryption_algorithm"].dump() == RSAES_OAEP_SHA256_DER
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    private = rsa_recipient.key.private_key
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.decrypt(ktri["encrypted_key"].native, oaep) == cek


def test_kari_is_the_der_asn1crypto_writes(ecc_recipient: Party) -> None:
    """Digest §7.3: [1] KeyAgreeRecipientInfo v3, originatorKey id-ecPublicKey without
    parameters, stdDH-sha256kdf with id-aes256-wrap, rid issuerAndSerialNumber; re-encoding
    with asn1crypto gives the same bytes; an independent ECDH + X9.63 KDF + AES key unwrap
    recovers the content key."""
    cek = os.urandom(32)
    der = build_kari(ecc_recipient.key.certificate, cek)
    info = cms.RecipientInfo.load(der)
    assert info.dump(force=True) == der
    assert info.name == "kari"
    kari = info.chosen
    assert kari["version"].native == "v3"
    originator = kari["originator"].chosen
    assert originator["algorithm"]["algorithm"].native == "ec"
    assert originator["algorithm"]["parameters"].native is None
    assert kari["key_encryption_algorithm"]["algorithm"].dotted == "1.3.132.1.11.1"
    wrap_der = kari["key_encryption_algorithm"]["parameters"].dump()
    assert (
        wrap_der
        == core.Sequence(contents=core.ObjectIdentifier("2.16.840.1.101.3.4.1.45").dump()).dump()
    )
    [entry] = list(kari["recipient_encrypted_keys"])
    assert entry["rid"].chosen.dump() == _ias_of(ecc_recipient).dump(force=True)
    point = originator["public_key"].native
    ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.BrainpoolP256R1(), point)
    private = ecc_recipient.key.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    z = private.exchange(ec.ECDH(), ephemeral)
    shared_info = core.Sequence(
        contents=wrap_der + core.OctetString((256).to_bytes(4, "big"), explicit=2).dump()
    ).dump()
    kek = X963KDF(hashes.SHA256(), 32, shared_info).derive(z)
    assert aes_key_unwrap(kek, entry["encrypted_key"].native) == cek


def test_each_kari_has_its_own_ephemeral_key(ecc_recipient: Party) -> None:
    """Digest §7.3: a fresh ephemeral key per RecipientInfo, also for the same certificate
    (the per-certificate cache holds the recipient's key, never the originator's)."""
    cek = os.urandom(32)
    points = {
        cms.RecipientInfo.load(build_kari(ecc_recipient.key.certificate, cek))
        .chosen["originator"]
        .chosen["public_key"]
        .native
        for _ in range(3)
    }
    assert len(points) == 3


def test_recipient_matching_uses_issuer_and_serial(
    rsa_recipient: Party, other_rsa_recipient: Party, ecc_recipient: Party
) -> None:
    """KOM-LE-A_2108: the rid names exactly one certificate: the recipient's key matches its
    own RecipientInfo and no other (same CA, other serial; other CA)."""
    cek = os.urandom(32)
    infos_der = core.SetOf(
        contents=build_ktri(rsa_recipient.key.certificate, cek)
        + build_kari(ecc_recipient.key.certificate, cek)
    ).dump()
    infos = parse_recipient_infos(bytes(infos_der), "recipientInfos")
    assert [i.matches(rsa_recipient.key.certificate) for i in infos] == [True, False]
    assert [i.matches(ecc_recipient.key.certificate) for i in infos] == [False, True]
    assert [i.matches(other_rsa_recipient.key.certificate) for i in infos] == [False, False]
    info, key = find_recipient(infos, [other_rsa_recipient.key, ecc_recipient.key])
    assert (info.kind, key) == ("kari", ecc_recipient.key)
    assert info.unwrap(key) == cek
