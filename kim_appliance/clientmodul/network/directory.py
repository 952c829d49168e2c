"""The Clientmodul's directory port over LDAP: the VZD's ``I_Directory_Query`` (digest §4.1).

LDAPS (``ldaps://``), or plain LDAP upgraded with StartTLS before anything is asked
(``ldap://``): the VZD's certificate is checked against the configured CA and the host name,
the bind is anonymous. The addresses of one message are asked in one search, ``(|(mail=a)
(mail=b)...)`` below ``dc=data,dc=vzd`` (at most :data:`ADDRESSES_PER_SEARCH` per search),
reading ``telematikID``, ``userCertificate;binary``, ``mail``, ``kimData`` and ``komLeData``,
with the paged results control (RFC 2696, critical, as code written for the large real
directory sends it). The KIM version of an address is its ``kimData`` (``mail,version,...``),
else its ``komLeData`` (``version,mail``), else ``1.0`` (digest §4.1).

The client is ldap3 (blocking): call the port from a worker thread. Connections are kept (one
per thread that needs one at a time, at most :data:`MAX_IDLE` kept) and reopened once when the
VZD closed them (it closes idle ones after 15 min). Every failure (connection, TLS, timeout,
an LDAP result other than success) is a
:class:`~kim_appliance.clientmodul.ports.DirectoryUnreachable` that says what failed. The cache
of KOM-LE-A_2026 is the Clientmodul's (:mod:`kim_appliance.clientmodul.vzd_lookup`), not this
module's. This module never writes to the directory.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from kim_appliance.clientmodul.ports import DirectoryRecord, DirectoryUnreachable

BASE_DN: Final = "dc=data,dc=vzd"
#: digest §4.1: a missing komLeData/kimData for an address means 1.0
DEFAULT_VERSION: Final = "1.0"
#: addresses per search: well below the VZD's 100 results (TIP1-A_5552)
ADDRESSES_PER_SEARCH: Final = 50
#: entries per page of the paged search (RFC 2696)
PAGE_SIZE: Final = 25
#: kept connections
MAX_IDLE: Final = 4
#: LDAP_TIMEOUT: connect and every answer (the spec names none; the VZD is asked per message)
TIMEOUT: Final = 30.0
ATTRIBUTES: Final = ("telematikID", "userCertificate;binary", "mail", "kimData", "komLeData")
_PAGED_RESULTS: Final = "1.2.840.113556.1.4.319"


@dataclass(frozen=True)
class LdapSettings:
    """How the Clientmodul reaches the VZD (``[clientmodul] directory`` in config.toml)."""

    #: ``ldaps://HOST:PORT`` or ``ldap://HOST:PORT`` (then StartTLS)
    url: str
    #: PEM file with the CA(s) of the VZD's TLS certificate (C.ZD.TLS-S)
    ca_file: Path
    base_dn: str = BASE_DN
    timeout: float = TIMEOUT
    page_size: int = PAGE_SIZE

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("ldaps", "ldap") or not parts.hostname:
            raise ValueError(
                f"directory {self.url!r}: expected ldaps://HOST:PORT, or ldap://HOST:PORT "
                "(StartTLS)"
            )


class LdapDirectory:
    """:class:`~kim_appliance.clientmodul.ports.DirectoryPort` over LDAP (module docstring)."""

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        parts = urlsplit(settings.url)
        self._implicit_tls = parts.scheme == "ldaps"
        self._host = parts.hostname or ""
        self._port = parts.port or (636 if self._implicit_tls else 389)
        tls = ldap3.Tls(ca_certs_file=str(settings.ca_file), validate=ssl.CERT_REQUIRED)
        self._server = ldap3.Server(
            self._host,
            port=self._port,
            use_ssl=self._implicit_tls,
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=int(settings.timeout),
        )
        self._idle: list[ldap3.Connection] = []
        self._lock = threading.Lock()
        #: searches sent and connections opened (tests look at them)
        self.searches = 0
        self.connections_opened = 0

    def find_by_mail(self, addresses: Sequence[str]) -> Mapping[str, DirectoryRecord]:
        wanted = list(dict.fromkeys(a.casefold() for a in addresses))
        found: dict[str, DirectoryRecord] = {}
        for start in range(0, len(wanted), ADDRESSES_PER_SEARCH):
            chunk = wanted[start : start + ADDRESSES_PER_SEARCH]
            for entry in self._search(_mail_filter(chunk)):
                found.update(_records(entry, chunk))
        return found

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            _unbind(connection)

    # --- connections and searches ------------------------------------------------------------

    def _search(self, search_filter: str) -> list[dict[str, Any]]:
        """Every entry of a paged search; one retry on a new connection when a kept one was
        closed by the VZD."""
        for attempt in (0, 1):
            connection, kept = self._connection()
            try:
                entries = list(self._pages(connection, search_filter))
            except (LDAPException, OSError, ssl.SSLError) as exc:
                _unbind(connection)
                if kept and attempt == 0:
                    continue
                raise DirectoryUnreachable(
                    f"{self.settings.url}: the search failed: {type(exc).__name__}: {exc}"
                ) from exc
            self._release(connection)
            return entries
        raise AssertionError("unreachable")  # pragma: no cover

    def _pages(self, connection: ldap3.Connection, search_filter: str) -> Iterator[dict[str, Any]]:
        cookie: bytes | None = None
        while True:
            self.searches += 1
            connection.search(
                self.settings.base_dn,
                search_filter,
                search_scope=ldap3.SUBTREE,
                attributes=list(ATTRIBUTES),
                paged_size=self.settings.page_size,
                paged_criticality=True,
                paged_cookie=cookie,
            )
            result = connection.result or {}
            if result.get("result") not in (0, None):
                raise DirectoryUnreachable(
                    f"the VZD ({self.settings.url}) answered {result.get('description')} "
                    f"({result.get('result')}): {result.get('message')}"
                )
            for entry in connection.response or ():
                if entry.get("type") == "searchResEntry":
                    yield entry
            control = (result.get("controls") or {}).get(_PAGED_RESULTS, {})
            cookie = control.get("value", {}).get("cookie") or None
            if not cookie:
                return

    def _connection(self) -> tuple[ldap3.Connection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        connection = ldap3.Connection(
            self._server,
            receive_timeout=int(self.settings.timeout),
            raise_exceptions=False,
            read_only=True,
        )
        try:
            connection.open()
            if connection.closed:
                raise DirectoryUnreachable(
                    f"cannot connect to {self.settings.url}: {connection.last_error}"
                )
            if not self._implicit_tls and not connection.start_tls():
                raise DirectoryUnreachable(
                    f"{self.settings.url} refused StartTLS: {connection.result}"
                )
            if not connection.bind():
                raise DirectoryUnreachable(
                    f"{self.settings.url} refused the anonymous bind: {connection.result}"
                )
        except DirectoryUnreachable:
            _unbind(connection)
            raise
        except (LDAPException, OSError, ssl.SSLError) as exc:
            _unbind(connection)
            raise DirectoryUnreachable(
                f"cannot reach {self.settings.url}: {type(exc).__name__}: {exc}"
            ) from exc
        self.connections_opened += 1
        return connection, False

    def _release(self, connection: ldap3.Connection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(connection)
                return
        _unbind(connection)


def _mail_filter(addresses: Sequence[str]) -> str:
    items = "".join(f"(mail={escape_filter_chars(a)})" for a in addresses)
    return items if len(addresses) == 1 else f"(|{items})"


def _records(
    entry: Mapping[str, Any], wanted: Sequence[str]
) -> Iterator[tuple[str, DirectoryRecord]]:
    """The records of ``wanted`` addresses this entry publishes."""
    raw: Mapping[str, list[bytes]] = entry.get("raw_attributes", {})
    mails = {_text(m).casefold() for m in raw.get("mail", [])}
    telematik_ids = [_text(t) for t in raw.get("telematikID", [])]
    certificates = tuple(bytes(c) for c in raw.get("userCertificate;binary", []))
    for address in wanted:
        if address in mails:
            version = _version(address, raw.get("kimData", []), raw.get("komLeData", []))
            yield (
                address,
                DirectoryRecord(
                    address, telematik_ids[0] if telematik_ids else None, certificates, version
                ),
            )


def _version(address: str, kim_data: list[bytes], kom_le_data: list[bytes]) -> str:
    """kimData ``mail,version[,tags]``, else komLeData ``version,mail`` (digest §4.1)."""
    for value in kim_data:
        parts = _text(value).split(",")
        if len(parts) >= 2 and parts[0].strip().casefold() == address and parts[1].strip():
            return parts[1].strip()
    for value in kom_le_data:
        version, _, mail = _text(value).partition(",")
        if mail.strip().casefold() == address and version.strip():
            return version.strip()
    return DEFAULT_VERSION


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _unbind(connection: ldap3.Connection) -> None:
    with contextlib.suppress(LDAPException, OSError, ssl.SSLError):
        connection.unbind()
