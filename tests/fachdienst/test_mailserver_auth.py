"""Authentication at the Fachdienst mail server through real SMTPS/POP3S sessions (digest §3.2):
wrong passwords, lockout per (account, client address) after failed logins, failures per
connection, no account enumeration, APOP, and passwords kept out of the log."""

from __future__ import annotations

import base64
import contextlib
import logging
import poplib
import smtplib
import socket
from functools import partial

import httpx
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
#: Linux routes all of 127/8 to the loopback: a second client address for the lockout tests
OTHER_CLIENT = "127.0.0.2"


def _smtp_auth(
    app: Running, local: str, password: str, *, source: str = "127.0.0.1"
) -> tuple[int, str]:
    """One AUTH PLAIN attempt on a new connection from ``source`` (exactly one: smtplib.login
    would try a second mechanism)."""
    host, port = app.address(FD1, "smtp")
    with smtplib.SMTP_SSL(
        host, port, context=app.client_ssl(), timeout=30, source_address=(source, 0)
    ) as smtp:
        smtp.ehlo("pvs.test")
        smtp.user, smtp.password = _address(app, local), password
        try:
            code, text = smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code, text_of(exc.smtp_error)
        return code, text.decode()


def _address(app: Running, local: str) -> str:
    """The demo participant's address, or ``local@fd1`` for an account that does not exist."""
    try:
        return str(app.participant(local)["address"])
    except StopIteration:
        return f"{local}@{FD1}"


def _pop3_pass(app: Running, local: str, password: str, *, source: str = "127.0.0.1") -> str:
    """USER/PASS; the server's answer to PASS."""
    host, port = app.address(FD1, "pop3")
    pop = poplib.POP3_SSL(host, port, context=app.client_ssl(), timeout=30)
    pop.sock.close()  # poplib has no source address: connect again from ``source``
    raw = socket.create_connection((host, port), timeout=30, source_address=(source, 0))
    pop.sock = app.client_ssl().wrap_socket(raw, server_hostname=host)
    pop.file = pop.sock.makefile("rb")
    pop._getresp()  # type: ignore[attr-defined]
    try:
        pop.user(_address(app, local))
        try:
            answer = pop.pass_(password)
        except poplib.error_proto as exc:
            answer = exc.args[0]
        return bytes(answer).decode()
    finally:
        pop.quit()


async def test_smtp_wrong_password_is_535_naming_the_address(appliance: Running) -> None:
    """KOM-LE-A_2148/2161: AUTH with the KIM address; a wrong password gets 535 5.7.8 and the
    text names the address that failed (sending needs the account's credentials, KOM-LE-A_2169)."""
    address = appliance.participant("praxis.weber")["address"]
    code, text = await trio.to_thread.run_sync(
        _smtp_auth, appliance, "praxis.weber", "Wrong-Passw0rd!"
    )
    assert code == 535
    assert text.startswith("5.7.8 ")
    assert address in text


async def test_lockout_is_per_client_address(start_appliance: StartAppliance) -> None:
    """KOM-LE-A_2167, per (account, client address) since issue 11: after max_failed_logins
    failures from one address the right password is refused from THAT address (SMTP and POP3
    alike), with the same text as a wrong one; from another address it still works, so a
    stranger guessing passwords cannot lock out the practice. Before the change the lock was
    per account and its text said "locked" (which told the stranger the account exists)."""
    app = await start_appliance(LOCKOUT)
    right = app.participant("praxis.weber")["password"]
    answers = [
        await trio.to_thread.run_sync(_smtp_auth, app, "praxis.weber", f"wrong-{i}")
        for i in range(3)
    ]
    assert [code for code, _ in answers] == [535, 535, 535]
    assert len({text for _, text in answers}) == 1  # the lock is not announced
    code, text = await trio.to_thread.run_sync(_smtp_auth, app, "praxis.weber", right)
    assert (code, text) == answers[0]  # locked for 127.0.0.1: refused, same answer
    pop_answer = await trio.to_thread.run_sync(_pop3_pass, app, "praxis.weber", right)
    assert pop_answer.startswith("-ERR [AUTH] ")
    assert pop_answer.removeprefix("-ERR [AUTH] ") == text.removeprefix("5.7.8 ")
    # the practice at another address is not locked out, by SMTP nor by POP3
    code, _ = await trio.to_thread.run_sync(
        partial(_smtp_auth, app, "praxis.weber", right, source=OTHER_CLIENT)
    )
    assert code == 235
    pop_answer = await trio.to_thread.run_sync(
        partial(_pop3_pass, app, "praxis.weber", right, source=OTHER_CLIENT)
    )
    assert pop_answer.startswith("+OK")
    # another account is not affected either
    other = app.participant("zahnarzt.klein")["password"]
    code, _ = await trio.to_thread.run_sync(_smtp_auth, app, "zahnarzt.klein", other)
    assert code == 235


async def test_unknown_wrong_and_locked_answer_alike(start_appliance: StartAppliance) -> None:
    """KOM-LE-A_2167 without account enumeration: an unknown account, a wrong password and a
    locked account get the same reply apart from the username; unknown accounts count (and
    lock) like known ones, so repeating an attempt tells nothing either."""
    app = await start_appliance(LOCKOUT)

    def masked(local: str, password: str) -> tuple[int, str]:
        code, text = _smtp_auth(app, local, password)
        return code, text.replace(_address(app, local), "<user>")

    unknown = [await trio.to_thread.run_sync(masked, "niemand", "x") for _ in range(4)]
    known = [await trio.to_thread.run_sync(masked, "praxis.weber", "x") for _ in range(3)]
    right = app.participant("praxis.weber")["password"]
    locked = await trio.to_thread.run_sync(masked, "praxis.weber", right)
    answers = {*unknown, *known, locked}
    assert len(answers) == 1, answers
    [(code, text)] = answers
    assert code == 535
    assert text.startswith("5.7.8 authentication failed for <user>: ")


async def test_three_failures_close_the_connection(start_appliance: StartAppliance) -> None:
    """Failures count per connection too (issue 11): the third failed AUTH on one SMTP
    connection is answered 535 and the server closes the connection; likewise the third
    failed USER/PASS on one POP3 connection (-ERR [AUTH] first). The account lockout
    (10 failures here) is not reached."""
    app = await start_appliance({"max_failed_logins": 10})
    p = app.participant("praxis.weber")

    def smtp_dialogue() -> tuple[list[int], str, type[BaseException] | None]:
        host, port = app.address(FD1, "smtp")
        codes: list[int] = []
        last = ""
        with smtplib.SMTP_SSL(host, port, context=app.client_ssl(), timeout=30) as smtp:
            smtp.ehlo("pvs.test")
            smtp.user, smtp.password = p["address"], "wrong"
            for _ in range(3):
                try:
                    smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=True)
                except smtplib.SMTPAuthenticationError as exc:
                    codes.append(exc.smtp_code)
                    last = text_of(exc.smtp_error)
            try:
                smtp.noop()
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                return codes, last, type(exc)
        return codes, last, None

    codes, last, closed = await trio.to_thread.run_sync(smtp_dialogue)
    assert codes == [535, 535, 535]
    assert "closing the connection" in last
    assert closed is not None, "the connection stayed open after three failed AUTHs"

    def pop3_dialogue() -> tuple[list[bytes], bytes]:
        host, port = app.address(FD1, "pop3")
        pop = poplib.POP3_SSL(host, port, context=app.client_ssl(), timeout=30)
        try:
            answers = []
            for _ in range(3):
                pop3_command(pop, f"USER {p['address']}")
                answers.append(pop3_command(pop, "PASS wrong"))
            try:
                after = bytes(pop._shortcmd("NOOP"))  # type: ignore[attr-defined]
            except (poplib.error_proto, OSError) as exc:
                after = repr(exc).encode()  # poplib: "-ERR EOF" when the server has closed
            return answers, after
        finally:
            pop.close()

    answers, after = await trio.to_thread.run_sync(pop3_dialogue)
    assert all(a.startswith(b"-ERR [AUTH] ") for a in answers), answers
    assert b"closing the connection" in answers[2]
    assert not after.startswith(b"+OK"), after
    # the practice itself (same address) is not locked: 6 < max_failed_logins
    code, _ = await trio.to_thread.run_sync(_smtp_auth, app, "praxis.weber", p["password"])
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
        code, _ = await trio.to_thread.run_sync(_smtp_auth, app, "praxis.weber", "wrong")
        assert code == 535
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


async def test_the_pvs_sees_the_refusal_through_the_clientmodul(
    start_appliance: StartAppliance,
) -> None:
    """KOM-LE-A_2012/2167 as the practice software sees them: the Clientmodul forwards AUTH to
    the Fachdienst and reports its refusal (535 5.7.8 for SMTP, -ERR for POP3) with the
    Fachdienst's text, the same for a wrong password and, after max_failed_logins, for the
    right one (the lock holds for the Clientmodul's address)."""
    app = await start_appliance(LOCKOUT)
    p = app.participant("praxis.weber")
    host, port = app.endpoints["clientmodul"]["smtp"].rsplit(":", 1)

    def cm_smtp(password: str) -> tuple[int, str]:
        with smtplib.SMTP_SSL(host, int(port), context=app.client_ssl(), timeout=60) as smtp:
            smtp.ehlo("pvs.test")
            smtp.user, smtp.password = p["smtp_username"], password
            try:
                code, text = smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=True)
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code, text_of(exc.smtp_error)
            return code, text.decode()

    def cm_pop3(password: str) -> str:
        pop_host, pop_port = app.endpoints["clientmodul"]["pop3"].rsplit(":", 1)
        pop = poplib.POP3_SSL(pop_host, int(pop_port), context=app.client_ssl(), timeout=60)
        try:
            pop.user(p["pop3_username"])
            try:
                return bytes(pop.pass_(password)).decode()
            except poplib.error_proto as exc:
                return bytes(exc.args[0]).decode()
        finally:
            pop.quit()

    wrong = [await trio.to_thread.run_sync(cm_smtp, "falsch") for _ in range(3)]
    assert {code for code, _ in wrong} == {535}
    code, text = wrong[0]
    assert text.startswith("5.7.8 ")
    assert f"the Fachdienst refused the login of {p['address']}" in text
    assert f"authentication failed for {p['address']}: wrong username or password" in text
    locked = await trio.to_thread.run_sync(cm_smtp, p["password"])
    assert locked == (code, text)
    answer = await trio.to_thread.run_sync(cm_pop3, p["password"])
    assert answer.startswith("-ERR ")
    assert f"authentication failed for {p['address']}: wrong username or password" in answer


async def test_a_new_password_from_the_operator_unlocks(start_appliance: StartAppliance) -> None:
    """KOM-LE-A_2168 (Entsperren): the operator sets a new password (admin API, as
    ``kim-appliance account`` does); it works at once from the address that was locked out."""
    app = await start_appliance(LOCKOUT)
    address = app.participant("praxis.weber")["address"]
    for _ in range(3):
        await trio.to_thread.run_sync(_smtp_auth, app, "praxis.weber", "falsch")
    new = "Neu-Passw0rt-2025!"
    token = (app.data_dir / "admin-token").read_text("ascii").strip()
    https = app.endpoints["fachdienste"][FD1]["https"]
    async with httpx.AsyncClient(verify=app.client_ssl()) as client:
        response = await client.put(
            f"{https}/admin/v1/accounts/{address}/password",
            json={"password": new},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 204, response.text
    code, _ = await trio.to_thread.run_sync(_smtp_auth, app, "praxis.weber", new)
    assert code == 235
