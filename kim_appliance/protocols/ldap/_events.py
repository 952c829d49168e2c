"""Events of the sans-IO LDAP server core and the search Filter tree, as frozen dataclasses.

*Request* events (:class:`Bind`, :class:`Search`, :class:`StartTls`) wait for the application's
answer through ``send_bind_result`` / ``send_entry`` / ``send_search_done`` /
``send_start_tls_result``. *Informational* events
(:class:`Refused`, :class:`Abandon`, :class:`Unbind`, :class:`ProtocolViolation`,
:class:`ConnectionClosed`) need no answer: whatever reply they call for, the core has already
queued in ``data_to_send()``. This module must never hold parsing or state logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class NEED_DATA:  # a sentinel class, named like h11's
    """Sentinel returned by ``next_event``: feed more bytes with ``receive_data``."""

    def __init__(self) -> None:  # pragma: no cover - never instantiated
        raise TypeError("NEED_DATA is a sentinel; compare with `is`")


class ResultCode(IntEnum):
    """LDAPResult.resultCode values the appliance uses (RFC 4511 §4.1.9, Appendix A)."""

    SUCCESS = 0
    OPERATIONS_ERROR = 1
    PROTOCOL_ERROR = 2
    TIME_LIMIT_EXCEEDED = 3
    SIZE_LIMIT_EXCEEDED = 4
    AUTH_METHOD_NOT_SUPPORTED = 7
    UNAVAILABLE_CRITICAL_EXTENSION = 12
    NO_SUCH_ATTRIBUTE = 16
    UNDEFINED_ATTRIBUTE_TYPE = 17
    NO_SUCH_OBJECT = 32
    INVALID_DN_SYNTAX = 34
    INAPPROPRIATE_AUTHENTICATION = 48
    INVALID_CREDENTIALS = 49
    INSUFFICIENT_ACCESS_RIGHTS = 50
    BUSY = 51
    UNAVAILABLE = 52
    UNWILLING_TO_PERFORM = 53
    OTHER = 80


class Scope(IntEnum):
    """SearchRequest.scope (RFC 4511 §4.5.1.2)."""

    BASE = 0
    ONE = 1
    SUB = 2


# --- the Filter tree (RFC 4511 §4.5.1.7) -------------------------------------------------
# Attribute descriptions are kept exactly as the client sent them (with options such as
# ";binary"); assertion values are raw bytes. Matching rules belong to the evaluator.


@dataclass(frozen=True)
class And:
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    filters: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    filter: Filter


@dataclass(frozen=True)
class Equality:
    attribute: str
    value: bytes


@dataclass(frozen=True)
class Substrings:
    """``initial*any*any*final``; at least one of the three parts is present."""

    attribute: str
    initial: bytes | None
    any: tuple[bytes, ...]
    final: bytes | None


@dataclass(frozen=True)
class GreaterOrEqual:
    attribute: str
    value: bytes


@dataclass(frozen=True)
class LessOrEqual:
    attribute: str
    value: bytes


@dataclass(frozen=True)
class Presence:
    attribute: str


@dataclass(frozen=True)
class Approx:
    attribute: str
    value: bytes


@dataclass(frozen=True)
class Extensible:
    """extensibleMatch; the appliance knows no matching rules, so it evaluates to Undefined."""

    matching_rule: str | None
    attribute: str | None
    value: bytes
    dn_attributes: bool


Filter = (
    And | Or | Not | Equality | Substrings | GreaterOrEqual | LessOrEqual | Presence | Approx
) | Extensible


def _escape(value: bytes) -> str:
    """RFC 4515 §3 value escaping: ``*()\\`` NUL and non-ASCII as ``\\XX``."""
    out = []
    for byte in value:
        char = chr(byte)
        if char in "*()\\" or byte == 0 or byte > 0x7E or byte < 0x20:
            out.append(f"\\{byte:02x}")
        else:
            out.append(char)
    return "".join(out)


def filter_to_string(f: Filter) -> str:
    """The RFC 4515 string form of a Filter tree (for logs and error messages)."""
    match f:
        case And(filters):
            return "(&" + "".join(filter_to_string(x) for x in filters) + ")"
        case Or(filters):
            return "(|" + "".join(filter_to_string(x) for x in filters) + ")"
        case Not(inner):
            return "(!" + filter_to_string(inner) + ")"
        case Equality(attribute, value):
            return f"({attribute}={_escape(value)})"
        case GreaterOrEqual(attribute, value):
            return f"({attribute}>={_escape(value)})"
        case LessOrEqual(attribute, value):
            return f"({attribute}<={_escape(value)})"
        case Approx(attribute, value):
            return f"({attribute}~={_escape(value)})"
        case Presence(attribute):
            return f"({attribute}=*)"
        case Substrings(attribute, initial, middle, final):
            parts = [_escape(initial or b""), *(_escape(m) for m in middle), _escape(final or b"")]
            return f"({attribute}={'*'.join(parts)})"
        case Extensible(rule, attribute, value, dn):
            text = (attribute or "") + (":dn" if dn else "") + (f":{rule}" if rule else "")
            return f"({text}:={_escape(value)})"
    raise TypeError(f"not a Filter: {f!r}")  # pragma: no cover


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bind:
    """A simple BindRequest (RFC 4511 §4.2). Answer with ``send_bind_result``. An empty name and
    empty password is an anonymous bind; a name with an empty password is an unauthenticated
    bind (RFC 4513 §5.1.2), which the application should refuse."""

    message_id: int
    version: int
    name: str
    password: bytes

    def __repr__(self) -> str:  # never put a password into a log line
        return (
            f"Bind(message_id={self.message_id}, version={self.version}, name={self.name!r}, "
            f"password=<{len(self.password)} bytes>)"
        )


@dataclass(frozen=True)
class PagedResults:
    """The simple paged results control of a search (RFC 2696): at most ``size`` entries in
    this page; ``cookie`` is empty on the first request and the server's cookie of the last
    page after that; ``size`` 0 with a cookie abandons the paged search. ``critical`` as the
    client marked it (python-ldap and ``ldapsearch -E '!pr=N'`` mark it critical)."""

    size: int
    cookie: bytes
    critical: bool


@dataclass(frozen=True)
class Search:
    """A SearchRequest (RFC 4511 §4.5.1). Answer with any number of ``send_entry`` and one
    ``send_search_done``. ``attributes`` are the selectors as sent (``*``, ``1.1``, ``+``,
    names with options). ``paged``: the paged results control, when the client sent one; then
    ``send_search_done`` carries the response control with the cookie of the next page."""

    message_id: int
    base: str
    scope: Scope
    deref: int
    size_limit: int
    time_limit: int
    types_only: bool
    filter: Filter
    attributes: tuple[str, ...]
    paged: PagedResults | None = None


@dataclass(frozen=True)
class StartTls:
    """The StartTLS extended request (RFC 4511 §4.14), offered on a plain connection. Answer
    with ``send_start_tls_result``; after a success the application starts the TLS handshake
    at once (the client sends nothing before it)."""

    message_id: int


@dataclass(frozen=True)
class Unbind:
    """UnbindRequest (RFC 4511 §4.3): the client is leaving; close the connection."""

    message_id: int


@dataclass(frozen=True)
class Abandon:
    """AbandonRequest (RFC 4511 §4.11): no response; stop working on ``abandoned_id``."""

    message_id: int
    abandoned_id: int


@dataclass(frozen=True)
class Refused:
    """A request the core answered itself (write operations, SASL bind, extended operations,
    unknown critical controls); its response is queued in ``data_to_send()``."""

    message_id: int
    operation: str
    code: ResultCode
    diagnostic: str


@dataclass(frozen=True)
class ProtocolViolation:
    """The peer sent something that is not LDAPv3 (malformed or oversized PDU, a response
    where a request belongs). A Notice of Disconnection (RFC 4511 §4.4.1) is queued in
    ``data_to_send()``; send it and close the connection."""

    reason: str


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed its side (``receive_data(b"")``)."""


Event = Bind | Search | StartTls | Unbind | Abandon | Refused | ProtocolViolation | ConnectionClosed
