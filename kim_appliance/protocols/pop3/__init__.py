"""Sans-IO POP3 (RFC 1939 with RFC 2449 CAPA/RESP-CODES/PIPELINING, RFC 5034 SASL PLAIN, APOP).

:class:`Pop3Server` is the core of the Fachdienst's and the Clientmodul's POP3 listeners,
:class:`Pop3Client` the core of the Clientmodul's upstream connection (digest §1.5, §3.2).
Both are pure state machines in the h11 shape: ``receive_data(bytes)``, ``next_event()``
returning an event or :class:`NEED_DATA`, and methods that return the bytes to write. This
package must never do I/O; it only re-exports the API of its private modules.
"""

from ._auth import apop_digest, check_apop, decode_plain, encode_plain, make_apop_timestamp
from ._client import Pop3Client
from ._errors import LocalProtocolError, Pop3Error, RemoteProtocolError
from ._events import (
    NEED_DATA,
    AuthAttempt,
    BodyChunk,
    BodyEnd,
    ConnectionClosed,
    DecisionEvent,
    Dele,
    Event,
    List,
    Noop,
    Pop3Reply,
    ProtocolViolation,
    Quit,
    RespCode,
    Response,
    Retr,
    Rset,
    Stat,
    Top,
    Uidl,
)
from ._parse import MAX_COMMAND_LINE
from ._server import Pop3Server
from ._state import State

__all__ = [
    "MAX_COMMAND_LINE",
    "NEED_DATA",
    "AuthAttempt",
    "BodyChunk",
    "BodyEnd",
    "ConnectionClosed",
    "DecisionEvent",
    "Dele",
    "Event",
    "List",
    "LocalProtocolError",
    "Noop",
    "Pop3Client",
    "Pop3Error",
    "Pop3Reply",
    "Pop3Server",
    "ProtocolViolation",
    "Quit",
    "RemoteProtocolError",
    "RespCode",
    "Response",
    "Retr",
    "Rset",
    "Stat",
    "State",
    "Top",
    "Uidl",
    "apop_digest",
    "check_apop",
    "decode_plain",
    "encode_plain",
    "make_apop_timestamp",
]
