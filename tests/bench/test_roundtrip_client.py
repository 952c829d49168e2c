"""The round-trip bench's own mail client: dot-stuffing, the CRLF.CRLF search, attachment check.

bench/roundtrip.py measures the appliance only if its client gets the bytes right: a wrong
stuffing would change the message, a terminator found too early would cut a RETR short, and a
missed one would hang the bench. These tests feed the helpers the tricky inputs (dots at line
starts and at 1 MiB piece borders, terminators split across reads, bare LF) and check them
against the standard library's poplib/smtplib rules. They use no sockets and no appliance.
"""

from __future__ import annotations

import hashlib
import importlib.util
import smtplib
import socket
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "roundtrip.py"


@pytest.fixture(scope="module")
def rt() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_roundtrip", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_roundtrip"] = module
    spec.loader.exec_module(module)
    return module


def smtplib_stuffed(message: bytes) -> bytes:
    """What smtplib's SMTP.data puts on the wire for a bytes ``message`` with CRLF lines."""
    quoted: bytes = smtplib._quote_periods(message)  # type: ignore[attr-defined]
    if not quoted.endswith(b"\r\n"):
        quoted += b"\r\n"
    return quoted + b".\r\n"


@pytest.mark.parametrize(
    "message",
    [
        b".\r\n",
        b"..\r\n.\r\nx\r\n",
        b"a\r\n.b\r\n",
        b"no final line end",
        b".starts with a dot\r\nand\r\n.\r\n",
    ],
)
def test_stuffing_matches_smtplib(rt: ModuleType, message: bytes) -> None:
    """Dots at line starts are doubled and the body ends with CRLF.CRLF, as smtplib does it."""
    assert b"".join(rt.stuffed_pieces(message)) == smtplib_stuffed(message)


def test_stuffing_dot_on_a_piece_border(rt: ModuleType) -> None:
    """A line start that falls on the border between two 1 MiB pieces is still stuffed."""
    message = b"x" * 9 + b"\r\n" + b".dot\r\n" + b"y" * 20 + b"\r\n.\r\n"
    for size in range(1, 16):
        assert b"".join(rt.stuffed_pieces(message, size)) == smtplib_stuffed(message), size


def test_terminator_search_and_unstuffing(rt: ModuleType) -> None:
    """The body ends only at CRLF.CRLF; '\\n.\\r\\n' (bare LF) does not end it; leading dots
    are removed from the returned body."""
    wire = b"\r\n" + b"a\r\n..b\r\nc\n.\r\nd\r\n.\r\nrest"
    hit = rt.find_terminator(wire, 0)
    assert wire[hit:].startswith(b"\r\n.\r\nrest")
    assert rt.unstuff(wire[2 : hit + 5]) == b"a\r\n.b\r\nc\n.\r\nd\r\n"
    # an empty body: the terminator right after the status line's CRLF
    assert rt.find_terminator(b"\r\n.\r\n", 0) == 0
    with pytest.raises(ValueError, match=r"CRLF\.CRLF"):
        rt.unstuff(b"a\r\nb\r\n")


def test_read_multiline_across_reads(rt: ModuleType) -> None:
    """A RETR body whose terminator arrives split over several reads (one byte at a time at
    the end) is read completely, and the bytes after it are kept for the next command."""
    body = b"From: a@b\r\n\r\n..dot\r\n" + b"x" * 100_000 + b"\r\n"
    wire = body.replace(b"\r\n..", b"\r\n...") + b".\r\n+OK next\r\n"
    ours, theirs = socket.socketpair()

    def feed() -> None:
        with theirs:
            theirs.sendall(wire[:-20])
            for i in range(len(wire) - 20, len(wire)):
                theirs.sendall(wire[i : i + 1])

    conn = rt.Conn.__new__(rt.Conn)
    conn.sock, conn.buf = ours, b""
    thread = threading.Thread(target=feed)
    thread.start()
    try:
        assert conn.read_multiline() == body
        assert conn.ok() == b"+OK next"
    finally:
        thread.join()
        ours.close()


def test_client_mail_and_attachment_roundtrip(rt: ModuleType) -> None:
    """The Arztbrief is multipart/mixed with the letter and the PDF; the attachment is found
    and decoded again from the mail (as after delivery), matching the recorded SHA-256."""
    addresses = ["a@fd1.kim.telematik-test", "b@fd2.kim.telematik-test"]
    mail = rt.make_client_mail(3, 0, 1, addresses, 200_000)
    assert 190_000 <= len(mail.data) <= 210_000
    assert b"Content-Type: multipart/mixed" in mail.data
    assert b"\r\n.Befund" in mail.data  # a line the stuffing must protect
    decoded = rt.attachment_of(mail.data, mail.filename)
    assert decoded.startswith(b"%PDF-1.7")
    assert hashlib.sha256(decoded).digest() == mail.attachment_sha256
    with pytest.raises(ValueError, match="no part"):
        rt.attachment_of(mail.data, "other.pdf")


def test_direct_threshold_lies_above_every_message(rt: ModuleType) -> None:
    """``--direct`` (issue 13): the KAS threshold it configures is above the largest client
    mail, so none goes through the KAS, and within what the config accepts."""
    from kim_appliance.config import MAX_MAIL_SIZE, MIN_KAS_THRESHOLD

    addresses = ["a@fd1.kim.telematik-test", "b@fd2.kim.telematik-test"]
    mails = [rt.make_client_mail(i, 0, 1, addresses, size) for i, size in enumerate((5000, 90_000))]
    threshold = rt.direct_threshold(mails)
    assert threshold > max(len(m.data) for m in mails)
    assert MIN_KAS_THRESHOLD <= threshold <= MAX_MAIL_SIZE


def test_targets_use_the_parallel_openssl_figure(rt: ModuleType) -> None:
    """The ratio target is against ``baseline.openssl_crypto_s``, the figure with as many
    openssl pipelines at a time as the machine has cores (issue 13, item 6)."""
    result = {
        "appliance_peak_rss_mb": 150.0,
        "total_s": 13.0,
        "baseline": {"openssl_crypto_s": 10.0},
        "baseline_detail": {"openssl_one_pipeline_s": 20.0},
    }
    targets = rt.targets(result, small=False)
    assert targets["ratio_to_openssl"] == 1.3
    assert targets["total_le_1_3x_openssl"] is True
    assert targets["rss_le_200_mb"] is True
    assert rt.BASELINE_PIPELINES >= 1
