"""The HTTP side of the Konnektor: connector.sds (valid against ServiceDirectory.xsd, URLs
from the request's Host), the WSDL files, plain HTTP, and requests that are no proper SOAP
(malformed XML, SOAP 1.2, XSD violations, unknown operations) answered with faults that say
what was wrong."""

from __future__ import annotations

import pytest
import requests
import zeep
import zeep.exceptions
import zeep.transports
from conftest import RunningKonnektor, WireCheck, serving
from lxml import etree
from soap_helpers import CTX

from kim_appliance.konnektor import Konnektor
from kim_appliance.konnektor.soap import SERVICES
from kim_appliance.konnektor.soap.services import (
    GERROR,
    SI,
    SOAP11,
    service_directory_schema,
    telematik_error_schema,
)

GET_PIN_STATUS = """<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="{soap}" xmlns:CARD="http://ws.gematik.de/conn/CardService/v8.1"
    xmlns:CCTX="http://ws.gematik.de/conn/ConnectorContext/v2.0"
    xmlns:CONN="http://ws.gematik.de/conn/ConnectorCommon/v5.0"
    xmlns:CARDCMN="http://ws.gematik.de/conn/CardServiceCommon/v2.0">
  <soap:Body><CARD:GetPinStatus>
    <CCTX:Context><CONN:MandantId>Mandant1</CONN:MandantId>
      <CONN:ClientSystemId>PVS1</CONN:ClientSystemId><CONN:WorkplaceId>AP1</CONN:WorkplaceId>
    </CCTX:Context>
    {inner}
  </CARD:GetPinStatus></soap:Body>
</soap:Envelope>"""


def _post(soap: RunningKonnektor, service: str, body: str | bytes) -> requests.Response:
    data = body.encode("utf-8") if isinstance(body, str) else body
    return soap.http.post(
        soap.url(f"/ws/{service}"),
        data=data,
        headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
        timeout=10,
    )


def _fault(response: requests.Response) -> tuple[str, str, etree._Element | None]:
    """faultcode, faultstring and the GERROR:Error (validated) of a fault response."""
    assert response.status_code == 500, response.text
    root = etree.fromstring(response.content)
    fault = root.find(f"{{{SOAP11}}}Body/{{{SOAP11}}}Fault")
    assert fault is not None, response.text
    error = fault.find(f"detail/{{{GERROR}}}Error")
    if error is not None:
        schema = telematik_error_schema()
        assert schema.validate(error), schema.error_log
    return fault.findtext("faultcode") or "", fault.findtext("faultstring") or "", error


def test_connector_sds_lists_every_service(soap: RunningKonnektor) -> None:
    """connector.sds (ServiceDirectory v3.1, digest §1.8) is valid against the XSD, names each
    service with its one version, and its EndpointTLS URLs use the Host the client used."""
    response = soap.http.get(soap.url("/connector.sds"), timeout=10)
    assert response.status_code == 200
    root = etree.fromstring(response.content)
    schema = service_directory_schema()
    assert schema.validate(root), schema.error_log
    assert root.findtext("{*}TLSMandatory") == "true"
    services = {s.get("Name"): s for s in root.iter(f"{{{SI}}}Service")}
    assert set(services) == {spec.name for spec in SERVICES}
    for spec in SERVICES:
        version = services[spec.name].find(f"{{{SI}}}Versions/{{{SI}}}Version")
        assert version is not None
        assert (version.get("Version"), version.get("TargetNamespace")) == (
            spec.version,
            spec.wsdl_namespace,
        )
        tls = version.find(f"{{{SI}}}EndpointTLS")
        assert tls is not None
        assert tls.get("Location") == f"https://127.0.0.1:{soap.address.port}/ws/{spec.name}"
    by_name = soap.http.get(
        soap.url("/connector.sds"), headers={"Host": f"localhost:{soap.address.port}"}, timeout=10
    )
    assert f"https://localhost:{soap.address.port}/ws/CardService" in by_name.text
    evil = soap.http.get(soap.url("/connector.sds"), headers={"Host": "x/><script>"}, timeout=10)
    assert "script" not in evil.text


def test_a_zeep_client_built_from_the_served_wsdl(soap: RunningKonnektor) -> None:
    """A client that knows only connector.sds: it loads the WSDL (with its relative XSD
    imports) from the URL the directory names and calls the endpoint the directory names."""
    sds = etree.fromstring(soap.http.get(soap.url("/connector.sds"), timeout=10).content)
    version = next(s for s in sds.iter(f"{{{SI}}}Service") if s.get("Name") == "EventService").find(
        f"{{{SI}}}Versions/{{{SI}}}Version"
    )
    assert version is not None
    wsdl = version.find(f"{{{SI}}}WSDL")
    endpoint = version.find(f"{{{SI}}}EndpointTLS")
    assert wsdl is not None
    assert endpoint is not None
    transport = zeep.transports.Transport(session=soap.http, timeout=10)
    client = zeep.Client(
        wsdl.get("Location"), transport=transport, settings=zeep.Settings(forbid_entities=False)
    )
    service = client.create_service(
        "{http://ws.gematik.de/conn/EventService/WSDL/v7.2}EventServiceBinding",
        endpoint.get("Location"),
    )
    assert service.GetCards(Context=CTX).Status.Result == "OK"
    outside = soap.http.get(soap.url("/wsdl/../soap/server.py"), timeout=10)
    assert outside.status_code == 404


def test_request_violating_the_xsd_is_fault_4000(soap: RunningKonnektor) -> None:
    """A request the XSD refuses (here: PinTyp missing) is error 4000 with the schema's reason."""
    response = _post(
        soap,
        "CardService",
        GET_PIN_STATUS.format(soap=SOAP11, inner="<CONN:CardHandle>h</CONN:CardHandle>"),
    )
    faultcode, faultstring, error = _fault(response)
    assert faultcode == "soap:Client"
    assert error is not None
    assert error.findtext(f"{{{GERROR}}}Trace/{{{GERROR}}}Code") == "4000"
    assert "PinTyp" in faultstring


def test_operation_of_another_service_is_refused(soap: RunningKonnektor) -> None:
    body = GET_PIN_STATUS.format(
        soap=SOAP11,
        inner="<CONN:CardHandle>h</CONN:CardHandle><CARDCMN:PinTyp>PIN.SMC</CARDCMN:PinTyp>",
    )
    _, faultstring, error = _fault(_post(soap, "EventService", body))
    assert error is not None
    assert "GetPinStatus" in faultstring
    assert "EventService" in faultstring


@pytest.mark.parametrize(
    ("body", "faultcode", "reason"),
    [
        (b"<not xml", "soap:Client", "well-formed"),
        (
            GET_PIN_STATUS.format(soap="http://www.w3.org/2003/05/soap-envelope", inner=""),
            "soap:VersionMismatch",
            "SOAP 1.2",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]>'
            b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
            b"<soap:Body><x>&a;</x></soap:Body></soap:Envelope>",
            "soap:Client",
            "DOCTYPE",
        ),
    ],
)
def test_no_soap_11_envelope_is_a_protocol_fault(
    soap: RunningKonnektor, body: str | bytes, faultcode: str, reason: str
) -> None:
    code, faultstring, error = _fault(_post(soap, "CardService", body))
    assert (code, error) == (faultcode, None)
    assert reason in faultstring


def test_unknown_paths_and_methods(soap: RunningKonnektor) -> None:
    assert soap.http.get(soap.url("/ws/NoSuchService"), timeout=10).status_code == 404
    assert soap.http.get(soap.url("/ws/CardService"), timeout=10).status_code == 405
    assert soap.http.get(soap.url("/nothing"), timeout=10).status_code == 404
    assert soap.http.post(soap.url("/connector.sds"), timeout=10).status_code == 405
    license_text = soap.http.get(soap.url("/wsdl/LICENSE"), timeout=10)
    assert "Apache License" in license_text.text


def test_plain_http_directory_names_plain_endpoints(konnektor: Konnektor) -> None:
    """Without a TLS context the Konnektor speaks HTTP, and connector.sds says so."""
    session = requests.Session()
    session.trust_env = False
    with serving(konnektor, None) as address:
        assert address.base_url.startswith("http://")
        text = session.get(address.sds_url, timeout=10).text
    root = etree.fromstring(text.encode("utf-8"))
    assert root.findtext("{*}TLSMandatory") == "false"
    endpoint = next(root.iter(f"{{{SI}}}Endpoint"))
    assert endpoint.get("Location", "").startswith(f"http://127.0.0.1:{address.port}/ws/")


def test_the_wire_check_sees_the_messages(soap: RunningKonnektor) -> None:
    """The conftest's XSD check really runs: it records what went over the wire, and it
    refuses a response that breaks the XSD."""
    soap.service("EventService").GetCards(Context=CTX)
    check = soap.clients["EventService"].check
    assert check.seen[-2:] == ["sent GetCards", "received GetCardsResponse"]
    broken = etree.fromstring(
        f'<s:Envelope xmlns:s="{SOAP11}"><s:Body>'
        '<e:GetCardsResponse xmlns:e="http://ws.gematik.de/conn/EventService/v7.2"/>'
        "</s:Body></s:Envelope>"
    )
    probe = WireCheck("EventService")
    probe.ingress(broken, {}, None)
    assert probe.problems
    assert "GetCardsResponse" in probe.problems[0]
