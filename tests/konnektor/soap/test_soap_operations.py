"""Every Konnektor operation driven over HTTPS by zeep, a SOAP client written by others and
built from gematik's WSDLs; every message is validated against the XSDs (conftest). Results
are checked with independent means: the CMS reader, cryptography's verifiers, the card's own
certificates."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
import zeep
import zeep.exceptions
from conftest import RunningKonnektor
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from konnektor_helpers import CONTEXT, HBA_CONTEXT, KLEIN, MEYER, SONNE, WEBER, handle
from soap_helpers import CTX, DOCUMENT, HBA_CTX, cms_attribute_property, recipient_emails, trace

from kim_appliance.cms.signed import read_signed_data
from kim_appliance.konnektor.soap import OPERATIONS


def test_get_cards_lists_the_cards_of_the_context(soap: RunningKonnektor) -> None:
    """EventService GetCards: the Mandant's SMC-Bs; the HBA only with its holder's UserId."""
    events = soap.service("EventService")
    plain = events.GetCards(Context=CTX)
    assert plain.Status.Result == "OK"
    iccsns = {card.Iccsn for card in plain.Cards.Card}
    assert {WEBER, SONNE, KLEIN} <= iccsns
    assert MEYER not in iccsns
    with_user = events.GetCards(Context=HBA_CTX, CardType="HBA")
    assert [(c.Iccsn, c.CardType) for c in with_user.Cards.Card] == [(MEYER, "HBA")]
    weber = next(c for c in plain.Cards.Card if c.Iccsn == WEBER)
    assert weber.CardHandle == handle(soap.konnektor, WEBER)
    assert weber.CardHolderName
    no_egk = events.GetCards(Context=CTX, CardType="EGK")
    assert no_egk.Status.Result == "OK"
    assert not (no_egk.Cards and no_egk.Cards.Card)  # zeep reads an empty <Cards/> as None


def test_get_card_terminals_names_the_virtual_terminal(soap: RunningKonnektor) -> None:
    response = soap.service("EventService").GetCardTerminals(Context=CTX)
    terminals = response.CardTerminals.CardTerminal
    assert [t.CtId for t in terminals] == ["CT1"]
    assert terminals[0].Connected is True
    assert terminals[0].Slots >= 5
    assert "AP1" in terminals[0].WorkplaceIds.WorkplaceId


def test_get_resource_information_names_card_terminal_and_konnektor(
    soap: RunningKonnektor,
) -> None:
    """EventService GetResourceInformation (TIP1-A_4607): the card by CardHandle or Iccsn
    with its terminal, a terminal by CtId, always the Konnektor's state; a card the context
    cannot see is 4008, an unknown terminal 4000."""
    events = soap.service("EventService")
    card_handle = handle(soap.konnektor, WEBER)
    by_handle = events.GetResourceInformation(Context=CTX, CardHandle=card_handle)
    assert by_handle.Status.Result == "OK"
    assert (by_handle.Card.Iccsn, by_handle.Card.CardType) == (WEBER, "SMC-B")
    assert by_handle.CardTerminal.CtId == by_handle.Card.CtId == "CT1"
    assert by_handle.Connector.VPNTIStatus.ConnectionStatus == "Online"
    # the XSD repeats the sequence, so zeep lists it as _value_1: [{"ErrorState": ...}]
    states = [item["ErrorState"] for item in by_handle.Connector.OperatingState._value_1]
    assert "EC_No_VPN_TI_Connection" in {state.ErrorCondition for state in states}
    assert not any(state.Value for state in states)
    by_iccsn = events.GetResourceInformation(Context=HBA_CTX, Iccsn=MEYER)
    assert by_iccsn.Card.CardHandle == handle(soap.konnektor, MEYER)
    terminal_only = events.GetResourceInformation(Context=CTX, CtId="CT1")
    assert terminal_only.Card is None
    assert terminal_only.CardTerminal.Connected is True
    with pytest.raises(zeep.exceptions.Fault) as hidden:
        events.GetResourceInformation(Context=CTX, Iccsn=MEYER)  # the HBA needs its UserId
    assert trace(hidden.value)["Code"] == "4008"
    with pytest.raises(zeep.exceptions.Fault) as unknown:
        events.GetResourceInformation(Context=CTX, CtId="CT9")
    assert trace(unknown.value)["Code"] == "4000"


def test_pin_status_and_verify_pin(soap: RunningKonnektor) -> None:
    """CardService GetPinStatus/VerifyPin on the SMC-B (PIN.SMC) and the HBA (PIN.CH)."""
    cards = soap.service("CardService")
    status = cards.GetPinStatus(
        Context=CTX, CardHandle=handle(soap.konnektor, WEBER), PinTyp="PIN.SMC"
    )
    assert (status.Status.Result, status.PinStatus, status.LeftTries) == ("OK", "VERIFIED", 3)
    verified = cards.VerifyPin(
        Context=HBA_CTX, CardHandle=handle(soap.konnektor, MEYER), PinTyp="PIN.CH"
    )
    assert (verified.PinResult, verified.LeftTries) == ("OK", 3)
    after = cards.GetPinStatus(
        Context=HBA_CTX, CardHandle=handle(soap.konnektor, MEYER), PinTyp="PIN.CH"
    )
    assert after.PinStatus == "VERIFIED"


@pytest.mark.parametrize(("iccsn", "crypt"), [(WEBER, "RSA"), (SONNE, "ECC"), (KLEIN, "ECC")])
def test_read_card_certificate_returns_the_cards_certificates(
    soap: RunningKonnektor, iccsn: str, crypt: str
) -> None:
    """ReadCardCertificate for C.ENC and C.AUT: DER, issuer/serial and subject agree."""
    response = soap.service("CertificateService").ReadCardCertificate(
        CardHandle=handle(soap.konnektor, iccsn),
        Context=CTX,
        CertRefList={"CertRef": ["C.ENC", "C.AUT"]},
        Crypt=crypt,
    )
    infos = response.X509DataInfoList.X509DataInfo
    assert [i.CertRef for i in infos] == ["C.ENC", "C.AUT"]
    for info in infos:
        cert = x509.load_der_x509_certificate(info.X509Data.X509Certificate)
        expected = soap.konnektor.read_card_certificate(
            HBA_CONTEXT, handle(soap.konnektor, iccsn), info.CertRef, crypt
        )
        assert cert == expected
        assert info.X509Data.X509IssuerSerial.X509SerialNumber == str(cert.serial_number)
        assert info.X509Data.X509SubjectName == cert.subject.rfc4514_string()


def _sign(soap: RunningKonnektor, iccsn: str, crypt: str, document: bytes = DOCUMENT) -> bytes:
    signatures = soap.service("SignatureService")
    job = signatures.GetJobNumber(Context=CTX)
    response = signatures.SignDocument(
        CardHandle=handle(soap.konnektor, iccsn),
        Crypt=crypt,
        Context=CTX,
        TvMode="NONE",
        JobNumber=job,
        SignRequest=[
            {
                "RequestID": "SignRequestNo_001",
                "OptionalInputs": {
                    "SignatureType": "urn:ietf:rfc:5652",
                    "Properties": {
                        "SignedProperties": {
                            "Property": [
                                cms_attribute_property(
                                    recipient_emails(
                                        soap.konnektor, (iccsn, "RSA" if iccsn == WEBER else "ECC")
                                    )
                                )
                            ]
                        }
                    },
                    "IncludeEContent": True,
                },
                "Document": {"Base64Data": {"_value_1": document, "MimeType": "text/plain"}},
                "IncludeRevocationInfo": False,
            }
        ],
    )
    [answer] = response
    assert (answer.RequestID, answer.Status.Result) == ("SignRequestNo_001", "OK")
    assert answer.SignatureObject.Base64Signature.Type == "urn:ietf:rfc:5652"
    signed: bytes = answer.SignatureObject.Base64Signature._value_1
    return signed


@pytest.mark.parametrize(("iccsn", "crypt"), [(WEBER, "RSA"), (SONNE, "ECC"), (KLEIN, "RSA_ECC")])
def test_sign_document_makes_a_kim_signed_data(
    soap: RunningKonnektor, iccsn: str, crypt: str
) -> None:
    """SignDocument (KOM-LE-A_2190): SignedData with the eContent and the signed
    recipient-emails from the CMSAttribute; the CMS reader verifies it with the card's
    C.HCI.OSIG (ECC when the card has it and Crypt is RSA_ECC, digest §2.8)."""
    der = _sign(soap, iccsn, crypt)
    content, report = read_signed_data(der)
    assert content == DOCUMENT
    osig_crypt = "RSA" if crypt == "RSA" else "ECC"
    expected = soap.konnektor.read_card_certificate(
        CONTEXT, handle(soap.konnektor, iccsn), "C.SIG", osig_crypt
    )
    assert report.signer_certificate == expected
    assert report.recipient_emails == recipient_emails(
        soap.konnektor, (iccsn, "RSA" if iccsn == WEBER else "ECC")
    )


def _verify(soap: RunningKonnektor, signature: bytes) -> object:
    return soap.service("SignatureService").VerifyDocument(
        Context=CTX,
        TvMode="NONE",
        OptionalInputs={"ReturnVerificationReport": {"IncludeVerifier": False}},
        SignatureObject={"Base64Signature": {"_value_1": signature, "Type": "urn:ietf:rfc:5652"}},
        IncludeRevocationInfo=False,
    )


def test_verify_document_valid_and_manipulated(soap: RunningKonnektor) -> None:
    """VerifyDocument: VALID for the card's signature; INVALID with 4115 (content
    manipulated) and 4253 (no signature) in the Status' GERROR:Error (digest §1.6)."""
    der = _sign(soap, WEBER, "RSA")
    valid = _verify(soap, der)
    assert (valid.Status.Result, valid.VerificationResult.HighLevelResult) == ("OK", "VALID")
    assert valid.Status.Error is None
    tampered = _verify(soap, der.replace(b"Hallo", b"Hallx"))
    assert tampered.VerificationResult.HighLevelResult == "INVALID"
    assert tampered.Status.Result == "Warning"
    assert tampered.Status.Error.Trace[0].Code == 4115
    nothing = _verify(soap, b"not a signature")
    assert nothing.Status.Error.Trace[0].Code in (4253, 4112)


@pytest.mark.parametrize(("iccsn", "crypt"), [(WEBER, "RSA"), (SONNE, "ECC"), (MEYER, "ECC")])
def test_encrypt_then_decrypt_document_round_trip(
    soap: RunningKonnektor, iccsn: str, crypt: str
) -> None:
    """EncryptDocument to a card's C.ENC (RSA: KTRI, ECC: KARI) with the recipient-emails as
    unprotected property (KOM-LE-A_2191), then DecryptDocument with that card."""
    context = HBA_CTX if iccsn == MEYER else CTX
    card_handle = handle(soap.konnektor, iccsn)
    cert = soap.konnektor.read_card_certificate(HBA_CONTEXT, card_handle, "C.ENC", crypt)
    crypt_service = soap.service("EncryptionService")
    encrypted = crypt_service.EncryptDocument(
        Context=context,
        RecipientKeys={"Certificate": [cert.public_bytes(serialization.Encoding.DER)]},
        Document={"Base64Data": {"_value_1": DOCUMENT, "MimeType": "message/rfc822"}},
        OptionalInputs={
            "EncryptionType": "urn:ietf:rfc:5652",
            "UnprotectedProperties": {
                "Property": [
                    cms_attribute_property(recipient_emails(soap.konnektor, (iccsn, crypt)))
                ]
            },
        },
    )
    assert encrypted.Status.Result == "OK"
    ciphertext = encrypted.Document.Base64Data._value_1
    assert DOCUMENT not in ciphertext
    decrypted = crypt_service.DecryptDocument(
        Context=context,
        PrivateKeyOnCard={"CardHandle": card_handle, "KeyReference": "C.ENC", "Crypt": crypt},
        Document={"Base64Data": {"_value_1": ciphertext}},
    )
    assert decrypted.Document.Base64Data._value_1 == DOCUMENT


def test_encrypt_document_to_the_certificate_on_card(soap: RunningKonnektor) -> None:
    """RecipientKeys/CertificateOnCard with Crypt RSA_ECC: both C.ENC of the card."""
    card_handle = handle(soap.konnektor, KLEIN)
    crypt_service = soap.service("EncryptionService")
    encrypted = crypt_service.EncryptDocument(
        Context=CTX,
        RecipientKeys={"CertificateOnCard": {"CardHandle": card_handle, "Crypt": "RSA_ECC"}},
        Document={"Base64Data": {"_value_1": DOCUMENT}},
        OptionalInputs={
            "UnprotectedProperties": {
                "Property": [
                    cms_attribute_property(
                        recipient_emails(soap.konnektor, (KLEIN, "RSA"), (KLEIN, "ECC"))
                    )
                ]
            }
        },
    )
    decrypted = crypt_service.DecryptDocument(
        Context=CTX,
        PrivateKeyOnCard={"CardHandle": card_handle},
        Document={"Base64Data": {"_value_1": encrypted.Document.Base64Data._value_1}},
    )
    assert decrypted.Document.Base64Data._value_1 == DOCUMENT


@pytest.mark.parametrize("scheme", ["RSASSA-PSS", "RSASSA-PKCS1-v1_5", "ECDSA"])
def test_external_authenticate_signs_the_hash(soap: RunningKonnektor, scheme: str) -> None:
    """AuthSignatureService ExternalAuthenticate: RSASSA-PSS/PKCS#1 v1.5 with the RSA AUT key,
    ECDSA (urn:bsi:tr:03111:ecdsa, plain r||s) with the ECC AUT key; verified with C.AUT."""
    card_handle = handle(soap.konnektor, KLEIN)
    digest = hashlib.sha256(b"header.payload").digest()
    if scheme == "ECDSA":
        inputs = {"SignatureType": "urn:bsi:tr:03111:ecdsa"}
    else:
        inputs = {"SignatureType": "urn:ietf:rfc:3447", "SignatureSchemes": scheme}
    response = soap.service("AuthSignatureService").ExternalAuthenticate(
        CardHandle=card_handle,
        Context=CTX,
        OptionalInputs=inputs,
        BinaryString={"Base64Data": {"_value_1": digest}},
    )
    signature = response.SignatureObject.Base64Signature._value_1
    crypt = "ECC" if scheme == "ECDSA" else "RSA"
    aut = soap.konnektor.read_card_certificate(CONTEXT, card_handle, "C.AUT", crypt)
    key = aut.public_key()
    if scheme == "ECDSA":
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert len(signature) == 64
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    else:
        assert isinstance(key, rsa.RSAPublicKey)
        pad = (
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            if scheme == "RSASSA-PSS"
            else padding.PKCS1v15()
        )
        key.verify(signature, digest, pad, Prehashed(hashes.SHA256()))


def test_verify_certificate_valid_and_foreign(soap: RunningKonnektor) -> None:
    """VerifyCertificate: a card certificate is VALID with its professionOID as Role; a
    self-signed outsider is INVALID with BUILD_CHAIN_FAILED."""
    certs = soap.service("CertificateService")
    card_cert = soap.konnektor.read_card_certificate(
        CONTEXT, handle(soap.konnektor, WEBER), "C.ENC"
    )
    valid = certs.VerifyCertificate(
        Context=CTX, X509Certificate=card_cert.public_bytes(serialization.Encoding.DER)
    )
    assert valid.VerificationStatus.VerificationResult == "VALID"
    assert valid.RoleList.Role[0].startswith("1.2.276.0.76.4.")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "outsider")])
    now = dt.datetime.now(dt.UTC)
    outsider = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    invalid = certs.VerifyCertificate(
        Context=CTX, X509Certificate=outsider.public_bytes(serialization.Encoding.DER)
    )
    assert invalid.VerificationStatus.VerificationResult == "INVALID"
    assert invalid.VerificationStatus.Error.Trace[0].ErrorText == "BUILD_CHAIN_FAILED"


def test_every_served_operation_is_in_the_wsdl(zeep_clients: dict[str, object]) -> None:
    """The operations the server answers are operations of the WSDL version it announces."""
    for service, operations in OPERATIONS.items():
        client = zeep_clients[service].client  # type: ignore[attr-defined]
        binding = next(iter(client.wsdl.bindings.values()))
        assert set(operations) <= set(binding._operations), service
        assert operations, f"{service} serves nothing"


@pytest.mark.slow
def test_large_document_round_trip(soap: RunningKonnektor) -> None:
    """A 12 MB document (16 MB of base64, beyond libxml2's default 10 MB text-node limit)
    goes through EncryptDocument and DecryptDocument intact."""
    document = DOCUMENT + bytes(range(256)) * (12 * 1024 * 1024 // 256)
    card_handle = handle(soap.konnektor, WEBER)
    cert = soap.konnektor.read_card_certificate(CONTEXT, card_handle, "C.ENC")
    entry = soap.clients["EncryptionService"]
    big = zeep.Client(
        wsdl=entry.client.wsdl.location,
        transport=entry.client.transport,
        settings=zeep.Settings(forbid_entities=False, xml_huge_tree=True),
    )
    service = big.create_service(entry.binding, soap.url("/ws/EncryptionService"))
    emails = recipient_emails(soap.konnektor, (WEBER, "RSA"))
    encrypted = service.EncryptDocument(
        Context=CTX,
        RecipientKeys={"Certificate": [cert.public_bytes(serialization.Encoding.DER)]},
        Document={"Base64Data": {"_value_1": document}},
        OptionalInputs={"UnprotectedProperties": {"Property": [cms_attribute_property(emails)]}},
    )
    decrypted = service.DecryptDocument(
        Context=CTX,
        PrivateKeyOnCard={"CardHandle": card_handle},
        Document={"Base64Data": {"_value_1": encrypted.Document.Base64Data._value_1}},
    )
    assert decrypted.Document.Base64Data._value_1 == document
