"""The sans-IO SMTP client core: commands out as bytes, replies in as :class:`ServerReply`.

It keeps a queue of the commands sent and not yet answered, so that with PIPELINING (RFC 2920)
every reply is matched to its command; it runs the AUTH LOGIN exchange, learns the server's
extensions from the EHLO reply and refuses to use one the server did not announce. The body is
dot-stuffed in bulk by the native :class:`~kim_appliance._native.DotStuffer`. It must never do
I/O, import trio, retry, or decide what to do about a refusal: that is the caller's job.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections import deque

from kim_appliance._native import DotStuffer

from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import NEED_DATA, ConnectionClosed, OriginalRecipient
from ._parse import CommandError, parse_path, xtext_encode
from ._replies import ReplyReader, ServerReply

_EXTENSION_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9\-]*)(?:([ =])(.*))?")
_NOTIFY = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})


class SmtpClient:
    """One client side SMTP session.

    Call a command method, write the bytes it returns, feed what the server sends with
    ``receive_data`` and read :class:`ServerReply` events with ``next_event``; each carries the
    ``command`` it answers (``"GREETING"`` first). Commands may be pipelined (RFC 2920) except
    that EHLO, AUTH and DATA must have been answered before the next step depends on them.

    Error handling: a malformed or unrequested reply, an overlong line, or EOF while a reply is
    still due raises :class:`RemoteProtocolError`; misuse (body before 354, a parameter the
    server did not announce, an address with bad syntax) raises :class:`LocalProtocolError`.
    """

    def __init__(self, *, hostname: str) -> None:
        self.hostname = hostname
        self._reader = ReplyReader()
        self._expecting: deque[str] = deque(["GREETING"])
        self._extensions: dict[str, str] = {}
        self._eof = False
        self._finished = False  # a 221 or 421 arrived: the server closes
        self._stuffer: DotStuffer | None = None  # set between 354 and end_body()
        self._sasl_responses: deque[str] = deque()
        self._challenge_pending = False

    # --- replies ----------------------------------------------------------------------------

    @property
    def extensions(self) -> dict[str, str]:
        """EHLO keywords (upper case) and their parameters, e.g. ``{"SIZE": "734003200"}``."""
        return dict(self._extensions)

    @property
    def awaiting(self) -> tuple[str, ...]:
        """The commands sent and not yet answered, oldest first."""
        return tuple(self._expecting)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; ``b""`` means it closed the connection."""
        if not data:
            self._eof = True
        else:
            self._reader.feed(data)

    def next_event(self) -> ServerReply | ConnectionClosed | type[NEED_DATA]:
        reply = self._reader.next_reply()
        if reply is None:
            if not self._eof:
                return NEED_DATA
            if self._reader.pending:
                raise RemoteProtocolError("server closed the connection in the middle of a reply")
            if self._expecting and not self._finished:
                raise RemoteProtocolError(
                    f"server closed the connection; the reply to {self._expecting[0]} is missing"
                )
            return ConnectionClosed("eof")
        if not self._expecting:
            if reply.code == 421:  # RFC 5321 §3.8: a server may close at any time with 421
                self._finished = True
                return reply
            raise RemoteProtocolError(f"reply {reply.code} {reply.text[:80]!r}: nothing was asked")
        command = self._expecting[0]
        if reply.code == 334:
            if command != "AUTH":
                raise RemoteProtocolError(f"reply 334 to {command}: only AUTH may get 334")
            self._challenge_pending = True
            return dataclasses.replace(reply, command=command)
        if reply.code == 354 and command != "DATA":
            raise RemoteProtocolError(f"reply 354 to {command}: only DATA may get 354")
        if command == "DATA" and reply.code < 400 and reply.code != 354:
            raise RemoteProtocolError(f"reply {reply.code} to DATA: expected 354 or an error")
        self._expecting.popleft()
        if command == "DATA" and reply.code == 354:
            self._stuffer = DotStuffer()
        elif command == "EHLO" and reply.code == 250:
            self._extensions = _parse_extensions(reply.lines[1:])
        elif command == "AUTH":
            self._sasl_responses.clear()
            self._challenge_pending = False
        if reply.code in (221, 421):
            self._finished = True
        return dataclasses.replace(reply, command=command)

    # --- commands ---------------------------------------------------------------------------

    def _command(self, verb: str, line: str) -> bytes:
        if "\r" in line or "\n" in line:
            raise LocalProtocolError(f"{verb}: CR or LF inside the command")
        if self._stuffer is not None:
            raise LocalProtocolError(f"{verb}: the body is being sent; call end_body() first")
        self._expecting.append(verb)
        return (line + "\r\n").encode("utf-8")

    def ehlo(self) -> bytes:
        self._extensions = {}
        return self._command("EHLO", f"EHLO {self.hostname}")

    def helo(self) -> bytes:
        self._extensions = {}
        return self._command("HELO", f"HELO {self.hostname}")

    def auth_plain(self, username: str, password: str, authzid: str = "") -> bytes:
        """AUTH PLAIN with the initial response (RFC 4954 §4, RFC 4616)."""
        if any("\0" in field for field in (username, password, authzid)):
            raise LocalProtocolError("AUTH PLAIN: NUL inside authzid, username or password")
        self._need_extension("AUTH", "AUTH PLAIN")
        raw = f"{authzid}\0{username}\0{password}".encode()
        return self._command("AUTH", "AUTH PLAIN " + base64.b64encode(raw).decode("ascii"))

    def auth_login(self, username: str, password: str) -> bytes:
        """AUTH LOGIN; answer each 334 challenge with :meth:`auth_continue`."""
        self._need_extension("AUTH", "AUTH LOGIN")
        fields = (username, password)
        self._sasl_responses = deque(base64.b64encode(f.encode()).decode("ascii") for f in fields)
        return self._command("AUTH", "AUTH LOGIN")

    def auth_continue(self) -> bytes:
        """The answer to the 334 challenge just received (LOGIN: username, then password)."""
        if not self._challenge_pending or not self._sasl_responses:
            raise LocalProtocolError("auth_continue(): no 334 challenge is waiting for an answer")
        self._challenge_pending = False
        return (self._sasl_responses.popleft() + "\r\n").encode("ascii")

    def auth_cancel(self) -> bytes:
        """Cancel the SASL exchange after a 334 (RFC 4954 §4); the server answers 501."""
        if not self._challenge_pending:
            raise LocalProtocolError("auth_cancel(): no 334 challenge is pending")
        self._challenge_pending = False
        self._sasl_responses.clear()
        return b"*\r\n"

    def mail(
        self,
        address: str,
        *,
        size: int | None = None,
        body: str | None = None,
        ret: str | None = None,
        envid: str | None = None,
    ) -> bytes:
        """MAIL FROM:<address> with SIZE (RFC 1870), BODY (RFC 6152), RET/ENVID (RFC 3461)."""
        parts = [f"MAIL FROM:{_path(address, role='sender')}"]
        if size is not None:
            self._need_extension("SIZE", "SIZE=")
            if size < 0:
                raise LocalProtocolError(f"SIZE={size}: must not be negative")
            parts.append(f"SIZE={size}")
        if body is not None:
            if body.upper() not in ("7BIT", "8BITMIME"):
                raise LocalProtocolError(f"BODY={body}: must be 7BIT or 8BITMIME")
            if body.upper() == "8BITMIME":
                self._need_extension("8BITMIME", "BODY=8BITMIME")
            parts.append(f"BODY={body.upper()}")
        if ret is not None:
            self._need_extension("DSN", "RET=")
            if ret.upper() not in ("FULL", "HDRS"):
                raise LocalProtocolError(f"RET={ret}: must be FULL or HDRS")
            parts.append(f"RET={ret.upper()}")
        if envid is not None:
            self._need_extension("DSN", "ENVID=")
            parts.append(f"ENVID={xtext_encode(envid)}")
        return self._command("MAIL", " ".join(parts))

    def rcpt(
        self,
        address: str,
        *,
        notify: frozenset[str] | set[str] | tuple[str, ...] | None = None,
        orcpt: OriginalRecipient | str | None = None,
    ) -> bytes:
        """RCPT TO:<address> with NOTIFY and ORCPT (RFC 3461 §4.1, §4.2).

        ``orcpt`` given as a plain string means ``rfc822;<string>``.
        """
        parts = [f"RCPT TO:{_path(address, role='recipient')}"]
        if notify is not None:
            self._need_extension("DSN", "NOTIFY=")
            items = [item.upper() for item in notify]
            if not items or not set(items) <= _NOTIFY or ("NEVER" in items and len(items) > 1):
                raise LocalProtocolError(f"NOTIFY={notify}: NEVER, or SUCCESS/FAILURE/DELAY")
            order = ["NEVER", "SUCCESS", "FAILURE", "DELAY"]
            parts.append("NOTIFY=" + ",".join(k for k in order if k in items))
        if orcpt is not None:
            self._need_extension("DSN", "ORCPT=")
            if isinstance(orcpt, str):
                orcpt = OriginalRecipient("rfc822", orcpt)
            parts.append(f"ORCPT={orcpt.addr_type};{xtext_encode(orcpt.address)}")
        return self._command("RCPT", " ".join(parts))

    def data(self) -> bytes:
        return self._command("DATA", "DATA")

    def body(self, chunk: bytes) -> bytes:
        """A piece of the message, dot-stuffed; only after the 354 reply to DATA."""
        if self._stuffer is None:
            raise LocalProtocolError("body(): the server has not answered DATA with 354")
        return self._stuffer.update(chunk)

    def end_body(self) -> bytes:
        """The end of the message: CRLF if missing, then ``.`` CRLF."""
        if self._stuffer is None:
            raise LocalProtocolError("end_body(): the server has not answered DATA with 354")
        out = self._stuffer.finalize()
        self._stuffer = None
        self._expecting.append("END-OF-DATA")
        return out

    def rset(self) -> bytes:
        return self._command("RSET", "RSET")

    def noop(self) -> bytes:
        return self._command("NOOP", "NOOP")

    def quit(self) -> bytes:
        return self._command("QUIT", "QUIT")

    def _need_extension(self, keyword: str, what: str) -> None:
        if keyword not in self._extensions:
            raise LocalProtocolError(f"{what}: the server did not announce {keyword} in EHLO")


def _path(address: str, *, role: str) -> str:
    try:
        parsed, rest = parse_path(f"<{address}>", role=role, null_ok=role == "sender")
    except CommandError as error:
        raise LocalProtocolError(error.reply.text) from None
    if rest:
        raise LocalProtocolError(f"{role} address {address!r}: bad syntax")
    return f"<{parsed}>"


def _parse_extensions(lines: tuple[str, ...]) -> dict[str, str]:
    """EHLO keyword lines (RFC 5321 §4.1.1.1); ``AUTH=...`` (old style) only fills a gap."""
    extensions: dict[str, str] = {}
    old_style: dict[str, str] = {}
    for line in lines:
        match = _EXTENSION_RE.fullmatch(line.strip())
        if match is None:
            continue  # not an extension line: ignore, as RFC 5321 §4.1.1.1 clients must
        keyword, sep, params = match.group(1).upper(), match.group(2), match.group(3) or ""
        (old_style if sep == "=" else extensions)[keyword] = params.strip()
    for keyword, params in old_style.items():
        extensions.setdefault(keyword, params)
    return extensions
