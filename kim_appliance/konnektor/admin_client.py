"""The client of the Konnektor's fault admin API (``endpoints.json`` ``konnektor.admin``):
one POST of fault switches (or a renewal), answered with the fault status, with the
appliance's admin token (``DATA_DIR/admin-token``) as the bearer token. Used by ``kim-appliance
fault`` and ``card renew`` and by ``kim_appliance.testing``; it never talks to anything but the
URL endpoints.json names.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from kim_appliance.errors import KimError


class FaultSwitchError(KimError):
    """The Konnektor's fault admin API refused a switch or could not be reached."""


def switch_faults(
    endpoints: Mapping[str, Any],
    request: Mapping[str, Any] | None = None,
    *,
    token: str,
    timeout: float = 30,
) -> dict[str, Any]:
    """POST ``request`` to the Konnektor's fault admin API (GET the status when None) and
    return the status it answers; ``token`` is the admin token of the appliance's data dir.
    This is the client of ``kim-appliance fault``."""
    url = endpoints["konnektor"]["admin"]
    context = ssl.create_default_context(cafile=endpoints["tls_ca"])
    data = json.dumps(dict(request)).encode() if request else None
    http = urllib.request.Request(
        url,
        data=data,
        method="POST" if data else "GET",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(http, context=context, timeout=timeout) as response:
            status: dict[str, Any] = json.loads(response.read())
            return status
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, TypeError, KeyError):
            detail = str(json.loads(detail)["error"])  # the admin API's {"error": "..."}
        raise FaultSwitchError(f"the Konnektor refused: {detail}") from exc
    except urllib.error.URLError as exc:
        raise FaultSwitchError(
            f"cannot reach the Konnektor admin API at {url}: {exc.reason}"
        ) from exc
