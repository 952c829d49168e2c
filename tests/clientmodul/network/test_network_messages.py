"""The SOAP requests the Clientmodul sends are valid against gematik's XSDs, carry the
SOAPActions of gematik's WSDLs, and the Konnektor's faults read back with their codes
(digest §1.8; api-telematik ``conn/``)."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from lxml import etree

from kim_appliance.clientmodul.network import konnektor_messages as messages
from kim_appliance.clientmodul.network.sds import parse_service_directory
from kim_appliance.clientmodul.ports import (
    CallContext,
    CardType,
    KonnektorFault,
    KonnektorUnreachable,
    ecc_capable,
    version_tuple,
)
from kim_appliance.cms.recipient_emails import RecipientEmail, encode_recipient_emails
from kim_appliance.konnektor.errors import KonnektorError
from kim_appliance.konnektor.soap.directory import connector_sds
from kim_appliance.konnektor.soap.envelope import envelope, fault, new
from kim_appliance.konnektor.soap.services import SERVICES, SERVICES_BY_NAME, schema_for

CONTEXT = CallContext("Mandant1", "PVS1", "AP1", "dr.meyer")


@pytest.fixture(scope="module")
def certificate(kim_cm_template: Path) -> x509.Certificate:
    import json

    demo = json.loads((kim_cm_template / "demo.json").read_text())
    path = demo["participants"][0]["export"]["enc_cert"][0]
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def requests(certificate: x509.Certificate) -> list[tuple[messages.Operation, etree._Element]]:
    emails = encode_recipient_emails(
        [RecipientEmail.for_certificate("praxis.weber@fd1.kim.telematik-test", certificate)]
    )
    return [
        (messages.GET_CARDS, messages.get_cards(CONTEXT, CardType.SMC_B)),
        (messages.GET_CARDS, messages.get_cards(CallContext("M", "C", "W"), None)),
        (messages.GET_PIN_STATUS, messages.get_pin_status(CONTEXT, "h-1", "PIN.SMC")),
        (
            messages.READ_CARD_CERTIFICATE,
            messages.read_card_certificate(CONTEXT, "h-1", "C.ENC", "ECC"),
        ),
        (
            messages.VERIFY_CERTIFICATE,
            messages.verify_certificate(CONTEXT, certificate, dt.datetime.now(dt.UTC)),
        ),
        (messages.GET_JOB_NUMBER, messages.get_job_number(CONTEXT)),
        (
            messages.SIGN_DOCUMENT,
            messages.sign_document(CONTEXT, "h-1", "RSA_ECC", "KIM-001", emails),
        ),
        (messages.DECRYPT_DOCUMENT, messages.decrypt_document(CONTEXT, "h-1", "RSA")),
        (
            messages.EXTERNAL_AUTHENTICATE,
            messages.external_authenticate(CONTEXT, "h-1", b"\x01" * 32, "RSASSA-PSS"),
        ),
        (
            messages.EXTERNAL_AUTHENTICATE,
            messages.external_authenticate(CONTEXT, "h-1", b"\x01" * 32, "ECDSA"),
        ),
    ]


def test_every_request_is_valid_against_gematiks_xsd(certificate: x509.Certificate) -> None:
    """KOM-LE-A_2177, KOM-LE-A_2190: every request element the Clientmodul sends validates
    against the XSD of the service
    version it names in connector.sds (the same schemas the Konnektor checks)."""
    for operation, request in requests(certificate):
        spec = SERVICES_BY_NAME[operation.service]
        assert spec.wsdl_namespace == operation.wsdl_namespace
        schema = schema_for(operation.service)
        assert schema.validate(request), (etree.QName(request).localname, schema.error_log)
        # and with a document in the placeholder's place, in the envelope as sent: the
        # Konnektor reads the same element
        has_document = messages.PLACEHOLDER.encode() in etree.tostring(request)
        document = b"\x30\x03\x02\x01\x05" if has_document else None
        sent = messages.joined(messages.envelope(request, document))
        body = etree.fromstring(sent)[0][0]
        assert schema.validate(body), schema.error_log


def test_soap_actions_are_the_wsdls(certificate: x509.Certificate) -> None:
    """The SOAPAction header of each operation is the one gematik's WSDL binds (DecryptDocument
    with its extra ``crypt/``, digest §1.8)."""
    actions = set()
    for spec in SERVICES:
        tree = etree.parse(str(spec.wsdl_path))
        for operation in tree.iter("{http://schemas.xmlsoap.org/wsdl/soap/}operation"):
            actions.add(operation.get("soapAction"))
    for operation, _ in requests(certificate):
        assert operation.soap_action in actions, operation


def test_sign_document_carries_the_kim_inputs(certificate: x509.Certificate) -> None:
    """KOM-LE-A_2190: SignatureType CMS, the RecipientEmailsAttribute (base64 DER Attribute in
    dss:Value/CMSAttribute), IncludeEContent true, TvMode NONE, IncludeRevocationInfo false, the
    document base64 as it was given."""
    document = b"Content-Type: message/rfc822\r\n\r\nFrom: a\r\n\r\nHallo"
    emails = encode_recipient_emails(
        [RecipientEmail.for_certificate("praxis.weber@fd1.kim.telematik-test", certificate)]
    )
    element = messages.sign_document(CONTEXT, "h-1", "RSA_ECC", "KIM-007", emails)
    head, pieces, tail = messages.envelope(element, document)
    # the document goes as its own pieces, made while it is sent
    assert isinstance(pieces, messages.Base64Pieces)
    assert base64.b64decode(b"".join(pieces)) == document
    request = etree.fromstring(messages.joined([head, pieces, tail]))[0][0]
    ns = {"SIG": messages.SIG, "dss": messages.DSS}
    assert request.findtext("SIG:TvMode", namespaces=ns) == "NONE"
    assert request.findtext("SIG:JobNumber", namespaces=ns) == "KIM-007"
    sign = request.find("SIG:SignRequest", ns)
    assert sign is not None
    inputs = sign.find("SIG:OptionalInputs", ns)
    assert inputs is not None
    assert inputs.findtext("dss:SignatureType", namespaces=ns) == "urn:ietf:rfc:5652"
    assert inputs.findtext("SIG:IncludeEContent", namespaces=ns) == "true"
    prop = inputs.find("dss:Properties/dss:SignedProperties/dss:Property", ns)
    assert prop is not None
    assert prop.findtext("dss:Identifier", namespaces=ns) == "RecipientEmailsAttribute"
    assert base64.b64decode(prop.findtext("dss:Value/CMSAttribute", namespaces=ns) or "") == emails
    assert sign.findtext("SIG:IncludeRevocationInfo", namespaces=ns) == "false"
    assert base64.b64decode(sign.findtext("SIG:Document/dss:Base64Data", namespaces=ns) or "") == (
        document
    )


@pytest.mark.parametrize(
    ("error", "code", "context"),
    [
        (KonnektorError(4008, "card handle h-1 is not visible"), 4008, False),
        (KonnektorError(4004, "Mandant 'X' is unknown"), 4004, True),
        (KonnektorError(4085, "PIN.SMC is BLOCKED"), 4085, False),
    ],
)
def test_a_fault_reads_back_with_code_text_and_detail(
    error: KonnektorError, code: int, context: bool
) -> None:
    """The Konnektor's SOAP Fault (GERROR:Trace, TelematikError.xsd) is KonnektorFault with the
    same Code, ErrorText and Detail; context faults are recognised (digest §1.3: 501)."""
    with pytest.raises(KonnektorFault) as caught:
        messages.read_response([fault(error)], f"{{{messages.EVT}}}GetCardsResponse")
    assert caught.value.code == code
    assert caught.value.text == error.message
    assert caught.value.detail == error.detail
    assert caught.value.context_refused is context


@pytest.mark.parametrize(
    "body",
    [b"<html>busy</html>", b"not xml", b"", b'<?xml version="1.0"?><x/>'],
    ids=["html", "text", "empty", "no-envelope"],
)
def test_an_unreadable_answer_is_unreachable(body: bytes) -> None:
    with pytest.raises(KonnektorUnreachable, match="Konnektor not reachable"):
        messages.read_response([body], f"{{{messages.EVT}}}GetCardsResponse")


def test_the_wrong_response_element_is_unreachable() -> None:
    answer = envelope(new(messages.CARD, "GetPinStatusResponse"))
    with pytest.raises(KonnektorUnreachable, match="expected GetCardsResponse"):
        messages.read_response([answer], f"{{{messages.EVT}}}GetCardsResponse")


def test_base64_pieces_join_to_the_documents_base64() -> None:
    """A document sent in slices (each a multiple of 3 bytes) has exactly the base64 of the
    whole; its length is known before a byte is made; it can be sent twice."""
    for size in (0, 1, 2, 3, messages.Base64Pieces.SLICE - 1, 2 * messages.Base64Pieces.SLICE + 5):
        document = bytes(i % 251 for i in range(size))
        pieces = messages.Base64Pieces(document)
        made = b"".join(pieces)
        assert made == base64.b64encode(document)
        assert len(pieces) == len(made)
        assert b"".join(pieces) == made


def test_a_large_document_is_decoded_as_it_arrives_in_pieces() -> None:
    """A DecryptDocument answer read from the pieces it came in (split anywhere, also inside
    the base64) gives the document byte for byte, and the tree does not hold its text."""
    document = bytes(range(256)) * 4096 + b"tail"
    response = new(messages.CRYPT, "DecryptDocumentResponse")
    status = etree.SubElement(response, f"{{{messages.CONN}}}Status")
    etree.SubElement(status, f"{{{messages.CONN}}}Result").text = "OK"
    holder = etree.SubElement(response, f"{{{messages.CONN}}}Document")
    data = etree.SubElement(holder, f"{{{messages.DSS}}}Base64Data")
    data.text = base64.encodebytes(document).decode()  # with line breaks, as some servers send
    answer = envelope(response)
    pieces = [answer[i : i + 4097] for i in range(0, len(answer), 4097)]
    read = messages.read_response(
        pieces, f"{{{messages.CRYPT}}}DecryptDocumentResponse", binary=messages.DOCUMENT_BINARY
    )
    assert messages.document(read) == document
    found = read.element.find(f"{{{messages.CONN}}}Document/{{{messages.DSS}}}Base64Data")
    assert found is not None
    assert not found.text


def test_service_directory_endpoints_flags_and_versions() -> None:
    """KOM-LE-A_2076, KOM-LE-A_2077: connector.sds (ServiceDirectory v3.1): the endpoint of
    each version the Clientmodul speaks; the flags; a missing version is refused naming what is
    offered."""
    sds = connector_sds("https://konnektor.test:8443", tls=True, client_auth=True)
    directory = parse_service_directory(sds, "https://konnektor.test:8443/connector.sds")
    assert directory.client_auth_mandatory
    assert directory.tls_mandatory
    for operation in (messages.GET_CARDS, messages.SIGN_DOCUMENT, messages.DECRYPT_DOCUMENT,
                      messages.EXTERNAL_AUTHENTICATE):  # fmt: skip
        url = directory.endpoint(operation.service, operation.wsdl_namespace)
        assert url == f"https://konnektor.test:8443/ws/{operation.service}"
    old = sds.replace(b"SignatureService/WSDL/v7.5", b"SignatureService/WSDL/v7.4")
    older = parse_service_directory(old, "https://konnektor.test:8443/connector.sds")
    with pytest.raises(KonnektorUnreachable, match="does not offer SignatureService") as caught:
        older.endpoint(messages.SIGN_DOCUMENT.service, messages.SIGN_DOCUMENT.wsdl_namespace)
    assert "7.5.6" in str(caught.value)  # what it offers (the Version attribute)


@pytest.mark.parametrize(
    ("signature", "encryption", "ecc"),
    [
        ("7.5.6", "6.1.1", True),  # this appliance's Konnektor
        ("7.4.1", "6.1.1", True),  # exactly the minimum of A_17464
        ("7.5.6", "6.1.0", False),  # EncryptionService too old (same WSDL namespace v6.1)
        ("7.4.0", "6.1.1", False),  # SignatureService too old
        ("7.4.0", "6.1.0", False),
    ],
)
def test_ecc_support_follows_the_service_versions(
    signature: str, encryption: str, ecc: bool
) -> None:
    """A_17464: the Clientmodul learns from connector.sds whether the Konnektor supports ECC:
    SignatureService at least 7.4.1 and EncryptionService at least 6.1.1 (A_17472 then decides
    what it uses); a Konnektor that lists several versions counts by its newest."""
    sds = connector_sds("https://konnektor.test:8443", tls=True, client_auth=False)
    sds = sds.replace(b'Version="7.5.6"', f'Version="{signature}"'.encode())
    sds = sds.replace(b'Version="6.1.1"', f'Version="{encryption}"'.encode())
    directory = parse_service_directory(sds, "https://konnektor.test:8443/connector.sds")
    assert directory.offered["SignatureService"] == [signature]
    assert directory.offered["EncryptionService"] == [encryption]
    assert directory.supports_ecc is ecc
    # the in-process adapter's answer comes from the same table as this appliance's directory
    offered = {spec.name: [spec.version] for spec in SERVICES}
    assert ecc_capable(offered) is True
    assert ecc_capable({**offered, "EncryptionService": ["6.1.1", "6.0.2"]}) is True
    assert ecc_capable({"SignatureService": ["7.5.6"]}) is False  # no EncryptionService at all


@pytest.mark.parametrize(
    ("version", "parsed"),
    [("7.4.1", (7, 4, 1)), ("6.1", (6, 1)), ("6.1.0-rc1", (6, 1, 0)), ("x", ()), ("", ())],
)
def test_version_numbers_compare_as_numbers(version: str, parsed: tuple[int, ...]) -> None:
    """A_17464 compares versions number by number ("7.10.0" is after "7.4.1"); an unreadable
    version counts as the lowest, so a Konnektor nobody can read is not taken for ECC-capable."""
    assert version_tuple(version) == parsed
    assert version_tuple("7.10.0") > version_tuple("7.4.1")


@pytest.mark.parametrize(
    ("body", "match"),
    [(b"<html/>", "not a ServiceDirectory"), (b"<x", "not XML")],
)
def test_a_broken_service_directory_is_refused(body: bytes, match: str) -> None:
    with pytest.raises(KonnektorUnreachable, match=match):
        parse_service_directory(body, "https://k.test/connector.sds")
