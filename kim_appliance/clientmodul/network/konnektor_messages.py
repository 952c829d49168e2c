"""The Konnektor's SOAP messages as the Clientmodul sends and reads them (digest §1.8).

Requests are built as gematik's XSDs define them (api-telematik ``conn/``; every one is checked
against those schemas in the tests), one element per operation in the versions this Clientmodul
speaks: EventService 7.2 GetCards, CardService 8.1 GetPinStatus, CertificateService 6.0
ReadCardCertificate and VerifyCertificate, SignatureService 7.5 GetJobNumber and SignDocument
(KOM-LE-A_2190: ``dss:SignatureType urn:ietf:rfc:5652``, the RecipientEmailsAttribute among the
SignedProperties, ``SIG:IncludeEContent true``, ``TvMode NONE``, ``IncludeRevocationInfo
false``), EncryptionService 6.1 DecryptDocument (PrivateKeyOnCard ``C.ENC``), and
AuthSignatureService 7.4 ExternalAuthenticate. Answers are read back into the Clientmodul's
port types; a SOAP Fault becomes :class:`~kim_appliance.clientmodul.ports.KonnektorFault` with
the ``GERROR:Trace`` Code, ErrorText and Detail, and an answer that cannot be read is a
:class:`~kim_appliance.clientmodul.ports.KonnektorUnreachable` (nothing usable came back).

Pure XML: this module never does I/O. Parsing refuses DTDs, entities and network access.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from kim_appliance.clientmodul.ports import (
    CallContext,
    Card,
    CardType,
    KonnektorFault,
    KonnektorUnreachable,
)

SOAP11: Final = "http://schemas.xmlsoap.org/soap/envelope/"
CONN: Final = "http://ws.gematik.de/conn/ConnectorCommon/v5.0"
CCTX: Final = "http://ws.gematik.de/conn/ConnectorContext/v2.0"
GERROR: Final = "http://ws.gematik.de/tel/error/v2.0"
CARD: Final = "http://ws.gematik.de/conn/CardService/v8.1"
CARDCMN: Final = "http://ws.gematik.de/conn/CardServiceCommon/v2.0"
EVT: Final = "http://ws.gematik.de/conn/EventService/v7.2"
CERT: Final = "http://ws.gematik.de/conn/CertificateService/v6.0"
CERTCMN: Final = "http://ws.gematik.de/conn/CertificateServiceCommon/v2.0"
SIG: Final = "http://ws.gematik.de/conn/SignatureService/v7.5"
SIG74: Final = "http://ws.gematik.de/conn/SignatureService/v7.4"
CRYPT: Final = "http://ws.gematik.de/conn/EncryptionService/v6.1"
DSS: Final = "urn:oasis:names:tc:dss:1.0:core:schema"

NSMAP: Final[dict[str, str]] = {
    "soap": SOAP11,
    "CONN": CONN,
    "CCTX": CCTX,
    "CARD": CARD,
    "CARDCMN": CARDCMN,
    "EVT": EVT,
    "CERT": CERT,
    "CERTCMN": CERTCMN,
    "SIG": SIG,
    "SIG74": SIG74,
    "CRYPT": CRYPT,
    "dss": DSS,
}

CMS_SIGNATURE: Final = "urn:ietf:rfc:5652"
ECDSA_SIGNATURE: Final = "urn:bsi:tr:03111:ecdsa"
RECIPIENT_EMAILS_PROPERTY: Final = "RecipientEmailsAttribute"


@dataclass(frozen=True)
class Operation:
    """One operation: the service it belongs to (its name in ``connector.sds``), the WSDL
    TargetNamespace of the version spoken, and the SOAPAction of gematik's WSDL."""

    service: str
    wsdl_namespace: str
    soap_action: str


EVENT_SERVICE: Final = ("EventService", "http://ws.gematik.de/conn/EventService/WSDL/v7.2")
CARD_SERVICE: Final = ("CardService", "http://ws.gematik.de/conn/CardService/WSDL/v8.1")
CERTIFICATE_SERVICE: Final = (
    "CertificateService",
    "http://ws.gematik.de/conn/CertificateService/WSDL/v6.0",
)
SIGNATURE_SERVICE: Final = (
    "SignatureService",
    "http://ws.gematik.de/conn/SignatureService/WSDL/v7.5",
)
ENCRYPTION_SERVICE: Final = (
    "EncryptionService",
    "http://ws.gematik.de/conn/EncryptionService/WSDL/v6.1",
)
AUTH_SIGNATURE_SERVICE: Final = (
    "AuthSignatureService",
    "http://ws.gematik.de/conn/AuthSignatureService/WSDL/v7.4",
)

GET_CARDS: Final = Operation(*EVENT_SERVICE, "http://ws.gematik.de/conn/EventService/v7.2#GetCards")
GET_PIN_STATUS: Final = Operation(
    *CARD_SERVICE, "http://ws.gematik.de/conn/CardService/v8.1#GetPinStatus"
)
READ_CARD_CERTIFICATE: Final = Operation(
    *CERTIFICATE_SERVICE, "http://ws.gematik.de/conn/CertificateService/v6.0#ReadCardCertificate"
)
VERIFY_CERTIFICATE: Final = Operation(
    *CERTIFICATE_SERVICE, "http://ws.gematik.de/conn/CertificateService/v6.0#VerifyCertificate"
)
GET_JOB_NUMBER: Final = Operation(
    *SIGNATURE_SERVICE, "http://ws.gematik.de/conn/SignatureService/v7.5#GetJobNumber"
)
SIGN_DOCUMENT: Final = Operation(
    *SIGNATURE_SERVICE, "http://ws.gematik.de/conn/SignatureService/v7.5#SignDocument"
)
# the WSDL's SOAPAction of DecryptDocument has an extra "crypt/" (digest §1.8)
DECRYPT_DOCUMENT: Final = Operation(
    *ENCRYPTION_SERVICE, "http://ws.gematik.de/conn/crypt/EncryptionService/v6.1#DecryptDocument"
)
EXTERNAL_AUTHENTICATE: Final = Operation(
    *AUTH_SIGNATURE_SERVICE, "http://ws.gematik.de/conn/SignatureService/v7.4#ExternalAuthenticate"
)


def _parser() -> etree.XMLParser:
    """For the Konnektor's answers: no DTD, no entities, no network; large base64 text nodes
    (a decrypted document of up to 25 MiB) allowed."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)


def _q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


def _sub(parent: etree._Element, namespace: str, name: str, text: str | None = None,
         **attributes: str) -> etree._Element:  # fmt: skip
    element = etree.SubElement(parent, _q(namespace, name), attributes or None)
    if text is not None:
        element.text = text
    return element


def _new(namespace: str, name: str, **attributes: str) -> etree._Element:
    return etree.Element(_q(namespace, name), attributes or None, nsmap=NSMAP)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _context(parent: etree._Element, context: CallContext) -> None:
    """CCTX:Context (ConnectorContext.xsd): MandantId, ClientSystemId, WorkplaceId[, UserId]."""
    element = _sub(parent, CCTX, "Context")
    _sub(element, CONN, "MandantId", context.mandant_id)
    _sub(element, CONN, "ClientSystemId", context.client_system_id)
    _sub(element, CONN, "WorkplaceId", context.workplace_id)
    if context.user_id:
        _sub(element, CONN, "UserId", context.user_id)


def envelope(payload: etree._Element) -> bytes:
    """``payload`` in a SOAP 1.1 envelope (gematik's WSDLs: document/literal)."""
    env = etree.Element(_q(SOAP11, "Envelope"), nsmap=NSMAP)
    etree.SubElement(env, _q(SOAP11, "Body")).append(payload)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


# --- requests --------------------------------------------------------------------------------


def get_cards(context: CallContext, card_type: CardType | None) -> etree._Element:
    request = _new(EVT, "GetCards")
    _context(request, context)
    if card_type is not None:
        _sub(request, CARDCMN, "CardType", str(card_type))
    return request


def get_pin_status(context: CallContext, card_handle: str, pin_type: str) -> etree._Element:
    request = _new(CARD, "GetPinStatus")
    _context(request, context)
    _sub(request, CONN, "CardHandle", card_handle)
    _sub(request, CARDCMN, "PinTyp", pin_type)
    return request


def read_card_certificate(
    context: CallContext, card_handle: str, cert_ref: str, crypt: str
) -> etree._Element:
    request = _new(CERT, "ReadCardCertificate")
    _sub(request, CONN, "CardHandle", card_handle)
    _context(request, context)
    refs = _sub(request, CERT, "CertRefList")
    _sub(refs, CERT, "CertRef", cert_ref)
    _sub(request, CERT, "Crypt", crypt)
    return request


def verify_certificate(
    context: CallContext, certificate: x509.Certificate, at: dt.datetime | None
) -> etree._Element:
    request = _new(CERT, "VerifyCertificate")
    _context(request, context)
    _sub(request, CERTCMN, "X509Certificate", _b64(certificate.public_bytes(Encoding.DER)))
    if at is not None:
        _sub(request, CERT, "VerificationTime", at.astimezone(dt.UTC).isoformat(timespec="seconds"))
    return request


def get_job_number(context: CallContext) -> etree._Element:
    request = _new(SIG, "GetJobNumber")
    _context(request, context)
    return request


def sign_document(
    context: CallContext,
    card_handle: str,
    crypt: str,
    job_number: str,
    document: bytes,
    recipient_emails: bytes,
) -> etree._Element:
    """SignDocument of one KIM message (KOM-LE-A_2190): the rfc822-wrapped inner mail
    enveloped in a CMS SignedData with the recipient-emails attribute signed."""
    request = _new(SIG, "SignDocument")
    _sub(request, CONN, "CardHandle", card_handle)
    _sub(request, SIG, "Crypt", crypt)
    _context(request, context)
    _sub(request, SIG, "TvMode", "NONE")
    _sub(request, SIG, "JobNumber", job_number)
    sign_request = _sub(request, SIG, "SignRequest", RequestID=f"KIM-{uuid.uuid4()}")
    inputs = _sub(sign_request, SIG, "OptionalInputs")
    _sub(inputs, DSS, "SignatureType", CMS_SIGNATURE)
    properties = _sub(_sub(inputs, DSS, "Properties"), DSS, "SignedProperties")
    _recipient_emails_property(properties, recipient_emails)
    _sub(inputs, SIG, "IncludeEContent", "true")
    doc = _sub(sign_request, SIG, "Document", ShortText="KIM-Nachricht")
    _sub(doc, DSS, "Base64Data", _b64(document), MimeType="message/rfc822")
    _sub(sign_request, SIG, "IncludeRevocationInfo", "false")
    return request


def _recipient_emails_property(parent: etree._Element, attribute: bytes) -> None:
    """dss:Property RecipientEmailsAttribute: ``dss:Value/CMSAttribute`` holds the base64 DER
    Attribute (digest §1.8, §2.7)."""
    prop = _sub(parent, DSS, "Property")
    _sub(prop, DSS, "Identifier", RECIPIENT_EMAILS_PROPERTY)
    value = _sub(prop, DSS, "Value")
    holder = etree.SubElement(value, "CMSAttribute")
    holder.text = _b64(attribute)


def decrypt_document(
    context: CallContext, card_handle: str, crypt: str, document: bytes
) -> etree._Element:
    """DecryptDocument with the card's C.ENC key(s) of ``crypt`` (RSA, ECC or RSA_ECC)."""
    request = _new(CRYPT, "DecryptDocument")
    _context(request, context)
    key = _sub(request, CRYPT, "PrivateKeyOnCard")
    _sub(key, CONN, "CardHandle", card_handle)
    _sub(key, CRYPT, "KeyReference", "C.ENC")
    _sub(key, CRYPT, "Crypt", crypt)
    doc = _sub(request, CONN, "Document")
    _sub(doc, DSS, "Base64Data", _b64(document), MimeType="application/pkcs7-mime")
    return request


def external_authenticate(
    context: CallContext, card_handle: str, digest: bytes, scheme: str
) -> etree._Element:
    """ExternalAuthenticate of a SHA-256 hash: ``ECDSA`` selects the ECC AUT key
    (``urn:bsi:tr:03111:ecdsa``), otherwise the RSA key with ``scheme`` (RSASSA-PSS)."""
    request = _new(SIG74, "ExternalAuthenticate")
    _sub(request, CONN, "CardHandle", card_handle)
    _context(request, context)
    inputs = _sub(request, SIG74, "OptionalInputs")
    if scheme == "ECDSA":
        _sub(inputs, DSS, "SignatureType", ECDSA_SIGNATURE)
    else:
        _sub(inputs, SIG74, "SignatureSchemes", scheme)
    binary = _sub(request, SIG74, "BinaryString")
    _sub(binary, DSS, "Base64Data", _b64(digest), MimeType="application/octet-stream")
    return request


# --- answers ---------------------------------------------------------------------------------


def read_response(body: bytes, expected: str) -> etree._Element:
    """The operation element ``expected`` (Clark notation) of a response envelope. A SOAP
    Fault raises KonnektorFault; anything unreadable raises KonnektorUnreachable."""
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        raise KonnektorUnreachable(f"the Konnektor's answer is not XML: {exc}") from None
    if root.tag != _q(SOAP11, "Envelope"):
        raise KonnektorUnreachable(f"the Konnektor's answer is no SOAP 1.1 envelope ({root.tag})")
    body_element = root.find(_q(SOAP11, "Body"))
    payload = next((c for c in body_element if isinstance(c.tag, str)), None) if (
        body_element is not None
    ) else None  # fmt: skip
    if payload is None:
        raise KonnektorUnreachable("the Konnektor's answer has an empty SOAP Body")
    if payload.tag == _q(SOAP11, "Fault"):
        raise _fault(payload)
    if payload.tag != expected:
        raise KonnektorUnreachable(
            f"the Konnektor answered {etree.QName(payload).localname}, "
            f"expected {etree.QName(expected).localname}"
        )
    return payload


def _fault(fault: etree._Element) -> KonnektorFault:
    """The GERROR:Trace of a SOAP Fault's detail, or its faultstring when it has none."""
    faultstring = (fault.findtext("faultstring") or "SOAP Fault").strip()
    trace = fault.find(f"detail/{_q(GERROR, 'Error')}/{_q(GERROR, 'Trace')}")
    if trace is None:
        code_text = (fault.findtext("faultcode") or "").strip()
        return KonnektorFault(None, faultstring, code_text)
    code_text = (trace.findtext(_q(GERROR, "Code")) or "").strip()
    code = int(code_text) if code_text.isdigit() else None
    text = (trace.findtext(_q(GERROR, "ErrorText")) or faultstring).strip()
    detail = (trace.findtext(_q(GERROR, "Detail")) or "").strip()
    return KonnektorFault(code, text, detail)


def _text(parent: etree._Element, namespace: str, name: str, what: str) -> str:
    value = parent.findtext(_q(namespace, name))
    if value is None:
        raise KonnektorUnreachable(f"the Konnektor's {what} lacks {name}")
    return value.strip()


def _base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KonnektorUnreachable(f"the Konnektor's {what} is not valid base64") from None


def cards(response: etree._Element) -> list[Card]:
    """GetCardsResponse: every ``CARD:Card`` as a :class:`Card` (no Telematik-ID: GetCards
    does not report it)."""
    listing = response.find(_q(CARD, "Cards"))
    found: list[Card] = []
    for card in listing if listing is not None else ():
        if card.tag != _q(CARD, "Card"):
            continue
        found.append(
            Card(
                handle=_text(card, CONN, "CardHandle", "card"),
                card_type=_text(card, CARDCMN, "CardType", "card"),
                iccsn=(card.findtext(_q(CARDCMN, "Iccsn")) or "").strip(),
                holder_name=(card.findtext(_q(CARD, "CardHolderName")) or "").strip(),
            )
        )
    return found


def pin_status(response: etree._Element) -> tuple[str, int]:
    """GetPinStatusResponse: (PinStatus, LeftTries)."""
    status = _text(response, CARD, "PinStatus", "PIN status")
    left = (response.findtext(_q(CARD, "LeftTries")) or "0").strip()
    return status, int(left) if left.isdigit() else 0


def certificate(response: etree._Element) -> x509.Certificate:
    """ReadCardCertificateResponse: the one certificate asked for."""
    path = f"{_q(CERTCMN, 'X509DataInfoList')}/{_q(CERTCMN, 'X509DataInfo')}"
    info = response.find(path)
    data = info.find(f"{_q(CERTCMN, 'X509Data')}/{_q(CERTCMN, 'X509Certificate')}") if (
        info is not None
    ) else None  # fmt: skip
    if data is None or not data.text:
        raise KonnektorUnreachable("the Konnektor's ReadCardCertificate answer has no certificate")
    der = _base64(data.text, "certificate")
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise KonnektorUnreachable(f"the card's certificate cannot be read: {exc}") from None


@dataclass(frozen=True)
class CertificateStatus:
    """VerifyCertificateResponse: VALID, INCONCLUSIVE or INVALID; the reason (the
    CheckCertificateDetail name the Konnektor gives as ErrorText) and its Detail."""

    result: str
    reason: str
    detail: str


def certificate_status(response: etree._Element) -> CertificateStatus:
    status = response.find(_q(CERT, "VerificationStatus"))
    if status is None:
        raise KonnektorUnreachable("the Konnektor's VerifyCertificate answer has no status")
    result = _text(status, CERT, "VerificationResult", "VerifyCertificate answer")
    trace = status.find(f"{_q(GERROR, 'Error')}/{_q(GERROR, 'Trace')}")
    reason = detail = ""
    if trace is not None:
        reason = (trace.findtext(_q(GERROR, "ErrorText")) or "").strip()
        detail = (trace.findtext(_q(GERROR, "Detail")) or "").strip()
    return CertificateStatus(result, reason, detail)


def job_number(response: etree._Element) -> str:
    return _text(response, SIG, "JobNumber", "GetJobNumber answer")


def signature(response: etree._Element) -> bytes:
    """SignDocumentResponse: the DER SignedData of the one SignRequest (Status OK)."""
    answer = response.find(_q(SIG, "SignResponse"))
    if answer is None:
        raise KonnektorUnreachable("the Konnektor's SignDocument answer has no SignResponse")
    _check_status(answer, "SignDocument")
    holder = answer.find(f"{_q(DSS, 'SignatureObject')}/{_q(DSS, 'Base64Signature')}")
    if holder is None or not holder.text:
        raise KonnektorUnreachable("the Konnektor's SignDocument answer has no signature")
    return _base64(holder.text, "signature")


def document(response: etree._Element) -> bytes:
    """DecryptDocumentResponse: the plaintext of ``CONN:Document/dss:Base64Data``."""
    _check_status(response, "DecryptDocument")
    holder = response.find(f"{_q(CONN, 'Document')}/{_q(DSS, 'Base64Data')}")
    if holder is None:
        raise KonnektorUnreachable("the Konnektor's DecryptDocument answer has no document")
    return _base64(holder.text or "", "document")


def auth_signature(response: etree._Element) -> bytes:
    """ExternalAuthenticateResponse: the signature of the hash."""
    _check_status(response, "ExternalAuthenticate")
    holder = response.find(f"{_q(DSS, 'SignatureObject')}/{_q(DSS, 'Base64Signature')}")
    if holder is None or not holder.text:
        raise KonnektorUnreachable("the Konnektor's ExternalAuthenticate answer has no signature")
    return _base64(holder.text, "signature")


def _check_status(parent: etree._Element, operation: str) -> None:
    """A Status other than OK carries a GERROR:Error: the operation failed."""
    status = parent.find(_q(CONN, "Status"))
    if status is None:
        return
    result = (status.findtext(_q(CONN, "Result")) or "OK").strip()
    if result == "OK":
        return
    trace = status.find(f"{_q(GERROR, 'Error')}/{_q(GERROR, 'Trace')}")
    if trace is None:
        raise KonnektorFault(None, f"{operation}: Status {result}")
    code_text = (trace.findtext(_q(GERROR, "Code")) or "").strip()
    raise KonnektorFault(
        int(code_text) if code_text.isdigit() else None,
        (trace.findtext(_q(GERROR, "ErrorText")) or f"{operation}: Status {result}").strip(),
        (trace.findtext(_q(GERROR, "Detail")) or "").strip(),
    )
