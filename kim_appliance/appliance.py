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
the developer. ``components``
(``run --components``) starts only some of them: a Konnektor and VZD process for a practice, a
Clientmodul process pointed at them (``[clientmodul] konnektor``/``directory``) and at outside
Fachdienste (``[clientmodul.fachdienste]``); the sections of components that do not run are
absent from ``endpoints.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import secrets
import ssl
from collections.abc import Awaitable, Callable, Collection, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio
from cryptography.hazmat.primitives.serialization import Encoding

from kim_appliance import cluster, demo
from kim_appliance import config as config_module
from kim_appliance.adapters import InProcessDirectory, InProcessKonnektor, StoreTraceSink
from kim_appliance.clientmodul.cm_certificate import CmCertificate
from kim_appliance.clientmodul.context import ClientmodulContext
from kim_appliance.clientmodul.network import (
    KonnektorSettings,
    LdapDirectory,
    LdapSettings,
    SoapKonnektor,
)
from kim_appliance.clientmodul.pkcs12 import (
    ClientIdentity,
    Pkcs12Error,
    unpack_pkcs12,
    write_identity,
)
from kim_appliance.clientmodul.ports import DirectoryPort, KonnektorPort
from kim_appliance.clientmodul.service import ClientmodulAddresses, serve_clientmodul
from kim_appliance.clientmodul.username import ContextDefaults
from kim_appliance.config import Config, DomainConfig
from kim_appliance.directory import BASE_DN, DirectoryStore, serve_directory
from kim_appliance.directory.server import DirectoryAddresses
from kim_appliance.errors import ConfigError
from kim_appliance.fachdienst.account_manager import account_manager_routes
from kim_appliance.fachdienst.accounts import Authenticator
from kim_appliance.fachdienst.admin_api import admin_routes
from kim_appliance.fachdienst.context import Fachdienst, RelayEndpoints
from kim_appliance.fachdienst.kas import kas_routes, run_kas_expiry
from kim_appliance.fachdienst.rest import fachdienst_app
from kim_appliance.fachdienst.service import FachdienstAddresses, serve_fachdienst
from kim_appliance.konnektor.faults import Publisher, Renewal
from kim_appliance.konnektor.infomodell import FILE_NAME as KONNEKTOR_FILE
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.konnektor.soap import KonnektorAddress, serve_konnektor
from kim_appliance.observe.observer import Observer
from kim_appliance.pki import Algorithm, CertProfile, Issued, TestPki
from kim_appliance.pki.jwt import verify_jwt
from kim_appliance.pki.tls import client_context, server_context
from kim_appliance.serving import ConnectionBudget, Supervisor, raise_nofile_limit
from kim_appliance.serving.http import serve_asgi
from kim_appliance.store import LOCAL_NODE, Store, open_store
from kim_appliance.web.console import ConsoleState, serve_console

ENDPOINTS_FILE = "endpoints.json"
#: what ``run --components`` may name; all of them run by default (DESIGN.md contract)
COMPONENTS = ("fachdienst", "clientmodul", "konnektor", "directory", "console")
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


def parse_components(text: str) -> frozenset[str]:
    """``fachdienst,clientmodul,...`` as a set; ConfigError naming an unknown component."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown or not names:
        raise ConfigError(
            f"--components {text!r}: expected a comma-separated list of {', '.join(COMPONENTS)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return frozenset(names)


async def run_appliance(
    data_dir: Path,
    *,
    ephemeral_ports: bool = False,
    components: Collection[str] = COMPONENTS,
    store_url: str | None = None,
    node: str | None = None,
    task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the ``components`` (default: every one) until cancelled; report the endpoints
    through ``task_status``. ``store_url`` is ``--store`` (None: ``[store] url`` of
    config.toml, else embedded). ``node`` is ``--node NAME`` (kim_appliance.cluster): the
    node takes that name in a PostgreSQL store, writes ``endpoints-NAME.json`` and reports
    itself to the other nodes; None runs as ``local`` (embedded) or under the host's name."""
    running = frozenset(components)
    data_dir = data_dir.resolve()
    await trio.to_thread.run_sync(prepare_files, data_dir)
    config = config_module.load(data_dir)
    url = store_url_of(config, store_url)
    name = cluster.node_name(node, url)  # --node with the embedded store: refused here
    if ephemeral_ports:
        config = config.with_ephemeral_ports()
    # a server may use what the hard limit allows; the listeners' caps come out of it
    raise_nofile_limit()
    budget = ConnectionBudget.from_nofile_limit()
    pki = await trio.to_thread.run_sync(TestPki.load, data_dir / "pki")
    # for the console only: it shows the demo participants' passwords to the developer
    participants = await trio.to_thread.run_sync(demo.load_demo, data_dir)
    endpoints_file = data_dir / cluster.endpoints_file_name(node)
    relay = RelayEndpoints()
    for domain, target in config.fachdienst.relay_map.items():
        host, _, port = target.rpartition(":")
        relay.add(domain, host, int(port))
    _check_components(running, config)
    domains = config.fachdienst.domains if "fachdienst" in running else ()
    closers: list[Callable[[], Awaitable[None]]] = []
    async with open_store(url, data_dir, compress=config.fachdienst.compress_blobs) as store:
        log.info("store: %s", store.description)
        me: cluster.Identity | None = None
        view: cluster.ClusterView | None = None
        if not cluster.is_embedded(url):
            # several nodes may share this store: take the name (refused while another live
            # process has it) before anything is bound, and find the others' listeners
            me = cluster.Identity(name)
            await cluster.register(store, me, config.cluster)
            view = cluster.ClusterView(name)
            view.nodes = await cluster.live_nodes(store, config.cluster)
            relay.others = partial(view.mail_endpoints, protocol="smtp")
            log.info("node %s (pid %d); live nodes: %s", name, me.pid,
                     ", ".join(view.names()) or "none")  # fmt: skip
        # the store holds the data dir's lock (or the node its name) now: an endpoints file
        # left by a killed run is stale (its ports are gone), and a caller polling for the
        # file must not read it
        endpoints_file.unlink(missing_ok=True)
        await demo.populate(store, data_dir)
        directory_store = await DirectoryStore.open(store.directory)
        # every hop of every message: its trace (in the store) and the metrics (issue 15);
        # the node name is the one Fachdienst.node carries
        observer = Observer(
            StoreTraceSink(store),
            node=name,
            keep=dt.timedelta(days=config.fachdienst.data_ttl_days),
        )
        try:
            async with trio.open_nursery() as nursery:
                parts = Components(Supervisor(nursery, log), budget, data_dir, config, pki)
                parts.supervisor.start_soon("message trace", observer.run)
                fachdienste: dict[str, dict[str, str]] = {}
                bound: dict[str, FachdienstAddresses] = {}
                for d in domains:
                    fd = await trio.to_thread.run_sync(
                        _build_fachdienst, data_dir, pki, d, config, store, relay, observer, name
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
                endpoints: dict[str, Any] = {
                    # the process that wrote the file: a script waiting for it after a crash
                    # tells a stale file by a pid that is not running (DESIGN.md contract)
                    "pid": os.getpid(),
                    "tls_ca": str(data_dir / "pki" / "tls-ca.pem"),
                }
                if fachdienste:
                    endpoints["fachdienste"] = fachdienste
                if "directory" in running:
                    endpoints["directory"], _ = await _start_directory(parts, directory_store)
                card_service: Konnektor | None = None
                if "konnektor" in running:
                    endpoints["konnektor"], card_service = await _start_konnektor(parts)
                    # `kim-appliance card renew ICCSN:ENC:...`: the new certificate goes into
                    # the VZD
                    card_service.admin.publisher = vzd_publisher(
                        directory_store, trio.lowlevel.current_trio_token()
                    )
                if "clientmodul" in running:
                    konnektor_port, directory_port, partners = await _clientmodul_ports(
                        parts, card_service, directory_store, endpoints, closers
                    )
                    rest_urls = {domain: urls["https"] for domain, urls in fachdienste.items()}
                    listening = await _start_clientmodul(
                        parts,
                        (konnektor_port, directory_port),
                        bound,
                        rest_urls,
                        observer,
                        view,
                    )
                    # what the Clientmodul talks to: "in-process" or the URL it uses
                    endpoints["clientmodul"] = {**listening, **partners}
                if "console" in running:
                    # the console keeps this dict: it shows its own entry too
                    endpoints["console"] = await _start_console(
                        parts,
                        card_service,
                        store,
                        [d.domain for d in domains],
                        directory_store,
                        participants,
                        endpoints,
                        observer,
                    )
                if me is not None and view is not None:
                    # what the other nodes are told: this node's listeners, reachable there
                    told = cluster.advertise(
                        endpoints, cluster.advertised_host(config.bind, config.cluster)
                    )
                    await cluster.heartbeat_once(
                        store, me, config.cluster, told, sorted(running), view
                    )
                    parts.supervisor.start_soon(
                        "node heartbeat",
                        partial(
                            cluster.heartbeat_loop,
                            store, me, config.cluster, told, sorted(running), view,
                        ),
                    )  # fmt: skip
                _write_atomically(endpoints_file, endpoints)
                log.info("kim-appliance running (%s): %s", ",".join(sorted(running)),
                         endpoints_file)  # fmt: skip
                task_status.started(endpoints)
        finally:
            endpoints_file.unlink(missing_ok=True)
            with trio.CancelScope(shield=True):
                for close in closers:
                    await close()


def _check_components(running: frozenset[str], config: Config) -> None:
    """A Clientmodul using the in-process (or loopback) Konnektor or VZD needs that component
    in this process; say so before anything is bound."""
    if "clientmodul" not in running:
        return
    for part, setting, example in (
        ("konnektor", config.clientmodul.konnektor, "https://HOST:PORT/connector.sds"),
        ("directory", config.clientmodul.directory, "ldaps://HOST:PORT"),
    ):
        if setting in (config_module.IN_PROCESS, config_module.LOOPBACK) and part not in running:
            raise ConfigError(
                f"the Clientmodul uses the {setting} {part} ([clientmodul] {part} = "
                f'"{setting}"), but --components does not run the {part} here: add {part} to '
                f'--components, or set [clientmodul] {part} = "{example}"'
            )


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
    konnektor: Konnektor | None,
    store: Store,
    domains: Sequence[str],
    directory: DirectoryStore,
    participants: dict[str, Any],
    endpoints: dict[str, Any],
    observer: Observer,
) -> str:
    """The web console (DESIGN.md ``web/``): plain HTTP on the bind address, with the message
    traces and ``/metrics`` (issue 15)."""
    state = ConsoleState(
        konnektor=konnektor,
        store=store,
        domains=domains,
        directory=directory,
        demo=participants,
        endpoints=endpoints,
        observer=observer,
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


async def _clientmodul_ports(
    parts: Components,
    konnektor: Konnektor | None,
    directory: DirectoryStore,
    endpoints: dict[str, Any],
    closers: list[Callable[[], Awaitable[None]]],
) -> tuple[KonnektorPort, DirectoryPort, dict[str, str]]:
    """The Clientmodul's Konnektor and directory ports as ``[clientmodul]`` configures them,
    and what they talk to ("in-process" or the URL) for ``endpoints.json``:
    this process's objects (in-process; the same Konnektor instance as the SOAP services, so
    switched faults hit both), SOAP/LDAPS to this process's own listeners (loopback), or to a
    Konnektor and a VZD elsewhere. The network adapters are closed when the appliance stops."""
    data_dir, pki, cm = parts.data_dir, parts.pki, parts.config.clientmodul
    tls_ca = data_dir / "pki" / "tls-ca.pem"
    konnektor_port: KonnektorPort
    partners = {"konnektor": cm.konnektor, "directory": cm.directory}
    if cm.konnektor == config_module.IN_PROCESS:
        assert konnektor is not None  # _check_components
        konnektor_port = InProcessKonnektor(konnektor, pki.trust_store())
    else:
        sds = endpoints["konnektor"]["sds"] if cm.konnektor == config_module.LOOPBACK else None
        chain, key = await trio.to_thread.run_sync(
            _tls_files, pki, data_dir / "tls", "clientmodul", CertProfile.C_CM_TLS_CS
        )
        soap = SoapKonnektor(_konnektor_settings(cm, sds, tls_ca, chain, key))
        closers.append(soap.aclose)
        konnektor_port = soap
        partners["konnektor"] = soap.settings.sds_url
    directory_port: DirectoryPort
    if cm.directory == config_module.IN_PROCESS:
        directory_port = InProcessDirectory(directory)
    else:
        url = cm.directory
        if url == config_module.LOOPBACK:
            url = f"ldaps://{endpoints['directory']['ldaps']}"
        ldap = LdapDirectory(
            LdapSettings(url, Path(cm.directory_ca) if cm.directory_ca else tls_ca)
        )

        async def close_ldap(ldap: LdapDirectory = ldap) -> None:
            await trio.to_thread.run_sync(ldap.close)

        closers.append(close_ldap)
        directory_port = ldap
        partners["directory"] = url
    log.info("clientmodul: konnektor %s, directory %s", partners["konnektor"],
             partners["directory"])  # fmt: skip
    return konnektor_port, directory_port, partners


def _pkcs12_identity(
    cm: config_module.ClientmodulConfig, tls_dir: Path
) -> tuple[ClientIdentity, Path, Path]:
    """A_19513, KOM-LE-A_2301-02: the key and certificate of the PKCS#12 file createCert gave
    (``[clientmodul] tls_pkcs12``), unpacked and checked, as the PEM files TLS loads. Only the
    client side towards the Fachdienste uses it: its certificate names no host, so the
    listeners for the PVS keep the server certificate issued at init."""
    path = Path(cm.tls_pkcs12)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"[clientmodul] tls_pkcs12: cannot read {str(path)!r}: {exc}") from exc
    try:
        identity = unpack_pkcs12(data, cm.tls_pkcs12_password, source=str(path))
    except Pkcs12Error as exc:
        raise ConfigError(f"[clientmodul] tls_pkcs12: {exc}") from exc
    log.info(
        "clientmodul: TLS client certificate %s from %s, valid until %s",
        identity.certificate.subject.rfc4514_string(), path, f"{identity.not_after:%Y-%m-%d}",
    )  # fmt: skip
    chain, key = write_identity(identity, tls_dir, "clientmodul.pkcs12")
    return identity, chain, key


def _pvs_server_context(
    cm: config_module.ClientmodulConfig, chain: Path, key: Path, tls_ca: Path
) -> ssl.SSLContext:
    """The TLS server side of the Clientmodul's SMTPS and POP3S towards the PVS. KOM-LE-A_2181:
    the Clientmodul offers TLS with and without certificate-based client authentication; with
    ``pvs_client_auth`` a PVS without a certificate of ``pvs_client_ca`` (default: the
    appliance's TLS CA) fails the handshake. Off by default, as a Clientmodul ships (our choice,
    docs/decisions.md): the PVS of the demo setup has no certificate."""
    if not cm.pvs_client_auth:
        return server_context(chain, key)
    ca = Path(cm.pvs_client_ca) if cm.pvs_client_ca else tls_ca
    try:
        return server_context(chain, key, client_ca=ca, require_client_cert=True)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[clientmodul] pvs_client_ca {str(ca)!r}: {exc}") from exc


def _konnektor_settings(
    cm: config_module.ClientmodulConfig, sds: str | None, tls_ca: Path, chain: Path, key: Path
) -> KonnektorSettings:
    """TLS to the Konnektor (KOM-LE-A_2070): its CA, and the client certificate (the
    Clientmodul's C.CM.TLS-CS unless another is configured) or HTTP Basic (KOM-LE-A_2071/2072)."""
    ca = Path(cm.konnektor_ca) if cm.konnektor_ca else tls_ca
    with_certificate = cm.konnektor_auth == "certificate"
    if cm.konnektor_client_cert:
        chain, key = Path(cm.konnektor_client_cert), Path(cm.konnektor_client_key)
    try:
        ssl_context = (
            client_context(ca, chain=chain, key=key) if with_certificate else client_context(ca)
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[clientmodul] konnektor TLS settings: {exc}") from exc
    basic = (cm.konnektor_user, cm.konnektor_password) if cm.konnektor_auth == "basic" else None
    return KonnektorSettings(
        sds_url=sds or cm.konnektor,
        ssl_context=ssl_context,
        client_certificate=with_certificate,
        basic_auth=basic,
        timeout=cm.konnektor_timeout_seconds,
    )


async def _start_clientmodul(
    parts: Components,
    ports: tuple[KonnektorPort, DirectoryPort],
    fachdienste: dict[str, FachdienstAddresses],
    https: dict[str, str],
    observer: Observer,
    view: cluster.ClusterView | None = None,
) -> dict[str, str]:
    """The Clientmodul: SMTPS/POP3S for the PVS, reaching the Konnektor and the VZD through
    ``ports`` and the Fachdienste over real SMTPS/POP3S/HTTPS (DESIGN.md), presenting its
    C.CM.TLS-CS as the TLS client certificate (mutual TLS, KOM-LE-A_2074, digest §1.9).

    ``fachdienste`` and ``https`` are the Fachdienste of this process (mail listeners, REST
    base URL per domain); ``[clientmodul.fachdienste]`` names those elsewhere; in a cluster
    ``view`` has the other live nodes' (tried when this process serves no such domain, and
    after this process's listener when a connection fails)."""
    data_dir, pki, config = parts.data_dir, parts.pki, parts.config
    chain, key = await trio.to_thread.run_sync(
        _tls_files, pki, data_dir / "tls", "clientmodul", CertProfile.C_CM_TLS_CS
    )
    tls_ca = data_dir / "pki" / "tls-ca.pem"
    table = config.clientmodul.fachdienste

    def resolve(host: str | None, port: int | None, protocol: str, account: str) -> tuple[str, int]:
        # the username's host:port (digest §1.2) names a Fachdienst: the table says where it
        # is (stands in for DNS); one of this appliance is reached at its bound port whatever
        # port the PVS wrote
        domain = (host or account.rpartition("@")[2]).lower()
        port = port or (465 if protocol == "smtp" else 995)
        if f"{domain}:{port}" in table:
            return _split(table[f"{domain}:{port}"])
        if domain in fachdienste:
            addresses = fachdienste[domain]
            return addresses.smtp if protocol == "smtp" else addresses.pop3
        if view is not None and (found := view.mail_endpoints(domain, protocol)):
            return found[0]  # a live node serving the domain (random: equal preference)
        if host is None:
            raise ConfigError(f"no Fachdienst known for {account}; name host:port in the username")
        return host, port

    def resolve_https(domain: str) -> str:
        # stands in for the DNS-SD discovery of the Fachdienst's services (digest §3.1)
        domain = domain.lower()
        if f"{domain}:443" in table:
            return f"https://{domain}"  # connect_to maps it; the name checked stays the domain
        if domain in https:
            return https[domain]
        if view is not None and (urls := view.https_endpoints(domain)):
            return urls[0]
        raise LookupError(f"no Fachdienst of this appliance serves {domain}")

    def fallbacks(domain: str, protocol: str) -> list[tuple[str, int]]:
        # after a failed connection: the other live nodes serving the domain
        return view.mail_endpoints(domain, protocol) if view is not None else []

    def connect_to(host: str, port: int) -> tuple[str, int]:
        target = table.get(f"{host.lower()}:{port}")
        return _split(target) if target else (host, port)

    spool = data_dir / "spool" / "clientmodul"
    spool.mkdir(parents=True, exist_ok=True)
    cm = config.clientmodul
    up_chain, up_key = chain, key
    cm_certificate: CmCertificate | None = None
    if cm.tls_pkcs12:
        identity, up_chain, up_key = await trio.to_thread.run_sync(
            _pkcs12_identity, cm, data_dir / "tls"
        )
        cm_certificate = CmCertificate(
            identity, data_dir / "tls", tls_ca, renew_before=dt.timedelta(days=cm.tls_renew_days)
        )
    context = ClientmodulContext(
        konnektor=ports[0],
        directory=ports[1],
        resolve_upstream=resolve,
        resolve_https=resolve_https,
        fallbacks=fallbacks,
        connect_to=connect_to,
        context_defaults=ContextDefaults(
            cm.mandant_id or None, cm.client_system_id or None, cm.workplace_id or None
        ),
        # C.CM.TLS-CS (server and client EKU, KOMP-CA) towards the Fachdienst (digest §1.9):
        # the one of the configured PKCS#12 file, else the one issued at init
        upstream_ssl=client_context(tls_ca, chain=up_chain, key=up_key),
        server_ssl=_pvs_server_context(cm, chain, key, tls_ca),
        cm_certificate=cm_certificate,
        spool_dir=spool,
        prefer_ecc=config.clientmodul.prefer_ecc,
        max_message_size=config.fachdienst.max_message_size,
        data_ttl_days=config.fachdienst.data_ttl_days,
        session_timeout_seconds=config.fachdienst.session_timeout_seconds,
        listener_limits=config.limits,
        observer=observer,
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
    observer: Observer,
    node: str = LOCAL_NODE,
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
            observer=observer,
        ),
        endpoints=relay,
        server_ssl=server_context(server_chain, server_key, client_ca=tls_ca),
        client_ssl=client_context(tls_ca, chain=client_chain, key=client_key),
        log=logging.getLogger(f"kim_appliance.fachdienst.{domain.domain.split('.')[0]}"),
        listener_limits=config.limits,
        observer=observer,
        node=node,
        relay_lease=dt.timedelta(seconds=config.cluster.relay_lease_seconds),
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


def _split(host_port: str) -> tuple[str, int]:
    host, _, port = host_port.rpartition(":")
    return host.strip("[]"), int(port)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write_atomically(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
