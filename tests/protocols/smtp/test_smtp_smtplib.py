"""Oracle: Python's own ``smtplib`` talks to the server core over a loopback socket.

A tiny blocking loop in a thread moves bytes between one accepted socket and the core; the
test asserts what smtplib sees and what the core reported.
"""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from _smtp_harness import USERS, accept_all, make_server

from kim_appliance.protocols.smtp import (
    DECISION_EVENTS,
    NEED_DATA,
    AuthAttempt,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    MailFrom,
    RcptTo,
    ServerEvent,
    SmtpServer,
)

USER, PASSWORD = next(iter(USERS.items()))
TIMEOUT = 5.0


def serve_one(listener: socket.socket, server: SmtpServer, events: list[ServerEvent]) -> None:
    conn, _ = listener.accept()
    conn.settimeout(TIMEOUT)
    with conn:
        conn.sendall(server.greeting())
        while True:
            event = server.next_event()
            if event is NEED_DATA:
                out = server.data_to_send()
                if out:
                    conn.sendall(out)
                server.receive_data(conn.recv(65536))
                continue
            assert not isinstance(event, type)
            events.append(event)
            if isinstance(event, DECISION_EVENTS):
                conn.sendall(server.send(accept_all(event)))
            if isinstance(event, ConnectionClosed):
                conn.sendall(server.data_to_send())
                return


@contextmanager
def smtp_session(**kwargs: object) -> Iterator[tuple[smtplib.SMTP, list[ServerEvent]]]:
    events: list[ServerEvent] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        thread = threading.Thread(
            target=serve_one, args=(listener, make_server(**kwargs), events), daemon=True
        )
        thread.start()
        port = listener.getsockname()[1]
        with smtplib.SMTP(
            "127.0.0.1", port, local_hostname="pvs.praxis.test", timeout=TIMEOUT
        ) as smtp:
            yield smtp, events
        thread.join(TIMEOUT)
        assert not thread.is_alive()


MESSAGE = (
    b"From: <praxis.weber@kim1.kim.telematik-test>\r\n"
    b"To: <dr.mueller@kim2.kim.telematik-test>\r\n"
    b"Subject: Arztbrief\r\n\r\n"
    b".Zeile mit Punkt\r\n"
    b"..zwei Punkte\r\n"
    b"Gr\xc3\xbc\xc3\x9fe\r\n"
    b".\r\n" + b"0123456789" * 2000 + b"\r\n"
)


@pytest.mark.parametrize("mechanisms", [("PLAIN",), ("LOGIN",)], ids=["plain", "login"])
def test_smtplib_sends_a_message_byte_exact(mechanisms: tuple[str, ...]) -> None:
    """smtplib.login() (AUTH PLAIN, and LOGIN with an initial username; KOM-LE-A_2009) and
    sendmail() with SIZE, BODY=8BITMIME and NOTIFY=SUCCESS (RFC 1870, 6152, 3461): the body
    arrives byte-exact after smtplib's dot stuffing."""
    with smtp_session(max_message_size=100_000, auth_mechanisms=mechanisms) as (smtp, events):
        smtp.ehlo()
        assert smtp.has_extn("dsn")
        assert smtp.has_extn("pipelining")
        assert smtp.esmtp_features["size"] == "100000"
        smtp.login(USER, PASSWORD)
        refused = smtp.sendmail(
            USER,
            ["dr.mueller@kim2.kim.telematik-test"],
            MESSAGE,
            mail_options=[f"SIZE={len(MESSAGE)}", "BODY=8BITMIME"],
            rcpt_options=["NOTIFY=SUCCESS"],
        )
        assert refused == {}
    auth = next(e for e in events if isinstance(e, AuthAttempt))
    assert (auth.mechanism, auth.username, auth.password) == (mechanisms[0], USER, PASSWORD)
    mail = next(e for e in events if isinstance(e, MailFrom))
    assert (mail.address, mail.size, mail.body) == (USER, len(MESSAGE), "8BITMIME")
    rcpt = next(e for e in events if isinstance(e, RcptTo))
    assert rcpt.notify == frozenset({"SUCCESS"})
    assert b"".join(e.data for e in events if isinstance(e, DataChunk)) == MESSAGE
    end = next(e for e in events if isinstance(e, DataEnd))
    assert (end.size, end.bare_lf, end.bare_cr, end.too_big) == (len(MESSAGE), 0, 0, False)
    assert isinstance(events[-1], ConnectionClosed)


def test_smtplib_wrong_password_is_refused() -> None:
    with smtp_session() as (smtp, _events):
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            smtp.login(USER, "wrong")
        assert info.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            smtp.sendmail(USER, ["a@b.de"], b"x\r\n")
        assert refused.value.smtp_code == 530


def test_smtplib_too_big_size_is_refused_with_552() -> None:
    """RFC 1870 §6.1: a declared SIZE over the limit is refused at MAIL FROM with 552 5.3.4."""
    with smtp_session(max_message_size=1000) as (smtp, _events):
        smtp.login(USER, PASSWORD)
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            smtp.sendmail(USER, ["a@b.de"], b"x" * 2000, mail_options=["SIZE=2000"])
        assert info.value.smtp_code == 552
        assert info.value.smtp_error.startswith(b"5.3.4")
