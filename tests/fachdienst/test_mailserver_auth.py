"""Authentication at the Fachdienst mail server through real SMTPS/POP3S sessions (digest §3.2):
wrong passwords, lockout after failed logins, APOP, and passwords kept out of the log."""

from __future__ import annotations

import base64
import contextlib
import logging
import poplib
import smtplib

import pytest
import trio
from fd_support import (
    FD1,
    Running,
    StartAppliance,
    pop3_command,
    pop3_connect,
    smtp_connect,
    text_of,
)

LOCKOUT = {"max_failed_logins": 3, "lockout_seconds": 600}


def _smtp_auth(app: Running, local: str, password: str) -> tuple[int, str]:
    """One AUTH PLAIN attempt (exactly one: smtplib.login would try a second mechanism)."""
    with smtp_connect(app, FD1) as smtp:
        smtp.user, smtp.password = app.participant(local)["address"], password
        try:
            code, text = smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code, text_of(exc.smtp_error)
        return code, text.decode()


def _pop3_pass(app: Running, local: str, password: str) -> str:
    """USER/PASS; the server's answer to PASS."""
    host, port = app.address(FD1, "pop3")
    pop = poplib.POP3_SSL(host, port, context=app.client_ssl(), timeout=30)
    try:
        pop.user(app.participant(local)["address"])
        try:
            answer = pop.pass_(password)
        except poplib.error_proto as exc:
            answer = exc.args[0]
        return bytes(answer).decode()
    finally:
        pop.quit()


async def test_smtp_wrong_password_is_535_naming_the_address(appliance: Running) -> None:
    """KOM-LE-A_2148/2161: AUTH with the KIM address; a wrong password gets 535 5.7.8 and the
    text names the address that failed."""
    address = appliance.participant("praxis.weber")["address"]
    code, text = await trio.to_thread.run_sync(
        _smtp_auth, appliance, "praxis.weber", "Wrong-Passw0rd!"
    )
    assert code == 535
    assert text.startswith("5.7.8 ")
    assert address in text


async def test_smtp_lockout_after_max_failed_logins(start_appliance: StartAppliance) -> None:
    """KOM-LE-A_2167: after max_failed_logins failures the account is locked with a clear text,
    and the right password is refused while the lock holds (SMTP and POP3 alike)."""
    app = await start_appliance(LOCKOUT)
    right = app.participant("praxis.weber")["password"]
    answers = [
        await trio.to_thread.run_sync(_smtp_auth, app, "praxis.weber", f"wrong-{i}")
        for i in range(3)
    ]
    assert [code for code, _ in answers] == [535, 535, 535]
    assert "locked" not in answers[0][1]
    assert "locked" in answers[2][1]
    assert "3 failures" in answers[2][1]
    code, text = await trio.to_thread.run_sync(_smtp_auth, app, "praxis.weber", right)
    assert code == 535
    assert "is locked until" in text
    assert "praxis.weber@" in text
    pop_answer = await trio.to_thread.run_sync(_pop3_pass, app, "praxis.weber", right)
    assert pop_answer.startswith("-ERR [AUTH]")
    assert "locked" in pop_answer
    # another account is not affected
    other = app.participant("zahnarzt.klein")["password"]
    code, _ = await trio.to_thread.run_sync(_smtp_auth, app, "zahnarzt.klein", other)
    assert code == 235


async def test_successful_login_resets_the_failure_count(start_appliance: StartAppliance) -> None:
    """KOM-LE-A_2167: only failures in a row count; a successful login starts again at zero."""
    app = await start_appliance(LOCKOUT)
    right = app.participant("praxis.weber")["password"]
    for _ in range(2):
        code, _ = await trio.to_thread.run_sync(_smtp_auth, app, "praxis.weber", "wrong")
        assert code == 535
    code, _ = await trio.to_thread.run_sync(_smtp_auth, app, "praxis.weber", right)
    assert code == 235
    for _ in range(2):
        code, text = await trio.to_thread.run_sync(_smtp_auth, app, "praxis.weber", "wrong")
        assert code == 535
        assert "locked" not in text
    code, _ = await trio.to_thread.run_sync(_smtp_auth, app, "praxis.weber", right)
    assert code == 235


async def test_pop3_wrong_password_is_err_auth(appliance: Running) -> None:
    """KOM-LE-A_2161: POP3 login with the KIM address; a wrong password is -ERR [AUTH]
    (RFC 3206) naming the address."""
    answer = await trio.to_thread.run_sync(_pop3_pass, appliance, "praxis.weber", "wrong")
    assert answer.startswith("-ERR [AUTH] ")
    assert appliance.participant("praxis.weber")["address"] in answer


async def test_pop3_auth_plain_works(appliance: Running) -> None:
    """KOM-LE-A_2161: AUTH PLAIN (RFC 5034) with the KIM address as authcid."""
    p = appliance.participant("praxis.weber")

    def dialogue() -> tuple[bytes, bytes]:
        host, port = appliance.address(FD1, "pop3")
        pop = poplib.POP3_SSL(host, port, context=appliance.client_ssl(), timeout=30)
        try:
            token = base64.b64encode(f"\0{p['address']}\0{p['password']}".encode()).decode()
            answer = pop3_command(pop, f"AUTH PLAIN {token}")
            return answer, pop3_command(pop, "STAT")
        finally:
            pop.quit()

    answer, stat = await trio.to_thread.run_sync(dialogue)
    assert answer.startswith(b"+OK")
    assert stat.startswith(b"+OK 0 ")


async def test_apop_is_refused(appliance: Running) -> None:
    """KOM-LE-A_2151 lists APOP, but APOP needs the password in clear on the server, which
    KOM-LE-A_2164 forbids: no timestamp in the greeting and APOP answered -ERR (our choice)."""
    address = appliance.participant("praxis.weber")["address"]

    def dialogue() -> tuple[bytes, bytes]:
        host, port = appliance.address(FD1, "pop3")
        pop = poplib.POP3_SSL(host, port, context=appliance.client_ssl(), timeout=30)
        try:
            answer = pop3_command(pop, f"APOP {address} c4c9334bac560ecc979e58001b3e22fb")
            return pop.getwelcome(), answer
        finally:
            pop.quit()

    welcome, answer = await trio.to_thread.run_sync(dialogue)
    assert b"<" not in welcome  # no APOP timestamp offered
    assert answer.startswith(b"-ERR")
    assert b"APOP" in answer


async def test_password_never_in_the_log(
    appliance: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """KOM-LE-A_2164 and issue 3: logs have one line per session event and never a password
    (right or wrong, SMTP AUTH PLAIN/LOGIN and POP3 PASS)."""
    caplog.set_level(logging.DEBUG)
    p = appliance.participant("praxis.weber")
    wrong = "Falsch-Geheim-42!"

    def dialogues() -> None:
        with smtp_connect(appliance, FD1) as smtp:
            smtp.login(p["address"], p["password"])  # LOGIN or PLAIN, whatever smtplib picks
        with smtp_connect(appliance, FD1) as smtp:
            smtp.user, smtp.password = p["address"], wrong
            with contextlib.suppress(smtplib.SMTPAuthenticationError):
                smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        _pop3_pass(appliance, "praxis.weber", wrong)
        pop3_connect(appliance, FD1, "praxis.weber").quit()

    await trio.to_thread.run_sync(dialogues)
    assert "AUTH" in caplog.text  # the session events are logged ...
    for secret in (p["password"], wrong):
        assert secret not in caplog.text  # ... but not the secrets, in clear or base64
        assert base64.b64encode(secret.encode()).decode() not in caplog.text
        plain = base64.b64encode(f"\0{p['address']}\0{secret}".encode()).decode()
        assert plain not in caplog.text
