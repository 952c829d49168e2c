"""Bad input at the Konnektor's SOAP services and admin API (issue 11): a malformed certificate
in a request is fault 4000 naming the field, not the internal error 4001; the admin API answers
JSON nested 30,000 deep with 400 and goes on serving."""

from __future__ import annotations

import base64

from conftest import RunningKonnektor
from cryptography.hazmat.primitives import serialization
from konnektor_helpers import CONTEXT, WEBER, handle
from lxml import etree
from soap_helpers import ADMIN_HEADERS

from kim_appliance.konnektor import Konnektor
from kim_appliance.konnektor.soap.handlers import SoapDispatcher
from kim_appliance.konnektor.soap.services import CERT, GERROR

ENVELOPE = (
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
    ' xmlns:CCTX="http://ws.gematik.de/conn/ConnectorContext/v2.0"'
    ' xmlns:CONN="http://ws.gematik.de/conn/ConnectorCommon/v5.0"'
    ' xmlns:CERTCMN="http://ws.gematik.de/conn/CertificateServiceCommon/v2.0"'
    f' xmlns:CERT="{CERT}"><s:Body><CERT:VerifyCertificate><CCTX:Context>'
    "<CONN:MandantId>Mandant1</CONN:MandantId><CONN:ClientSystemId>PVS1</CONN:ClientSystemId>"
    "<CONN:WorkplaceId>AP1</CONN:WorkplaceId></CCTX:Context>"
    "<CERTCMN:X509Certificate>{certificate}</CERTCMN:X509Certificate>"
    "</CERT:VerifyCertificate></s:Body></s:Envelope>"
)


def _trace_code(body: bytes) -> str:
    root = etree.fromstring(body)
    code = root.find(f".//{{{GERROR}}}Trace/{{{GERROR}}}Code")
    assert code is not None, body[:400]
    return str(code.text)


def test_verify_certificate_with_a_half_readable_certificate_is_4000(
    konnektor: Konnektor,
) -> None:
    """Issue 11 (found by fuzzing): a certificate cryptography loads but cannot read (a broken
    issuer name, a duplicate extension) failed inside path validation: fault 4001 internal
    error. It is read completely when the request is parsed: 4000 naming X509Certificate."""
    good = konnektor.read_card_certificate(CONTEXT, handle(konnektor, WEBER), "C.ENC")
    der = good.public_bytes(serialization.Encoding.DER)
    key_usage = bytes.fromhex("0603551d0f")  # id-ce-keyUsage; its BIT STRING becomes a NULL:
    at = der.index(key_usage) + len(key_usage)  # the certificate loads, the extension does not
    broken = der[:at] + der[at:].replace(b"\x03\x02", b"\x05\x02", 1)
    dispatcher = SoapDispatcher(konnektor)
    for certificate, expected in ((der, 200), (broken, 500)):
        body = ENVELOPE.format(certificate=base64.b64encode(certificate).decode())
        reply = dispatcher.handle("CertificateService", body.encode())
        assert reply.status == expected, reply.body[:600]
    assert _trace_code(reply.body) == "4000"
    assert b"X509Certificate: is not a usable X.509 certificate: extensions cannot be read" in (
        reply.body
    )


def test_admin_api_refuses_deeply_nested_json_and_serves_on(soap: RunningKonnektor) -> None:
    """Issue 11: POST /admin/faults with JSON nested deep ended the process (RecursionError).
    Now it is 400 saying why, and the next request is answered."""
    deep = b"[" * 30_000 + b"]" * 30_000
    headers = {**ADMIN_HEADERS, "Content-Type": "application/json"}
    response = soap.http.post(soap.url("/admin/faults"), data=deep, headers=headers, timeout=10)
    assert response.status_code == 400
    assert "nested 30000 levels deep" in response.json()["error"]
    non_finite = soap.http.post(
        soap.url("/admin/faults"), data=b'{"latency_ms": 1e999}', headers=headers, timeout=10
    )
    assert non_finite.status_code == 400
    status = soap.http.get(soap.url("/admin/faults"), headers=ADMIN_HEADERS, timeout=10)
    assert status.status_code == 200


def test_a_control_character_in_a_certificate_name_reaches_the_answer_escaped(
    konnektor: Konnektor,
) -> None:
    """Issue 11 (found by fuzzing): VerifyCertificate quotes the certificate's subject in the
    GERROR Detail; a control character there made lxml refuse the text: fault 4001. Text the
    XML cannot carry is written as \\xNN, and the answer is the usual INVALID."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "out\x01sider\x1b[0m")])
    now = dt.datetime.now(dt.UTC)
    outsider = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    body = ENVELOPE.format(
        certificate=base64.b64encode(outsider.public_bytes(serialization.Encoding.DER)).decode()
    )
    reply = SoapDispatcher(konnektor).handle("CertificateService", body.encode())
    assert reply.status == 200, reply.body[:800]
    root = etree.fromstring(reply.body)
    result = root.find(f".//{{{CERT}}}VerificationResult")
    assert result is not None
    assert result.text == "INVALID"
    assert b"4001" not in reply.body
