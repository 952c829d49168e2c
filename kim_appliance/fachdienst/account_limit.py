"""``I_AccountLimit_Service`` 1.1 (digest §3.4): a mail account's quota, TTL and size limit.

``GET /AccountLimit/v1.1/limit`` with HTTP Basic authentication by the mail account's address
and password, checked like an SMTP/POP3 login (the same lockout, KOM-LE-A_2167). The answer
comes from the Account: ``quota`` and ``remainQuota`` in bytes (-1 = unlimited),
``dataTimeToLive`` in days and the fixed ``maxMailSize`` of 734003200 bytes. Every failure is
a documented status with the Error body; ``kasMailSizeThreshold`` is added when
``[fachdienst] kas_threshold_bytes`` is set (it is in gematik's docs example, not in the 1.1.4
schema: digest §3.4): 401 for missing, malformed or wrong credentials
(including a locked account), 404 for an account whose deregistration date has passed. This
module must never say whether an address exists to a caller who is not authenticated.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from kim_appliance.config import MAX_MAIL_SIZE
from kim_appliance.fachdienst import quota
from kim_appliance.fachdienst.accounts import AuthResult, client_of_request
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.store import Store
from kim_appliance.store.base import UNLIMITED, Account
from kim_appliance.web.errors import ApiError, JsonUtf8Response

BASE_PATH = "/AccountLimit/v1.1"

#: Basic credentials longer than this are refused unread (addresses and passwords <= 256)
MAX_CREDENTIALS_LENGTH = 2048

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="KIM AccountLimit", charset="UTF-8"'}


@dataclass(frozen=True)
class AccountLimit:
    """The AccountLimit object (AccountLimit.yaml 1.1.4)."""

    data_time_to_live: int
    max_mail_size: int
    quota: int
    remain_quota: int
    #: the docs example's kasMailSizeThreshold (digest §3.4); None leaves the field out
    kas_mail_size_threshold: int | None = None

    def to_json(self) -> dict[str, int]:
        body = {
            "dataTimeToLive": self.data_time_to_live,
            "maxMailSize": self.max_mail_size,
            "quota": self.quota,
            "remainQuota": self.remain_quota,
        }
        if self.kas_mail_size_threshold is not None:
            body["kasMailSizeThreshold"] = self.kas_mail_size_threshold
        return body


def basic_credentials(authorization: str | None) -> tuple[str, str]:
    """(username, password) from an ``Authorization: Basic`` header (RFC 7617, UTF-8);
    ApiError 401 naming what is wrong otherwise."""
    if authorization is None:
        raise ApiError(
            401,
            "Authorization: missing; send HTTP Basic with the KIM address and password",
            headers=_CHALLENGE,
        )
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise ApiError(
            401, f"Authorization: scheme {scheme[:20]!r} is not Basic", headers=_CHALLENGE
        )
    encoded = encoded.strip()
    if not encoded or len(encoded) > MAX_CREDENTIALS_LENGTH:
        raise ApiError(
            401, "Authorization: Basic credentials empty or too long", headers=_CHALLENGE
        )
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise ApiError(
            401, "Authorization: Basic credentials are not base64 of UTF-8 text", headers=_CHALLENGE
        ) from None
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise ApiError(
            401, "Authorization: Basic credentials are not 'address:password'", headers=_CHALLENGE
        )
    return username, password


async def account_limit_of(
    store: Store,
    address: str,
    *,
    now: dt.datetime | None = None,
    usage: Callable[[Account], Awaitable[int]] | None = None,
    kas_threshold: int | None = None,
) -> AccountLimit:
    """The limits of ``address``; ApiError 404 if the account is gone or its deregistration
    date has passed (KOM-LE-A_2149/2150).

    ``usage`` gives the bytes counted against the quota (default: the store's
    ``mail.usage``: mailbox, KAS uploads and reservations, kim_appliance.fachdienst.quota)."""
    now = now or dt.datetime.now(dt.UTC)
    account = await store.accounts.get(address)
    if account is None or (account.dereg_date is not None and account.dereg_date <= now):
        raise ApiError(404, f"account {address} is not available (deregistered)")
    if account.quota_bytes == UNLIMITED:
        remain = UNLIMITED
    else:
        if usage is not None:
            used = await usage(account)
        else:
            used = await store.mail.usage(account.address, dt.datetime.now(dt.UTC))
        remain = max(0, account.quota_bytes - used)
    return AccountLimit(
        data_time_to_live=account.data_ttl_days,
        max_mail_size=MAX_MAIL_SIZE,  # fixed 734003200 (schema minimum, digest §3.2)
        quota=account.quota_bytes,
        remain_quota=remain,
        kas_mail_size_threshold=kas_threshold,
    )


def account_limit_routes(fd: Fachdienst) -> list[BaseRoute]:
    """The AccountLimit route of ``fd``, mounted at :data:`BASE_PATH`."""

    async def get_limits(request: Request) -> Response:
        username, password = basic_credentials(request.headers.get("authorization"))
        result: AuthResult = await fd.auth.authenticate(
            username, password, client=client_of_request(request)
        )
        if not result.ok:
            fd.log.info("AccountLimit: %s", result.text)
            raise ApiError(401, result.text, headers=_CHALLENGE)
        limit = await account_limit_of(
            fd.store,
            result.address,
            now=fd.clock(),
            usage=lambda a: quota.usage(fd, a),
            kas_threshold=fd.config.kas_threshold_bytes,
        )
        return JsonUtf8Response(limit.to_json())

    return [
        Mount(
            BASE_PATH,
            routes=[Route("/limit", get_limits, methods=["GET"])],
            name=f"accountlimit:{fd.domain}",
        )
    ]
