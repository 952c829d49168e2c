"""Whole POP3 dialogues, client core against server core, fed in chunks of every size.

h11's habit: the same dialogue cut into chunks of 1, 2, 3 ... 512 bytes must give the same
events on both sides. Covers KOM-LE-A_2151 (APOP), KOM-LE-A_2152 (UIDL) and the ``TOP n 0``
the Clientmodul always uses (KOM-LE-A_2041, digest §1.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from pop3_mailbox import MESSAGES, PASSWORD, USERNAME, Mailbox

from kim_appliance.protocols.pop3 import (
    NEED_DATA,
    AuthAttempt,
    BodyChunk,
    BodyEnd,
    ConnectionClosed,
    Pop3Client,
    Pop3Reply,
    Pop3Server,
    Quit,
    Retr,
    State,
    Top,
)

Step = Callable[[Pop3Client], bytes]
TIMESTAMP = "<4711.1700000000@fd1.kim.telematik-test>"


@dataclass
class Transcript:
    server_events: list[object]
    client_events: list[object]
    to_server: bytes
    to_client: bytes
    mailbox: Mailbox


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _drain_client(client: Pop3Client, events: list[object]) -> None:
    while (event := client.next_event()) is not NEED_DATA:
        # Chunking moves BodyChunk boundaries; compare the concatenated body.
        if isinstance(event, BodyChunk) and events and isinstance(events[-1], BodyChunk):
            events[-1] = BodyChunk(events[-1].data + event.data)
        else:
            events.append(event)
        if isinstance(event, ConnectionClosed):
            return


def run_dialogue(steps: list[Step], chunk: int, *, apop: bool = False) -> Transcript:
    server = Pop3Server(
        hostname="fd1.kim.telematik-test", apop_timestamp=TIMESTAMP if apop else None
    )
    mailbox = Mailbox()
    client = Pop3Client()
    client_events: list[object] = []
    to_server = bytearray()
    to_client = bytearray(server.greeting())
    for piece in _chunks(server.greeting(), chunk):
        client.receive_data(piece)
        _drain_client(client, client_events)
    closed = False
    for step in steps:
        data = step(client)
        to_server += data
        answer = bytearray()
        for piece in _chunks(data, chunk):  # the core is asked for events after every chunk
            server.receive_data(piece)
            out, closed = mailbox.handle(server)
            answer += out
            if closed:
                break
        to_client += answer
        for piece in _chunks(bytes(answer), chunk):
            client.receive_data(piece)
            _drain_client(client, client_events)
    if closed:
        client.receive_data(b"")
        _drain_client(client, client_events)
    return Transcript(mailbox.events, client_events, bytes(to_server), bytes(to_client), mailbox)


FULL: list[Step] = [
    lambda c: c.capa(),
    lambda c: c.user(USERNAME),
    lambda c: c.pass_("wrong password"),
    lambda c: c.auth_plain(USERNAME, PASSWORD, initial_response=False),
    lambda c: c.cancel_auth(),
    lambda c: c.auth_plain(USERNAME, "wrong", initial_response=False),
    lambda c: c.continue_auth(),
    lambda c: c.auth_plain(USERNAME, PASSWORD),
    lambda c: c.stat(),
    lambda c: c.list() + c.list(2) + c.uidl() + c.uidl(3),  # pipelined (RFC 2449)
    lambda c: c.top(1, 0),
    lambda c: c.retr(1) + c.retr(2) + c.retr(3),
    lambda c: c.dele(1),
    lambda c: c.retr(1),
    lambda c: c.rset(),
    lambda c: c.dele(2) + c.noop(),
    lambda c: c.quit(),
]
USER_PASS: list[Step] = [
    lambda c: c.user(USERNAME),
    lambda c: c.pass_(PASSWORD),
    lambda c: c.uidl(),
    lambda c: c.quit(),
]
APOP: list[Step] = [
    lambda c: c.apop(USERNAME, "not the secret"),
    lambda c: c.apop(USERNAME, PASSWORD),
    lambda c: c.stat() + c.top(3, 2) + c.dele(3) + c.quit(),
]

DIALOGUES = {"full": (FULL, False), "user_pass": (USER_PASS, False), "apop": (APOP, True)}


@pytest.mark.parametrize("name", sorted(DIALOGUES))
def test_every_chunk_size_gives_the_same_events(name: str) -> None:
    steps, apop = DIALOGUES[name]
    reference = run_dialogue(steps, 1 << 20, apop=apop)
    assert reference.server_events, "the dialogue produced no events"
    for chunk in range(1, 513):
        got = run_dialogue(steps, chunk, apop=apop)
        assert got.server_events == reference.server_events, f"server, chunk size {chunk}"
        assert got.client_events == reference.client_events, f"client, chunk size {chunk}"
        assert got.to_client == reference.to_client, f"wire, chunk size {chunk}"


def _replies(t: Transcript) -> list[Pop3Reply]:
    return [e for e in t.client_events if isinstance(e, Pop3Reply)]


def _bodies(t: Transcript) -> list[bytes]:
    """The body of every multi-line answer, in order (b"" for an empty one)."""
    bodies: list[bytes] = []
    current: bytes | None = None
    for e in t.client_events:
        if isinstance(e, Pop3Reply) and e.multiline:
            current = b""
        elif isinstance(e, BodyChunk):
            assert current is not None
            current += e.data
        elif isinstance(e, BodyEnd):
            assert current is not None
            bodies.append(current)
            current = None
    return bodies


def test_full_dialogue_replies_and_bodies() -> None:
    t = run_dialogue(FULL, 5)
    replies = [(r.command, r.ok, r.code, r.continuation) for r in _replies(t)]
    assert replies == [
        ("GREETING", True, None, False),
        ("CAPA", True, None, False),
        ("USER", True, None, False),
        ("PASS", False, "AUTH", False),
        ("AUTH", True, None, True),  # "+ " challenge, then "*"
        ("AUTH", False, None, False),
        ("AUTH", True, None, True),
        ("AUTH", False, "AUTH", False),
        ("AUTH", True, None, False),
        ("STAT", True, None, False),
        ("LIST", True, None, False),
        ("LIST", True, None, False),
        ("UIDL", True, None, False),
        ("UIDL", True, None, False),
        ("TOP", True, None, False),
        ("RETR", True, None, False),
        ("RETR", True, None, False),
        ("RETR", True, None, False),
        ("DELE", True, None, False),
        ("RETR", False, None, False),
        ("RSET", True, None, False),
        ("DELE", True, None, False),
        ("NOOP", True, None, False),
        ("QUIT", True, None, False),
    ]
    assert _replies(t)[9].text == f"3 {sum(len(b) for _, b in MESSAGES)}"
    bodies = _bodies(t)
    capa = bodies[0].split(b"\r\n")
    for cap in (b"USER", b"SASL PLAIN", b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING"):
        assert cap in capa
    assert b"IMPLEMENTATION kim-appliance" in capa
    assert not any(line.startswith(b"EXPIRE") for line in capa)
    sizes = "".join(f"{n} {len(b)}\r\n" for n, (_, b) in enumerate(MESSAGES, 1)).encode()
    assert bodies[1] == sizes
    assert bodies[2] == b"1 uid-0001\r\n2 uid-0002\r\n3 uid-0003\r\n"
    header = MESSAGES[0][1].partition(b"\r\n\r\n")[0]
    assert bodies[3] == header + b"\r\n\r\n"  # TOP 1 0: header and blank line only
    assert bodies[4:7] == [body for _, body in MESSAGES]  # leading dots and bare LF intact
    assert t.client_events[-1] == ConnectionClosed()
    # RSET undid DELE 1; DELE 2 was committed at QUIT (UPDATE state).
    assert t.mailbox.removed == ["uid-0002"]


def test_retr_wire_form_is_dot_stuffed() -> None:
    """RFC 1939 §3: lines starting with '.' are sent with a second '.', then '.' CRLF ends."""
    t = run_dialogue(FULL, 64)
    assert (
        b"+OK 102 octets\r\nFrom: a@fd1.kim.telematik-test\r\nSubject: one\r\n\r\nHello\r\n"
        b"..leading dot\r\n...two dots\r\n..\r\nafter a lone dot\r\n.\r\n"
    ) in t.to_client
    assert len(MESSAGES[0][1]) == 102


def test_server_events_of_the_apop_dialogue() -> None:
    """KOM-LE-A_2151: APOP is offered (timestamp in the greeting) and the digest is handed out."""
    t = run_dialogue(APOP, 3, apop=True)
    auths = [e for e in t.server_events if isinstance(e, AuthAttempt)]
    assert [(a.mechanism, a.username, a.password) for a in auths] == [
        ("APOP", USERNAME, None),
        ("APOP", USERNAME, None),
    ]
    assert all(a.apop_digest is not None and len(a.apop_digest) == 32 for a in auths)
    greeting = _replies(t)[0]
    assert greeting.apop_timestamp == TIMESTAMP
    assert [r.ok for r in _replies(t)[1:3]] == [False, True]
    assert Top(3, 2) in t.server_events
    assert isinstance(t.server_events[-2], Quit)
    assert t.mailbox.removed == ["uid-0003"]
    assert _bodies(t)[0] == MESSAGES[2][1].partition(b"\r\n\r\n")[0] + b"\r\n\r\n" + (
        b"line of text\r\n" * 2
    )


def test_user_pass_dialogue_reaches_transaction_and_closes() -> None:
    server = Pop3Server(hostname="fd1.kim.telematik-test")
    mailbox = Mailbox()
    server.receive_data(f"USER {USERNAME}\r\nPASS {PASSWORD}\r\n".encode())
    out, closed = mailbox.handle(server)
    assert out.endswith(b"msgs\r\n")
    assert not closed
    assert server.state is State.TRANSACTION
    server.receive_data(b"RETR 2\r\nQUIT\r\n")
    out, closed = mailbox.handle(server)
    assert closed
    assert server.state is State.CLOSED
    assert Retr(2) in mailbox.events
    assert out.endswith(b"+OK 0 messages removed\r\n")
