"""The card operations (digest §1.8) on RSA and ECC cards, SMC-B and HBA, checked with the CMS
reader, the KIM seal/open pipeline and `openssl` as independent oracles."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import asn1crypto.cms
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from konnektor_helpers import (
    ADDRESSES,
    CONTEXT,
    HBA_CONTEXT,
    KLEIN,
    MEYER,
    MEYER_PRACTICE,
    SONNE,
    WEBER,
    handle,
)

from kim_appliance.cms.generic import ParsedSignedData
from kim_appliance.cms.recipient_emails import RecipientEmail, encode_recipient_emails
from kim_appliance.cms.signed import SIG_ECDSA_SHA256, SIG_RSASSA_PSS, read_signed_data
from kim_appliance.konnektor import (
    CardError,
    Context,
    HighLevelResult,
    KeyPurpose,
    Konnektor,
    KonnektorError,
    ParameterError,
)
from kim_appliance.konnektor.errors import KeyNotAvailableError
from kim_appliance.mail.seal import Certified, seal
from kim_appliance.mail.unseal import open_message
from kim_appliance.pki import CertProfile, profile_of

DOCUMENT = b"Content-Type: message/rfc822\r\n\r\nFrom: a@b\r\nSubject: eAU\r\n\r\nHallo\r\n"
SMCB_CARDS = [(WEBER, "RSA"), (SONNE, "ECC"), (KLEIN, "RSA"), (KLEIN, "ECC")]


def _emails(konnektor: Konnektor, *targets: tuple[str, str]) -> bytes:
    entries = []
    for iccsn, crypt in targets:
        cert = konnektor.read_card_certificate(
            HBA_CONTEXT, handle(konnektor, iccsn), "C.ENC", crypt
        )
        entries.append(RecipientEmail.for_certificate(ADDRESSES[iccsn], cert))
    return encode_recipient_emails(entries)


@pytest.mark.parametrize(("iccsn", "crypt"), [*SMCB_CARDS, (MEYER, "RSA"), (MEYER, "ECC")])
def test_read_card_certificate_gives_the_cards_enc_certificate(
    konnektor: Konnektor, iccsn: str, crypt: str
) -> None:
    cert = konnektor.read_card_certificate(HBA_CONTEXT, handle(konnektor, iccsn), "C.ENC", crypt)
    expected = CertProfile.C_HP_ENC if iccsn == MEYER else CertProfile.C_HCI_ENC
    assert profile_of(cert) is expected
    assert isinstance(
        cert.public_key(), rsa.RSAPublicKey if crypt == "RSA" else ec.EllipticCurvePublicKey
    )


def test_read_card_certificate_refuses_a_key_the_card_lacks(konnektor: Konnektor) -> None:
    with pytest.raises(CardError) as info:
        konnektor.read_card_certificate(CONTEXT, handle(konnektor, WEBER), "C.ENC", "ECC")
    assert info.value.code == 4058
    with pytest.raises(ParameterError, match=r"C\.XYZ"):
        konnektor.read_card_certificate(CONTEXT, handle(konnektor, WEBER), "C.XYZ", "RSA")


@pytest.mark.parametrize(("iccsn", "crypt"), [*SMCB_CARDS, (MEYER_PRACTICE, "RSA_ECC")])
def test_sign_document_gives_a_kim_signed_data(
    konnektor: Konnektor, iccsn: str, crypt: str
) -> None:
    """SignDocument: SignedData with eContent and the signed recipient-emails (KOM-LE-A_2190),
    signed with the SMC-B's C.HCI.OSIG (KOM-LE-A_2129); VerifyDocument says VALID."""
    emails = _emails(konnektor, (WEBER, "RSA"))
    der = konnektor.sign_document(CONTEXT, handle(konnektor, iccsn), DOCUMENT, emails, crypt)
    content, report = read_signed_data(der)
    assert content == DOCUMENT
    assert report.recipient_emails == emails
    assert profile_of(report.signer_certificate) is CertProfile.C_HCI_OSIG
    expected = SIG_RSASSA_PSS if crypt == "RSA" else SIG_ECDSA_SHA256  # RSA_ECC prefers ECC
    assert report.signature_algorithm == expected
    verification = konnektor.verify_document(CONTEXT, der)
    assert verification.result is HighLevelResult.VALID
    assert verification.integrity_check_result == "01"


@pytest.mark.openssl
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.parametrize("crypt", ["RSA", "ECC"])
def test_openssl_verifies_the_card_signature(
    konnektor: Konnektor, crypt: str, tmp_path: Path
) -> None:
    """`openssl cms -verify` accepts SignDocument's output, RSASSA-PSS and brainpool ECDSA."""
    der = konnektor.sign_document(
        CONTEXT, handle(konnektor, KLEIN), DOCUMENT, _emails(konnektor, (KLEIN, crypt)), crypt
    )
    path = tmp_path / "signed.der"
    path.write_bytes(der)
    out = subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-noverify", "-inform", "DER", "-in", str(path)],
        capture_output=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == DOCUMENT


def test_verify_document_codes(konnektor: Konnektor) -> None:
    """Tab_Verm_Sig_Prüf: 4115 content manipulated, 4253 no signature, 4112 wrong format."""
    der = konnektor.sign_document(
        CONTEXT, handle(konnektor, WEBER), DOCUMENT, _emails(konnektor, (WEBER, "RSA")), "RSA"
    )
    tampered = der.replace(b"Hallo", b"Hallx")
    result = konnektor.verify_document(CONTEXT, tampered)
    assert (result.result, result.code, result.integrity_check_result) == (
        HighLevelResult.INVALID,
        4115,
        "02",
    )
    assert konnektor.verify_document(CONTEXT, b"").code == 4253
    enveloped = konnektor.encrypt_document(
        CONTEXT,
        [konnektor.read_card_certificate(CONTEXT, handle(konnektor, WEBER), "C.ENC")],
        DOCUMENT,
        _emails(konnektor, (WEBER, "RSA")),
    )
    assert konnektor.verify_document(CONTEXT, enveloped).code == 4253
    broken = konnektor.verify_document(CONTEXT, der[: len(der) // 2])
    assert (broken.code, broken.integrity_check_result) == (4112, "04")


@pytest.mark.parametrize(
    ("iccsn", "crypt"), [(WEBER, "RSA"), (SONNE, "ECC"), (MEYER, "RSA"), (MEYER, "ECC")]
)
def test_encrypt_then_decrypt_document_on_the_card(
    konnektor: Konnektor, iccsn: str, crypt: str
) -> None:
    """EncryptDocument for a card's C.ENC, DecryptDocument with that card (KTRI and KARI)."""
    context = HBA_CONTEXT if iccsn == MEYER else CONTEXT
    h = handle(konnektor, iccsn)
    cert = konnektor.read_card_certificate(context, h, "C.ENC", crypt)
    emails = _emails(konnektor, (iccsn, crypt))
    der = konnektor.encrypt_document(context, [cert], DOCUMENT, emails)
    assert konnektor.decrypt_document(context, h, der) == DOCUMENT


def test_decrypt_document_for_someone_else_reports_key_not_available(
    konnektor: Konnektor,
) -> None:
    weber = konnektor.read_card_certificate(CONTEXT, handle(konnektor, WEBER), "C.ENC")
    der = konnektor.encrypt_document(CONTEXT, [weber], DOCUMENT, _emails(konnektor, (WEBER, "RSA")))
    with pytest.raises(KeyNotAvailableError) as info:
        konnektor.decrypt_document(CONTEXT, handle(konnektor, SONNE), der)
    assert "no RecipientInfo" in str(info.value)
    with pytest.raises(KonnektorError) as bad:
        konnektor.decrypt_document(CONTEXT, handle(konnektor, WEBER), b"\x30\x03\x02\x01")
    assert bad.value.code == 4000


def test_encrypt_document_refuses_a_signature_certificate(konnektor: Konnektor) -> None:
    """KOM-LE-A_2128: only C.HCI.ENC / C.HP.ENC certificates are encrypted to."""
    osig = konnektor.read_card_certificate(CONTEXT, handle(konnektor, WEBER), "C.SIG")
    with pytest.raises(ParameterError, match="KOM-LE-A_2128"):
        konnektor.encrypt_document(CONTEXT, [osig], DOCUMENT, _emails(konnektor, (WEBER, "RSA")))


@pytest.mark.parametrize(
    ("sender", "recipient", "crypt"),
    [(WEBER, SONNE, "ECC"), (KLEIN, WEBER, "RSA"), (MEYER_PRACTICE, MEYER, "ECC")],
)
def test_kim_message_signed_and_decrypted_through_card_keys(
    konnektor: Konnektor, sender: str, recipient: str, crypt: str
) -> None:
    """The Clientmodul's streaming path: seal() signs through the SMC-B's OSIG CardKey,
    open_message() unwraps through the recipient card's ENC CardKeys; the signer's path is
    VALID against the Konnektor's trust store."""
    sender_handle = handle(konnektor, sender)
    signer = konnektor.signing_key(CONTEXT, sender_handle)
    sender_card = WEBER if sender == MEYER_PRACTICE else sender  # Dr. Meyer's practice sends
    from_addr = ADDRESSES[sender_card]
    rec_ctx = HBA_CONTEXT if recipient == MEYER else CONTEXT
    to_cert = konnektor.read_card_certificate(rec_ctx, handle(konnektor, recipient), "C.ENC", crypt)
    own_crypt = konnektor.cards.by_iccsn(sender_card).algorithms(KeyPurpose.ENC)[0]
    own = konnektor.read_card_certificate(
        CONTEXT, handle(konnektor, sender_card), "C.ENC", own_crypt
    )
    to_addr = ADDRESSES[recipient]
    inner = f"From: {from_addr}\r\nTo: {to_addr}\r\nSubject: Arztbrief\r\n\r\nText\r\n".encode()
    outer = io.BytesIO()
    seal(
        io.BytesIO(inner),
        outer,
        signer=signer,
        sender=[Certified(from_addr, own)],
        recipients=[Certified(to_addr, to_cert)],
    )
    outer.seek(0)
    out = io.BytesIO()
    keys = konnektor.decryption_keys(rec_ctx, handle(konnektor, recipient))
    report = open_message(outer, out, keys=keys, trust=konnektor.trust)
    assert report.verified, report.lines()
    assert out.getvalue().endswith(b"Text\r\n")


def _public(konnektor: Konnektor, context: Context, h: str, crypt: str) -> x509.Certificate:
    return konnektor.read_card_certificate(context, h, "C.AUT", crypt)


@pytest.mark.parametrize(
    ("iccsn", "scheme"),
    [
        (WEBER, "RSASSA-PSS"),
        (WEBER, "RSASSA-PKCS1-v1_5"),
        (SONNE, "ECDSA"),
        (MEYER, "RSASSA-PSS"),
        (MEYER, "ECDSA"),
    ],
)
def test_external_authenticate_signs_the_hash_with_the_aut_key(
    konnektor: Konnektor, iccsn: str, scheme: str
) -> None:
    """ExternalAuthenticate: RSASSA-PSS/PKCS#1 with the RSA AUT key, ECDSA (plain r||s, BSI
    TR-03111) with the ECC AUT key; the signature verifies with C.AUT."""
    context = HBA_CONTEXT if iccsn == MEYER else CONTEXT
    h = handle(konnektor, iccsn)
    digest = hashlib.sha256(b"header.payload").digest()
    signature = konnektor.external_authenticate(context, h, digest, scheme)
    crypt = "ECC" if scheme == "ECDSA" else "RSA"
    key = _public(konnektor, context, h, crypt).public_key()
    if scheme == "ECDSA":
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert len(signature) == 64
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        key.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    else:
        assert isinstance(key, rsa.RSAPublicKey)
        pad = (
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            if scheme == "RSASSA-PSS"
            else padding.PKCS1v15()
        )
        key.verify(signature, digest, pad, Prehashed(hashes.SHA256()))


def test_external_authenticate_refuses_a_non_hash(konnektor: Konnektor) -> None:
    with pytest.raises(ParameterError, match="32-byte"):
        konnektor.external_authenticate(CONTEXT, handle(konnektor, WEBER), b"short")


@pytest.mark.parametrize("purpose", ["C.ENC", "C.SIG", "C.AUT"])
def test_verify_certificate_valid_for_card_certificates(konnektor: Konnektor, purpose: str) -> None:
    cert = konnektor.read_card_certificate(CONTEXT, handle(konnektor, KLEIN), purpose, "ECC")
    result = konnektor.verify_certificate(CONTEXT, cert)
    assert (result.result, result.reason) == (HighLevelResult.VALID, None)
    assert result.roles  # the Admission's professionOID


def test_verify_certificate_foreign_certificate_is_invalid(konnektor: Konnektor) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "outsider")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    result = konnektor.verify_certificate(CONTEXT, cert)
    assert (result.result, result.reason) == (HighLevelResult.INVALID, "BUILD_CHAIN_FAILED")
    assert "outsider" in result.detail


# --- documents outside KIM (eAU, prescriptions, PDFs): generic CAdES and hybrid encryption ---

PDF = b"%PDF-1.4\r\n1 0 obj << /Type /Catalog >> endobj\r\n" + bytes(range(256)) * 16


@pytest.mark.parametrize(("iccsn", "crypt"), [*SMCB_CARDS, (KLEIN, "RSA_ECC")])
@pytest.mark.parametrize("include_content", [True, False])
def test_sign_document_without_kim_properties_is_a_cades_signature(
    konnektor: Konnektor, iccsn: str, crypt: str, include_content: bool
) -> None:
    """TUC_KON_160 (TIP1-A_4653): SignDocument without recipient-emails signs any document
    with the SMC-B's C.HCI.OSIG, enveloping or detached, with the standard signed attributes
    only; VerifyDocument says VALID (detached: with the document)."""
    h = handle(konnektor, iccsn)
    der = konnektor.sign_document(CONTEXT, h, PDF, None, crypt, include_content=include_content)
    parsed = ParsedSignedData.load(der)
    assert (parsed.detached, parsed.has_recipient_emails) == (not include_content, False)
    content, report = parsed.verify(None if include_content else PDF)
    assert content == PDF
    osig = "ECC" if crypt == "RSA_ECC" else crypt
    assert report.signer_certificate == konnektor.read_card_certificate(CONTEXT, h, "C.SIG", osig)
    assert set(report.signers[0].signed_attributes) == {
        "contentType",
        "signingTime",
        "messageDigest",
        "signingCertificateV2",
    }
    document = None if include_content else PDF
    verification = konnektor.verify_document(CONTEXT, der, document=document)
    assert (verification.result, verification.code) == (HighLevelResult.VALID, None)
    assert verification.content == PDF


def test_generic_verify_document_codes(konnektor: Konnektor) -> None:
    """Tab_Verm_Sig_Prüf for generic signatures: an altered document is 4115, a detached
    signature without its document is a request error (4000), a document that is not the
    eContent of an enveloping signature (KIM or not) is 4115, garbage after a ContentInfo
    header is 4112."""
    h = handle(konnektor, WEBER)
    detached = konnektor.sign_document(CONTEXT, h, PDF, None, "RSA", include_content=False)
    altered = konnektor.verify_document(CONTEXT, detached, document=PDF + b"\n")
    assert (altered.result, altered.code, altered.integrity_check_result) == (
        HighLevelResult.INVALID,
        4115,
        "02",
    )
    assert "messageDigest" in altered.detail
    with pytest.raises(ParameterError, match="detached") as missing:
        konnektor.verify_document(CONTEXT, detached)
    assert missing.value.code == 4000
    enveloping = konnektor.sign_document(CONTEXT, h, PDF, None, "RSA")
    assert konnektor.verify_document(CONTEXT, enveloping, document=b"other").code == 4115
    kim = konnektor.sign_document(CONTEXT, h, DOCUMENT, _emails(konnektor, (WEBER, "RSA")), "RSA")
    assert konnektor.verify_document(CONTEXT, kim, document=DOCUMENT).code is None
    assert konnektor.verify_document(CONTEXT, kim, document=PDF).code == 4115
    broken = konnektor.verify_document(CONTEXT, detached[:-40], document=PDF)
    assert (broken.result, broken.code) == (HighLevelResult.INVALID, 4112)


OPENSSL_SIGN = ("openssl", "cms", "-sign", "-binary", "-outform", "DER")
OUTSIDER_CERT = ("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=x")


@pytest.mark.openssl
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.parametrize(("crypt", "options"), [("RSA", ()), ("ECC", ("-nodetach", "-cades"))])
def test_verify_document_of_an_openssl_signature(
    konnektor: Konnektor, demo_dir: Path, tmp_path: Path, crypt: str, options: tuple[str, ...]
) -> None:
    """A signature made by someone else (`openssl cms -sign` with the card's exported OSIG
    key: RSASSA-PKCS1-v1_5 detached, ECDSA enveloping with ESS) is VALID; with a self-signed
    certificate outside the TI it is INVALID 4206."""
    demo = json.loads((demo_dir / "demo.json").read_text(encoding="utf-8"))
    klein = next(p for p in demo["participants"] if p["card"]["iccsn"] == KLEIN)
    index = 0 if crypt == "RSA" else 1
    key, cert = klein["export"]["osig_key"][index], klein["export"]["osig_cert"][index]
    assert crypt.lower() in cert
    document = tmp_path / "eau.pdf"
    document.write_bytes(PDF)
    signed = subprocess.run(
        [*OPENSSL_SIGN, "-in", str(document), "-signer", cert, "-inkey", key, *options],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    detached = "-nodetach" not in options
    verification = konnektor.verify_document(CONTEXT, signed, document=PDF if detached else None)
    assert (verification.result, verification.code) == (HighLevelResult.VALID, None)
    own_key, own_cert = str(tmp_path / "k.pem"), str(tmp_path / "c.pem")
    subprocess.run(
        [*OUTSIDER_CERT, "-keyout", own_key, "-out", own_cert, "-days", "2"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    foreign = subprocess.run(
        [*OPENSSL_SIGN, "-nodetach", "-in", str(document), "-signer", own_cert, "-inkey", own_key],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    result = konnektor.verify_document(CONTEXT, foreign)
    assert (result.result, result.code, result.integrity_check_result) == (
        HighLevelResult.INVALID,
        4206,
        "05",
    )


def test_sign_document_with_an_hba_needs_the_qes_pin(konnektor: Konnektor) -> None:
    """An HBA signs documents with C.HP.QES (its only signature key), which needs PIN.QES;
    the emulation does not offer it and says so (4058), instead of signing with another
    key. KIM signatures refuse the HBA outright (KOM-LE-A_2129)."""
    h = handle(konnektor, MEYER)
    with pytest.raises(CardError, match=r"PIN\.QES") as generic:
        konnektor.sign_document(HBA_CONTEXT, h, PDF, None, "ECC")
    assert generic.value.code == 4058
    with pytest.raises(CardError, match="KOM-LE-A_2129"):
        konnektor.sign_document(HBA_CONTEXT, h, DOCUMENT, _emails(konnektor, (WEBER, "RSA")))


def test_sign_document_refuses_a_detached_kim_signature(konnektor: Konnektor) -> None:
    with pytest.raises(ParameterError, match="KOM-LE-A_2190"):
        konnektor.sign_document(
            CONTEXT,
            handle(konnektor, WEBER),
            DOCUMENT,
            _emails(konnektor, (WEBER, "RSA")),
            "RSA",
            include_content=False,
        )


@pytest.mark.parametrize(("iccsn", "crypt"), [(WEBER, "RSA"), (SONNE, "ECC"), (MEYER, "ECC")])
def test_encrypt_document_without_kim_properties(
    konnektor: Konnektor, iccsn: str, crypt: str
) -> None:
    """TUC_KON_070/071 (TIP1-A_4621/A_4622): EncryptDocument without recipient-emails makes
    the same AuthEnvelopedData (AES-256-GCM) without unauthAttrs; DecryptDocument opens it."""
    context = HBA_CONTEXT if iccsn == MEYER else CONTEXT
    h = handle(konnektor, iccsn)
    cert = konnektor.read_card_certificate(context, h, "C.ENC", crypt)
    der = konnektor.encrypt_document(context, [cert], PDF, None)
    info = asn1crypto.cms.ContentInfo.load(der)
    assert info["content_type"].native == "authenticated_enveloped_data"
    assert info["content"]["unauth_attrs"].native is None
    algorithm = info["content"]["auth_encrypted_content_info"]["content_encryption_algorithm"]
    assert algorithm["algorithm"].native == "aes256_gcm"
    assert konnektor.decrypt_document(context, h, der) == PDF
    osig = konnektor.read_card_certificate(CONTEXT, handle(konnektor, WEBER), "C.SIG")
    with pytest.raises(ParameterError, match=r"C\.HCI\.ENC or C\.HP\.ENC"):
        konnektor.encrypt_document(context, [osig], PDF, None)
