"""The console's request guard: what a browser tricked by another web site must not get through.

The console speaks plain HTTP on the loopback address, so any web page the developer opens can
make the browser send requests to it. Three attacks matter, and this ASGI wrapper stops them
before a route runs:

- DNS rebinding (an attacker's host name resolving to 127.0.0.1, so its page can read the
  answers): every request must carry a ``Host`` header naming the console itself (the bound
  ``host:port``, ``localhost:port``, or the loopback address with the port); anything else is
  403. This covers reads too, since the status shows the demo passwords.
- Cross-site request forgery on the fault switches: a state-changing request must be ``POST``
  with ``Content-Type: application/json`` (415 otherwise; an HTML form cannot send that type,
  and a cross-site ``fetch`` with it needs a CORS preflight, which the console never grants),
  and a present ``Origin`` must be the console's own origin (403).
- Reading the answers from another origin: the console never sends CORS headers.

It also sets headers that keep the page from being framed or its files sniffed. This module
must never look at request bodies or know what the routes do.
"""

from __future__ import annotations

import json
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kim_appliance.serving.hosts import AllowedHosts

#: methods that never change state; everything else is a state-changing request
SAFE_METHODS: Final = frozenset({"GET", "HEAD"})

#: sent with every answer (no CORS header is ever among them)
SECURITY_HEADERS: Final = (
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)


class ConsoleGuard:
    """ASGI middleware enforcing the rules of the module docstring."""

    def __init__(self, app: ASGIApp, allowed: AllowedHosts) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            status, message = refusal
            await _send_error(send, status, message)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if not bytes(k).lower().startswith(b"access-control-")
                ]
                message = {**message, "headers": [*headers, *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = _headers(scope)
        host = headers.get("host")
        if host not in self.allowed:
            return (
                403,
                f"Host: {host!r} does not name this console (allowed: "
                f"{', '.join(self.allowed.names())}); requests through other host names are "
                "refused (DNS rebinding)",
            )
        if scope["method"] in SAFE_METHODS:
            return None
        if scope["method"] != "POST":
            return 405, f"method {scope['method']}: the console changes state only by POST"
        origin = headers.get("origin")
        if origin is not None and origin.lower().removeprefix("http://") not in self.allowed:
            return 403, f"Origin: {origin!r} is not this console; cross-site requests are refused"
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return 403, "Sec-Fetch-Site: cross-site requests are refused"
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            return (
                415,
                f"Content-Type: {media_type or 'missing'!s}; a POST to the console must be "
                "application/json",
            )
        return None


def _headers(scope: Scope) -> dict[str, str]:
    """Request headers, lower-case names, the first of repeated ones kept (a second Host or
    Content-Type cannot override the first)."""
    result: dict[str, str] = {}
    for key, value in scope["headers"]:
        name = bytes(key).decode("latin-1").lower()
        result.setdefault(name, bytes(value).decode("latin-1"))
    return result


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
