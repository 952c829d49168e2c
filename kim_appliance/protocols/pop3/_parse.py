"""Line framing and command parsing for the POP3 cores.

:class:`LineBuffer` cuts the byte stream into lines, never holding more than one line's limit:
a longer line is reported once as :data:`TOO_LONG` and the rest of it is swallowed up to the
next LF, so the session resynchronises (the Stalwart parser's error state). :func:`parse_command`
splits a command line into a case-insensitive keyword and its arguments; :func:`parse_number`
reads a decimal argument with an overflow check. Nothing here knows the session state, and
nothing here may raise anything but :class:`CommandError` on bad peer input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# RFC 2449 §4: a command line is at most 255 octets, including the terminating CRLF.
MAX_COMMAND_LINE: Final = 255
# A SASL continuation line (RFC 5034 §4) is not bound by the command limit; base64 of the
# longest PLAIN credentials we accept (address + 256-char password, UTF-8) fits easily.
MAX_SASL_LINE: Final = 4096
# A keyword is 3 or 4 characters (RFC 1939 §3); we read up to this many before calling it bad.
MAX_KEYWORD: Final = 16
# Message numbers and line counts: decimal, at most this many digits and this value.
MAX_NUMBER_DIGITS: Final = 10
MAX_NUMBER: Final = 2**31 - 1
# How much of a refused line a ProtocolViolation keeps.
VIOLATION_EXCERPT: Final = 80


class CommandError(Exception):
    """A command line the server answers with ``-ERR``; the message is the reason (ASCII)."""


class TooLong:
    """Marker returned by :meth:`LineBuffer.next_line` for a line over the limit."""


TOO_LONG: Final = TooLong()


class LineBuffer:
    """A receive buffer that hands out LF-terminated lines (a CR before the LF is removed)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already known to hold no LF
        self._discarding = False  # swallowing the rest of an over-long line
        self.eof = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def next_line(self, limit: int) -> bytes | TooLong | None:
        """The next line without its line end, :data:`TOO_LONG` once per line whose length with
        its line end exceeds ``limit``, or None until a whole line is buffered."""
        while True:
            lf = self._buf.find(b"\n", self._scanned)
            if lf < 0:
                if self._discarding:
                    self._buf.clear()
                    self._scanned = 0
                    return None
                if len(self._buf) >= limit:  # the LF still to come makes it longer than limit
                    self._buf.clear()
                    self._scanned = 0
                    self._discarding = True
                    return TOO_LONG
                self._scanned = len(self._buf)
                return None
            line = bytes(self._buf[:lf])
            del self._buf[: lf + 1]
            self._scanned = 0
            if self._discarding:
                self._discarding = False
                continue
            if lf + 1 > limit:
                return TOO_LONG
            return line[:-1] if line.endswith(b"\r") else line

    def take_all(self) -> bytes:
        """Every buffered byte (for a body reader); the buffer is empty afterwards."""
        data = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return data

    def push_front(self, data: bytes) -> None:
        """Put bytes a body reader did not consume back in front of the buffer."""
        self._buf[:0] = data
        self._scanned = 0


@dataclass(frozen=True)
class Command:
    """A parsed command line: upper-case ``keyword``, space-separated ``args``, and ``rest``, the
    text after the keyword and one space exactly as sent (PASS allows spaces, RFC 1939 §7)."""

    keyword: str
    args: tuple[str, ...]
    rest: str


def excerpt(line: bytes) -> bytes:
    """The start of a refused line, for a ProtocolViolation."""
    return line[:VIOLATION_EXCERPT]


def parse_command(line: bytes) -> Command:
    """Split a command line (without CRLF); raise :class:`CommandError` if it is malformed."""
    if not line:
        raise CommandError("empty command line")
    if any(b < 0x20 or b == 0x7F for b in line):
        raise CommandError("control character in command line")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("command line is not valid UTF-8") from None
    keyword, sep, rest = text.partition(" ")
    if not keyword or len(keyword) > MAX_KEYWORD or not keyword.isascii() or not keyword.isalpha():
        raise CommandError("malformed command keyword")
    args = tuple(rest.split()) if sep else ()
    return Command(keyword.upper(), args, rest)


def parse_number(text: str, field: str, *, minimum: int) -> int:
    """A decimal argument, ``minimum`` <= value <= :data:`MAX_NUMBER`, digits checked before
    conversion so that no huge integer is ever built."""
    if not text or not text.isascii() or not text.isdigit():
        raise CommandError(f"{field} must be a decimal number")
    if len(text.lstrip("0")) > MAX_NUMBER_DIGITS:
        raise CommandError(f"{field} is too large")
    value = int(text)
    if value > MAX_NUMBER:
        raise CommandError(f"{field} is too large")
    if value < minimum:
        raise CommandError(f"{field} must be at least {minimum}")
    return value
