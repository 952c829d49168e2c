"""Test helper: a tiny in-memory maildrop that answers a Pop3Server's decision events.

It plays the application (Fachdienst) side: password and APOP checks, message numbering,
deletion marks committed at QUIT. Bodies are sent in small pieces so that the dot-stuffer sees
line starts split across chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kim_appliance.protocols.pop3 import (
    NEED_DATA,
    AuthAttempt,
    ConnectionClosed,
    DecisionEvent,
    Dele,
    Event,
    List,
    Noop,
    Pop3Server,
    ProtocolViolation,
    Quit,
    RespCode,
    Response,
    Retr,
    Rset,
    Stat,
    Top,
    Uidl,
    check_apop,
)

USERS = {"praxis.weber@fd1.kim.telematik-test": "Geheim!Passwort12"}
USERNAME, PASSWORD = next(iter(USERS.items()))
MESSAGES = [
    (
        "uid-0001",
        b"From: a@fd1.kim.telematik-test\r\nSubject: one\r\n\r\nHello\r\n.leading dot\r\n"
        b"..two dots\r\n.\r\nafter a lone dot\r\n",
    ),
    ("uid-0002", b"Subject: two\r\nX-Bare: lf\r\n\r\nbare\nLF inside\r\n.\r\n"),
    ("uid-0003", b"Subject: three\r\n\r\n" + b"line of text\r\n" * 40),
]
BODY_PIECE = 7


@dataclass
class Mailbox:
    messages: list[tuple[str, bytes]] = field(default_factory=lambda: list(MESSAGES))
    users: dict[str, str] = field(default_factory=lambda: dict(USERS))
    deleted: set[int] = field(default_factory=set)
    removed: list[str] = field(default_factory=list)  # uids removed at QUIT (UPDATE state)
    events: list[Event] = field(default_factory=list)

    def handle(self, server: Pop3Server) -> tuple[bytes, bool]:
        """Answer events until NEED_DATA; return the bytes to write and whether to close."""
        out = bytearray()
        while True:
            event = server.next_event()
            if event is NEED_DATA:
                return bytes(out + server.data_to_send()), False
            assert not isinstance(event, type)
            self.events.append(event)
            if isinstance(event, ConnectionClosed):
                return bytes(out + server.data_to_send()), True
            if isinstance(event, ProtocolViolation):
                continue
            out += self.answer(server, event)

    def _exists(self, n: int) -> bool:
        return 1 <= n <= len(self.messages) and n not in self.deleted

    def answer(self, server: Pop3Server, event: DecisionEvent) -> bytes:
        no_such = Response(False, "no such message")
        if isinstance(event, AuthAttempt):
            secret = self.users.get(event.username)
            if event.mechanism == "APOP":
                assert server.apop_timestamp is not None
                assert event.apop_digest is not None
                good = secret is not None and check_apop(
                    server.apop_timestamp, secret, event.apop_digest
                )
            else:
                good = secret is not None and secret == event.password
            if not good:
                text = f"authentication failed for {event.username}"
                return server.send(Response(False, text, RespCode.AUTH))
            return server.send(Response(True, f"{event.username} has {len(self.messages)} msgs"))
        live = [(n, uid, body) for n, (uid, body) in enumerate(self.messages, 1) if self._exists(n)]
        if isinstance(event, Stat):
            return server.send(Response(True, f"{len(live)} {sum(len(b) for *_, b in live)}"))
        if isinstance(event, List | Uidl):

            def item(n: int, uid: str, body: bytes) -> str:
                return f"{n} {uid if isinstance(event, Uidl) else len(body)}"

            if event.msg is not None:
                if not self._exists(event.msg):
                    return server.send(no_such)
                uid, body = self.messages[event.msg - 1]
                return server.send(Response(True, item(event.msg, uid, body)))
            head = server.send_multiline(f"{len(live)} messages")
            listing = "".join(item(*m) + "\r\n" for m in live).encode()
            return head + server.send_body(listing) + server.end_multiline()
        if isinstance(event, Retr | Top):
            if not self._exists(event.msg):
                return server.send(no_such)
            body = self.messages[event.msg - 1][1]
            if isinstance(event, Top):
                header, _, rest = body.partition(b"\r\n\r\n")
                body = header + b"\r\n\r\n" + b"".join(rest.splitlines(True)[: event.lines])
            out = server.send_multiline(f"{len(body)} octets")
            for i in range(0, len(body), BODY_PIECE):
                out += server.send_body(body[i : i + BODY_PIECE])
            return out + server.end_multiline()
        if isinstance(event, Dele):
            if not self._exists(event.msg):
                return server.send(no_such)
            self.deleted.add(event.msg)
            return server.send(Response(True, f"message {event.msg} deleted"))
        if isinstance(event, Rset):
            self.deleted.clear()
            return server.send(Response(True))
        if isinstance(event, Noop):
            return server.send(Response(True))
        assert isinstance(event, Quit)
        self.removed = [self.messages[n - 1][0] for n in sorted(self.deleted)]
        return server.send(Response(True, f"{len(self.removed)} messages removed"))
