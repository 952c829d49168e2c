"""The listener guard (kim_appliance.serving.guard) on real TLS listeners: what a client and
the operator notice when a handler fails, the connection cap is reached, a client never
finishes its handshake, and the process's connection budget runs out (issue 11)."""

from __future__ import annotations

import logging
import resource
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import trio
from selfsigned import tls_contexts

from kim_appliance.serving import (
    ConnectionBudget,
    Farewells,
    ListenerGuard,
    ListenerLimits,
    raise_nofile_limit,
    serve_guarded,
)

LOG = logging.getLogger("test.guard")
FAREWELLS = Farewells(busy=b"421 4.3.2 busy\r\n", internal_error=b"421 4.3.0 internal error\r\n")
Handler = Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]]


async def _listen(
    nursery: trio.Nursery, tmp_path: Path, handler: Handler, guard: ListenerGuard
) -> tuple[int, Callable[[], Awaitable[trio.SSLStream[trio.SocketStream]]]]:
    """A guarded TLS listener on a free port; returns the port and a client connector."""
    tmp_path.mkdir(exist_ok=True)
    server_ctx, client_ctx = tls_contexts(tmp_path)
    tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listeners = [trio.SSLListener(t, server_ctx, https_compatible=False) for t in tcp]
    await nursery.start(partial(serve_guarded, handler, listeners, guard=guard))
    port: int = tcp[0].socket.getsockname()[1]

    async def connect() -> trio.SSLStream[trio.SocketStream]:
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        return trio.SSLStream(raw, client_ctx, server_hostname="localhost")

    return port, connect


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        pass
    return data


def _guard(**limits: float) -> ListenerGuard:
    return ListenerGuard(
        "smtp",
        log=LOG,
        limits=ListenerLimits(**limits),  # type: ignore[arg-type]
        budget=ConnectionBudget(1000),
        farewells=FAREWELLS,
    )


async def test_exceptions_of_every_kind_end_only_their_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a handler raises (a bug, a recursion, an exception group from its own nursery,
    an OverflowError from a decoder) the client hears the internal-error line, the error is
    logged once with its traceback, and the listener serves the next connection."""
    failures: list[BaseException] = [
        RuntimeError("bug"),
        RecursionError("deep"),
        OverflowError("length"),
        ExceptionGroup("nursery", [KeyError("k")]),
    ]

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        if failures:
            raise failures.pop(0)
        await stream.send_all(b"220 fine\r\n")

    guard = _guard()
    caplog.set_level(logging.INFO, logger=LOG.name)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, connect = await _listen(nursery, tmp_path, handler, guard)
            answers = []
            for _ in range(5):
                client = await connect()
                answers.append(await _read_all(client))
                await client.aclose()
            nursery.cancel_scope.cancel()
    assert answers == [FAREWELLS.internal_error] * 4 + [b"220 fine\r\n"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [type(r.exc_info[1]).__name__ for r in errors if r.exc_info] == [
        "RuntimeError",
        "RecursionError",
        "OverflowError",
        "ExceptionGroup",
    ]
    assert guard.internal_errors == 4
    assert guard.active == 0


async def test_connection_cap_refuses_with_the_busy_line(tmp_path: Path) -> None:
    """Beyond ``max_connections`` a client hears the protocol's busy line at once and is
    closed; once a connection ends, the next client is served again."""
    release = trio.Event()

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.send_all(b"220 hello\r\n")
        await release.wait()

    guard = _guard(max_connections=2)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, connect = await _listen(nursery, tmp_path, handler, guard)
            held = [await connect() for _ in range(2)]
            for client in held:
                assert await client.receive_some(100) == b"220 hello\r\n"
            refused = await connect()
            assert await _read_all(refused) == FAREWELLS.busy
            assert guard.refused == 1
            release.set()
            for client in held:
                await client.aclose()
            while guard.active:
                await trio.sleep(0.01)
            release = trio.Event()
            again = await connect()
            assert await again.receive_some(100) == b"220 hello\r\n"
            await again.aclose()
            nursery.cancel_scope.cancel()


async def test_process_budget_is_shared_by_listeners(tmp_path: Path) -> None:
    """Two listeners with one budget of 2: when one listener holds both, the other refuses
    (a flood on one listener cannot take the descriptors every other one needs... and the
    budget is given back when the connections end)."""
    budget = ConnectionBudget(2)
    release = trio.Event()

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.send_all(b"hello\r\n")
        await release.wait()

    guards = [
        ListenerGuard(name, log=LOG, limits=ListenerLimits(), budget=budget, farewells=FAREWELLS)
        for name in ("ldap", "smtp")
    ]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, flood = await _listen(nursery, tmp_path / "a", handler, guards[0])
            _, other = await _listen(nursery, tmp_path / "b", handler, guards[1])
            held = [await flood() for _ in range(2)]
            for client in held:
                assert await client.receive_some(100) == b"hello\r\n"
            assert await _read_all(await other()) == FAREWELLS.busy
            release.set()
            for client in held:
                await client.aclose()
            while budget.in_use:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


async def test_handshake_deadline_closes_a_silent_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that opens TCP and never starts TLS costs ``handshake_seconds``, not minutes;
    it is logged as a timeout, not an error, and never reaches the handler."""
    ran = False

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        nonlocal ran
        ran = True

    caplog.set_level(logging.INFO, logger=LOG.name)
    guard = _guard(handshake_seconds=0.3)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port, _ = await _listen(nursery, tmp_path, handler, guard)
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            before = trio.current_time()
            assert await _read_all(tcp) == b""
            assert trio.current_time() - before < 5
            await tcp.aclose()
            nursery.cancel_scope.cancel()
    assert not ran
    assert any("TLS handshake timed out" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_cancellation_is_not_swallowed(tmp_path: Path) -> None:
    """Cancelling the listener's scope (how the appliance stops) ends handlers that are
    running and the serve loop; the guard does not treat it as an error."""
    started = trio.Event()

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        started.set()
        await trio.sleep_forever()

    guard = _guard()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, connect = await _listen(nursery, tmp_path, handler, guard)
            client = await connect()
            await client.do_handshake()
            await started.wait()
            nursery.cancel_scope.cancel()
    assert guard.internal_errors == 0
    assert guard.active == 0


def test_nofile_limit_is_raised_to_the_hard_limit() -> None:
    """At start the soft RLIMIT_NOFILE goes up to the hard limit (a common soft default of 1,024
    let 1,100 idle connections starve every listener), and the budget leaves a reserve."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        new_soft, new_hard = raise_nofile_limit()
        assert new_soft == new_hard == hard
        budget = ConnectionBudget.from_nofile_limit()
        assert 64 <= budget.total < (new_soft if new_soft != resource.RLIM_INFINITY else 1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_connections", 0), ("handshake_seconds", 0), ("first_command_seconds", float("inf"))],
)
def test_limits_refuse_nonsense(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        ListenerLimits(**{field: value})  # type: ignore[arg-type]
