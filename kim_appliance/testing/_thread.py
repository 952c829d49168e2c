"""The sync flavour for ordinary (non-trio) test suites: the appliance in a background thread
with its own trio loop.

:class:`KimApplianceThread` starts :func:`~kim_appliance.testing._appliance.running_appliance`
in a daemon thread, waits until the appliance has reported its endpoints, and on exit cancels
the loop and joins the thread. It must never leave a thread or a listener behind once
:meth:`KimApplianceThread.stop` has returned, and never swallow an error of the appliance: a
failed start raises :class:`ApplianceStartError` with the cause chained, a crash while running
is raised by :meth:`~KimApplianceThread.stop`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from kim_appliance.errors import KimError
from kim_appliance.testing._appliance import (
    ApplianceStartError,
    KimAppliance,
    running_appliance,
)


class KimApplianceThread:
    """``with KimApplianceThread(template=...) as app:`` -- a running appliance for the block.

    The arguments are those of :func:`running_appliance`. ``start_timeout`` bounds the wait for
    the endpoints (the demo setup of an empty data dir takes seconds; a copied template well
    under one); ``stop_timeout`` bounds the wait for a clean stop.

    Resource handling: the appliance runs in one daemon thread (its own trio loop). ``stop``
    cancels that loop from outside (``TrioToken.run_sync_soon``) and joins the thread; the data
    dir it created is removed by then. Blocking helpers of :class:`KimAppliance` are called
    from the test's thread, never from the loop's.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        template: Path | None = None,
        config: Mapping[str, Any] | None = None,
        start_timeout: float = 180.0,
        stop_timeout: float = 60.0,
    ) -> None:
        self._args = (data_dir, template, config)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._app: KimAppliance | None = None
        self._lock = threading.Lock()
        self._stop_requested = False
        #: what ended the appliance's loop with an error (None while running or after a
        #: clean stop)
        self.error: BaseException | None = None

    @property
    def app(self) -> KimAppliance:
        if self._app is None:
            raise KimError("the appliance is not running: call start() or use `with`")
        return self._app

    def start(self) -> KimAppliance:
        """Start the appliance and wait for its endpoints; raises ApplianceStartError."""
        if self._thread is not None:
            raise KimError("KimApplianceThread: start() called twice")
        self._thread = threading.Thread(target=self._run, name="kim-appliance", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.start_timeout):
            self._cancel()
            self._thread.join(self.stop_timeout)
            raise ApplianceStartError(
                f"kim-appliance did not report its endpoints within {self.start_timeout} s"
            )
        if self._app is None:
            self._thread.join(self.stop_timeout)
            error = self.error
            self.error = None
            if isinstance(error, ApplianceStartError):
                raise error
            raise ApplianceStartError(f"kim-appliance did not start: {error!r}") from error
        return self._app

    def stop(self) -> None:
        """Stop the appliance (cancel its loop) and join the thread; raise what crashed it."""
        thread = self._thread
        if thread is None:
            return
        self._cancel()
        thread.join(self.stop_timeout)
        if thread.is_alive():
            raise KimError(f"kim-appliance did not stop within {self.stop_timeout} s")
        self._app = None
        error, self.error = self.error, None
        if error is not None:
            raise KimError(f"kim-appliance stopped with an error: {error!r}") from error

    def __enter__(self) -> KimAppliance:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the loop's thread --------------------------------------------------------------------

    def _cancel(self) -> None:
        with self._lock:
            self._stop_requested = True
            token, scope = self._token, self._scope
        if token is None or scope is None:
            return  # the loop has not begun: it sees _stop_requested
        with contextlib.suppress(trio.RunFinishedError):  # the loop has ended already
            token.run_sync_soon(scope.cancel)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        data_dir, template, config = self._args
        with trio.CancelScope() as scope:
            with self._lock:
                self._scope = scope
                self._token = trio.lowlevel.current_trio_token()
                if self._stop_requested:
                    scope.cancel()
            async with running_appliance(data_dir, template=template, config=config) as app:
                self._app = app
                self._ready.set()
                await trio.sleep_forever()
