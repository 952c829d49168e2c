"""TLS 1.3 session resumption between the Clientmodul and its Fachdienst (issue 13, item 2),
against a real trio TLS server on loopback: the second connection to the same server resumes,
another server or another client context gets a full handshake, a server that no longer knows
the ticket just gives a full handshake."""

from __future__ import annotations

import ssl
from functools import partial
from pathlib import Path

import trio
from selfsigned import tls_contexts

from kim_appliance.clientmodul.tls_sessions import TlsSessions

GREETING = b"+OK hello\r\n"


async def _serve(server_ctx: ssl.SSLContext, nursery: trio.Nursery) -> int:
    async def handler(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        try:
            await stream.send_all(GREETING)
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def _connect(sessions: TlsSessions, client_ctx: ssl.SSLContext, port: int) -> bool:
    """One connection as the Clientmodul makes it; True if the handshake was resumed."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, client_ctx, server_hostname="localhost")
    sessions.offer(stream, port)
    with trio.fail_after(10):
        await stream.do_handshake()
        assert await stream.receive_some(100) == GREETING  # the tickets come with it
    sessions.keep(stream, port)
    resumed = bool(stream.session_reused)
    await trio.aclose_forcefully(stream)
    return resumed


async def test_the_second_connection_to_a_server_resumes(tmp_path: Path) -> None:
    server_ctx, client_ctx = tls_contexts(tmp_path)
    sessions = TlsSessions()
    async with trio.open_nursery() as nursery:
        port = await _serve(server_ctx, nursery)
        results = [await _connect(sessions, client_ctx, port) for _ in range(3)]
        nursery.cancel_scope.cancel()
    assert results == [False, True, True]
    assert (sessions.full, sessions.resumed) == (1, 2)


async def test_no_session_crosses_servers_or_client_contexts(tmp_path: Path) -> None:
    server_ctx, client_ctx = tls_contexts(tmp_path)
    other_client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    other_client.load_verify_locations(tmp_path / "cert.pem")
    sessions = TlsSessions()
    async with trio.open_nursery() as nursery:
        one = await _serve(server_ctx, nursery)
        two = await _serve(server_ctx, nursery)
        assert not await _connect(sessions, client_ctx, one)
        assert not await _connect(sessions, client_ctx, two)  # another port: its own session
        assert not await _connect(sessions, other_client, one)  # another context: none offered
        assert await _connect(sessions, client_ctx, one)
        nursery.cancel_scope.cancel()


async def test_a_server_that_forgot_the_ticket_gives_a_full_handshake(tmp_path: Path) -> None:
    """A restarted Fachdienst (new ticket keys) refuses the old ticket; the connection still
    comes up, verified in full, and its new session is kept."""
    server_ctx, client_ctx = tls_contexts(tmp_path)
    sessions = TlsSessions()
    async with trio.open_nursery() as nursery:
        port = await _serve(server_ctx, nursery)
        assert not await _connect(sessions, client_ctx, port)
        nursery.cancel_scope.cancel()
    restarted = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    restarted.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    async with trio.open_nursery() as nursery:
        port2 = await _serve(restarted, nursery)
        old = dict(sessions._sessions)
        sessions._sessions.clear()
        for (context, name, _), session in old.items():  # the old ticket, as if for this port
            sessions._sessions[(context, name, port2)] = session
        assert not await _connect(sessions, client_ctx, port2)
        assert await _connect(sessions, client_ctx, port2)
        nursery.cancel_scope.cancel()
