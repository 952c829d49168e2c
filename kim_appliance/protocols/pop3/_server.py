"""The server side of POP3 (RFC 1939, 2449, 5034) as a sans-IO state machine.

The core reads command lines, answers everything it can decide alone (CAPA, USER, syntax and
state errors, the SASL continuation, QUIT before login) and hands the rest to the application as
one decision event at a time; the application answers with :meth:`Pop3Server.send` or with
``send_multiline`` / ``send_body`` / ``end_multiline``. Pipelined commands (RFC 2449 PIPELINING)
wait in the buffer until the pending one is answered, and every answer the core wrote itself
before a decision event is returned in front of that event's answer, so the replies leave in
command order. This module must never touch sockets, trio, a clock, or the mailbox: whether a
message exists or a password is right is always the application's decision.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from kim_appliance._native import DotStuffer

from ._auth import APOP_TIMESTAMP, decode_plain, parse_apop_digest
from ._errors import LocalProtocolError
from ._events import (
    NEED_DATA,
    AuthAttempt,
    ConnectionClosed,
    DecisionEvent,
    Dele,
    Event,
    List,
    Noop,
    ProtocolViolation,
    Quit,
    Response,
    Retr,
    Rset,
    Stat,
    Top,
    Uidl,
)
from ._parse import (
    MAX_COMMAND_LINE,
    MAX_SASL_LINE,
    Command,
    CommandError,
    LineBuffer,
    TooLong,
    excerpt,
    parse_command,
    parse_number,
)
from ._state import KNOWN_COMMANDS, SessionState, State

_TOKEN = re.compile(r"[\x21-\x7e]+\Z")
# Commands whose refused line would carry a password: a ProtocolViolation keeps the keyword only.
_SECRET_COMMANDS = frozenset({"PASS", "APOP", "AUTH"})


def _needs_multiline(event: DecisionEvent) -> bool:
    """Whether a successful answer to ``event`` is multi-line (RFC 1939 §5, §7)."""
    return isinstance(event, Retr | Top) or (isinstance(event, List | Uidl) and event.msg is None)


def _nargs(cmd: Command, low: int, high: int, usage: str) -> None:
    if not low <= len(cmd.args) <= high:
        raise CommandError(f"wrong number of arguments, usage: {usage}")


class Pop3Server:
    """One POP3 server session (one connection).

    Resource handling: the receive buffer holds at most one command line (255 octets, RFC 2449
    §4) plus whatever the client pipelined behind a pending command; the application bounds the
    latter by reading no more while :attr:`pending` is set. Error handling: bad input from the
    client never raises; it is answered with ``-ERR`` and reported as a
    :class:`ProtocolViolation`. After ``max_bad_commands`` of those the session closes.
    """

    def __init__(
        self,
        *,
        hostname: str,
        apop_timestamp: str | None = None,
        implementation: str = "kim-appliance",
        max_bad_commands: int = 20,
    ) -> None:
        if not _TOKEN.match(hostname):
            raise LocalProtocolError(f"hostname {hostname!r}: must be one printable ASCII word")
        if apop_timestamp is not None and not APOP_TIMESTAMP.fullmatch(apop_timestamp):
            raise LocalProtocolError(
                f"apop_timestamp {apop_timestamp!r}: must look like <unique@{hostname}>"
            )
        if not implementation or any(c in implementation for c in "\r\n"):
            raise LocalProtocolError(f"implementation {implementation!r}: must be one line")
        if max_bad_commands < 1:
            raise LocalProtocolError("max_bad_commands must be at least 1")
        self.hostname = hostname
        self.apop_timestamp = apop_timestamp
        self.max_bad_commands = max_bad_commands
        self._capabilities = (
            "USER",
            "SASL PLAIN",
            "TOP",
            "UIDL",
            "RESP-CODES",
            "AUTH-RESP-CODE",  # RFC 3206 §3: we may answer -ERR [AUTH]
            "PIPELINING",
            f"IMPLEMENTATION {implementation}",
        )
        self._session = SessionState()
        self._lines = LineBuffer()
        self._out = bytearray()
        self._pending: DecisionEvent | None = None
        self._stuffer: DotStuffer | None = None
        self._user: str | None = None  # USER seen, PASS expected
        self._sasl = False  # "AUTH PLAIN" without initial response: the next line is base64
        self._bad = 0
        self._handlers: dict[str, Callable[[Command], Event | None]] = {
            "CAPA": self._capa,
            "USER": self._user_cmd,
            "PASS": self._pass,
            "APOP": self._apop,
            "AUTH": self._auth,
            "QUIT": self._quit,
            "STAT": lambda c: self._simple(c, Stat()),
            "RSET": lambda c: self._simple(c, Rset()),
            "NOOP": lambda c: self._simple(c, Noop()),
            "LIST": lambda c: self._listing(c, List),
            "UIDL": lambda c: self._listing(c, Uidl),
            "RETR": lambda c: self._one_msg(c, Retr),
            "DELE": lambda c: self._one_msg(c, Dele),
            "TOP": self._top,
        }

    # --- public API ---------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The RFC 1939 session state."""
        return self._session.state

    @property
    def pending(self) -> DecisionEvent | None:
        """The decision event that waits for the application's answer, if any."""
        return self._pending

    def greeting(self) -> bytes:
        """The ``+OK`` greeting; it carries the APOP timestamp when one was given (RFC 1939 §7)."""
        text = f"{self.hostname} POP3 server ready"
        if self.apop_timestamp is not None:
            text += f" {self.apop_timestamp}"
        return Response(True, text).render()

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` means the client closed its side."""
        if not data:
            self._lines.eof = True
        elif self._session.state is not State.CLOSED:
            self._lines.feed(data)

    def next_event(self) -> Event | type[NEED_DATA]:
        """The next event, or :class:`NEED_DATA`. Call :meth:`data_to_send` before reading more:
        the core may have answered commands itself."""
        if self._pending is not None:
            raise LocalProtocolError(
                f"{type(self._pending).__name__} is still waiting for an answer: send() first"
            )
        while True:
            if self._session.state is State.CLOSED:
                return ConnectionClosed()
            limit = MAX_SASL_LINE if self._sasl else MAX_COMMAND_LINE
            line = self._lines.next_line(limit)
            if line is None:
                if self._lines.eof:
                    self._session.close()
                    continue
                return NEED_DATA
            if isinstance(line, TooLong):
                self._sasl = False
                event: Event | None = self._refuse(
                    b"", f"line too long: at most {limit} octets including CRLF"
                )
            elif self._sasl:
                event = self._sasl_response(line)
            else:
                event = self._command(line)
            if event is not None:
                return event

    def send(self, response: Response) -> bytes:
        """Answer the pending decision event with one line; returns the bytes to write."""
        pending = self._require_pending("send")
        if response.ok and _needs_multiline(pending):
            raise LocalProtocolError(
                f"a successful answer to {type(pending).__name__} is multi-line: "
                "use send_multiline(), send_body(), end_multiline()"
            )
        data = self.data_to_send() + response.render()
        self._answered(pending, response.ok)
        return data

    def send_multiline(self, first_line: str) -> bytes:
        """Start the ``+OK`` multi-line answer to a pending RETR, TOP, LIST or UIDL."""
        pending = self._require_pending("send_multiline")
        if not _needs_multiline(pending):
            raise LocalProtocolError(
                f"the answer to {type(pending).__name__} is a single line: use send()"
            )
        data = self.data_to_send() + Response(True, first_line).render()
        self._stuffer = DotStuffer()
        return data

    def send_body(self, chunk: bytes) -> bytes:
        """Body bytes of the open multi-line answer, dot-stuffed (RFC 1939 §3)."""
        if self._stuffer is None:
            raise LocalProtocolError("send_body() without send_multiline()")
        return self._stuffer.update(chunk)

    def end_multiline(self) -> bytes:
        """Finish the multi-line answer: a CRLF if the body lacked one, then ``.`` CRLF."""
        if self._stuffer is None or self._pending is None:
            raise LocalProtocolError("end_multiline() without send_multiline()")
        tail = self._stuffer.finalize()
        self._stuffer = None
        self._answered(self._pending, True)
        return tail

    def data_to_send(self) -> bytes:
        """What the core answered itself since the last call (may be ``b""``)."""
        data = bytes(self._out)
        self._out.clear()
        return data

    # --- answers ------------------------------------------------------------------------------

    def _require_pending(self, what: str) -> DecisionEvent:
        if self._pending is None:
            raise LocalProtocolError(f"{what}(): no command is waiting for an answer")
        if self._stuffer is not None:
            raise LocalProtocolError(f"{what}(): a multi-line answer is open: end_multiline()")
        return self._pending

    def _answered(self, event: DecisionEvent, ok: bool) -> None:
        self._pending = None
        self._session.on_answer(event, ok)

    def _hand_out(self, event: DecisionEvent) -> DecisionEvent:
        self._session.on_event(event)
        self._pending = event
        return event

    def _reply(self, ok: bool, text: str) -> None:
        self._out += Response(ok, text).render()

    def _refuse(self, line: bytes, reason: str) -> ProtocolViolation:
        """Answer a bad line with -ERR; close after too many (a client that is not speaking
        POP3, or probing)."""
        self._bad += 1
        if self._bad >= self.max_bad_commands:
            reason += "; too many bad commands, closing the connection"
            self._session.close()
        response = Response(False, reason)
        self._out += response.render()
        return ProtocolViolation(response, excerpt(line))

    # --- commands -----------------------------------------------------------------------------

    def _command(self, line: bytes) -> Event | None:
        try:
            cmd = parse_command(line)
        except CommandError as exc:
            return self._refuse(line, str(exc))
        if cmd.keyword in _SECRET_COMMANDS:  # keep credentials out of any notice
            line = cmd.keyword.encode()
        if cmd.keyword not in KNOWN_COMMANDS:
            return self._refuse(line, f"unknown command {cmd.keyword}")
        if not self._session.allows(cmd.keyword):
            where = self._session.state.name
            return self._refuse(line, f"{cmd.keyword} is not allowed in the {where} state")
        try:
            return self._handlers[cmd.keyword](cmd)
        except CommandError as exc:
            return self._refuse(line, f"{cmd.keyword}: {exc}")

    def _capa(self, cmd: Command) -> None:
        _nargs(cmd, 0, 0, "CAPA")
        lines = [Response(True, "capability list follows").render()]
        lines += [f"{cap}\r\n".encode() for cap in self._capabilities]
        self._out += b"".join(lines) + b".\r\n"

    def _user_cmd(self, cmd: Command) -> None:
        _nargs(cmd, 1, 1, "USER name")
        self._user = cmd.args[0]
        self._reply(True, f"send PASS for {self._user}")

    def _pass(self, cmd: Command) -> Event:
        if self._user is None:
            raise CommandError("must follow USER")
        if not cmd.rest:
            raise CommandError("wrong number of arguments, usage: PASS password")
        username, self._user = self._user, None
        return self._hand_out(AuthAttempt("USER", username, cmd.rest))

    def _apop(self, cmd: Command) -> Event:
        if self.apop_timestamp is None:
            raise CommandError("not available: the greeting carried no timestamp")
        _nargs(cmd, 2, 2, "APOP name digest")
        digest = parse_apop_digest(cmd.args[1])
        self._user = None
        return self._hand_out(AuthAttempt("APOP", cmd.args[0], None, digest))

    def _auth(self, cmd: Command) -> Event | None:
        _nargs(cmd, 1, 2, "AUTH PLAIN [initial-response]")
        mechanism = cmd.args[0].upper()
        if mechanism != "PLAIN":
            raise CommandError(f"unsupported SASL mechanism {cmd.args[0]}; use PLAIN")
        self._user = None
        if len(cmd.args) == 1:
            self._sasl = True
            self._out += b"+ \r\n"  # RFC 5034 §4: an empty challenge
            return None
        # RFC 5034 §4: "=" is an empty initial response, which PLAIN cannot use.
        username, password = decode_plain("" if cmd.args[1] == "=" else cmd.args[1])
        return self._hand_out(AuthAttempt("PLAIN", username, password))

    def _sasl_response(self, line: bytes) -> Event | None:
        self._sasl = False
        if line == b"*":  # RFC 5034 §4: the client cancels
            self._reply(False, "authentication cancelled")
            return None
        try:
            username, password = decode_plain(line.decode("ascii"))
        except UnicodeDecodeError:
            return self._refuse(b"", "AUTH: response is not valid base64")
        except CommandError as exc:
            return self._refuse(b"", f"AUTH: {exc}")
        return self._hand_out(AuthAttempt("PLAIN", username, password))

    def _quit(self, cmd: Command) -> Event | None:
        _nargs(cmd, 0, 0, "QUIT")
        if self._session.state is State.TRANSACTION:
            return self._hand_out(Quit())
        self._reply(True, f"{self.hostname} POP3 server signing off")
        self._session.close()
        return None

    def _simple(self, cmd: Command, event: DecisionEvent) -> Event:
        _nargs(cmd, 0, 0, cmd.keyword)
        return self._hand_out(event)

    def _listing(self, cmd: Command, kind: type[List] | type[Uidl]) -> Event:
        _nargs(cmd, 0, 1, f"{cmd.keyword} [msg]")
        msg = parse_number(cmd.args[0], "message number", minimum=1) if cmd.args else None
        return self._hand_out(kind(msg))

    def _one_msg(self, cmd: Command, kind: type[Retr] | type[Dele]) -> Event:
        _nargs(cmd, 1, 1, f"{cmd.keyword} msg")
        return self._hand_out(kind(parse_number(cmd.args[0], "message number", minimum=1)))

    def _top(self, cmd: Command) -> Event:
        _nargs(cmd, 2, 2, "TOP msg lines")
        msg = parse_number(cmd.args[0], "message number", minimum=1)
        lines = parse_number(cmd.args[1], "line count", minimum=0)
        return self._hand_out(Top(msg, lines))
