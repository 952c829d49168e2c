"""Fuzz targets of the sans-IO protocol cores: SMTP and POP3 (server and client), LDAP.

Each harness plays the application the way the Fachdienst and the Clientmodul do, including
what makes the cores' inputs dangerous: answers that quote what the peer sent (a username in
``535 5.7.8 authentication failed for ...``, a bind name in a diagnostic). The first input byte
chooses the size of the pieces the input is fed in, so that splitting is fuzzed too. A server
core declares no exception at all (every bad input is a reply and the session goes on); a
client core declares its ``RemoteProtocolError``. The harnesses also check what the cores write:
whole lines, each within its protocol's limit and free of control characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from kim_appliance.protocols import ldap, pop3, smtp
from kim_appliance.protocols.ldap import _codec as ldap_codec
from kim_appliance.protocols.ldap import _events as ldap_events

from .target import Finding, Runner, Target

_SMTP_LINE = re.compile(rb"[2-5][0-9][0-9]([ -][\x20-\x7e\x80-\xff]*)?")
_POP3_LINE = re.compile(rb"(\+OK|-ERR)( [\x20-\x7e\x80-\xff]*)?|\+ [\x20-\x7e]*|\+|\.")


def _pieces(data: bytes) -> Iterator[bytes]:
    """The input after its first byte, in pieces of 1 + first byte % 64 (all at once if 0)."""
    if not data:
        return
    size = data[0] % 64
    rest = data[1:]
    if size == 0:
        yield rest
        return
    for start in range(0, len(rest), size):
        yield rest[start : start + size]


def _check_lines(out: bytes, pattern: re.Pattern[bytes], limit: int, what: str) -> None:
    """Every line of ``out`` ends in CRLF, fits ``limit`` and matches ``pattern`` (the lines of
    a CAPA listing, which the POP3 core writes itself, are skipped)."""
    if out and not out.endswith(b"\r\n"):
        raise Finding(f"{what}: output does not end with CRLF: {out[-80:]!r}")
    listing = False
    for line in out.split(b"\r\n")[:-1]:
        if listing:
            listing = line != b"."
            continue
        listing = line == b"+OK capability list follows"
        if len(line) + 2 > limit:
            raise Finding(f"{what}: line of {len(line) + 2} octets over {limit}: {line[:80]!r}")
        if not pattern.fullmatch(line):
            raise Finding(f"{what}: malformed line {line[:120]!r}")


# --- SMTP server -----------------------------------------------------------------------------


def _smtp_answer(event: object) -> smtp.Reply | None:
    """The Fachdienst's answers (fachdienst/smtp_session.py), quoting the peer like it does."""
    if isinstance(event, smtp.AuthAttempt):
        if event.password == "secret":
            return smtp.Reply(235, "2.7.0", "authentication successful")
        return smtp.Reply(
            535, "5.7.8", f"authentication failed for {event.username}: wrong username or password"
        )
    if isinstance(event, smtp.MailFrom):
        return smtp.Reply(250, "2.1.0", f"sender <{event.address}> ok")
    if isinstance(event, smtp.RcptTo):
        if event.address.startswith("x"):
            return smtp.Reply(550, "5.1.1", f"<{event.address}>: no such user")
        return smtp.Reply(250, "2.1.5", f"recipient <{event.address}> ok")
    if isinstance(event, smtp.DataStart):
        return smtp.Reply(354, None, "end data with <CR><LF>.<CR><LF>")
    if isinstance(event, smtp.DataEnd):
        if event.too_big:
            return smtp.Reply(552, "5.3.4", "message too big")
        return smtp.Reply(250, "2.0.0", f"queued ({event.size} octets)")
    return None


def _build_smtp_server() -> Runner:
    def run(data: bytes) -> None:
        server = smtp.SmtpServer(
            hostname="fd1.kim.telematik-test", max_message_size=4096, max_recipients=4
        )
        out = bytearray(server.greeting())
        steps = 0
        for piece in [*_pieces(data), b""]:
            server.receive_data(piece)
            while True:
                steps += 1
                if steps > 10 * len(data) + 100:
                    raise Finding("SmtpServer: no progress")
                event = server.next_event()
                if event is smtp.NEED_DATA:
                    out += server.data_to_send()
                    break
                if isinstance(event, smtp.ConnectionClosed):
                    out += server.data_to_send()
                    _check_lines(bytes(out), _SMTP_LINE, 512, "SmtpServer")
                    return
                reply = _smtp_answer(event)
                if reply is not None:
                    out += server.send(reply)
        raise Finding("SmtpServer: EOF fed, but the session did not close")

    return run


# --- SMTP client -----------------------------------------------------------------------------


def _build_smtp_client() -> Runner:
    """The Clientmodul's and the relay's side: commands out, fuzzed server replies in."""

    def run(data: bytes) -> None:
        client = smtp.SmtpClient(hostname="clientmodul.localhost")
        client.ehlo()
        for piece in [*_pieces(data), b""]:
            client.receive_data(piece)
            while True:
                event = client.next_event()
                if event is smtp.NEED_DATA or isinstance(event, smtp.ConnectionClosed):
                    break
                assert isinstance(event, smtp.ServerReply)
                if event.command == "EHLO" and event.code == 250:
                    if "AUTH" in client.extensions:
                        client.auth_plain("praxis@fd1.kim.telematik-test", "secret")
                    size = 100 if "SIZE" in client.extensions else None
                    notify = {"SUCCESS", "FAILURE"} if "DSN" in client.extensions else None
                    client.mail("praxis@fd1.kim.telematik-test", size=size)
                    client.rcpt("arzt@fd2.kim.telematik-test", notify=notify)
                    client.data()
                elif event.command == "AUTH" and event.code == 334:
                    client.auth_cancel()
                elif event.command == "DATA" and event.code == 354:
                    client.body(b"Subject: x\r\n\r\n.leading dot\r\n")
                    client.end_body()
                elif event.command == "END-OF-DATA":
                    client.quit()
            if isinstance(event, smtp.ConnectionClosed):
                return

    return run


# --- POP3 server -----------------------------------------------------------------------------

_MAILBOX = [b"Subject: one\r\n\r\n.dot\r\nbody\r\n", b"Subject: two\r\n\r\nno final CRLF"]


def _pop3_answer(server: pop3.Pop3Server, event: object) -> bytes:
    """The Fachdienst's answers (fachdienst/pop3_session.py), quoting the username like it."""
    if isinstance(event, pop3.AuthAttempt):
        if event.password == "secret":
            return server.send(pop3.Response(True, f"{event.username} has 2 messages"))
        text = f"authentication failed for {event.username}: wrong username or password"
        return server.send(pop3.Response(False, text, pop3.RespCode.AUTH))
    if isinstance(event, pop3.Stat):
        return server.send(pop3.Response(True, f"{len(_MAILBOX)} {sum(map(len, _MAILBOX))}"))
    if isinstance(event, pop3.List | pop3.Uidl):
        if event.msg is None:
            rows = b"".join(b"%d %d\r\n" % (i + 1, len(m)) for i, m in enumerate(_MAILBOX))
            return (
                server.send_multiline("listing") + server.send_body(rows) + (server.end_multiline())
            )
        if event.msg > len(_MAILBOX):
            return server.send(pop3.Response(False, f"no message {event.msg}"))
        return server.send(pop3.Response(True, f"{event.msg} {len(_MAILBOX[event.msg - 1])}"))
    if isinstance(event, pop3.Retr | pop3.Top):
        if event.msg > len(_MAILBOX):
            return server.send(pop3.Response(False, f"no message {event.msg}"))
        message = _MAILBOX[event.msg - 1]
        return (
            server.send_multiline("message follows")
            + server.send_body(message)
            + (server.end_multiline())
        )
    if isinstance(event, pop3.Dele):
        return server.send(pop3.Response(True, f"message {event.msg} deleted"))
    if isinstance(event, pop3.Rset | pop3.Noop | pop3.Quit):
        return server.send(pop3.Response(True, ""))
    raise Finding(f"Pop3Server handed out {event!r}")


def _build_pop3_server() -> Runner:
    def run(data: bytes) -> None:
        server = pop3.Pop3Server(
            hostname="fd1.kim.telematik-test", apop_timestamp="<1.2@fd1.kim.telematik-test>"
        )
        status = bytearray(server.greeting())
        steps = 0
        for piece in [*_pieces(data), b""]:
            server.receive_data(piece)
            while True:
                steps += 1
                if steps > 10 * len(data) + 100:
                    raise Finding("Pop3Server: no progress")
                event = server.next_event()
                if event is pop3.NEED_DATA:
                    status += server.data_to_send()
                    break
                if isinstance(event, pop3.ProtocolViolation):
                    continue
                if isinstance(event, pop3.ConnectionClosed):
                    status += server.data_to_send()
                    # status lines only: the multi-line bodies are the mailbox's own bytes
                    _check_lines(bytes(status), _POP3_LINE, 512, "Pop3Server")
                    return
                status += server.data_to_send()
                answer = _pop3_answer(server, event)
                status += answer.split(b"\r\n", 1)[0] + b"\r\n"
        raise Finding("Pop3Server: EOF fed, but the session did not close")

    return run


# --- POP3 client -----------------------------------------------------------------------------


def _build_pop3_client() -> Runner:
    """The Clientmodul's upstream side: a pipelined session, fuzzed server answers."""

    def run(data: bytes) -> None:
        client = pop3.Pop3Client()
        client.capa()
        client.auth_plain("praxis@fd1.kim.telematik-test", "secret", initial_response=False)
        for piece in [*_pieces(data), b""]:
            client.receive_data(piece)
            while True:
                event = client.next_event()
                if event is pop3.NEED_DATA:
                    break
                if isinstance(event, pop3.ConnectionClosed):
                    return
                if isinstance(event, pop3.Pop3Reply) and event.continuation:
                    client.continue_auth()
                    client.stat()
                    client.list()
                    client.uidl(1)
                    client.retr(1)
                    client.top(2, 0)
                    client.dele(1)
                    client.quit()

    return run


# --- LDAP ------------------------------------------------------------------------------------


def _build_ldap_server() -> Runner:
    """The VZD's LDAP side (directory/server.py): answers that quote the bind name and filter."""

    def run(data: bytes) -> None:
        server = ldap.LdapServer(max_pdu_size=16 * 1024, start_tls=True)
        for piece in [*_pieces(data), b""]:
            server.receive_data(piece)
            while True:
                event = server.next_event()
                if event is ldap.NEED_DATA:
                    server.data_to_send()
                    break
                server.data_to_send()
                if isinstance(event, ldap.ConnectionClosed):
                    return
                if isinstance(event, ldap.Bind):
                    server.send_bind_result(
                        event.message_id,
                        ldap.ResultCode.INVALID_CREDENTIALS,
                        f"bind as {event.name!r} refused",
                    )
                elif isinstance(event, ldap.Search):
                    text = ldap.filter_to_string(event.filter)
                    server.send_entry(
                        event.message_id,
                        f"uid=x,{event.base}",
                        {name: [text.encode()] for name in event.attributes[:4]},
                    )
                    # a paged search (RFC 2696) gets a cookie while it asks for entries
                    cookie = b"next" if event.paged is not None and event.paged.size else b""
                    server.send_search_done(
                        event.message_id, ldap.ResultCode.SUCCESS, text, cookie=cookie
                    )
                elif isinstance(event, ldap.StartTls):
                    server.send_start_tls_result(event.message_id, ldap.ResultCode.SUCCESS)

    return run


def _build_ldap_ber() -> Runner:
    """The codec alone: framing, decoding and the Filter tree of one PDU."""

    def run(data: bytes) -> None:
        length = ldap_codec.frame_length(data)
        if length is None or length > len(data):
            return
        message = ldap_codec.decode_message(data[:length])
        op = message["protocolOp"]
        if op.getName() == "searchRequest":
            tree = ldap_codec.decode_filter(op.getComponent()["filter"])
            ldap_events.filter_to_string(tree)

    return run


_SMTP_TOKENS = (
    b"\r\n", b"\n", b"\r", b"\0", b".\r\n", b"\r\n.\r\n", b"EHLO x\r\n", b"AUTH PLAIN ",
    b"AUTH LOGIN\r\n", b"MAIL FROM:<", b"RCPT TO:<", b"DATA\r\n", b"RSET\r\n", b"SIZE=",
    b"NOTIFY=", b"ORCPT=rfc822;", b"ENVID=", b"BODY=8BITMIME", b"RET=HDRS", b"+2B", b"=",
    b"@fd1.kim.telematik-test>", b"AGEAc2VjcmV0", b"*\r\n",
)  # fmt: skip
_POP3_TOKENS = (
    b"\r\n", b"\n", b"\0", b"USER ", b"PASS ", b"APOP ", b"AUTH PLAIN ", b"AUTH PLAIN\r\n",
    b"STAT\r\n", b"LIST ", b"RETR ", b"TOP 1 0\r\n", b"UIDL\r\n", b"DELE 1\r\n", b"QUIT\r\n",
    b"CAPA\r\n", b"9999999999", b"*\r\n", b"=", b"AHVzZXIAc2VjcmV0",
)  # fmt: skip
_REPLY_TOKENS = (
    b"\r\n", b"\n", b"250-", b"250 ", b"334 ", b"354 ", b"421 ", b"220 ", b"+OK ", b"-ERR ",
    b"+ \r\n", b".\r\n", b"\r\n.\r\n", b"AUTH PLAIN LOGIN\r\n", b"SIZE 1000\r\n", b"DSN\r\n",
    b"[SYS/TEMP] ", b"<1@x>",
)  # fmt: skip
_BER_TOKENS = (
    b"\x30\x84\x00\x00\x00\x10", b"\x04\x88\xff\xff\xff\xff\xff\xff\xff\xff", b"\x30\x80",
    b"\xa0\x00", b"\xa1\x03", b"\xa2\x03\xa2\x01", b"\x87\x0bobjectClass", b"\x1f\xff\xff\x7f",
    b"\x02\x09\x00\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0a\x01\x05", b"\x01\x01\xff",
)  # fmt: skip

TARGETS = [
    Target(
        "smtp_server", "SmtpServer with the Fachdienst's answers", (), _build_smtp_server,
        max_len=16 * 1024, dictionary=_SMTP_TOKENS,
    ),
    Target(
        "smtp_client", "SmtpClient reading fuzzed replies", (smtp.RemoteProtocolError,),
        _build_smtp_client, max_len=16 * 1024, dictionary=_REPLY_TOKENS,
    ),
    Target(
        "pop3_server", "Pop3Server with the Fachdienst's answers", (), _build_pop3_server,
        max_len=16 * 1024, dictionary=_POP3_TOKENS,
    ),
    Target(
        "pop3_client", "Pop3Client reading fuzzed answers", (pop3.RemoteProtocolError,),
        _build_pop3_client, max_len=16 * 1024, dictionary=_REPLY_TOKENS,
    ),
    Target(
        "ldap_server", "LdapServer with the VZD's answers", (), _build_ldap_server,
        max_len=16 * 1024, dictionary=_BER_TOKENS,
    ),
    Target(
        "ldap_ber", "LDAP framing, pyasn1 decoding and Filter trees",
        (ldap_codec.MalformedPdu,), _build_ldap_ber, max_len=16 * 1024, dictionary=_BER_TOKENS,
    ),
]  # fmt: skip
