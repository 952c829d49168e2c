"""The client core on its own: reply matching, body framing, server misbehaviour, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kim_appliance.protocols.pop3 import (
    NEED_DATA,
    BodyChunk,
    BodyEnd,
    ConnectionClosed,
    LocalProtocolError,
    Pop3Client,
    Pop3Reply,
    RemoteProtocolError,
)


def _events(client: Pop3Client, data: bytes) -> list[object]:
    client.receive_data(data)
    events = []
    while (event := client.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


def _greeted() -> Pop3Client:
    client = Pop3Client()
    _events(client, b"+OK hi\r\n")
    return client


def test_greeting_is_the_first_reply_with_the_apop_timestamp() -> None:
    client = Pop3Client()
    assert client.pending_commands == ("GREETING",)
    (reply,) = _events(client, b"+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>\r\n")
    assert reply == Pop3Reply(
        "GREETING",
        True,
        "POP3 ready <1896.697170952@dbc.mtview.ca.us>",
        apop_timestamp="<1896.697170952@dbc.mtview.ca.us>",
    )
    # RFC 1939 §7's example digest.
    assert client.apop("mrose", "tanstaaf") == b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n"


def test_apop_without_timestamp_is_refused_locally() -> None:
    with pytest.raises(LocalProtocolError, match="no timestamp"):
        _greeted().apop("mrose", "x")


def test_resp_code_is_parsed_out_of_the_text() -> None:
    client = _greeted()
    client.user("a")
    client.pass_("b")
    events = _events(client, b"+OK\r\n-ERR [sys/temp] try later\r\n")
    assert events == [
        Pop3Reply("USER", True, ""),
        Pop3Reply("PASS", False, "try later", code="SYS/TEMP"),
    ]


def test_bare_lf_dot_does_not_end_a_body() -> None:
    """Only CRLF . CRLF ends a multi-line answer: no smuggling through '\\n.\\r\\n'."""
    client = _greeted()
    client.retr(1)
    client.noop()
    events = _events(client, b"+OK\r\nA\n.\r\n..B\r\n.\r\n+OK\r\n")
    assert events[0] == Pop3Reply("RETR", True, "", multiline=True)
    body = b"".join(e.data for e in events if isinstance(e, BodyChunk))
    assert body == b"A\n.\r\n.B\r\n"
    assert events[-2:] == [BodyEnd(), Pop3Reply("NOOP", True, "")]


def test_err_to_a_multiline_command_has_no_body() -> None:
    client = _greeted()
    client.retr(9)
    client.stat()
    assert _events(client, b"-ERR no such message\r\n+OK 0 0\r\n") == [
        Pop3Reply("RETR", False, "no such message"),
        Pop3Reply("STAT", True, "0 0"),
    ]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"+OK hi\r\n+OK nobody asked\r\n", "without a command"),
        (b"HELLO\r\n", "must start with \\+OK or -ERR"),
        (b"+OKAY\r\n", "must start with \\+OK or -ERR"),
        (b"+OK " + b"x" * 5000, "longer than 4096"),
    ],
)
def test_server_misbehaviour_raises_remote_protocol_error(wire: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        _events(Pop3Client(), wire)


def test_eof_inside_a_body_or_before_a_reply_is_an_error() -> None:
    client = _greeted()
    client.retr(1)
    _events(client, b"+OK\r\npartial")
    with pytest.raises(RemoteProtocolError, match="inside the multi-line answer to RETR"):
        _events(client, b"")
    client = _greeted()
    client.stat()
    with pytest.raises(RemoteProtocolError, match="before the answer to STAT"):
        _events(client, b"")


def test_clean_close_after_quit() -> None:
    client = _greeted()
    client.quit()
    assert _events(client, b"+OK bye\r\n") == [Pop3Reply("QUIT", True, "bye")]
    assert _events(client, b"") == [ConnectionClosed()]


def test_auth_plain_chooses_initial_response_when_it_fits() -> None:
    """RFC 5034 §4: the initial response only when the command stays within 255 octets."""
    client = _greeted()
    assert client.auth_plain("a@b", "pw") == b"AUTH PLAIN AGFAYgBwdw==\r\n"
    long_password = "P@ssw0rd" * 30
    assert client.auth_plain("a@b", long_password) == b"AUTH PLAIN\r\n"
    with pytest.raises(LocalProtocolError, match="waiting for its challenge"):
        client.stat()
    events = _events(client, b"+OK\r\n+ \r\n")
    assert events[-1] == Pop3Reply("AUTH", True, "", continuation=True)
    assert client.continue_auth().endswith(b"\r\n")
    assert client.stat() == b"STAT\r\n"


def test_local_argument_checks() -> None:
    client = _greeted()
    with pytest.raises(LocalProtocolError, match="one word"):
        client.user("two words")
    with pytest.raises(LocalProtocolError, match="CR, LF"):
        client.pass_("a\r\nDELE 1")
    with pytest.raises(LocalProtocolError, match="at least 1"):
        client.retr(0)
    with pytest.raises(LocalProtocolError, match="at least 0"):
        client.top(1, -1)
    assert client.top(1, 0) == b"TOP 1 0\r\n"


FRAGMENTS = st.sampled_from(
    [b"+OK", b"-ERR", b"+OK [SYS/TEMP] x", b"+ ", b".", b"..x", b"", b"\n", b"\r", b"+OK <a@b>"]
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(st.binary(max_size=400), st.lists(FRAGMENTS, max_size=30).map(b"\r\n".join)),
    chunk=st.integers(1, 32),
)
def test_random_server_data_raises_only_remote_protocol_error(data: bytes, chunk: int) -> None:
    client = Pop3Client()
    client.capa()
    client.retr(1)
    client.stat()
    client.list()
    try:
        for i in range(0, len(data), chunk):
            _events(client, data[i : i + chunk])
        _events(client, b"")
    except RemoteProtocolError:
        pass
