"""Paged searches of one LDAP connection (RFC 2696): what a cookie means, and the pages.

What a cookie holds (our choice, RFC 2696 leaves it to the server): nothing but 16 random bytes,
a handle into the connection's own table of open paged searches. The table keeps, per open
search, its fingerprint (base, scope, filter, attributes, typesOnly, sizeLimit: RFC 2696 §3
requires the same request on every page) and the DNs still to send, taken when the first page
was asked (at most the size limit's worth, so a paged search returns what an unpaged one would,
in pieces). Every page gets a fresh cookie and the old one becomes invalid; a cookie is valid
only on the connection that made it, until the last page, an abandon (size 0 with the cookie),
or the end of the connection. At most :data:`MAX_OPEN` paged searches are open per connection
(the oldest is dropped). Entries are read again when their page is sent: one deleted or no
longer matching in between is left out, so nothing is ever sent that the directory no longer
holds. Nothing here is shared between connections or outlives one.

This module holds state only; it never reads the directory itself and never does I/O.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from kim_appliance.protocols.ldap import ResultCode, Search

#: open paged searches per connection (a client pages through one or two at a time)
MAX_OPEN: Final = 8
COOKIE_BYTES: Final = 16

#: (dn, attributes) of an entry as the LDAP server shows it
View = tuple[str, dict[str, list[bytes]]]


class CookieError(Exception):
    """The cookie names no open paged search of this connection, or another search
    (unwillingToPerform 53, as OpenLDAP answers a stale cookie)."""


@dataclass(frozen=True)
class Page:
    """One page: the entries to send, the cookie of the next page (empty when this is the
    last), the result code of SearchResultDone and the estimate of the result set's size."""

    entries: list[View]
    cookie: bytes
    code: ResultCode
    diagnostic: str
    estimate: int


@dataclass
class _Open:
    fingerprint: tuple[object, ...]
    remaining: list[str]
    total: int
    #: more entries matched than the size limit lets out: the last page ends with 4
    truncated: bool


def fingerprint(search: Search) -> tuple[object, ...]:
    """What must be the same on every page of one paged search (RFC 2696 §3)."""
    return (
        search.base.lower(),
        search.scope,
        search.filter,
        tuple(a.lower() for a in search.attributes),
        search.types_only,
        search.size_limit,
    )


class PagedSearches:
    """The open paged searches of one connection. Not thread-safe: a connection answers one
    request at a time."""

    def __init__(self) -> None:
        self._open: OrderedDict[bytes, _Open] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def first_page(
        self,
        search: Search,
        matching: Sequence[View],
        *,
        limit: int,
        truncated: bool,
        diagnostic: str,
    ) -> Page:
        """The first page of ``search`` over ``matching`` (the matches in order, at most
        ``limit``; ``truncated`` when more matched). Opens the search if pages follow."""
        assert search.paged is not None
        size = search.paged.size
        total = len(matching)
        if size == 0:
            # RFC 2696 §3: a size of zero asks for no entries (here: the estimate only)
            return Page([], b"", ResultCode.SUCCESS, "", total)
        if size >= total:
            code, text = (ResultCode.SIZE_LIMIT_EXCEEDED, diagnostic) if truncated else (
                ResultCode.SUCCESS, ""
            )  # fmt: skip
            return Page(list(matching), b"", code, text, total)
        cookie = self._new_cookie()
        self._open[cookie] = _Open(
            fingerprint(search), [dn for dn, _ in matching[size:]], total, truncated
        )
        self._trim()
        return Page(list(matching[:size]), cookie, ResultCode.SUCCESS, "", total)

    def next_page(
        self,
        search: Search,
        read: Callable[[str], View | None],
        *,
        diagnostic: str,
    ) -> Page:
        """The page after ``search.paged.cookie``; ``read(dn)`` is the entry as it is now, or
        None when it is gone or no longer matches. Raises :class:`CookieError`."""
        assert search.paged is not None
        state = self._open.pop(search.paged.cookie, None)
        if state is None:
            raise CookieError(
                "the paged results cookie is unknown, used already or from another "
                "connection; start the search again without a cookie (RFC 2696)"
            )
        if state.fingerprint != fingerprint(search):
            raise CookieError(
                "the paged results cookie belongs to another search: every page must repeat "
                "the first request (RFC 2696 §3)"
            )
        size = search.paged.size
        if size == 0:
            # RFC 2696 §3: size zero with a cookie abandons the paged search
            return Page([], b"", ResultCode.SUCCESS, "", state.total)
        entries: list[View] = []
        while state.remaining and len(entries) < size:
            view = read(state.remaining.pop(0))
            if view is not None:
                entries.append(view)
        if state.remaining:
            cookie = self._new_cookie()
            self._open[cookie] = state
            return Page(entries, cookie, ResultCode.SUCCESS, "", state.total)
        if state.truncated:
            return Page(entries, b"", ResultCode.SIZE_LIMIT_EXCEEDED, diagnostic, state.total)
        return Page(entries, b"", ResultCode.SUCCESS, "", state.total)

    def _new_cookie(self) -> bytes:
        return secrets.token_bytes(COOKIE_BYTES)

    def _trim(self) -> None:
        while len(self._open) > MAX_OPEN:
            self._open.popitem(last=False)
