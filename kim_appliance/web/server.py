"""One HTTPS listener for an ASGI app, run by Hypercorn's trio worker inside a nursery.

``serve_https`` follows the appliance's component shape (``trio.serve_listeners``): it binds,
reports the bound ``(host, port)`` through ``task_status.started`` (port 0 picks a free port),
serves until cancelled, and leaves nothing listening when it returns. TLS uses the caller's
``ssl.SSLContext`` as it is (for a Fachdienst: its C.FD.TLS-S context, digest §1.9), so the
REST services present the same certificate as the mail server. ``rest_app`` makes a Starlette
app whose every error is the gematik Error body; ``fachdienst_app`` assembles the REST services
of one Fachdienst. This module must never build TLS contexts or hold KIM policy.

How the port is learnt: Hypercorn binds the sockets itself from ``Config.bind`` and passes the
bound addresses (``https://host:port``) to ``task_status.started`` of
``hypercorn.trio.serve``; we parse that. Hypercorn only builds TLS contexts from files, so a
``Config`` subclass hands it ours (``create_ssl_context``/``ssl_enabled``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from kim_appliance.web.errors import install_error_handlers

if TYPE_CHECKING:
    from kim_appliance.fachdienst.context import Fachdienst

#: gematik's OpenAPI files (api-kim, Apache-2.0), as the services here serve them
OPENAPI_DIR = Path(__file__).parent / "openapi"

log = logging.getLogger("kim_appliance.web")


class _ContextConfig(Config):
    """A Hypercorn config that serves TLS with a ready ``ssl.SSLContext``."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        super().__init__()
        self._ssl_context = ssl_context

    @property
    def ssl_enabled(self) -> bool:
        return True

    def create_ssl_context(self) -> ssl.SSLContext:
        return self._ssl_context


def _bind_string(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_bound(url: str) -> tuple[str, int]:
    """``https://127.0.0.1:8443`` or ``https://[::1]:8443`` -> (host, port)."""
    hostport = url.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


async def serve_https(
    app: ASGIApp,
    *,
    bind: str,
    port: int,
    ssl_context: ssl.SSLContext,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over HTTPS on ``bind``:``port`` until cancelled.

    Reports the bound ``(host, port)`` through ``task_status`` once the socket listens.
    HTTP/1.1 only unless ``ssl_context`` offers ``h2`` by ALPN.

    Resource handling: Hypercorn owns the listening socket and the connections; cancelling
    the surrounding scope closes the listener at once and gives open requests
    ``graceful_timeout`` (1 s) to finish before they are cut.

    Error handling: an ``OSError`` from binding (port taken) propagates before ``started``;
    per-connection errors (TLS handshake failures, malformed HTTP) are answered or logged by
    Hypercorn and never end the server.
    """
    config = _ContextConfig(ssl_context)
    config.bind = [_bind_string(bind, port)]
    config.insecure_bind = []
    config.accesslog = None
    config.errorlog = logging.getLogger("kim_appliance.web.hypercorn")
    config.graceful_timeout = 1.0
    config.include_server_header = False

    async def _serve(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(app, config, task_status=task_status, mode="asgi")  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(_serve)
        bound = _parse_bound(binds[0])
        log.info("HTTPS listening on %s", binds[0])
        task_status.started(bound)


def rest_app(routes: Sequence[BaseRoute]) -> Starlette:
    """A Starlette app with ``routes`` whose every error is the CommonSchemas Error body."""
    app = Starlette(routes=list(routes))
    install_error_handlers(app)
    return app


def fachdienst_app(fd: Fachdienst, *, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """Every REST service of one Fachdienst: ServiceInformation 1.0, AccountLimit 1.1 and
    whatever ``extra_routes`` add (Account Manager 2.4, KAS 2.4), each mounted at the base path
    of its gematik OpenAPI file (digest §3.3-3.5)."""
    from kim_appliance.fachdienst.account_limit import account_limit_routes
    from kim_appliance.fachdienst.service_info import service_info_routes

    return rest_app([*service_info_routes(fd), *account_limit_routes(fd), *extra_routes])
