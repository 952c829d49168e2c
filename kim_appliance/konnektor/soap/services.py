"""The Konnektor's SOAP services as data: namespaces, the one version served per service, the
WSDL/XSD files shipped in the package, and schema loading.

gematik's WSDLs come in several versions per service (api-telematik ``conn/``); the emulator
serves exactly one of each, the newest one the KIM Clientmodul calls (digest §1.8):

============================  =======  ==========================================
service                       version  WSDL file (XSD)
============================  =======  ==========================================
EventService                  7.2.0    EventService.wsdl (EventService.xsd 7.2.1)
CardService                   8.1.2    CardService_v8_1_2.wsdl (CardService_v8_1_3.xsd)
CertificateService            6.0.1    CertificateService_v6_0_1.wsdl (..._v6_0_2.xsd)
SignatureService              7.5.6    SignatureService_V7_5_6.wsdl (..._V7_5_6.xsd)
EncryptionService             6.1.1    EncryptionService_v6_1_1.wsdl (..._v6_1_2.xsd)
AuthSignatureService          7.4.1    AuthSignatureService_v7_4_1.wsdl (SignatureService.xsd 7.4)
============================  =======  ==========================================

The files live under ``kim_appliance/konnektor/wsdl`` in gematik's folder layout (``conn/``,
``tel/``, ``ext/``) so their relative imports resolve; they are gematik's Apache-2.0 files,
unchanged (LICENSE there). This module never touches the network: schemas load with a parser
that refuses network access and entity expansion.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lxml import etree

#: The package's copy of gematik's api-telematik files.
WSDL_DIR: Final = Path(__file__).resolve().parent.parent / "wsdl"

SOAP11: Final = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12: Final = "http://www.w3.org/2003/05/soap-envelope"
CONN: Final = "http://ws.gematik.de/conn/ConnectorCommon/v5.0"
CCTX: Final = "http://ws.gematik.de/conn/ConnectorContext/v2.0"
GERROR: Final = "http://ws.gematik.de/tel/error/v2.0"
PI: Final = "http://ws.gematik.de/int/version/ProductInformation/v1.1"
CARD: Final = "http://ws.gematik.de/conn/CardService/v8.1"
CARDCMN: Final = "http://ws.gematik.de/conn/CardServiceCommon/v2.0"
CT: Final = "http://ws.gematik.de/conn/CardTerminalInfo/v8.0"
EVT: Final = "http://ws.gematik.de/conn/EventService/v7.2"
CERT: Final = "http://ws.gematik.de/conn/CertificateService/v6.0"
CERTCMN: Final = "http://ws.gematik.de/conn/CertificateServiceCommon/v2.0"
SIG: Final = "http://ws.gematik.de/conn/SignatureService/v7.5"
SIG74: Final = "http://ws.gematik.de/conn/SignatureService/v7.4"
CRYPT: Final = "http://ws.gematik.de/conn/EncryptionService/v6.1"
DSS: Final = "urn:oasis:names:tc:dss:1.0:core:schema"
SDS: Final = "http://ws.gematik.de/conn/ServiceDirectory/v3.1"
SI: Final = "http://ws.gematik.de/conn/ServiceInformation/v2.0"

#: Prefixes used in every document the server writes (gematik's own prefixes).
NSMAP: Final[dict[str, str]] = {
    "soap": SOAP11,
    "CONN": CONN,
    "CCTX": CCTX,
    "GERROR": GERROR,
    "CARD": CARD,
    "CARDCMN": CARDCMN,
    "CT": CT,
    "EVT": EVT,
    "CERT": CERT,
    "CERTCMN": CERTCMN,
    "SIG": SIG,
    "CRYPT": CRYPT,
    "dss": DSS,
    "PI": PI,
}


@dataclass(frozen=True)
class ServiceSpec:
    """One SOAP service as the ServiceDirectory announces it and the server dispatches it."""

    name: str
    version: str
    #: targetNamespace of the WSDL (ServiceDirectory ``Version/@TargetNamespace``)
    wsdl_namespace: str
    #: the WSDL file, relative to :data:`WSDL_DIR`
    wsdl: str
    #: the XSD with the operations' elements, relative to :data:`WSDL_DIR`
    schema: str
    #: namespace of the request/response elements
    namespace: str
    abstract: str

    @property
    def path(self) -> str:
        """The HTTP path of the endpoint on this server."""
        return f"/ws/{self.name}"

    @property
    def wsdl_path(self) -> Path:
        return WSDL_DIR / self.wsdl


SERVICES: Final[tuple[ServiceSpec, ...]] = (
    ServiceSpec(
        "EventService",
        "7.2.0",
        "http://ws.gematik.de/conn/EventService/WSDL/v7.2",
        "conn/EventService.wsdl",
        "conn/EventService.xsd",
        EVT,
        "Ereignisdienst: GetCards, GetCardTerminals, GetResourceInformation",
    ),
    ServiceSpec(
        "CardService",
        "8.1.2",
        "http://ws.gematik.de/conn/CardService/WSDL/v8.1",
        "conn/CardService_v8_1_2.wsdl",
        "conn/CardService_v8_1_3.xsd",
        CARD,
        "Kartendienst: GetPinStatus, VerifyPin",
    ),
    ServiceSpec(
        "CertificateService",
        "6.0.1",
        "http://ws.gematik.de/conn/CertificateService/WSDL/v6.0",
        "conn/CertificateService_v6_0_1.wsdl",
        "conn/CertificateService_v6_0_2.xsd",
        CERT,
        "Zertifikatsdienst: ReadCardCertificate, VerifyCertificate",
    ),
    ServiceSpec(
        "SignatureService",
        "7.5.6",
        "http://ws.gematik.de/conn/SignatureService/WSDL/v7.5",
        "conn/SignatureService_V7_5_6.wsdl",
        "conn/SignatureService_V7_5_6.xsd",
        SIG,
        "Signaturdienst (nonQES): SignDocument, VerifyDocument, GetJobNumber",
    ),
    ServiceSpec(
        "EncryptionService",
        "6.1.1",
        "http://ws.gematik.de/conn/EncryptionService/WSDL/v6.1",
        "conn/EncryptionService_v6_1_1.wsdl",
        "conn/EncryptionService_v6_1_2.xsd",
        CRYPT,
        "Verschlüsselungsdienst: EncryptDocument, DecryptDocument",
    ),
    ServiceSpec(
        "AuthSignatureService",
        "7.4.1",
        "http://ws.gematik.de/conn/AuthSignatureService/WSDL/v7.4",
        "conn/AuthSignatureService_v7_4_1.wsdl",
        "conn/SignatureService.xsd",
        SIG74,
        "Authentisierungsdienst: ExternalAuthenticate",
    ),
)

SERVICES_BY_NAME: Final[dict[str, ServiceSpec]] = {s.name: s for s in SERVICES}


def safe_parser(*, huge: bool = False) -> etree.XMLParser:
    """An XML parser for untrusted input: no DTD loading, no entity expansion, no network.
    ``huge`` lifts libxml2's 10 MB text-node limit (base64 documents of up to 25 MiB)."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=huge,
        remove_blank_text=False,
    )


_per_thread = threading.local()


def load_schema(relative: str) -> etree.XMLSchema:
    """The XMLSchema of a shipped XSD (relative to :data:`WSDL_DIR`), loaded once per thread:
    an XMLSchema keeps its error log on the object, so threads must not share one."""
    cache: dict[str, etree.XMLSchema] | None = getattr(_per_thread, "schemas", None)
    if cache is None:
        cache = _per_thread.schemas = {}
    schema = cache.get(relative)
    if schema is None:
        path = WSDL_DIR / relative
        schema = cache[relative] = etree.XMLSchema(etree.parse(str(path), safe_parser()))
    return schema


def schema_for(service: str) -> etree.XMLSchema:
    """The schema of ``service``'s operation elements (e.g. ``"CardService"``)."""
    return load_schema(SERVICES_BY_NAME[service].schema)


def service_directory_schema() -> etree.XMLSchema:
    return load_schema("conn/ServiceDirectory.xsd")


def telematik_error_schema() -> etree.XMLSchema:
    return load_schema("tel/error/TelematikError.xsd")
