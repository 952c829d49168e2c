"""Fuzz targets of the services' request parsing: JSON bodies, the Account Manager's JWT, and
the Konnektor's SOAP requests; and of the Clientmodul's SOAP client: the Konnektor's answers and
its connector.sds (a Konnektor outside the appliance is a peer like any other).

:func:`~kim_appliance.protocols.jsonbody.load_json_body` declares ``JsonBodyError``;
:func:`~kim_appliance.pki.jwt.verify_jwt` declares ``JwtError``;
:func:`~kim_appliance.konnektor.soap.envelope.parse_request` declares ``SoapFaultError``, and
the whole :class:`~kim_appliance.konnektor.soap.handlers.SoapDispatcher` answers every request
with a response or a SOAP fault. The dispatcher catches everything, so for it a crash is a fault
with the Konnektor's internal-error code 4001 (what a bug looks like from outside), or an
answer that is not a SOAP 1.1 envelope. The Clientmodul's reading of an answer
(:func:`~kim_appliance.clientmodul.network.konnektor_messages.read_response` and the readers of
each operation) declares ``KonnektorFault`` and ``KonnektorUnreachable``, the service directory
reader ``KonnektorUnreachable``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json

from lxml import etree

from kim_appliance.clientmodul.network import konnektor_messages as answers
from kim_appliance.clientmodul.network.sds import parse_service_directory
from kim_appliance.clientmodul.ports import KonnektorFault, KonnektorUnreachable
from kim_appliance.konnektor.soap.envelope import SoapFaultError, parse_request
from kim_appliance.konnektor.soap.services import SERVICES, SOAP11
from kim_appliance.pki.jwt import JwtError, verify_jwt
from kim_appliance.protocols.jsonbody import JsonBodyError, load_json_body

from .target import CORPUS, Finding, Runner, Target
from .world import demo_world

JWT_WORLD = CORPUS / "_keys" / "jwt"
#: card handles in the SOAP seeds: placeholder -> ICCSN of the demo card (set per process)
HANDLE_PLACEHOLDERS = {
    b"@@HANDLE-WEBER@@": "80276883110000100001",
    b"@@HANDLE-SONNE@@": "80276883110000100002",
    b"@@HANDLE-KLEIN@@": "80276883110000100003",
    b"@@HANDLE-MEYER@@": "80276883110000100004",
}


def _build_json_body() -> Runner:
    def run(data: bytes) -> None:
        value = load_json_body(data, max_bytes=16 * 1024, max_depth=16)
        json.dumps(value, allow_nan=False)  # what the services answer with must serialise

    return run


def _build_jwt() -> Runner:
    """verify_jwt with the trust anchors and the time the seeds were made at."""
    from kim_appliance.pki import TrustStore

    world = json.loads((JWT_WORLD / "world.json").read_text())
    trust = TrustStore.from_pem_files(sorted(JWT_WORLD.glob("*.pem")))
    now = dt.datetime.fromisoformat(world["now"])

    def run(data: bytes) -> None:
        token = data.decode("latin-1")
        verify_jwt(token, trust=trust, now=now)

    return run


def _build_soap_envelope() -> Runner:
    def run(data: bytes) -> None:
        parse_request(data)

    return run


@functools.cache
def _dispatcher() -> tuple[object, dict[bytes, bytes]]:
    from kim_appliance.konnektor import Context, Konnektor
    from kim_appliance.konnektor.soap.handlers import SoapDispatcher

    world = demo_world()
    konnektor = Konnektor.from_data_dir(world.data_dir, persist_revocations=False)
    handles = {
        info.iccsn: info.card_handle
        for info in konnektor.get_cards(Context("Mandant1", "PVS1", "AP1", "dr.meyer"))
    }
    replacements = {p: handles[i].encode() for p, i in HANDLE_PLACEHOLDERS.items()}
    return SoapDispatcher(konnektor), replacements


#: the operations of the Clientmodul's SOAP client: the answer's element, what reads it, and the
#: elements whose base64 is decoded on the fly (the first byte of an input chooses)
ANSWERS: tuple[tuple[str, str, object, tuple[str, ...]], ...] = (
    (answers.EVT, "GetCardsResponse", answers.cards, ()),
    (answers.CARD, "GetPinStatusResponse", answers.pin_status, ()),
    (answers.CERT, "ReadCardCertificateResponse", answers.certificate, ()),
    (answers.CERT, "VerifyCertificateResponse", answers.certificate_status, ()),
    (answers.SIG, "GetJobNumberResponse", answers.job_number, ()),
    (answers.SIG, "SignDocumentResponse", answers.signature, answers.SIGNATURE_BINARY),
    (answers.CRYPT, "DecryptDocumentResponse", answers.document, answers.DOCUMENT_BINARY),
    (answers.SIG74, "ExternalAuthenticateResponse", answers.auth_signature, ()),
)


def _build_konnektor_answers() -> Runner:
    """read_response and the operation's reader: first byte chooses the operation and where the
    body is split in two chunks (answers arrive in pieces); the rest is the HTTP body."""

    def run(data: bytes) -> None:
        if not data:
            return
        namespace, name, reader, binary = ANSWERS[data[0] % len(ANSWERS)]
        body = data[1:]
        split = len(body) * (data[0] // len(ANSWERS)) // 32
        response = answers.read_response(
            [body[:split], body[split:]], f"{{{namespace}}}{name}", binary=binary
        )
        if binary:
            reader(response)  # type: ignore[operator]
        else:
            reader(response.element)  # type: ignore[operator]

    return run


def _build_connector_sds() -> Runner:
    def run(data: bytes) -> None:
        directory = parse_service_directory(data, "https://konnektor.test/connector.sds")
        for namespace, _, _, _ in ANSWERS:
            with contextlib.suppress(KonnektorUnreachable):
                directory.endpoint("SignatureService", namespace)

    return run


_INTERNAL_ERROR_CODE = b">4001<"


def _build_soap() -> Runner:
    """SoapDispatcher.handle: first byte chooses the service, the rest is the POST body."""
    from kim_appliance.konnektor.soap.handlers import SoapDispatcher

    dispatcher, replacements = _dispatcher()
    assert isinstance(dispatcher, SoapDispatcher)
    services = [spec.name for spec in SERVICES]

    def run(data: bytes) -> None:
        if not data:
            return
        service = services[data[0] % len(services)]
        body = data[1:]
        for placeholder, handle in replacements.items():
            body = body.replace(placeholder, handle)
        reply = dispatcher.handle(service, body)
        if reply.status not in (200, 500):
            raise Finding(f"SOAP answer with HTTP status {reply.status}")
        root = etree.fromstring(reply.body)
        if root.tag != f"{{{SOAP11}}}Envelope":
            raise Finding(f"SOAP answer is not a SOAP 1.1 envelope: {root.tag}")
        if _INTERNAL_ERROR_CODE in reply.body:
            raise Finding(f"SOAP internal error 4001: {reply.body[:600]!r}")

    return run


_JSON_TOKENS = (
    b"[", b"]", b"{", b"}", b'"', b"\\", b"\\u0000", b"\\ud800", b":", b",", b"NaN", b"-Infinity",
    b"1e999", b"-0", b"1" * 30, b"true", b"null", b"\xff", b"\xc3\xa4", b'"a":', b"[" * 40,
)  # fmt: skip
_JWT_TOKENS = (b".", b"eyJ", b"-", b"_", b"=", b"A", b"e30")
_XML_TOKENS = (
    b"<", b">", b"</", b"/>", b"=\"", b"xmlns=\"", b"<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>",
    b"&e;", b"&amp;", b"&#0;", b"<![CDATA[", b"]]>", b"<?xml version=\"1.0\"?>",
    b"http://schemas.xmlsoap.org/soap/envelope/", b"http://www.w3.org/2003/05/soap-envelope",
    b"<soap:Body>", b"</soap:Body>", b"CardHandle", b"Base64Data", b"AAAA", b"====",
    b"urn:ietf:rfc:5652", b"RecipientEmailsAttribute", b"2025-12-01T10:00:00",
)  # fmt: skip

TARGETS = [
    Target(
        "json_body", "load_json_body: size, depth, non-finite numbers", (JsonBodyError,),
        _build_json_body, max_len=16 * 1024, dictionary=_JSON_TOKENS,
    ),
    Target(
        "jwt", "verify_jwt: the Account Manager's bearer token", (JwtError,), _build_jwt,
        max_len=16 * 1024, dictionary=_JWT_TOKENS,
    ),
    Target(
        "soap_envelope", "parse_request: SOAP 1.1 envelope, no DTD", (SoapFaultError,),
        _build_soap_envelope, max_len=64 * 1024, dictionary=_XML_TOKENS,
    ),
    Target(
        "soap", "SoapDispatcher: envelope, XSD validation, request parsing, the operations",
        (), _build_soap, max_len=64 * 1024, dictionary=_XML_TOKENS,
    ),
    Target(
        "konnektor_answers", "the Clientmodul's SOAP client: read_response and the readers",
        (KonnektorFault, KonnektorUnreachable), _build_konnektor_answers, max_len=64 * 1024,
        dictionary=_XML_TOKENS,
    ),
    Target(
        "connector_sds", "the Clientmodul's reading of a Konnektor's connector.sds",
        (KonnektorUnreachable,), _build_connector_sds, max_len=64 * 1024,
        dictionary=_XML_TOKENS,
    ),
]  # fmt: skip
