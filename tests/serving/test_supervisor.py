"""The supervisor (kim_appliance.serving.supervisor): a component that fails is restarted on
the value of its first start, with backoff, while the others keep running; a failure before
the first start reaches the caller; cancellation stops everything (issue 11)."""

from __future__ import annotations

import errno
import itertools
import logging
import socket

import pytest
import trio
import trio.testing

from kim_appliance.serving import Supervisor

LOG = logging.getLogger("test.supervisor")


async def test_failing_component_restarts_with_backoff_and_keeps_its_value(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A component that raises after its start is started again with the value it first
    reported (a listener rebinds its ports); the waits double (1, 2, 4 s); a sibling keeps
    running throughout and the failure never reaches the nursery."""
    starts: list[tuple[float, int | None]] = []
    sibling_ticks = 0

    def make(previous: int | None) -> object:
        async def component(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
            starts.append((trio.current_time(), previous))
            task_status.started(previous if previous is not None else 4711)
            if len(starts) <= 3:
                raise RuntimeError(f"failure {len(starts)}")
            await trio.sleep_forever()

        return component

    async def sibling() -> None:
        nonlocal sibling_ticks
        while True:
            await trio.sleep(0.5)
            sibling_ticks += 1

    caplog.set_level(logging.INFO, logger=LOG.name)
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, LOG)
        value = await supervisor.start("listener", make)  # type: ignore[arg-type]
        supervisor.start_soon("sibling", sibling)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert value == 4711
    assert [previous for _, previous in starts] == [None, 4711, 4711, 4711]
    gaps = [round(b[0] - a[0]) for a, b in itertools.pairwise(starts)]
    assert gaps == [1, 2, 4]
    assert supervisor.components["listener"].restarts == 3
    assert supervisor.components["listener"].last_error == "RuntimeError: failure 3"
    assert sibling_ticks >= 39
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 3
    assert all("listener failed; restarting" in r.getMessage() for r in failures)


async def test_first_start_failure_reaches_the_caller() -> None:
    """A port that is taken at the first start is the caller's error (the appliance names the
    port in config.toml), not something to retry forever."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        def make(previous: object) -> object:
            async def component(task_status: trio.TaskStatus[object]) -> None:
                await trio.open_tcp_listeners(port, host="127.0.0.1")
                task_status.started(None)

            return component

        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError, match="in use") as raised:
                await Supervisor(nursery, LOG).start("konnektor", make)  # type: ignore[arg-type]
        assert raised.value.errno == errno.EADDRINUSE


async def test_a_component_that_ends_by_itself_is_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A background task is meant to run until cancelled; returning is a failure too."""
    runs = 0

    async def worker() -> None:
        nonlocal runs
        runs += 1
        await trio.sleep(100 if runs < 3 else 10_000)

    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, LOG)
        supervisor.start_soon("relay worker", worker)
        await trio.sleep(300)
        nursery.cancel_scope.cancel()
    assert runs == 3
    # it ran 100 s each time, longer than healthy_after (60 s): the backoff stayed at 1 s
    assert supervisor.components["relay worker"].last_error == "ended"
