"""What the tests of the Clientmodul's network adapters share besides fixtures: the
Konnektor's HTTPS listener and the SOAP client for it, and the view of a served VZD. In a module
of its own, not in conftest.py, so that tests import it by a name no other directory uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from kim_appliance.adapters import InProcessDirectory, InProcessKonnektor
from kim_appliance.clientmodul.network import (
    KonnektorSettings,
    LdapDirectory,
    LdapSettings,
    SoapKonnektor,
)
from kim_appliance.directory import DirectoryAddresses, DirectoryStore
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.konnektor.soap import KonnektorAddress, serve_konnektor
from kim_appliance.pki.tls import client_context, server_context


def tls_pair(data_dir: Path, name: str) -> tuple[Path, Path]:
    """The chain and key the appliance issued for ``name`` (konnektor, vzd, clientmodul)."""
    return (
        data_dir / "tls" / f"{name}.server.chain.pem",
        data_dir / "tls" / f"{name}.server.key.pem",
    )


@dataclass
class Served:
    """The Konnektor's listener and the two adapters of the same Konnektor."""

    address: KonnektorAddress
    soap: SoapKonnektor
    local: InProcessKonnektor
    konnektor: Konnektor


async def serve_soap(
    konnektor: Konnektor,
    data_dir: Path,
    *,
    require_client_cert: bool = False,
    port: int = 0,
    task_status: trio.TaskStatus[KonnektorAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    chain, key = tls_pair(data_dir, "konnektor")
    ca = data_dir / "pki" / "tls-ca.pem"
    context = server_context(
        chain, key, client_ca=ca if require_client_cert else None,
        require_client_cert=require_client_cert,
    )  # fmt: skip
    await serve_konnektor(
        konnektor, ssl_context=context, port=port, admin_token="t", task_status=task_status
    )


def soap_client(
    address: KonnektorAddress, tls_ca: Path, data_dir: Path, *, client_cert: bool = False
) -> SoapKonnektor:
    chain, key = tls_pair(data_dir, "clientmodul")
    context = (
        client_context(tls_ca, chain=chain, key=key) if client_cert else client_context(tls_ca)
    )
    return SoapKonnektor(
        KonnektorSettings(address.sds_url, context, client_certificate=client_cert, timeout=10)
    )


@dataclass
class Vzd:
    addresses: DirectoryAddresses
    store: DirectoryStore
    local: InProcessDirectory
    ca: Path

    def client(self, scheme: str = "ldaps", **kw: Any) -> LdapDirectory:
        address = self.addresses.ldaps if scheme == "ldaps" else self.addresses.ldap
        assert address is not None
        return LdapDirectory(LdapSettings(f"{scheme}://{address[0]}:{address[1]}", self.ca, **kw))
