"""Sans-IO LDAPv3 server (RFC 4511) for the read-only VZD: :class:`LdapServer` and its events.

The VZD's LDAP listener (digest §4.1) drives this core from trio; the core itself must never
touch a socket, trio, the disk or the directory's entries. PDUs are decoded and encoded with
ldap3's RFC 4511 ASN.1 definitions on pyasn1. This module only re-exports the API.
"""

from ._codec import (
    MAX_FILTER_DEPTH,
    NOTICE_OF_DISCONNECTION,
    PAGED_RESULTS_OID,
    START_TLS_OID,
    encode_notice_of_disconnection,
)
from ._events import (
    NEED_DATA,
    Abandon,
    And,
    Approx,
    Bind,
    ConnectionClosed,
    Equality,
    Event,
    Extensible,
    Filter,
    GreaterOrEqual,
    LessOrEqual,
    Not,
    Or,
    PagedResults,
    Presence,
    ProtocolViolation,
    Refused,
    ResultCode,
    Scope,
    Search,
    StartTls,
    Substrings,
    Unbind,
    filter_to_string,
)
from ._server import MAX_PDU_SIZE, LdapServer, LocalProtocolError

__all__ = [
    "MAX_FILTER_DEPTH",
    "MAX_PDU_SIZE",
    "NEED_DATA",
    "NOTICE_OF_DISCONNECTION",
    "PAGED_RESULTS_OID",
    "START_TLS_OID",
    "Abandon",
    "And",
    "Approx",
    "Bind",
    "ConnectionClosed",
    "Equality",
    "Event",
    "Extensible",
    "Filter",
    "GreaterOrEqual",
    "LdapServer",
    "LessOrEqual",
    "LocalProtocolError",
    "Not",
    "Or",
    "PagedResults",
    "Presence",
    "ProtocolViolation",
    "Refused",
    "ResultCode",
    "Scope",
    "Search",
    "StartTls",
    "Substrings",
    "Unbind",
    "encode_notice_of_disconnection",
    "filter_to_string",
]
