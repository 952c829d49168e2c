"""The console's HTTP side: the Starlette app (page, static files, JSON API) and its listener.

Routes::

    GET  /                  the page (static/index.html)
    GET  /static/<file>     its script and style sheet (only the files shipped in static/)
    GET  /api/status        everything the page shows (see :func:`.state.status`)
    GET  /api/faults        the Konnektor's fault switches (as ``GET /admin/faults``)
    POST /api/faults        switch faults: the JSON body of the Konnektor admin API
                            (``{"card_removed": "<ICCSN>"}``, ``{"unreachable": true}``,
                            ``{"latency_ms": 250}``, ``{"clear": true}``, ...)

``serve_console`` runs it over plain HTTP (the contract's ``"console": "http://127.0.0.1:P/"``)
by Hypercorn's trio worker, in the ``trio.serve_listeners`` shape. Every request passes
:class:`.guard.ConsoleGuard` first. This module must never serve a file outside ``static/``,
change anything except through the Konnektor's :class:`FaultAdmin`, or send CORS headers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kim_appliance.konnektor.soap.admin import AdminRequestError, apply_faults
from kim_appliance.web.console.guard import AllowedHosts, ConsoleGuard
from kim_appliance.web.console.state import ConsoleState, status

#: the page's files, shipped in the wheel next to this package
STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "static"
#: the files the console serves, with their media types; nothing else is reachable
STATIC_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
#: the largest POST body accepted (a fault switch request is a few hundred bytes)
MAX_BODY: Final = 16 * 1024
#: the default port of ``[console] port`` in config.toml
DEFAULT_PORT: Final = 4080

log = logging.getLogger("kim_appliance.web.console")


def console_app(state: ConsoleState, allowed: AllowedHosts) -> ConsoleGuard:
    """The console as an ASGI app, guarded; ``allowed`` names the hosts it answers to."""
    files = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES}

    async def page(request: Request) -> Response:
        return Response(files["index.html"], media_type=STATIC_FILES["index.html"])

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files:
            return _error(404, f"/static/{name}: no such file")
        return Response(files[name], media_type=STATIC_FILES[name])

    async def api_status(request: Request) -> Response:
        return JSONResponse(await trio.to_thread.run_sync(status, state))

    async def api_faults(request: Request) -> Response:
        admin = state.konnektor.admin
        if request.method == "GET":
            return JSONResponse(admin.status())
        body = await _body(request)
        if body is None:
            return _error(413, f"body: larger than {MAX_BODY} bytes")
        try:
            result = await trio.to_thread.run_sync(apply_faults, admin, body)
        except AdminRequestError as exc:
            return _error(400, str(exc))
        log.info("console: faults switched: %s", body.decode("utf-8", "replace")[:200])
        return JSONResponse(result)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"{request.url.path}: not a console page or API")

    async def wrong_method(request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} {request.url.path}: method not allowed")

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/static/{name}", static, methods=["GET"]),
            Route("/api/status", api_status, methods=["GET"]),
            Route("/api/faults", api_faults, methods=["GET", "POST"]),
        ],
        exception_handlers={404: not_found, 405: wrong_method},
    )
    return ConsoleGuard(app, allowed)


async def _body(request: Request) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status_code: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status_code)


async def serve_console(
    state: ConsoleState,
    *,
    bind: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    allowed_hosts: Sequence[str] = (),
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the console over plain HTTP on ``bind``:``port`` until cancelled.

    Reports the bound ``(host, port)`` through ``task_status`` once the socket listens (port 0
    picks a free one); the console's URL is ``http://host:port/``. It answers only requests
    whose ``Host`` names it (see :mod:`.guard`): the bound address, ``localhost`` or the
    loopback addresses with the bound port, and each ``host:port`` of ``allowed_hosts`` (for a
    console bound to another interface and reached by a host name).

    Resource handling: Hypercorn owns the listening socket and the connections; cancelling
    the surrounding scope closes the listener and gives open requests 1 s to finish.

    Error handling: an ``OSError`` from binding (port taken) propagates before ``started``;
    per-connection errors are handled by Hypercorn and never end the server.
    """
    allowed = AllowedHosts()
    config = Config()
    config.bind = [f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"]
    config.insecure_bind = []
    config.accesslog = None
    config.errorlog = logging.getLogger("kim_appliance.web.hypercorn")
    config.graceful_timeout = 1.0
    config.include_server_header = False
    app = console_app(state, allowed)

    async def _serve(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(app, config, task_status=task_status, mode="asgi")  # type: ignore[arg-type]

    started = False
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(_serve)
            hostport = binds[0].split("://", 1)[-1]
            host, _, bound_port = hostport.rpartition(":")
            bound = (host.strip("[]"), int(bound_port))
            allowed.set_bound(*bound, extra=allowed_hosts)
            log.info("console listening on http://%s/", hostport)
            task_status.started(bound)
            started = True
    except BaseExceptionGroup as group:
        # Hypercorn binds inside nested nurseries: a taken port arrives wrapped; the caller
        # gets the plain OSError it can name the port with
        bind_error = None if started else _only_os_error(group)
        if bind_error is None:
            raise
        raise bind_error from None


def _only_os_error(group: BaseExceptionGroup[BaseException]) -> OSError | None:
    """The first OSError of ``group`` when it holds nothing but OSErrors."""
    if group.subgroup(lambda e: not isinstance(e, OSError | BaseExceptionGroup)) is not None:
        return None
    leaf: BaseException | None = group.subgroup(lambda e: isinstance(e, OSError))
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, OSError) else None
