"""Headless Chromium for the console tests, driven over the DevTools protocol on a pipe.

``--remote-debugging-pipe`` makes Chromium read DevTools commands from its fd 3 and write
answers and events to its fd 4, each message JSON ended by a NUL byte: no port, no websocket
library. :class:`Browser` opens one page, records what a developer would see in the browser's
console and network panel (responses of 400 and above, failed loads, console errors, uncaught
exceptions), and evaluates JavaScript in the page. Blocking: call it from a worker thread in a
trio test. Resource handling: the context manager kills Chromium and closes both pipes.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

#: every wait for Chromium is bounded by this (seconds)
TIMEOUT = 30.0


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _high(pipe: tuple[int, int]) -> tuple[int, int]:
    """The pipe's fds moved above 9: the shell's ``3<&X 4>&Y`` must not overwrite an fd it
    still has to read (a pipe end that happens to be fd 3 or 4)."""
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in pipe)
    for fd in pipe:
        os.close(fd)
    return moved[0], moved[1]


@dataclass
class Problem:
    """Something the browser's developer tools would show in red."""

    kind: str
    text: str


@dataclass
class Browser:
    executable: str
    problems: list[Problem] = field(default_factory=list)
    _process: subprocess.Popen[bytes] | None = None
    _to_browser: int = -1
    _from_browser: int = -1
    _buffer: bytes = b""
    _next_id: int = 0
    _session: str | None = None
    _events: list[dict[str, Any]] = field(default_factory=list)
    _profile: str = ""

    def __enter__(self) -> Browser:
        self._profile = tempfile.mkdtemp(prefix="kim-chromium-")
        commands_read, self._to_browser = _high(os.pipe())
        self._from_browser, answers_write = _high(os.pipe())
        args = [
            "--headless=new",
            "--no-sandbox",  # CI runs as root, where the sandbox refuses to start
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile}",
            "about:blank",
        ]
        # Chromium wants the pipes as its fds 3 and 4: bash puts them there (dash, Debian's
        # sh, takes no fd above 9 in a redirection)
        script = f'exec "$0" "$@" 3<&{commands_read} 4>&{answers_write}'
        self._process = subprocess.Popen(
            ["bash", "-c", script, self.executable, *args],
            pass_fds=(commands_read, answers_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(answers_write)
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(TIMEOUT)
        for fd in (self._to_browser, self._from_browser):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    # -- the protocol -----------------------------------------------------------------------

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command (to the page once attached) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self._session is not None:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive(TIMEOUT)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            self._record(answer)

    def wait_for_event(self, method: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for index, event in enumerate(self._events):
            if event.get("method") == method:
                return self._events.pop(index)
        while True:
            event = self._receive(deadline - time.monotonic())
            self._record(event)
            if event.get("method") == method:
                self._events.remove(event)
                return event

    def settle(self, seconds: float) -> None:
        """Read (and record) events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                self._record(self._receive(TIMEOUT))

    def _receive(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"Chromium said nothing for {timeout:.0f} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ConnectionError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        return message

    def _record(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method is None:
            return
        self._events.append(event)
        if method == "Network.responseReceived" and params["response"]["status"] >= 400:
            response = params["response"]
            self.problems.append(Problem("http", f"{response['status']} {response['url']}"))
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            self.problems.append(Problem("network", str(params.get("errorText"))))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.problems.append(Problem("log", f"{entry.get('text')} {entry.get('url', '')}"))
        elif method == "Runtime.exceptionThrown":
            self.problems.append(Problem("exception", json.dumps(params["exceptionDetails"])))
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            texts = [str(a.get("value", a.get("description"))) for a in params["args"]]
            self.problems.append(Problem("console", " ".join(texts)))

    # -- the page -----------------------------------------------------------------------------

    def open(self, url: str) -> None:
        """Load ``url`` and wait for its load event, and a moment for what the script fetches."""
        self.call("Page.navigate", {"url": url})
        self.wait_for_event("Page.loadEventFired")
        self.settle(0.5)

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (promises are awaited)."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = TIMEOUT) -> Any:
        """Evaluate ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression}: still false after {timeout:.0f} s")
            self.settle(0.1)
