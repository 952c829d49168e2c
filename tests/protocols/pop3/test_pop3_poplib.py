"""Oracle: the standard library's ``poplib.POP3`` against the server core.

A tiny blocking socket loop (one thread, loopback, port 0, timeouts) moves bytes between the
socket and the core; :class:`Mailbox` plays the Fachdienst. poplib was written without this code
in mind, so it checks greeting, APOP, dot-stuffing and multi-line framing independently.
"""

from __future__ import annotations

import poplib
import socket
import threading
from collections.abc import Iterator

import pytest
from pop3_mailbox import MESSAGES, PASSWORD, USERNAME, Mailbox

from kim_appliance.protocols.pop3 import Pop3Server, make_apop_timestamp

HOST = "fd1.kim.telematik-test"
TIMEOUT = 5.0


def _serve_one(listener: socket.socket, server: Pop3Server, mailbox: Mailbox) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(TIMEOUT)
        conn.sendall(server.greeting())
        while True:
            data = conn.recv(4096)
            server.receive_data(data)
            out, closed = mailbox.handle(server)
            conn.sendall(out)
            if closed or not data:
                return


@pytest.fixture
def pop3_session() -> Iterator[tuple[poplib.POP3, Mailbox, Pop3Server]]:
    server = Pop3Server(hostname=HOST, apop_timestamp=make_apop_timestamp(HOST))
    mailbox = Mailbox()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        thread = threading.Thread(target=_serve_one, args=(listener, server, mailbox), daemon=True)
        thread.start()
        client = poplib.POP3("127.0.0.1", listener.getsockname()[1], timeout=TIMEOUT)
        try:
            yield client, mailbox, server
        finally:
            client.close()
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "server loop did not finish"


def _poplib_lines(body: bytes) -> list[bytes]:
    """What poplib returns for a body: lines cut at LF, CR LF removed (poplib._getline)."""
    return [line.removesuffix(b"\r") for line in body.split(b"\n")[:-1]]


def test_poplib_user_pass_stat_list_uidl_retr_top_dele_quit(
    pop3_session: tuple[poplib.POP3, Mailbox, Pop3Server],
) -> None:
    """KOM-LE-A_2152 (UIDL) and TOP n 0 (KOM-LE-A_2041) as a stock client sees them."""
    client, mailbox, _ = pop3_session
    assert client.getwelcome().startswith(f"+OK {HOST} POP3 server ready <".encode())
    caps = client.capa()
    assert {"USER", "TOP", "UIDL", "SASL", "PIPELINING", "RESP-CODES"} <= caps.keys()
    assert caps["SASL"] == ["PLAIN"]
    client.user(USERNAME)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.pass_("wrong")
    client.user(USERNAME)
    client.pass_(PASSWORD)
    assert client.stat() == (3, sum(len(b) for _, b in MESSAGES))
    resp, listing, _ = client.list()
    assert listing == [f"{n} {len(b)}".encode() for n, (_, b) in enumerate(MESSAGES, 1)]
    assert client.list(2) == f"+OK 2 {len(MESSAGES[1][1])}".encode()
    _, uids, _ = client.uidl()
    assert uids == [b"1 uid-0001", b"2 uid-0002", b"3 uid-0003"]
    for n, (_, body) in enumerate(MESSAGES, 1):
        resp, lines, octets = client.retr(n)
        assert resp == f"+OK {len(body)} octets".encode()
        # Byte-exact: leading dots unstuffed, the lone "." line and the bare LF kept.
        assert lines == _poplib_lines(body)
        assert octets == len(body)
    _, top, _ = client.top(1, 0)
    assert top == _poplib_lines(MESSAGES[0][1].partition(b"\r\n\r\n")[0] + b"\r\n\r\n")
    client.dele(1)
    with pytest.raises(poplib.error_proto, match="no such message"):
        client.retr(1)
    client.dele(3)
    assert client.quit().startswith(b"+OK")
    assert mailbox.removed == ["uid-0001", "uid-0003"]


def test_poplib_apop(pop3_session: tuple[poplib.POP3, Mailbox, Pop3Server]) -> None:
    """KOM-LE-A_2151: poplib's APOP digest of our greeting's timestamp logs in."""
    client, mailbox, server = pop3_session
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.apop(USERNAME, "not the secret")
    client.apop(USERNAME, PASSWORD)
    assert client.stat()[0] == 3
    client.quit()
    assert [e.mechanism for e in mailbox.events if hasattr(e, "mechanism")] == ["APOP", "APOP"]
    assert server.apop_timestamp is not None
