"""The appliance's web side: the gematik error body for REST apps, and the console.

``errors`` turns every failure into the CommonSchemas ``Error`` body (digest §3.3) so that no
handler leaks a bare 500; ``server`` makes REST apps with it (the Fachdienst assembles its
services in :mod:`kim_appliance.fachdienst.rest`), which
:func:`kim_appliance.serving.http.serve_asgi` serves. The gematik OpenAPI files the services
follow are shipped in ``openapi/`` (Apache-2.0, see ``openapi/LICENSE``). This package holds no
KIM policy of its own and imports no component it serves.
"""

from kim_appliance.web.errors import ApiError, error_response, install_error_handlers
from kim_appliance.web.server import OPENAPI_DIR, rest_app

__all__ = [
    "OPENAPI_DIR",
    "ApiError",
    "error_response",
    "install_error_handlers",
    "rest_app",
]
