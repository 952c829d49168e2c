"""The Fachdienst's REST services on a running ``kim-appliance run``, found through
endpoints.json (issue 5: ServiceInformation, AccountLimit, KAS over HTTPS)."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from e2e_appliance import Launcher


def _call(url: str, ca: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    context = ssl.create_default_context(cafile=ca)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_rest_services_answer_on_the_published_https_endpoint(
    data_dir: Path, launcher: Launcher
) -> None:
    """ServiceInformation needs no login; AccountLimit answers with the mail account's Basic
    credentials and refuses a wrong password with the gematik error body."""
    app = launcher.start(data_dir)
    ca = app.endpoints["tls_ca"]
    https = app.endpoints["fachdienste"]["fd1.kim.telematik-test"]["https"]
    status, body = _call(f"{https}/ServiceInformation/v1.0/serviceinfo", ca)
    assert status == 200
    assert "passwordPolicyRegEx" in json.loads(body)
    weber = app.participant("praxis.weber")
    good = base64.b64encode(f"{weber['address']}:{weber['password']}".encode()).decode()
    status, body = _call(f"{https}/AccountLimit/v1.1/limit", ca, {"Authorization": f"Basic {good}"})
    assert status == 200
    limit = json.loads(body)
    assert limit["maxMailSize"] == 734003200
    assert limit["dataTimeToLive"] == 90
    bad = base64.b64encode(f"{weber['address']}:wrong".encode()).decode()
    status, body = _call(f"{https}/AccountLimit/v1.1/limit", ca, {"Authorization": f"Basic {bad}"})
    assert status == 401
    assert set(json.loads(body)) >= {"message", "traceId"}
