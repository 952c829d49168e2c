"""The sans-IO SMTP server core: dialogues, errors and resync, smuggling, pipelining, limits."""

from __future__ import annotations

import base64
import itertools
from unittest.mock import ANY

import pytest
from _smtp_harness import USERS, Driver, accept_all, login, make_server, run, split_every
from hypothesis import given, settings
from hypothesis import strategies as st

from kim_appliance.protocols.smtp import (
    NEED_DATA,
    AuthAttempt,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    DataStart,
    Ehlo,
    LocalProtocolError,
    MailFrom,
    OriginalRecipient,
    ProtocolViolation,
    Quit,
    RcptTo,
    Reply,
    Rset,
    ServerEvent,
    State,
)

USER, PASSWORD = next(iter(USERS.items()))
PLAIN = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
BODY = (
    b"From: <praxis.weber@kim1.kim.telematik-test>\r\n"
    b"Subject: Arztbrief\r\n\r\n"
    b".a line starting with a dot\r\n"
    b"..two dots\r\n"
    b"\xc3\xa4 8-bit text\r\n"
    b".\tdot tab\r\n"
)
STUFFED = BODY.replace(b"\r\n.", b"\r\n..")

DIALOGUE = (
    b"EHLO pvs.praxis.test\r\n"
    b"AUTH PLAIN\r\n" + PLAIN.encode() + b"\r\n"
    b"MAIL FROM:<praxis.weber@kim1.kim.telematik-test> SIZE=200 BODY=8BITMIME RET=HDRS "
    b"ENVID=QQ+2B1\r\n"
    b"RCPT TO:<dr.mueller@kim2.kim.telematik-test> NOTIFY=SUCCESS,FAILURE "
    b"ORCPT=rfc822;dr.mueller+40kim2\r\n"
    b'RCPT TO:<"quoted local"@kim2.kim.telematik-test>\r\n'
    b"DATA\r\n" + STUFFED + b".\r\n"
    b"RSET\r\n"
    b"MAIL FROM:<>\r\n"
    b"RCPT TO:<postmaster>\r\n"
    b"DATA\r\n.\r\n"
    b"QUIT\r\n"
)

DIALOGUE_LOGIN = (
    b"EHLO pvs.praxis.test\r\n"
    b"AUTH LOGIN\r\n"
    + base64.b64encode(USER.encode())
    + b"\r\n"
    + base64.b64encode(PASSWORD.encode())
    + b"\r\nNOOP\r\nQUIT\r\n"
)


def expected_events() -> list[ServerEvent]:
    return [
        Ehlo("pvs.praxis.test"),
        AuthAttempt("PLAIN", "", USER, PASSWORD),
        MailFrom(USER, size=200, body="8BITMIME", ret="HDRS", envid="QQ+1"),
        RcptTo(
            "dr.mueller@kim2.kim.telematik-test",
            notify=frozenset({"SUCCESS", "FAILURE"}),
            orcpt=OriginalRecipient("rfc822", "dr.mueller@kim2"),
        ),
        RcptTo('"quoted local"@kim2.kim.telematik-test'),
        DataStart(),
        DataChunk(BODY),
        DataEnd(size=len(BODY), longest_line=len(b"From: <praxis.weber@kim1.kim.telematik-test>")),
        Rset(),
        MailFrom(""),
        RcptTo("postmaster"),
        DataStart(),
        DataEnd(size=0, longest_line=ANY),  # the native counter sees the "." line: see report
        Quit(),
        ConnectionClosed("quit"),
    ]


def test_whole_dialogue_events_and_replies() -> None:
    """A full session: EHLO, AUTH PLAIN with a 334 step, MAIL/RCPT with DSN parameters
    (RFC 3461, digest §3.2), DATA with dot stuffing, RSET, null sender, postmaster, QUIT."""
    driver = run([DIALOGUE])
    assert driver.events == expected_events()
    replies = driver.replies()
    assert replies[:8] == [
        "250-mx.kim1.kim.telematik-test",
        "250-PIPELINING",
        "250-SIZE 10000",
        "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES",
        "250-DSN",
        "250 AUTH PLAIN LOGIN",
        "334 ",
    ]
    assert replies[8:] == [
        "235 2.7.0 authentication successful",
        "250 2.1.0 sender ok",
        "250 2.1.5 recipient ok",
        "250 2.1.5 recipient ok",
        "354 end data with <CR><LF>.<CR><LF>",
        "250 2.0.0 queued",
        "250 2.0.0 OK",
        "250 2.1.0 sender ok",
        "250 2.1.5 recipient ok",
        "354 end data with <CR><LF>.<CR><LF>",
        "250 2.0.0 queued",
        "221 2.0.0 mx.kim1.kim.telematik-test closing connection",
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13, 64, 100, 511, 512])
@pytest.mark.parametrize("dialogue", [DIALOGUE, DIALOGUE_LOGIN], ids=["plain", "login"])
def test_chunk_sizes_give_the_same_events(size: int, dialogue: bytes) -> None:
    """Feeding the dialogue in chunks of any size gives the same events and the same bytes."""
    whole = run([dialogue])
    chunked = run(split_every(dialogue, size))
    assert chunked.events == whole.events
    assert chunked.output == whole.output


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(DIALOGUE)), max_size=40))
def test_random_splits_give_the_same_events(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(DIALOGUE)]
    chunks = [DIALOGUE[a:b] for a, b in itertools.pairwise(points) if b > a]
    assert run(chunks).events == expected_events()


def test_login_with_challenges() -> None:
    """AUTH LOGIN (KOM-LE-A_2009: PLAIN and LOGIN): two 334 challenges, then the decision."""
    driver = run([DIALOGUE_LOGIN])
    assert AuthAttempt("LOGIN", "", USER, PASSWORD) in driver.events
    lines = driver.replies()[7:]
    assert lines[:3] == [
        "334 VXNlcm5hbWU6",
        "334 UGFzc3dvcmQ6",
        "235 2.7.0 authentication successful",
    ]


def test_login_with_initial_username() -> None:
    driver = Driver(make_server())
    driver.feed(b"EHLO x\r\nAUTH LOGIN " + base64.b64encode(USER.encode()) + b"\r\n")
    assert driver.replies()[-1] == "334 UGFzc3dvcmQ6"
    driver.feed(base64.b64encode(b"wrong") + b"\r\n")
    assert driver.codes() == ["535 5.7.8"]
    assert not driver.server.authenticated
    driver.feed(b"MAIL FROM:<a@b.de>\r\n")
    assert driver.codes() == ["530 5.7.0"]


def setup_lines(name: str) -> bytes:
    return {
        "fresh": b"",
        "ehlo": b"EHLO pvs\r\n",
        "authed": b"EHLO pvs\r\nAUTH PLAIN " + PLAIN.encode() + b"\r\n",
        "mail": b"EHLO pvs\r\nAUTH PLAIN " + PLAIN.encode() + b"\r\nMAIL FROM:<a@b.de>\r\n",
    }[name]


BAD_COMMANDS = [
    ("fresh", b"FOO bar", "500 5.5.2"),
    ("authed", b"EXPN list", "502 5.5.1"),
    ("authed", b"STARTTLS", "502 5.5.1"),
    ("fresh", b"MAIL FROM:<a@b.de>", "503 5.5.1"),
    ("fresh", b"AUTH PLAIN " + PLAIN.encode(), "503 5.5.1"),
    ("ehlo", b"MAIL FROM:<a@b.de>", "530 5.7.0"),
    ("ehlo", b"RCPT TO:<a@b.de>", "530 5.7.0"),
    ("ehlo", b"DATA", "530 5.7.0"),
    ("authed", b"RCPT TO:<a@b.de>", "503 5.5.1"),
    ("authed", b"DATA", "503 5.5.1"),
    ("mail", b"DATA", "503 5.5.1"),
    ("mail", b"MAIL FROM:<a@b.de>", "503 5.5.1"),
    ("mail", b"AUTH LOGIN", "503 5.5.1"),
    ("authed", b"AUTH PLAIN " + PLAIN.encode(), "503 5.5.1"),
    ("fresh", b"EHLO", "501 5.5.4"),
    ("fresh", b"HELO a b", "501 5.5.4"),
    ("authed", b"MAIL FROM:a@b.de", "501 5.1.7"),
    ("authed", b"MAIL FROM:<a@b.de", "501 5.1.7"),
    ("authed", b"MAIL FROM:<a..b@c.de>", "501 5.1.7"),
    ("authed", b"MAIL FROM:<" + b"a" * 65 + b"@c.de>", "501 5.1.7"),
    ("authed", b"MAIL TO:<a@b.de>", "501 5.5.4"),
    ("authed", b"MAIL FROM:<a@b.de> SIZE=12x", "501 5.5.4"),
    ("authed", b"MAIL FROM:<a@b.de> SIZE=" + b"9" * 30, "501 5.5.4"),
    ("authed", b"MAIL FROM:<a@b.de> SIZE=10001", "552 5.3.4"),
    ("authed", b"MAIL FROM:<a@b.de> BODY=BINARYMIME", "501 5.5.4"),
    ("authed", b"MAIL FROM:<a@b.de> RET=ALL", "501 5.5.4"),
    ("authed", b"MAIL FROM:<a@b.de> ENVID=a+zz", "501 5.5.4"),
    ("authed", b"MAIL FROM:<a@b.de> SMTPUTF8", "555 5.5.4"),
    ("authed", b"MAIL FROM:<a@b.de> SIZE=1 SIZE=2", "501 5.5.4"),
    ("authed", b"MAIL FROM:<a@b.de> BODY=7BIT BODY=8BITMIME", "501 5.5.4"),
    ("authed", b"MAIL FROM:<a@b.de>SIZE=1", "501 5.5.4"),
    ("mail", b"RCPT TO:<>", "501 5.5.4"),
    ("mail", b"RCPT TO:<a@>", "501 5.1.3"),
    ("mail", b"RCPT TO:<a@b.de> NOTIFY=NEVER,SUCCESS", "501 5.5.4"),
    ("mail", b"RCPT TO:<a@b.de> NOTIFY=SOMETIMES", "501 5.5.4"),
    ("mail", b"RCPT TO:<a@b.de> ORCPT=a@b.de", "501 5.5.4"),
    ("mail", b"RCPT TO:<a@b.de> FOO=1", "555 5.5.4"),
    ("mail", b"RCPT TO:<\xc3\xa4@b.de>", "501 5.5.4"),
    ("ehlo", b"AUTH CRAM-MD5", "504 5.7.4"),
    ("ehlo", b"AUTH PLAIN !!!notbase64", "501 5.5.2"),
    ("ehlo", b"AUTH PLAIN " + base64.b64encode(b"no-nul-here"), "501 5.5.2"),
    ("ehlo", b"AUTH PLAIN *", "501 5.0.0"),
    ("ehlo", b"AUTH PLAIN " + base64.b64encode(b"\0user\r\n250 ok\0pw"), "501 5.5.2"),
    ("ehlo", b"AUTH LOGIN " + base64.b64encode(b"\xff\xfe"), "501 5.5.2"),
    ("ehlo", b"AUTH", "501 5.5.4"),
    ("authed", b"RSET now", "501 5.5.4"),
    ("authed", b"VRFY", "501 5.5.4"),
]


@pytest.mark.parametrize(("setup", "line", "expected"), BAD_COMMANDS)
def test_bad_command_gets_its_code_and_the_session_goes_on(
    setup: str, line: bytes, expected: str
) -> None:
    """RFC 5321 §4.2/§4.3, RFC 3463, digest §1.3 (530 5.7.0, 504 5.7.4): each bad command
    gets its reply, is reported as ProtocolViolation, and the next good command works."""
    driver = Driver(make_server())
    if setup_lines(setup):
        driver.feed(setup_lines(setup))
    driver.take_output()
    events = driver.feed(line + b"\r\n")
    assert driver.codes() == [expected]
    assert isinstance(events[-1], ProtocolViolation)
    assert events[-1].reply.code == int(expected[:3])
    driver.feed(b"NOOP\r\n")
    assert driver.codes() == ["250 2.0.0"]


def test_sasl_cancel_and_bad_base64_in_the_exchange() -> None:
    """RFC 4954 §4: "*" cancels with 501; bad base64 gets 501 5.5.2; then AUTH works."""
    driver = Driver(make_server())
    driver.feed(b"EHLO pvs\r\nAUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n#bad#\r\n")
    assert driver.codes() == ["250 ", "334 ", "501 5.0.0", "334 ", "501 5.5.2"]
    driver.feed(b"AUTH PLAIN " + PLAIN.encode() + b"\r\n")
    assert driver.codes() == ["235 2.7.0"]


def test_refused_recipient_leaves_no_recipient_for_data() -> None:
    """A RCPT the application refuses does not count: DATA then gets 503 5.5.1."""

    def refuse_rcpt(event: ServerEvent) -> Reply:
        if isinstance(event, RcptTo):
            return Reply(550, "5.1.1", f"{event.address}: no such user")
        return accept_all(event)

    driver = Driver(make_server(), refuse_rcpt)
    login(driver)
    driver.feed(b"MAIL FROM:<a@b.de>\r\nRCPT TO:<x@y.de>\r\nDATA\r\n")
    assert driver.codes() == ["250 2.1.0", "550 5.1.1", "503 5.5.1"]
    assert driver.server.state is State.MAIL


def test_rset_keeps_authentication() -> None:
    driver = Driver(make_server())
    login(driver)
    driver.feed(b"MAIL FROM:<a@b.de>\r\nRSET\r\nMAIL FROM:<a@b.de>\r\n")
    assert driver.codes() == ["250 2.1.0", "250 2.0.0", "250 2.1.0"]


def test_too_many_recipients() -> None:
    """RFC 5321 §4.5.3.1.10: beyond max_recipients the core answers 452 4.5.3."""
    driver = Driver(make_server(max_recipients=2))
    login(driver)
    driver.feed(b"MAIL FROM:<a@b.de>\r\n" + b"RCPT TO:<c@d.de>\r\n" * 3 + b"DATA\r\n")
    assert driver.codes() == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "452 4.5.3", "354 "]


@pytest.mark.parametrize("chunk", [1, 7, 100, 100_000])
def test_line_too_long_is_refused_and_the_session_resyncs(chunk: int) -> None:
    """RFC 5321 §4.5.3.1.4: a command line over 512 octets gets 500 5.5.6; the rest of it is
    discarded up to the next LF, and the next command works."""
    driver = Driver(make_server())
    data = b"NOOP " + b"x" * 5000 + b" RSET\r\nNOOP\r\n"
    for piece in split_every(data, chunk):
        driver.feed(piece)
    assert driver.codes() == ["500 5.5.6", "250 2.0.0"]


def test_a_line_of_exactly_512_octets_is_accepted() -> None:
    driver = Driver(make_server())
    driver.feed(b"NOOP " + b"x" * 505 + b"\r\n")
    assert driver.codes() == ["250 2.0.0"]
    driver.feed(b"NOOP " + b"x" * 506 + b"\r\n")
    assert driver.codes() == ["500 5.5.6"]


def data_session(body_wire: bytes, chunk: int = 10_000) -> Driver:
    driver = Driver(make_server())
    login(driver)
    data = b"MAIL FROM:<a@b.de>\r\nRCPT TO:<c@d.de>\r\nDATA\r\n" + body_wire
    for piece in split_every(data, chunk):
        driver.feed(piece)
    return driver


@pytest.mark.parametrize("sneaky", [b"\n.\r\n", b"\n.\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r"])
@pytest.mark.parametrize("chunk", [1, 3, 10_000])
def test_smuggling_sequences_do_not_end_data(sneaky: bytes, chunk: int) -> None:
    """SMTP smuggling: only CRLF.CRLF ends DATA; the other sequences stay in the body (a dot
    right after CRLF is unstuffed), and a smuggled MAIL FROM after them is body text."""
    smuggled = b"MAIL FROM:<evil@x.de>\r\nRCPT TO:<c@d.de>\r\nDATA\r\n"
    wire = b"Subject: x\r\n\r\nhello" + sneaky + smuggled + b"end\r\n"
    driver = data_session(wire + b".\r\nNOOP\r\n", chunk)
    chunks = [e for e in driver.events if isinstance(e, DataChunk)]
    ends = [e for e in driver.events if isinstance(e, DataEnd)]
    assert b"".join(c.data for c in chunks) == wire.replace(b"\r\n.", b"\r\n")
    assert smuggled in b"".join(c.data for c in chunks)
    assert len(ends) == 1
    assert ends[0].bare_lf + ends[0].bare_cr >= 1
    assert sum(isinstance(e, MailFrom) for e in driver.events) == 1
    assert driver.codes()[-2:] == ["250 2.0.0", "250 2.0.0"]


def test_clean_body_reports_no_bare_line_ends() -> None:
    driver = data_session(STUFFED + b".\r\n")
    end = next(e for e in driver.events if isinstance(e, DataEnd))
    assert (end.bare_lf, end.bare_cr, end.size, end.too_big) == (0, 0, len(BODY), False)


def test_body_over_the_limit_is_swallowed_and_reported() -> None:
    """RFC 1870 §6.1: a body over max_message_size is read to its end, not passed on, and
    DataEnd says too_big so the application answers 552 5.3.4; the session goes on."""
    big = (b"y" * 998 + b"\r\n") * 11
    driver = data_session(big + b".\r\nNOOP\r\n", chunk=777)
    passed = sum(len(e.data) for e in driver.events if isinstance(e, DataChunk))
    end = next(e for e in driver.events if isinstance(e, DataEnd))
    assert end.too_big
    assert end.size == len(big)
    assert passed <= 10_000
    assert driver.codes()[-2:] == ["552 5.3.4", "250 2.0.0"]
    assert driver.server.state is State.READY


def test_eof_inside_data_closes_without_data_end() -> None:
    driver = data_session(b"half a message\r\n")
    driver.feed(b"")
    assert isinstance(driver.events[-1], ConnectionClosed)
    assert driver.events[-1].reason == "eof"
    assert not any(isinstance(e, DataEnd) for e in driver.events)


def test_too_many_bad_commands_close_with_421() -> None:
    driver = Driver(make_server(max_bad_commands=3))
    driver.feed(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert driver.codes() == ["500 5.5.2", "500 5.5.2", "421 4.7.0"]
    assert driver.events[-1] == ConnectionClosed("too many bad commands")
    assert driver.server.state is State.CLOSED


def test_pipelined_commands_get_replies_in_order() -> None:
    """RFC 2920: a whole pipelined transaction in one feed; core replies (NOOP, errors) and
    application replies come out in command order."""
    driver = Driver(make_server())
    login(driver)
    driver.feed(
        b"NOOP\r\nMAIL FROM:<a@b.de>\r\nFOO\r\nRCPT TO:<c@d.de>\r\nNOOP\r\n"
        b"RCPT TO:<bad@>\r\nRCPT TO:<e@f.de>\r\nDATA\r\n"
    )
    assert driver.codes() == [
        "250 2.0.0",
        "250 2.1.0",
        "500 5.5.2",
        "250 2.1.5",
        "250 2.0.0",
        "501 5.1.3",
        "250 2.1.5",
        "354 ",
    ]


def test_next_event_while_a_decision_is_pending_is_misuse() -> None:
    server = make_server()
    server.receive_data(b"EHLO x\r\nAUTH PLAIN " + PLAIN.encode() + b"\r\n")
    assert isinstance(server.next_event(), Ehlo)
    assert isinstance(server.next_event(), AuthAttempt)
    with pytest.raises(LocalProtocolError, match="pending AUTH"):
        server.next_event()
    with pytest.raises(LocalProtocolError, match="reply 250 to AUTH"):
        server.send(Reply(250, "2.0.0", "ok"))
    server.send(Reply(235, "2.7.0", "ok"))
    with pytest.raises(LocalProtocolError, match="no decision"):
        server.send(Reply(250, "2.0.0", "ok"))
    assert server.next_event() is NEED_DATA


def test_application_can_close_after_a_refusal() -> None:
    """Digest §1.3: a malformed Clientmodul username gets 501 5.5.4 and the connection ends."""
    server = make_server()
    server.receive_data(b"EHLO x\r\nAUTH PLAIN " + PLAIN.encode() + b"\r\nNOOP\r\n")
    server.next_event()
    server.next_event()
    out = server.send(Reply(501, "5.5.4", "username malformed"), close=True)
    assert out.endswith(b"501 5.5.4 username malformed\r\n")
    assert server.next_event() == ConnectionClosed("closed by the application")


def test_abort_for_idle_timeout() -> None:
    server = make_server()
    out = server.abort(Reply(421, "4.4.2", "idle timeout"))
    assert out == b"421 4.4.2 idle timeout\r\n"
    assert isinstance(server.next_event(), ConnectionClosed)


def test_greeting_contains_esmtp() -> None:
    """Digest §1.3: the greeting must contain "ESMTP"."""
    assert make_server().greeting() == b"220 mx.kim1.kim.telematik-test ESMTP ready\r\n"


def test_reply_encoding_and_validation() -> None:
    assert Reply(550, "5.1.1", "no such user\nsecond line").encode() == (
        b"550-5.1.1 no such user\r\n550 5.1.1 second line\r\n"
    )
    assert Reply(250).encode() == b"250\r\n"
    with pytest.raises(LocalProtocolError, match="control character"):
        Reply(250, "2.0.0", "evil\r\n250 injected")
    with pytest.raises(LocalProtocolError, match="does not match"):
        Reply(550, "2.0.0", "x")
    with pytest.raises(LocalProtocolError, match=r"200\.\.599"):
        Reply(199)


def test_bare_lf_command_lines_are_accepted() -> None:
    driver = Driver(make_server())
    driver.feed(b"EHLO pvs\nNOOP\n")
    assert driver.codes() == ["250 ", "250 2.0.0"]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000), chunk=st.integers(min_value=1, max_value=600))
def test_random_bytes_never_raise(data: bytes, chunk: int) -> None:
    """Whatever the peer sends, the core raises nothing and every reply is well formed."""
    driver = Driver(make_server(max_bad_commands=1000))
    for piece in split_every(data, chunk):
        driver.feed(piece)
    driver.feed(b"")
    assert isinstance(driver.events[-1], ConnectionClosed)
    for line in driver.replies():
        assert line[:3].isdigit()
        assert line[3:4] in ("", " ", "-")


@settings(max_examples=100, deadline=None)
@given(
    lines=st.lists(
        st.sampled_from(
            [
                b"EHLO a",
                b"HELO b",
                b"AUTH PLAIN " + PLAIN.encode(),
                b"AUTH LOGIN",
                b"MAIL FROM:<a@b.de>",
                b"RCPT TO:<c@d.de>",
                b"DATA",
                b"x.",
                b".",
                b"RSET",
                b"NOOP",
                b"*",
                b"QUIT",
            ]
        ),
        max_size=30,
    )
)
def test_random_command_sequences_never_raise(lines: list[bytes]) -> None:
    driver = Driver(make_server())
    driver.feed(b"\r\n".join(lines) + b"\r\n")
    driver.feed(b"")
    assert isinstance(driver.events[-1], ConnectionClosed)


def test_relay_session_without_auth() -> None:
    """With require_auth=False (a Fachdienst receiving from a peer Fachdienst) MAIL works
    right after HELO, and no AUTH is announced when no mechanism is configured."""
    driver = Driver(make_server(require_auth=False, auth_mechanisms=()))
    driver.feed(b"EHLO peer\r\n")
    assert "250 AUTH PLAIN LOGIN" not in driver.replies()
    driver.feed(b"HELO peer\r\nMAIL FROM:<a@b.de>\r\nRCPT TO:<c@d.de>\r\nAUTH PLAIN x\r\n")
    assert driver.codes() == ["250 ", "250 2.1.0", "250 2.1.5", "503 5.5.1"]


def test_ehlo_inside_a_transaction_resets_it() -> None:
    """RFC 5321 §4.1.4: EHLO in a transaction acts like RSET; authentication stays."""
    driver = Driver(make_server())
    login(driver)
    driver.feed(b"MAIL FROM:<a@b.de>\r\nEHLO again\r\nRCPT TO:<c@d.de>\r\nMAIL FROM:<a@b.de>\r\n")
    assert driver.codes() == ["250 2.1.0", "250 ", "503 5.5.1", "250 2.1.0"]


@pytest.mark.parametrize(
    ("argument", "shown"),
    [
        (b"FROM:<a@b> X\x00=1", "parameter X\\x00=1: bad keyword"),
        (b"FROM:<a@b> SIZE=1\x01", "parameter SIZE: bad value"),
        (b"FROM:<a\x00@b>", "sender address <a\\x00@b>: bad syntax"),
        (b"FROM:<a@b> \x1b[31m=1", "parameter \\x1b[31m=1: bad keyword"),
    ],
)
def test_control_characters_in_mail_are_501_escaped(argument: bytes, shown: str) -> None:
    """Issue 11: a NUL or an escape in a MAIL argument was quoted into the reply, which the
    core refused (LocalProtocolError: 421 internal error for the client). Now the reply
    names it escaped, and the session goes on."""
    driver = Driver(make_server())
    driver.feed(setup_lines("authed"))
    driver.take_output()
    driver.feed(b"MAIL " + argument + b"\r\n")
    out = driver.take_output()
    assert out.startswith(b"501 5."), out
    assert shown.encode() in out, out
    driver.feed(b"MAIL FROM:<a@b>\r\n")
    assert driver.codes() == ["250 2.1.0"]


def test_sasl_fields_with_control_characters_or_over_1024_octets_are_501() -> None:
    """RFC 4616 §2 / SASLprep: CR, LF or NUL inside a field is refused (it would break the
    reply quoting the username, or a log line); so is a field over MAX_SASL_FIELD."""
    driver = Driver(make_server())
    driver.feed(b"EHLO pvs\r\n")
    driver.take_output()
    for user in (b"a\r\nb", b"a\nb", b"u" * 1025):
        token = base64.b64encode(b"\0" + user + b"\0pw")
        driver.feed(b"AUTH PLAIN " + token + b"\r\n")
        assert driver.codes() == ["501 5.5.2"], user[:20]


def test_reply_lines_are_cut_to_512_octets() -> None:
    """RFC 5321 §4.5.3.1.5: a reply text quoting a long username is cut, at a character
    boundary, with "..."; every line of a multi-line reply alike."""
    wire = Reply(535, "5.7.8", "authentication failed for " + "ä" * 600).encode()
    assert len(wire) <= 512
    assert wire.endswith(b"...\r\n")
    assert wire.startswith(b"535 5.7.8 ")
    wire.decode("utf-8")
    multi = Reply(250, None, "x" * 600 + "\n" + "y" * 600).encode()
    assert [len(line) <= 510 for line in multi.split(b"\r\n")[:-1]] == [True, True]
