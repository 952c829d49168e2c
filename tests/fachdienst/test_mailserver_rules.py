"""The mail server's acceptance rules through real SMTPS sessions (digest §3.2): sender
integrity, TI only, unknown and deregistered mailboxes, SIZE and quota, bare LF, and a session
that goes on after malformed commands."""

from __future__ import annotations

import datetime as dt
import poplib
import smtplib
from email.utils import format_datetime

import httpx
import pytest
import trio
from fd_support import (
    FD1,
    Prepare,
    Running,
    StartAppliance,
    make_message,
    pop3_connect,
    pop3_fetch_all,
    smtp_connect,
    smtp_send,
    text_of,
)

from kim_appliance.fachdienst import delivery
from kim_appliance.store import Store

WEBER, KLEIN = "praxis.weber", "zahnarzt.klein"


def _addr(app: Running, local: str) -> str:
    return str(app.participant(local)["address"])


def _send_refused_at_data(
    app: Running, local: str, to: list[str], data: bytes
) -> tuple[int, str] | None:
    """Send; the (code, text) of a refusal at the end of DATA, or None if accepted."""
    try:
        smtp_send(app, FD1, local, to, data)
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code, text_of(exc.smtp_error)
    return None


# -- sender integrity (A_23421/A_23422) --------------------------------------------------------


async def test_mail_from_other_than_login_refused_at_mail(appliance: Running) -> None:
    """A_23421: MAIL FROM must equal the SMTP AUTH username; refused at MAIL FROM (550 5.7.1)
    naming both addresses."""
    klein = _addr(appliance, KLEIN)

    def dialogue() -> tuple[int, bytes]:
        with smtp_connect(appliance, FD1, WEBER) as smtp:
            return smtp.mail(klein)

    code, text = await trio.to_thread.run_sync(dialogue)
    assert code == 550
    assert text.startswith(b"5.7.1 ")
    assert klein.encode() in text
    assert _addr(appliance, WEBER).encode() in text


async def test_mail_from_differs_only_in_case_is_accepted(appliance: Running) -> None:
    """A_23421 with digest §2.10: addresses compare case-insensitively."""

    def dialogue() -> tuple[int, bytes]:
        with smtp_connect(appliance, FD1, WEBER) as smtp:
            return smtp.mail(_addr(appliance, WEBER).upper())

    code, _ = await trio.to_thread.run_sync(dialogue)
    assert code == 250


async def test_from_header_not_the_sender_refused_at_end_of_data(appliance: Running) -> None:
    """A_23422: From must contain the MAIL FROM address; else 550 at the end of DATA, and the
    message is not delivered."""
    weber, klein = _addr(appliance, WEBER), _addr(appliance, KLEIN)
    data = make_message(klein, klein)  # From: the recipient, not the sender
    refusal = await trio.to_thread.run_sync(_send_refused_at_data, appliance, WEBER, [klein], data)
    assert refusal is not None
    code, text = refusal
    assert code == 550
    assert text.startswith("5.7.1 ")
    assert "From" in text
    assert "A_23422" in text
    assert weber in text
    assert await trio.to_thread.run_sync(pop3_fetch_all, appliance, FD1, KLEIN) == []


async def test_several_from_addresses_one_of_them_the_sender(appliance: Running) -> None:
    """A_23422: with several From addresses, MAIL FROM must be among them."""
    weber, klein = _addr(appliance, WEBER), _addr(appliance, KLEIN)
    ok = make_message(f"{klein}, {weber}", klein)
    assert (
        await trio.to_thread.run_sync(_send_refused_at_data, appliance, WEBER, [klein], ok) is None
    )
    bad = make_message(f"{klein}, {_addr(appliance, 'apotheke.sonne')}", klein)
    refusal = await trio.to_thread.run_sync(_send_refused_at_data, appliance, WEBER, [klein], bad)
    assert refusal is not None
    assert refusal[0] == 550
    assert "none is the sender" in refusal[1]


async def test_sender_header_must_be_the_sender(appliance: Running) -> None:
    """A_23422: Sender, if present, must equal MAIL FROM."""
    weber, klein = _addr(appliance, WEBER), _addr(appliance, KLEIN)
    good = make_message(weber, klein, headers={"Sender": weber})
    assert (
        await trio.to_thread.run_sync(_send_refused_at_data, appliance, WEBER, [klein], good)
        is None
    )
    bad = make_message(weber, klein, headers={"Sender": klein})
    refusal = await trio.to_thread.run_sync(_send_refused_at_data, appliance, WEBER, [klein], bad)
    assert refusal is not None
    assert refusal[0] == 550
    assert "Sender" in refusal[1]
    assert klein in refusal[1]


async def test_reply_to_must_be_inside_the_ti(appliance: Running) -> None:
    """A_23422: every Reply-To address ends .kim.telematik or .kim.telematik-test."""
    weber, klein = _addr(appliance, WEBER), _addr(appliance, KLEIN)
    good = make_message(weber, klein, headers={"Reply-To": _addr(appliance, "apotheke.sonne")})
    assert (
        await trio.to_thread.run_sync(_send_refused_at_data, appliance, WEBER, [klein], good)
        is None
    )
    bad = make_message(weber, klein, headers={"Reply-To": f"{weber}, praxis@example.com"})
    refusal = await trio.to_thread.run_sync(_send_refused_at_data, appliance, WEBER, [klein], bad)
    assert refusal is not None
    assert refusal[0] == 550
    assert "Reply-To" in refusal[1]
    assert "praxis@example.com" in refusal[1]


async def test_self_send_exception(appliance: Running) -> None:
    """A_23422 exception: exactly one RCPT TO equal to MAIL FROM may carry any From (a note to
    oneself); with a second recipient the rule applies again."""
    weber, klein = _addr(appliance, WEBER), _addr(appliance, KLEIN)
    foreign_from = make_message(klein, weber, headers={"Reply-To": "x@example.com"})
    assert (
        await trio.to_thread.run_sync(
            _send_refused_at_data, appliance, WEBER, [weber], foreign_from
        )
        is None
    )
    got = await trio.to_thread.run_sync(pop3_fetch_all, appliance, FD1, WEBER)
    assert len(got) == 1
    assert got[0].endswith(foreign_from)
    refusal = await trio.to_thread.run_sync(
        _send_refused_at_data, appliance, WEBER, [weber, klein], foreign_from
    )
    assert refusal is not None
    assert refusal[0] == 550


# -- TI only, unknown and deregistered mailboxes -----------------------------------------------


def _rcpt(app: Running, local: str, to: str) -> tuple[int, str]:
    with smtp_connect(app, FD1, local) as smtp:
        code, _ = smtp.mail(_addr(app, local))
        assert code == 250
        code, text = smtp.rcpt(to)
        return code, text.decode()


async def test_recipient_outside_the_ti_refused(appliance: Running) -> None:
    """KOM-LE-A_2185: only mail inside the TI; a recipient outside .kim.telematik(-test) is
    refused at RCPT with the reason."""
    code, text = await trio.to_thread.run_sync(_rcpt, appliance, WEBER, "doc@example.com")
    assert code == 550
    assert text.startswith("5.7.1 ")
    assert "doc@example.com" in text
    assert "TI" in text
    # a look-alike domain is outside too
    code, _ = await trio.to_thread.run_sync(
        _rcpt, appliance, WEBER, "doc@fd1.kim.telematik-test.example.com"
    )
    assert code == 550


async def test_unknown_local_mailbox_and_unknown_domain(appliance: Running) -> None:
    """Unknown mailbox of this Fachdienst: 550 5.1.1; a TI domain without a known Fachdienst:
    550 5.1.2 (RFC 3463)."""
    code, text = await trio.to_thread.run_sync(_rcpt, appliance, WEBER, f"niemand@{FD1}")
    assert (code, text[:6]) == (550, "5.1.1 ")
    assert f"niemand@{FD1}" in text
    code, text = await trio.to_thread.run_sync(
        _rcpt, appliance, WEBER, "arzt@fd9.kim.telematik-test"
    )
    assert (code, text[:6]) == (550, "5.1.2 ")
    assert "fd9.kim.telematik-test" in text


def _deregister(local: str) -> Prepare:
    async def prepare(store: Store) -> None:
        accounts = await store.accounts.list(FD1)
        account = next(a for a in accounts if a.address.startswith(local + "@"))
        await store.accounts.update(account.address, status="deregistered")

    return prepare


async def test_deregistered_mailbox_receives_nothing(start_appliance: StartAppliance) -> None:
    """KOM-LE-A_2149: a deregistered account receives no mail; RCPT is refused and says so."""
    app = await start_appliance(prepare=_deregister(KLEIN))
    code, text = await trio.to_thread.run_sync(_rcpt, app, WEBER, _addr(app, KLEIN))
    assert code == 550
    assert text.startswith("5.2.1 ")
    assert "deregistered" in text


async def test_deregistered_account_cannot_send_but_still_reads(
    start_appliance: StartAppliance,
) -> None:
    """KOM-LE-A_2150: a deregistered account sends nothing (refused at MAIL FROM); digest §3.2:
    POP3 keeps working until deregDate."""
    app = await start_appliance(prepare=_deregister(KLEIN))

    def dialogue() -> tuple[int, bytes]:
        with smtp_connect(app, FD1, KLEIN) as smtp:
            return smtp.mail(_addr(app, KLEIN))

    code, text = await trio.to_thread.run_sync(dialogue)
    assert code == 550
    assert b"deregistered" in text
    pop = await trio.to_thread.run_sync(pop3_connect, app, FD1, KLEIN)
    await trio.to_thread.run_sync(pop.quit)


# -- SIZE and quota ----------------------------------------------------------------------------

SMALL = 64 * 1024


async def test_size_advertised_and_announced_size_over_the_limit(
    start_appliance: StartAppliance,
) -> None:
    """RFC 1870 and digest §3.2: EHLO advertises SIZE with the limit; MAIL FROM SIZE= over it
    gets 552 5.3.4."""
    app = await start_appliance({"max_message_size": SMALL})

    def dialogue() -> tuple[str, tuple[int, bytes], tuple[int, bytes]]:
        with smtp_connect(app, FD1, WEBER) as smtp:
            size = smtp.esmtp_features.get("size", "")
            over = smtp.mail(_addr(app, WEBER), [f"SIZE={SMALL + 1}"])
            ok = smtp.mail(_addr(app, WEBER), [f"SIZE={SMALL}"])
            return size, over, ok

    size, over, ok = await trio.to_thread.run_sync(dialogue)
    assert size == str(SMALL)
    assert over[0] == 552
    assert over[1].startswith(b"5.3.4 ")
    assert str(SMALL).encode() in over[1]
    assert ok[0] == 250


async def test_body_over_the_limit_without_size_is_552(start_appliance: StartAppliance) -> None:
    """digest §3.2: a body over max_message_size is refused with 552 5.3.4 at the end of DATA
    even without SIZE=; the session goes on and the next message is accepted (A_24022: the
    mail server checks the size of a message, whether or not SIZE= announced it)."""
    app = await start_appliance({"max_message_size": SMALL})
    weber, klein = _addr(app, WEBER), _addr(app, KLEIN)
    big = make_message(weber, klein, body="x" * 70 + "\n" + ("y" * 70 + "\n") * 1000)
    small = make_message(weber, klein)

    def dialogue() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        with smtp_connect(app, FD1, WEBER) as smtp:
            results = []
            for data in (big, small):
                assert smtp.mail(weber)[0] == 250  # no SIZE= announced
                assert smtp.rcpt(klein)[0] == 250
                results.append(smtp.data(data))
            return results[0], results[1]

    refused, accepted = await trio.to_thread.run_sync(dialogue)
    assert refused[0] == 552
    assert refused[1].startswith(b"5.3.4 ")
    assert accepted[0] == 250
    got = await trio.to_thread.run_sync(pop3_fetch_all, app, FD1, KLEIN)
    assert len(got) == 1
    assert got[0].endswith(small)


def _quota(local: str, quota: int) -> Prepare:
    async def prepare(store: Store) -> None:
        accounts = await store.accounts.list(FD1)
        account = next(a for a in accounts if a.address.startswith(local + "@"))
        await store.accounts.update(account.address, quota_bytes=quota)

    return prepare


async def test_quota_full_is_552_5_2_2_at_data(start_appliance: StartAppliance) -> None:
    """digest §3.2: per-account quota; without SIZE= a message that does not fit is refused at
    the end of DATA with 552 5.2.2 naming the mailbox; one that fits is accepted."""
    app = await start_appliance(prepare=_quota(KLEIN, 4000))
    weber, klein = _addr(app, WEBER), _addr(app, KLEIN)
    fits = make_message(weber, klein, body="a" * 1000 + "\n")
    too_big = make_message(weber, klein, body=("b" * 70 + "\n") * 50)

    def dialogue() -> list[tuple[int, bytes]]:
        with smtp_connect(app, FD1, WEBER) as smtp:
            out = []
            for data in (fits, too_big):
                assert smtp.mail(weber)[0] == 250  # no SIZE= announced
                assert smtp.rcpt(klein)[0] == 250
                out.append(smtp.data(data))
            return out

    accepted, refused = await trio.to_thread.run_sync(dialogue)
    assert accepted[0] == 250
    assert refused[0] == 552
    assert refused[1].startswith(b"5.2.2 ")
    assert klein.encode() in refused[1]
    got = await trio.to_thread.run_sync(pop3_fetch_all, app, FD1, KLEIN)
    assert len(got) == 1
    assert got[0].endswith(fits)


async def test_full_mailbox_refused_at_rcpt_others_still_served(
    start_appliance: StartAppliance,
) -> None:
    """digest §3.2: with SIZE= announced (RFC 1870) a recipient whose quota it exceeds is
    refused at RCPT with 552 5.2.2, so the other recipients of the same message get it."""
    app = await start_appliance(prepare=_quota(KLEIN, 2000))
    weber, klein = _addr(app, WEBER), _addr(app, KLEIN)
    data = make_message(weber, f"{klein}, {weber}", body=("c" * 70 + "\n") * 40)
    refused = await trio.to_thread.run_sync(smtp_send, app, FD1, WEBER, [klein, weber], data)
    assert list(refused) == [klein]
    code, text = refused[klein]
    assert code == 552
    assert text.startswith(b"5.2.2 ")
    assert klein.encode() in text
    assert await trio.to_thread.run_sync(pop3_fetch_all, app, FD1, KLEIN) == []
    got = await trio.to_thread.run_sync(pop3_fetch_all, app, FD1, WEBER)
    assert len(got) == 1
    assert got[0].endswith(data)


# -- line ends and malformed commands ----------------------------------------------------------


async def test_bare_lf_refused_and_session_goes_on(appliance: Running) -> None:
    """RFC 5321 §2.3.8 (our choice, no SMTP smuggling): a body with a bare LF is refused with
    550 5.6.0 at the end of DATA; the next message in the same session is accepted."""
    weber, klein = _addr(appliance, WEBER), _addr(appliance, KLEIN)
    good = make_message(weber, klein)
    bare = good.replace(b"Hallo\r\n", b"Hallo\nWelt\r\n")

    def dialogue() -> list[tuple[int, bytes]]:
        with smtp_connect(appliance, FD1, WEBER) as smtp:
            out = []
            for data in (bare, good):
                assert smtp.mail(weber)[0] == 250
                assert smtp.rcpt(klein)[0] == 250
                out.append(smtp.data(data))  # bytes: smtplib leaves the bare LF alone
            return out

    refused, accepted = await trio.to_thread.run_sync(dialogue)
    assert refused[0] == 550
    assert refused[1].startswith(b"5.6.0 ")
    assert accepted[0] == 250
    got = await trio.to_thread.run_sync(pop3_fetch_all, appliance, FD1, KLEIN)
    assert len(got) == 1
    assert got[0].endswith(good)


async def test_malformed_commands_get_errors_and_the_session_goes_on(appliance: Running) -> None:
    """RFC 5321 §4.2.4: an unknown verb, a syntax error and an out-of-order command each get a
    5xx reply; the session stays usable and the message then goes through."""
    weber, klein = _addr(appliance, WEBER), _addr(appliance, KLEIN)
    data = make_message(weber, klein)

    def dialogue() -> list[tuple[int, bytes]]:
        with smtp_connect(appliance, FD1, WEBER) as smtp:
            return [
                smtp.docmd("FROBNICATE", "now"),
                smtp.docmd("MAIL", "FROM:<broken"),
                smtp.docmd("RCPT", f"TO:<{klein}>"),  # before MAIL
                smtp.docmd("DATA"),  # before RCPT
                smtp.docmd("X" * 600),  # over the line limit
                smtp.mail(weber),
                smtp.rcpt(klein),
                smtp.data(data),
            ]

    replies = await trio.to_thread.run_sync(dialogue)
    assert [code for code, _ in replies[:5]] == [500, 501, 503, 503, 500]
    assert all(text[:2] == b"5." for _, text in replies[:5])
    assert [code for code, _ in replies[5:]] == [250, 250, 250]
    got = await trio.to_thread.run_sync(pop3_fetch_all, appliance, FD1, KLEIN)
    assert got
    assert got[0].endswith(data)


async def test_mail_without_auth_refused(appliance: Running) -> None:
    """KOM-LE-A_2148: AUTH is required; a client without login (and without a Fachdienst
    client certificate) gets 530 5.7.0 at MAIL FROM: no open relay."""
    sonne = _addr(appliance, "apotheke.sonne")

    def dialogue() -> tuple[int, bytes]:
        with smtp_connect(appliance, FD1) as smtp:
            return smtp.mail(sonne)

    code, text = await trio.to_thread.run_sync(dialogue)
    assert code == 530
    assert text.startswith(b"5.7.0")


async def test_idle_smtp_session_gets_421(start_appliance: StartAppliance) -> None:
    """RFC 5321 §4.5.3.2: the server closes an idle session with 421 (4.4.2), and a
    transaction that was open leaves nothing behind."""
    app = await start_appliance({"session_timeout_seconds": 1})
    weber, klein = _addr(app, WEBER), _addr(app, KLEIN)

    def dialogue() -> bytes:
        with smtp_connect(app, FD1, WEBER) as smtp:
            assert smtp.mail(weber)[0] == 250
            assert smtp.rcpt(klein)[0] == 250
            assert smtp.docmd("DATA")[0] == 354
            smtp.send(b"Subject: halb\r\n\r\nangefangen\r\n")
            code, text = smtp.getreply()
            assert code == 421
            return text

    text = await trio.to_thread.run_sync(dialogue)
    assert text.startswith(b"4.4.2")
    assert await trio.to_thread.run_sync(pop3_fetch_all, app, FD1, KLEIN) == []


async def test_internal_error_is_421_and_the_server_goes_on(
    appliance: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error in one session (here: the store fails at delivery) answers 421 4.3.0
    to that client, acknowledges nothing, and leaves the Fachdienst serving the next one."""
    weber, klein = _addr(appliance, WEBER), _addr(appliance, KLEIN)
    data = make_message(weber, klein)

    def broken(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(delivery, "accept", broken)
    with pytest.raises(smtplib.SMTPResponseException) as failed:
        await trio.to_thread.run_sync(smtp_send, appliance, FD1, WEBER, [klein], data)
    assert failed.value.smtp_code == 421
    assert text_of(failed.value.smtp_error).startswith("4.3.0")
    monkeypatch.undo()
    refused = await trio.to_thread.run_sync(smtp_send, appliance, FD1, WEBER, [klein], data)
    assert refused == {}
    got = await trio.to_thread.run_sync(pop3_fetch_all, appliance, FD1, KLEIN)
    assert len(got) == 1


# -- deregDate, KAS uploads in the quota, concurrent deliveries ----------------------------------


def _deregister_since(local: str, days: float) -> Prepare:
    """Deregistered with a deregDate ``days`` from now (negative: in the past)."""

    async def prepare(store: Store) -> None:
        accounts = await store.accounts.list(FD1)
        account = next(a for a in accounts if a.address.startswith(local + "@"))
        await store.accounts.update(
            account.address,
            status="deregistered",
            dereg_date=dt.datetime.now(dt.UTC) + dt.timedelta(days=days),
        )

    return prepare


@pytest.mark.parametrize(("days", "readable"), [(3, True), (-1, False)])
async def test_pop3_of_a_deregistered_account_works_until_the_dereg_date(
    start_appliance: StartAppliance, days: float, readable: bool
) -> None:
    """KOM-LE-A_2149/2150, digest §3.2: a deregistered account reads its mailbox by POP3 until
    deregDate; afterwards the login is refused with [AUTH] and says why."""
    app = await start_appliance(prepare=_deregister_since(KLEIN, days))
    if readable:
        pop = await trio.to_thread.run_sync(pop3_connect, app, FD1, KLEIN)
        await trio.to_thread.run_sync(pop.quit)
        return
    with pytest.raises(poplib.error_proto) as refused:
        await trio.to_thread.run_sync(pop3_connect, app, FD1, KLEIN)
    assert b"[AUTH]" in refused.value.args[0]
    assert b"deregDate" in refused.value.args[0]


def _kas_upload(app: Running, local: str, size: int) -> httpx.Response:
    p = app.participant(local)
    boundary = "quotaBoundary"
    expires = format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    body = b""
    for name, value in (("messageID", "<q@t>"), ("recipients", p["address"]), ("expires", expires)):
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        body += value.encode() + b"\r\n"
    body += (
        f"--{boundary}\r\nContent-Disposition: form-data; name=attachment; filename=a.enc\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    body += b"z" * size + f"\r\n--{boundary}--\r\n".encode()
    https = app.endpoints["fachdienste"][FD1]["https"]
    return httpx.post(
        f"{https}/attachments/v2.4/attachment/",
        content=body,
        auth=(p["address"], p["password"]),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        verify=app.client_ssl(),
        timeout=60,
    )


async def test_kas_uploads_count_in_the_mailbox_quota(start_appliance: StartAppliance) -> None:
    """digest §3.2/§3.5: one quota per account for mailbox and KAS. After KLEIN's own KAS
    upload, a message that would have fit the empty mailbox is refused with 552 5.2.2;
    AccountLimit's remainQuota counts the upload, and a further upload over it is 507."""
    app = await start_appliance(prepare=_quota(KLEIN, 6000))
    weber, klein = _addr(app, WEBER), _addr(app, KLEIN)
    uploaded = await trio.to_thread.run_sync(_kas_upload, app, KLEIN, 4000)
    assert uploaded.status_code == 201, uploaded.text
    p = app.participant(KLEIN)
    https = app.endpoints["fachdienste"][FD1]["https"]
    limit = await trio.to_thread.run_sync(
        lambda: httpx.get(
            f"{https}/AccountLimit/v1.1/limit",
            auth=(p["address"], p["password"]),
            verify=app.client_ssl(),
            timeout=60,
        )
    )
    assert limit.json()["remainQuota"] == 2000
    data = make_message(weber, klein, body=("d" * 70 + "\n") * 40)  # ~3 KB: fits 6000, not 2000
    # smtplib announces SIZE= (RFC 1870): the RCPT check already counts the upload
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await trio.to_thread.run_sync(smtp_send, app, FD1, WEBER, [klein], data)
    code, text = refused.value.recipients[klein]
    assert code == 552
    assert text.startswith(b"5.2.2 ")
    assert b"2000 bytes of quota remain" in text
    over = await trio.to_thread.run_sync(_kas_upload, app, KLEIN, 2001)
    assert over.status_code == 507


async def test_two_concurrent_messages_never_overshoot_the_quota(
    start_appliance: StartAppliance,
) -> None:
    """digest §3.2: two messages sent at the same time that each fit the quota but not
    together: one is accepted, the other refused with 552 5.2.2; the mailbox holds one."""
    app = await start_appliance(prepare=_quota(KLEIN, 5000))
    weber, klein = _addr(app, WEBER), _addr(app, KLEIN)
    messages = [make_message(weber, klein, body=("e" * 70 + "\n") * 40) for _ in range(2)]
    results: list[tuple[int, str] | None] = []

    def one(data: bytes) -> tuple[int, str] | None:
        try:
            return _send_refused_at_data(app, WEBER, [klein], data)
        except smtplib.SMTPRecipientsRefused as exc:  # the other one finished first: at RCPT
            code, text = exc.recipients[klein]
            return code, text_of(text)

    async def send(data: bytes) -> None:
        results.append(await trio.to_thread.run_sync(one, data))

    async with trio.open_nursery() as nursery:
        for data in messages:
            nursery.start_soon(send, data)
    refused = [r for r in results if r is not None]
    assert len(refused) == 1
    assert refused[0][0] == 552
    assert refused[0][1].startswith("5.2.2 ")
    got = await trio.to_thread.run_sync(pop3_fetch_all, app, FD1, KLEIN)
    assert len(got) == 1
