"""RFC 5322 header blocks as an ordered list of raw fields, read from the head of a byte stream.

Fields keep their exact bytes (folding included) so that copying a header from the inner to the
outer mail (digest §2.2) never rewrites it: addresses must not be rewritten (digest §2.10). This
module only reads and writes header blocks; it must never touch a body.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from kim_appliance.mail.errors import MailFormatError

#: The longest header block we read before giving up (a header is small; a body is not).
MAX_HEADER_BYTES = 256 * 1024

_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")


@dataclass(frozen=True)
class HeaderField:
    """One header field: its name as written and its value with folding, without the final EOL."""

    name: str
    raw_value: bytes

    @property
    def value(self) -> str:
        """The unfolded value, stripped (RFC 5322 §2.2.3); 8-bit bytes are read as UTF-8."""
        unfolded = re.sub(rb"\r?\n(?=[ \t])", b"", self.raw_value)
        return unfolded.decode("utf-8", errors="replace").strip()

    def encode(self) -> bytes:
        """The field as written, with CRLF line ends (folding kept)."""
        value = re.sub(rb"\r?\n", b"\r\n", self.raw_value)
        return self.name.encode("ascii") + b":" + value + b"\r\n"


@dataclass(frozen=True)
class HeaderBlock:
    fields: tuple[HeaderField, ...]

    def get(self, name: str) -> str | None:
        """The value of the first field called ``name`` (case-insensitive), or None."""
        for field in self.fields:
            if field.name.lower() == name.lower():
                return field.value
        return None

    def get_all(self, name: str) -> list[str]:
        return [f.value for f in self.fields if f.name.lower() == name.lower()]

    def find(self, name: str) -> list[HeaderField]:
        return [f for f in self.fields if f.name.lower() == name.lower()]

    def addresses(self, *names: str) -> list[str]:
        """The bare addresses in the named fields (e.g. To, Cc), in order, as written."""
        values = [v for n in names for v in self.get_all(n)]
        return [addr for _, addr in email.utils.getaddresses(values) if addr]

    def __iter__(self) -> Iterator[HeaderField]:
        return iter(self.fields)

    def encode(self) -> bytes:
        return b"".join(f.encode() for f in self.fields)


def parse_header_block(data: bytes) -> HeaderBlock:
    """Parse a header block (without the empty line that ends it). Accepts CRLF and bare LF.

    Raises :class:`MailFormatError` naming the line for a line that is neither a field nor a
    continuation.
    """
    fields: list[HeaderField] = []
    lines = data.split(b"\n")
    if lines and lines[-1] in (b"", b"\r"):
        lines.pop()
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise MailFormatError(f"header line {number}: continuation line before any field")
            last = fields[-1]
            fields[-1] = HeaderField(last.name, last.raw_value + b"\n" + line)
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _FIELD_NAME.match(name):
            shown = line[:60].decode("ascii", errors="replace")
            raise MailFormatError(f"header line {number} is not a header field: {shown!r}")
        fields.append(HeaderField(name.decode("ascii"), value))
    return HeaderBlock(tuple(fields))


def read_header_block(stream: BinaryIO) -> tuple[HeaderBlock, bytes]:
    """Read the header block from the head of ``stream``.

    Returns the parsed block and the bytes already read past the empty line that ends it (the
    start of the body; the caller goes on reading the stream after them). A stream that ends
    inside the header, or a header over :data:`MAX_HEADER_BYTES`, raises MailFormatError.
    """
    buffer = b""
    while True:
        end = _header_end(buffer)
        if end is not None:
            head_end, body_start = end
            return parse_header_block(buffer[:head_end]), buffer[body_start:]
        if len(buffer) > MAX_HEADER_BYTES:
            raise MailFormatError(f"no end of the header within {MAX_HEADER_BYTES} bytes")
        chunk = stream.read(65536)
        if not chunk:
            if buffer.strip():
                # a mail of headers only: RFC 5322 allows it
                return parse_header_block(buffer), b""
            raise MailFormatError("the mail is empty")
        buffer += chunk


def _header_end(buffer: bytes) -> tuple[int, int] | None:
    """(end of the header block, start of the body), or None if the blank line is not seen yet."""
    if buffer.startswith(b"\r\n"):
        return 0, 2
    if buffer.startswith(b"\n"):
        return 0, 1
    match = re.search(rb"\r?\n\r?\n", buffer)
    if match is None:
        return None
    return match.start() + (2 if buffer[match.start()] == 0x0D else 1), match.end()


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower case) and its parameters (names lower case, values unquoted)."""
    parts = [p.strip() for p in value.split(";")]
    params: dict[str, str] = {}
    for part in parts[1:]:
        name, sep, val = part.partition("=")
        if sep:
            params[name.strip().lower()] = val.strip().strip('"')
    return parts[0].lower(), params
