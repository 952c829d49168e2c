"""The sans-IO SMTP client core: reply parsing, pipelining, misuse, and both cores together."""

from __future__ import annotations

import contextlib

import pytest
from _smtp_harness import USERS, Driver, make_server, split_every
from hypothesis import given, settings
from hypothesis import strategies as st

from kim_appliance.protocols.smtp import (
    NEED_DATA,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    LocalProtocolError,
    MailFrom,
    OriginalRecipient,
    RcptTo,
    RemoteProtocolError,
    ServerReply,
    SmtpClient,
)

USER, PASSWORD = next(iter(USERS.items()))

POSTFIX_GREETING = b"220 mail.example.com ESMTP Postfix (Debian/GNU)\r\n"
POSTFIX_EHLO = (
    b"250-mail.example.com\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-VRFY\r\n"
    b"250-ETRN\r\n"
    b"250-AUTH PLAIN LOGIN\r\n"
    b"250-AUTH=PLAIN LOGIN\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-8BITMIME\r\n"
    b"250-DSN\r\n"
    b"250 SMTPUTF8\r\n"
)


def replies(client: SmtpClient) -> list[ServerReply]:
    out: list[ServerReply] = []
    while True:
        event = client.next_event()
        if event is NEED_DATA or isinstance(event, ConnectionClosed):
            return out
        assert isinstance(event, ServerReply)
        out.append(event)


def greeted_client() -> SmtpClient:
    client = SmtpClient(hostname="pvs.praxis.test")
    client.receive_data(POSTFIX_GREETING)
    client.ehlo()
    client.receive_data(POSTFIX_EHLO)
    assert [r.command for r in replies(client)] == ["GREETING", "EHLO"]
    return client


def test_postfix_ehlo_reply_is_parsed() -> None:
    client = greeted_client()
    assert client.extensions == {
        "PIPELINING": "",
        "SIZE": "10240000",
        "VRFY": "",
        "ETRN": "",
        "AUTH": "PLAIN LOGIN",
        "ENHANCEDSTATUSCODES": "",
        "8BITMIME": "",
        "DSN": "",
        "SMTPUTF8": "",
    }


@pytest.mark.parametrize("size", [1, 2, 5, 17, 512])
def test_pipelined_replies_are_matched_to_commands(size: int) -> None:
    """RFC 2920: replies to pipelined commands arrive in order and name their command."""
    client = greeted_client()
    client.mail(USER, size=1000, body="8BITMIME", ret="HDRS", envid="id 1")
    client.rcpt("a@kim2.kim.telematik-test", notify={"SUCCESS", "FAILURE"}, orcpt="a@kim2")
    client.rcpt("b@kim2.kim.telematik-test")
    client.data()
    canned = (
        b"250 2.1.0 Ok\r\n"
        b"250 2.1.5 Ok\r\n"
        b"550-5.1.1 <b@kim2.kim.telematik-test>: Recipient address rejected:\r\n"
        b"550 5.1.1 User unknown in virtual mailbox table\r\n"
        b"354 End data with <CR><LF>.<CR><LF>\r\n"
    )
    got: list[ServerReply] = []
    for piece in split_every(canned, size):
        client.receive_data(piece)
        got += replies(client)
    assert [(r.command, r.code, r.enhanced) for r in got] == [
        ("MAIL", 250, "2.1.0"),
        ("RCPT", 250, "2.1.5"),
        ("RCPT", 550, "5.1.1"),
        ("DATA", 354, None),
    ]
    assert got[2].lines == (
        "<b@kim2.kim.telematik-test>: Recipient address rejected:",
        "User unknown in virtual mailbox table",
    )
    assert client.body(b".dot\r\nx") == b"..dot\r\nx"
    assert client.end_body() == b"\r\n.\r\n"
    assert client.awaiting == ("END-OF-DATA",)


def test_command_encoding_with_dsn_parameters() -> None:
    """RFC 3461: ENVID and ORCPT are xtext-encoded; NOTIFY in canonical order."""
    client = greeted_client()
    assert client.mail(USER, size=5, envid="a+b=c d") == (
        f"MAIL FROM:<{USER}> SIZE=5 ENVID=a+2Bb+3Dc+20d\r\n".encode()
    )
    assert client.rcpt("x@y.de", notify=("failure", "success"), orcpt="x+1@y.de") == (
        b"RCPT TO:<x@y.de> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+2B1@y.de\r\n"
    )
    assert client.mail("") == b"MAIL FROM:<>\r\n"


def test_misuse_raises_local_protocol_error() -> None:
    client = greeted_client()
    with pytest.raises(LocalProtocolError, match="354"):
        client.body(b"x")
    with pytest.raises(LocalProtocolError, match="bad syntax"):
        client.rcpt("no-at-sign")
    with pytest.raises(LocalProtocolError, match="bad syntax"):
        client.mail("a@b.de> SIZE=1")
    with pytest.raises(LocalProtocolError, match="NEVER"):
        client.rcpt("a@b.de", notify={"NEVER", "SUCCESS"})
    with pytest.raises(LocalProtocolError, match="no 334"):
        client.auth_continue()
    bare = SmtpClient(hostname="pvs")
    with pytest.raises(LocalProtocolError, match="did not announce DSN"):
        bare.rcpt("a@b.de", notify={"SUCCESS"})
    with pytest.raises(LocalProtocolError, match="did not announce SIZE"):
        bare.mail("a@b.de", size=3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"2x0 hello\r\n", "3-digit code"),
        (b"250+hello\r\n", "space or hyphen"),
        (b"250-a\r\n251 b\r\n", "differs"),
        (b"199 too small\r\n", "outside"),
        (b"220 " + b"x" * 5000, "longer than"),
        (b"220 " + b"x" * 5000 + b"\r\n", "longer than"),
        (b"220-x\r\n" * 200, "more than"),
        (b"220 ok\r\n250 unasked\r\n", "nothing was asked"),
        (b"220 ok\r\n354 go\r\n", "only DATA"),
        (b"220 ok\r\n334 go\r\n", "only AUTH"),
    ],
)
def test_malformed_replies_raise_remote_protocol_error(data: bytes, message: str) -> None:
    client = SmtpClient(hostname="pvs")
    if b"unasked" not in data:
        client.noop()
    client.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=message):
        replies(client)


def test_eof_while_waiting_raises_but_after_quit_closes() -> None:
    client = greeted_client()
    client.noop()
    client.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="reply to NOOP is missing"):
        client.next_event()
    client = greeted_client()
    client.quit()
    client.receive_data(b"221 2.0.0 Bye\r\n")
    client.receive_data(b"")
    assert replies(client)[0].command == "QUIT"
    assert client.next_event() == ConnectionClosed("eof")


def test_unsolicited_421_is_accepted() -> None:
    """RFC 5321 §3.8: a server may say 421 and close at any time."""
    client = greeted_client()
    client.receive_data(b"421 4.4.2 mail.example.com Error: timeout exceeded\r\n")
    client.receive_data(b"")
    (reply,) = replies(client)
    assert (reply.code, reply.enhanced, reply.command) == (421, "4.4.2", "")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000))
def test_random_replies_raise_only_remote_protocol_error(data: bytes) -> None:
    client = SmtpClient(hostname="pvs")
    client.ehlo()
    client.noop()
    client.receive_data(data)
    client.receive_data(b"")
    with contextlib.suppress(RemoteProtocolError):
        replies(client)


def converse(client: SmtpClient, driver: Driver, data: bytes) -> list[ServerReply]:
    """Client bytes into the server core, the server's replies back into the client."""
    driver.feed(data)
    out = driver.take_output()
    if out:
        client.receive_data(out)
    return replies(client)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_client_core_against_server_core(mechanism: str) -> None:
    """Both cores together: AUTH, a pipelined transaction with DSN parameters, a dot-stuffed
    8-bit body that arrives byte-exact, RSET and QUIT."""
    driver = Driver(make_server())
    client = SmtpClient(hostname="pvs.praxis.test")
    client.receive_data(driver.server.greeting())
    (greeting,) = replies(client)
    assert greeting.command == "GREETING"
    (ehlo,) = converse(client, driver, client.ehlo())
    assert (ehlo.command, ehlo.code) == ("EHLO", 250)
    assert client.extensions["SIZE"] == "10000"
    if mechanism == "PLAIN":
        (auth,) = converse(client, driver, client.auth_plain(USER, PASSWORD))
    else:
        (challenge,) = converse(client, driver, client.auth_login(USER, PASSWORD))
        assert challenge.code == 334
        (challenge,) = converse(client, driver, client.auth_continue())
        assert challenge.code == 334
        (auth,) = converse(client, driver, client.auth_continue())
    assert (auth.command, auth.code, auth.enhanced) == ("AUTH", 235, "2.7.0")

    body = b"Subject: Befund\r\n\r\n.leading dot\r\n..two\r\n\xc3\xbc\r\n.\r\nlast line"
    pipeline = (
        client.mail(USER, size=len(body), body="8BITMIME", ret="HDRS", envid="E1")
        + client.rcpt("dr.mueller@kim2.kim.telematik-test", notify={"SUCCESS"}, orcpt="x@y")
        + client.data()
    )
    got = converse(client, driver, pipeline)
    assert [(r.command, r.code) for r in got] == [("MAIL", 250), ("RCPT", 250), ("DATA", 354)]
    wire = b"".join(client.body(piece) for piece in split_every(body, 7)) + client.end_body()
    (done,) = converse(client, driver, wire)
    assert (done.command, done.code) == ("END-OF-DATA", 250)

    received = b"".join(e.data for e in driver.events if isinstance(e, DataChunk))
    assert received == body + b"\r\n"
    mail = next(e for e in driver.events if isinstance(e, MailFrom))
    assert (mail.size, mail.body, mail.ret, mail.envid) == (len(body), "8BITMIME", "HDRS", "E1")
    rcpt = next(e for e in driver.events if isinstance(e, RcptTo))
    assert rcpt.notify == frozenset({"SUCCESS"})
    assert rcpt.orcpt == OriginalRecipient("rfc822", "x@y")
    assert next(e for e in driver.events if isinstance(e, DataEnd)).size == len(body) + 2

    got = converse(client, driver, client.rset() + client.quit())
    assert [(r.command, r.code) for r in got] == [("RSET", 250), ("QUIT", 221)]
    client.receive_data(b"")
    assert client.next_event() == ConnectionClosed("eof")


_LINE = st.builds(
    lambda code, sep, text: code + sep + text,
    st.sampled_from([b"220", b"250", b"354", b"421", b"550", b"334", b"2500", b"25", b"999"]),
    st.sampled_from([b" ", b"-", b"", b"x"]),
    st.sampled_from([b"", b"2.0.0 ok", b"5.1.1 no", b"\xff\xfe", b"SIZE 10", b"x" * 3000]),
)


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(_LINE, max_size=12),
    ending=st.sampled_from([b"\r\n", b"\n"]),
    commands=st.lists(st.sampled_from(["ehlo", "noop", "rset", "quit"]), max_size=6),
)
def test_reply_like_input_raises_only_remote_protocol_error(
    lines: list[bytes], ending: bytes, commands: list[str]
) -> None:
    """Replies that look nearly right (bad separators, overlong text, wrong codes, 334/354 to
    the wrong command, EOF too early) raise only RemoteProtocolError."""
    client = SmtpClient(hostname="pvs")
    for command in commands:
        getattr(client, command)()
    client.receive_data(b"".join(line + ending for line in lines))
    client.receive_data(b"")
    with contextlib.suppress(RemoteProtocolError):
        for reply in replies(client):
            assert 200 <= reply.code <= 599


def test_helo_gives_no_extensions_and_extension_checks_apply() -> None:
    client = SmtpClient(hostname="pvs")
    client.receive_data(b"220 mx ESMTP\r\n")
    client.helo()
    client.receive_data(b"250 mx\r\n")
    assert [r.command for r in replies(client)] == ["GREETING", "HELO"]
    assert client.extensions == {}
    with pytest.raises(LocalProtocolError, match="did not announce 8BITMIME"):
        client.mail("a@b.de", body="8BITMIME")
    assert client.mail("a@b.de", body="7bit") == b"MAIL FROM:<a@b.de> BODY=7BIT\r\n"
