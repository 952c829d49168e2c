"""SOAP 1.1 envelopes for the Konnektor services: parse a request, write a response or a fault.

gematik's WSDLs bind every operation as SOAP 1.1 document/literal (``soap:binding
style="document"``, ``soap:body use="literal"``), so a request is one element in
``soap:Body`` and so is the answer. A refused call is a SOAP Fault whose ``detail`` holds a
``GERROR:Error`` (tel/error/TelematikError.xsd) with one ``Trace``: Code, Severity, ErrorType,
ErrorText and Detail of the :class:`~kim_appliance.konnektor.errors.KonnektorError` (digest
§1.6). This module is pure XML: it never calls the Konnektor and never does I/O.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Final

from lxml import etree

from kim_appliance.konnektor.errors import SYNTAX_ERROR, KonnektorError
from kim_appliance.konnektor.soap.services import GERROR, NSMAP, PI, SOAP11, SOAP12, safe_parser

#: ``Trace/CompType`` of every error the emulated Konnektor reports.
COMP_TYPE: Final = "KON"
CONTENT_TYPE: Final = "text/xml; charset=utf-8"


class SoapFaultError(Exception):
    """The request is no SOAP 1.1 envelope at all (answered with faultcode Client or
    VersionMismatch, without a Konnektor error code)."""

    def __init__(self, faultcode: str, reason: str) -> None:
        super().__init__(reason)
        self.faultcode = faultcode
        self.reason = reason


# Characters XML 1.0 cannot carry (§2.2): C0 controls but TAB/LF/CR, surrogates, U+FFFE/FFFF.
_NOT_XML_CHAR: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """``text`` as XML character data: a character XML cannot carry (a control character from
    a certificate name quoted in an error Detail, issue 11) is written as ``\\xNN``."""
    return _NOT_XML_CHAR.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def qname(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


def sub(
    parent: etree._Element,
    namespace: str,
    name: str,
    text: str | None = None,
    **attributes: str,
) -> etree._Element:
    """Append ``{namespace}name`` with optional text and (unqualified) attributes."""
    element = etree.SubElement(parent, qname(namespace, name), attributes or None)
    if text is not None:
        element.text = xml_text(text)
    return element


def new(namespace: str, name: str, **attributes: str) -> etree._Element:
    """A new root element with gematik's prefixes declared."""
    return etree.Element(qname(namespace, name), attributes or None, nsmap=NSMAP)


def parse_request(body: bytes) -> etree._Element:
    """The operation element of a SOAP 1.1 request (the first element in ``soap:Body``).

    Raises SoapFaultError for anything that is not a SOAP 1.1 envelope with one body element:
    malformed XML, a DOCTYPE (SOAP 1.1 §3 forbids DTDs), SOAP 1.2, no Body, empty Body.
    """
    try:
        root = etree.fromstring(body, safe_parser(huge=True))
    except etree.XMLSyntaxError as exc:
        raise SoapFaultError("Client", f"request is not well-formed XML: {exc}") from None
    if getattr(root.getroottree().docinfo, "doctype", ""):
        raise SoapFaultError("Client", "request contains a DOCTYPE, which SOAP forbids")
    if root.tag == qname(SOAP12, "Envelope"):
        raise SoapFaultError(
            "VersionMismatch", "SOAP 1.2 envelope; the Konnektor services speak SOAP 1.1"
        )
    if root.tag != qname(SOAP11, "Envelope"):
        raise SoapFaultError("Client", f"root element {root.tag} is not a SOAP 1.1 Envelope")
    body_element = root.find(qname(SOAP11, "Body"))
    if body_element is None:
        raise SoapFaultError("Client", "Envelope has no Body")
    operations = [child for child in body_element if isinstance(child.tag, str)]
    if len(operations) != 1:
        raise SoapFaultError(
            "Client", f"Body must hold exactly one operation element, found {len(operations)}"
        )
    return operations[0]


def envelope(payload: etree._Element) -> bytes:
    """Serialise ``payload`` inside a SOAP 1.1 envelope."""
    env = etree.Element(qname(SOAP11, "Envelope"), nsmap=NSMAP)
    body = etree.SubElement(env, qname(SOAP11, "Body"))
    body.append(payload)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


def telematik_error(error: KonnektorError) -> etree._Element:
    """``GERROR:Error`` with one Trace for ``error`` (TelematikError.xsd, element order
    as in the schema)."""
    root = new(GERROR, "Error")
    sub(root, GERROR, "MessageID", str(uuid.uuid4()))
    sub(root, GERROR, "Timestamp", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    trace = sub(root, GERROR, "Trace")
    sub(trace, GERROR, "EventID", "")
    sub(trace, GERROR, "Instance", "")
    sub(trace, GERROR, "LogReference", "")
    sub(trace, GERROR, "CompType", COMP_TYPE)
    sub(trace, GERROR, "Code", str(error.code))
    sub(trace, GERROR, "Severity", str(error.severity))
    sub(trace, GERROR, "ErrorType", str(error.error_type))
    sub(trace, GERROR, "ErrorText", error.message)
    if error.detail:
        sub(trace, GERROR, "Detail", error.detail)
    return root


def fault(error: KonnektorError) -> bytes:
    """The SOAP Fault for a refused Konnektor call (HTTP 500, SOAP 1.1 §6.2)."""
    faultcode = "soap:Client" if error.code == SYNTAX_ERROR else "soap:Server"
    return _fault(faultcode, str(error), telematik_error(error))


def protocol_fault(exc: SoapFaultError) -> bytes:
    """The SOAP Fault for a request that is no usable SOAP 1.1 envelope."""
    return _fault(f"soap:{exc.faultcode}", exc.reason, None)


def _fault(faultcode: str, faultstring: str, detail: etree._Element | None) -> bytes:
    env = etree.Element(qname(SOAP11, "Envelope"), nsmap=NSMAP)
    body = etree.SubElement(env, qname(SOAP11, "Body"))
    fault_element = etree.SubElement(body, qname(SOAP11, "Fault"))
    # faultcode, faultstring and detail are unqualified (SOAP 1.1 §4.4)
    etree.SubElement(fault_element, "faultcode").text = faultcode
    etree.SubElement(fault_element, "faultstring").text = xml_text(faultstring)
    if detail is not None:
        etree.SubElement(fault_element, "detail").append(detail)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


def product_information(parent: etree._Element, product_type: str, code: str, name: str) -> None:
    """PI:ProductInformation (ProductInformation.xsd 1.1) of an emulated product."""
    info = sub(parent, PI, "ProductInformation")
    sub(info, PI, "InformationDate", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    type_info = sub(info, PI, "ProductTypeInformation")
    sub(type_info, PI, "ProductType", product_type)
    sub(type_info, PI, "ProductTypeVersion", "1.0.0")
    ident = sub(info, PI, "ProductIdentification")
    sub(ident, PI, "ProductVendorID", "KIMAP")
    sub(ident, PI, "ProductCode", code)
    version = sub(ident, PI, "ProductVersion")
    local = sub(version, PI, "Local")
    sub(local, PI, "HWVersion", "1.0.0")
    sub(local, PI, "FWVersion", "0.1.0")
    misc = sub(info, PI, "ProductMiscellaneous")
    sub(misc, PI, "ProductVendorName", "kim-appliance")
    sub(misc, PI, "ProductName", name)
