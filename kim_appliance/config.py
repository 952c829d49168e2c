"""The appliance's configuration: ``config.toml`` in the data dir, with embedded defaults.

``init`` writes the defaults as a commented TOML file; ``run`` reads it back. Every value has a
default here, so a config file may hold only what it changes. Unknown keys are refused with the
key named, so a typo never goes unnoticed. This module reads and writes the file only.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kim_appliance.errors import ConfigError
from kim_appliance.serving.guard import ListenerLimits

CONFIG_FILE = "config.toml"

#: maxMailSize of the Account Manager / AccountLimit schemas: 700 MiB (digest §3.2)
MAX_MAIL_SIZE = 734003200
#: the smallest ``[fachdienst] kas_threshold_bytes`` accepted: below 1 MiB every mail with an
#: attachment would go through the KAS, which no operator means
MIN_KAS_THRESHOLD = 1024 * 1024


@dataclass(frozen=True)
class DomainConfig:
    """One Fachdienst: a KIM domain with its mail server ports (0 = any free port)."""

    domain: str
    smtp_port: int
    pop3_port: int
    #: Account Manager, AccountLimit, ServiceInformation and KAS (REST over HTTPS)
    https_port: int = 0


@dataclass(frozen=True)
class FachdienstConfig:
    domains: tuple[DomainConfig, ...]
    max_message_size: int = MAX_MAIL_SIZE
    #: dataTimeToLive default in days (digest §3.2: 10-365, default 90)
    data_ttl_days: int = 90
    #: failed logins in a row from one client address before the account is locked for that
    #: address (KOM-LE-A_2167; the threshold is not published, digest §7.1), and for how long
    #: the first time (each further lock doubles, fachdienst.accounts)
    max_failed_logins: int = 5
    lockout_seconds: int = 900
    #: relay retries: delays between attempts, then a bounce after ``relay_give_up_seconds``
    relay_retry_seconds: tuple[int, ...] = (30, 120, 600, 1800, 3600)
    relay_give_up_seconds: int = 2 * 24 * 3600
    #: how often the retention task looks for expired messages
    retention_interval_seconds: int = 3600
    #: store blobs zstandard-compressed
    compress_blobs: bool = False
    #: idle timeout of SMTP/POP3 sessions (CM default SMTP_TIMEOUT_SERVER 5 min, digest §1.9)
    session_timeout_seconds: int = 300
    #: domain -> "host:port" of Fachdienste outside this process (stands in for MX + port 465)
    relay_map: dict[str, str] = field(default_factory=dict)
    #: the KAS threshold served as AccountLimit ``kasMailSizeThreshold`` (digest §3.4: in the
    #: docs example, not in the 1.1.4 schema); None serves no such field, and the Clientmodul
    #: uses its default of 15 MiB. ``bench/roundtrip.py --direct`` raises it above 25 MiB
    kas_threshold_bytes: int | None = None


@dataclass(frozen=True)
class DirectoryConfig:
    """The VZD's LDAP (plain) and LDAPS ports (0 = any free port)."""

    ldap_port: int = 3389
    ldaps_port: int = 3636


@dataclass(frozen=True)
class KonnektorConfig:
    """The emulated Konnektor's HTTPS port (connector.sds, SOAP services, fault admin API)."""

    port: int = 4443


@dataclass(frozen=True)
class ConsoleConfig:
    """The web console's plain-HTTP port (loopback by default, as the contract says)."""

    port: int = 4080


#: ``[clientmodul] konnektor`` / ``directory``: this process's own objects, no network
IN_PROCESS = "in-process"
#: ... or SOAP / LDAPS to this process's own Konnektor / VZD listener (tests, benchmarks)
LOOPBACK = "loopback"
#: TLS_AUTH_KONNEKTOR (digest §1.9, KOM-LE-A_2071/2072)
KONNEKTOR_AUTH = ("certificate", "basic", "none")


@dataclass(frozen=True)
class ClientmodulConfig:
    """The Clientmodul: its SMTPS and POP3S ports for the practice software (0 = any free
    port), and its partners: the Konnektor, the VZD and the Fachdienste."""

    smtp_port: int = 1465
    pop3_port: int = 1995
    #: sign with the SMC-B's ECC key when it has one (release 1.5.4 preference)
    prefer_ecc: bool = True
    #: KOM-LE-A_2181: require a TLS client certificate of the PVS on SMTPS and POP3S (off, as a
    #: Clientmodul ships: the spec wants both ways offered)
    pvs_client_auth: bool = False
    #: PEM file with the CA(s) that issue the PVS client certificates ("": the appliance's TLS CA)
    pvs_client_ca: str = ""
    #: the PKCS#12 file of createCert with the C.CM.TLS-CS for the Fachdienste (A_19513; "": the
    #: one the appliance issues at init) and its certPassword
    tls_pkcs12: str = ""
    tls_pkcs12_password: str = ""
    #: A_21381: renew that certificate through createCert this many days before it expires
    tls_renew_days: float = 30.0
    #: "in-process", "loopback" or "https://HOST:PORT/connector.sds" (KONNEKTOR_URI)
    konnektor: str = IN_PROCESS
    #: PEM file with the CA(s) of the Konnektor's TLS certificate ("": the appliance's TLS CA)
    konnektor_ca: str = ""
    #: TLS_AUTH_KONNEKTOR: "certificate" (default), "basic" or "none"
    konnektor_auth: str = "certificate"
    #: the client certificate (PEM chain) and key ("": the Clientmodul's C.CM.TLS-CS)
    konnektor_client_cert: str = ""
    konnektor_client_key: str = ""
    #: HTTP Basic credentials (konnektor_auth = "basic")
    konnektor_user: str = ""
    konnektor_password: str = ""
    #: KONNEKTOR_TIMEOUT (digest §1.9)
    konnektor_timeout_seconds: float = 60.0
    #: "in-process", "loopback", "ldaps://HOST:PORT" or "ldap://HOST:PORT" (StartTLS)
    directory: str = IN_PROCESS
    #: PEM file with the CA(s) of the VZD's TLS certificate ("": the appliance's TLS CA)
    directory_ca: str = ""
    #: the call context for a username whose MandantId/ClientSystemId/WorkplaceId is "*"
    #: ("": the field stays mandatory, digest §1.2)
    mandant_id: str = ""
    client_system_id: str = ""
    workplace_id: str = ""
    #: "host:port" as usernames name a Fachdienst (SMTP 465, POP3 995, HTTPS 443) ->
    #: "HOST:PORT" to connect to; stands in for DNS, the TLS name checked stays the host's
    fachdienste: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreConfig:
    """Where the appliance keeps its state (kim_appliance.store): ``None`` is the embedded store
    in the data dir; ``postgresql://USER[:PASSWORD]@HOST:PORT/DB`` a PostgreSQL database that
    several nodes may share. ``--store`` on the command line wins over this."""

    url: str | None = None


#: a node reports itself in the store this often (``[cluster] heartbeat_seconds``)
HEARTBEAT_SECONDS = 3.0
#: a node whose last report is older than this is dead: its name may be taken, its listeners
#: are no longer tried (about three heartbeats)
NODE_TIMEOUT_SECONDS = 10.0
#: a relay entry a node attempts is claimed this long, renewed while the attempt runs; a dead
#: node's entries go to another node this long after its last renewal
RELAY_LEASE_SECONDS = 30.0


@dataclass(frozen=True)
class ClusterConfig:
    """Several nodes on one PostgreSQL store (kim_appliance.cluster): how often a node reports
    itself, when it counts as dead, how long a relay claim lasts without renewal, and the host
    name the other nodes reach its listeners at ("": the bind address, or this machine's name
    when it binds every interface)."""

    heartbeat_seconds: float = HEARTBEAT_SECONDS
    node_timeout_seconds: float = NODE_TIMEOUT_SECONDS
    relay_lease_seconds: float = RELAY_LEASE_SECONDS
    advertise: str = ""


@dataclass(frozen=True)
class Config:
    bind: str = "127.0.0.1"
    store: StoreConfig = field(default_factory=StoreConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    directory: DirectoryConfig = field(default_factory=DirectoryConfig)
    konnektor: KonnektorConfig = field(default_factory=KonnektorConfig)
    clientmodul: ClientmodulConfig = field(default_factory=ClientmodulConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    #: connection cap and deadlines of every listener (kim_appliance.serving.guard)
    limits: ListenerLimits = field(default_factory=ListenerLimits)
    fachdienst: FachdienstConfig = field(
        default_factory=lambda: FachdienstConfig(
            domains=(
                DomainConfig("fd1.kim.telematik-test", 2465, 2995, 2443),
                DomainConfig("fd2.kim.telematik-test", 3465, 3995, 3443),
            )
        )
    )

    def with_ephemeral_ports(self) -> Config:
        domains = tuple(
            replace(d, smtp_port=0, pop3_port=0, https_port=0) for d in self.fachdienst.domains
        )
        return replace(
            self,
            fachdienst=replace(self.fachdienst, domains=domains),
            directory=DirectoryConfig(ldap_port=0, ldaps_port=0),
            konnektor=KonnektorConfig(port=0),
            clientmodul=replace(self.clientmodul, smtp_port=0, pop3_port=0),
            console=ConsoleConfig(port=0),
        )


DEFAULT_TOML = """\
# kim-appliance configuration. Every key is optional; the values below are the defaults.

# Address every listener binds to. 127.0.0.1 keeps the appliance on this machine.
bind = "127.0.0.1"

# Where accounts, mail, the relay queue, KAS uploads and the directory are kept. Default: the
# embedded store in this data dir (store/). A PostgreSQL database instead (shared by several
# nodes; `kim-appliance store copy` moves an embedded store there); --store URL wins over this:
[store]
# url = "postgresql://USER:PASSWORD@HOST:5432/DATABASE"

# Several nodes on one PostgreSQL store (`run --node NAME`): every node reports itself this
# often; a node silent for node_timeout_seconds is dead (its name is free, its listeners are
# skipped); a relay entry a node was sending goes to another node relay_lease_seconds after
# the dead node's last renewal. advertise: the host the other nodes connect to ("": the bind
# address, or this machine's name when bind is 0.0.0.0 or ::).
[cluster]
heartbeat_seconds = 3
node_timeout_seconds = 10
relay_lease_seconds = 30
advertise = ""

[fachdienst]
max_message_size = 734003200      # bytes; maxMailSize (700 MiB)
data_ttl_days = 90                # retention of delivered mail (dataTimeToLive)
max_failed_logins = 5             # failures in a row from one client address lock ...
lockout_seconds = 900             # ... the account for that address this long (then doubling)
relay_retry_seconds = [30, 120, 600, 1800, 3600]  # waits between relay attempts
relay_give_up_seconds = 172800    # then the sender gets a bounce (RFC 3464)
retention_interval_seconds = 3600
compress_blobs = false            # zstandard-compress stored messages
session_timeout_seconds = 300
# kas_threshold_bytes = 15728640  # served as AccountLimit kasMailSizeThreshold when set; the
                                  # Clientmodul sends larger mails through the KAS

# One block per Fachdienst domain served by this appliance; port 0 = any free port.
[[fachdienst.domains]]
domain = "fd1.kim.telematik-test"
smtp_port = 2465
pop3_port = 2995
https_port = 2443                 # Account Manager, AccountLimit, ServiceInformation, KAS

[[fachdienst.domains]]
domain = "fd2.kim.telematik-test"
smtp_port = 3465
pop3_port = 3995
https_port = 3443

# Fachdienste outside this appliance: domain = "host:port" (instead of an MX lookup).
[fachdienst.relay_map]

# The directory (VZD), read-only over LDAPv3, base DN dc=data,dc=vzd.
[directory]
ldap_port = 3389
ldaps_port = 3636

# The emulated Konnektor: https://127.0.0.1:PORT/connector.sds, the SOAP services, and the
# fault switches at /admin/faults (also: kim-appliance fault --help).
[konnektor]
port = 4443

# The Clientmodul: point the practice software's mail client here (implicit TLS; usernames as
# in demo.json: address#host:port#Mandant#ClientSystem#Workplace[...]).
[clientmodul]
smtp_port = 1465
pop3_port = 1995
prefer_ecc = true                 # sign with the SMC-B's ECC key where it has one
pvs_client_auth = false           # require a TLS client certificate of the PVS (KOM-LE-A_2181)
pvs_client_ca = ""                # PEM of the CA(s) of those certificates ("": tls-ca.pem here)
# The TLS client certificate towards the Fachdienste: a PKCS#12 file from the Account Manager's
# createCert and its certPassword ("": the C.CM.TLS-CS this appliance issues at init).
tls_pkcs12 = ""
tls_pkcs12_password = ""
tls_renew_days = 30               # renewed through createCert this long before expiry (A_21381)
# The Konnektor: "in-process" (this appliance's, no network), "loopback" (SOAP to this
# appliance's own listener) or a Konnektor's service directory, e.g.
# "https://konnektor.praxis.local:443/connector.sds" (SOAP over TLS, KOM-LE-A_2070).
konnektor = "in-process"
konnektor_ca = ""                 # PEM of the CA of its TLS certificate ("": tls-ca.pem here)
konnektor_auth = "certificate"    # "certificate" (KOM-LE-A_2071), "basic" or "none"
konnektor_client_cert = ""        # PEM chain and key ("": the Clientmodul's C.CM.TLS-CS)
konnektor_client_key = ""
konnektor_user = ""               # for konnektor_auth = "basic" (KOM-LE-A_2072)
konnektor_password = ""
konnektor_timeout_seconds = 60    # KONNEKTOR_TIMEOUT
# The VZD: "in-process", "loopback" (LDAPS to this appliance's own), "ldaps://HOST:PORT" or
# "ldap://HOST:PORT" (StartTLS).
directory = "in-process"
directory_ca = ""                 # PEM of the CA of its TLS certificate ("": tls-ca.pem here)
# A call context for usernames that write "*" for MandantId, ClientSystemId or WorkplaceId
# ("": those fields stay mandatory).
mandant_id = ""
client_system_id = ""
workplace_id = ""

# Fachdienste outside this appliance: the "host:port" a username names (SMTP 465, POP3 995,
# HTTPS 443 of the REST services) = the "HOST:PORT" to connect to. The TLS name checked stays
# the Fachdienst's own. Example:
# "fd1.kim.telematik-test:465" = "10.0.0.5:2465"
[clientmodul.fachdienste]

# The web console (plain HTTP on the bind address): endpoints, participants, mailboxes,
# Konnektor fault switches, directory entries.
[console]
port = 4080

# Every listener (SMTP, POP3, LDAP, HTTPS, console): beyond max_connections a client hears
# 421 / -ERR [SYS/TEMP] / LDAP busy / HTTP 503; a client must finish the TLS handshake and send
# its first command (request, PDU) within these seconds.
[limits]
max_connections = 256             # per listener
handshake_seconds = 10
first_command_seconds = 30
"""


def write_default(data_dir: Path) -> Path:
    path = data_dir / CONFIG_FILE
    path.write_text(DEFAULT_TOML, encoding="utf-8")
    return path


def set_store_url(data_dir: Path, url: str) -> str:
    """Write ``[store] url = URL`` into ``data_dir/config.toml`` (``init --store URL``: a later
    ``run`` without ``--store`` opens the same store). Returns what was done: ``"written"``,
    ``"unchanged"`` (it names this URL already) or ``"kept"`` (it names another store, which
    stays: the user chose it). The file is private to the data dir's owner (the URL may carry
    a password); the rest of it is left as it is."""
    path = data_dir / CONFIG_FILE
    text = path.read_text(encoding="utf-8") if path.exists() else DEFAULT_TOML
    current = load(data_dir).store.url if path.exists() else None
    if current is not None:
        return "unchanged" if current == url else "kept"
    line = f"url = {json.dumps(url)}"  # a TOML basic string (JSON's escapes are TOML's)
    placeholder = '# url = "postgresql://USER:PASSWORD@HOST:5432/DATABASE"'
    if placeholder in text:
        text = text.replace(placeholder, line, 1)
    elif re.search(r"(?m)^\[store\][ \t]*$", text):
        text = re.sub(r"(?m)^\[store\][ \t]*$", lambda _: f"[store]\n{line}", text, count=1)
    else:
        text = text.rstrip("\n") + f"\n\n[store]\n{line}\n"
    parse(tomllib.loads(text), str(path))  # still a valid configuration
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return "written"


def load(data_dir: Path) -> Config:
    """The configuration of ``data_dir`` (defaults if it has no config.toml)."""
    path = data_dir / CONFIG_FILE
    if not path.exists():
        return Config()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return parse(raw, str(path))


def parse(raw: dict[str, Any], where: str = "config") -> Config:
    defaults = Config()
    top = dict(raw)
    bind = _take(top, "bind", str, defaults.bind, where)
    fd_raw = dict(top.pop("fachdienst", {}))
    dir_raw = dict(top.pop("directory", {}))
    kon_raw = dict(top.pop("konnektor", {}))
    cm_raw = dict(top.pop("clientmodul", {}))
    console_raw = dict(top.pop("console", {}))
    limits_raw = dict(top.pop("limits", {}))
    store_raw = dict(top.pop("store", {}))
    cluster_raw = dict(top.pop("cluster", {}))
    _no_more(top, where)
    cluster = _cluster(cluster_raw, f"{where} [cluster]")
    store_where = f"{where} [store]"
    store = StoreConfig(
        url=_store_url(_take(store_raw, "url", str, None, store_where), store_where)
    )
    _no_more(store_raw, store_where)
    limits_where = f"{where} [limits]"
    limits_defaults = defaults.limits
    try:
        limits = ListenerLimits(
            max_connections=_take(
                limits_raw, "max_connections", int, limits_defaults.max_connections, limits_where
            ),
            handshake_seconds=float(
                _take(
                    limits_raw,
                    "handshake_seconds",
                    (int, float),
                    limits_defaults.handshake_seconds,
                    limits_where,
                )
            ),
            first_command_seconds=float(
                _take(
                    limits_raw,
                    "first_command_seconds",
                    (int, float),
                    limits_defaults.first_command_seconds,
                    limits_where,
                )
            ),
        )
    except ValueError as exc:
        raise ConfigError(f"{limits_where} {exc}") from None
    _no_more(limits_raw, limits_where)
    console_where = f"{where} [console]"
    console = ConsoleConfig(
        port=_port(
            _take(console_raw, "port", int, defaults.console.port, console_where), console_where
        )
    )
    _no_more(console_raw, console_where)
    clientmodul = _clientmodul(cm_raw, f"{where} [clientmodul]")
    kon_where = f"{where} [konnektor]"
    konnektor = KonnektorConfig(
        port=_port(_take(kon_raw, "port", int, defaults.konnektor.port, kon_where), kon_where)
    )
    _no_more(kon_raw, kon_where)
    dir_where = f"{where} [directory]"
    directory = DirectoryConfig(
        ldap_port=_port(
            _take(dir_raw, "ldap_port", int, defaults.directory.ldap_port, dir_where), dir_where
        ),
        ldaps_port=_port(
            _take(dir_raw, "ldaps_port", int, defaults.directory.ldaps_port, dir_where), dir_where
        ),
    )
    _no_more(dir_raw, dir_where)
    fd_where = f"{where} [fachdienst]"
    d = defaults.fachdienst
    domains_raw = fd_raw.pop("domains", None)
    if domains_raw is None:
        domains = d.domains
    else:
        domains = tuple(
            _domain(item, f"{fd_where} domains[{i}]") for i, item in enumerate(domains_raw)
        )
        if not domains:
            raise ConfigError(f"{fd_where}: at least one domain is needed")
        names = [x.domain for x in domains]
        if len(set(names)) != len(names):
            raise ConfigError(f"{fd_where}: a domain is listed twice")
    relay_map = fd_raw.pop("relay_map", {})
    if not isinstance(relay_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and ":" in v for k, v in relay_map.items()
    ):
        raise ConfigError(f'{fd_where} relay_map: expected domain = "host:port" entries')
    retry = fd_raw.pop("relay_retry_seconds", list(d.relay_retry_seconds))
    if (
        not isinstance(retry, list)
        or not retry
        or not all(isinstance(x, int) and x > 0 for x in retry)
    ):
        raise ConfigError(f"{fd_where} relay_retry_seconds: expected a list of positive seconds")
    fachdienst = FachdienstConfig(
        domains=domains,
        max_message_size=_take(fd_raw, "max_message_size", int, d.max_message_size, fd_where),
        data_ttl_days=_take(fd_raw, "data_ttl_days", int, d.data_ttl_days, fd_where),
        max_failed_logins=_take(fd_raw, "max_failed_logins", int, d.max_failed_logins, fd_where),
        lockout_seconds=_take(fd_raw, "lockout_seconds", int, d.lockout_seconds, fd_where),
        relay_retry_seconds=tuple(retry),
        relay_give_up_seconds=_take(
            fd_raw, "relay_give_up_seconds", int, d.relay_give_up_seconds, fd_where
        ),
        retention_interval_seconds=_take(
            fd_raw, "retention_interval_seconds", int, d.retention_interval_seconds, fd_where
        ),
        compress_blobs=_take(fd_raw, "compress_blobs", bool, d.compress_blobs, fd_where),
        session_timeout_seconds=_take(
            fd_raw, "session_timeout_seconds", int, d.session_timeout_seconds, fd_where
        ),
        relay_map={k.lower(): v for k, v in relay_map.items()},
        kas_threshold_bytes=_take(fd_raw, "kas_threshold_bytes", int, None, fd_where),
    )
    _no_more(fd_raw, fd_where)
    if fachdienst.kas_threshold_bytes is not None and not (
        MIN_KAS_THRESHOLD <= fachdienst.kas_threshold_bytes <= fachdienst.max_message_size
    ):
        raise ConfigError(
            f"{fd_where} kas_threshold_bytes: {fachdienst.kas_threshold_bytes} is not between "
            f"{MIN_KAS_THRESHOLD} and max_message_size ({fachdienst.max_message_size})"
        )
    if not 10 <= fachdienst.data_ttl_days <= 365:
        raise ConfigError(f"{fd_where} data_ttl_days: must be 10..365 (dataTimeToLive)")
    return Config(
        bind=bind,
        store=store,
        cluster=cluster,
        fachdienst=fachdienst,
        directory=directory,
        konnektor=konnektor,
        clientmodul=clientmodul,
        console=console,
        limits=limits,
    )


def _cluster(raw: dict[str, Any], where: str) -> ClusterConfig:
    d = ClusterConfig()
    seconds = {
        key: float(_take(raw, key, (int, float), getattr(d, key), where))
        for key in ("heartbeat_seconds", "node_timeout_seconds", "relay_lease_seconds")
    }
    advertise = _take(raw, "advertise", str, d.advertise, where).strip()
    _no_more(raw, where)
    for key, value in seconds.items():
        if value <= 0:
            raise ConfigError(f"{where} {key}: must be more than 0 seconds, got {value}")
    if seconds["node_timeout_seconds"] < 2 * seconds["heartbeat_seconds"]:
        raise ConfigError(
            f"{where} node_timeout_seconds: must be at least two heartbeats "
            f"(2 x heartbeat_seconds = {2 * seconds['heartbeat_seconds']}), got "
            f"{seconds['node_timeout_seconds']}: a live node would be taken for dead"
        )
    return ClusterConfig(**seconds, advertise=advertise)


def _clientmodul(raw: dict[str, Any], where: str) -> ClientmodulConfig:
    d = ClientmodulConfig()

    def text(key: str) -> str:
        value: str = _take(raw, key, str, getattr(d, key), where)
        return value.strip()

    fachdienste = raw.pop("fachdienste", {})
    if not isinstance(fachdienste, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _host_port(k) and _host_port(v)
        for k, v in fachdienste.items()
    ):
        raise ConfigError(
            f'{where}.fachdienste: expected "host:port" = "HOST:PORT" entries, e.g. '
            '"fd1.kim.telematik-test:465" = "10.0.0.5:2465"'
        )
    result = ClientmodulConfig(
        smtp_port=_port(_take(raw, "smtp_port", int, d.smtp_port, where), where),
        pop3_port=_port(_take(raw, "pop3_port", int, d.pop3_port, where), where),
        prefer_ecc=_take(raw, "prefer_ecc", bool, d.prefer_ecc, where),
        pvs_client_auth=_take(raw, "pvs_client_auth", bool, d.pvs_client_auth, where),
        pvs_client_ca=text("pvs_client_ca"),
        tls_pkcs12=text("tls_pkcs12"),
        tls_pkcs12_password=_take(raw, "tls_pkcs12_password", str, d.tls_pkcs12_password, where),
        tls_renew_days=float(_take(raw, "tls_renew_days", (int, float), d.tls_renew_days, where)),
        konnektor=text("konnektor"),
        konnektor_ca=text("konnektor_ca"),
        konnektor_auth=text("konnektor_auth"),
        konnektor_client_cert=text("konnektor_client_cert"),
        konnektor_client_key=text("konnektor_client_key"),
        konnektor_user=text("konnektor_user"),
        konnektor_password=_take(raw, "konnektor_password", str, d.konnektor_password, where),
        konnektor_timeout_seconds=float(
            _take(
                raw, "konnektor_timeout_seconds", (int, float), d.konnektor_timeout_seconds, where
            )
        ),
        directory=text("directory"),
        directory_ca=text("directory_ca"),
        mandant_id=text("mandant_id"),
        client_system_id=text("client_system_id"),
        workplace_id=text("workplace_id"),
        fachdienste={k.strip().lower(): v.strip() for k, v in fachdienste.items()},
    )
    _no_more(raw, where)
    if result.konnektor not in (IN_PROCESS, LOOPBACK) and not (
        result.konnektor.startswith("https://") and _host_port(result.konnektor[8:].split("/")[0])
    ):
        raise ConfigError(
            f"{where} konnektor: {result.konnektor!r} is not {IN_PROCESS!r}, {LOOPBACK!r} or "
            "https://HOST:PORT/connector.sds (TLS only, KOM-LE-A_2070)"
        )
    if result.directory not in (IN_PROCESS, LOOPBACK) and not (
        result.directory.startswith(("ldaps://", "ldap://"))
        and _host_port(result.directory.split("://", 1)[1].rstrip("/"))
    ):
        raise ConfigError(
            f"{where} directory: {result.directory!r} is not {IN_PROCESS!r}, {LOOPBACK!r}, "
            "ldaps://HOST:PORT or ldap://HOST:PORT (StartTLS)"
        )
    if result.konnektor_auth not in KONNEKTOR_AUTH:
        raise ConfigError(
            f"{where} konnektor_auth: {result.konnektor_auth!r} is not one of "
            f"{', '.join(KONNEKTOR_AUTH)}"
        )
    if result.konnektor_auth == "basic" and not result.konnektor_user:
        raise ConfigError(f'{where} konnektor_auth = "basic" needs konnektor_user')
    if bool(result.konnektor_client_cert) != bool(result.konnektor_client_key):
        raise ConfigError(f"{where}: konnektor_client_cert and konnektor_client_key go together")
    if not 0 < result.konnektor_timeout_seconds <= 3600:
        raise ConfigError(f"{where} konnektor_timeout_seconds: must be 0..3600 seconds")
    return result


def _host_port(value: str) -> bool:
    """``host:port`` or ``[v6]:port`` with a port 1..65535."""
    host, sep, port = value.strip().rpartition(":")
    return bool(sep and host.strip("[]") and port.isdigit() and 0 < int(port) < 65536)


def _store_url(url: str | None, where: str) -> str | None:
    """The store URL if it is one (the message never shows a password in it)."""
    from kim_appliance.store import EMBEDDED, StoreError, check_url

    if url is None or url.strip().lower() in EMBEDDED:
        return None
    try:
        check_url(url)
    except StoreError as exc:
        raise ConfigError(f"{where} url: {exc}") from None
    return url


def _domain(item: object, where: str) -> DomainConfig:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a table with domain, smtp_port, pop3_port")
    raw = dict(item)
    domain = _take(raw, "domain", str, None, where)
    domain = domain.lower() if domain is not None else None
    if domain is None or not domain.endswith((".kim.telematik", ".kim.telematik-test")):
        raise ConfigError(f"{where} domain: a KIM domain ends .kim.telematik(-test)")
    result = DomainConfig(
        domain=domain.lower(),
        smtp_port=_port(_take(raw, "smtp_port", int, 0, where), where),
        pop3_port=_port(_take(raw, "pop3_port", int, 0, where), where),
        https_port=_port(_take(raw, "https_port", int, 0, where), where),
    )
    _no_more(raw, where)
    return result


def _port(value: int, where: str) -> int:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{where}: port {value} is not 0..65535")
    return value


def _take(
    raw: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any, where: str
) -> Any:
    if key not in raw:
        return default
    value = raw.pop(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (int in kinds and isinstance(value, bool)) or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{where} {key}: expected {expected}, got {value!r}")
    return value


def _no_more(raw: dict[str, Any], where: str) -> None:
    if raw:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(raw))}")
