"""Test helpers: drive an SmtpServer with byte chunks and a policy, collect events and output."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from kim_appliance.protocols.smtp import (
    NEED_DATA,
    AuthAttempt,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    DataStart,
    MailFrom,
    RcptTo,
    Reply,
    ServerEvent,
    SmtpServer,
)

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
USERS = {"praxis.weber@kim1.kim.telematik-test": "Geheim-1234!"}


def accept_all(event: ServerEvent) -> Reply:
    """A policy that accepts good credentials, every sender, recipient and message."""
    if isinstance(event, AuthAttempt):
        if USERS.get(event.username) == event.password:
            return Reply(235, "2.7.0", "authentication successful")
        return Reply(535, "5.7.8", f"authentication failed for {event.username}")
    if isinstance(event, MailFrom):
        return Reply(250, "2.1.0", "sender ok")
    if isinstance(event, RcptTo):
        return Reply(250, "2.1.5", "recipient ok")
    if isinstance(event, DataStart):
        return Reply(354, None, "end data with <CR><LF>.<CR><LF>")
    if isinstance(event, DataEnd):
        if event.too_big:
            return Reply(552, "5.3.4", "message too big")
        return Reply(250, "2.0.0", "queued")
    raise AssertionError(f"no decision for {event}")


Policy = Callable[[ServerEvent], Reply]


def make_server(**kwargs: object) -> SmtpServer:
    options: dict[str, object] = {"hostname": "mx.kim1.kim.telematik-test"}
    options["max_message_size"] = 10_000
    options.update(kwargs)
    return SmtpServer(**options)  # type: ignore[arg-type]


class Driver:
    """Feeds chunks, answers decisions with ``policy``, records events (DataChunks merged)."""

    def __init__(self, server: SmtpServer, policy: Policy = accept_all) -> None:
        self.server = server
        self.policy = policy
        self.events: list[ServerEvent] = []
        self.output = bytearray()

    def feed(self, data: bytes) -> list[ServerEvent]:
        start = len(self.events)
        self.server.receive_data(data)
        while True:
            event = self.server.next_event()
            if event is NEED_DATA:
                break
            assert not isinstance(event, type)
            self._record(event)
            if isinstance(event, (AuthAttempt, MailFrom, RcptTo, DataStart, DataEnd)):
                self.output += self.server.send(self.policy(event))
            if isinstance(event, ConnectionClosed):
                break
        self.output += self.server.data_to_send()
        return self.events[start:]

    def _record(self, event: ServerEvent) -> None:
        if isinstance(event, DataChunk) and self.events and isinstance(self.events[-1], DataChunk):
            self.events[-1] = DataChunk(self.events[-1].data + event.data)
        elif not (isinstance(event, DataChunk) and not event.data):
            self.events.append(event)

    def take_output(self) -> bytes:
        out = bytes(self.output)
        self.output.clear()
        return out

    def replies(self) -> list[str]:
        """Output split into reply lines (str), and cleared."""
        return self.take_output().decode().split("\r\n")[:-1]

    def codes(self) -> list[str]:
        """The ``code enhanced`` prefix of each final reply line, and clears the output."""
        codes = []
        for line in self.replies():
            if line[3:4] != "-":
                second = line[4:].split(" ")[0]
                codes.append(line[:4] + (second if _ENHANCED.fullmatch(second) else ""))
        return codes


def run(chunks: Iterable[bytes], policy: Policy = accept_all, **kwargs: object) -> Driver:
    driver = Driver(make_server(**kwargs), policy)
    for chunk in chunks:
        driver.feed(chunk)
    return driver


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def login(driver: Driver) -> None:
    """EHLO and AUTH PLAIN as the demo user; clears the output."""
    import base64

    user, password = next(iter(USERS.items()))
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    driver.feed(b"EHLO pvs.praxis.test\r\n" + f"AUTH PLAIN {token}\r\n".encode())
    assert driver.codes()[-1] == "235 2.7.0"
