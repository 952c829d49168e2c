"""Sans-IO SMTP (RFC 5321 with SIZE, 8BITMIME, ENHANCEDSTATUSCODES, DSN, AUTH PLAIN/LOGIN,
PIPELINING): :class:`SmtpServer` and :class:`SmtpClient` as pure state machines.

The Fachdienst mail server and the Clientmodul's SMTP proxy (digest §1.3, §1.4, §3.2) drive
these cores from trio; the cores themselves must never touch a socket, trio, the disk or the
message contents. This module only re-exports the API.
"""

from ._client import SmtpClient
from ._errors import LocalProtocolError, RemoteProtocolError, SmtpError
from ._events import (
    DECISION_EVENTS,
    NEED_DATA,
    AuthAttempt,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    DataStart,
    Ehlo,
    Helo,
    MailFrom,
    Noop,
    OriginalRecipient,
    ProtocolViolation,
    Quit,
    RcptTo,
    Rset,
    ServerEvent,
    Vrfy,
)
from ._parse import xtext_decode, xtext_encode
from ._replies import Reply, ServerReply
from ._server import SmtpServer
from ._state import State

__all__ = [
    "DECISION_EVENTS",
    "NEED_DATA",
    "AuthAttempt",
    "ConnectionClosed",
    "DataChunk",
    "DataEnd",
    "DataStart",
    "Ehlo",
    "Helo",
    "LocalProtocolError",
    "MailFrom",
    "Noop",
    "OriginalRecipient",
    "ProtocolViolation",
    "Quit",
    "RcptTo",
    "RemoteProtocolError",
    "Reply",
    "Rset",
    "ServerEvent",
    "ServerReply",
    "SmtpClient",
    "SmtpError",
    "SmtpServer",
    "State",
    "Vrfy",
    "xtext_decode",
    "xtext_encode",
]
