"""HTTPS to the Konnektor for the Clientmodul's SOAP client: h11 over trio, connections kept.

Always TLS (KOM-LE-A_2070): the Konnektor's certificate is checked against the configured CA
and name, and the Clientmodul authenticates with its client certificate (in the SSL context,
the default, KOM-LE-A_2071) or with HTTP Basic (KOM-LE-A_2072). A connection is kept open after
a complete exchange and reused for the next request to the same host and port (at most
:data:`MAX_IDLE` per host, none older than :data:`IDLE_REUSE` seconds): SignDocument,
DecryptDocument and the small calls around them come in bursts.

Error handling: a connection that breaks or a server that does not answer is a
:class:`~kim_appliance.clientmodul.ports.KonnektorUnreachable` naming the URL and what failed
(for the PVS: the Konnektor cannot be used now); a kept connection that turns out closed by the
server before any answer is retried once on a new one (the server may close idle connections at
any time, RFC 9112 §9.3). HTTP statuses are returned, not raised. Resource handling: every wait
(connect, handshake, each send, each receive without progress) is bounded by ``timeout``
(KONNEKTOR_TIMEOUT, digest §1.9); a response body larger than ``max_body`` is refused.
Runs in the event loop; the XML work stays with the caller (a worker thread). This module never
logs a header value (the Basic credentials travel in one).
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol
from urllib.parse import urlsplit

import h11
import trio

from kim_appliance.clientmodul.ports import KonnektorUnreachable
from kim_appliance.protocols.session import NETWORK_ERRORS

#: a 25 MiB document in base64 with its envelope, and room (digest §1.8)
MAX_RESPONSE: Final = 48 * 1024 * 1024
#: kept connections per host:port
MAX_IDLE: Final = 8
#: a kept connection older than this is closed rather than reused
IDLE_REUSE: Final = 30.0
RECEIVE_SIZE: Final = 256 * 1024
USER_AGENT: Final = "kim-appliance-clientmodul"


@dataclass(frozen=True)
class HttpAnswer:
    """Status, Content-Type and the body in the pieces it arrived in (a 25 MiB answer is parsed
    from them without being joined first)."""

    status: int
    content_type: str
    chunks: list[bytes]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


class Pieces(Protocol):
    """A body piece made while it is sent: its length first, then its bytes (iterable again)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[bytes]: ...


class _Retry(Exception):
    """A kept connection was closed by the server before it answered: try a new one."""


@dataclass
class _Connection:
    host: str
    port: int
    stream: trio.SSLStream[trio.SocketStream]
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(our_role=h11.CLIENT))
    idle_since: float = 0.0


class KonnektorHttps:
    """HTTPS requests to a Konnektor with kept connections. One per Konnektor; event loop."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        timeout: float,
        basic_auth: tuple[str, str] | None = None,
        max_body: int = MAX_RESPONSE,
    ) -> None:
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.max_body = max_body
        self._authorization: str | None = None
        if basic_auth is not None:
            user, password = basic_auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._authorization = f"Basic {token}"
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        #: connections opened (tests and the bench look at reuse)
        self.connections_opened = 0

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: Sequence[bytes | Pieces] = (),
        headers: Sequence[tuple[str, str]] = (),
    ) -> HttpAnswer:
        """One request with ``body`` in pieces (sent one after the other, never joined; a
        :class:`Pieces` is made while it is sent); the answer's status and body. Raises
        KonnektorUnreachable."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise KonnektorUnreachable(
                f"{url}: the Clientmodul talks to the Konnektor over TLS only (KOM-LE-A_2070); "
                "use an https:// URL"
            )
        host, port = parts.hostname, parts.port or 443
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request_headers = [
            ("Host", parts.netloc),
            ("User-Agent", USER_AGENT),
            *headers,
        ]
        if self._authorization is not None:
            request_headers.append(("Authorization", self._authorization))
        if method != "GET" or body:
            request_headers.append(("Content-Length", str(sum(len(piece) for piece in body))))
        kept = await self._take(host, port)
        if kept is not None:
            try:
                return await self._exchange(
                    kept, url, method, target, request_headers, body, reused=True
                )
            except _Retry:
                pass  # the server had closed it: once more on a new connection
        connection = await self._open(host, port, url)
        return await self._exchange(
            connection, url, method, target, request_headers, body, reused=False
        )

    async def aclose(self) -> None:
        """Close every kept connection."""
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await trio.aclose_forcefully(connection.stream)

    # --- connections -----------------------------------------------------------------------

    async def _take(self, host: str, port: int) -> _Connection | None:
        """The most recently kept connection to ``host:port`` that is young enough."""
        kept = self._idle.get((host, port), [])
        now = trio.current_time()
        while kept:
            connection = kept.pop()
            if now - connection.idle_since < IDLE_REUSE:
                return connection
            await trio.aclose_forcefully(connection.stream)
        return None

    def _keep(self, connection: _Connection) -> bool:
        kept = self._idle.setdefault((connection.host, connection.port), [])
        if len(kept) >= MAX_IDLE:
            return False
        connection.idle_since = trio.current_time()
        kept.append(connection)
        return True

    async def _open(self, host: str, port: int, url: str) -> _Connection:
        try:
            with trio.fail_after(self.timeout):
                tcp = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            raise KonnektorUnreachable(f"{url}: cannot connect: {_describe(exc)}") from exc
        stream = trio.SSLStream(tcp, self.ssl_context, server_hostname=host, https_compatible=True)
        try:
            with trio.fail_after(self.timeout):
                await stream.do_handshake()
        except (*NETWORK_ERRORS, trio.TooSlowError) as exc:
            await trio.aclose_forcefully(stream)
            raise KonnektorUnreachable(f"{url}: TLS handshake failed: {_describe(exc)}") from exc
        self.connections_opened += 1
        return _Connection(host, port, stream)

    async def _exchange(
        self,
        connection: _Connection,
        url: str,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: Sequence[bytes | Pieces],
        *,
        reused: bool,
    ) -> HttpAnswer:
        """Send the request and read the whole answer; the connection is kept or closed.
        Raises _Retry when a reused connection ends before any byte of an answer."""
        conn = connection.conn
        answered = False
        keep = False
        try:
            await self._send(connection, h11.Request(method=method, target=target,
                                                      headers=headers))  # fmt: skip
            for piece in body:
                for data in [piece] if isinstance(piece, bytes) else piece:
                    if data:
                        await self._send(connection, h11.Data(data=data))
            await self._send(connection, h11.EndOfMessage())
            response: h11.Response | None = None
            chunks: list[bytes] = []
            size = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    with trio.fail_after(self.timeout):
                        received = await connection.stream.receive_some(RECEIVE_SIZE)
                    conn.receive_data(bytes(received))
                    continue
                answered = True
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self.max_body:
                        raise KonnektorUnreachable(
                            f"{url}: the answer exceeds {self.max_body} bytes"
                        )
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed
                    raise h11.RemoteProtocolError("the connection closed mid-answer")
            assert response is not None
            content_type = next(
                (v.decode("latin-1") for k, v in response.headers if k == b"content-type"), ""
            )
            keep = conn.our_state is h11.DONE and conn.their_state is h11.DONE
            if keep:
                conn.start_next_cycle()
            return HttpAnswer(response.status_code, content_type, chunks)
        except (*NETWORK_ERRORS, h11.ProtocolError, trio.TooSlowError) as exc:
            if reused and not answered and not isinstance(exc, trio.TooSlowError):
                raise _Retry(_describe(exc)) from exc
            if isinstance(exc, h11.RemoteProtocolError | trio.BrokenResourceError) and not answered:
                reason = "the connection was closed without an answer"
            else:
                reason = _describe(exc)
            raise KonnektorUnreachable(f"{url}: {reason}") from exc
        finally:
            if not (keep and self._keep(connection)):
                await trio.aclose_forcefully(connection.stream)

    async def _send(self, connection: _Connection, event: h11.Event) -> None:
        data = connection.conn.send(event)
        if data:
            with trio.fail_after(self.timeout):
                await connection.stream.send_all(data)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "no answer within the timeout (KONNEKTOR_TIMEOUT)"
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, trio.BrokenResourceError) and cause is not None:
        exc = cause
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
