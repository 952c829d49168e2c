"""SMTP replies: the :class:`Reply` a server sends and the :class:`ServerReply` a client reads.

A reply is a three-digit code, an optional enhanced status code (RFC 3463, announced by
ENHANCEDSTATUSCODES, RFC 2034) and one or more text lines; all lines but the last use ``-``
after the code (RFC 5321 §4.2.1). :class:`ReplyReader` parses replies incrementally for the
client with hard limits on line length and line count. This module must never decide what a
reply means for the session: that is the server's and the client's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import LocalProtocolError, RemoteProtocolError

# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; real servers send longer texts, so the
# reader is more generous but still bounded.
MAX_REPLY_LINE = 2048
# RFC 5321 §4.5.3.1.5: what our server sends per reply line, CRLF included.
MAX_SERVER_REPLY_LINE = 512
MAX_REPLY_LINES = 128

_ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_ENHANCED_PREFIX_RE = re.compile(rb"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Reply:
    """A reply the server sends: ``Reply(250, "2.1.0", "sender ok")``.

    ``text`` may hold several lines separated by ``"\\n"``; each becomes one reply line and each
    carries the enhanced code (RFC 2034 §3). Leave ``enhanced`` None for the greeting and the
    answer to HELO/EHLO, which RFC 2034 exempts.
    """

    code: int
    enhanced: str | None = None
    text: str = ""

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise LocalProtocolError(f"reply code {self.code}: must be 200..599")
        if self.enhanced is not None:
            match = _ENHANCED_RE.match(self.enhanced)
            if match is None:
                raise LocalProtocolError(
                    f"enhanced status code {self.enhanced!r}: must be class.subject.detail"
                )
            if match.group(1) != str(self.code)[0] and self.code // 100 != 3:
                raise LocalProtocolError(
                    f"enhanced status code {self.enhanced} does not match reply code {self.code}"
                )
        for line in self.text.split("\n"):
            if _CONTROL_RE.search(line):
                raise LocalProtocolError(f"reply text {line!r}: contains a control character")

    @property
    def lines(self) -> tuple[str, ...]:
        """The text lines (at least one, possibly empty)."""
        return tuple(self.text.split("\n"))

    @property
    def is_positive(self) -> bool:
        """2xx or 3xx."""
        return self.code < 400

    def encode(self) -> bytes:
        """The reply on the wire, every line ending CRLF. A line longer than RFC 5321
        §4.5.3.1.5 allows (512 octets with the CRLF; a text may carry what a client sent, such
        as a long username) is cut at a character boundary and ends in ``...``."""
        prefix = f"{self.enhanced} " if self.enhanced else ""
        lines = self.lines
        out = []
        for index, line in enumerate(lines):
            sep = " " if index == len(lines) - 1 else "-"
            encoded = f"{self.code}{sep}{prefix}{line}".rstrip(" ").encode("utf-8")
            if len(encoded) > MAX_SERVER_REPLY_LINE - 2:
                cut = encoded[: MAX_SERVER_REPLY_LINE - 5].decode("utf-8", "ignore")
                encoded = cut.encode("utf-8") + b"..."
            out.append(encoded + b"\r\n")
        return b"".join(out)


@dataclass(frozen=True)
class ServerReply:
    """A complete reply as the client read it, and the command it answers.

    ``command`` is the verb the reply belongs to (``"GREETING"`` for the 220 banner,
    ``"END-OF-DATA"`` for the reply after the body); ``enhanced`` is the enhanced status code
    of the first line if it carried one; ``lines`` are the texts without code and enhanced code.
    """

    code: int
    enhanced: str | None
    lines: tuple[str, ...]
    command: str = ""

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        """2xx or 3xx (RFC 5321 §4.2.1)."""
        return self.code < 400


class ReplyReader:
    """Incremental parser of server replies (RFC 5321 §4.2).

    Lines end with CRLF (a bare LF is tolerated). Every line of one reply must carry the same
    code; a line longer than :data:`MAX_REPLY_LINE`, a reply of more than
    :data:`MAX_REPLY_LINES` lines, a code outside 200..599 or a bad separator raises
    :class:`RemoteProtocolError`.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[tuple[int, bytes]] = []

    @property
    def pending(self) -> bool:
        """True if a partial reply is buffered."""
        return bool(self._buffer) or bool(self._lines)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_reply(self) -> ServerReply | None:
        """The next complete reply, or None if more data is needed."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    raise RemoteProtocolError(
                        f"reply line: longer than {MAX_REPLY_LINE} octets without a line end"
                    )
                return None
            if newline + 1 > MAX_REPLY_LINE + 2:
                raise RemoteProtocolError(f"reply line: longer than {MAX_REPLY_LINE} octets")
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            code, last, text = _split_line(line)
            if self._lines and self._lines[0][0] != code:
                raise RemoteProtocolError(
                    f"reply line {line!r}: code {code} differs from {self._lines[0][0]} "
                    "of the lines before it"
                )
            self._lines.append((code, text))
            if len(self._lines) > MAX_REPLY_LINES:
                raise RemoteProtocolError(f"reply: more than {MAX_REPLY_LINES} lines")
            if last:
                lines, self._lines = self._lines, []
                return _assemble(code, [text for _, text in lines])


def _split_line(line: bytes) -> tuple[int, bool, bytes]:
    """Code, whether this is the last line, and the text of one reply line."""
    if len(line) < 3 or not line[:3].isdigit():
        raise RemoteProtocolError(f"reply line {line[:80]!r}: does not start with a 3-digit code")
    code = int(line[:3])
    if not 200 <= code <= 599:
        raise RemoteProtocolError(f"reply line {line[:80]!r}: code {code} outside 200..599")
    if len(line) == 3:
        return code, True, b""  # "250" alone is a legal last line (RFC 5321 §4.2)
    sep = line[3:4]
    if sep not in (b" ", b"-"):
        raise RemoteProtocolError(
            f"reply line {line[:80]!r}: code must be followed by space or hyphen"
        )
    return code, sep == b" ", line[4:]


def _assemble(code: int, texts: list[bytes]) -> ServerReply:
    enhanced: str | None = None
    first = _ENHANCED_PREFIX_RE.match(texts[0])
    if first is not None and int(first.group(1)) == code // 100:
        enhanced = first.group(0).decode("ascii").strip()
    lines: list[str] = []
    for text in texts:
        if enhanced is not None and _ENHANCED_PREFIX_RE.match(text):
            text = _ENHANCED_PREFIX_RE.sub(b"", text, count=1)
        lines.append(text.decode("utf-8", errors="replace"))
    return ServerReply(code=code, enhanced=enhanced, lines=tuple(lines))
