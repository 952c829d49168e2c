"""gematik's schemas as the yardstick (issue 14, item 5): the package ships the full schema set
(conn/, ext/, tel/ with their imports and gematik's LICENSE), every schema compiles with lxml
without the network, and one pass over every operation the server answers shows each request
sent and each response received valid against the service's XSD (checked by the conftest's
WireCheck with lxml's XMLSchema), connector.sds against ServiceDirectory.xsd."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
import zeep.exceptions
from conftest import RunningKonnektor
from cryptography.hazmat.primitives import serialization
from konnektor_helpers import CONTEXT, WEBER, handle
from lxml import etree
from soap_helpers import CTX, cms_attribute_property, recipient_emails

from kim_appliance.konnektor.soap import OPERATIONS, SERVICES, WSDL_DIR
from kim_appliance.konnektor.soap.services import safe_parser, service_directory_schema

#: The files issue 14 names, which the service schemas' imports need.
NAMED = (
    "conn/CardTerminalInfo.xsd",
    "ext/XAdES.xsd",
    "ext/tsl.xsd",
    "ext/oasis-sstc-saml-schema-assertion-1.1.xsd",
    "ext/saml-schema-assertion-2.0.xsd",
    "LICENSE",
)
CMS = "urn:ietf:rfc:5652"


def test_the_package_ships_gematiks_schema_set() -> None:
    """The named schemas and gematik's Apache-2.0 LICENSE are in the package, and every
    schemaLocation of every shipped XSD and WSDL resolves to a shipped file."""
    for name in NAMED:
        assert (WSDL_DIR / name).is_file(), name
    assert "Apache License" in (WSDL_DIR / "LICENSE").read_text(encoding="utf-8")
    for path in [*WSDL_DIR.rglob("*.xsd"), *WSDL_DIR.rglob("*.wsdl")]:
        tree = etree.parse(str(path), safe_parser())
        for element in tree.iter("{*}import", "{*}include"):
            location = element.get("schemaLocation") or element.get("location")
            if location is None or location.startswith("http"):
                continue
            assert (path.parent / location).resolve().is_file(), f"{path}: {location}"


@pytest.mark.parametrize(
    "schema",
    sorted(str(p.relative_to(WSDL_DIR)) for p in WSDL_DIR.rglob("*.xsd")),
)
def test_every_shipped_schema_compiles_offline(schema: str) -> None:
    """lxml compiles each XSD with a parser that may not touch the network."""
    etree.XMLSchema(etree.parse(str(WSDL_DIR / schema), safe_parser()))


def _every_operation(soap: RunningKonnektor) -> None:
    """Call each served operation once, successfully, as a client system would."""
    card_handle = handle(soap.konnektor, WEBER)
    events = soap.service("EventService")
    events.GetCards(Context=CTX)
    events.GetCardTerminals(Context=CTX)
    events.GetResourceInformation(Context=CTX, CardHandle=card_handle)
    cards = soap.service("CardService")
    cards.GetPinStatus(Context=CTX, CardHandle=card_handle, PinTyp="PIN.SMC")
    cards.VerifyPin(Context=CTX, CardHandle=card_handle, PinTyp="PIN.SMC")
    certificates = soap.service("CertificateService")
    certificates.ReadCardCertificate(
        CardHandle=card_handle, Context=CTX, CertRefList={"CertRef": ["C.ENC", "C.SIG"]}
    )
    enc = soap.konnektor.read_card_certificate(CONTEXT, card_handle, "C.ENC")
    enc_der = enc.public_bytes(serialization.Encoding.DER)
    certificates.VerifyCertificate(
        Context=CTX, X509Certificate=enc_der, VerificationTime=dt.datetime.now(dt.UTC)
    )
    signatures = soap.service("SignatureService")
    emails = recipient_emails(soap.konnektor, (WEBER, "RSA"))
    signed = signatures.SignDocument(
        CardHandle=card_handle,
        Crypt="RSA",
        Context=CTX,
        TvMode="NONE",
        JobNumber=signatures.GetJobNumber(Context=CTX),
        SignRequest=[
            {
                "RequestID": "kim",
                "OptionalInputs": {
                    "SignatureType": CMS,
                    "Properties": {
                        "SignedProperties": {"Property": [cms_attribute_property(emails)]}
                    },
                    "IncludeEContent": True,
                },
                "Document": {"Base64Data": {"_value_1": b"KIM", "MimeType": "message/rfc822"}},
                "IncludeRevocationInfo": False,
            },
            {
                "RequestID": "detached",
                "OptionalInputs": {"SignatureType": CMS, "IncludeEContent": False},
                "Document": {"Base64Data": {"_value_1": b"eAU", "MimeType": "application/pdf"}},
                "IncludeRevocationInfo": False,
            },
        ],
    )
    signatures.VerifyDocument(
        Context=CTX,
        TvMode="NONE",
        Document={"Base64Data": {"_value_1": b"eAU", "MimeType": "application/pdf"}},
        SignatureObject={"Base64Signature": signed[1].SignatureObject.Base64Signature},
        IncludeRevocationInfo=False,
    )
    encryption = soap.service("EncryptionService")
    encrypted = encryption.EncryptDocument(
        Context=CTX,
        RecipientKeys={"Certificate": [enc_der]},
        Document={"Base64Data": {"_value_1": b"eAU", "MimeType": "application/pdf"}},
        OptionalInputs={"EncryptionType": CMS},
    )
    encryption.DecryptDocument(
        Context=CTX,
        PrivateKeyOnCard={"CardHandle": card_handle, "KeyReference": "C.ENC", "Crypt": "RSA"},
        Document={"Base64Data": {"_value_1": encrypted.Document.Base64Data._value_1}},
    )
    soap.service("AuthSignatureService").ExternalAuthenticate(
        CardHandle=card_handle,
        Context=CTX,
        OptionalInputs={"SignatureType": "urn:ietf:rfc:3447", "SignatureSchemes": "RSASSA-PSS"},
        BinaryString={"Base64Data": {"_value_1": hashlib.sha256(b"jwt").digest()}},
    )


def test_every_operation_request_and_response_is_valid_against_the_xsd(
    soap: RunningKonnektor,
) -> None:
    """Each operation the server serves was sent and answered over HTTPS, and both messages
    passed lxml's XMLSchema of the service's XSD (the fixture fails the test on any
    violation); faults were checked against TelematikError.xsd. connector.sds is valid
    against ServiceDirectory.xsd."""
    _every_operation(soap)
    with pytest.raises(zeep.exceptions.Fault):  # a fault per service: its GERROR:Error too
        soap.service("CardService").GetPinStatus(Context=CTX, CardHandle="none", PinTyp="PIN.SMC")
    for spec in SERVICES:
        check = soap.clients[spec.name].check
        assert not check.problems, check.problems
        for operation in OPERATIONS[spec.name]:
            assert f"sent {operation}" in check.seen, (spec.name, operation)
            assert f"received {operation}Response" in check.seen, (spec.name, operation)
    assert "received Fault" in soap.clients["CardService"].check.seen
    sds = etree.fromstring(soap.http.get(soap.url("/connector.sds"), timeout=10).content)
    schema = service_directory_schema()
    assert schema.validate(sds), schema.error_log


def test_served_operations_are_the_ones_driven_here() -> None:
    """If the server learns a new operation, the pass above must learn it too."""
    served = {op for ops in OPERATIONS.values() for op in ops}
    source = Path(__file__).read_text(encoding="utf-8")
    missing = {op for op in served if f".{op}(" not in source}
    assert not missing, f"operations served but not validated on the wire: {missing}"
