"""The REST apps of a Fachdienst: Starlette apps whose every error is the gematik Error body.

``rest_app`` makes such an app from routes; ``fachdienst_app`` assembles the REST services of
one Fachdienst. They are served over HTTPS (the Fachdienst's C.FD.TLS-S context, digest §1.9,
so the REST services present the same certificate as the mail server) by
:func:`kim_appliance.serving.http.serve_asgi`. This module must never build TLS contexts,
bind sockets or hold KIM policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from kim_appliance.web.errors import install_error_handlers

if TYPE_CHECKING:
    from kim_appliance.fachdienst.context import Fachdienst

#: gematik's OpenAPI files (api-kim, Apache-2.0), as the services here serve them
OPENAPI_DIR = Path(__file__).parent / "openapi"


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
