"""The VZD's LDAP listeners (``I_Directory_Query``, digest §4.1): plain LDAP and LDAPS.

:func:`serve_directory` has the ``trio.serve_listeners`` shape: it binds, reports the bound
addresses through ``task_status.started(DirectoryAddresses(ldap, ldaps))``, serves until
cancelled, and each connection handler closes its stream in ``finally``. A connection moves
bytes between its stream and one sans-IO :class:`LdapServer`; this module decides only what
the core cannot: whether a bind is right and which entries a search returns.

Behaviour (digest §4.1): anonymous bind, and simple bind for the DN/password pairs in
``users`` (wrong password: invalidCredentials 49); searches below ``dc=data,dc=vzd`` with scopes
base/one/sub (other bases: noSuchObject 32), at most ``size_limit`` (100, TIP1-A_5552) entries
and sizeLimitExceeded 4 after them; entries without a currently valid certificate are not
found; ``userCertificate;binary`` carries DER. Write operations are refused by the core.
Paged results (RFC 2696, critical or not, as python-ldap and ``ldapsearch -E '!pr=N'`` send
it) hand out the same entries in pages (the size limit counts for the whole paged search, as
OpenLDAP's default ``size.prtotal``); what a cookie holds is :mod:`.paging`'s business. The
plain listener offers StartTLS (RFC 4511 §4.14) when the server has a TLS context: the upgrade
happens inside the session, its handshake bounded by the guard's ``handshake_seconds``.

Resource handling: every connection runs under the listener's guard
(:mod:`kim_appliance.serving.guard`): a connection cap (beyond it a Notice of Disconnection
``busy``), a TLS handshake deadline, and a bug in a session answered with a Notice of
Disconnection ``other`` and logged, never reaching the listener. A client must send its first
PDU within ``first_command_seconds``; connections idle for ``idle_timeout`` seconds after that
(15 min, digest §4.1) get a Notice of Disconnection (unavailable) and are closed. A request PDU
is at most :data:`MAX_REQUEST_PDU` bytes, and the CPU-heavy steps (decoding a large PDU, a
search's filter evaluation and encoding) run in a worker thread, so no search stalls the other
listeners of the process. Error handling: a broken connection ends that connection only.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Final, NamedTuple

import trio

from kim_appliance.directory.entries import BASE_DN, DirectoryEntry
from kim_appliance.directory.filters import matches, select_attributes
from kim_appliance.directory.paging import CookieError, PagedSearches, View
from kim_appliance.directory.store import DirectoryStore, has_valid_certificate
from kim_appliance.protocols.ldap import (
    NEED_DATA,
    PAGED_RESULTS_OID,
    START_TLS_OID,
    Abandon,
    Bind,
    ConnectionClosed,
    LdapServer,
    ProtocolViolation,
    Refused,
    ResultCode,
    Scope,
    Search,
    StartTls,
    Unbind,
    encode_notice_of_disconnection,
    filter_to_string,
)
from kim_appliance.serving import (
    ConnectionBudget,
    Farewells,
    ListenerGuard,
    ListenerLimits,
    serve_guarded,
)

log = logging.getLogger("kim_appliance.directory")

#: TIP1-A_5552: a search returns at most 100 entries.
SIZE_LIMIT = 100
#: digest §4.1: idle connections are closed after 15 minutes.
IDLE_TIMEOUT = 15 * 60.0
_RECEIVE_SIZE = 65536
#: The largest request PDU accepted. A search for 100 addresses (an OR of mail= items) is about
#: 6 KB; 64 KiB leaves room and bounds the decoding work of one request.
MAX_REQUEST_PDU: Final = 64 * 1024
#: Buffered request bytes above which a PDU is decoded in a worker thread (pyasn1 decodes about
#: a megabyte per second; small binds and searches stay on the event loop).
DECODE_INLINE_MAX: Final = 4096
#: Worker threads doing CPU-heavy LDAP work (decoding a large PDU, a search) at a time. They hold
#: the GIL while they run; more of them would make the event loop wait for it longer (the loop
#: gets it back at every switch interval from one thread, bench/stall.py)
CPU_WORKERS: Final = 1
#: What the guard says over the connection cap and after a bug in a session (RFC 4511 §4.4.1)
FAREWELLS: Final = Farewells(
    busy=encode_notice_of_disconnection(
        ResultCode.BUSY, "too many connections to the directory; try again later"
    ),
    internal_error=encode_notice_of_disconnection(
        ResultCode.OTHER, "internal error of the directory; connection closed"
    ),
)
#: The directory's own entry at the base DN (the entries sit flat below it).
_BASE_ENTRY = {"objectClass": [b"top", b"dcObject", b"organization"], "dc": [b"data"]}


class DirectoryAddresses(NamedTuple):
    """Bound ``(host, port)`` of the plain and the TLS listener (``None`` if not started)."""

    ldap: tuple[str, int] | None
    ldaps: tuple[str, int] | None


@dataclass(frozen=True)
class DirectorySettings:
    """What a connection needs besides the store. ``users`` maps bind DNs to passwords."""

    users: Mapping[str, str] = field(default_factory=dict)
    size_limit: int = SIZE_LIMIT
    idle_timeout: float = IDLE_TIMEOUT
    #: seconds for the first PDU of a connection (``[limits] first_command_seconds``)
    first_pdu_timeout: float = ListenerLimits().first_command_seconds
    #: the server context StartTLS upgrades a plain connection with (None: not offered)
    start_tls: ssl.SSLContext | None = None
    #: seconds for the TLS handshake after StartTLS (``[limits] handshake_seconds``)
    handshake_seconds: float = ListenerLimits().handshake_seconds


def normalise_dn(dn: str) -> str:
    """Case-folded DN with the spaces around ``,`` and ``=`` removed (enough for the flat
    ``uid=...,dc=data,dc=vzd`` layout; not a full RFC 4514 parser)."""
    parts = []
    for rdn in dn.split(","):
        attribute, _, value = rdn.partition("=")
        parts.append(f"{attribute.strip().lower()}={value.strip().lower()}")
    return ",".join(parts) if dn.strip() else ""


def _address(listeners: list[trio.SocketListener]) -> tuple[str, int]:
    host, port = listeners[0].socket.getsockname()[:2]
    return str(host), int(port)


async def serve_directory(
    store: DirectoryStore,
    *,
    bind: str,
    ldap_port: int | None,
    ldaps_port: int | None,
    ssl_context: ssl.SSLContext | None,
    users: Mapping[str, str] | None = None,
    size_limit: int = SIZE_LIMIT,
    idle_timeout: float = IDLE_TIMEOUT,
    limits: ListenerLimits | None = None,
    budget: ConnectionBudget | None = None,
    task_status: trio.TaskStatus[DirectoryAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``store`` over LDAP on ``ldap_port`` and LDAPS on ``ldaps_port`` (0: any free
    port, ``None``: no such listener) until cancelled. ``ssl_context`` is the server context
    for LDAPS (the C.ZD.TLS-S certificate in the real TI); ``limits`` and ``budget`` those of
    the guard (:mod:`kim_appliance.serving.guard`)."""
    if ldaps_port is not None and ssl_context is None:
        raise ValueError("serve_directory: ldaps_port given without an ssl_context")
    limits = limits or ListenerLimits()
    budget = budget or ConnectionBudget.from_nofile_limit()
    settings = DirectorySettings(
        users={normalise_dn(dn): pw for dn, pw in (users or {}).items()},
        size_limit=size_limit,
        idle_timeout=idle_timeout,
        first_pdu_timeout=min(limits.first_command_seconds, idle_timeout),
        start_tls=ssl_context,
        handshake_seconds=limits.handshake_seconds,
    )
    cpu = trio.CapacityLimiter(CPU_WORKERS)
    plain_handler = partial(serve_ldap_connection, store, settings, cpu, tls=False)
    tls_handler = partial(serve_ldap_connection, store, settings, cpu, tls=True)

    def guard(name: str) -> ListenerGuard:
        return ListenerGuard(name, log=log, limits=limits, budget=budget, farewells=FAREWELLS)

    plain = await trio.open_tcp_listeners(ldap_port, host=bind) if ldap_port is not None else []
    tls = await trio.open_tcp_listeners(ldaps_port, host=bind) if ldaps_port is not None else []
    addresses = DirectoryAddresses(
        _address(plain) if plain else None, _address(tls) if tls else None
    )
    async with trio.open_nursery() as nursery:
        if plain:
            nursery.start_soon(partial(serve_guarded, plain_handler, plain, guard=guard("ldap")))
        if tls:
            assert ssl_context is not None
            wrapped = [trio.SSLListener(s, ssl_context, https_compatible=False) for s in tls]
            nursery.start_soon(partial(serve_guarded, tls_handler, wrapped, guard=guard("ldaps")))
        # host:port, not the tuples (issue 15); a listener that is off is left out
        bound: list[str] = []
        for scheme, pair in (("ldap", addresses.ldap), ("ldaps", addresses.ldaps)):
            if pair is not None:
                host = f"[{pair[0]}]" if ":" in pair[0] else pair[0]
                bound.append(f"{scheme} {host}:{pair[1]}")
        log.info("directory: %s, base %s", ", ".join(bound), BASE_DN)
        task_status.started(addresses)


async def serve_ldap_connection(
    store: DirectoryStore,
    settings: DirectorySettings,
    cpu: trio.CapacityLimiter,
    stream: trio.abc.Stream,
    *,
    tls: bool = False,
) -> None:
    """One LDAP session on ``stream`` until Unbind, a protocol violation, idle timeout or EOF;
    the CPU-heavy steps run in worker threads under ``cpu``. ``tls``: the stream is LDAPS
    already; otherwise StartTLS is offered when ``settings.start_tls`` is set. Network errors
    and bugs are the guard's (:func:`serve_directory`)."""
    core = LdapServer(
        max_pdu_size=MAX_REQUEST_PDU,
        start_tls=not tls and settings.start_tls is not None,
        tls=tls,
    )
    pages = PagedSearches()
    timeout = settings.first_pdu_timeout
    while True:
        if core.buffered > DECODE_INLINE_MAX:
            event = await trio.to_thread.run_sync(core.next_event, limiter=cpu)
        else:
            event = core.next_event()
        if event is NEED_DATA:
            with trio.move_on_after(timeout):
                core.receive_data(bytes(await stream.receive_some(_RECEIVE_SIZE)))
                continue
            await stream.send_all(
                core.notice_of_disconnection(
                    ResultCode.UNAVAILABLE, f"idle for {timeout:.0f} s; connection closed"
                )
            )
            return
        timeout = settings.idle_timeout
        queued = core.data_to_send()
        if queued:
            await stream.send_all(queued)
        match event:
            case Bind():
                code, diagnostic = _check_bind(event, settings)
                await stream.send_all(core.send_bind_result(event.message_id, code, diagnostic))
            case Search():
                # a change made on another node is seen by the next search (change counter)
                await store.refresh()
                answer = await trio.to_thread.run_sync(
                    _search, core, store, settings, event, pages, limiter=cpu
                )
                await stream.send_all(answer)
            case StartTls():
                upgraded = await _start_tls(core, stream, settings, event)
                if upgraded is None:
                    return
                stream = upgraded
            case Refused() | Abandon():
                log.debug("directory: %r", event)
            case ProtocolViolation():
                log.info("directory: protocol violation: %s", event.reason)
                return
            case Unbind() | ConnectionClosed():
                return


async def _start_tls(
    core: LdapServer, stream: trio.abc.Stream, settings: DirectorySettings, event: StartTls
) -> trio.SSLStream[trio.abc.Stream] | None:
    """RFC 4511 §4.14: the success response in plain text, then the TLS handshake on the same
    connection within ``handshake_seconds`` (the guard's promise for implicit TLS, kept here
    for the upgrade). None when the handshake failed or took too long: the session ends."""
    assert settings.start_tls is not None  # the core offers StartTLS only then
    await stream.send_all(core.send_start_tls_result(event.message_id, ResultCode.SUCCESS))
    upgraded = trio.SSLStream(stream, settings.start_tls, server_side=True)
    with trio.move_on_after(settings.handshake_seconds):
        try:
            await upgraded.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            log.info("directory: StartTLS handshake failed: %r", exc)
            return None
        return upgraded
    log.info("directory: StartTLS handshake timed out after %.0f s", settings.handshake_seconds)
    return None


def _check_bind(event: Bind, settings: DirectorySettings) -> tuple[ResultCode, str]:
    """RFC 4513 §5.1: anonymous (empty name and password) is allowed; an unauthenticated bind
    (name, empty password) is refused; a name/password pair must be in ``users``."""
    if not event.name and not event.password:
        return ResultCode.SUCCESS, ""
    if not event.password:
        return (
            ResultCode.UNWILLING_TO_PERFORM,
            f"bind: unauthenticated bind as {event.name!r} (empty password) is not allowed",
        )
    expected = settings.users.get(normalise_dn(event.name))
    supplied = event.password.decode("utf-8", "replace")
    if expected is None or not hmac.compare_digest(expected.encode(), supplied.encode()):
        log.info("directory: bind as %r failed", event.name)
        return ResultCode.INVALID_CREDENTIALS, "bind: invalid credentials"
    return ResultCode.SUCCESS, ""


def _search(
    core: LdapServer,
    store: DirectoryStore,
    settings: DirectorySettings,
    search: Search,
    pages: PagedSearches,
) -> bytes:
    """The whole answer to ``search``: entries and SearchResultDone, or the next page of a
    paged search (runs in a worker thread: filter evaluation and BER encoding are the
    CPU-heavy part of a session)."""
    base = normalise_dn(search.base)
    log.debug("directory: search %r scope %s %s", search.base, search.scope.name,
              filter_to_string(search.filter))  # fmt: skip
    if base == "" and search.scope is Scope.BASE:
        root_dse = {
            "objectClass": [b"top"],
            "namingContexts": [BASE_DN.encode()],
            "supportedLDAPVersion": [b"3"],
            "supportedControl": [PAGED_RESULTS_OID.encode()],
            "supportedExtension": [START_TLS_OID.encode()] if core.start_tls else [],
            "vendorName": [b"kim-appliance"],
        }
        shown = {name: values for name, values in root_dse.items() if values}
        return core.send_entry(search.message_id, "", shown) + core.send_search_done(
            search.message_id, ResultCode.SUCCESS
        )
    limit = settings.size_limit
    if search.size_limit:
        limit = min(limit, search.size_limit)
    too_many = f"more than {limit} entries match; narrow the filter (TIP1-A_5552)"
    if search.paged is not None and search.paged.cookie:
        return _next_page(core, store, search, pages, too_many)
    candidates = _candidates(store, base, search.scope)
    if candidates is None:
        return core.send_search_done(
            search.message_id,
            ResultCode.NO_SUCH_OBJECT,
            f"search base {search.base!r} does not exist; entries are below {BASE_DN}",
            matched_dn=BASE_DN if base.endswith("," + BASE_DN) else "",
        )
    matching: list[View] = []
    truncated = False
    for dn, attributes in candidates:
        if not matches(search.filter, attributes):
            continue
        if len(matching) >= limit:
            truncated = True
            break
        matching.append((dn, attributes))
    if search.paged is not None:
        page = pages.first_page(
            search, matching, limit=limit, truncated=truncated, diagnostic=too_many
        )
        return _answer(core, search, page.entries, page.code, page.diagnostic,
                       cookie=page.cookie, estimate=page.estimate)  # fmt: skip
    code, text = (ResultCode.SIZE_LIMIT_EXCEEDED, too_many) if truncated else (
        ResultCode.SUCCESS, ""
    )  # fmt: skip
    return _answer(core, search, matching, code, text)


def _next_page(
    core: LdapServer, store: DirectoryStore, search: Search, pages: PagedSearches, too_many: str
) -> bytes:
    """The page a paged search's cookie asks for; the entries as they are now."""
    current = {e.dn: e for e in store.entries() if has_valid_certificate(e)}

    def read(dn: str) -> View | None:
        entry = current.get(dn)
        if entry is None:
            return None
        view = _view(entry)
        return view if matches(search.filter, view[1]) else None

    try:
        page = pages.next_page(search, read, diagnostic=too_many)
    except CookieError as exc:
        return core.send_search_done(search.message_id, ResultCode.UNWILLING_TO_PERFORM, str(exc))
    return _answer(core, search, page.entries, page.code, page.diagnostic,
                   cookie=page.cookie, estimate=page.estimate)  # fmt: skip


def _answer(
    core: LdapServer,
    search: Search,
    entries: list[View],
    code: ResultCode,
    diagnostic: str,
    *,
    cookie: bytes = b"",
    estimate: int = 0,
) -> bytes:
    answer = bytearray()
    for dn, attributes in entries:
        selected = select_attributes(attributes, search.attributes, types_only=search.types_only)
        answer += core.send_entry(search.message_id, dn, selected)
    answer += core.send_search_done(
        search.message_id, code, diagnostic, cookie=cookie, estimate=estimate
    )
    return bytes(answer)


def _candidates(
    store: DirectoryStore, base: str, scope: Scope
) -> list[tuple[str, dict[str, list[bytes]]]] | None:
    """``(dn, attributes)`` in scope of ``base``, or ``None`` if ``base`` does not exist."""
    entries = [e for e in store.entries() if has_valid_certificate(e)]
    if base == BASE_DN:
        if scope is Scope.BASE:
            return [(BASE_DN, dict(_BASE_ENTRY))]
        found = [_view(e) for e in entries]
        return [(BASE_DN, dict(_BASE_ENTRY)), *found] if scope is Scope.SUB else found
    for entry in entries:
        if normalise_dn(entry.dn) == base:
            return [] if scope is Scope.ONE else [_view(entry)]  # entries are leaves
    return None


def _view(entry: DirectoryEntry) -> tuple[str, dict[str, list[bytes]]]:
    return entry.dn, entry.ldap_attributes()
