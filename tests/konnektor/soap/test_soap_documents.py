"""Documents outside KIM over SOAP (issue 14, item 5): practice software signs and encrypts
eAU, prescriptions and PDFs through the same Konnektor. zeep, a SOAP client written by others,
drives SignDocument, VerifyDocument, EncryptDocument and DecryptDocument without KIM
properties; every message on the wire is validated against gematik's XSDs (conftest);
``openssl cms`` checks what the Konnektor makes and makes what the Konnektor must read."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import asn1crypto.cms
import pytest
import zeep.exceptions
from conftest import RunningKonnektor
from cryptography.hazmat.primitives import serialization
from konnektor_helpers import CONTEXT, HBA_CONTEXT, KLEIN, MEYER, SONNE, WEBER, handle
from soap_helpers import CTX, HBA_CTX, cms_attribute_property, recipient_emails, trace

from kim_appliance.cms.generic import ParsedSignedData

CMS = "urn:ietf:rfc:5652"
PDF = b"%PDF-1.4\r\n1 0 obj << /Type /Catalog >> endobj\r\n" + bytes(range(256)) * 32

requires_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


def _sign(
    soap: RunningKonnektor,
    iccsn: str,
    crypt: str,
    *,
    include_content: bool | None,
    signature_type: str = CMS,
    properties: list[dict[str, Any]] | None = None,
    context: dict[str, str] = CTX,
) -> bytes:
    """SignDocument of PDF as a PVS sends it: no RecipientEmailsAttribute."""
    signatures = soap.service("SignatureService")
    inputs: dict[str, Any] = {"SignatureType": signature_type}
    if include_content is not None:
        inputs["IncludeEContent"] = include_content
    if properties is not None:
        inputs["Properties"] = {"SignedProperties": {"Property": properties}}
    response = signatures.SignDocument(
        CardHandle=handle(soap.konnektor, iccsn),
        Crypt=crypt,
        Context=context,
        TvMode="NONE",
        JobNumber=signatures.GetJobNumber(Context=context),
        SignRequest=[
            {
                "RequestID": "eAU-1",
                "OptionalInputs": inputs,
                "Document": {
                    "Base64Data": {"_value_1": PDF, "MimeType": "application/pdf"},
                    "ShortText": "eAU Mustermann",
                },
                "IncludeRevocationInfo": False,
            }
        ],
    )
    [answer] = response
    assert (answer.RequestID, answer.Status.Result) == ("eAU-1", "OK")
    assert answer.SignatureObject.Base64Signature.Type == CMS
    signed: bytes = answer.SignatureObject.Base64Signature._value_1
    return signed


def _verify(soap: RunningKonnektor, signature: bytes | None, document: bytes | None = None) -> Any:
    arguments: dict[str, Any] = {
        "Context": CTX,
        "TvMode": "NONE",
        "OptionalInputs": {"ReturnVerificationReport": {"IncludeVerifier": False}},
        "IncludeRevocationInfo": False,
    }
    if document is not None:
        arguments["Document"] = {"Base64Data": {"_value_1": document, "MimeType": "text/plain"}}
    if signature is not None:
        arguments["SignatureObject"] = {"Base64Signature": {"_value_1": signature, "Type": CMS}}
    return soap.service("SignatureService").VerifyDocument(**arguments)


@pytest.mark.parametrize(("iccsn", "crypt"), [(WEBER, "RSA"), (SONNE, "ECC"), (KLEIN, "RSA_ECC")])
@pytest.mark.parametrize("include_content", [True, False, None])
def test_sign_and_verify_a_document_without_kim_properties(
    soap: RunningKonnektor, iccsn: str, crypt: str, include_content: bool | None
) -> None:
    """TUC_KON_160/161 (TIP1-A_4653, TIP1-A_4654): SignDocument without the
    RecipientEmailsAttribute is no longer refused with 4000: it gives a CAdES signature with
    the SMC-B's C.HCI.OSIG, enveloping (IncludeEContent true or absent) or detached (false),
    which VerifyDocument finds VALID: detached with the document, enveloping alone."""
    signature = _sign(soap, iccsn, crypt, include_content=include_content)
    detached = include_content is False
    parsed = ParsedSignedData.load(signature)
    assert (parsed.detached, parsed.has_recipient_emails) == (detached, False)
    content, report = parsed.verify(PDF if detached else None)
    assert content == PDF
    osig = "RSA" if crypt == "RSA" else "ECC"
    expected = soap.konnektor.read_card_certificate(
        CONTEXT, handle(soap.konnektor, iccsn), "C.SIG", osig
    )
    assert report.signer_certificate == expected
    valid = _verify(soap, signature, PDF if detached else None)
    assert (valid.Status.Result, valid.VerificationResult.HighLevelResult) == ("OK", "VALID")
    assert valid.Status.Error is None


def test_verify_document_detached_enveloping_and_kim(soap: RunningKonnektor) -> None:
    """VerifyDocument: a detached signature over an altered document is INVALID 4115, without
    its document a fault 4000 that says why; an enveloping CMS signature may also come in
    SIG:Document alone; a KIM signature (with recipient-emails) still verifies VALID."""
    detached = _sign(soap, WEBER, "RSA", include_content=False)
    altered = _verify(soap, detached, PDF[:-1] + b"X")
    assert altered.VerificationResult.HighLevelResult == "INVALID"
    assert altered.Status.Result == "Warning"
    assert altered.Status.Error.Trace[0].Code == 4115
    with pytest.raises(zeep.exceptions.Fault) as missing:
        _verify(soap, detached)
    found = trace(missing.value)
    assert found["Code"] == "4000"
    assert "detached" in found["Detail"]
    enveloping = _sign(soap, SONNE, "ECC", include_content=True)
    in_document = _verify(soap, None, enveloping)
    assert in_document.VerificationResult.HighLevelResult == "VALID"
    emails = recipient_emails(soap.konnektor, (WEBER, "RSA"))
    kim = soap.konnektor.sign_document(CONTEXT, handle(soap.konnektor, WEBER), PDF, emails, "RSA")
    assert ParsedSignedData.load(kim).has_recipient_emails
    assert _verify(soap, kim).VerificationResult.HighLevelResult == "VALID"


@pytest.mark.parametrize(
    ("signature_type", "named"),
    [
        ("urn:ietf:rfc:3275", "XAdES"),
        ("http://uri.etsi.org/02778/3", "PAdES"),
        ("urn:example:unknown", "unknown"),
    ],
)
def test_signature_types_this_konnektor_does_not_make(
    soap: RunningKonnektor, signature_type: str, named: str
) -> None:
    """XAdES, PAdES and unknown SignatureTypes are answered with 4112 "Signaturtyp nicht
    unterstützt" (the decision is in docs/decisions.md), naming the one type it makes."""
    with pytest.raises(zeep.exceptions.Fault) as info:
        _sign(soap, WEBER, "RSA", include_content=True, signature_type=signature_type)
    found = trace(info.value)
    assert (found["Code"], found["ErrorText"]) == ("4112", "Signaturtyp nicht unterstützt")
    assert named in found["Detail"]
    assert CMS in found["Detail"]


def test_kim_rules_and_unknown_properties(soap: RunningKonnektor) -> None:
    """With the RecipientEmailsAttribute the KIM rule holds: no detached signature (4000,
    KOM-LE-A_2190). A property the Konnektor does not know is refused, not ignored."""
    emails = recipient_emails(soap.konnektor, (WEBER, "RSA"))
    with pytest.raises(zeep.exceptions.Fault) as detached:
        _sign(
            soap,
            WEBER,
            "RSA",
            include_content=False,
            properties=[cms_attribute_property(emails)],
        )
    assert trace(detached.value)["Code"] == "4000"
    assert "KOM-LE-A_2190" in trace(detached.value)["Detail"]
    with pytest.raises(zeep.exceptions.Fault) as unknown:
        _sign(
            soap,
            WEBER,
            "RSA",
            include_content=True,
            properties=[{"Identifier": "urn:example:CommitmentType"}],
        )
    assert trace(unknown.value)["Code"] == "4000"
    assert "urn:example:CommitmentType" in trace(unknown.value)["Detail"]


def test_an_hba_document_signature_needs_the_qes_pin(soap: RunningKonnektor) -> None:
    """An HBA signs with C.HP.QES, whose PIN.QES this emulation does not offer: 4058 with the
    reason, over SOAP as in-process."""
    with pytest.raises(zeep.exceptions.Fault) as info:
        _sign(soap, MEYER, "ECC", include_content=True, context=HBA_CTX)
    found = trace(info.value)
    assert found["Code"] == "4058"
    assert "PIN.QES" in found["Detail"]


def _encrypt(soap: RunningKonnektor, certificates: list[bytes], **extra: Any) -> bytes:
    response = soap.service("EncryptionService").EncryptDocument(
        Context=extra.pop("context", CTX),
        RecipientKeys={"Certificate": certificates, **extra.pop("keys", {})},
        Document={"Base64Data": {"_value_1": PDF, "MimeType": "application/pdf"}},
        **extra,
    )
    assert response.Status.Result == "OK"
    encrypted: bytes = response.Document.Base64Data._value_1
    return encrypted


def _decrypt(soap: RunningKonnektor, iccsn: str, document: bytes, context: Any = CTX) -> bytes:
    response = soap.service("EncryptionService").DecryptDocument(
        Context=context,
        PrivateKeyOnCard={"CardHandle": handle(soap.konnektor, iccsn), "KeyReference": "C.ENC"},
        Document={"Base64Data": {"_value_1": document}},
    )
    assert response.Status.Result == "OK"
    plaintext: bytes = response.Document.Base64Data._value_1
    return plaintext


@pytest.mark.parametrize(
    "inputs", [{}, {"OptionalInputs": {"EncryptionType": CMS}}], ids=["no-inputs", "cms"]
)
def test_encrypt_and_decrypt_a_document_without_kim_properties(
    soap: RunningKonnektor, inputs: dict[str, Any]
) -> None:
    """TUC_KON_070/071 (TIP1-A_4621/A_4622): EncryptDocument without UnprotectedProperties
    encrypts for an RSA, an ECC and an HBA certificate at once (AuthEnvelopedData,
    AES-256-GCM, no unauthAttrs); each card decrypts it."""
    targets = [(WEBER, "RSA", CONTEXT), (SONNE, "ECC", CONTEXT), (MEYER, "RSA", HBA_CONTEXT)]
    certificates = [
        soap.konnektor.read_card_certificate(context, handle(soap.konnektor, iccsn), "C.ENC", c)
        for iccsn, c, context in targets
    ]
    der = [c.public_bytes(serialization.Encoding.DER) for c in certificates]
    encrypted = _encrypt(soap, der, **inputs)
    info = asn1crypto.cms.ContentInfo.load(encrypted)
    assert info["content_type"].native == "authenticated_enveloped_data"
    assert info["content"]["unauth_attrs"].native is None
    assert len(info["content"]["recipient_infos"]) == 3
    assert _decrypt(soap, WEBER, encrypted) == PDF
    assert _decrypt(soap, SONNE, encrypted) == PDF
    assert _decrypt(soap, MEYER, encrypted, HBA_CTX) == PDF


def test_encrypt_to_the_certificate_on_card_without_kim_properties(
    soap: RunningKonnektor,
) -> None:
    """RecipientKeys/CertificateOnCard (RSA_ECC: both C.ENC of the card) works without KIM
    properties too; a certificate that is no encryption certificate is refused (4000)."""
    card_handle = handle(soap.konnektor, KLEIN)
    encrypted = _encrypt(soap, [], keys={"CertificateOnCard": {"CardHandle": card_handle}})
    assert _decrypt(soap, KLEIN, encrypted) == PDF
    osig = soap.konnektor.read_card_certificate(CONTEXT, card_handle, "C.SIG", "RSA")
    with pytest.raises(zeep.exceptions.Fault) as info:
        _encrypt(soap, [osig.public_bytes(serialization.Encoding.DER)])
    assert trace(info.value)["Code"] == "4000"
    assert "C.HCI.ENC" in trace(info.value)["Detail"]


# --- openssl as the independent oracle --------------------------------------------------------


def _export(demo_dir: Path, iccsn: str, kind: str, crypt: str) -> tuple[str, str]:
    """(key PEM path, certificate PEM path) of a demo card's exported test key."""
    demo = json.loads((demo_dir / "demo.json").read_text(encoding="utf-8"))
    participant = next(p for p in demo["participants"] if p["card"]["iccsn"] == iccsn)
    certs = participant["export"][f"{kind}_cert"]
    index = next(i for i, path in enumerate(certs) if f"-{crypt.lower()}." in path)
    return participant["export"][f"{kind}_key"][index], certs[index]


def _openssl(*args: str, data: bytes = b"") -> bytes:
    result = subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@pytest.mark.openssl
@requires_openssl
@pytest.mark.parametrize(("iccsn", "crypt"), [(WEBER, "RSA"), (SONNE, "ECC")])
def test_openssl_verifies_signatures_and_decrypts_documents(
    soap: RunningKonnektor, demo_dir: Path, tmp_path: Path, iccsn: str, crypt: str
) -> None:
    """`openssl cms -verify` checks the Konnektor's detached and enveloping signatures
    (signature and certificate chain up to the demo's trust anchors), and `openssl cms
    -decrypt` opens its generic AuthEnvelopedData with the card's exported C.ENC key."""
    document = tmp_path / "eau.pdf"
    document.write_bytes(PDF)
    anchors = tmp_path / "anchors.pem"
    demo = json.loads((demo_dir / "demo.json").read_text(encoding="utf-8"))
    anchors.write_bytes(b"".join(Path(p).read_bytes() for p in demo["trust_anchors"]))
    for include_content in (False, True):
        signature = tmp_path / f"signature-{include_content}.der"
        signature.write_bytes(_sign(soap, iccsn, crypt, include_content=include_content))
        args = ["cms", "-verify", "-binary", "-inform", "DER", "-in", str(signature)]
        args += ["-CAfile", str(anchors), "-purpose", "any"]
        if not include_content:
            args += ["-content", str(document)]
        assert _openssl(*args) == PDF
    certificate = soap.konnektor.read_card_certificate(
        CONTEXT, handle(soap.konnektor, iccsn), "C.ENC", crypt
    )
    encrypted = tmp_path / "encrypted.der"
    encrypted.write_bytes(_encrypt(soap, [certificate.public_bytes(serialization.Encoding.DER)]))
    key, cert = _export(demo_dir, iccsn, "enc", crypt)
    plaintext = _openssl(
        *("cms", "-decrypt", "-binary", "-inform", "DER", "-in", str(encrypted)),
        *("-recip", cert, "-inkey", key),
    )
    assert plaintext == PDF


@pytest.mark.openssl
@requires_openssl
@pytest.mark.parametrize(("iccsn", "crypt"), [(KLEIN, "RSA"), (KLEIN, "ECC")])
def test_documents_openssl_made_verify_and_decrypt(
    soap: RunningKonnektor, demo_dir: Path, tmp_path: Path, iccsn: str, crypt: str
) -> None:
    """What another program makes with the same card keys: `openssl cms -sign` (detached
    PKCS#1 v1.5 / ECDSA, with and without -cades) is VALID in VerifyDocument, `openssl cms
    -encrypt -aes-256-gcm` to the card's C.ENC opens in DecryptDocument."""
    document = tmp_path / "eau.pdf"
    document.write_bytes(PDF)
    key, cert = _export(demo_dir, iccsn, "osig", crypt)
    for extra in ((), ("-cades",), ("-nodetach", "-cades")):
        signature = _openssl(
            *("cms", "-sign", "-binary", "-outform", "DER", "-in", str(document)),
            *("-signer", cert, "-inkey", key, *extra),
        )
        detached = "-nodetach" not in extra
        result = _verify(soap, signature, PDF if detached else None)
        assert result.VerificationResult.HighLevelResult == "VALID", extra
    _, enc_cert = _export(demo_dir, iccsn, "enc", crypt)
    keyopts = (
        ("-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256")
        if crypt == "RSA"
        else ("-keyopt", "ecdh_kdf_md:sha256")
    )
    encrypted = _openssl(
        *("cms", "-encrypt", "-aes-256-gcm", "-binary", "-outform", "DER"),
        *("-in", str(document), "-recip", enc_cert, *keyopts),
    )
    assert _decrypt(soap, iccsn, encrypted) == PDF
