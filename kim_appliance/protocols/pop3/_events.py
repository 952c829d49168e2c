"""The events of the POP3 cores: what the peer asked for or answered, as plain frozen values.

Server side: a *decision event* (:class:`AuthAttempt`, :class:`Stat`, :class:`List`, ...) is a
command whose answer only the application knows; it is answered with ``Pop3Server.send`` or
``send_multiline`` / ``send_body`` / ``end_multiline``. :class:`ProtocolViolation` and
:class:`ConnectionClosed` are notices: the core has answered them itself. Client side:
:class:`Pop3Reply`, :class:`BodyChunk`, :class:`BodyEnd`. This module must never hold state or
parse bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from ._errors import LocalProtocolError

__all__ = [
    "NEED_DATA",
    "AuthAttempt",
    "BodyChunk",
    "BodyEnd",
    "ConnectionClosed",
    "DecisionEvent",
    "Dele",
    "Event",
    "List",
    "Noop",
    "Pop3Reply",
    "ProtocolViolation",
    "Quit",
    "RespCode",
    "Response",
    "Retr",
    "Rset",
    "Stat",
    "Top",
    "Uidl",
]

# RFC 2449 §8: a response line is at most 512 octets including the CRLF.
MAX_RESPONSE_LINE = 512

_RESP_CODE = re.compile(r"[A-Za-z0-9-]+(/[A-Za-z0-9-]+)*\Z")


class NEED_DATA:
    """Sentinel returned by ``next_event``: feed more bytes with ``receive_data`` first."""


class RespCode(StrEnum):
    """The response codes of RFC 2449 §8 (RESP-CODES) and RFC 3206 (SYS, AUTH)."""

    AUTH = "AUTH"  # RFC 3206: the credentials are wrong (not a temporary fault)
    SYS_TEMP = "SYS/TEMP"  # RFC 3206: a temporary system fault, try again later
    SYS_PERM = "SYS/PERM"  # RFC 3206: a permanent system fault
    IN_USE = "IN-USE"  # RFC 2449: the maildrop is locked by another session
    LOGIN_DELAY = "LOGIN-DELAY"  # RFC 2449: logged in too recently


@dataclass(frozen=True)
class Response:
    """A single-line answer: ``+OK text`` or ``-ERR [CODE] text`` (RFC 1939 §3, RFC 2449 §8)."""

    ok: bool
    text: str = ""
    code: str | None = None

    def __post_init__(self) -> None:
        if "\r" in self.text or "\n" in self.text:
            raise LocalProtocolError(f"response text {self.text!r}: must not contain CR or LF")
        if self.code is not None and not _RESP_CODE.match(self.code):
            raise LocalProtocolError(
                f"response code {self.code!r}: not an RFC 2449 resp-code (e.g. 'SYS/TEMP')"
            )

    def render(self) -> bytes:
        """The response line with its CRLF. A text too long for RFC 2449's 512 octets (it may
        carry what the client sent, such as a long username) is cut at a character boundary
        and ends in ``...``."""
        parts = ["+OK" if self.ok else "-ERR"]
        if self.code is not None:
            parts.append(f"[{self.code.upper()}]")
        if self.text:
            parts.append(self.text)
        line = " ".join(parts).encode("utf-8")
        if len(line) > MAX_RESPONSE_LINE - 2:
            line = line[: MAX_RESPONSE_LINE - 5].decode("utf-8", "ignore").encode("utf-8") + b"..."
        return line + b"\r\n"


# --- server side: decision events -----------------------------------------------------------


@dataclass(frozen=True)
class AuthAttempt:
    """A complete login: ``USER``+``PASS``, ``AUTH PLAIN`` (RFC 5034/4616) or ``APOP``.

    For ``APOP`` the password is None and ``apop_digest`` holds the client's lower-case hex MD5
    of timestamp+secret (RFC 1939 §7); check it with :func:`check_apop`.
    """

    mechanism: Literal["USER", "PLAIN", "APOP"]
    username: str
    password: str | None
    apop_digest: str | None = None


@dataclass(frozen=True)
class Stat:
    """``STAT``: answer ``+OK <count> <octets>``."""


@dataclass(frozen=True)
class List:
    """``LIST [msg]``: one scan line for ``msg``, or a multi-line listing when ``msg`` is None."""

    msg: int | None


@dataclass(frozen=True)
class Uidl:
    """``UIDL [msg]``: like :class:`List` with unique-ids (RFC 1939 §7, KOM-LE-A_2152)."""

    msg: int | None


@dataclass(frozen=True)
class Retr:
    """``RETR msg``: a multi-line answer carrying the whole message."""

    msg: int


@dataclass(frozen=True)
class Top:
    """``TOP msg lines``: the header, the blank line and the first ``lines`` body lines."""

    msg: int
    lines: int


@dataclass(frozen=True)
class Dele:
    """``DELE msg``: mark the message deleted; it goes at QUIT (UPDATE state)."""

    msg: int


@dataclass(frozen=True)
class Rset:
    """``RSET``: unmark every message marked deleted."""


@dataclass(frozen=True)
class Noop:
    """``NOOP``: answer ``+OK``."""


@dataclass(frozen=True)
class Quit:
    """``QUIT`` in TRANSACTION: commit the deletions (UPDATE state), then answer; then close."""


# --- server side: notices (already answered by the core) ------------------------------------


@dataclass(frozen=True)
class ProtocolViolation:
    """A line the core refused with ``-ERR`` (unknown command, wrong state, bad argument, too
    long). ``line`` is the offending line (cut to 80 octets), ``response`` what was sent."""

    response: Response
    line: bytes


@dataclass(frozen=True)
class ConnectionClosed:
    """The session is over (QUIT answered, too many bad commands, or the peer's EOF): send what
    ``data_to_send`` holds, then close the connection."""


DecisionEvent = AuthAttempt | Stat | List | Uidl | Retr | Top | Dele | Rset | Noop | Quit
Event = DecisionEvent | ProtocolViolation | ConnectionClosed

# --- client side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pop3Reply:
    """A status line from the server, matched to the command it answers.

    ``command`` is the command keyword (``"RETR"``), ``"GREETING"`` for the greeting, or
    ``"AUTH"`` with ``continuation=True`` for a ``+ `` SASL challenge. ``multiline`` is True when
    :class:`BodyChunk` events and one :class:`BodyEnd` follow. ``apop_timestamp`` is the
    ``<...>`` of an APOP-capable greeting.
    """

    command: str
    ok: bool
    text: str
    code: str | None = None
    multiline: bool = False
    continuation: bool = False
    apop_timestamp: str | None = None


@dataclass(frozen=True)
class BodyChunk:
    """A piece of a multi-line answer, dot-unstuffed; line ends as the server sent them."""

    data: bytes


@dataclass(frozen=True)
class BodyEnd:
    """The ``.`` CRLF that ends a multi-line answer."""
