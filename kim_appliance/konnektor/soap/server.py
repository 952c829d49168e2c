"""The Konnektor's HTTPS server: ``connector.sds``, the SOAP endpoints, the WSDLs and the fault
admin API, on trio with h11.

Routes::

    GET  /connector.sds          the ServiceDirectory (digest §1.8)
    POST /ws/<Service>           SOAP 1.1 (EventService, CardService, CertificateService,
                                 SignatureService, EncryptionService, AuthSignatureService)
    GET  /wsdl/<path>            gematik's WSDL/XSD files as shipped in the package
    GET  /admin/faults           the fault status (JSON)
    POST /admin/faults           switch faults (JSON, see :mod:`.admin`)

h11 rather than an ASGI server: the emulator must be able to *not answer*. A Konnektor that is
down is simply unreachable, so while the fault "unreachable" is on, every request to the SOAP
endpoints, ``connector.sds`` and the WSDLs is read and then the connection is closed without a
byte of response (the client sees a connection error: ``RemoteDisconnected``/``ConnectionError``,
not an HTTP status). ``/admin/faults`` keeps answering, so a test can switch the fault off.

Resource handling: one task per connection (``trio.serve_listeners``); a request body larger
than :data:`MAX_BODY` is refused with 413 and the connection closed; an idle keep-alive
connection is closed after :data:`IDLE_TIMEOUT` seconds; every stream is closed with
``aclose_forcefully`` in ``finally``. SOAP work (XML parsing, schema validation, card
operations including the slow-card latency) runs in worker threads, so the event loop stays
responsive and a slow card delays only its own callers.

Error handling: a client that breaks the TLS handshake or the HTTP framing loses its connection
and nothing else; the server keeps serving. This module must never decide a Konnektor result
itself: SOAP goes to :class:`~.handlers.SoapDispatcher`, faults to :mod:`.admin`.
"""

from __future__ import annotations

import json
import logging
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

log = logging.getLogger(__name__)

#: 25 MiB of document in base64 (x 4/3) plus the envelope, with room to spare.
MAX_BODY: Final = 48 * 1024 * 1024
#: Seconds a keep-alive connection may sit idle between requests.
IDLE_TIMEOUT: Final = 60.0
#: Seconds a client has for the TLS handshake and one request's headers and body.
REQUEST_TIMEOUT: Final = 120.0
_RECEIVE_SIZE: Final = 256 * 1024
_SERVER: Final = b"kim-appliance-konnektor"


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
    task_status: trio.TaskStatus[KonnektorAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``konnektor``'s SOAP services on ``bind``:``port`` (0: any free port) until
    cancelled, over HTTPS with ``ssl_context`` (the C.AK.AUT server context; it may ask for
    client certificates) or plain HTTP when it is None. Reports the bound address (the real
    port when ``port`` was 0) through ``task_status.started``. ``validate``: check every SOAP
    request against the service's XSD (error 4000 when it does not conform)."""
    listeners: list[trio.SocketListener] = await trio.open_tcp_listeners(port, host=bind)
    if port == 0:
        # a name like "localhost" gives one listener per address, each with its own free
        # port; one address with one port is what can be reported
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    sockname = listeners[0].socket.getsockname()
    address = KonnektorAddress(sockname[0], sockname[1], ssl_context is not None)
    app = _App(konnektor, SoapDispatcher(konnektor, validate=validate), address, ssl_context)
    serving: list[trio.abc.Listener[trio.abc.Stream]] = list(listeners)
    if ssl_context is not None:
        serving = [
            trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in listeners
        ]
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_listeners, app.serve_connection, serving))
        task_status.started(address)


class _App:
    def __init__(
        self,
        konnektor: Konnektor,
        dispatcher: SoapDispatcher,
        address: KonnektorAddress,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.konnektor = konnektor
        self.dispatcher = dispatcher
        self.address = address
        self.client_auth = ssl_context is not None and ssl_context.verify_mode == ssl.CERT_REQUIRED

    # -- the connection loop ------------------------------------------------------------------

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT) as idle:
                    event = await _next_event(connection, stream)
                if idle.cancelled_caught or not isinstance(event, h11.Request):
                    return
                with trio.fail_after(REQUEST_TIMEOUT):
                    if connection.client_is_waiting_for_100_continue:
                        go_on = h11.InformationalResponse(status_code=100, headers=[])
                        await stream.send_all(connection.send(go_on) or b"")
                    body = await _read_body(connection, stream)
                if body is None:
                    await _send(connection, stream, _json(413, {"error": "body: too large"}))
                    return
                try:
                    reply = await self.route(event, body)
                except _Drop:
                    return  # no answer at all: the finally clause closes the connection
                await _send(connection, stream, reply)
                if connection.our_state is h11.MUST_CLOSE:
                    return
                connection.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass
        except h11.ProtocolError as exc:
            log.debug("Konnektor HTTP: dropping a client that broke HTTP/1.1: %s", exc)
        finally:
            await trio.aclose_forcefully(stream)

    # -- routing ------------------------------------------------------------------------------

    async def route(self, request: h11.Request, body: bytes) -> _Reply:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace").split("?", 1)[0]
        host = _header(request, b"host")
        if target == "/admin/faults":
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
    """A shipped WSDL/XSD file; nothing outside the package's wsdl directory."""
    path = (WSDL_DIR / relative).resolve()
    if not path.is_relative_to(WSDL_DIR) or not path.is_file():
        return _text(404, f"/wsdl/{relative}: no such file")
    kind = "text/plain; charset=utf-8" if path.name == "LICENSE" else "application/xml"
    return _Reply(200, path.read_bytes(), kind)


__all__ = ["KonnektorAddress", "serve_konnektor"]
