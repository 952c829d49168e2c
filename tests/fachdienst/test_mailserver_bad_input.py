"""Bad input from a client at the Fachdienst's SMTPS and POP3S servers (issue 11): each gets the
protocol's clear error, the session goes on, and nothing the client sent forges a log line.

Before issue 11, ``MAIL FROM:<me> X\\0=1`` ended the SMTP session with ``421 internal error``
(the NUL quoted into the 501 reply), and POP3 ``AUTH PLAIN`` with CR/LF inside the decoded
credentials or a 450-character username ended the POP3 session with ``-ERR internal error``.
"""

from __future__ import annotations

import base64
import logging
import poplib

import pytest
import trio
from fd_support import FD1, Running, make_message, pop3_command, smtp_connect, text_of

CRLF, NUL = "\r\n", "\0"


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _pop3(app: Running) -> poplib.POP3_SSL:
    host, port = app.address(FD1, "pop3")
    return poplib.POP3_SSL(host, port, context=app.client_ssl(), timeout=30)


async def test_smtp_bad_mail_parameters_are_501_and_the_session_goes_on(
    appliance: Running,
) -> None:
    """A NUL or another control character in a MAIL parameter is 501 5.5.4 naming it (escaped);
    the same session then sends a message."""
    p = appliance.participant("praxis.weber")
    to = appliance.participant("zahnarzt.klein")["address"]

    def dialogue() -> tuple[list[tuple[int, str]], dict[str, tuple[int, bytes]]]:
        with smtp_connect(appliance, FD1, "praxis.weber") as smtp:
            answers = []
            for argument in (
                f"FROM:<{p['address']}> X\0=1",
                f"FROM:<{p['address']}> SIZE=1\x01",
                f"FROM:<{p['address']}\0>",
                f"FROM:<{p['address']}> BODY=\x7f",
            ):
                code, text = smtp.docmd("MAIL", argument)
                answers.append((code, text_of(text)))
            refused = smtp.sendmail(p["address"], [to], make_message(p["address"], to))
            return answers, refused

    answers, refused = await trio.to_thread.run_sync(dialogue)
    assert [code for code, _ in answers] == [501, 501, 501, 501], answers
    assert all(text.startswith("5.") for _, text in answers), answers
    assert "X\\x00=1" in answers[0][1]
    assert refused == {}


async def test_smtp_auth_with_control_characters_or_a_long_username(appliance: Running) -> None:
    """AUTH PLAIN with CR/LF or NUL inside a field is 501 5.5.2; a 450-character username is
    refused 535 5.7.8 in one reply line of at most 512 octets, naming it cut short; then the
    right login works."""
    p = appliance.participant("praxis.weber")

    def dialogue() -> tuple[list[tuple[int, str]], int]:
        with smtp_connect(appliance, FD1) as smtp:
            answers = []
            for user in ("evil\r\n250 forged", "a\0b", "u" * 450 + "@" + FD1):
                code, text = smtp.docmd("AUTH", f"PLAIN {_plain(user, 'x')}")
                answers.append((code, text_of(text)))
            code, _ = smtp.docmd("AUTH", f"PLAIN {_plain(p['address'], p['password'])}")
            return answers, code

    answers, code = await trio.to_thread.run_sync(dialogue)
    assert [c for c, _ in answers] == [501, 501, 535], answers
    assert "control character" in answers[0][1]
    assert len(answers[2][1]) + 4 <= 512
    assert "u" * 40 + "..." in answers[2][1]  # the username named, cut short
    assert code == 235


async def test_pop3_auth_plain_with_crlf_nul_and_long_usernames(
    appliance: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """AUTH PLAIN whose decoded credentials hold CR/LF or NUL is -ERR saying so (and nothing
    reaches the log to forge a line); a 450-character username is -ERR [AUTH] within 512
    octets; a 10 KB one is -ERR line too long; after each, the right login and STAT work."""
    caplog.set_level(logging.INFO)
    p = appliance.participant("praxis.weber")

    def dialogue() -> list[bytes]:
        pop = _pop3(appliance)
        try:
            answers = [
                pop3_command(pop, f"AUTH PLAIN {_plain('evil' + CRLF + 'pop3 forged', 'x')}"),
                pop3_command(pop, f"AUTH PLAIN {_plain('nul' + NUL + 'user', 'x')}"),
                pop3_command(pop, "AUTH PLAIN"),  # the credentials on the next line
                pop3_command(pop, _plain("u" * 450 + "@" + FD1, "wrong")),
                pop3_command(pop, "AUTH PLAIN"),
                pop3_command(pop, _plain("v" * 10_000, "wrong")),
                pop3_command(pop, f"AUTH PLAIN {_plain(p['address'], p['password'])}"),
                pop3_command(pop, "STAT"),
            ]
        finally:
            pop.quit()
        return answers

    crlf, nul, _, long, _, huge, login, stat = await trio.to_thread.run_sync(dialogue)
    assert crlf.startswith(b"-ERR "), crlf
    assert b"control characters" in crlf, crlf
    assert nul.startswith(b"-ERR "), nul
    assert long.startswith(b"-ERR [AUTH] "), long
    assert len(long) + 2 <= 512, long
    assert huge.startswith(b"-ERR "), huge
    assert b"too long" in huge, huge
    assert login.startswith(b"+OK"), login
    assert stat.startswith(b"+OK "), stat
    assert "pop3 forged" not in caplog.text
