"""A minimal Fachdienst (store, accounts, TLS from a test PKI) for the REST tests, without the
rest of the appliance, plus a live HTTPS server in a background thread for schemathesis."""

from __future__ import annotations

import base64
import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from queue import Queue

import pytest
import trio

from kim_appliance.config import DomainConfig, FachdienstConfig
from kim_appliance.fachdienst.accounts import Authenticator
from kim_appliance.fachdienst.context import Fachdienst, RelayEndpoints
from kim_appliance.fachdienst.rest import fachdienst_app
from kim_appliance.pki import Algorithm, CertProfile, TestPki
from kim_appliance.pki.tls import server_context
from kim_appliance.serving.http import serve_asgi
from kim_appliance.store import Account, Store, hash_password, open_store

DOMAIN = "a.kim.telematik-test"
ADDRESS = f"weber@{DOMAIN}"
PASSWORD = "Praxis-Weber-2026!"


@dataclass
class Live:
    url: str
    ca: str
    fd: Fachdienst
    #: an ``Authorization`` header with the account's valid Basic credentials
    authorization: str


async def make_fachdienst(store: Store, directory: Path, pki: TestPki) -> tuple[Fachdienst, Path]:
    """A Fachdienst on ``store`` with one account (ADDRESS/PASSWORD, quota 1 MB) and its TLS CA
    file in ``directory``."""
    await store.accounts.create(
        Account(ADDRESS, hash_password(PASSWORD), "1-123", "Praxis Weber", quota_bytes=1_000_000)
    )
    tls = pki.issue(
        CertProfile.C_FD_TLS_S,
        Algorithm.RSA,
        common_name=DOMAIN,
        dns_names=[DOMAIN, "localhost"],
        ip_addresses=["127.0.0.1"],
    )
    chain, key, ca = directory / "chain.pem", directory / "key.pem", directory / "ca.pem"
    ca_pem = pki.ca_for(CertProfile.C_FD_TLS_S, Algorithm.RSA).issued.cert_pem()
    chain.write_bytes(tls.cert_pem() + ca_pem)
    key.write_bytes(tls.key_pem())
    ca.write_bytes(pki.tls_ca_pem())
    fd = Fachdienst(
        domain=DOMAIN,
        config=FachdienstConfig(domains=(DomainConfig(DOMAIN, 0, 0),), max_failed_logins=3),
        store=store,
        auth=Authenticator(store, domain=DOMAIN, max_failed_logins=3, lockout_seconds=900),
        endpoints=RelayEndpoints(),
        server_ssl=server_context(chain, key),
        client_ssl=ssl.create_default_context(),
        log=logging.getLogger("tests.web"),
    )
    return fd, ca


@pytest.fixture(scope="session")
def web_pki() -> TestPki:
    return TestPki.generate()


@pytest.fixture
async def fd_and_ca(kim_store: Store, tmp_path: Path, web_pki: TestPki) -> tuple[Fachdienst, Path]:
    return await make_fachdienst(kim_store, tmp_path, web_pki)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, web_pki: TestPki) -> Iterator[Live]:
    """serve_asgi on port 0 in a thread of its own (schemathesis calls are blocking)."""
    directory = tmp_path_factory.mktemp("live")
    ready: Queue[tuple[int, trio.lowlevel.TrioToken, trio.CancelScope] | BaseException] = Queue()
    made: list[tuple[Fachdienst, Path]] = []

    async def main() -> None:
        try:
            async with (
                open_store(None, directory / "kim-data") as store,
                trio.open_nursery() as nursery,
            ):
                fd, ca = await make_fachdienst(store, directory, web_pki)
                made.append((fd, ca))
                _, port = await nursery.start(
                    partial(
                        serve_asgi,
                        fachdienst_app(fd),
                        bind="127.0.0.1",
                        port=0,
                        ssl_context=fd.server_ssl,
                    )
                )
                ready.put((port, trio.lowlevel.current_trio_token(), nursery.cancel_scope))
        except BaseException as exc:
            ready.put(exc)
            raise

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    got = ready.get(timeout=30)
    assert not isinstance(got, BaseException), got
    port, token, scope = got
    fd, ca = made[0]
    basic = base64.b64encode(f"{ADDRESS}:{PASSWORD}".encode()).decode()
    yield Live(f"https://127.0.0.1:{port}", str(ca), fd, f"Basic {basic}")
    trio.from_thread.run_sync(scope.cancel, trio_token=token)
    thread.join(timeout=10)
