"""The Konnektor's service directory (``connector.sds``, ServiceDirectory.xsd v3.1) as the
Clientmodul reads it (digest §1.8, KOM-LE-A_2076).

The directory names every service the Konnektor offers, each in one or more versions, with the
endpoint of each version (``EndpointTLS``; ``Endpoint`` for plain HTTP). The Clientmodul speaks
one version of each service it uses (:mod:`.konnektor_messages`) and takes the endpoint listed
for exactly that version's WSDL TargetNamespace (KOM-LE-A_2077); a Konnektor that does not
offer it is refused with a message naming the versions it does offer. ``TLSMandatory`` and
``ClientAutMandatory`` are read too: a Konnektor that wants a client certificate the
configuration does not have is refused before any call. The versions offered also say whether
the Konnektor supports ECC (A_17464: SignatureService 7.4.1 and EncryptionService 6.1.1 or
later), which decides whether the Clientmodul uses ECC keys and certificates. Pure XML; this
module never does I/O (the caller fetches and caches the document, and fetches it again after a
connection error, KOM-LE-A_2076).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urljoin, urlsplit

from lxml import etree

from kim_appliance.clientmodul.ports import KonnektorUnreachable, ecc_capable

SDS: Final = "http://ws.gematik.de/conn/ServiceDirectory/v3.1"
SI: Final = "http://ws.gematik.de/conn/ServiceInformation/v2.0"
PI: Final = "http://ws.gematik.de/int/version/ProductInformation/v1.1"
#: a connector.sds is a few KB; refuse anything absurd before parsing
MAX_SDS: Final = 1024 * 1024


@dataclass(frozen=True)
class ServiceDirectory:
    """What ``connector.sds`` says: flags, and the endpoint of every (service, version)."""

    url: str
    tls_mandatory: bool
    client_auth_mandatory: bool
    #: (service name, WSDL TargetNamespace) -> endpoint URL
    endpoints: dict[tuple[str, str], str] = field(default_factory=dict)
    #: service name -> the versions offered (for the message when ours is missing)
    offered: dict[str, list[str]] = field(default_factory=dict)
    #: "vendor product version", for logs
    product: str = ""

    @property
    def supports_ecc(self) -> bool:
        """A_17464: SignatureService >= 7.4.1 and EncryptionService >= 6.1.1 among the
        versions offered (:func:`~kim_appliance.clientmodul.ports.ecc_capable`)."""
        return ecc_capable(self.offered)

    def endpoint(self, service: str, namespace: str) -> str:
        """The endpoint of ``service`` in the version of WSDL ``namespace``; raises
        KonnektorUnreachable naming what the Konnektor offers instead."""
        found = self.endpoints.get((service, namespace))
        if found is not None:
            return found
        versions = ", ".join(self.offered.get(service, [])) or "none"
        raise KonnektorUnreachable(
            f"the Konnektor ({self.url}) does not offer {service} in the version this "
            f"Clientmodul speaks ({namespace.rsplit('/', 1)[-1]}); it offers: {versions}"
        )


def parse_service_directory(body: bytes, url: str) -> ServiceDirectory:
    """Read a ``connector.sds`` fetched from ``url``. Raises KonnektorUnreachable for a
    document that is not a ServiceDirectory."""
    if len(body) > MAX_SDS:
        raise KonnektorUnreachable(f"{url}: {len(body)} bytes is no service directory")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.fromstring(body, parser)
    except etree.XMLSyntaxError as exc:
        raise KonnektorUnreachable(f"{url}: the service directory is not XML: {exc}") from None
    if root.tag != f"{{{SDS}}}ConnectorServices":
        raise KonnektorUnreachable(f"{url}: not a ServiceDirectory (root element {root.tag})")
    directory = ServiceDirectory(
        url=url,
        tls_mandatory=_flag(root, "TLSMandatory"),
        client_auth_mandatory=_flag(root, "ClientAutMandatory"),
        product=_product(root),
    )
    for service in root.iter(f"{{{SI}}}Service"):
        name = service.get("Name", "")
        for version in service.iter(f"{{{SI}}}Version"):
            namespace = version.get("TargetNamespace", "")
            label = version.get("Version") or namespace.rsplit("/", 1)[-1]
            directory.offered.setdefault(name, []).append(label)
            location = _location(version)
            if location:
                # a relative location (some simulators) is relative to connector.sds
                directory.endpoints[(name, namespace)] = urljoin(url, location)
    return directory


def _flag(root: etree._Element, name: str) -> bool:
    return (root.findtext(f"{{{SDS}}}{name}") or "false").strip().lower() in ("true", "1")


def _location(version: etree._Element) -> str | None:
    """EndpointTLS, else Endpoint (only when plain HTTP is what the directory offers)."""
    for tag in ("EndpointTLS", "Endpoint"):
        element = version.find(f"{{{SI}}}{tag}")
        if element is not None and element.get("Location"):
            location = str(element.get("Location"))
            if tag == "Endpoint" and urlsplit(location).scheme == "https":
                return location
            if tag == "EndpointTLS":
                return location
    return None


def _product(root: etree._Element) -> str:
    info = root.find(f"{{{PI}}}ProductInformation")
    if info is None:
        return ""
    parts = [
        info.findtext(f".//{{{PI}}}ProductVendorID"),
        info.findtext(f".//{{{PI}}}ProductCode"),
        info.findtext(f".//{{{PI}}}FWVersion"),
    ]
    return " ".join(p.strip() for p in parts if p)
