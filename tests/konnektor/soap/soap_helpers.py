"""Shared pieces of the SOAP tests: call contexts as zeep dicts, the KIM recipient-emails
property, and a look at the GERROR:Error of a fault."""

from __future__ import annotations

import base64
from typing import Any

import zeep.exceptions
from konnektor_helpers import ADDRESSES, HBA_CONTEXT, handle
from lxml import etree

from kim_appliance.cms.recipient_emails import RecipientEmail, encode_recipient_emails
from kim_appliance.konnektor import Konnektor
from kim_appliance.konnektor.soap.services import GERROR

CTX = {"MandantId": "Mandant1", "ClientSystemId": "PVS1", "WorkplaceId": "AP1"}
#: the admin token every Konnektor of these tests is served with, and the header carrying it
ADMIN_TOKEN = "test-admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HBA_CTX = {**CTX, "UserId": "dr.meyer"}
DOCUMENT = b"Content-Type: message/rfc822\r\n\r\nFrom: a@b\r\nSubject: eAU\r\n\r\nHallo\r\n"


def recipient_emails(konnektor: Konnektor, *targets: tuple[str, str]) -> bytes:
    """The DER recipient-emails Attribute for the C.ENC certificates of ``(iccsn, crypt)``."""
    entries = []
    for iccsn, crypt in targets:
        cert = konnektor.read_card_certificate(
            HBA_CONTEXT, handle(konnektor, iccsn), "C.ENC", crypt
        )
        entries.append(RecipientEmail.for_certificate(ADDRESSES[iccsn], cert))
    return encode_recipient_emails(entries)


def cms_attribute_property(attribute: bytes) -> dict[str, Any]:
    """A dss:Property RecipientEmailsAttribute whose dss:Value holds <CMSAttribute> as KIM
    clients send it (digest §1.8, §2.7); zeep takes the lax xs:any content as an element."""
    holder = etree.Element("CMSAttribute")
    holder.text = base64.b64encode(attribute).decode("ascii")
    return {"Identifier": "RecipientEmailsAttribute", "Value": {"_value_1": [holder]}}


def trace(fault: zeep.exceptions.Fault) -> dict[str, str]:
    """Code, Severity, ErrorType, ErrorText and Detail of the fault's GERROR:Error/Trace."""
    assert fault.detail is not None, f"fault without detail: {fault.message}"
    error = fault.detail.find(f"{{{GERROR}}}Error")
    assert error is not None, etree.tostring(fault.detail)
    found = error.find(f"{{{GERROR}}}Trace")
    assert found is not None
    return {etree.QName(child).localname: child.text or "" for child in found}
