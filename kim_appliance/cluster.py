"""Several nodes on one PostgreSQL store: node names, registration, heartbeat and who serves what.

A node is one ``kim-appliance run --store postgresql://... --node NAME`` process. It takes its
name as a lease in the store (``node:NAME``, held by this process's instance id and renewed
with every heartbeat), so that two live processes never run under one name; it reports its
listeners (the ``endpoints.json`` dict) every ``[cluster] heartbeat_seconds``; and it keeps a
:class:`ClusterView` of the live nodes (a report younger than ``node_timeout_seconds``), from
which the relay and the Clientmodul reach a domain through any live node that serves it, like
equal-preference MX records: this node's own listener first, then the others in random order,
a connection failure moving on to the next. A process that finds its name held by a dead
process of its own host (its pid gone) takes the name over at once and drops that process's
relay claims and POP3 maildrop locks, instead of waiting for their leases. This module never
opens a listener and never decides anything about mail; it must not be used with the embedded
store, which admits one process per data dir anyway (there the node is
:data:`~kim_appliance.store.LOCAL_NODE`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import re
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from kim_appliance.config import ClusterConfig
from kim_appliance.errors import ConfigError
from kim_appliance.fachdienst.maildrops import holder_prefix
from kim_appliance.store import EMBEDDED, LOCAL_NODE, NodeInfo, Store, StoreError

log = logging.getLogger("kim_appliance.cluster")

#: what a node name may look like (it is part of a file name: endpoints-NAME.json)
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: the prefix of the lease that holds a node's name
NAME_LEASE = "node:"
#: how far back `live` looks for the record of a node whose name is taken (any age)
EVER = dt.timedelta(days=36500)


class NodeNameTaken(ConfigError):
    """Another live process runs under this node name."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def is_embedded(store_url: str | None) -> bool:
    return store_url is None or store_url.strip().lower() in EMBEDDED


def node_name(requested: str | None, store_url: str | None) -> str:
    """The node name to run under: ``--node`` if given, else ``local`` for the embedded store
    and this machine's host name (its first label) for PostgreSQL. ConfigError for ``--node``
    with the embedded store (one process per data dir) or a name that cannot be a file name."""
    if requested is not None:
        if is_embedded(store_url):
            raise ConfigError(
                f"--node {requested}: several nodes need a shared store; the embedded store "
                "admits one process per data dir. Use --store postgresql://USER:PW@HOST:PORT/DB "
                "(or [store] url in config.toml), or leave out --node"
            )
        if not NODE_NAME.fullmatch(requested):
            raise ConfigError(
                f"--node {requested!r}: a node name is 1 to 63 letters, digits, '.', '_' or "
                "'-', starting with a letter or digit"
            )
        return requested
    if is_embedded(store_url):
        return LOCAL_NODE
    host = socket.gethostname().split(".")[0]
    return host if NODE_NAME.fullmatch(host) else "node"


def endpoints_file_name(requested: str | None) -> str:
    """``endpoints-NAME.json`` for a node named with ``--node``, else ``endpoints.json``."""
    return "endpoints.json" if requested is None else f"endpoints-{requested}.json"


def pid_running(pid: int) -> bool:
    """True if a process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@dataclass(frozen=True)
class Identity:
    """This process as a node: its name, host, pid and an instance id unique to this start."""

    name: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    instance: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def holder(self) -> str:
        """Who holds the name lease: this very process."""
        return f"{self.host}/{self.pid}/{self.instance}"

    def stamp(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "holder": self.holder}


def _split(host_port: str) -> tuple[str, int]:
    host, _, port = host_port.rpartition(":")
    return host.strip("[]"), int(port)


class ClusterView:
    """The live nodes as last read from the store, for synchronous lookups by the relay and the
    Clientmodul (refreshed by :func:`heartbeat_loop`). ``me`` is this node's name: its own
    listeners are found in-process, so the view offers the others."""

    def __init__(self, me: str, rng: random.Random | None = None) -> None:
        self.me = me
        self.nodes: list[NodeInfo] = []
        self._rng = rng or random.Random()

    def others(self) -> list[NodeInfo]:
        return [n for n in self.nodes if n.name != self.me]

    def mail_endpoints(self, domain: str, protocol: str) -> list[tuple[str, int]]:
        """(host, port) of the ``smtp`` or ``pop3`` listener of ``domain`` on every other live
        node, in random order (equal preference)."""
        found: list[tuple[str, int]] = []
        for node in self.others():
            value = _section(node.endpoints, "fachdienste", domain.lower(), protocol)
            if isinstance(value, str):
                found.append(_split(value))
        self._rng.shuffle(found)
        return found

    def https_endpoints(self, domain: str) -> list[str]:
        """The REST base URLs of ``domain`` on every other live node, in random order."""
        found = [
            value
            for node in self.others()
            if isinstance(value := _section(node.endpoints, "fachdienste", domain.lower(),
                                            "https"), str)
        ]  # fmt: skip
        self._rng.shuffle(found)
        return found

    def names(self) -> list[str]:
        return [n.name for n in self.nodes]


def _section(endpoints: Mapping[str, object], *path: str) -> object:
    value: object = endpoints
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


async def register(store: Store, me: Identity, settings: ClusterConfig) -> int:
    """Take this node's name in the store before anything is bound: `NodeNameTaken` if a live
    process holds it. A name held by a dead process of this host (its pid gone) is taken over
    at once, with the maildrop locks of that process's POP3 sessions. Whenever the name was
    free or taken over, the previous holder's relay claims are dropped (that process is gone,
    or silent past the timeout: a repeat is recognised by its relay id); returns how many.
    Then a first heartbeat (no listeners yet)."""
    ttl = dt.timedelta(seconds=settings.node_timeout_seconds)
    lease = NAME_LEASE + me.name
    now = _now()
    acquired = await store.nodes.acquire(lease, me.holder, now, ttl)
    # the last process under this name, as it reported itself (gone if it stopped cleanly)
    previous = {n.name: n for n in await store.nodes.live(now, EVER)}.get(me.name)
    stamp = previous.endpoints if previous is not None else {}
    host, pid, holder = stamp.get("host"), stamp.get("pid"), stamp.get("holder")
    dead_here = host == me.host and isinstance(pid, int) and pid != me.pid and not pid_running(pid)
    if not acquired:
        if not dead_here or not isinstance(holder, str):
            age = f"{(now - previous.seen_at).total_seconds():.0f} s ago" if previous else "?"
            raise NodeNameTaken(
                f"node name {me.name!r} is in use: pid {pid} on host {host} (last heartbeat "
                f"{age}); start this node with another --node NAME, or stop that one (its "
                f"name is free {settings.node_timeout_seconds:g} s after it stops reporting)"
            )
        await store.nodes.release(lease, holder)
        if not await store.nodes.acquire(lease, me.holder, now, ttl):
            raise NodeNameTaken(f"node name {me.name!r} was taken by another process just now")
    if dead_here:
        log.warning("node %s: pid %s of this host is gone; taking its name over", me.name, pid)
        # its POP3 sessions are gone for certain (the pid is): free their mailboxes now, not
        # after the locks' TTL (a name that merely lapsed on another host keeps them: its
        # process may be alive, only cut off)
        freed = await store.maildrops.release_holders(holder_prefix(me.name))
        if freed:
            log.info("node %s: %d maildrop locks of its previous process released", me.name,
                     freed)  # fmt: skip
    released = await store.relay.release_claims(me.name)
    if released:
        log.info("node %s: %d relay claims of its previous process released", me.name, released)
    await store.nodes.heartbeat(me.name, me.stamp(), [], now)
    return released


async def heartbeat_once(
    store: Store,
    me: Identity,
    settings: ClusterConfig,
    endpoints: Mapping[str, Any],
    components: Sequence[str],
    view: ClusterView,
) -> bool:
    """Renew the name, report the endpoints, refresh ``view``; False if the name was lost (this
    process was silent longer than the timeout and another took the name)."""
    now = _now()
    ttl = dt.timedelta(seconds=settings.node_timeout_seconds)
    kept = await store.nodes.acquire(NAME_LEASE + me.name, me.holder, now, ttl)
    if kept:
        await store.nodes.heartbeat(me.name, {**endpoints, **me.stamp()}, components, now)
    view.nodes = await store.nodes.live(now, ttl)
    return kept


async def heartbeat_loop(
    store: Store,
    me: Identity,
    settings: ClusterConfig,
    endpoints: Mapping[str, Any],
    components: Sequence[str],
    view: ClusterView,
) -> None:
    """Report this node every ``heartbeat_seconds`` until cancelled; on the way out (a clean
    stop) leave the live list and give the name back. A failing store is logged and tried
    again at the next beat (the node's name lapses if that lasts the timeout)."""
    try:
        while True:
            try:
                if not await heartbeat_once(store, me, settings, endpoints, components, view):
                    log.error(
                        "node %s: its name was taken by another process while this one was "
                        "silent; stop one of them", me.name,
                    )  # fmt: skip
            except StoreError as exc:
                log.warning("node %s: heartbeat failed: %s", me.name, exc)
            await trio.sleep(settings.heartbeat_seconds)
    finally:
        with trio.move_on_after(5) as scope:
            scope.shield = True
            try:
                await store.nodes.leave(me.name)
                await store.nodes.release(NAME_LEASE + me.name, me.holder)
            except StoreError as exc:
                log.warning("node %s: leaving the cluster failed: %s", me.name, exc)


async def live_nodes(store: Store, settings: ClusterConfig) -> list[NodeInfo]:
    """The nodes that reported within the timeout (for ``card import`` and the console)."""
    return await store.nodes.live(_now(), dt.timedelta(seconds=settings.node_timeout_seconds))


def advertised_host(bind: str, settings: ClusterConfig) -> str | None:
    """The host other nodes reach this node's listeners at, if not the bound address: the
    ``advertise`` setting, or this machine's name when binding every interface."""
    if settings.advertise:
        return settings.advertise
    if bind in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return None


def advertise(endpoints: Mapping[str, Any], host: str | None) -> dict[str, Any]:
    """``endpoints`` with the host of every ``HOST:PORT`` (and ``https://HOST:PORT/...``) of a
    listener replaced by ``host`` (None: unchanged); what the other nodes are told."""
    if host is None:
        return dict(endpoints)
    shown = f"[{host}]" if ":" in host else host

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, str):
            match = re.fullmatch(r"(https?://)?(\[[^\]]*\]|[^/:]+):(\d+)(/.*)?", value)
            if match:
                return f"{match.group(1) or ''}{shown}:{match.group(3)}{match.group(4) or ''}"
        return value

    return {k: swap(v) for k, v in endpoints.items()}
