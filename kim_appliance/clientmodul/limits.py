"""getLimits: the account's size limits from the AccountLimit service, cached for 24 h.

Before a client mail is processed the Clientmodul asks ``GET /AccountLimit/v1.1/limit`` of the
account's Fachdienst (HTTP Basic with the PVS's credentials, digest §3.4) for ``maxMailSize``
(A_19355-01: a larger client mail is refused with enhanced status X.3.4) and, where present,
``kasMailSizeThreshold`` (the KAS threshold, digest §1.4 step 7). A_22416 allows caching the
answer for 24 h: :class:`LimitsCache` keeps one answer per account.

When the service cannot be asked (unreachable, 5xx, an answer that is not the documented JSON)
the Clientmodul falls back to its configured maximum and the default threshold, logs that,
and keeps the fallback for :data:`FALLBACK_TTL` so that a dead service does not cost a
timeout per mail (our choice; digest §7 is silent). This module never logs the password.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

import trio

from kim_appliance.clientmodul.kas_client import basic_auth
from kim_appliance.clientmodul.rest import ConnectTo, RestUnavailable, https_request

#: A_22416: a getLimits answer may be reused for 24 h
LIMITS_TTL: Final = 24 * 3600.0
#: how long a fallback (service not reachable) is reused before asking again
FALLBACK_TTL: Final = 300.0
LIMIT_PATH: Final = "/AccountLimit/v1.1/limit"


@dataclass(frozen=True)
class Limits:
    """What the Clientmodul applies to one account's client mails."""

    max_mail_size: int
    #: kasMailSizeThreshold when the service names one, else None (use the default)
    kas_threshold: int | None
    #: dataTimeToLive in days, when known
    data_ttl_days: int | None
    source: Literal["AccountLimit", "fallback"]
    #: why the fallback was used
    reason: str = ""


@dataclass
class LimitsCache:
    """getLimits answers per account (case-insensitive). Used from the event loop only."""

    ttl: float = LIMITS_TTL
    fallback_ttl: float = FALLBACK_TTL
    clock: Callable[[], float] = time.monotonic
    _cache: dict[str, tuple[Limits, float]] = field(default_factory=dict, repr=False)
    #: AccountLimit requests made (tests and logs look at it)
    requests: int = 0

    def cached(self, account: str) -> Limits | None:
        hit = self._cache.get(account.casefold())
        if hit is not None and self.clock() < hit[1]:
            return hit[0]
        return None

    def store(self, account: str, limits: Limits) -> None:
        ttl = self.ttl if limits.source == "AccountLimit" else self.fallback_ttl
        self._cache[account.casefold()] = (limits, self.clock() + ttl)

    def forget(self, account: str | None = None) -> None:
        if account is None:
            self._cache.clear()
        else:
            self._cache.pop(account.casefold(), None)


async def get_limits(
    cache: LimitsCache,
    *,
    ssl_context: ssl.SSLContext,
    base_url: str | None,
    account: str,
    password: str,
    fallback_max: int,
    timeout: float,
    log: logging.Logger,
    connect_to: ConnectTo | None = None,
) -> Limits:
    """The limits of ``account``: from the cache, else from the AccountLimit service at
    ``base_url`` (None: no service known), else the fallback (logged)."""
    cached = cache.cached(account)
    if cached is not None:
        return cached
    try:
        if base_url is None:
            raise RestUnavailable("no AccountLimit service known for the account's domain")
        cache.requests += 1
        limits = await _ask(ssl_context, base_url, account, password, timeout, connect_to)
    except (RestUnavailable, _BadAnswer, trio.TooSlowError) as exc:
        log.warning(
            "cm getLimits %s: AccountLimit not usable (%s); using the configured maximum of "
            "%d bytes (A_19355-01 fallback)",
            account,
            exc,
            fallback_max,
        )
        limits = Limits(fallback_max, None, None, "fallback", str(exc))
    cache.store(account, limits)
    return limits


class _BadAnswer(Exception):
    pass


async def _ask(
    ssl_context: ssl.SSLContext,
    base_url: str,
    account: str,
    password: str,
    timeout: float,
    connect_to: ConnectTo | None,
) -> Limits:
    url = base_url.rstrip("/") + LIMIT_PATH
    with trio.fail_after(timeout * 2):
        async with https_request(
            ssl_context,
            "GET",
            url,
            headers={"Authorization": basic_auth(account, password), "Accept": "application/json"},
            timeout=timeout,
            connect_to=connect_to,
        ) as response:
            if response.status != 200:
                raise _BadAnswer(f"{url}: {response.status} {await response.message()}")
            raw = await response.read(64 * 1024)
    try:
        body = json.loads(raw)
        max_mail_size = body["maxMailSize"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _BadAnswer(f"{url}: the answer is not an AccountLimit object") from exc
    if not isinstance(max_mail_size, int) or isinstance(max_mail_size, bool):
        raise _BadAnswer(f"{url}: maxMailSize {max_mail_size!r} is not an integer")
    threshold = body.get("kasMailSizeThreshold")
    ttl = body.get("dataTimeToLive")
    return Limits(
        # -1 = unlimited (AccountLimit 1.1.4)
        max_mail_size if max_mail_size >= 0 else 2**63 - 1,
        threshold if isinstance(threshold, int) and threshold > 0 else None,
        ttl if isinstance(ttl, int) and ttl > 0 else None,
        "AccountLimit",
    )
