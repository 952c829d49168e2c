"""The appliance's log format: one line per event, with no control character a client sent.

Usernames, HELO names, addresses and command excerpts come from clients and go into log lines;
a CR or LF in them would forge a second log line, an ESC would drive the operator's terminal
(ANSI sequences), a NUL would cut the line short for some tools. :class:`EscapingFormatter`
escapes every C0 control character, DEL, every C1 control character and the Unicode line and
paragraph separators in the formatted message (``\\n``, ``\\r``, ``\\t``, ``\\x1b``, ``\\u2028``),
so no call site needs to remember it; the traceback the formatter appends to an exception is
our own text and stays multi-line. :func:`configure` installs it where the CLI sets up logging.

``run --log-format json`` (issue 15) uses :class:`JsonFormatter` instead: one JSON object per
line and event, with the fields of today's lines (``time``, ``level``, ``logger``,
``message``), the structured fields a call site passed (``extra={...}``), and ``exception``
with the traceback; JSON's string escaping keeps every control character out of the line.
This module must never drop or shorten a message.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Final, TextIO

#: the CLI's line format
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: the formats of ``run --log-format``
LOG_FORMATS: Final = ("text", "json")
#: what every LogRecord has: the rest of its attributes are a call site's structured fields
_STANDARD: Final = frozenset(
    {*logging.makeLogRecord({}).__dict__, "message", "asctime", "taskName"}
)

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


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, UTC, milliseconds), ``level``,
    ``logger``, ``message`` (arguments filled in), the record's structured fields, and
    ``exception`` when there is one (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ASCII only: C1 controls and U+2028 would otherwise stay raw in the line
        return json.dumps(entry, ensure_ascii=True, default=str)


def configure(
    level: int | str, *, stream: TextIO | None = None, log_format: str = "text"
) -> logging.Handler:
    """Send the log to ``stream`` (stderr) through :class:`EscapingFormatter` (``log_format``
    ``text``) or :class:`JsonFormatter` (``json``), as the root handler, at ``level``; returns
    the handler. Replaces handlers an earlier call installed."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else EscapingFormatter(LOG_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return handler
