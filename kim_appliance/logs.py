"""The appliance's log format: one line per event, with no control character a client sent.

Usernames, HELO names, addresses and command excerpts come from clients and go into log lines;
a CR or LF in them would forge a second log line, an ESC would drive the operator's terminal
(ANSI sequences), a NUL would cut the line short for some tools. :class:`EscapingFormatter`
escapes every C0 control character, DEL, every C1 control character and the Unicode line and
paragraph separators in the formatted message (``\\n``, ``\\r``, ``\\t``, ``\\x1b``, ``\\u2028``),
so no call site needs to remember it; the traceback the formatter appends to an exception is
our own text and stays multi-line. :func:`configure` installs it where the CLI sets up logging.
This module must never drop or shorten a message.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

#: the CLI's line format
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROLS = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_ESCAPES = str.maketrans(
    {
        code: _NAMED.get(chr(code)) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")
        for code in _CONTROLS
    }
)


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a visible escape (see module doc)."""
    return text.translate(_ESCAPES)


class EscapingFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose formatted message (prefix, message and arguments) is
    one line of printable text; exception and stack text appended after it are left as is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


def configure(level: int | str, *, stream: TextIO | None = None) -> logging.Handler:
    """Send the log to ``stream`` (stderr) through :class:`EscapingFormatter`, as the root
    handler, at ``level``; returns the handler. Replaces handlers an earlier call installed."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return handler
