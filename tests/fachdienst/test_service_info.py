"""ServiceInformation 1.0 (digest §3.4) and the password policy it announces (§3.2)."""

from __future__ import annotations

import re

import httpx
import pytest
from test_account_limit import make_fd

from kim_appliance.fachdienst.rest import fachdienst_app
from kim_appliance.fachdienst.service_info import (
    PASSWORD_POLICY_REGEX,
    ServiceInformation,
    password_meets_policy,
)
from kim_appliance.store import Store


async def test_serviceinfo_needs_no_auth_and_announces_the_policy(kim_store: Store) -> None:
    app = fachdienst_app(await make_fd(kim_store))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        response = await client.get("https://fd/ServiceInformation/v1.0/serviceinfo")
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "kimServiceVersion": "1.5.5",
        "passwordPolicyRegEx": PASSWORD_POLICY_REGEX,
        "passwordPolicyDisplay": body["passwordPolicyDisplay"],
        "jwtExpiration": 300,
        "referenceIdRequired": True,
        "initialPasswordRequired": True,
    }
    assert "Minimum length 12" in body["passwordPolicyDisplay"]


@pytest.mark.parametrize(
    ("password", "ok"),
    [
        ("Praxis-Weber-2026!", True),
        ("Kurz-1a!", False),  # too short
        ("praxis-weber-2026!", False),  # no capital
        ("PraxisWeber2026x", False),  # no special character
        ("Praxis-Weber-xx!", False),  # no digit
        ("Aa1!" + "x" * 253, False),  # longer than 256
    ],
)
def test_password_policy(password: str, ok: bool) -> None:
    assert password_meets_policy(password) is ok
    # the announced regex means the same in a Java-style engine (here: Python's re)
    assert (re.fullmatch(PASSWORD_POLICY_REGEX, password) is not None) is ok


def test_jwt_expiration_outside_the_schema_range_is_refused() -> None:
    with pytest.raises(ValueError, match="jwtExpiration"):
        ServiceInformation(jwt_expiration=299)
