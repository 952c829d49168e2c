"""Events of the sans-IO SMTP cores: what the peer did, as frozen dataclasses.

Server events come in two kinds. *Decision* events (:data:`DECISION_EVENTS`: AUTH, MAIL,
RCPT, DATA, end of DATA) wait for the application's :meth:`SmtpServer.send`; the core parses
nothing further until then, so replies stay in order under PIPELINING (RFC 2920). All other
events are informational: the core has already queued its reply. This module must never hold
parsing or state logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ._replies import Reply


class NEED_DATA:  # a sentinel class, named like h11's
    """Sentinel returned by ``next_event``: feed more bytes with ``receive_data``."""

    def __init__(self) -> None:  # pragma: no cover - never instantiated
        raise TypeError("NEED_DATA is a sentinel; compare with `is`")


class OriginalRecipient(NamedTuple):
    """The DSN ``ORCPT`` parameter (RFC 3461 §4.2): address type and xtext-decoded address."""

    addr_type: str
    address: str


@dataclass(frozen=True)
class Helo:
    """HELO (RFC 5321 §4.1.1.1); the core has answered 250."""

    domain: str


@dataclass(frozen=True)
class Ehlo:
    """EHLO; the core has answered with its extension list."""

    domain: str


@dataclass(frozen=True)
class AuthAttempt:
    """A complete SASL PLAIN or LOGIN exchange (RFC 4954, RFC 4616). Decision: reply 235 2.7.0
    to accept, 535 5.7.8 to refuse (digest §1.3)."""

    mechanism: str
    authzid: str
    username: str
    password: str = ""

    def __repr__(self) -> str:  # never put a password into a log line
        return (
            f"AuthAttempt(mechanism={self.mechanism!r}, authzid={self.authzid!r}, "
            f"username={self.username!r}, password=<{len(self.password)} chars>)"
        )


@dataclass(frozen=True)
class MailFrom:
    """MAIL FROM. ``address`` is "" for the null reverse-path ``<>``. Decision: 250 starts the
    transaction. ``size`` (RFC 1870), ``body`` ("7BIT"/"8BITMIME", RFC 6152), ``ret``
    ("FULL"/"HDRS") and ``envid`` (xtext-decoded) (RFC 3461) are None when absent."""

    address: str
    size: int | None = None
    body: str | None = None
    ret: str | None = None
    envid: str | None = None


@dataclass(frozen=True)
class RcptTo:
    """RCPT TO. Decision: 250 accepts the recipient. ``notify`` is the set of NOTIFY keywords
    (NEVER alone, or some of SUCCESS, FAILURE, DELAY; RFC 3461 §4.1), None when absent."""

    address: str
    notify: frozenset[str] | None = None
    orcpt: OriginalRecipient | None = None


@dataclass(frozen=True)
class DataStart:
    """DATA with at least one accepted recipient. Decision: 354 to receive the body."""


@dataclass(frozen=True)
class DataChunk:
    """A piece of the body, dot-unstuffed, in wire order (possibly empty of lines)."""

    data: bytes


@dataclass(frozen=True)
class DataEnd:
    """CRLF.CRLF ended the body. Decision: 250 queued, 552/554 refused.

    ``size`` is the unstuffed body size; ``bare_lf`` and ``bare_cr`` count line ends that are
    not CRLF (a server may refuse them: smuggling); ``longest_line`` is in octets without CRLF.
    ``too_big`` means the body went over ``max_message_size``: the core swallowed the rest and
    the application should answer 552 5.3.4 (RFC 1870 §6.1 / RFC 3463).
    """

    size: int
    bare_lf: int = 0
    bare_cr: int = 0
    longest_line: int = 0
    too_big: bool = False


@dataclass(frozen=True)
class Rset:
    """RSET; the core has answered 250 and dropped the transaction (not the authentication)."""


@dataclass(frozen=True)
class Noop:
    """NOOP; the core has answered 250."""


@dataclass(frozen=True)
class Vrfy:
    """VRFY; the core has answered 252 (RFC 5321 §3.5.3: no user list is disclosed)."""

    argument: str


@dataclass(frozen=True)
class Quit:
    """QUIT; the core has queued 221. ``ConnectionClosed`` follows."""


@dataclass(frozen=True)
class ProtocolViolation:
    """The peer sent something wrong; the core has queued ``reply`` (informational, for logs).

    ``line`` is the offending command line, cut to 200 octets.
    """

    reply: Reply
    line: bytes


@dataclass(frozen=True)
class ConnectionClosed:
    """The session is over; the application should close the connection.

    ``reason`` says why: "quit", "eof", "too many bad commands", "closed by the application".
    """

    reason: str


ServerEvent = (
    Helo
    | Ehlo
    | AuthAttempt
    | MailFrom
    | RcptTo
    | DataStart
    | DataChunk
    | DataEnd
    | Rset
    | Noop
    | Vrfy
    | Quit
    | ProtocolViolation
    | ConnectionClosed
)

DECISION_EVENTS: tuple[type, ...] = (AuthAttempt, MailFrom, RcptTo, DataStart, DataEnd)
