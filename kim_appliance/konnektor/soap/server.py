"""The Konnektor's HTTPS server: ``connector.sds``, the SOAP endpoints, the WSDLs and the fault
admin API, on trio with h11.

Routes::

    GET  /connector.sds          the ServiceDirectory (digest §1.8)
    POST /ws/<Service>           SOAP 1.1 (EventService, CardService, CertificateService,
                                 SignatureService, EncryptionService, AuthSignatureService)
    GET  /wsdl/<path>            gematik's WSDL/XSD files as shipped in the package
    GET  /admin/faults           the fault status (JSON)             } admin token, own Host,
    POST /admin/faults           switch faults (JSON, see :mod:`.admin`) } JSON, no foreign Origin

h11 rather than an ASGI server: the emulator must be able to *not answer*. A Konnektor that is
down is simply unreachable, so while the fault "unreachable" is on, every request to the SOAP
endpoints, ``connector.sds`` and the WSDLs is read and then the connection is closed without a
byte of response (the client sees a connection error: ``RemoteDisconnected``/``ConnectionError``,
not an HTTP status). ``/admin/faults`` keeps answering, so a test can switch the fault off.

The admin API switches faults that break every practice's sending, so it is guarded like the
console (:mod:`kim_appliance.web.console.guard`): every request needs ``Authorization: Bearer``
with the appliance's admin token (``DATA_DIR/admin-token``; without a configured token the API
is off), a ``Host`` naming this listener (DNS rebinding), and a POST needs ``Content-Type:
application/json`` and no foreign ``Origin`` (cross-site requests from a browser).

Resource handling: every connection runs under the listener's guard
(:mod:`kim_appliance.serving.guard`: connection cap with 503, TLS handshake deadline); the first
request must arrive within ``first_command_seconds``, later ones within :data:`IDLE_TIMEOUT`; a
request body larger than :data:`MAX_BODY` (digest §1.8: a Konnektor takes just under 25 MiB of
document per operation) is refused with 413 before it is read; at most
:data:`LARGE_BODIES_AT_ONCE` requests with bodies above :data:`LARGE_BODY` are read and worked on
at a time (the others wait, up to :data:`LARGE_BODY_WAIT` seconds, then 503), so parallel
25 MB documents cannot take the process's memory. SOAP work (XML parsing, schema validation,
card operations including the slow-card latency) runs in worker threads, so the event loop stays
responsive and a slow card delays only its own callers.

Error handling: a client that breaks the TLS handshake or the HTTP framing loses its connection
and nothing else; a bug while answering one request is a 500 for that request (logged), and the
connection is closed. This module must never decide a Konnektor result itself: SOAP goes to
:class:`~.handlers.SoapDispatcher`, faults to :mod:`.admin`.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import ssl
from dataclasses import dataclass
from functools import partial
from typing import Final

import h11
import trio

from kim_appliance.konnektor.errors import KonnektorUnreachableError
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.konnektor.soap.admin import AdminRequestError, apply_faults
from kim_appliance.konnektor.soap.directory import connector_sds, safe_host
from kim_appliance.konnektor.soap.envelope import CONTENT_TYPE
from kim_appliance.konnektor.soap.handlers import SoapDispatcher
from kim_appliance.konnektor.soap.services import SERVICES_BY_NAME, WSDL_DIR
from kim_appliance.serving import (
    ConnectionBudget,
    Farewells,
    ListenerGuard,
    ListenerLimits,
    serve_guarded,
)
from kim_appliance.serving.hosts import AllowedHosts

log = logging.getLogger(__name__)

#: digest §1.8: a document of just under 25 MiB per operation, in base64 (x 4/3), plus the
#: envelope and its other fields.
MAX_BODY: Final = 35 * 1024 * 1024
#: Bodies above this size count as large: at most LARGE_BODIES_AT_ONCE of them at a time.
LARGE_BODY: Final = 1024 * 1024
LARGE_BODIES_AT_ONCE: Final = 2
#: Seconds a large request waits for its turn before it gets 503.
LARGE_BODY_WAIT: Final = 60.0
#: Seconds a keep-alive connection may sit idle between requests.
IDLE_TIMEOUT: Final = 60.0
#: Seconds a client has for one request's body once its head has arrived.
REQUEST_TIMEOUT: Final = 120.0
#: The head of a request (request line and headers), in bytes.
MAX_HEAD: Final = 64 * 1024
#: A path below /wsdl/: the shipped file names, nothing longer or stranger.
_WSDL_PATH: Final = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,3}")
_RECEIVE_SIZE: Final = 256 * 1024
_SERVER: Final = b"kim-appliance-konnektor"
#: What a client over the connection cap reads (the guard sends it after the TLS handshake)
BUSY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 5\r\nconnection: close\r\ncontent-length: 46\r\n\r\n"
    b"too many connections; try again in 5 seconds\r\n"
)


@dataclass(frozen=True)
class KonnektorAddress:
    """Where the Konnektor's services listen (reported through ``task_status.started``)."""

    host: str
    port: int
    tls: bool

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def sds_url(self) -> str:
        """What ``endpoints.json`` lists as ``konnektor.sds``."""
        return f"{self.base_url}/connector.sds"


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = CONTENT_TYPE


class _Drop(Exception):
    """Close the connection without answering (the Konnektor is "unreachable")."""


async def serve_konnektor(
    konnektor: Konnektor,
    *,
    bind: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    validate: bool = True,
    admin_token: str | None = None,
    limits: ListenerLimits | None = None,
    budget: ConnectionBudget | None = None,
    task_status: trio.TaskStatus[KonnektorAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``konnektor``'s SOAP services on ``bind``:``port`` (0: any free port) until
    cancelled, over HTTPS with ``ssl_context`` (the C.AK.AUT server context; it may ask for
    client certificates) or plain HTTP when it is None. Reports the bound address (the real
    port when ``port`` was 0) through ``task_status.started``. ``validate``: check every SOAP
    request against the service's XSD (error 4000 when it does not conform). ``admin_token``:
    the bearer token of the fault admin API (None: the admin API refuses every request).
    ``limits`` and ``budget``: those of the guard (:mod:`kim_appliance.serving.guard`)."""
    limits = limits or ListenerLimits()
    budget = budget or ConnectionBudget.from_nofile_limit()
    listeners: list[trio.SocketListener] = await trio.open_tcp_listeners(port, host=bind)
    if port == 0:
        # a name like "localhost" gives one listener per address, each with its own free
        # port; one address with one port is what can be reported
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    sockname = listeners[0].socket.getsockname()
    address = KonnektorAddress(sockname[0], sockname[1], ssl_context is not None)
    app = _App(
        konnektor,
        SoapDispatcher(konnektor, validate=validate),
        address,
        ssl_context,
        admin_token=admin_token,
        first_request_timeout=limits.first_command_seconds,
    )
    serving: list[trio.abc.Listener[trio.abc.Stream]] = list(listeners)
    if ssl_context is not None:
        serving = [
            trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in listeners
        ]
    guard = ListenerGuard(
        "konnektor https", log=log, limits=limits, budget=budget, farewells=Farewells(busy=BUSY)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_guarded, app.serve_connection, serving, guard=guard))
        # the startup line: one per component, with its address (issue 15)
        log.info(
            "konnektor: %s %s, connector.sds %s",
            "https" if address.tls else "http",
            address.base_url.split("://", 1)[1],
            address.sds_url,
        )
        task_status.started(address)


class _App:
    def __init__(
        self,
        konnektor: Konnektor,
        dispatcher: SoapDispatcher,
        address: KonnektorAddress,
        ssl_context: ssl.SSLContext | None,
        *,
        admin_token: str | None,
        first_request_timeout: float,
    ) -> None:
        self.konnektor = konnektor
        self.dispatcher = dispatcher
        self.address = address
        self.client_auth = ssl_context is not None and ssl_context.verify_mode == ssl.CERT_REQUIRED
        self.admin_token = admin_token
        self.first_request_timeout = first_request_timeout
        self.allowed_hosts = AllowedHosts()
        self.allowed_hosts.set_bound(address.host, address.port)
        self.large_bodies = trio.Semaphore(LARGE_BODIES_AT_ONCE)

    # -- the connection loop ------------------------------------------------------------------

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        """One connection's requests until the client closes, idles or breaks HTTP/1.1. The
        guard closes the stream and handles what escapes."""
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        wait = self.first_request_timeout
        try:
            while True:
                with trio.move_on_after(wait) as idle:
                    event = await _next_event(connection, stream)
                if idle.cancelled_caught or not isinstance(event, h11.Request):
                    return
                wait = IDLE_TIMEOUT
                length = _content_length(event)
                if length is not None and length > MAX_BODY:
                    await _send(connection, stream, _too_large())
                    return
                if length is None or length > LARGE_BODY:
                    with trio.move_on_after(LARGE_BODY_WAIT) as queued:
                        await self.large_bodies.acquire()
                    if queued.cancelled_caught:
                        await _send(connection, stream, _busy())
                        return
                    try:
                        done = await self._exchange(connection, stream, event)
                    finally:
                        self.large_bodies.release()
                else:
                    done = await self._exchange(connection, stream, event)
                if done or connection.our_state is h11.MUST_CLOSE:
                    return
                connection.start_next_cycle()
        except h11.ProtocolError as exc:
            log.debug("Konnektor HTTP: dropping a client that broke HTTP/1.1: %s", exc)

    async def _exchange(
        self, connection: h11.Connection, stream: trio.abc.Stream, request: h11.Request
    ) -> bool:
        """Read the body of ``request`` and answer it; True when the connection must end."""
        with trio.fail_after(REQUEST_TIMEOUT):
            if connection.client_is_waiting_for_100_continue:
                go_on = h11.InformationalResponse(status_code=100, headers=[])
                await stream.send_all(connection.send(go_on) or b"")
            body = await _read_body(connection, stream)
        if body is None:
            await _send(connection, stream, _too_large())
            return True
        try:
            reply = await self.route(request, body)
        except _Drop:
            return True  # no answer at all: the guard closes the connection
        except Exception:
            # a bug answering one request: a 500 for it (logged once), and the connection ends
            log.exception("Konnektor HTTP: internal error answering %s %r",
                          request.method.decode("ascii", "replace"),
                          request.target[:200])  # fmt: skip
            await _send(connection, stream, _text(500, "internal error of the Konnektor"))
            return True
        await _send(connection, stream, reply)
        return False

    # -- routing ------------------------------------------------------------------------------

    async def route(self, request: h11.Request, body: bytes) -> _Reply:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace").split("?", 1)[0]
        host = _header(request, b"host")
        if target == "/admin/faults":
            refusal = self._admin_refusal(request, method)
            if refusal is not None:
                return refusal
            return await self._admin(method, body)
        if self.konnektor.faults.unreachable:
            raise _Drop
        if target == "/connector.sds":
            if method != "GET":
                return _text(405, f"{method} {target}: use GET")
            base = f"{'https' if self.address.tls else 'http'}://"
            base += safe_host(host, self.address.base_url.split("://", 1)[1])
            sds = connector_sds(base, tls=self.address.tls, client_auth=self.client_auth)
            return _Reply(200, sds, "application/xml; charset=utf-8")
        if target.startswith("/ws/"):
            service = target[len("/ws/") :]
            if service not in SERVICES_BY_NAME:
                return _text(404, f"{target}: no such service; see /connector.sds")
            if method != "POST":
                return _text(405, f"{method} {target}: SOAP endpoints take POST")
            try:
                soap = await trio.to_thread.run_sync(self.dispatcher.handle, service, body)
            except KonnektorUnreachableError:
                raise _Drop from None
            return _Reply(soap.status, soap.body)
        if target.startswith("/wsdl/") and method == "GET":
            return await trio.to_thread.run_sync(_wsdl_file, target[len("/wsdl/") :])
        return _text(404, f"{target}: not found; the services are listed in /connector.sds")

    def _admin_refusal(self, request: h11.Request, method: str) -> _Reply | None:
        """Why the admin API must not answer ``request`` (see the module docstring), or None."""
        if self.admin_token is None:
            return _json(403, {"error": "the fault admin API is off: no admin token configured"})
        host = _header(request, b"host")
        if host not in self.allowed_hosts:
            reason = f"Host: {host!r} does not name this Konnektor; other host names are refused"
            return _json(403, {"error": reason})
        given = _header(request, b"authorization") or ""
        if not hmac.compare_digest(given.encode(), f"Bearer {self.admin_token}".encode()):
            return _json(401, {"error": "Authorization: the admin token is missing or wrong "
                                        "(Bearer token from DATA_DIR/admin-token)"})  # fmt: skip
        if method != "POST":
            return None
        origin = _header(request, b"origin")
        if origin is not None and origin.lower().removeprefix("https://") not in self.allowed_hosts:
            return _json(403, {"error": f"Origin: {origin!r} is not this Konnektor; "
                                        "cross-site requests are refused"})  # fmt: skip
        if (_header(request, b"sec-fetch-site") or "same-origin") not in ("same-origin", "none"):
            return _json(403, {"error": "Sec-Fetch-Site: cross-site requests are refused"})
        media_type = (_header(request, b"content-type") or "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            return _json(415, {"error": f"Content-Type: {media_type or 'missing'}; the admin "
                                        "API takes application/json"})  # fmt: skip
        return None

    async def _admin(self, method: str, body: bytes) -> _Reply:
        admin = self.konnektor.admin
        if method == "GET":
            return _json(200, admin.status())
        if method != "POST":
            return _text(405, f"{method} /admin/faults: use GET or POST")
        try:
            status = await trio.to_thread.run_sync(apply_faults, admin, body)
        except AdminRequestError as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, status)


# --- HTTP plumbing ---------------------------------------------------------------------------


async def _next_event(connection: h11.Connection, stream: trio.abc.Stream) -> object:
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        connection.receive_data(bytes(await stream.receive_some(_RECEIVE_SIZE)))


async def _read_body(connection: h11.Connection, stream: trio.abc.Stream) -> bytes | None:
    """The request body, or None when it exceeds :data:`MAX_BODY`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(connection, stream)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY:
                return None
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} in a request body")


async def _send(connection: h11.Connection, stream: trio.abc.Stream, reply: _Reply) -> None:
    headers = [
        (b"content-type", reply.content_type.encode("ascii")),
        (b"content-length", str(len(reply.body)).encode("ascii")),
        (b"server", _SERVER),
    ]
    data = connection.send(h11.Response(status_code=reply.status, headers=headers)) or b""
    data += connection.send(h11.Data(data=reply.body)) or b""
    data += connection.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


def _content_length(request: h11.Request) -> int | None:
    """The declared body length (h11 has checked it is a number), or None when chunked."""
    value = _header(request, b"content-length")
    return int(value) if value is not None else None


def _too_large() -> _Reply:
    return _json(413, {"error": f"body: larger than {MAX_BODY} bytes (digest §1.8: a Konnektor "
                                "operation takes just under 25 MiB of document)"})  # fmt: skip


def _busy() -> _Reply:
    reason = f"at most {LARGE_BODIES_AT_ONCE} bodies above {LARGE_BODY} bytes at a time"
    return _text(503, f"too many large requests at once; try again ({reason})")


def _header(request: h11.Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return bytes(value).decode("ascii", "replace")
    return None


def _text(status: int, message: str) -> _Reply:
    return _Reply(status, (message + "\n").encode("utf-8"), "text/plain; charset=utf-8")


def _json(status: int, value: object) -> _Reply:
    body = json.dumps(value, indent=2, sort_keys=True).encode("utf-8")
    return _Reply(status, body, "application/json")


def _wsdl_file(relative: str) -> _Reply:
    """A shipped WSDL/XSD file; nothing outside the package's wsdl directory. The name is
    checked before it touches the file system (no ``..``, no over-long names)."""
    shown = relative[:100] + ("..." if len(relative) > 100 else "")
    if len(relative) > 200 or not _WSDL_PATH.fullmatch(relative) or ".." in relative.split("/"):
        return _text(404, f"/wsdl/{shown}: no such file")
    path = (WSDL_DIR / relative).resolve()
    if not path.is_relative_to(WSDL_DIR) or not path.is_file():
        return _text(404, f"/wsdl/{shown}: no such file")
    kind = "text/plain; charset=utf-8" if path.name == "LICENSE" else "application/xml"
    return _Reply(200, path.read_bytes(), kind)


__all__ = ["KonnektorAddress", "serve_konnektor"]
