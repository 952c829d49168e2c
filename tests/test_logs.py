"""The appliance's log formatter (kim_appliance.logs, issue 11): control characters a client
sent never break a log line or reach the operator's terminal."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from kim_appliance.logs import EscapingFormatter, JsonFormatter, configure, escape_controls


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("line one\nline two")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("kim_appliance.fd1", logging.INFO, __file__, 1, msg, args, exc_info)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nul\x00cut", "nul\\x00cut"),
        ("tab\there", "tab\\there"),
        ("del\x7f c1\x85\x9b", "del\\x7f c1\\x85\\x9b"),
        ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
        ("Grüße, ß and € stay", "Grüße, ß and € stay"),
    ],
)
def test_escape_controls(raw: str, shown: str) -> None:
    assert escape_controls(raw) == shown


def test_arguments_from_clients_stay_on_one_line() -> None:
    """A username with CRLF and an ANSI sequence, as an SMTP AUTH can carry it, gives one line
    that shows what was sent."""
    line = EscapingFormatter("%(name)s: %(message)s").format(
        _record("smtp %s AUTH %s %s", "127.0.0.1:4000", "x\r\n2025 INFO forged\x1b[2J", "ok")
    )
    assert line == (
        "kim_appliance.fd1: smtp 127.0.0.1:4000 AUTH x\\r\\n2025 INFO forged\\x1b[2J ok"
    )


def test_the_traceback_keeps_its_lines() -> None:
    """Our own traceback stays readable (multi-line); only the message line is escaped."""
    text = EscapingFormatter("%(message)s").format(_record("failed for %s", "a\nb", exc=True))
    first, *rest = text.split("\n")
    assert first == "failed for a\\nb"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-2:] == ["ValueError: line one", "line two"]


def test_configure_installs_the_formatter() -> None:
    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    out = io.StringIO()
    try:
        configure("INFO", stream=out)
        logging.getLogger("kim_appliance.test").info("user %s", "a\nb")
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
    assert out.getvalue().count("\n") == 1
    assert out.getvalue().rstrip("\n").endswith("kim_appliance.test: user a\\nb")


def test_json_format_is_one_object_per_event_with_the_fields_of_a_line() -> None:
    """``run --log-format json`` (issue 15): time, level, logger, message, a call site's
    structured fields; a client's control characters and a traceback stay inside the object."""
    formatter = JsonFormatter()
    record = _record("AUTH %s refused", "evil\r\nFAKE 250 ok\x1b[2J\u2028x", exc=True)
    record.peer = "127.0.0.1:4711"
    line = formatter.format(record)
    assert all(c not in line for c in ("\n", "\r", "\x1b", "\u2028"))
    entry = json.loads(line)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "kim_appliance.fd1"
    assert entry["message"] == "AUTH evil\r\nFAKE 250 ok\x1b[2J\u2028x refused"
    assert entry["peer"] == "127.0.0.1:4711"
    assert entry["time"].endswith("+00:00")
    assert "ValueError: line one\nline two" in entry["exception"]
    assert set(entry) == {"time", "level", "logger", "message", "peer", "exception"}


def test_configure_json_and_an_unknown_format() -> None:
    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    out = io.StringIO()
    try:
        configure("INFO", stream=out, log_format="json")
        logging.getLogger("kim_appliance.test").info("user %s", "a\nb")
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
    assert json.loads(out.getvalue())["message"] == "user a\nb"
    with pytest.raises(ValueError, match="expected one of text, json"):
        configure("INFO", stream=out, log_format="xml")
