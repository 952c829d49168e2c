"""The sans-IO SMTP server core: bytes in, events out; replies in, bytes out.

The core does everything RFC 5321 lets a server decide without knowing its users: it parses and
checks every command, runs the SASL exchange, answers HELO/EHLO/NOOP/RSET/VRFY/QUIT and every
error itself, and leaves the decisions (AUTH credentials, MAIL, RCPT, DATA, the message) to the
application through *decision* events that block further parsing until ``send`` answers them.
DATA is unstuffed in bulk by the native :class:`~kim_appliance._native.DotUnstuffer`, which ends
the body only at CRLF.CRLF (no SMTP smuggling through bare LF or CR). It must never do I/O,
import trio, look at the message contents or decide who may send what.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable

from kim_appliance._native import DotUnstuffer

from ._errors import LocalProtocolError
from ._events import (
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
    ProtocolViolation,
    Quit,
    RcptTo,
    Rset,
    ServerEvent,
    Vrfy,
)
from ._parse import (
    CommandError,
    decode_login_field,
    decode_sasl,
    parse_auth,
    parse_mail,
    parse_plain,
    parse_rcpt,
    split_command,
    syntax_error,
)
from ._replies import Reply
from ._state import (
    ACCEPTING_CODES,
    AFTER_ANY_REPLY,
    KNOWN_VERBS,
    NEEDS_AUTH,
    NOT_IMPLEMENTED,
    TRANSITIONS,
    State,
)

# RFC 4954 §4: an AUTH command line and a SASL response may be up to 12288 octets.
MAX_SASL_LINE = 12288
_DOMAIN_ARG_RE = re.compile(r"[\x21-\x7e]+")
_LOGIN_USERNAME = "VXNlcm5hbWU6"  # base64 "Username:" (draft-murchison-sasl-login)
_LOGIN_PASSWORD = "UGFzc3dvcmQ6"  # base64 "Password:"


# The verb whose accepting codes (``_state.ACCEPTING_CODES``) answer each decision event.
_DECISION_VERB: dict[type, str] = {
    AuthAttempt: "AUTH",
    MailFrom: "MAIL",
    RcptTo: "RCPT",
    DataStart: "DATA",
    DataEnd: "END-OF-DATA",
}


class _TooLong:
    """Marker: the command line went over the limit and is being discarded."""


class SmtpServer:
    """One server side SMTP session (RFC 5321 with SIZE, 8BITMIME, ENHANCEDSTATUSCODES, DSN,
    AUTH PLAIN/LOGIN, PIPELINING).

    Drive it like h11: ``receive_data(bytes)`` (``b""`` at EOF), then ``next_event()`` until it
    returns :data:`NEED_DATA`, writing ``data_to_send()`` to the peer. A decision event
    (AuthAttempt, MailFrom, RcptTo, DataStart, DataEnd) must be answered with ``send(reply)``
    before ``next_event`` is called again. ``send`` returns every queued reply followed by the
    answer, so replies leave in command order.

    Error handling: nothing the peer sends raises; every problem becomes a reply (and a
    :class:`ProtocolViolation` event) and the session goes on, until ``max_bad_commands`` such
    problems close it with 421 4.7.0. Misuse by the application raises
    :class:`LocalProtocolError`.

    Resource handling: a command line is buffered up to ``max_command_line`` octets (RFC 5321
    §4.5.3.1.4: 512 with CRLF); a longer one is answered 500 5.5.6 and discarded up to the next
    LF. DATA is passed on as it arrives and never buffered whole.
    """

    def __init__(
        self,
        *,
        hostname: str,
        max_message_size: int,
        max_recipients: int = 100,
        auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
        require_auth: bool = True,
        max_command_line: int = 512,
        max_bad_commands: int = 20,
    ) -> None:
        unknown = set(auth_mechanisms) - {"PLAIN", "LOGIN"}
        if unknown:
            raise LocalProtocolError(f"auth_mechanisms {sorted(unknown)}: only PLAIN and LOGIN")
        if max_message_size < 0 or max_recipients < 1 or max_bad_commands < 1:
            raise LocalProtocolError("limits: max_message_size >= 0, others >= 1")
        self.hostname = hostname
        self.max_message_size = max_message_size
        self.max_recipients = max_recipients
        self.auth_mechanisms = auth_mechanisms
        self.require_auth = require_auth
        self.max_command_line = max_command_line
        self.max_bad_commands = max_bad_commands

        self._state = State.GREETED
        self._authenticated = False
        self._buffer = bytearray()
        self._eof = False
        self._discarding = False
        self._out = bytearray()
        self._events: deque[ServerEvent] = deque()
        self._pending: str | None = None  # decision verb waiting for send()
        self._recipients = 0
        self._bad_commands = 0
        self._close_reason = ""
        # SASL exchange in progress: (mechanism, username so far) or None
        self._sasl: tuple[str, str | None] | None = None
        self._unstuffer: DotUnstuffer | None = None
        self._data_size = 0
        self._too_big = False

    # --- public API ------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    def greeting(self, text: str = "ESMTP ready") -> bytes:
        """The 220 banner (digest §1.3: it must contain "ESMTP")."""
        return Reply(220, None, f"{self.hostname} {text}").encode()

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if self._state is State.CLOSED:
            return  # the session is over; whatever still arrives is ignored
        if self._eof and data:
            raise LocalProtocolError("receive_data after EOF")
        if not data:
            self._eof = True
        else:
            self._buffer += data

    def next_event(self) -> ServerEvent | type[NEED_DATA]:
        """The next event, or :data:`NEED_DATA` if the buffered bytes do not make one."""
        if self._pending is not None:
            raise LocalProtocolError(f"answer the pending {self._pending} with send() first")
        while True:
            if self._events:
                return self._emit(self._events.popleft())
            if self._state is State.CLOSED:
                return ConnectionClosed(self._close_reason)
            if self._state is State.DATA:
                data_event = self._next_data_event()
                if data_event is None:
                    continue
                return data_event
            line = self._next_line()
            if line is None:
                if self._eof:
                    self._close("eof")
                    continue
                return NEED_DATA
            event = self._handle_line(line)
            if event is not None:
                return self._emit(event)

    def send(self, reply: Reply, *, close: bool = False) -> bytes:
        """Answer the pending decision event; returns all queued replies, then this one.

        Accept with the verb's accepting code (AUTH 235, MAIL 250, RCPT 250/251, DATA 354,
        end of DATA 250) or refuse with any 4xx/5xx. A 421 reply, or ``close=True``, ends the
        session.
        """
        verb = self._pending
        if verb is None:
            raise LocalProtocolError("send(): no decision is pending")
        accepting = ACCEPTING_CODES[verb]
        if reply.code not in accepting and reply.code < 400:
            raise LocalProtocolError(
                f"reply {reply.code} to {verb}: accept with {sorted(accepting)} "
                "or refuse with 4xx/5xx"
            )
        self._pending = None
        if reply.code in accepting:
            self._state = TRANSITIONS[self._state][verb]
            if verb == "AUTH":
                self._authenticated = True
            elif verb == "MAIL":
                self._recipients = 0
            elif verb == "RCPT":
                self._recipients += 1
            elif verb == "DATA":
                self._unstuffer = DotUnstuffer()
                self._data_size = 0
                self._too_big = False
        if verb in AFTER_ANY_REPLY:
            self._state = AFTER_ANY_REPLY[verb]
            self._unstuffer = None
            self._recipients = 0
        self._out += reply.encode()
        if close or reply.code == 421:
            self._close("closed by the application")
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """The replies the core queued itself (EHLO, errors, 334 challenges ...)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def abort(self, reply: Reply) -> bytes:
        """End the session now (idle timeout, shutdown): queued replies, then ``reply``."""
        self._pending = None
        self._out += reply.encode()
        self._close("closed by the application")
        return self.data_to_send()

    # --- internals ---------------------------------------------------------------------------

    def _emit(self, event: ServerEvent) -> ServerEvent:
        self._pending = _DECISION_VERB.get(type(event))
        return event

    def _close(self, reason: str) -> None:
        self._state = State.CLOSED
        self._close_reason = reason
        self._buffer.clear()
        self._unstuffer = None
        self._sasl = None

    def _line_limit(self) -> int:
        if self._sasl is not None or self._buffer[:5].upper() == b"AUTH ":
            return max(MAX_SASL_LINE, self.max_command_line)
        return self.max_command_line

    def _next_line(self) -> bytes | type[_TooLong] | None:
        """The next command line without its line end; bare LF is accepted in commands."""
        while True:
            newline = self._buffer.find(b"\n")
            if self._discarding:
                if newline < 0:
                    self._buffer.clear()
                    return None
                del self._buffer[: newline + 1]
                self._discarding = False
                continue
            limit = self._line_limit()
            if newline < 0:
                if len(self._buffer) > limit:
                    self._buffer.clear()
                    self._discarding = True
                    return _TooLong
                return None
            if newline + 1 > limit:
                del self._buffer[: newline + 1]
                return _TooLong
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            return line[:-1] if line.endswith(b"\r") else line

    def _next_data_event(self) -> ServerEvent | type[NEED_DATA] | None:
        unstuffer = self._unstuffer
        assert unstuffer is not None
        if not self._buffer:
            if self._eof:
                self._close("eof")
                return None
            return NEED_DATA
        chunk = bytes(self._buffer)
        self._buffer.clear()
        body = unstuffer.feed(chunk)
        self._data_size += len(body)
        if self._data_size > self.max_message_size:
            self._too_big = True  # swallow the rest; RFC 1870 §6.1
        chunk_event = DataChunk(body) if body and not self._too_big else None
        if unstuffer.done:
            self._buffer += unstuffer.take_rest()
            end = DataEnd(
                size=self._data_size,
                bare_lf=unstuffer.bare_lf,
                bare_cr=unstuffer.bare_cr,
                longest_line=unstuffer.longest_line,
                too_big=self._too_big,
            )
            if chunk_event is None:
                return self._emit(end)
            self._events.append(end)
        return chunk_event

    def _violation(self, reply: Reply, line: bytes, *, counts: bool = True) -> ProtocolViolation:
        """Queue an error reply; too many of them end the session with 421 4.7.0."""
        if counts:
            self._bad_commands += 1
            if self._bad_commands >= self.max_bad_commands:
                reply = Reply(421, "4.7.0", f"{self.hostname} too many errors, closing")
                self._out += reply.encode()
                self._close("too many bad commands")
                return ProtocolViolation(reply, line[:200])
        self._out += reply.encode()
        return ProtocolViolation(reply, line[:200])

    def _reply(self, reply: Reply) -> None:
        self._out += reply.encode()

    def _reset_transaction(self) -> None:
        self._recipients = 0
        if self._state is not State.GREETED:
            self._state = State.READY

    def _handle_line(self, raw: bytes | type[_TooLong]) -> ServerEvent | None:
        if raw is _TooLong:
            self._sasl = None
            return self._violation(Reply(500, "5.5.6", "command line too long"), b"")
        assert isinstance(raw, bytes)
        try:
            if self._sasl is not None:
                return self._sasl_step(raw)
            return self._command(raw)
        except CommandError as error:
            counts = error.reply.code not in (452, 552)
            return self._violation(error.reply, raw, counts=counts)

    def _command(self, raw: bytes) -> ServerEvent | None:
        line = raw.decode("latin-1")
        verb, argument = split_command(line)
        if verb not in KNOWN_VERBS:
            if verb in NOT_IMPLEMENTED:
                raise CommandError(Reply(502, "5.5.1", f"{verb}: command not implemented"))
            raise CommandError(Reply(500, "5.5.2", f"{verb[:20]!r}: command not recognized"))
        if not line.isascii():
            raise syntax_error(f"{verb}: command line contains non-ASCII octets")
        state = self._state
        if (
            verb in NEEDS_AUTH
            and self.require_auth
            and not self._authenticated
            and state is not State.GREETED
        ):
            raise CommandError(Reply(530, "5.7.0", f"{verb}: authentication required"))
        if verb not in TRANSITIONS[state]:
            raise CommandError(Reply(503, "5.5.1", _out_of_sequence(verb, state)))
        handler: Callable[[str], ServerEvent | None] = getattr(self, f"_do_{verb.lower()}")
        return handler(argument)

    # --- commands the core answers itself -----------------------------------------------------

    def _do_ehlo(self, argument: str) -> ServerEvent:
        domain = _domain_argument("EHLO", argument)
        self._reset_transaction()
        self._state = State.READY
        keywords = ["PIPELINING", f"SIZE {self.max_message_size}", "8BITMIME"]
        keywords += ["ENHANCEDSTATUSCODES", "DSN"]
        if self.auth_mechanisms:
            keywords.append("AUTH " + " ".join(self.auth_mechanisms))
        # RFC 2034 §3: no enhanced code in the answer to EHLO.
        self._reply(Reply(250, None, "\n".join([self.hostname, *keywords])))
        return Ehlo(domain)

    def _do_helo(self, argument: str) -> ServerEvent:
        domain = _domain_argument("HELO", argument)
        self._reset_transaction()
        self._state = State.READY
        self._reply(Reply(250, None, self.hostname))
        return Helo(domain)

    def _do_noop(self, argument: str) -> ServerEvent:
        self._reply(Reply(250, "2.0.0", "OK"))
        return Noop()

    def _do_help(self, argument: str) -> None:
        self._reply(Reply(214, "2.0.0", "see RFC 5321"))

    def _do_vrfy(self, argument: str) -> ServerEvent:
        if not argument:
            raise syntax_error("VRFY: needs an argument")
        self._reply(Reply(252, "2.5.0", "cannot VRFY user, but will accept message"))
        return Vrfy(argument)

    def _do_rset(self, argument: str) -> ServerEvent:
        if argument:
            raise syntax_error("RSET: takes no argument")
        self._reset_transaction()
        self._reply(Reply(250, "2.0.0", "OK"))
        return Rset()

    def _do_quit(self, argument: str) -> ServerEvent:
        self._reply(Reply(221, "2.0.0", f"{self.hostname} closing connection"))
        self._close("quit")
        return Quit()

    # --- commands that need the application's decision --------------------------------------

    def _do_mail(self, argument: str) -> ServerEvent:
        event = parse_mail(argument)
        if event.size is not None and event.size > self.max_message_size:
            raise CommandError(
                Reply(552, "5.3.4", f"SIZE={event.size}: over the limit {self.max_message_size}")
            )
        return event

    def _do_rcpt(self, argument: str) -> ServerEvent:
        event = parse_rcpt(argument)
        if self._recipients >= self.max_recipients:
            raise CommandError(
                Reply(452, "4.5.3", f"too many recipients (at most {self.max_recipients})")
            )
        return event

    def _do_data(self, argument: str) -> ServerEvent:
        if argument:
            raise syntax_error("DATA: takes no argument")
        return DataStart()

    def _do_auth(self, argument: str) -> ServerEvent | None:
        if self._authenticated:
            raise CommandError(Reply(503, "5.5.1", "AUTH: already authenticated"))
        mechanism, initial = parse_auth(argument)
        if mechanism not in self.auth_mechanisms:
            # digest §1.3: other SASL mechanism -> 504 5.7.4
            raise CommandError(Reply(504, "5.7.4", f"AUTH {mechanism}: mechanism not supported"))
        if initial is None:
            self._sasl = (mechanism, None)
            challenge = "" if mechanism == "PLAIN" else _LOGIN_USERNAME
            self._out += f"334 {challenge}\r\n".encode()
            return None
        if initial == "*":
            raise CommandError(Reply(501, "5.0.0", "AUTH: cancelled"))
        if mechanism == "PLAIN":
            return AuthAttempt("PLAIN", *parse_plain(decode_sasl(initial)))
        self._sasl = ("LOGIN", decode_login_field(decode_sasl(initial), "username"))
        self._out += f"334 {_LOGIN_PASSWORD}\r\n".encode()
        return None

    def _sasl_step(self, raw: bytes) -> ServerEvent | None:
        assert self._sasl is not None
        mechanism, username = self._sasl
        self._sasl = None
        text = raw.decode("latin-1").strip(" ")
        if text == "*":  # RFC 4954 §4: the client cancels
            raise CommandError(Reply(501, "5.0.0", "AUTH: cancelled"))
        decoded = decode_sasl(text)
        if mechanism == "PLAIN":
            return AuthAttempt("PLAIN", *parse_plain(decoded))
        if username is None:
            self._sasl = ("LOGIN", decode_login_field(decoded, "username"))
            self._out += f"334 {_LOGIN_PASSWORD}\r\n".encode()
            return None
        return AuthAttempt("LOGIN", "", username, decode_login_field(decoded, "password"))


def _domain_argument(verb: str, argument: str) -> str:
    if not _DOMAIN_ARG_RE.fullmatch(argument):
        raise syntax_error(f"{verb}: needs exactly one domain or address literal")
    return argument


def _out_of_sequence(verb: str, state: State) -> str:
    if state is State.GREETED:
        return f"{verb}: send EHLO first"
    if verb == "MAIL":
        return "MAIL: a mail transaction is already open (RSET first)"
    if verb == "RCPT":
        return "RCPT: need MAIL first"
    if verb == "DATA":
        return "DATA: no valid recipients" if state is State.MAIL else "DATA: need MAIL first"
    if verb == "AUTH":
        return "AUTH: not allowed inside a mail transaction"
    return f"{verb}: not allowed now"
