"""TLS session resumption for the Clientmodul's connections to the Fachdienst (issue 13, item 2).

The Clientmodul opens a TLS connection to its Fachdienst for every PVS session (SMTPS, POP3S)
and for every REST request (KAS, AccountLimit, Account Manager): each a full handshake with the
server's signature and a certificate path check. Python's ``ssl`` offers the client side of
TLS 1.3 resumption: the server sends session tickets after the handshake, the client hands the
last one back on its next connection (``SSLObject.session``) and both skip the certificate and
signature work (RFC 8446 §2.2; the server's certificate was verified on the full handshake,
and a ticket is valid only with the context that verified it).

:class:`TlsSessions` keeps the newest resumable session per (client context, server name, port),
at most :data:`MAX_SESSIONS`. :meth:`TlsSessions.offer` puts it on a new stream before the
handshake; :meth:`TlsSessions.keep` takes the stream's session after some application data was
read (TLS 1.3 tickets arrive only then). A ticket the server does not accept (restart, expiry)
just gives a full handshake. This module must never offer a session to another server name or
with another SSL context, and never weaken verification: a resumed session is one the same
context verified.
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from typing import Any, Final

import trio

#: resumable sessions kept at most (one per Fachdienst host and port; a few hundred bytes each)
MAX_SESSIONS: Final = 64


class TlsSessions:
    """The newest resumable TLS session per (client context, server name, port)."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._max = max_sessions
        self._sessions: OrderedDict[tuple[int, str, int], ssl.SSLSession] = OrderedDict()
        #: full handshakes and resumed ones since start (for the bench and the tests)
        self.full = 0
        self.resumed = 0

    @staticmethod
    def _key(stream: trio.SSLStream[Any], port: int) -> tuple[int, str, int]:
        return (id(stream.context), str(stream.server_hostname or ""), port)

    def offer(self, stream: trio.SSLStream[Any], port: int) -> None:
        """Before the handshake: offer the session last kept for this server, if any."""
        session = self._sessions.get(self._key(stream, port))
        if session is None:
            return
        try:
            stream.session = session
        except (ValueError, ssl.SSLError):
            # another context's session (cannot happen with the key above) or one OpenSSL no
            # longer takes: a full handshake then
            self._sessions.pop(self._key(stream, port), None)

    def keep(self, stream: trio.abc.Stream, port: int) -> None:
        """After the handshake and a first read: count it, and keep its session for the next
        connection if the server gave a ticket (a stream without TLS is left alone)."""
        if not isinstance(stream, trio.SSLStream):
            return
        if stream.session_reused:
            self.resumed += 1
        else:
            self.full += 1
        session = stream.session
        if session is None or not session.has_ticket:
            return
        key = self._key(stream, port)
        self._sessions[key] = session
        self._sessions.move_to_end(key)
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)


#: the Clientmodul's sessions, shared by its SMTP, POP3 and REST clients (keyed by context, so
#: that two appliances in one process never mix theirs)
SESSIONS: Final = TlsSessions()
