"""AccountLimit 1.1 (digest §3.4): Basic auth with the mail account, values from the Account,
the documented status codes with the CommonSchemas Error body."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator

import httpx
import pytest
from fd_support import fachdienst_on, store_bytes

from kim_appliance.config import DomainConfig, FachdienstConfig
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.rest import fachdienst_app
from kim_appliance.store import Account, Store, hash_password

DOMAIN = "a.kim.telematik-test"
ADDRESS = f"weber@{DOMAIN}"
PASSWORD = "Praxis-Weber-2026!"
URL = "https://fd/AccountLimit/v1.1/limit"


async def make_fd(store: Store) -> Fachdienst:
    await store.accounts.create(
        Account(
            ADDRESS, hash_password(PASSWORD), "1-1", "Weber", quota_bytes=5000, data_ttl_days=30
        )
    )
    await store.accounts.create(Account(f"frei@{DOMAIN}", hash_password(PASSWORD), "1-2", "Frei"))
    config = FachdienstConfig(domains=(DomainConfig(DOMAIN, 0, 0),), max_failed_logins=3)
    return fachdienst_on(store, DOMAIN, config=config, max_failed_logins=3)


@pytest.fixture
async def fd(kim_store: Store) -> Fachdienst:
    return await make_fd(kim_store)


@pytest.fixture
async def client(fd: Fachdienst) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=fachdienst_app(fd))
    async with httpx.AsyncClient(transport=transport) as c:
        yield c


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def _deliver(fd: Fachdienst, size: int) -> None:
    await store_bytes(fd.store, ADDRESS, b"x" * size)


async def test_limits_come_from_the_account(client: httpx.AsyncClient, fd: Fachdienst) -> None:
    """quota, remainQuota = quota - stored bytes, dataTimeToLive, maxMailSize 734003200."""
    await _deliver(fd, 1200)
    response = await client.get(URL, headers=basic(ADDRESS, PASSWORD))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert body["quota"] == 5000
    assert body["remainQuota"] == 5000 - await fd.store.mail.usage(ADDRESS, dt.datetime.now(dt.UTC))
    assert body["remainQuota"] < 5000
    assert body["dataTimeToLive"] == 30
    assert body["maxMailSize"] == 734003200
    assert "kasMailSizeThreshold" not in body  # not in the 1.1.4 schema unless configured


async def test_a_configured_kas_threshold_is_served(kim_store: Store) -> None:
    """Issue 13: ``[fachdienst] kas_threshold_bytes`` goes out as ``kasMailSizeThreshold`` (the
    field of gematik's docs example, digest §3.4), which the Clientmodul uses as its KAS
    threshold."""
    await kim_store.accounts.create(Account(ADDRESS, hash_password(PASSWORD), "1-1", "Weber"))
    config = FachdienstConfig(
        domains=(DomainConfig(DOMAIN, 0, 0),), kas_threshold_bytes=30 * 1024 * 1024
    )
    fd = fachdienst_on(kim_store, DOMAIN, config=config)
    transport = httpx.ASGITransport(app=fachdienst_app(fd))
    async with httpx.AsyncClient(transport=transport) as c:
        response = await c.get(URL, headers=basic(ADDRESS, PASSWORD))
    assert response.status_code == 200
    assert response.json()["kasMailSizeThreshold"] == 31457280


async def test_unlimited_quota_is_minus_one(client: httpx.AsyncClient) -> None:
    body = (await client.get(URL, headers=basic(f"FREI@{DOMAIN}", PASSWORD))).json()
    assert body["quota"] == -1
    assert body["remainQuota"] == -1
    assert body["dataTimeToLive"] == 90


async def test_over_quota_reports_zero_remaining(client: httpx.AsyncClient, fd: Fachdienst) -> None:
    await _deliver(fd, 6000)
    assert (await client.get(URL, headers=basic(ADDRESS, PASSWORD))).json()["remainQuota"] == 0


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"Authorization": "Bearer abc"}, "not Basic"),
        ({"Authorization": "Basic !!!"}, "not base64"),
        ({"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()}, "address:password"),
        ({"Authorization": "Basic " + base64.b64encode(b"\xff:\xfe").decode()}, "UTF-8"),
        ({"Authorization": "Basic " + "A" * 5000}, "too long"),
        (basic(ADDRESS, "wrong"), "wrong username or password"),
        (basic(f"nobody@{DOMAIN}", PASSWORD), "wrong username or password"),
    ],
)
async def test_bad_credentials_get_401_with_error_body(
    client: httpx.AsyncClient, headers: dict[str, str], reason: str
) -> None:
    response = await client.get(URL, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    body = response.json()
    assert set(body) == {"message", "traceId"}
    assert reason in body["message"]
    assert len(body["traceId"]) <= 255


async def test_lockout_applies_to_account_limit(client: httpx.AsyncClient) -> None:
    """KOM-LE-A_2167: after max_failed_logins wrong passwords even the right one is refused."""
    for _ in range(3):
        assert (await client.get(URL, headers=basic(ADDRESS, "wrong"))).status_code == 401
    response = await client.get(URL, headers=basic(ADDRESS, PASSWORD))
    assert response.status_code == 401
    assert "locked" in response.json()["message"]


async def test_account_past_its_deregistration_date_is_404(
    client: httpx.AsyncClient, fd: Fachdienst
) -> None:
    """KOM-LE-A_2149/2150: after deregDate the account is no longer available."""
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    await fd.store.accounts.update(ADDRESS, status="deregistered", dereg_date=past)
    response = await client.get(URL, headers=basic(ADDRESS, PASSWORD))
    assert response.status_code == 404
    assert "not available" in response.json()["message"]


async def test_unknown_path_and_method_get_error_bodies(client: httpx.AsyncClient) -> None:
    missing = await client.get("https://fd/AccountLimit/v1.1/limits")
    assert missing.status_code == 404
    assert set(missing.json()) == {"message", "traceId"}
    wrong = await client.post(URL, headers=basic(ADDRESS, PASSWORD))
    assert wrong.status_code == 405
    assert "POST" in wrong.json()["message"]
