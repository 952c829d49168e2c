"""HTTPS for the appliance's REST services: Hypercorn's trio worker, the gematik error body.

``serve_https`` runs an ASGI app on one TLS listener inside the caller's nursery; ``errors``
turns every failure into the CommonSchemas ``Error`` body (digest §3.3) so that no handler
leaks a bare 500. The gematik OpenAPI files the services follow are shipped in ``openapi/``
(Apache-2.0, see ``openapi/LICENSE``). This package holds no KIM policy of its own.
"""

from kim_appliance.web.errors import ApiError, error_response, install_error_handlers
from kim_appliance.web.server import OPENAPI_DIR, fachdienst_app, rest_app, serve_https

__all__ = [
    "OPENAPI_DIR",
    "ApiError",
    "error_response",
    "fachdienst_app",
    "install_error_handlers",
    "rest_app",
    "serve_https",
]
