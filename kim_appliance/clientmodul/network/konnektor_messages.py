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

Large documents (a SignDocument's inner mail, a DecryptDocument's message, both up to 25 MiB)
never sit in an XML tree: a request is serialised around a placeholder and sent as pieces (head,
the document's base64, tail), and an answer is parsed as it arrives with the base64 of its
document decoded on the fly (:func:`read_response`), so a call holds the document about twice,
not six times. Pure XML: this module never does I/O. Parsing refuses DTDs, entities and network
access.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, cast

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from kim_appliance import _native
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
#: the text of a document's Base64Data until :func:`envelope` puts the document in its place
#: (valid base64, so that a request element validates against the XSD as it is)
PLACEHOLDER: Final = "S0lNLXBsYWNlaG9sZGVyLWZvci10aGUtZG9jdW1lbnQ="
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


class Base64Pieces:
    """The base64 of a document, made a slice at a time while it is sent (never whole in
    memory): sized and iterable again (a request may be sent twice)."""

    #: bytes of document per piece: a multiple of 3, so the pieces join to one base64
    SLICE: Final = 3 * 256 * 1024

    def __init__(self, document: bytes | bytearray) -> None:
        self._document = memoryview(document)

    def __len__(self) -> int:
        return 4 * ((len(self._document) + 2) // 3)

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self._document), self.SLICE):
            yield base64.b64encode(self._document[start : start + self.SLICE])


def envelope(
    payload: etree._Element, document: bytes | bytearray | None = None
) -> list[bytes | Base64Pieces]:
    """``payload`` in a SOAP 1.1 envelope (gematik's WSDLs: document/literal), as the pieces to
    send: with ``document`` its base64 stands where the request has :data:`PLACEHOLDER`."""
    env = etree.Element(_q(SOAP11, "Envelope"), nsmap=NSMAP)
    etree.SubElement(env, _q(SOAP11, "Body")).append(payload)
    serialised = bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))
    if document is None:
        return [serialised]
    head, found, tail = serialised.partition(PLACEHOLDER.encode("ascii"))
    if not found:  # pragma: no cover - a builder without a placeholder got a document
        raise ValueError("the request has no document placeholder")
    return [head, Base64Pieces(document), tail]


def joined(pieces: Iterable[bytes | Base64Pieces]) -> bytes:
    """The pieces of :func:`envelope` as one body (tests, logs)."""
    return b"".join(p if isinstance(p, bytes) else b"".join(p) for p in pieces)


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
    recipient_emails: bytes,
) -> etree._Element:
    """SignDocument of one KIM message (KOM-LE-A_2190): the rfc822-wrapped inner mail (given
    to :func:`envelope`) enveloped in a CMS SignedData with the recipient-emails attribute
    signed."""
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
    _sub(doc, DSS, "Base64Data", PLACEHOLDER, MimeType="message/rfc822")
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


def decrypt_document(context: CallContext, card_handle: str, crypt: str) -> etree._Element:
    """DecryptDocument with the card's C.ENC key(s) of ``crypt`` (RSA, ECC or RSA_ECC); the
    AuthEnvelopedData is given to :func:`envelope`."""
    request = _new(CRYPT, "DecryptDocument")
    _context(request, context)
    key = _sub(request, CRYPT, "PrivateKeyOnCard")
    _sub(key, CONN, "CardHandle", card_handle)
    _sub(key, CRYPT, "KeyReference", "C.ENC")
    _sub(key, CRYPT, "Crypt", crypt)
    doc = _sub(request, CONN, "Document")
    _sub(doc, DSS, "Base64Data", PLACEHOLDER, MimeType="application/pkcs7-mime")
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


@dataclass
class Response:
    """An answer: its operation element, and the decoded base64 of its document (the text of
    the first element named in ``read_response(..., binary=...)``), which the element itself
    does not hold."""

    element: etree._Element
    binary: bytes | None = None


class _Target:
    """A parser target that builds the tree, except the text of the first ``binary`` element:
    that base64 is decoded as it arrives and kept apart (a 25 MiB document never becomes a
    Python string)."""

    def __init__(self, binary: frozenset[str]) -> None:
        self._tree = etree.TreeBuilder()
        self._binary = binary
        self._decoder: Any = None
        self._pieces: list[bytes] = []
        self._done = False

    def start(self, tag: str, attrib: dict[str, str], nsmap: dict[str, str] | None = None) -> Any:
        if tag in self._binary and not self._done and self._decoder is None:
            self._decoder = _native.Base64Decoder()
        namespaces = {prefix or None: uri for prefix, uri in (nsmap or {}).items()}
        # lxml's TreeBuilder takes the namespaces too (its stubs do not know it)
        return self._tree.start(tag, attrib, namespaces)  # type: ignore[call-arg, arg-type]

    def data(self, text: str) -> None:
        if self._decoder is not None:
            self._pieces.append(self._decoder.update(text.encode("ascii", "replace")))
        else:
            self._tree.data(text)

    def end(self, tag: str) -> Any:
        if self._decoder is not None and tag in self._binary:
            self._pieces.append(self._decoder.finalize())
            self._decoder = None
            self._done = True
        return self._tree.end(tag)

    def close(self) -> etree._Element:
        return self._tree.close()

    @property
    def binary(self) -> bytes | None:
        return b"".join(self._pieces) if self._done else None


def read_response(
    chunks: Iterable[bytes], expected: str, *, binary: Iterable[str] = ()
) -> Response:
    """The operation element ``expected`` (Clark notation) of a response envelope, parsed as
    its ``chunks`` come; ``binary`` names elements whose base64 text is decoded on the fly
    into ``Response.binary``. A SOAP Fault raises KonnektorFault; anything unreadable
    raises KonnektorUnreachable."""
    target = _Target(frozenset(binary))
    parser = etree.XMLParser(
        target=cast(Any, target),  # a parser target by duck typing, as lxml documents it
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=True,
    )
    try:
        for chunk in chunks:
            parser.feed(chunk)
        root: etree._Element = parser.close()
    except (etree.XMLSyntaxError, ValueError) as exc:
        # ValueError: the decoder's refusal of a base64 that is none
        raise KonnektorUnreachable(f"the Konnektor's answer is not readable XML: {exc}") from None
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
    return Response(payload, target.binary)


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

    @property
    def warnings(self) -> list[str]:
        """What could not be checked, as :class:`~kim_appliance.pki.ValidatedPath` says it: an
        INCONCLUSIVE answer (the status is unknown, e.g. no CRL: digest §1.6, 4264) is "not
        checked", so a signer's certificate gives IntegrityCheckResult 07, as in-process."""
        if self.result != "INCONCLUSIVE":
            return []
        why = self.detail or self.reason or "no reason given"
        return [f"certificate status not checked: VerifyCertificate is INCONCLUSIVE ({why})"]


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


#: the elements whose base64 :func:`read_response` decodes on the fly
SIGNATURE_BINARY: Final = (_q(DSS, "Base64Signature"),)
DOCUMENT_BINARY: Final = (_q(DSS, "Base64Data"),)


def signature(response: Response) -> bytes:
    """SignDocumentResponse: the DER SignedData of the one SignRequest (Status OK); read with
    ``binary=SIGNATURE_BINARY``."""
    answer = response.element.find(_q(SIG, "SignResponse"))
    if answer is None:
        raise KonnektorUnreachable("the Konnektor's SignDocument answer has no SignResponse")
    _check_status(answer, "SignDocument")
    if not response.binary:
        raise KonnektorUnreachable("the Konnektor's SignDocument answer has no signature")
    return response.binary


def document(response: Response) -> bytes:
    """DecryptDocumentResponse: the plaintext of ``CONN:Document/dss:Base64Data``; read with
    ``binary=DOCUMENT_BINARY``."""
    _check_status(response.element, "DecryptDocument")
    if response.binary is None:
        raise KonnektorUnreachable("the Konnektor's DecryptDocument answer has no document")
    return response.binary


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
