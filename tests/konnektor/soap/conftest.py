"""Fixtures for the SOAP tests: the Konnektor served over HTTPS on port 0, a C.AK.AUT server
certificate from the demo test PKI, zeep clients built from the package's WSDL files, and XSD
validation of every request and response on the wire.

The server runs in its own thread with its own trio loop because zeep is a blocking client:
the tests call it from the test thread and the server answers from the other loop, just as a
practice-management system talks to a Konnektor over the network.
"""

from __future__ import annotations

import contextlib
import queue
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
import trio
import zeep
import zeep.plugins
import zeep.transports
from lxml import etree
from soap_helpers import ADMIN_HEADERS, ADMIN_TOKEN

from kim_appliance.konnektor import Konnektor
from kim_appliance.konnektor.soap import (
    SERVICES,
    SERVICES_BY_NAME,
    KonnektorAddress,
    schema_for,
    serve_konnektor,
)
from kim_appliance.konnektor.soap.services import SOAP11, telematik_error_schema
from kim_appliance.pki import Algorithm, CertProfile, TestPki
from kim_appliance.pki.tls import server_context


@pytest.fixture(scope="session")
def tls_files(
    demo_dir: Path, demo_pki: TestPki, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    """(chain, key, CA file) of the Konnektor's C.AK.AUT TLS server certificate."""
    issued = demo_pki.issue(
        CertProfile.C_AK_AUT, Algorithm.RSA, common_name="konnektor.localhost",
        dns_names=["localhost"], ip_addresses=["127.0.0.1"],
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("konnektor-tls")
    chain, key = directory / "chain.pem", directory / "key.pem"
    ca = demo_pki.ca_for(CertProfile.C_AK_AUT, Algorithm.RSA)
    chain.write_bytes(issued.cert_pem() + ca.issued.cert_pem())
    key.write_bytes(issued.key_pem())
    return chain, key, demo_dir / "pki" / "tls-ca.pem"


class WireCheck(zeep.plugins.Plugin):  # type: ignore[misc]
    """A zeep plugin that validates every operation element sent and received against the
    service's XSD, and the GERROR:Error of every fault against TelematikError.xsd."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.problems: list[str] = []
        self.seen: list[str] = []

    def _check(self, envelope: etree._Element, direction: str) -> None:
        body = envelope.find(f"{{{SOAP11}}}Body")
        assert body is not None
        payload = body[0]
        self.seen.append(f"{direction} {etree.QName(payload).localname}")
        if payload.tag == f"{{{SOAP11}}}Fault":
            detail = payload.find("detail")
            if detail is None or len(detail) != 1:
                self.problems.append(f"{direction} fault without one detail element")
                return
            schema = telematik_error_schema()
            target = detail[0]
        else:
            schema = schema_for(self.service)
            target = payload
        if not schema.validate(target):
            self.problems.append(f"{direction} {target.tag}: {schema.error_log}")

    def egress(self, envelope: Any, http_headers: Any, operation: Any, binding_options: Any) -> Any:
        self._check(envelope, "sent")
        return envelope, http_headers

    def ingress(self, envelope: Any, http_headers: Any, operation: Any) -> Any:
        self._check(envelope, "received")
        return envelope, http_headers


@dataclass
class ZeepClient:
    client: zeep.Client
    check: WireCheck
    binding: str


@pytest.fixture(scope="session")
def zeep_clients(tls_files: tuple[Path, Path, Path]) -> dict[str, ZeepClient]:
    """One zeep client per service, built from the package's WSDL (trusted files: their
    xmldsig schema declares entities, hence forbid_entities=False)."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE and proxies from the environment must not win
    session.verify = str(tls_files[2])
    transport = zeep.transports.Transport(session=session, timeout=10, operation_timeout=30)
    settings = zeep.Settings(forbid_entities=False, strict=True)
    clients = {}
    for spec in SERVICES:
        check = WireCheck(spec.name)
        client = zeep.Client(
            wsdl=str(spec.wsdl_path), transport=transport, settings=settings, plugins=[check]
        )
        binding = f"{{{spec.wsdl_namespace}}}{spec.name}Binding"
        clients[spec.name] = ZeepClient(client, check, binding)
    return clients


@dataclass
class RunningKonnektor:
    """The Konnektor served over HTTPS, and clients for it."""

    konnektor: Konnektor
    address: KonnektorAddress
    ca: Path
    clients: dict[str, ZeepClient]
    http: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.http.trust_env = False
        self.http.verify = str(self.ca)

    def service(self, name: str) -> Any:
        """The zeep service proxy of ``name`` pointed at this server."""
        entry = self.clients[name]
        return entry.client.create_service(
            entry.binding, self.address.base_url + SERVICES_BY_NAME[name].path
        )

    def url(self, path: str) -> str:
        return self.address.base_url + path

    def admin(self, **switches: Any) -> dict[str, Any]:
        response = self.http.post(
            self.url("/admin/faults"), json=switches, headers=ADMIN_HEADERS, timeout=10
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


@contextlib.contextmanager
def serving(konnektor: Konnektor, ssl_context: ssl.SSLContext | None) -> Iterator[KonnektorAddress]:
    """Run serve_konnektor on port 0 in a thread with its own trio loop; stop it on exit."""
    started: queue.Queue[tuple[KonnektorAddress, trio.lowlevel.TrioToken, trio.CancelScope]]
    started = queue.Queue()
    failed: list[BaseException] = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                address = await nursery.start(
                    partial(
                        serve_konnektor, konnektor, ssl_context=ssl_context, admin_token=ADMIN_TOKEN
                    )
                )
                started.put((address, trio.lowlevel.current_trio_token(), scope))

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test below
            failed.append(exc)
            raise

    thread = threading.Thread(target=run, name="konnektor-soap", daemon=True)
    thread.start()
    try:
        address, token, scope = started.get(timeout=10)
    except queue.Empty:
        raise AssertionError(f"the Konnektor server did not start: {failed}") from None
    try:
        yield address
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(10)
        assert not thread.is_alive(), "the Konnektor server did not stop"


@pytest.fixture
def soap(
    konnektor: Konnektor,
    tls_files: tuple[Path, Path, Path],
    zeep_clients: dict[str, ZeepClient],
) -> Iterator[RunningKonnektor]:
    """A fresh Konnektor over HTTPS; afterwards every message on the wire must have been
    valid against gematik's XSDs."""
    chain, key, ca = tls_files
    for entry in zeep_clients.values():
        entry.check.problems.clear()
        entry.check.seen.clear()
    with serving(konnektor, server_context(chain, key)) as address:
        yield RunningKonnektor(konnektor, address, ca, zeep_clients)
    problems = [p for entry in zeep_clients.values() for p in entry.check.problems]
    assert not problems, "messages that violate gematik's XSDs:\n" + "\n".join(problems)
