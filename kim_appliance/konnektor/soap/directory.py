"""``connector.sds``: the Konnektor's service directory (DVD, ServiceDirectory.xsd v3.1).

A client system loads ``http(s)://<konnektor>/connector.sds`` first and finds every service,
its version and its endpoint there (digest §1.8, KOM-LE-A_2076). The endpoint URLs are built
from the Host the client used, so the directory is right behind any address or port the
server is reached at. This module writes XML only; it must never answer for a service the
server does not serve.
"""

from __future__ import annotations

import re
from typing import Final

from lxml import etree

from kim_appliance.konnektor.soap.envelope import product_information, qname, sub
from kim_appliance.konnektor.soap.services import PI, SDS, SERVICES, SI

#: What a Host header may look like (name, IPv4, [IPv6], optional port): anything else is
#: replaced by the server's own address rather than echoed into URLs.
_HOST: Final = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def safe_host(host: str | None, fallback: str) -> str:
    """``host`` when it is a plausible Host header value, else ``fallback``."""
    if host and _HOST.fullmatch(host):
        return host
    return fallback


def connector_sds(base_url: str, *, tls: bool, client_auth: bool) -> bytes:
    """The ConnectorServices document for a server reached at ``base_url``
    (``https://host:port``): every service with its one version, ``EndpointTLS`` (and
    ``Endpoint`` for plain HTTP) and the WSDL location on this server."""
    root = etree.Element(qname(SDS, "ConnectorServices"), nsmap={"SDS": SDS, "SI": SI, "PI": PI})
    product_information(root, "Konnektor", "KIMEMU", "kim-appliance Konnektor emulation")
    sub(root, SDS, "TLSMandatory", "true" if tls else "false")
    sub(root, SDS, "ClientAutMandatory", "true" if client_auth else "false")
    info = sub(root, SI, "ServiceInformation")
    for spec in SERVICES:
        service = sub(info, SI, "Service", Name=spec.name)
        sub(service, SI, "Abstract", spec.abstract)
        versions = sub(service, SI, "Versions")
        version = sub(
            versions, SI, "Version", TargetNamespace=spec.wsdl_namespace, Version=spec.version
        )
        sub(version, SI, "Abstract", f"{spec.name} {spec.version}")
        endpoint = f"{base_url}{spec.path}"
        if not tls:
            sub(version, SI, "Endpoint", Location=endpoint)
        # EndpointTLS is mandatory in the schema; without TLS it names the same endpoint
        sub(version, SI, "EndpointTLS", Location=endpoint)
        sub(version, SI, "WSDL", Location=f"{base_url}/wsdl/{spec.wsdl}")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
