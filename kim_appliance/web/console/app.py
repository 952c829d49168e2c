"""The console's HTTP side: the Starlette app (page, static files, JSON API) and its listener.

Routes::

    GET  /                  the page (static/index.html)
    GET  /static/<file>     its script, style sheet and icon (only the files shipped in static/)
    GET  /favicon.ico       the icon (static/favicon.svg), for a browser that asks there
    GET  /api/status        everything the page shows (see :func:`.state.status`)
    GET  /api/faults        the Konnektor's fault switches (as ``GET /admin/faults``)
    POST /api/faults        switch faults: the JSON body of the Konnektor admin API
                            (``{"card_removed": "<ICCSN>"}``, ``{"verify_pin": "<ICCSN>"}``,
                            ``{"unreachable": true}``, ``{"latency_ms": 250}``,
                            ``{"clear": true}``, ...)
    GET  /api/traces?q=X    the messages whose Message-ID is X, or that X sent or received,
                            newest first (issue 15, kim_appliance.observe.views)
    GET  /api/trace?id=X    one message's trace, hop by hop (404: nothing known of X)
    GET  /metrics           the appliance's metrics in Prometheus text format (issue 15); the
                            relay queues are read from the store at each scrape

``serve_console`` runs it over plain HTTP (the contract's ``"console": "http://127.0.0.1:P/"``)
by Hypercorn's trio worker, in the ``trio.serve_listeners`` shape. Every request passes
:class:`.guard.ConsoleGuard` first. This module must never serve a file outside ``static/``,
change anything except through the Konnektor's :class:`FaultAdmin`, or send CORS headers.
The trace views and ``/metrics`` show metadata only (kim_appliance.observe).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Final

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kim_appliance.konnektor.soap.admin import AdminRequestError, apply_faults
from kim_appliance.observe.views import find_messages, message_trace
from kim_appliance.serving import ConnectionBudget, ListenerLimits
from kim_appliance.serving.hosts import AllowedHosts
from kim_appliance.serving.http import serve_asgi
from kim_appliance.web.console.guard import ConsoleGuard
from kim_appliance.web.console.state import ConsoleState, status

#: the page's files, shipped in the wheel next to this package
STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "static"
#: the files the console serves, with their media types; nothing else is reachable
STATIC_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
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

    async def favicon(request: Request) -> Response:
        # the page names its icon; a browser that still asks for /favicon.ico gets it too
        return Response(files["favicon.svg"], media_type=STATIC_FILES["favicon.svg"])

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files:
            return _error(404, f"/static/{name}: no such file")
        return Response(files[name], media_type=STATIC_FILES[name])

    async def api_status(request: Request) -> Response:
        return JSONResponse(await status(state))

    async def api_faults(request: Request) -> Response:
        if state.konnektor is None:
            return _error(404, "the Konnektor does not run in this process (run --components)")
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

    async def api_traces(request: Request) -> Response:
        await state.observer.flush()
        query = request.query_params.get("q", "")
        return JSONResponse({"messages": await find_messages(state.store, query=query)})

    async def api_trace(request: Request) -> Response:
        await state.observer.flush()
        message_id = request.query_params.get("id", "")
        trace = await message_trace(state.store, message_id) if message_id.strip() else None
        if trace is None:
            return _error(404, f"no trace of the message {message_id[:200]!r}")
        return JSONResponse(trace)

    async def metrics(request: Request) -> Response:
        observer = state.observer
        for domain in state.domains:
            depth = await state.store.relay.depth(domain)
            observer.relay_queue(domain, depth.entries, depth.oldest)
        body = await trio.to_thread.run_sync(generate_latest, observer.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"{request.url.path}: not a console page or API")

    async def wrong_method(request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} {request.url.path}: method not allowed")

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/favicon.ico", favicon, methods=["GET"]),
            Route("/static/{name}", static, methods=["GET"]),
            Route("/api/status", api_status, methods=["GET"]),
            Route("/api/faults", api_faults, methods=["GET", "POST"]),
            Route("/api/traces", api_traces, methods=["GET"]),
            Route("/api/trace", api_trace, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
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
    limits: ListenerLimits | None = None,
    budget: ConnectionBudget | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the console over plain HTTP on ``bind``:``port`` until cancelled.

    Reports the bound ``(host, port)`` through ``task_status`` once the socket listens (port 0
    picks a free one); the console's URL is ``http://host:port/``. It answers only requests
    whose ``Host`` names it (see :mod:`.guard`): the bound address, ``localhost`` or the
    loopback addresses with the bound port, and each ``host:port`` of ``allowed_hosts`` (for a
    console bound to another interface and reached by a host name).

    Resource handling: the listener and its guard are :func:`kim_appliance.serving.http.
    serve_asgi`'s (connection cap, deadlines); cancelling the surrounding scope closes the
    listener and gives open requests 1 s to finish.

    Error handling: an ``OSError`` from binding (port taken) propagates before ``started``;
    per-connection errors end that connection only.
    """
    allowed = AllowedHosts()
    app = console_app(state, allowed)
    bind_error: OSError | None = None
    async with trio.open_nursery() as nursery:
        try:
            host, bound_port = await nursery.start(
                partial(
                    serve_asgi,
                    app,
                    name="console",
                    bind=bind,
                    port=port,
                    ssl_context=None,
                    limits=limits,
                    budget=budget,
                    log=log,
                )
            )
        except OSError as exc:
            # a taken port: the caller gets the plain OSError (not an exception group), so the
            # appliance can name the configured port
            bind_error = exc
        else:
            allowed.set_bound(host, bound_port, extra=allowed_hosts)
            # the startup line: one per component, with its address (issue 15)
            shown = f"[{host}]" if ":" in host else host
            log.info("console: http://%s:%d/", shown, bound_port)
            task_status.started((host, bound_port))
    if bind_error is not None:
        raise bind_error
