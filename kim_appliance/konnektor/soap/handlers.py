"""The SOAP operations: translate a request element into a :class:`Konnektor` call and the
answer into the response element of gematik's XSD (digest §1.8).

:class:`SoapDispatcher` takes the raw body of a POST to ``/ws/<Service>``, parses the SOAP 1.1
envelope, validates the operation element against the service's XSD (a request the schema
refuses is error 4000 with the schema's complaint as Detail), dispatches on the element's
qualified name and returns the response envelope, or a SOAP fault carrying the
``GERROR:Error`` of a :class:`KonnektorError`. Everything here is blocking (the card sleeps
when it is slow, CMS work is CPU work): the HTTP server runs it in a worker thread.

Protocol choices the XSDs leave open, written down here:

* SignDocument makes CMS signatures (``dss:SignatureType`` ``urn:ietf:rfc:5652``, also the
  default). With the ``dss:Property`` whose Identifier is ``RecipientEmailsAttribute`` (its
  ``dss:Value`` holds ``CMSAttribute``, any namespace, with the base64 DER Attribute; digest
  §2.7) it is a KIM signature (KOM-LE-A_2190): enveloping only, a detached request is 4000.
  Without it, it is the generic CAdES-BES signature of any document (TUC_KON_160):
  ``SIG:IncludeEContent`` true (enveloping) or false (detached); absent means enveloping.
  XAdES (``urn:ietf:rfc:3275``), PAdES (``http://uri.etsi.org/02778/3``) and every other
  signature type are answered with 4112 "Signaturtyp nicht unterstützt"
  (:data:`~kim_appliance.konnektor.errors.WRONG_SIGNATURE_FORMAT`, the code of Tab_Verm_Sig_Prüf
  for a signature format the Konnektor cannot handle). A ``dss:Property`` other than
  RecipientEmailsAttribute is refused with 4000 rather than silently ignored.
* VerifyDocument takes the SignedData from ``dss:SignatureObject/dss:Base64Signature`` and,
  for a detached signature, the signed document from ``SIG:Document``; a request with only
  ``SIG:Document`` is read as an enveloping CMS signature in the document. A non-VALID result
  is answered with ``Status/Result`` Warning and a ``GERROR:Error`` whose Trace Code is the
  code of Tab_Verm_Sig_Prüf (4115, 4253, 4112, 4206, 4264; digest §1.6). An XML signature
  (``dss:Signature``) is 4112 like an unsupported SignatureType.
* EncryptDocument: with the RecipientEmailsAttribute in ``CRYPT:UnprotectedProperties`` a KIM
  message (KOM-LE-A_2191), without it the generic hybrid encryption (TUC_KON_070), both
  AuthEnvelopedData. ``CRYPT:EncryptionType`` other than CMS (XML encryption, S/MIME) is 4000:
  no gematik code for it is confirmed in the material at hand.
* VerifyCertificate: for INVALID/INCONCLUSIVE ``VerificationStatus/GERROR:Error`` carries the
  CheckCertificateDetail name (CERT_REVOKED, ...) as ErrorText and Trace Code 0: no gematik
  code for these outcomes is confirmed in the material at hand. ``RoleList`` needs one
  ``Role``; a certificate without Admission gets one empty Role.
* ExternalAuthenticate: ``dss:SignatureType`` ``urn:bsi:tr:03111:ecdsa`` selects the ECC AUT
  key (plain r||s); otherwise ``SIG:SignatureSchemes`` (default RSASSA-PSS) with the RSA key.

This module must never keep state between calls except the job-number counter, and never
answer a call the Konnektor facade has not checked (context, card, PIN).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree

from kim_appliance.konnektor import errors
from kim_appliance.konnektor.cards import CardInfo, CardType, Crypt
from kim_appliance.konnektor.errors import (
    CardError,
    KonnektorError,
    KonnektorUnreachableError,
    ParameterError,
)
from kim_appliance.konnektor.infomodell import Context
from kim_appliance.konnektor.operations import HighLevelResult, Konnektor
from kim_appliance.konnektor.soap.envelope import (
    SoapFaultError,
    envelope,
    fault,
    new,
    parse_request,
    product_information,
    protocol_fault,
    qname,
    sub,
    telematik_error,
)
from kim_appliance.konnektor.soap.services import (
    CARD,
    CARDCMN,
    CCTX,
    CERT,
    CERTCMN,
    CONN,
    CRYPT,
    CT,
    DSS,
    EVT,
    SERVICES_BY_NAME,
    SIG,
    SIG74,
    schema_for,
)
from kim_appliance.pki.untrusted import UntrustedCertificateError, load_untrusted_certificate

log = logging.getLogger(__name__)

CMS_SIGNATURE: Final = "urn:ietf:rfc:5652"
#: Signature types of SignatureService 7.5 this Konnektor does not make (gemSpec_Kon,
#: TIP1-A_4623), with the name used in the refusal
UNSUPPORTED_SIGNATURE_TYPES: Final[dict[str, str]] = {
    "urn:ietf:rfc:3275": "XAdES (XML signature)",
    "http://uri.etsi.org/02778/3": "PAdES (PDF signature)",
    "urn:ietf:rfc:5751": "S/MIME",
}
RSA_SIGNATURE: Final = "urn:ietf:rfc:3447"
ECDSA_SIGNATURE: Final = "urn:bsi:tr:03111:ecdsa"
RECIPIENT_EMAILS_PROPERTY: Final = "RecipientEmailsAttribute"

Handler = Callable[[Konnektor, etree._Element], etree._Element]


@dataclass(frozen=True)
class SoapReply:
    """What the HTTP layer sends back: status 200 (response) or 500 (fault), and the body."""

    status: int
    body: bytes


class SoapDispatcher:
    """Dispatch SOAP requests of the six services onto one :class:`Konnektor`."""

    def __init__(self, konnektor: Konnektor, *, validate: bool = True) -> None:
        self.konnektor = konnektor
        self.validate = validate

    def handle(self, service: str, body: bytes) -> SoapReply:
        """Answer one POST to ``/ws/<service>``.

        Error handling: KonnektorError and malformed requests become SOAP faults (HTTP 500);
        :class:`KonnektorUnreachableError` propagates, because a Konnektor that is down sends
        nothing at all (the HTTP layer drops the connection). Any other exception is a bug,
        reported as fault 4001 with its text, and logged.
        """
        if self.konnektor.faults.unreachable:
            raise KonnektorUnreachableError(service)
        try:
            request = parse_request(body)
        except SoapFaultError as exc:
            return SoapReply(500, protocol_fault(exc))
        try:
            return SoapReply(200, envelope(self._dispatch(service, request)))
        except KonnektorError as exc:
            return SoapReply(500, fault(exc))
        except KonnektorUnreachableError:
            raise
        except Exception as exc:  # a bug: still answer like a Konnektor, with the reason
            log.exception("SOAP %s %s failed", service, request.tag)
            internal = KonnektorError(errors.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            return SoapReply(500, fault(internal))

    def _dispatch(self, service: str, request: etree._Element) -> etree._Element:
        spec = SERVICES_BY_NAME[service]
        handler = _HANDLERS.get(request.tag)
        if handler is None or not request.tag.startswith(f"{{{spec.namespace}}}"):
            name = etree.QName(request).localname
            raise ParameterError(
                "Body",
                f"{name} ({etree.QName(request).namespace}) is not an operation of "
                f"{service} {spec.version} served by this Konnektor",
            )
        if self.validate:
            schema = schema_for(service)
            if not schema.validate(request):
                # "<file>:<line>:<col>:ERROR:SCHEMASV:<type>: <message>"; keep the message
                first = str(schema.error_log).splitlines()[0]
                raise ParameterError(
                    etree.QName(request).localname,
                    f"violates {spec.schema}: {first.split(': ', 1)[-1]}",
                )
        return handler(self.konnektor, request)


# --- reading requests --------------------------------------------------------------------------


def _find(parent: etree._Element, namespace: str, name: str) -> etree._Element | None:
    return parent.find(qname(namespace, name))


def _need(parent: etree._Element, namespace: str, name: str) -> etree._Element:
    element = parent.find(qname(namespace, name))
    if element is None:
        raise ParameterError(name, f"missing in {etree.QName(parent).localname}")
    return element


def _text(parent: etree._Element, namespace: str, name: str) -> str | None:
    element = parent.find(qname(namespace, name))
    if element is None or element.text is None:
        return None
    return element.text.strip()


def _need_text(parent: etree._Element, namespace: str, name: str) -> str:
    value = _text(parent, namespace, name)
    if value is None:
        raise ParameterError(name, f"missing or empty in {etree.QName(parent).localname}")
    return value


def _context(request: etree._Element) -> Context:
    element = _need(request, CCTX, "Context")
    return Context(
        mandant_id=_text(element, CONN, "MandantId") or "",
        client_system_id=_text(element, CONN, "ClientSystemId") or "",
        workplace_id=_text(element, CONN, "WorkplaceId") or "",
        user_id=_text(element, CONN, "UserId") or None,
    )


def _base64(element: etree._Element, field: str) -> bytes:
    text = "".join((element.text or "").split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ParameterError(field, "is not valid base64") from None


def _document(parent: etree._Element, namespace: str, field: str) -> bytes:
    """The bytes of a ``Document`` (CONN:DocumentType or SIG:DocumentType): Base64Data or
    Base64XML."""
    document = _need(parent, namespace, "Document")
    data = _find(document, DSS, "Base64Data")
    if data is None:  # Base64XML is declared in ConnectorCommon, also inside SIG:Document
        data = _find(document, CONN, "Base64XML")
    if data is None:
        raise ParameterError(field, "holds neither dss:Base64Data nor Base64XML")
    return _base64(data, f"{field}.Base64Data")


def _certificate(der: bytes, field: str) -> x509.Certificate:
    """A certificate from the request, read completely now: one that cryptography can only
    half read would otherwise fail inside path validation as an internal error (issue 11)."""
    try:
        return load_untrusted_certificate(der)
    except UntrustedCertificateError as exc:
        raise ParameterError(field, f"is not a usable X.509 certificate: {exc}") from None


def _datetime(text: str, field: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ParameterError(field, f"{text!r} is not an xs:dateTime") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _cms_attribute(properties: etree._Element | None, field: str) -> bytes:
    """The DER recipient-emails Attribute of a ``dss:PropertiesType`` (digest §2.7)."""
    if properties is not None:
        for prop in properties.iter(qname(DSS, "Property")):
            if (_text(prop, DSS, "Identifier") or "") != RECIPIENT_EMAILS_PROPERTY:
                continue
            value = _find(prop, DSS, "Value")
            holder = None
            if value is not None:
                holder = next(
                    (c for c in value if etree.QName(c).localname == "CMSAttribute"), None
                )
            if holder is None:
                raise ParameterError(
                    f"{field}.Value", "RecipientEmailsAttribute needs a CMSAttribute element"
                )
            return _base64(holder, f"{field}.Value.CMSAttribute")
    raise ParameterError(
        field,
        f"no dss:Property with Identifier {RECIPIENT_EMAILS_PROPERTY} (KIM needs the "
        "recipient-emails attribute, KOM-LE-A_2190/A_2191)",
    )


def _kim_attribute(properties: etree._Element | None, field: str) -> bytes | None:
    """The recipient-emails Attribute when ``properties`` carries the KIM property, None for
    a generic document without properties. Any other ``dss:Property`` is refused: this
    Konnektor knows no other, and ignoring what a caller asked for would hide the mistake."""
    if properties is None:
        return None
    identifiers = [
        _text(prop, DSS, "Identifier") or "" for prop in properties.iter(qname(DSS, "Property"))
    ]
    for identifier in identifiers:
        if identifier != RECIPIENT_EMAILS_PROPERTY:
            raise ParameterError(
                f"{field}.Property",
                f"Identifier {identifier!r} is not a property this Konnektor knows (only "
                f"{RECIPIENT_EMAILS_PROPERTY}, for KIM messages)",
            )
    return _cms_attribute(properties, field) if identifiers else None


def _unsupported_signature_type(field: str, signature_type: str) -> KonnektorError:
    """4112 for a signature type this Konnektor does not make or verify (see the module
    docstring and docs/decisions.md)."""
    kind = UNSUPPORTED_SIGNATURE_TYPES.get(signature_type, "an unknown signature type")
    return KonnektorError(
        errors.WRONG_SIGNATURE_FORMAT,
        f"{field}: {signature_type!r} is {kind}; this Konnektor supports CMS/CAdES "
        f"({CMS_SIGNATURE}) only",
        message="Signaturtyp nicht unterstützt",
        error_type=errors.ErrorType.TECHNICAL,
    )


# --- writing responses -------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _status(parent: etree._Element, error: KonnektorError | None = None) -> None:
    status = sub(parent, CONN, "Status")
    sub(status, CONN, "Result", "OK" if error is None else "Warning")
    if error is not None:
        status.append(telematik_error(error))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- EventService --------------------------------------------------------------------------------

_CARD_TYPE_ALIASES: Final = {"SMC-B": CardType.SMC_B, "SM-B": CardType.SMC_B, "HBA": CardType.HBA}


def get_cards(konnektor: Konnektor, request: etree._Element) -> etree._Element:
    """EventService GetCards: the inserted cards visible to the context (CtId, SlotId and
    CardType filter; a card type the emulator has no cards of gives an empty list)."""
    context = _context(request)
    card_type = _text(request, CARDCMN, "CardType")
    ct_id = _text(request, CARDCMN, "CtId")
    slot_id = _text(request, CARDCMN, "SlotId")
    cards: list[CardInfo] = []
    if card_type is None or card_type in _CARD_TYPE_ALIASES:
        wanted = _CARD_TYPE_ALIASES[card_type] if card_type else None
        cards = konnektor.get_cards(context, str(wanted) if wanted else None)
    else:
        konnektor.get_cards(context)  # context check, unreachable; then: no such cards
    response = new(EVT, "GetCardsResponse")
    _status(response)
    listing = sub(response, CARD, "Cards")
    for info in cards:
        if ct_id is not None and info.ct_id != ct_id:
            continue
        if slot_id is not None and str(info.slot_id) != slot_id:
            continue
        _card_info(listing, info)
    return response


def _card_info(parent: etree._Element, info: CardInfo) -> None:
    """``CARD:Card`` (CardInfoType, element order as in the XSD)."""
    card = sub(parent, CARD, "Card")
    sub(card, CONN, "CardHandle", info.card_handle)
    sub(card, CARDCMN, "CardType", str(info.card_type))
    sub(card, CARDCMN, "Iccsn", info.iccsn)
    sub(card, CARDCMN, "CtId", info.ct_id)
    sub(card, CARDCMN, "SlotId", str(info.slot_id))
    sub(card, CARD, "InsertTime", info.insert_time.isoformat(timespec="seconds"))
    sub(card, CARD, "CardHolderName", info.card_holder_name)


def get_card_terminals(konnektor: Konnektor, request: etree._Element) -> etree._Element:
    """EventService GetCardTerminals: the emulator's one virtual terminal per CtId."""
    context = _context(request)
    mandant = konnektor.infomodell.check(context)
    response = new(EVT, "GetCardTerminalsResponse")
    _status(response)
    terminals = sub(response, CT, "CardTerminals")
    for ct_id in _terminal_ids(konnektor):
        _card_terminal(terminals, konnektor, sorted(mandant.workplaces), ct_id)
    return response


def _terminal_ids(konnektor: Konnektor) -> list[str]:
    """The emulator's virtual card terminals: one per CtId its cards name."""
    return sorted({card.ct_id for card in konnektor.cards})


def _card_terminal(
    parent: etree._Element, konnektor: Konnektor, workplaces: list[str], ct_id: str
) -> None:
    """``CT:CardTerminal`` (CardTerminalInfoType) of the virtual terminal ``ct_id``."""
    index = _terminal_ids(konnektor).index(ct_id) + 1
    terminal = sub(parent, CT, "CardTerminal")
    product_information(terminal, "KT", "EMUKT", "kim-appliance virtual card terminal")
    sub(terminal, CARDCMN, "CtId", ct_id)
    listing = sub(terminal, CONN, "WorkplaceIds")
    for workplace in workplaces:
        sub(listing, CONN, "WorkplaceId", workplace)
    sub(terminal, CT, "Name", f"virtual terminal {ct_id}")
    sub(terminal, CT, "MacAddress", f"02-00-00-00-00-{index:02X}")
    sub(terminal, CT, "Slots", str(sum(1 for c in konnektor.cards if c.ct_id == ct_id)))
    sub(terminal, CT, "IS_PHYSICAL", "false")
    sub(terminal, CT, "Connected", "true")


#: ``CONN:OperatingState`` conditions reported by GetResourceInformation (gemSpec_Kon
#: TIP1-A_4509/A_4510 names); the emulated Konnektor has none of them active.
OPERATING_CONDITIONS: Final[tuple[tuple[str, str, str], ...]] = (
    ("EC_No_VPN_TI_Connection", "Error", "Infrastructure"),
    ("EC_Time_Sync_Not_Successful", "Warning", "Operation"),
    ("EC_TSL_Update_Not_Successful", "Warning", "Infrastructure"),
    ("EC_CRL_Out_Of_Date", "Error", "Infrastructure"),
)


def get_resource_information(konnektor: Konnektor, request: etree._Element) -> etree._Element:
    """EventService GetResourceInformation (TIP1-A_4607): the card named by CardHandle,
    Iccsn or CtId + SlotId (4008 when no such card is visible to the context), its terminal
    or the one named by CtId, and the Konnektor's own state (VPN to the TI online, no error
    condition active)."""
    context = _context(request)
    mandant = konnektor.infomodell.check(context)
    ct_id = _text(request, CARDCMN, "CtId")
    slot_id = _text(request, CARDCMN, "SlotId")
    iccsn = _text(request, CARDCMN, "Iccsn")
    card_handle = _text(request, CONN, "CardHandle")
    card: CardInfo | None = None
    if card_handle is not None or iccsn is not None or slot_id is not None:
        wanted = {"CardHandle": card_handle, "Iccsn": iccsn, "CtId": ct_id, "SlotId": slot_id}
        found = [
            info
            for info in konnektor.get_cards(context)
            if card_handle in (None, info.card_handle)
            and iccsn in (None, info.iccsn)
            and ct_id in (None, info.ct_id)
            and slot_id in (None, str(info.slot_id))
        ]
        if not found:
            named = ", ".join(f"{k} {v}" for k, v in wanted.items() if v is not None)
            raise CardError(
                errors.CARD_NOT_INSERTED,
                f"no inserted card with {named} is visible to Mandant {context.mandant_id!r}, "
                f"workplace {context.workplace_id!r}",
            )
        card = found[0]
    terminal = card.ct_id if card is not None else ct_id
    if terminal is not None and terminal not in _terminal_ids(konnektor):
        raise ParameterError(
            "CtId",
            f"{terminal!r} is no card terminal of this Konnektor "
            f"({', '.join(_terminal_ids(konnektor))})",
        )
    response = new(EVT, "GetResourceInformationResponse")
    _status(response)
    if card is not None:
        _card_info(response, card)
    if terminal is not None:
        _card_terminal(response, konnektor, sorted(mandant.workplaces), terminal)
    connector = sub(response, CONN, "Connector")
    now = _now()
    for vpn, status in (("VPNTIStatus", "Online"), ("VPNSISStatus", "Offline")):
        element = sub(connector, CONN, vpn)
        sub(element, CONN, "ConnectionStatus", status)
        sub(element, CONN, "Timestamp", now)
    state = sub(connector, CONN, "OperatingState")
    for condition, severity, kind in OPERATING_CONDITIONS:
        error_state = sub(state, CONN, "ErrorState")
        sub(error_state, CONN, "ErrorCondition", condition)
        sub(error_state, CONN, "Severity", severity)
        sub(error_state, CONN, "Type", kind)
        sub(error_state, CONN, "Value", "false")
        sub(error_state, CONN, "ValidFrom", now)
    return response


# --- CardService ---------------------------------------------------------------------------------


def get_pin_status(konnektor: Konnektor, request: etree._Element) -> etree._Element:
    result = konnektor.get_pin_status(
        _context(request),
        _need_text(request, CONN, "CardHandle"),
        _need_text(request, CARDCMN, "PinTyp"),
    )
    response = new(CARD, "GetPinStatusResponse")
    _status(response)
    sub(response, CARD, "PinStatus", str(result.status))
    sub(response, CARD, "LeftTries", str(result.left_tries))
    return response


def verify_pin(konnektor: Konnektor, request: etree._Element) -> etree._Element:
    """CardService VerifyPin: the PIN is typed at the (virtual) terminal: always the right
    one, unless the PIN is blocked (WASBLOCKED) or still the transport PIN."""
    result = konnektor.verify_pin(
        _context(request),
        _need_text(request, CONN, "CardHandle"),
        _need_text(request, CARDCMN, "PinTyp"),
    )
    response = new(CARD, "VerifyPinResponse")
    _status(response)
    sub(response, CARDCMN, "PinResult", str(result.result))
    sub(response, CARDCMN, "LeftTries", str(result.left_tries))
    return response


# --- CertificateService --------------------------------------------------------------------------


def read_card_certificate(konnektor: Konnektor, request: etree._Element) -> etree._Element:
    context = _context(request)
    card_handle = _need_text(request, CONN, "CardHandle")
    crypt = _text(request, CERT, "Crypt") or "RSA"
    refs = [
        (element.text or "").strip()
        for element in _need(request, CERT, "CertRefList").iter(qname(CERT, "CertRef"))
    ]
    response = new(CERT, "ReadCardCertificateResponse")
    _status(response)
    listing = sub(response, CERTCMN, "X509DataInfoList")
    for ref in refs:
        certificate = konnektor.read_card_certificate(context, card_handle, ref, crypt)
        info = sub(listing, CERTCMN, "X509DataInfo")
        sub(info, CERTCMN, "CertRef", ref)
        data = sub(info, CERTCMN, "X509Data")
        issuer_serial = sub(data, CERTCMN, "X509IssuerSerial")
        sub(issuer_serial, CERTCMN, "X509IssuerName", certificate.issuer.rfc4514_string())
        sub(issuer_serial, CERTCMN, "X509SerialNumber", str(certificate.serial_number))
        sub(data, CERTCMN, "X509SubjectName", certificate.subject.rfc4514_string())
        der = certificate.public_bytes(serialization.Encoding.DER)
        sub(data, CERTCMN, "X509Certificate", _b64(der))
    return response


def verify_certificate(konnektor: Konnektor, request: etree._Element) -> etree._Element:
    context = _context(request)
    der = _base64(_need(request, CERTCMN, "X509Certificate"), "X509Certificate")
    certificate = _certificate(der, "X509Certificate")
    when = _text(request, CERT, "VerificationTime")
    at = _datetime(when, "VerificationTime") if when else None
    result = konnektor.verify_certificate(context, certificate, at)
    response = new(CERT, "VerifyCertificateResponse")
    _status(response)
    status = sub(response, CERT, "VerificationStatus")
    sub(status, CERT, "VerificationResult", str(result.result))
    if result.result is not HighLevelResult.VALID:
        status.append(
            telematik_error(
                KonnektorError(
                    0,
                    result.detail,
                    message=result.reason or str(result.result),
                    severity=errors.Severity.WARNING
                    if result.result is HighLevelResult.INCONCLUSIVE
                    else errors.Severity.ERROR,
                    error_type=errors.ErrorType.SECURITY,
                )
            )
        )
    roles = sub(response, CERT, "RoleList")
    for role in result.roles or ("",):
        sub(roles, CERT, "Role", role)
    return response


# --- SignatureService ----------------------------------------------------------------------------

_job_numbers = itertools.count(1)
_job_lock = threading.Lock()


def get_job_number(konnektor: Konnektor, request: etree._Element) -> etree._Element:
    """SignatureService GetJobNumber: ``KIM-001``, ``KIM-002``, ... (pattern [A-Z]{3}-[0-9]{3})."""
    konnektor.infomodell.check(_context(request))
    with _job_lock:
        number = next(_job_numbers) % 1000
    response = new(SIG, "GetJobNumberResponse")
    sub(response, SIG, "JobNumber", f"KIM-{number:03d}")
    return response


def sign_document(konnektor: Konnektor, request: etree._Element) -> etree._Element:
    """SignatureService SignDocument: one CMS SignedData per SignRequest, a KIM signature
    (KOM-LE-A_2190) or a generic CAdES one, enveloping or detached (TUC_KON_160)."""
    context = _context(request)
    card_handle = _need_text(request, CONN, "CardHandle")
    crypt = _text(request, SIG, "Crypt") or "RSA_ECC"
    response = new(SIG, "SignDocumentResponse")
    for sign_request in request.iter(qname(SIG, "SignRequest")):
        request_id = sign_request.get("RequestID", "")
        field = f"SignRequest[{request_id}]"
        inputs = _find(sign_request, SIG, "OptionalInputs")
        properties = None
        include_content = True
        if inputs is not None:
            signature_type = _text(inputs, DSS, "SignatureType")
            if signature_type not in (None, CMS_SIGNATURE):
                raise _unsupported_signature_type(f"{field}.SignatureType", signature_type)
            include = _text(inputs, SIG, "IncludeEContent") or "true"
            include_content = include not in ("false", "0")
            props = _find(inputs, DSS, "Properties")
            properties = _find(props, DSS, "SignedProperties") if props is not None else None
        recipient_emails = _kim_attribute(properties, f"{field}.SignedProperties")
        if recipient_emails is not None and not include_content:
            raise ParameterError(
                f"{field}.IncludeEContent",
                "detached signatures are not supported: KIM includes the eContent (KOM-LE-A_2190)",
            )
        document = _document(sign_request, SIG, f"{field}.Document")
        signed = konnektor.sign_document(
            context,
            card_handle,
            document,
            recipient_emails,
            crypt,
            include_content=include_content,
        )
        answer = sub(response, SIG, "SignResponse", RequestID=request_id)
        _status(answer)
        signature_object = sub(answer, DSS, "SignatureObject")
        sub(signature_object, DSS, "Base64Signature", _b64(signed), Type=CMS_SIGNATURE)
    return response


def verify_document(konnektor: Konnektor, request: etree._Element) -> etree._Element:
    """SignatureService VerifyDocument of a CMS signature, enveloping or detached, KIM or
    generic (TUC_KON_161; digest §1.6, §1.8)."""
    context = _context(request)
    at: dt.datetime | None = None
    inputs = _find(request, SIG, "OptionalInputs")
    if inputs is not None:
        use_time = _find(inputs, SIG, "UseVerificationTime")
        specific = _text(use_time, DSS, "SpecificTime") if use_time is not None else None
        if specific:
            at = _datetime(specific, "UseVerificationTime.SpecificTime")
    signature, document = _signature_and_document(request)
    result = konnektor.verify_document(context, signature, document=document, at=at)
    response = new(SIG, "VerifyDocumentResponse")
    problem = None
    if result.code is not None:
        problem = KonnektorError(
            result.code,
            result.detail,
            message=_VERIFY_TEXTS.get(result.code),
            severity=errors.Severity.WARNING
            if result.result is HighLevelResult.INCONCLUSIVE
            else errors.Severity.ERROR,
            error_type=errors.ErrorType.SECURITY,
        )
    _status(response, problem)
    verification = sub(response, SIG, "VerificationResult")
    sub(verification, SIG, "HighLevelResult", str(result.result))
    sub(verification, SIG, "TimestampType", "SYSTEM_TIMESTAMP")
    sub(verification, SIG, "Timestamp", (at or dt.datetime.now(dt.UTC)).isoformat())
    return response


def _signature_and_document(request: etree._Element) -> tuple[bytes, bytes | None]:
    """(signature, detached document or None) of a VerifyDocument request."""
    signature_object = _find(request, DSS, "SignatureObject")
    has_document = _find(request, SIG, "Document") is not None
    if signature_object is None:
        if not has_document:
            raise ParameterError(
                "VerifyDocument",
                "needs dss:SignatureObject/dss:Base64Signature (the CMS SignedData) or "
                "SIG:Document holding an enveloping CMS signature",
            )
        return _document(request, SIG, "Document"), None
    holder = _find(signature_object, DSS, "Base64Signature")
    if holder is None:
        if _find(signature_object, "http://www.w3.org/2000/09/xmldsig#", "Signature") is not None:
            raise _unsupported_signature_type("SignatureObject.Signature", "urn:ietf:rfc:3275")
        raise ParameterError(
            "SignatureObject",
            "needs dss:Base64Signature with the CMS SignedData (SignaturePtr, Timestamp and "
            "Other are not supported)",
        )
    signature_type = holder.get("Type")
    if signature_type not in (None, CMS_SIGNATURE):
        raise _unsupported_signature_type("SignatureObject.Base64Signature@Type", signature_type)
    signature = _base64(holder, "SignatureObject.Base64Signature")
    document = _document(request, SIG, "Document") if has_document else None
    return signature, document


#: ErrorTexts of the VerifyDocument codes (Tab_Verm_Sig_Prüf, digest §1.6)
_VERIFY_TEXTS: Final[dict[int, str]] = {
    errors.SIGNATURE_CONTENT_MANIPULATED: "Signatur oder Inhalt manipuliert",
    errors.NO_SIGNATURE: "Keine Signatur gefunden",
    errors.WRONG_SIGNATURE_FORMAT: "Falsches Signaturformat",
    errors.CERTIFICATE_PATH_NOT_VALIDATABLE: "Zertifikatspfad nicht validierbar",
    errors.CERTIFICATE_STATUS_UNKNOWN: "Zertifikatsstatus unbekannt",
}


# --- EncryptionService ---------------------------------------------------------------------------


def encrypt_document(konnektor: Konnektor, request: etree._Element) -> etree._Element:
    """EncryptionService EncryptDocument: AuthEnvelopedData for every ``Certificate`` and,
    with ``CertificateOnCard``, the card's own ENC certificate(s); a KIM message
    (KOM-LE-A_2191) with the RecipientEmailsAttribute, a generic document (TUC_KON_070)
    without."""
    context = _context(request)
    keys = _need(request, CRYPT, "RecipientKeys")
    certificates = [
        _certificate(_base64(element, f"RecipientKeys.Certificate[{i}]"), f"Certificate[{i}]")
        for i, element in enumerate(keys.iter(qname(CRYPT, "Certificate")))
    ]
    on_card = _find(keys, CRYPT, "CertificateOnCard")
    if on_card is not None:
        certificates.extend(_certificates_on_card(konnektor, context, on_card))
    inputs = _find(request, CRYPT, "OptionalInputs")
    properties = None
    if inputs is not None:
        encryption_type = _text(inputs, CRYPT, "EncryptionType")
        if encryption_type not in (None, CMS_SIGNATURE):
            raise ParameterError(
                "OptionalInputs.EncryptionType",
                f"{encryption_type!r}: this Konnektor encrypts CMS ({CMS_SIGNATURE}) only",
            )
        properties = _find(inputs, CRYPT, "UnprotectedProperties")
    recipient_emails = _kim_attribute(properties, "OptionalInputs.UnprotectedProperties")
    document = _document(request, CONN, "Document")
    encrypted = konnektor.encrypt_document(context, certificates, document, recipient_emails)
    response = new(CRYPT, "EncryptDocumentResponse")
    _status(response)
    _write_document(response, encrypted, "application/pkcs7-mime")
    return response


def _certificates_on_card(
    konnektor: Konnektor, context: Context, key_on_card: etree._Element
) -> list[x509.Certificate]:
    card_handle = _need_text(key_on_card, CONN, "CardHandle")
    reference = _text(key_on_card, CRYPT, "KeyReference") or "C.ENC"
    crypt = _text(key_on_card, CRYPT, "Crypt") or "RSA"
    if crypt != "RSA_ECC":
        return [konnektor.read_card_certificate(context, card_handle, reference, crypt)]
    found: list[x509.Certificate] = []
    for each in Crypt:
        try:
            found.append(konnektor.read_card_certificate(context, card_handle, reference, each))
        except CardError as exc:
            if exc.code != errors.CALL_NOT_ALLOWED:  # the card lacks this algorithm
                raise
    if not found:
        raise CardError(errors.CALL_NOT_ALLOWED, f"card {card_handle} has no {reference}")
    return found


def decrypt_document(konnektor: Konnektor, request: etree._Element) -> etree._Element:
    """EncryptionService DecryptDocument with the card's C.ENC keys (PrivateKeyOnCard)."""
    context = _context(request)
    key_on_card = _need(request, CRYPT, "PrivateKeyOnCard")
    reference = _text(key_on_card, CRYPT, "KeyReference") or "C.ENC"
    if reference != "C.ENC":
        raise ParameterError(
            "PrivateKeyOnCard.KeyReference", f"{reference!r}: only C.ENC keys decrypt"
        )
    plaintext = konnektor.decrypt_document(
        context, _need_text(key_on_card, CONN, "CardHandle"), _document(request, CONN, "Document")
    )
    response = new(CRYPT, "DecryptDocumentResponse")
    _status(response)
    _write_document(response, plaintext, "application/octet-stream")
    return response


def _write_document(parent: etree._Element, data: bytes, mime_type: str) -> None:
    document = sub(parent, CONN, "Document")
    sub(document, DSS, "Base64Data", _b64(data), MimeType=mime_type)


# --- AuthSignatureService ------------------------------------------------------------------------


def external_authenticate(konnektor: Konnektor, request: etree._Element) -> etree._Element:
    """AuthSignatureService ExternalAuthenticate: sign a SHA-256 hash with the AUT key."""
    context = _context(request)
    card_handle = _need_text(request, CONN, "CardHandle")
    scheme = "RSASSA-PSS"
    signature_type = RSA_SIGNATURE
    inputs = _find(request, SIG74, "OptionalInputs")
    if inputs is not None:
        requested = _text(inputs, DSS, "SignatureType")
        if requested == ECDSA_SIGNATURE:
            scheme, signature_type = "ECDSA", ECDSA_SIGNATURE
        elif requested not in (None, RSA_SIGNATURE):
            raise ParameterError(
                "OptionalInputs.SignatureType",
                f"{requested!r} is not {RSA_SIGNATURE} or {ECDSA_SIGNATURE}",
            )
        else:
            scheme = _text(inputs, SIG74, "SignatureSchemes") or scheme
    binary = _need(request, SIG74, "BinaryString")
    digest = _base64(_need(binary, DSS, "Base64Data"), "BinaryString.Base64Data")
    signature = konnektor.external_authenticate(context, card_handle, digest, scheme)
    response = new(SIG74, "ExternalAuthenticateResponse")
    _status(response)
    signature_object = sub(response, DSS, "SignatureObject")
    sub(signature_object, DSS, "Base64Signature", _b64(signature), Type=signature_type)
    return response


_HANDLERS: Final[dict[str, Handler]] = {
    qname(EVT, "GetCards"): get_cards,
    qname(EVT, "GetCardTerminals"): get_card_terminals,
    qname(EVT, "GetResourceInformation"): get_resource_information,
    qname(CARD, "GetPinStatus"): get_pin_status,
    qname(CARD, "VerifyPin"): verify_pin,
    qname(CERT, "ReadCardCertificate"): read_card_certificate,
    qname(CERT, "VerifyCertificate"): verify_certificate,
    qname(SIG, "GetJobNumber"): get_job_number,
    qname(SIG, "SignDocument"): sign_document,
    qname(SIG, "VerifyDocument"): verify_document,
    qname(CRYPT, "EncryptDocument"): encrypt_document,
    qname(CRYPT, "DecryptDocument"): decrypt_document,
    qname(SIG74, "ExternalAuthenticate"): external_authenticate,
}

#: The operations this server answers, per service (for the docs and the tests).
OPERATIONS: Final[dict[str, tuple[str, ...]]] = {
    spec.name: tuple(
        etree.QName(tag).localname
        for tag in _HANDLERS
        if etree.QName(tag).namespace == spec.namespace
    )
    for spec in SERVICES_BY_NAME.values()
}
