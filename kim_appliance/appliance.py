"""The appliance process: every component as a task of one trio nursery.

:func:`run_appliance` prepares the data dir (the demo setup on first start), opens the
appliance's one store (kim_appliance.store: every durable or shared piece of state of the
Fachdienste and the VZD) and hands it to the components, starts them in the
``trio.serve_listeners`` shape under a :class:`~kim_appliance.serving.Supervisor` (a component
that fails is restarted on its ports with backoff while the others serve on; every connection
of every listener runs under the guard of :mod:`kim_appliance.serving.guard`), and once every
listener is bound writes ``endpoints.json`` atomically (the contract in DESIGN.md). Cancelling
it (Ctrl-C, SIGTERM) stops every listener; ``endpoints.json`` is removed and the store is
closed on the way out. Messages are durable before they are acknowledged, so a kill at any
moment loses nothing that was acknowledged. This module is the only one that opens the store;
it reads ``demo.json`` only for the console, which shows the demo participants' passwords to
the developer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio
from cryptography.hazmat.primitives.serialization import Encoding

from kim_appliance import config as config_module
from kim_appliance import demo
from kim_appliance.clientmodul.context import ClientmodulContext
from kim_appliance.clientmodul.service import ClientmodulAddresses, serve_clientmodul
from kim_appliance.config import Config, DomainConfig
from kim_appliance.directory import BASE_DN, DirectoryStore, serve_directory
from kim_appliance.directory.server import DirectoryAddresses
from kim_appliance.errors import ConfigError
from kim_appliance.fachdienst.account_manager import account_manager_routes
from kim_appliance.fachdienst.accounts import Authenticator
from kim_appliance.fachdienst.admin_api import admin_routes
from kim_appliance.fachdienst.context import Fachdienst, RelayEndpoints
from kim_appliance.fachdienst.jwt import verify_jwt
from kim_appliance.fachdienst.kas import kas_routes, run_kas_expiry
from kim_appliance.fachdienst.rest import fachdienst_app
from kim_appliance.fachdienst.service import FachdienstAddresses, serve_fachdienst
from kim_appliance.konnektor.faults import Publisher, Renewal
from kim_appliance.konnektor.infomodell import FILE_NAME as KONNEKTOR_FILE
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.konnektor.soap import KonnektorAddress, serve_konnektor
from kim_appliance.pki import Algorithm, CertProfile, Issued, TestPki
from kim_appliance.pki.tls import client_context, server_context
from kim_appliance.serving import ConnectionBudget, Supervisor, raise_nofile_limit
from kim_appliance.serving.http import serve_asgi
from kim_appliance.store import Store, open_store
from kim_appliance.web.console import ConsoleState, serve_console

ENDPOINTS_FILE = "endpoints.json"
ADMIN_TOKEN_FILE = "admin-token"
log = logging.getLogger("kim_appliance")
T = TypeVar("T")


class Components:
    """What every component's start needs: the supervisor, the listeners' connection budget
    (one for the process), the configuration and the PKI."""

    def __init__(
        self,
        supervisor: Supervisor,
        budget: ConnectionBudget,
        data_dir: Path,
        config: Config,
        pki: TestPki,
    ) -> None:
        self.supervisor = supervisor
        self.budget = budget
        self.data_dir = data_dir
        self.config = config
        self.pki = pki

    async def start(self, name: str, make: Callable[[T | None], Any], *, ports: str) -> T:
        """Start a component under the supervisor; a port that cannot be bound at the first
        start is a :class:`ConfigError` naming ``ports`` (the config keys to change)."""
        try:
            return await self.supervisor.start(name, make)
        except OSError as exc:
            # the user must learn which configured port is the problem
            raise ConfigError(
                f"{name}: cannot listen on {self.config.bind} {ports}: {exc.strerror or exc}; "
                "change the ports in config.toml or use --ephemeral-ports"
            ) from exc


def prepare_files(data_dir: Path) -> None:
    """The files of a data dir: the demo setup of an empty or missing one (DESIGN.md contract),
    config.toml, the administrators' token. Blocking."""
    if not demo.is_initialised(data_dir):
        demo.initialise(data_dir)
    if not (data_dir / config_module.CONFIG_FILE).exists():
        config_module.write_default(data_dir)
    # the administrators' token for `kim-appliance account` (whoever reads the data dir)
    token = data_dir / ADMIN_TOKEN_FILE
    if not token.exists():
        token.write_text(secrets.token_urlsafe(32) + "\n", encoding="ascii")
        os.chmod(token, 0o600)
    if not (data_dir / KONNEKTOR_FILE).exists():
        # a data dir of a version that wrote konnektor.json at the first run only
        participants = demo.load_demo(data_dir)["participants"]
        demo.konnektor_config(data_dir, participants).save(data_dir / KONNEKTOR_FILE)


def store_url_of(config: Config, store_url: str | None) -> str | None:
    """The store to open: ``--store`` if given, else ``[store] url`` (None: embedded)."""
    return store_url if store_url is not None else config.store.url


async def prepare_data_dir(data_dir: Path, store_url: str | None = None) -> str:
    """Initialise ``data_dir`` without running: :func:`prepare_files`, then the demo's
    initial state written through the store (``kim-appliance init``; ``store_url`` as
    ``--store``). Returns the store's description (no password)."""
    await trio.to_thread.run_sync(prepare_files, data_dir)
    config = config_module.load(data_dir)
    url = store_url_of(config, store_url)
    async with open_store(url, data_dir, compress=config.fachdienst.compress_blobs) as store:
        await demo.populate(store, data_dir)
        return store.description


async def run_appliance(
    data_dir: Path,
    *,
    ephemeral_ports: bool = False,
    store_url: str | None = None,
    task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every component until cancelled; report the endpoints through ``task_status``.
    ``store_url`` is ``--store`` (None: ``[store] url`` of config.toml, else embedded)."""
    data_dir = data_dir.resolve()
    await trio.to_thread.run_sync(prepare_files, data_dir)
    config = config_module.load(data_dir)
    if ephemeral_ports:
        config = config.with_ephemeral_ports()
    # a server may use what the hard limit allows; the listeners' caps come out of it
    raise_nofile_limit()
    budget = ConnectionBudget.from_nofile_limit()
    pki = await trio.to_thread.run_sync(TestPki.load, data_dir / "pki")
    # for the console only: it shows the demo participants' passwords to the developer
    participants = await trio.to_thread.run_sync(demo.load_demo, data_dir)
    endpoints_file = data_dir / ENDPOINTS_FILE
    relay = RelayEndpoints()
    for domain, target in config.fachdienst.relay_map.items():
        host, _, port = target.rpartition(":")
        relay.add(domain, host, int(port))
    url = store_url_of(config, store_url)
    async with open_store(url, data_dir, compress=config.fachdienst.compress_blobs) as store:
        log.info("store: %s", store.description)
        # the store holds the data dir's lock now: an endpoints.json left by a killed run is
        # stale (its ports are gone), and a caller polling for the file must not read it
        endpoints_file.unlink(missing_ok=True)
        await demo.populate(store, data_dir)
        directory_store = await DirectoryStore.open(store.directory)
        try:
            async with trio.open_nursery() as nursery:
                parts = Components(Supervisor(nursery, log), budget, data_dir, config, pki)
                fachdienste: dict[str, dict[str, str]] = {}
                bound: dict[str, FachdienstAddresses] = {}
                for d in config.fachdienst.domains:
                    fd = await trio.to_thread.run_sync(
                        _build_fachdienst, data_dir, pki, d, config, store, relay
                    )
                    # before the Fachdienst's tasks start: its retention pass purges the
                    # VZD addresses of deregistered accounts (KOM-LE-A_2155)
                    fd.directory = directory_store
                    addresses: FachdienstAddresses = await parts.start(
                        f"fachdienst {d.domain}",
                        partial(_fachdienst_task, parts, fd, d),
                        ports=f"smtp_port {d.smtp_port} / pop3_port {d.pop3_port}",
                    )
                    bound[d.domain] = addresses
                    https = await _start_rest(parts, d, fd, directory_store)
                    fachdienste[d.domain] = {
                        "smtp": _join(*addresses.smtp),
                        "pop3": _join(*addresses.pop3),
                        "https": https,
                    }
                # every domain is registered now: the relay workers may start (issue 11)
                relay.complete.set()
                directory, vzd = await _start_directory(parts, directory_store)
                konnektor, card_service = await _start_konnektor(parts)
                # `kim-appliance card renew ICCSN:ENC:...`: the new certificate goes into the VZD
                card_service.admin.publisher = vzd_publisher(
                    directory_store, trio.lowlevel.current_trio_token()
                )
                rest_urls = {domain: urls["https"] for domain, urls in fachdienste.items()}
                clientmodul = await _start_clientmodul(parts, card_service, vzd, bound, rest_urls)
                endpoints = {
                    # the process that wrote the file: a script waiting for it after a crash
                    # tells a stale file by a pid that is not running (DESIGN.md contract)
                    "pid": os.getpid(),
                    "tls_ca": str(data_dir / "pki" / "tls-ca.pem"),
                    "clientmodul": clientmodul,
                    "fachdienste": fachdienste,
                    "konnektor": konnektor,
                    "directory": directory,
                }
                # the console keeps this dict: it shows its own entry too
                endpoints["console"] = await _start_console(
                    parts,
                    card_service,
                    store,
                    [d.domain for d in config.fachdienst.domains],
                    directory_store,
                    participants,
                    endpoints,
                )
                _write_atomically(endpoints_file, endpoints)
                log.info("kim-appliance running: %s", endpoints_file)
                task_status.started(endpoints)
        finally:
            endpoints_file.unlink(missing_ok=True)


def _fachdienst_task(
    parts: Components, fd: Fachdienst, domain: DomainConfig, previous: FachdienstAddresses | None
) -> Callable[..., Any]:
    """The Fachdienst's mail listeners and workers; a restart binds the ports of the first."""
    return partial(
        serve_fachdienst,
        fd,
        bind=parts.config.bind,
        smtp_port=previous.smtp[1] if previous else domain.smtp_port,
        pop3_port=previous.pop3[1] if previous else domain.pop3_port,
        budget=parts.budget,
    )


async def _start_console(
    parts: Components,
    konnektor: Konnektor,
    store: Store,
    domains: Sequence[str],
    directory: DirectoryStore,
    participants: dict[str, Any],
    endpoints: dict[str, Any],
) -> str:
    """The web console (DESIGN.md ``web/``): plain HTTP on the bind address."""
    state = ConsoleState(
        konnektor=konnektor,
        store=store,
        domains=domains,
        directory=directory,
        demo=participants,
        endpoints=endpoints,
    )
    config = parts.config

    def make(previous: tuple[str, int] | None) -> Callable[..., Any]:
        return partial(
            serve_console,
            state,
            bind=config.bind,
            port=previous[1] if previous else config.console.port,
            limits=config.limits,
            budget=parts.budget,
        )

    console: tuple[str, int] = await parts.start(
        "console", make, ports=f"[console] port {config.console.port}"
    )
    return f"http://{_join(*console)}/"


async def _start_konnektor(parts: Components) -> tuple[dict[str, str], Konnektor]:
    """The emulated Konnektor: cards from the demo, SOAP over HTTPS with C.AK.AUT (issue 4)."""
    data_dir, pki, config = parts.data_dir, parts.pki, parts.config
    # the appliance's own PKI: a revocation switched on the Konnektor is seen at once by the
    # Clientmodul, the Fachdienste and the REST services, which validate against the same CRLs
    konnektor = await trio.to_thread.run_sync(partial(Konnektor.from_data_dir, data_dir, pki=pki))
    chain, key = await trio.to_thread.run_sync(
        _tls_files, pki, data_dir / "tls", "konnektor", CertProfile.C_AK_AUT
    )
    ssl_context = server_context(chain, key)
    admin_token = _admin_token(data_dir)

    def make(previous: KonnektorAddress | None) -> Callable[..., Any]:
        return partial(
            serve_konnektor,
            konnektor,
            bind=config.bind,
            port=previous.port if previous else config.konnektor.port,
            ssl_context=ssl_context,
            admin_token=admin_token,
            limits=config.limits,
            budget=parts.budget,
        )

    address: KonnektorAddress = await parts.start(
        "konnektor", make, ports=f"[konnektor] port {config.konnektor.port}"
    )
    return {"sds": address.sds_url, "admin": f"{address.base_url}/admin/faults"}, konnektor


def vzd_publisher(directory: DirectoryStore, token: trio.lowlevel.TrioToken) -> Publisher:
    """The Konnektor's hook for a renewed ENC certificate (``card renew``): the card's VZD entry
    gets the new certificate in place of the old one, so senders encrypt for the new key. It is
    called from the worker thread that runs the admin request, and hops to the trio thread of
    ``token`` where the directory lives; a card without a VZD entry has nothing to publish."""

    async def publish(renewal: Renewal) -> None:
        if renewal.telematik_id is None:
            return
        entry = directory.get(renewal.telematik_id)
        old, new = (c.public_bytes(Encoding.DER) for c in (renewal.old, renewal.new))
        certificates = tuple(new if c == old else c for c in entry.certificates)
        if new not in certificates:
            certificates = (*certificates, new)
        await directory.put_entry(dataclasses.replace(entry, certificates=certificates))

    def publisher(renewal: Renewal) -> None:
        trio.from_thread.run(publish, renewal, trio_token=token)

    return publisher


def _admin_token(data_dir: Path) -> str:
    """The administrators' token (``DATA_DIR/admin-token``, made by :func:`prepare_data_dir`)."""
    return (data_dir / ADMIN_TOKEN_FILE).read_text(encoding="ascii").strip()


async def _start_rest(
    parts: Components, domain: DomainConfig, fd: Fachdienst, directory: DirectoryStore
) -> str:
    """The Fachdienst's REST services over HTTPS (issue 5, digest §3.3-3.5): Account Manager
    2.4, AccountLimit 1.1, ServiceInformation 1.0 and the KAS 2.4, one listener per domain."""
    data_dir, pki, config = parts.data_dir, parts.pki, parts.config
    trust = pki.trust_store()

    def verify(token: str) -> dict[str, Any]:
        verified = verify_jwt(token, trust=trust)
        claims = dict(verified.claims)
        if verified.telematik_id is not None:
            claims["telematikID"] = verified.telematik_id
        return claims

    # the sharedLink names this listener: bind first with a placeholder, then fill in the port
    base: dict[str, str] = {}
    routes = [
        *account_manager_routes(fd, directory=directory, pki=pki, verify_jwt=verify),
        *kas_routes(fd, base_url=lambda: base["url"]),
        *admin_routes(fd, token=_admin_token(data_dir)),
    ]
    app = fachdienst_app(fd, extra_routes=routes)

    def make(previous: tuple[str, int] | None) -> Callable[..., Any]:
        return partial(
            serve_asgi,
            app,
            name=f"{domain.domain.split('.')[0]} https",
            bind=config.bind,
            port=previous[1] if previous else domain.https_port,
            ssl_context=fd.server_ssl,
            limits=config.limits,
            budget=parts.budget,
            log=fd.log,
        )

    bound: tuple[str, int] = await parts.start(
        f"{domain.domain} REST", make, ports=f"https_port {domain.https_port}"
    )
    base["url"] = f"https://{_join(*bound)}"
    parts.supervisor.start_soon(f"{domain.domain} KAS expiry", partial(run_kas_expiry, fd))
    return base["url"]


async def _start_directory(
    parts: Components, store: DirectoryStore
) -> tuple[dict[str, str], DirectoryStore]:
    """The VZD: read-only LDAP and LDAPS with the demo participants' entries (digest §4.1)."""
    data_dir, pki, config = parts.data_dir, parts.pki, parts.config
    chain, key = await trio.to_thread.run_sync(
        _tls_files, pki, data_dir / "tls", "vzd", CertProfile.C_ZD_TLS_S
    )
    ssl_context = server_context(chain, key)

    def make(previous: DirectoryAddresses | None) -> Callable[..., Any]:
        ldap_port, ldaps_port = config.directory.ldap_port, config.directory.ldaps_port
        if previous is not None:
            ldap_port = previous.ldap[1] if previous.ldap else ldap_port
            ldaps_port = previous.ldaps[1] if previous.ldaps else ldaps_port
        return partial(
            serve_directory,
            store,
            bind=config.bind,
            ldap_port=ldap_port,
            ldaps_port=ldaps_port,
            ssl_context=ssl_context,
            limits=config.limits,
            budget=parts.budget,
        )

    # changes made on another node sharing the store reach the Clientmodul's lookups too
    parts.supervisor.start_soon("directory changes", store.watch)
    addresses: DirectoryAddresses = await parts.start(
        "directory",
        make,
        ports=f"ldap_port {config.directory.ldap_port} / ldaps_port {config.directory.ldaps_port}",
    )
    result = {"base_dn": BASE_DN}
    if addresses.ldap is not None:
        result["ldap"] = _join(*addresses.ldap)
    if addresses.ldaps is not None:
        result["ldaps"] = _join(*addresses.ldaps)
    return result, store


async def _start_clientmodul(
    parts: Components,
    konnektor: Konnektor,
    directory: DirectoryStore,
    fachdienste: dict[str, FachdienstAddresses],
    https: dict[str, str],
) -> dict[str, str]:
    """The Clientmodul: SMTPS/POP3S for the PVS, using this process's Konnektor (the same
    instance as the SOAP services, so switched faults hit both) and VZD; it reaches the
    Fachdienste over real SMTPS/POP3S/HTTPS (DESIGN.md), presenting its C.CM.TLS-CS as the TLS
    client certificate (mutual TLS, KOM-LE-A_2074, digest §1.9).

    ``https`` maps each domain to its REST base URL (KAS, AccountLimit, Account Manager)."""
    data_dir, pki, config = parts.data_dir, parts.pki, parts.config
    chain, key = await trio.to_thread.run_sync(
        _tls_files, pki, data_dir / "tls", "clientmodul", CertProfile.C_CM_TLS_CS
    )
    tls_ca = data_dir / "pki" / "tls-ca.pem"

    def resolve(host: str | None, port: int | None, protocol: str, account: str) -> tuple[str, int]:
        # the username's host:port (digest §1.2) names a Fachdienst; one of this appliance is
        # reached at its bound port whatever port the PVS wrote (stands in for DNS)
        domain = (host or account.rpartition("@")[2]).lower()
        if domain in fachdienste:
            addresses = fachdienste[domain]
            return addresses.smtp if protocol == "smtp" else addresses.pop3
        if host is None:
            raise ConfigError(f"no Fachdienst known for {account}; name host:port in the username")
        return host, port or (465 if protocol == "smtp" else 995)

    def resolve_https(domain: str) -> str:
        # stands in for the DNS-SD discovery of the Fachdienst's services (digest §3.1)
        if domain.lower() not in https:
            raise LookupError(f"no Fachdienst of this appliance serves {domain}")
        return https[domain.lower()]

    spool = data_dir / "spool" / "clientmodul"
    spool.mkdir(parents=True, exist_ok=True)
    context = ClientmodulContext(
        konnektor=konnektor,
        directory=directory,
        resolve_upstream=resolve,
        resolve_https=resolve_https,
        # C.CM.TLS-CS (server and client EKU, KOMP-CA) towards the Fachdienst (digest §1.9)
        upstream_ssl=client_context(tls_ca, chain=chain, key=key),
        server_ssl=server_context(chain, key),
        trust=pki.trust_store(),
        spool_dir=spool,
        prefer_ecc=config.clientmodul.prefer_ecc,
        max_message_size=config.fachdienst.max_message_size,
        data_ttl_days=config.fachdienst.data_ttl_days,
        session_timeout_seconds=config.fachdienst.session_timeout_seconds,
        listener_limits=config.limits,
    )

    def make(previous: ClientmodulAddresses | None) -> Callable[..., Any]:
        return partial(
            serve_clientmodul,
            context,
            bind=config.bind,
            smtp_port=previous.smtp[1] if previous else config.clientmodul.smtp_port,
            pop3_port=previous.pop3[1] if previous else config.clientmodul.pop3_port,
            budget=parts.budget,
        )

    addresses: ClientmodulAddresses = await parts.start(
        "clientmodul",
        make,
        ports=f"[clientmodul] smtp_port {config.clientmodul.smtp_port} / pop3_port "
        f"{config.clientmodul.pop3_port}",
    )
    return {"smtp": _join(*addresses.smtp), "pop3": _join(*addresses.pop3)}


def _build_fachdienst(
    data_dir: Path,
    pki: TestPki,
    domain: DomainConfig,
    config: Config,
    store: Store,
    relay: RelayEndpoints,
) -> Fachdienst:
    tls_dir = data_dir / "tls"
    server_chain, server_key = _tls_files(pki, tls_dir, domain.domain, CertProfile.C_FD_TLS_S)
    client_chain, client_key = _tls_files(pki, tls_dir, domain.domain, CertProfile.C_FD_TLS_C)
    tls_ca = data_dir / "pki" / "tls-ca.pem"
    fd_config = config.fachdienst
    return Fachdienst(
        domain=domain.domain,
        config=fd_config,
        store=store,
        auth=Authenticator(
            store,
            domain=domain.domain,
            max_failed_logins=fd_config.max_failed_logins,
            lockout_seconds=fd_config.lockout_seconds,
        ),
        endpoints=relay,
        server_ssl=server_context(server_chain, server_key, client_ca=tls_ca),
        client_ssl=client_context(tls_ca, chain=client_chain, key=client_key),
        log=logging.getLogger(f"kim_appliance.fachdienst.{domain.domain.split('.')[0]}"),
        listener_limits=config.limits,
    )


def _tls_files(pki: TestPki, tls_dir: Path, domain: str, profile: CertProfile) -> tuple[Path, Path]:
    """The chain and key files of a component's TLS certificate, issued on first use."""
    kind = "client" if profile is CertProfile.C_FD_TLS_C else "server"
    chain = tls_dir / f"{domain}.{kind}.chain.pem"
    key = tls_dir / f"{domain}.{kind}.key.pem"
    if chain.exists() and key.exists():
        return chain, key
    tls_dir.mkdir(parents=True, exist_ok=True)
    issued: Issued = pki.issue(
        profile,
        Algorithm.RSA,
        common_name=domain,
        dns_names=[domain, "localhost"],
        ip_addresses=["127.0.0.1", "::1"],
    )
    ca = pki.ca_for(profile, Algorithm.RSA)
    chain.write_bytes(issued.cert_pem() + ca.issued.cert_pem())
    key.write_bytes(issued.key_pem())
    os.chmod(key, 0o600)
    return chain, key


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write_atomically(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
