"""Fixtures for the Clientmodul's network adapters: this appliance's Konnektor served over
HTTPS and its VZD over LDAP/LDAPS on port 0 (real sockets, real TLS with the test PKI), and the
SOAP and LDAP adapters pointed at them, next to the in-process adapters of the same objects
(the results of both must be the same)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import trio
from network_support import Served, Vzd, serve_soap, soap_client, tls_pair

from kim_appliance.adapters import InProcessDirectory, InProcessKonnektor
from kim_appliance.directory import DirectoryStore, serve_directory
from kim_appliance.directory.demo import entries_from_demo
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.pki import TestPki
from kim_appliance.pki.tls import server_context
from kim_appliance.store.sqlite import open_sqlite_store
from kim_appliance.testing import copy_template


@pytest.fixture
def data_dir(kim_cm_template: Path, tmp_path: Path) -> Path:
    """A private copy of the initialised data dir (cards, PKI, TLS certificates)."""
    return copy_template(kim_cm_template, tmp_path / "kim-data")


@pytest.fixture
def tls_ca(data_dir: Path) -> Path:
    return data_dir / "pki" / "tls-ca.pem"


@pytest.fixture
def pki(data_dir: Path) -> TestPki:
    return TestPki.load(data_dir / "pki")


@pytest.fixture
def konnektor(data_dir: Path, pki: TestPki) -> Konnektor:
    return Konnektor.from_data_dir(data_dir, persist_revocations=False, pki=pki)


@pytest.fixture
async def served(
    konnektor: Konnektor, data_dir: Path, tls_ca: Path, pki: TestPki
) -> AsyncIterator[Served]:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(partial(serve_soap, konnektor, data_dir))
        soap = soap_client(address, tls_ca, data_dir)
        yield Served(address, soap, InProcessKonnektor(konnektor, pki.trust_store()), konnektor)
        await soap.aclose()
        nursery.cancel_scope.cancel()


@pytest.fixture
async def store(data_dir: Path, tmp_path: Path) -> AsyncIterator[DirectoryStore]:
    """The demo entries in an embedded store of their own (tests change them)."""
    async with open_sqlite_store(tmp_path / "vzd-store") as kim_store:
        s = await DirectoryStore.open(kim_store.directory)
        await s.populate(entries_from_demo(data_dir))
        yield s


@pytest.fixture
async def vzd(store: DirectoryStore, data_dir: Path, tls_ca: Path) -> AsyncIterator[Vzd]:
    chain, key = tls_pair(data_dir, "vzd")
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(
            partial(
                serve_directory, store, bind="127.0.0.1", ldap_port=0, ldaps_port=0,
                ssl_context=server_context(chain, key),
            )
        )  # fmt: skip
        yield Vzd(addresses, store, InProcessDirectory(store), tls_ca)
        nursery.cancel_scope.cancel()
