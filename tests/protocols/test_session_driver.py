"""The shared trio session driver (kim_appliance.protocols.session): idle timeout, internal
error, handshake timeout, as a client of any of the four mail servers would notice them."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from selfsigned import tls_contexts

from kim_appliance.protocols.pop3 import Pop3Server
from kim_appliance.protocols.session import SessionIO, peer_name, run_core, serve_session
from kim_appliance.protocols.smtp import ConnectionClosed, Reply, SmtpServer
from kim_appliance.serving import (
    ConnectionBudget,
    Farewells,
    ListenerGuard,
    ListenerLimits,
    serve_guarded,
)

LOG = logging.getLogger("test.session_driver")


async def _read_until(stream: trio.abc.ReceiveStream, end: bytes) -> bytes:
    data = b""
    while end not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until the server closes (a forceful close has no TLS close_notify)."""
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        pass
    return data


async def test_smtp_idle_timeout_gives_421(autojump_clock: trio.testing.MockClock) -> None:
    """digest §1.9 (SMTP_TIMEOUT_SERVER): a silent SMTP client hears ``421 4.4.2`` and the
    connection closes; replies before that went out in order."""
    server_side, client = trio.testing.memory_stream_pair()
    core = SmtpServer(hostname="mx.test", max_message_size=1000)
    conn = SessionIO(server_side, timeout=30, receive_size=65536)

    async def handle(event: object) -> bool:
        return not isinstance(event, ConnectionClosed)

    async def server() -> None:
        await conn.send_all(core.greeting())
        await run_core(
            conn, core, handle, idle_reply=lambda: core.abort(Reply(421, "4.4.2", "idle timeout"))
        )
        await server_side.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        assert (await _read_until(client, b"\r\n")).startswith(b"220 mx.test")
        await client.send_all(b"NOOP\r\n")
        assert (await _read_until(client, b"\r\n")).startswith(b"250")
        before = trio.current_time()
        rest = await _read_all(client)
        assert trio.current_time() - before >= 30
    assert rest == b"421 4.4.2 idle timeout\r\n"


async def test_pop3_idle_timeout_and_active_client_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """RFC 1939 §3: the idle timer restarts with every command; only silence for the whole
    timeout ends the session with the protocol's ``-ERR``."""
    server_side, client = trio.testing.memory_stream_pair()
    core = Pop3Server(hostname="pop.test")
    conn = SessionIO(server_side, timeout=600, receive_size=65536)

    async def handle(event: object) -> bool:
        return True  # the core answers CAPA itself; no decision event is sent here

    async def server() -> None:
        await conn.send_all(core.greeting())
        await run_core(conn, core, handle, idle_reply=lambda: b"-ERR idle timeout, closing\r\n")
        await server_side.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        assert (await _read_until(client, b"\r\n")).startswith(b"+OK")
        for _ in range(3):  # 3 x 500 s of activity: more than one timeout in total
            await trio.sleep(500)
            await client.send_all(b"CAPA\r\n")
            assert (await _read_until(client, b"\r\n.\r\n")).startswith(b"+OK")
        rest = await _read_all(client)
    assert rest == b"-ERR idle timeout, closing\r\n"


Run = Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]]


async def _listen(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext, run: Run, *, timeout: float
) -> int:
    """A TLS listener whose connections go through the listener guard (as every listener of the
    appliance) and serve_session; returns its port."""

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await serve_session(name="smtp", peer=peer_name(stream), log=LOG, run=lambda: run(stream))

    guard = ListenerGuard(
        "smtp",
        log=LOG,
        limits=ListenerLimits(handshake_seconds=timeout),
        budget=ConnectionBudget(100),
        farewells=Farewells(internal_error=b"421 4.3.0 internal error, closing the session\r\n"),
    )
    tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listeners = [trio.SSLListener(t, server_ctx, https_compatible=False) for t in tcp]
    await nursery.start(partial(serve_guarded, handler, listeners, guard=guard))
    port: int = tcp[0].socket.getsockname()[1]
    return port


async def test_internal_error_gives_421_and_the_listener_survives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in one session is logged with its traceback, the client hears ``421 4.3.0``, and
    the next connection is served normally."""
    server_ctx, client_ctx = tls_contexts(tmp_path)
    calls = 0

    async def run(stream: trio.SSLStream[trio.SocketStream]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in the decision code")
        await stream.send_all(b"220 fine\r\n")

    caplog.set_level(logging.INFO, logger=LOG.name)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await _listen(nursery, server_ctx, run, timeout=20)
            answers = []
            for _ in range(2):
                tcp = await trio.open_tcp_stream("127.0.0.1", port)
                client = trio.SSLStream(tcp, client_ctx, server_hostname="localhost")
                answers.append(await _read_all(client))
                await client.aclose()
            nursery.cancel_scope.cancel()
    assert answers == [b"421 4.3.0 internal error, closing the session\r\n", b"220 fine\r\n"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().endswith("internal error, connection closed")
    assert errors[0].exc_info is not None
    assert "bug in the decision code" in str(errors[0].exc_info[1])


async def test_handshake_timeout_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that opens TCP and never starts TLS is dropped after the handshake deadline,
    logged as a handshake timeout, not as an error."""
    server_ctx, _ = tls_contexts(tmp_path)
    ran = False

    async def run(stream: trio.SSLStream[trio.SocketStream]) -> None:
        nonlocal ran
        ran = True

    caplog.set_level(logging.INFO, logger=LOG.name)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await _listen(nursery, server_ctx, run, timeout=0.3)
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            assert await _read_all(tcp) == b""  # closed by the server, nothing sent
            await tcp.aclose()
            nursery.cancel_scope.cancel()
    assert not ran
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("smtp 127.0.0.1:") and "TLS handshake timed out" in m for m in messages
    ), messages
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_first_command_deadline_is_shorter_than_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that connects and never speaks is closed after ``first_timeout`` (seconds),
    not after the 5-minute session timeout; once it has spoken, the idle timeout applies."""
    for speaks, expected_wait in ((False, 30), (True, 300)):
        server_side, client = trio.testing.memory_stream_pair()
        core = SmtpServer(hostname="mx.test", max_message_size=1000)
        conn = SessionIO(server_side, timeout=300, receive_size=65536, first_timeout=30)

        async def handle(event: object) -> bool:
            return not isinstance(event, ConnectionClosed)

        async def server(
            core: SmtpServer = core,
            conn: SessionIO = conn,
            server_side: trio.abc.Stream = server_side,
        ) -> None:
            await conn.send_all(core.greeting())
            await run_core(
                conn, core, handle, idle_reply=lambda: core.abort(Reply(421, "4.4.2", "idle"))
            )
            await server_side.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            assert (await _read_until(client, b"\r\n")).startswith(b"220")
            if speaks:
                await client.send_all(b"NOOP\r\n")
                assert (await _read_until(client, b"\r\n")).startswith(b"250")
            before = trio.current_time()
            rest = await _read_all(client)
            waited = trio.current_time() - before
        assert rest == b"421 4.4.2 idle\r\n"
        assert expected_wait <= waited < expected_wait + 1, (speaks, waited)
