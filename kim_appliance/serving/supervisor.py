"""The supervisor: a component that fails is restarted with backoff while the others serve on.

The connection guard (:mod:`.guard`) keeps clients from ending a component; this is the second
line, for a component's own tasks (a listener loop, the relay worker, a retention pass) that
fail anyway. :meth:`Supervisor.start` runs a component in the ``trio.serve_listeners`` shape:
the first start's failure (a port taken) propagates to the caller, so the appliance can say
which port; once the component has started, an exception from it is logged with its traceback
and the component is started again after a backoff (1 s, doubling to 60 s, back to 1 s after
it has run a minute without failing). A restart gets the value the first start reported, so a
listener binds the ports it bound before (``endpoints.json`` stays true).

This module must never restart a component that was cancelled (that is how the appliance
stops), and never let a component's failure reach the nursery it was given.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import trio

T = TypeVar("T")

#: first wait before a restart, its cap, and how long a component must run to reset it
FIRST_BACKOFF: Final = 1.0
MAX_BACKOFF: Final = 60.0
HEALTHY_AFTER: Final = 60.0

#: a component task in the ``serve_listeners`` shape: ``await fn(task_status=...)``
Component = Callable[..., Awaitable[None]]


@dataclass
class ComponentState(Generic[T]):
    """What the supervisor knows of one component (for logs, the console and tests)."""

    name: str
    value: T | None = None
    restarts: int = 0
    last_error: str | None = None


class Supervisor:
    """Starts components as tasks of ``nursery`` and restarts those that fail."""

    def __init__(
        self,
        nursery: trio.Nursery,
        log: logging.Logger,
        *,
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        healthy_after: float = HEALTHY_AFTER,
    ) -> None:
        self.nursery = nursery
        self.log = log
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after
        self.components: dict[str, ComponentState[Any]] = {}

    async def start(self, name: str, make: Callable[[T | None], Component]) -> T:
        """Start ``make(None)`` and return what it reports through ``task_status.started``;
        after a failure, ``make(value)`` is started with that first value. An exception before
        the first start propagates."""
        state: ComponentState[T] = ComponentState(name)
        self.components[name] = state
        value: T = await self.nursery.start(self._supervise, state, make)
        return value

    def start_soon(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a background task (no start value) under the same restart policy."""

        def make(_: None) -> Component:
            async def task(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                task_status.started(None)
                await run()

            return task

        state: ComponentState[None] = ComponentState(name)
        self.components[name] = state
        self.nursery.start_soon(self._supervise, state, make)

    async def _supervise(
        self,
        state: ComponentState[T],
        make: Callable[[T | None], Component],
        task_status: trio.TaskStatus[T] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        backoff = self.first_backoff
        first = True
        while True:
            began = trio.current_time()
            start_error: Exception | None = None
            try:
                async with trio.open_nursery() as inner:
                    try:
                        value = await inner.start(make(state.value))
                    except Exception as exc:  # the component did not come up
                        start_error = exc
                    else:
                        state.value = value
                        if first:
                            first = False
                            task_status.started(value)
            except Exception as exc:  # the component failed while it ran
                state.last_error = _describe(exc)
                self.log.error("%s failed; restarting in %.0f s", state.name, backoff,
                               exc_info=exc)  # fmt: skip
            else:
                if start_error is not None:
                    if first:
                        raise start_error
                    state.last_error = _describe(start_error)
                    self.log.error("%s could not restart (%s); next try in %.0f s",
                                   state.name, state.last_error, backoff)  # fmt: skip
                else:
                    # a component serves until cancelled; ending by itself is a failure too
                    state.last_error = "ended"
                    self.log.error("%s ended unexpectedly; restarting in %.0f s",
                                   state.name, backoff)  # fmt: skip
            if trio.current_time() - began >= self.healthy_after:
                backoff = self.first_backoff
            await trio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)
            state.restarts += 1
            self.log.info("%s: restart %d", state.name, state.restarts)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of the failure, looking through the exception groups trio wraps a
    single failure in."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
