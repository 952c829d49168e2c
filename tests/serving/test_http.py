"""HTTP listeners (kim_appliance.serving.http): Hypercorn behind the listener guard. What an
HTTP client notices at the connection cap: idle kept-alive connections make room for a client
with a request, busy ones do not (503), and the first request must come within the deadline."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from kim_appliance.serving import ConnectionBudget, ListenerLimits
from kim_appliance.serving.http import serve_asgi

LOG = logging.getLogger("test.http")


def _app(release: trio.Event) -> Starlette:
    async def fast(request: Request) -> Response:
        return PlainTextResponse("fast")

    async def slow(request: Request) -> Response:
        await release.wait()
        return PlainTextResponse("slow")

    return Starlette(routes=[Route("/fast", fast), Route("/slow", slow)])


@asynccontextmanager
async def _serving(release: trio.Event, **limits: float) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(
            partial(
                serve_asgi,
                _app(release),
                bind="127.0.0.1",
                port=0,
                ssl_context=None,
                limits=ListenerLimits(**limits),  # type: ignore[arg-type]
                budget=ConnectionBudget(100),
                log=LOG,
            )
        )
        yield port
        nursery.cancel_scope.cancel()


def _request(path: str, port: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


async def _read_response(sock: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith((b"fast", b"slow", b"seconds")):
        chunk = await sock.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


async def test_idle_keep_alive_connections_make_room_at_the_cap() -> None:
    """Two kept-alive connections sit idle after their responses; at a cap of 2, a third
    client is served (the longest-idle connection is closed, as HTTP allows), not refused."""
    async with _serving(trio.Event(), max_connections=2) as port:
        idle = []
        for _ in range(2):
            sock = await trio.open_tcp_stream("127.0.0.1", port)
            await sock.send_all(_request("/fast", port))
            assert (await _read_response(sock)).startswith(b"HTTP/1.1 200")
            idle.append(sock)
        await trio.sleep(0.6)
        third = await trio.open_tcp_stream("127.0.0.1", port)
        await third.send_all(_request("/fast", port))
        answer = await _read_response(third)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        with trio.fail_after(5):
            assert await idle[0].receive_some(4096) == b""  # the oldest idle one was closed
        for sock in (*idle, third):
            await sock.aclose()


async def test_busy_connections_are_not_evicted_and_the_next_client_hears_503() -> None:
    """Connections in the middle of a request keep their place; a client over the cap hears
    503 with Retry-After, and once the requests are done the listener serves again."""
    release = trio.Event()
    async with _serving(release, max_connections=2) as port:
        busy = []
        for _ in range(2):
            sock = await trio.open_tcp_stream("127.0.0.1", port)
            await sock.send_all(_request("/slow", port))
            busy.append(sock)
        await trio.sleep(0.6)
        refused = await trio.open_tcp_stream("127.0.0.1", port)
        answer = await _read_response(refused)
        assert answer.startswith(b"HTTP/1.1 503")
        assert b"retry-after: 5" in answer
        release.set()
        for sock in busy:
            assert (await _read_response(sock)).startswith(b"HTTP/1.1 200")
            await sock.aclose()
        await refused.aclose()


async def test_a_client_that_never_sends_a_request_is_closed_after_the_deadline() -> None:
    """A silent client costs the first-command deadline, not the process a file descriptor
    for ever."""
    async with _serving(trio.Event(), first_command_seconds=0.5) as port:
        sock = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            assert await sock.receive_some(4096) == b""
        await sock.aclose()


def test_port_stays_free_after_the_listener_stops() -> None:
    """Cancelling the listener closes its socket: the port can be bound again at once."""

    async def main() -> int:
        async with _serving(trio.Event()) as port:
            return port

    port = trio.run(main)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
