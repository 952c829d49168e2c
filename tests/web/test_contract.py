"""schemathesis stateless runs of gematik's ServiceInformation 1.0 and AccountLimit 1.1 files
against the live HTTPS server (digest §3.4): every response conforms to the documented status
codes, content type and schema."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings

from kim_appliance.web import OPENAPI_DIR

SERVICE_INFO = schemathesis.openapi.from_path(OPENAPI_DIR / "ServiceInformation.yaml")
ACCOUNT_LIMIT = schemathesis.openapi.from_path(OPENAPI_DIR / "AccountLimit.yaml")

_SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))


@SERVICE_INFO.parametrize()
@_SETTINGS
def test_service_information_conforms(case, live) -> None:  # type: ignore[no-untyped-def]
    response = case.call(base_url=f"{live.url}/ServiceInformation/v1.0", verify=live.ca)
    case.validate_response(response)
    assert response.status_code == (200 if case.method.upper() == "GET" else 405)


@ACCOUNT_LIMIT.parametrize()
@_SETTINGS
def test_account_limit_conforms_without_credentials(case, live) -> None:  # type: ignore[no-untyped-def]
    response = case.call(base_url=f"{live.url}/AccountLimit/v1.1", verify=live.ca)
    case.validate_response(response)
    assert response.status_code == (401 if case.method.upper() == "GET" else 405)


@ACCOUNT_LIMIT.parametrize()
@_SETTINGS
def test_account_limit_conforms_with_credentials(case, live) -> None:  # type: ignore[no-untyped-def]
    response = case.call(
        base_url=f"{live.url}/AccountLimit/v1.1",
        verify=live.ca,
        headers={"Authorization": live.authorization},
    )
    case.validate_response(response)
    if case.method.upper() != "GET":  # schemathesis also probes undocumented methods
        assert response.status_code == 405
        return
    assert response.status_code == 200
    assert response.json()["quota"] == 1_000_000
