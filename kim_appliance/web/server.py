"""REST apps whose every error is the gematik Error body, and gematik's OpenAPI files.

``rest_app`` makes a Starlette app from routes (the Fachdienst assembles its services with it,
:mod:`kim_appliance.fachdienst.rest`); :func:`kim_appliance.serving.http.serve_asgi` serves
it. This module must never build TLS contexts, bind sockets, hold KIM policy or know any
component that uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from kim_appliance.web.errors import install_error_handlers

#: gematik's OpenAPI files (api-kim, Apache-2.0), as the services here serve them
OPENAPI_DIR = Path(__file__).parent / "openapi"


def rest_app(routes: Sequence[BaseRoute]) -> Starlette:
    """A Starlette app with ``routes`` whose every error is the CommonSchemas Error body."""
    app = Starlette(routes=list(routes))
    install_error_handlers(app)
    return app
