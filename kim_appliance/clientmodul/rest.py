"""The Clientmodul's HTTPS client for the Fachdienst's REST services (KAS, AccountLimit,
Account Manager; digest §3.3-3.5): h11 over a trio SSL stream, one request per connection.

The TLS context is the Clientmodul's upstream context: it verifies the C.FD.TLS-S against the
TLS CA and presents the Clientmodul's C.CM.TLS-CS (mutual TLS, KOM-LE-A_2074, digest §1.9).
``connect_to`` maps the URL's host and port to the address to connect to (the Clientmodul's
``[clientmodul.fachdienste]`` table stands in for DNS); the name checked in the server's
certificate stays the URL's host.
Request bodies are streamed from an async iterator with a known Content-Length, response
bodies are handed out chunk by chunk: a 500 MiB KAS blob never sits in memory.

Resource handling: :func:`https_request` is an async context manager; the connection is closed
when it exits, whatever happened. Every send and every receive is bounded by ``timeout``
(CM_KAS_TIMEOUT, digest §1.9: no progress for that long fails). Error handling: a connection,
TLS or HTTP protocol failure is a :class:`RestUnavailable` naming the URL; HTTP statuses are
returned, not raised. This module never logs a header value (credentials travel in them).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

import h11
import trio

from kim_appliance.clientmodul.tls_sessions import SESSIONS
from kim_appliance.protocols.session import NETWORK_ERRORS

RECEIVE_SIZE: Final = 256 * 1024
#: the largest error or JSON body read into memory
MAX_SMALL_BODY: Final = 1024 * 1024


#: (host, port) of a URL -> (host, port) to connect to
ConnectTo = Callable[[str, int], tuple[str, int]]


class RestUnavailable(Exception):
    """The REST service could not be reached or broke the protocol (no HTTP status)."""


@dataclass
class HttpsResponse:
    """Status and headers of a response; the body is read with :meth:`chunks` or :meth:`read`."""

    url: str
    status: int
    #: lower-case names; the last value of a repeated field
    headers: dict[str, str]
    _exchange: _Exchange

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece, until its end."""
        while True:
            event = await self._exchange.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise RestUnavailable(f"{self.url}: unexpected {type(event).__name__} in the body")

    async def read(self, limit: int = MAX_SMALL_BODY) -> bytes:
        """The whole (small) body; RestUnavailable when it exceeds ``limit``."""
        data = bytearray()
        async for chunk in self.chunks():
            data += chunk
            if len(data) > limit:
                raise RestUnavailable(f"{self.url}: response body exceeds {limit} bytes")
        return bytes(data)

    async def message(self) -> str:
        """The ``message`` of a gematik Error body, else the start of the body as text."""
        import json

        try:
            raw = await self.read(64 * 1024)
        except RestUnavailable as exc:
            return str(exc)
        try:
            body = json.loads(raw)
        except ValueError:
            return raw[:200].decode("utf-8", "replace")
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return str(body["message"])[:300]
        return raw[:200].decode("utf-8", "replace")


class _Exchange:
    def __init__(self, stream: trio.SSLStream[trio.SocketStream], timeout: float, url: str) -> None:
        self.stream = stream
        self.conn = h11.Connection(our_role=h11.CLIENT)
        self.timeout = timeout
        self.url = url

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            try:
                with trio.fail_after(self.timeout):
                    await self.stream.send_all(data)
            except (*NETWORK_ERRORS, trio.TooSlowError) as exc:
                raise RestUnavailable(f"{self.url}: sending failed: {_describe(exc)}") from exc

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise RestUnavailable(f"{self.url}: bad HTTP from the server: {exc}") from exc
            if event is not h11.NEED_DATA:
                return cast("h11.Event | type[h11.PAUSED]", event)
            try:
                with trio.fail_after(self.timeout):
                    data = await self.stream.receive_some(RECEIVE_SIZE)
            except (*NETWORK_ERRORS, trio.TooSlowError) as exc:
                raise RestUnavailable(f"{self.url}: receiving failed: {_describe(exc)}") from exc
            self.conn.receive_data(bytes(data))


async def _send_body(exchange: _Exchange, body: bytes | AsyncIterable[bytes] | None) -> None:
    if isinstance(body, bytes):
        if body:
            await exchange.send(h11.Data(data=body))
    elif body is not None:
        async for piece in body:
            if piece:
                await exchange.send(h11.Data(data=piece))
    try:
        await exchange.send(h11.EndOfMessage())
    except h11.LocalProtocolError as exc:
        raise RestUnavailable(f"{exchange.url}: the request body did not match its length") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "no progress within the timeout (CM_KAS_TIMEOUT)"
    return f"{type(exc).__name__}: {exc}"


@asynccontextmanager
async def https_request(
    ssl_context: ssl.SSLContext,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | AsyncIterable[bytes] | None = None,
    body_length: int | None = None,
    timeout: float = 30.0,
    connect_to: ConnectTo | None = None,
) -> AsyncIterator[HttpsResponse]:
    """Send one request to ``url`` (``https://host[:port]/path``) and yield the response.

    ``body`` is bytes, or an async iterable of pieces whose total is ``body_length`` (sent as
    Content-Length). Raises RestUnavailable for anything but an HTTP answer.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise RestUnavailable(f"{url}: not an https:// URL")
    host, port = parts.hostname, parts.port or 443
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if isinstance(body, bytes):
        body_length = len(body)
    request_headers = [
        ("Host", parts.netloc),
        ("User-Agent", "kim-appliance-clientmodul"),
        ("Connection", "close"),
        *(headers or {}).items(),
    ]
    if body is not None:
        request_headers.append(("Content-Length", str(body_length or 0)))
    address, address_port = connect_to(host, port) if connect_to else (host, port)
    try:
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(address, address_port)
    except (OSError, trio.TooSlowError) as exc:
        raise RestUnavailable(f"{url}: cannot connect: {_describe(exc)}") from exc
    stream = trio.SSLStream(tcp, ssl_context, server_hostname=host)
    SESSIONS.offer(stream, port)  # TLS 1.3 resumption between our own components
    try:
        try:
            with trio.fail_after(timeout):
                await stream.do_handshake()
        except (*NETWORK_ERRORS, trio.TooSlowError) as exc:
            raise RestUnavailable(f"{url}: TLS handshake failed: {_describe(exc)}") from exc
        exchange = _Exchange(stream, timeout, url)
        streamed = body is not None and not isinstance(body, bytes)
        if streamed:
            # RFC 9110 §10.1.1: a large body waits for "100 Continue", so a server that refuses
            # it at once (401, 413, 507) answers before a byte of it is sent; a server that
            # closes early after reading part of a body makes the kernel reset the connection,
            # and the reset can swallow the answer the client must see
            request_headers.append(("Expect", "100-continue"))
        await exchange.send(h11.Request(method=method, target=target, headers=request_headers))
        event: h11.Event | type[h11.PAUSED] | None = None
        if streamed:
            event = await exchange.next_event()
            if isinstance(event, h11.InformationalResponse) and event.status_code == 100:
                event = None
        send_error: RestUnavailable | None = None
        if event is None:
            try:
                await _send_body(exchange, body)
            except RestUnavailable as exc:
                # a server may answer and close before the body is complete: its answer is
                # still in the stream, and it is what the caller must see
                send_error = exc
        while True:
            if event is None:
                try:
                    event = await exchange.next_event()
                except RestUnavailable:
                    if send_error is not None:
                        raise send_error from None
                    raise
            if isinstance(event, h11.InformationalResponse):
                event = None
                continue
            if not isinstance(event, h11.Response):
                raise RestUnavailable(f"{url}: expected a response, got {type(event).__name__}")
            break
        SESSIONS.keep(stream, port)  # the tickets came before the response
        response_headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in event.headers
        }
        yield HttpsResponse(url, event.status_code, response_headers, exchange)
    finally:
        await trio.aclose_forcefully(stream)
