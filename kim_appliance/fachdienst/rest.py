"""The REST services of one Fachdienst as one Starlette app (digest §3.3-3.5).

:func:`fachdienst_app` mounts ServiceInformation 1.0 and AccountLimit 1.1 plus whatever routes
the caller adds (Account Manager 2.4, KAS 2.4, the admin API), each at the base path of its
gematik OpenAPI file, on :func:`kim_appliance.web.server.rest_app` (every error is the
CommonSchemas Error body). It is served over HTTPS with the Fachdienst's C.FD.TLS-S context by
:func:`kim_appliance.serving.http.serve_asgi`. This module must never build TLS contexts or bind
sockets.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from kim_appliance.fachdienst.account_limit import account_limit_routes
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.service_info import service_info_routes
from kim_appliance.web.server import rest_app


def fachdienst_app(fd: Fachdienst, *, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """Every REST service of ``fd``: ServiceInformation, AccountLimit and ``extra_routes``."""
    return rest_app([*service_info_routes(fd), *account_limit_routes(fd), *extra_routes])
