"""The client side of POP3 (RFC 1939, 2449, 5034) as a sans-IO state machine.

Each command method returns the bytes to write and remembers the command in a queue, so
commands may be pipelined (RFC 2449 PIPELINING); each status line from the server is matched to
the oldest unanswered command. The core knows which answers are multi-line (CAPA, LIST and UIDL
without argument, RETR, TOP) and un-stuffs their bodies in bulk with the native DotUnstuffer:
only CRLF ``.`` CRLF ends a body, a bare LF never does. The greeting is the first reply. This
module must never touch sockets or trio, and never sends a byte on its own.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from kim_appliance._native import DotUnstuffer

from ._auth import APOP_TIMESTAMP, apop_digest, encode_plain
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import NEED_DATA, BodyChunk, BodyEnd, ConnectionClosed, Pop3Reply
from ._parse import MAX_COMMAND_LINE, LineBuffer, TooLong

# RFC 2449 §8 limits a response line to 512 octets; real servers send longer greetings and
# IMPLEMENTATION lines, so the client accepts this much before calling the server broken.
MAX_REPLY_LINE = 4096

_RESP_CODE = re.compile(r"\[([A-Za-z0-9-]+(?:/[A-Za-z0-9-]+)*)\] ?")

ClientEvent = Pop3Reply | BodyChunk | BodyEnd | ConnectionClosed


@dataclass
class _Sent:
    command: str
    multiline: bool
    sasl_response: str | None = None  # AUTH PLAIN without initial response: sent after "+ "
    challenged: bool = False  # the "+ " challenge has arrived


class Pop3Client:
    """One POP3 client session (one connection).

    Error handling: anything the server sends that breaks the protocol (a reply nobody asked
    for, a line that is neither ``+OK`` nor ``-ERR``, EOF inside an answer) raises
    :class:`RemoteProtocolError`; misuse by the caller raises :class:`LocalProtocolError`.
    """

    def __init__(self) -> None:
        self._lines = LineBuffer()
        self._queue: deque[_Sent] = deque([_Sent("GREETING", False)])
        self._unstuffer: DotUnstuffer | None = None
        self._body_of = ""
        self._end_next = False
        self.apop_timestamp: str | None = None

    # --- receiving ----------------------------------------------------------------------------

    @property
    def pending_commands(self) -> tuple[str, ...]:
        """Commands sent and not yet answered, oldest first (``"GREETING"`` at the start)."""
        return tuple(s.command for s in self._queue)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the server; ``b""`` means the server closed the connection."""
        if data:
            self._lines.feed(data)
        else:
            self._lines.eof = True

    def next_event(self) -> ClientEvent | type[NEED_DATA]:
        """The next reply, body chunk or body end, or :class:`NEED_DATA`."""
        if self._unstuffer is not None:
            return self._body_event(self._unstuffer)
        if self._end_next:
            self._end_next = False
            return BodyEnd()
        line = self._lines.next_line(MAX_REPLY_LINE)
        if line is None:
            if not self._lines.eof:
                return NEED_DATA
            if self._queue:
                raise RemoteProtocolError(
                    f"connection closed before the answer to {self._queue[0].command}"
                )
            return ConnectionClosed()
        if isinstance(line, TooLong):
            raise RemoteProtocolError(f"reply line longer than {MAX_REPLY_LINE} octets")
        if not self._queue:
            raise RemoteProtocolError(f"reply {line[:40]!r} without a command to answer")
        return self._reply(self._queue[0], line)

    def _body_event(self, unstuffer: DotUnstuffer) -> ClientEvent | type[NEED_DATA]:
        data = self._lines.take_all()
        out = unstuffer.feed(data) if data else b""
        if unstuffer.done:
            self._lines.push_front(unstuffer.take_rest())
            self._unstuffer = None
            if out:
                self._end_next = True
                return BodyChunk(out)
            return BodyEnd()
        if out:
            return BodyChunk(out)
        if self._lines.eof:
            raise RemoteProtocolError(
                f"connection closed inside the multi-line answer to {self._body_of}"
            )
        return NEED_DATA

    def _reply(self, sent: _Sent, line: bytes) -> Pop3Reply:
        if (
            sent.sasl_response is not None
            and not sent.challenged
            and (line == b"+" or line.startswith(b"+ "))
        ):  # RFC 5034 §4: "+ " and a base64 challenge (empty for PLAIN)
            sent.challenged = True
            text = line[2:].decode("ascii", "replace")
            return Pop3Reply("AUTH", True, text, continuation=True)
        if line == b"+OK" or line.startswith(b"+OK "):
            ok, rest = True, line[4:]
        elif line == b"-ERR" or line.startswith(b"-ERR "):
            ok, rest = False, line[5:]
        else:
            raise RemoteProtocolError(
                f"answer to {sent.command} must start with +OK or -ERR, got {line[:40]!r}"
            )
        self._queue.popleft()
        text = rest.decode("utf-8", "replace")
        code = None
        match = _RESP_CODE.match(text)
        if match:  # RFC 2449 §8
            code, text = match.group(1).upper(), text[match.end() :]
        timestamp = None
        if sent.command == "GREETING":
            found = APOP_TIMESTAMP.search(text)
            timestamp = self.apop_timestamp = found.group(0) if found else None
        multiline = ok and sent.multiline
        if multiline:
            self._unstuffer = DotUnstuffer()
            self._body_of = sent.command
        return Pop3Reply(sent.command, ok, text, code, multiline, False, timestamp)

    # --- sending ------------------------------------------------------------------------------

    def _send(self, command: str, line: str, *, multiline: bool = False) -> bytes:
        if any(s.sasl_response is not None for s in self._queue):
            raise LocalProtocolError(
                f"{command}: AUTH is waiting for its challenge: continue_auth() or cancel_auth()"
            )
        if "\r" in line or "\n" in line or "\0" in line:
            raise LocalProtocolError(f"{command}: arguments must not contain CR, LF or NUL")
        data = (line + "\r\n").encode("utf-8")
        if len(data) > MAX_COMMAND_LINE:
            raise LocalProtocolError(
                f"{command}: command line is {len(data)} octets, RFC 2449 allows {MAX_COMMAND_LINE}"
            )
        self._queue.append(_Sent(command, multiline))
        return data

    @staticmethod
    def _word(field: str, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise LocalProtocolError(f"{field} {value!r}: must be one word without spaces")
        return value

    @staticmethod
    def _number(field: str, value: int, minimum: int) -> int:
        if value < minimum:
            raise LocalProtocolError(f"{field} {value}: must be at least {minimum}")
        return value

    def user(self, name: str) -> bytes:
        return self._send("USER", f"USER {self._word('username', name)}")

    def pass_(self, password: str) -> bytes:
        if not password:
            raise LocalProtocolError("PASS: the password must not be empty")
        return self._send("PASS", f"PASS {password}")

    def apop(self, name: str, secret: str) -> bytes:
        """APOP with the digest of the greeting's timestamp and ``secret`` (RFC 1939 §7)."""
        if self.apop_timestamp is None:
            raise LocalProtocolError("APOP: the greeting carried no timestamp (read it first)")
        digest = apop_digest(self.apop_timestamp, secret)
        return self._send("APOP", f"APOP {self._word('username', name)} {digest}")

    def auth_plain(
        self, username: str, password: str, *, initial_response: bool | None = None
    ) -> bytes:
        """AUTH PLAIN (RFC 5034, RFC 4616). With ``initial_response=None`` the credentials go
        on the command line when it fits in 255 octets, else after the ``+ `` challenge."""
        b64 = encode_plain(username, password)
        line = f"AUTH PLAIN {b64}"
        if initial_response is None:
            initial_response = len(line) + 2 <= MAX_COMMAND_LINE
        if initial_response:
            return self._send("AUTH", line)
        data = self._send("AUTH", "AUTH PLAIN")
        self._queue[-1].sasl_response = b64
        return data

    def _challenged_auth(self) -> _Sent:
        for sent in self._queue:
            if sent.sasl_response is not None and sent.challenged:
                return sent
        raise LocalProtocolError("no AUTH challenge to answer")

    def continue_auth(self) -> bytes:
        """The SASL PLAIN response to the ``+ `` challenge (after a continuation Pop3Reply)."""
        sent = self._challenged_auth()
        data = f"{sent.sasl_response}\r\n".encode("ascii")
        sent.sasl_response = None
        return data

    def cancel_auth(self) -> bytes:
        """``*``: cancel the AUTH exchange (RFC 5034 §4); the server answers -ERR."""
        self._challenged_auth().sasl_response = None
        return b"*\r\n"

    def capa(self) -> bytes:
        return self._send("CAPA", "CAPA", multiline=True)

    def stat(self) -> bytes:
        return self._send("STAT", "STAT")

    def list(self, n: int | None = None) -> bytes:
        if n is None:
            return self._send("LIST", "LIST", multiline=True)
        return self._send("LIST", f"LIST {self._number('message number', n, 1)}")

    def uidl(self, n: int | None = None) -> bytes:
        if n is None:
            return self._send("UIDL", "UIDL", multiline=True)
        return self._send("UIDL", f"UIDL {self._number('message number', n, 1)}")

    def retr(self, n: int) -> bytes:
        return self._send("RETR", f"RETR {self._number('message number', n, 1)}", multiline=True)

    def top(self, n: int, lines: int) -> bytes:
        msg = self._number("message number", n, 1)
        return self._send(
            "TOP", f"TOP {msg} {self._number('line count', lines, 0)}", multiline=True
        )

    def dele(self, n: int) -> bytes:
        return self._send("DELE", f"DELE {self._number('message number', n, 1)}")

    def rset(self) -> bytes:
        return self._send("RSET", "RSET")

    def noop(self) -> bytes:
        return self._send("NOOP", "NOOP")

    def quit(self) -> bytes:
        return self._send("QUIT", "QUIT")
