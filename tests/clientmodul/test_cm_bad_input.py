"""Bad input from the PVS at the Clientmodul's SMTPS and POP3S proxies (issue 11): each gets the
protocol's clear error and the session goes on (digest §1.3, §1.5: plain ``-ERR`` in CONNECT).

Before issue 11, POP3 ``AUTH PLAIN`` with CR/LF in the decoded credentials or a 450-character
username was ``-ERR internal error``, and ``MAIL FROM:<me> X\\0=1`` was ``421 internal error``.
"""

from __future__ import annotations

import base64
import poplib

import trio
from cm_support import Kim

WEBER, KLEIN = "praxis.weber", "zahnarzt.klein"


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _command(pop: poplib.POP3_SSL, line: str) -> bytes:
    try:
        answer: bytes = pop._shortcmd(line)  # type: ignore[attr-defined]
    except poplib.error_proto as exc:
        error = exc.args[0]
        answer = error if isinstance(error, bytes) else str(error).encode()
    return answer


async def test_pop3_auth_plain_with_crlf_nul_and_long_usernames(cm: Kim) -> None:
    """KOM-LE-A_2032: CR/LF or NUL in the decoded AUTH PLAIN credentials, a 450-character and a
    10 KB username: each a plain -ERR that says what was wrong (no response code, digest
    §1.5); then the right AUTH PLAIN logs in and STAT works in the same session."""
    p = cm.participant(WEBER)

    def dialogue() -> list[bytes]:
        pop = cm.pop3_connect()
        try:
            return [
                _command(pop, f"AUTH PLAIN {_plain(p.pop3_username + chr(13) + chr(10), 'x')}"),
                _command(pop, f"AUTH PLAIN {_plain('a' + chr(0) + 'b', 'x')}"),
                _command(pop, "AUTH PLAIN"),
                _command(pop, _plain("u" * 450 + p.pop3_username, p.password)),
                _command(pop, "AUTH PLAIN"),
                _command(pop, _plain("v" * 10_000, p.password)),
                _command(pop, f"AUTH PLAIN {_plain(p.pop3_username, p.password)}"),
                _command(pop, "STAT"),
            ]
        finally:
            pop.quit()

    crlf, nul, _, long, _, huge, login, stat = await trio.to_thread.run_sync(dialogue)
    for answer in (crlf, nul, long, huge):
        assert answer.startswith(b"-ERR "), answer
        assert not answer.startswith(b"-ERR ["), answer
        assert b"internal error" not in answer
    assert b"control characters" in crlf
    assert b"too long" in huge
    assert len(long) + 2 <= 512
    assert login.startswith(b"+OK"), login
    assert stat.startswith(b"+OK "), stat


async def test_smtp_bad_mail_parameters_are_501_and_the_session_goes_on(cm: Kim) -> None:
    """KOM-LE-A_2008: a NUL or a control character in a MAIL parameter (or in the address) is
    501 naming it, not 421; the PVS then sends its message in the same session."""
    sender, to = cm.address(WEBER), cm.address(KLEIN)

    def dialogue() -> tuple[list[tuple[int, bytes]], dict[str, tuple[int, bytes]]]:
        with cm.smtp_login(WEBER) as smtp:
            answers = [
                smtp.docmd("MAIL", f"FROM:<{sender}> X\0=1"),
                smtp.docmd("MAIL", f"FROM:<{sender}\0>"),
                smtp.docmd("MAIL", f"FROM:<{sender}> SIZE=1\x1b"),
            ]
            message = (
                f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: nach dem Fehler\r\n\r\nHallo\r\n"
            ).encode()
            return answers, smtp.sendmail(sender, [to], message)

    answers, refused = await trio.to_thread.run_sync(dialogue)
    assert [code for code, _ in answers] == [501, 501, 501], answers
    assert b"X\\x00=1" in answers[0][1]
    assert refused == {}
