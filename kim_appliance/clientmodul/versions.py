"""Version bookkeeping of the send pipeline (digest §1.4 step 12, A_21387-01, §1.10, §5).

After a message went out the Clientmodul compares the KIM version the VZD publishes for the
sender's address with its own:

* the VZD's is **higher**: the Clientmodul is too old for what the account announces; the
  sender gets one unsigned, unencrypted notice with ``X-KIM-Fehlermeldung: 4017``, at most once
  per day and account (:class:`VersionNotices`);
* the Clientmodul's is **higher**: it updates the account's ``kimVersion`` through the Account
  Manager's setAccount (KIM 1.5, digest §1.4 step 12), which writes komLeData/kimData in the
  VZD. setAccount needs a bearer JWT (KOM-LE-A_2187) and the account password: the JWT is
  signed on the sender's SMC-B with its AUT key through ExternalAuthenticate
  (:func:`account_manager_jwt`), the password is the one the PVS logged in with.

Versions compare numerically on the precision the VZD gives (``1.5`` equals ``1.5.3``); a
trailing ``+`` (consent to large mails, A_23505) is not a version step, and setAccount never
takes it away. Also here: :func:`accepts_large_mails` (``1.5+``, A_19356/A_23512).
This module never changes a version on its own initiative beyond the rule above.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
import re
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from kim_appliance.clientmodul.ports import CallContext, KonnektorFault, KonnektorPort
from kim_appliance.clientmodul.rest import ConnectTo, RestUnavailable, https_request
from kim_appliance.mail.headers import HeaderBlock, HeaderField
from kim_appliance.pki.jwt import build_jwt, signature_scheme_for

#: once per day and account (A_21387-01 "nicht mehr als einmal pro Tag", our reading)
NOTICE_INTERVAL: Final = 24 * 3600.0
ACCOUNT_PATH: Final = "/AccountMgmt/v2.4/account/"
#: the X-KIM-Fehlermeldung of the notice (digest §1.6)
VERSION_TOO_LOW: Final = "4017"
NOTICE_SUBJECT: Final = "Die KIM-Version des Clientmoduls ist veraltet"
_VERSION: Final = re.compile(r"^\s*([0-9]+(?:\.[0-9]+){0,2})(\+?)\s*$")


def parse_version(text: str) -> tuple[tuple[int, ...], bool] | None:
    """(numbers, large-mail consent) of ``1.5``, ``1.5.3``, ``1.5+``; None if malformed."""
    match = _VERSION.match(text)
    if match is None:
        return None
    return tuple(int(p) for p in match.group(1).split(".")), bool(match.group(2))


def compare_versions(vzd: str, cm: str) -> int | None:
    """-1 / 0 / 1 as the VZD's version is lower / equal / higher than ``cm`` on the VZD's
    precision; None when one is malformed."""
    a, b = parse_version(vzd), parse_version(cm)
    if a is None or b is None:
        return None
    left = a[0]
    right = (b[0] + (0, 0, 0))[: len(left)]
    return (left > right) - (left < right)


def accepts_large_mails(version: str) -> bool:
    """True for ``1.5+`` (and later versions with ``+``): the account takes KAS mails
    (A_19356-06/07, A_23505, A_23512)."""
    parsed = parse_version(version)
    return parsed is not None and parsed[1] and parsed[0][:2] >= (1, 5)


def kim_version_of(pt_version: str) -> str:
    """The kimVersion the Account Manager takes (``1.0``/``1.5``) for a product version."""
    parsed = parse_version(pt_version)
    if parsed is None or parsed[0][:2] < (1, 5):
        return "1.0"
    return "1.5"


@dataclass
class VersionNotices:
    """When each account last got a 4017 notice or a kimVersion update (event loop only)."""

    interval: float = NOTICE_INTERVAL
    clock: Callable[[], float] = time.monotonic
    _last: dict[tuple[str, str], float] = field(default_factory=dict, repr=False)

    def due(self, kind: Literal["4017", "setAccount"], account: str) -> bool:
        """True (and remembered) if ``kind`` was not done for ``account`` within a day."""
        key = (kind, account.casefold())
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True


def version_notice(
    account: str,
    *,
    vzd_version: str,
    cm_version: str,
    pt_version: str,
    now: dt.datetime | None = None,
) -> bytes:
    """The 4017 notice (A_21387-01): unsigned, unencrypted, from the account to itself."""
    when = email.utils.format_datetime(now or dt.datetime.now().astimezone())
    domain = account.rpartition("@")[2]
    text = (
        f"{NOTICE_SUBJECT}.\r\n\r\n[Fehlercode {VERSION_TOO_LOW}] Im Verzeichnisdienst ist fuer "
        f"{account} die KIM-Version {vzd_version} eingetragen; dieses Clientmodul "
        f"({cm_version}) unterstuetzt KIM {pt_version}. Bitte aktualisieren Sie das "
        "Clientmodul.\r\n"
    )
    fields = (
        HeaderField("Date", b" " + when.encode("ascii")),
        HeaderField("From", f" KIM-Clientmodul <{account}>".encode("ascii")),
        HeaderField("To", f" <{account}>".encode("ascii")),
        HeaderField("Subject", b" " + NOTICE_SUBJECT.encode("ascii")),
        HeaderField("Message-ID", f" <{uuid.uuid4()}@{domain}>".encode("ascii")),
        HeaderField("Auto-Submitted", b" auto-generated"),
        HeaderField("X-KIM-Fehlermeldung", b" " + VERSION_TOO_LOW.encode("ascii")),
        HeaderField("MIME-Version", b" 1.0"),
        HeaderField("Content-Type", b" text/plain; charset=us-ascii"),
        HeaderField("Content-Transfer-Encoding", b" 7bit"),
    )
    return HeaderBlock(fields).encode() + b"\r\n" + text.encode("ascii")


class SetAccountFailed(Exception):
    """setAccount did not answer 204/200 (or could not be reached)."""


def account_manager_headers(jwt: str, password: str) -> dict[str, str]:
    """The headers of an Account Manager call with a JSON body (digest §3.3): the card's JWT
    as Bearer token and the account's password, base64 in the ``password`` header."""
    return {
        "Authorization": f"Bearer {jwt}",
        "password": base64.b64encode(password.encode("utf-8")).decode("ascii"),
        "Content-Type": "application/json",
    }


async def set_kim_version(
    ssl_context: ssl.SSLContext,
    base_url: str,
    *,
    account: str,
    password: str,
    jwt: str,
    version: str,
    timeout: float,
    connect_to: ConnectTo | None = None,
) -> None:
    """setAccount ``{"kimVersion": version}`` for ``account`` (digest §1.4 step 12, §3.3)."""
    url = base_url.rstrip("/") + ACCOUNT_PATH + account
    body = json.dumps({"kimVersion": version}).encode("ascii")
    try:
        async with https_request(
            ssl_context,
            "PUT",
            url,
            headers=account_manager_headers(jwt, password),
            body=body,
            timeout=timeout,
            connect_to=connect_to,
        ) as response:
            if response.status not in (200, 204):
                raise SetAccountFailed(f"{url}: {response.status} {await response.message()}")
    except RestUnavailable as exc:
        raise SetAccountFailed(str(exc)) from exc


def account_manager_jwt(
    konnektor: KonnektorPort, context: CallContext, card_handle: str, account: str
) -> str:
    """A bearer JWT for the Account Manager (KOM-LE-A_2187, digest §1.10): ``sub`` = the
    account, signed with the SMC-B's AUT key through ExternalAuthenticate (RSASSA-PSS for RSA,
    ECDSA for brainpool). Blocking (card operations)."""
    certificate = None
    for crypt in ("RSA", "ECC"):
        try:
            certificate = konnektor.read_card_certificate(context, card_handle, "C.AUT", crypt)
            break
        except KonnektorFault:
            continue
    if certificate is None:
        raise SetAccountFailed(f"the card {card_handle} has no C.AUT certificate for the JWT")
    scheme = signature_scheme_for(certificate)

    def sign(digest: bytes) -> bytes:
        return konnektor.external_authenticate(context, card_handle, digest, scheme)

    return build_jwt(certificate=certificate, sign=sign, subject=account)
