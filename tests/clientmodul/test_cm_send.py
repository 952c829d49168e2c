"""The Clientmodul's SMTP side through sockets: smtplib plays the PVS (digest §1.3, §1.4).

Every test runs a whole appliance in-process (``cm``/``start_kim`` of conftest.py, on
kim_appliance.testing) and talks to its own Clientmodul (endpoint ``clientmodul.smtp``);
faults are switched through the Konnektor admin API. What arrives at the Fachdienst is read
with poplib directly and opened with the recipient's exported keys
(``mail.unseal.open_message``), as an independent check that the Clientmodul made a KIM
message the recipient can read.
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import re
import smtplib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from functools import partial
from pathlib import Path

import pytest
import trio
from cm_support import Kim, StartKim, closed_port, demo_address, with_upstream

from kim_appliance.clientmodul.context import ClientmodulContext
from kim_appliance.directory import DirectoryStore
from kim_appliance.mail.unseal import OpenReport, open_message
from kim_appliance.pki.tls import server_context
from kim_appliance.store import open_store
from kim_appliance.testing import KimAppliance

#: runs in both modes: in-process, and SOAP/LDAPS to the appliance's own listeners
both_modes = pytest.mark.usefixtures("cm_mode")

# --- helpers --------------------------------------------------------------------------------


def client_mail(
    sender: str,
    to: list[str],
    *,
    subject: str = "Arztbrief",
    body: str = "Sehr geehrte Kollegin,\nanbei der Befund.\n",
    headers: dict[str, str] | None = None,
    attachment: bytes | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = email.utils.make_msgid(domain="pvs.test")
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    if attachment is not None:
        msg.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename="befund.bin"
        )
    return msg.as_bytes(policy=email.policy.SMTP)


def open_kim(outer: bytes, cm: Kim, local: str) -> tuple[OpenReport, bytes]:
    inner = io.BytesIO()
    report = open_message(io.BytesIO(outer), inner, keys=cm.keys(local), trust=cm.trust)
    return report, inner.getvalue()


async def wait_for(cm: Kim, local: str, count: int = 1, timeout: float = 20.0) -> list[bytes]:
    got: list[bytes] = []
    with trio.fail_after(timeout):
        while len(got) < count:
            got += await trio.to_thread.run_sync(cm.fd_fetch, local)
            if len(got) < count:
                await trio.sleep(0.1)
    return got


def header_of(mail: bytes) -> email.message.Message:
    return email.message_from_bytes(mail, policy=email.policy.default)


# --- tests: the send pipeline end to end ------------------------------------------------------

PAIRS = [
    ("praxis.weber", "zahnarzt.klein"),  # RSA -> RSA+ECC, same Fachdienst
    ("praxis.weber", "apotheke.sonne"),  # RSA -> ECC, other Fachdienst
    ("apotheke.sonne", "dr.meyer"),  # ECC -> HBA, same Fachdienst
    ("zahnarzt.klein", "praxis.weber"),  # RSA+ECC -> RSA
    ("dr.meyer", "praxis.weber"),  # HBA (practice SMC-B signs) -> RSA, other Fachdienst
]


@both_modes
@pytest.mark.parametrize(("sender", "recipient"), PAIRS)
async def test_mail_arrives_as_kim_message_the_recipient_opens(
    cm: Kim, sender: str, recipient: str
) -> None:
    """KOM-LE-A_2022, A_2111-01, KOM-LE-A_2020/2129: the PVS sends a plain mail; the Fachdienst
    holds a signed and encrypted KIM message that the recipient's keys decrypt and verify; its
    outer header carries the Clientmodul's X-KIM-CMVersion/PTVersion/KONVersion (A_21388-01)
    and an Expires (A_22417)."""
    to = cm.address(recipient)
    data = client_mail(cm.address(sender), [to])
    refused = await trio.to_thread.run_sync(cm.send, sender, [to], data)
    assert refused == {}
    (outer,) = await wait_for(cm, recipient)
    outer_header = header_of(outer)
    assert outer_header["Subject"] == "KOM-LE-Nachricht"
    assert outer_header["X-KOM-LE-Version"] == "1.0"
    # the appliance runs its Clientmodul with the context's default versions
    assert outer_header["X-KIM-CMVersion"] == ClientmodulContext.cm_version
    assert outer_header["X-KIM-PTVersion"] == ClientmodulContext.pt_version
    assert outer_header["X-KIM-KONVersion"] == ClientmodulContext.kon_version
    assert outer_header["Expires"] is not None
    assert outer_header["X-KIM-Dienstkennung"] == "KIM-Mail;Default;V1.0"
    report, inner = open_kim(outer, cm, recipient)
    assert report.verified, report.lines()
    assert b"anbei der Befund." in inner
    assert header_of(inner)["X-KIM-Dienstkennung"] == "KIM-Mail;Default;V1.0"


# --- tests: the CONNECT state, digest §1.3 row by row -------------------------------------------


def _dialogue(cm: Kim, commands: list[str]) -> list[tuple[int, str]]:
    """Send each raw command, collect (code, text) of each reply."""
    out: list[tuple[int, str]] = []
    with cm.smtp_connect() as smtp:
        for command in commands:
            code, text = smtp.docmd(command)
            out.append((code, text.decode()))
    return out


async def test_greeting_says_esmtp(cm: Kim) -> None:
    """digest §1.3 (Tab_SMTP_Ant_Init): the greeting contains "ESMTP" (KOM-LE-A_2007), sent over
    TLS from the first byte with the Clientmodul's certificate (KOM-LE-A_2066)."""

    def greet() -> tuple[int, bytes]:
        smtp = smtplib.SMTP_SSL(context=cm.ssl_context(), timeout=30)
        smtp._host = "127.0.0.1"  # type: ignore[attr-defined]  # the TLS server name
        try:
            return smtp.connect(*cm.app.clientmodul_smtp)
        finally:
            smtp.close()

    code, text = await trio.to_thread.run_sync(greet)
    assert code == 220
    assert b"ESMTP" in text


async def test_tls_towards_the_pvs_is_1_2_or_newer_with_ecdhe_and_aead(cm: Kim) -> None:
    """KOM-LE-A_2064-02 (gemSpec_Krypt, BSI TR-02102-2 §3.3): the Clientmodul's SMTPS and
    POP3S listeners refuse a TLS 1.0/1.1 handshake, accept TLS 1.2 with
    the Krypt suite TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, and negotiate TLS 1.3 with a
    default client."""
    import socket
    import ssl
    import warnings

    def handshake(port: int, configure: Callable[[ssl.SSLContext], None]) -> tuple[str, str]:
        context = cm.ssl_context()
        configure(context)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            cipher = tls.cipher()
            assert cipher is not None
            return cipher[1], cipher[0]

    def old(context: ssl.SSLContext) -> None:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # deprecated versions, on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1

    def krypt(context: ssl.SSLContext) -> None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384")

    for _, port in (cm.app.clientmodul_smtp, cm.app.clientmodul_pop3):
        # the client can speak TLS 1.1 (else "no protocols available"); the server ends the
        # handshake (an alert, or trio closes the stream)
        with pytest.raises(ssl.SSLError, match=r"(?i)eof|protocol.version|alert"):
            await trio.to_thread.run_sync(handshake, port, old)
        assert await trio.to_thread.run_sync(handshake, port, krypt) == (
            "TLSv1.2",
            "ECDHE-RSA-AES256-GCM-SHA384",
        )
        version, suite = await trio.to_thread.run_sync(handshake, port, lambda c: None)
        assert (version, suite.startswith("TLS_AES_")) == ("TLSv1.3", True)


async def test_ehlo_announces_the_extensions_of_the_spec(cm: Kim) -> None:
    """digest §1.3: EHLO -> 250 with SIZE n (n >= 35882577), AUTH LOGIN PLAIN, 8BITMIME,
    ENHANCEDSTATUSCODES, DSN (KOM-LE-A_2009: only PLAIN and LOGIN)."""

    def ehlo() -> tuple[int, dict[str, str]]:
        with cm.smtp_connect() as smtp:
            code, _ = smtp.ehlo("pvs.test")
            return code, dict(smtp.esmtp_features)

    code, features = await trio.to_thread.run_sync(ehlo)
    assert code == 250
    assert int(features["size"]) >= 35882577
    assert features["auth"].split() == ["LOGIN", "PLAIN"]
    for keyword in ("8bitmime", "enhancedstatuscodes", "dsn"):
        assert keyword in features


async def test_connect_state_replies(cm: Kim) -> None:
    """digest §1.3 (Tab_SMTP_Verbindung): HELO 250; RSET/NOOP 250; MAIL/RCPT/DATA before AUTH
    530 5.7.0 (before and after EHLO); anything else 502 5.5.1; QUIT 221."""
    replies = await trio.to_thread.run_sync(
        _dialogue,
        cm,
        [
            "MAIL FROM:<praxis.weber@fd1.kim.telematik-test>",
            "HELO pvs.test",
            "RSET",
            "NOOP",
            "MAIL FROM:<praxis.weber@fd1.kim.telematik-test>",
            "RCPT TO:<apotheke.sonne@fd2.kim.telematik-test>",
            "DATA",
            "VRFY praxis.weber",
            "EXPN list",
            "FROBNICATE",
            "HELP",
            "QUIT",
        ],
    )
    codes = [code for code, _ in replies]
    assert codes == [530, 250, 250, 250, 530, 530, 530, 502, 502, 502, 502, 221]
    for code, text in replies:
        if code == 530:
            assert text.startswith("5.7.0")
        if code == 502:
            assert text.startswith("5.5.1")


async def test_other_sasl_mechanism_is_refused_504(cm: Kim) -> None:
    """digest §1.3: another SASL mechanism -> 504 5.7.4 (KOM-LE-A_2009)."""
    replies = await trio.to_thread.run_sync(_dialogue, cm, ["EHLO pvs.test", "AUTH CRAM-MD5"])
    assert replies[1][0] == 504
    assert replies[1][1].startswith("5.7.4")


async def test_malformed_username_is_refused_501_and_closed(cm: Kim) -> None:
    """digest §1.3: username incomplete or malformed -> 501 5.5.4, then the connection is
    closed (KOM-LE-A_2010)."""
    p = cm.participant("praxis.weber")

    def attempt() -> tuple[int, str, bool]:
        smtp = cm.smtp_connect()
        smtp.ehlo("pvs.test")
        raw = f"\0{p.address}#only-two-fields\0{p.password}".encode()
        code, text = smtp.docmd("AUTH", "PLAIN " + base64.b64encode(raw).decode())
        try:
            smtp.noop()
            closed = False
        except smtplib.SMTPServerDisconnected:
            closed = True
        smtp.close()
        return code, text.decode(), closed

    code, text, closed = await trio.to_thread.run_sync(attempt)
    assert code == 501
    assert text.startswith("5.5.4")
    assert "MandantId" in text  # the reply names the field that is missing
    assert closed


@both_modes
async def test_unknown_mandant_is_refused_501(cm: Kim) -> None:
    """digest §1.3: a Konnektor fault 4004 on the call context -> 501."""
    p = cm.participant("praxis.weber")
    username = p.smtp_username.replace("#Mandant1#", "#NoSuchMandant#")
    with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        await trio.to_thread.run_sync(partial(cm.smtp_login, "praxis.weber", username=username))
    assert caught.value.smtp_code == 501
    assert b"4004" in caught.value.smtp_error


async def test_configured_call_context_fills_a_placeholder(start_kim: StartKim) -> None:
    """``[clientmodul] mandant_id`` (issue 14, call-context defaults): a username that writes
    ``*`` for the MandantId logs in with the configured Mandant and its mail goes out; without
    the setting the same username is refused 501 (the field is mandatory, digest §1.2)."""
    kim = Kim(await start_kim(config={"clientmodul": {"mandant_id": "Mandant1"}}))
    weber, sonne = kim.participant("praxis.weber"), kim.participant("apotheke.sonne")
    username = weber.smtp_username.replace("#Mandant1#", "#*#")
    data = b"From: " + weber.address.encode() + b"\r\nSubject: x\r\n\r\nHallo\r\n"
    refused = await trio.to_thread.run_sync(
        partial(kim.send, "praxis.weber", [sonne.address], data, username=username)
    )
    assert refused == {}
    plain = Kim(await start_kim())

    def attempt() -> tuple[int, bytes]:
        with plain.smtp_connect() as smtp:
            smtp.ehlo("pvs.test")
            raw = f"\0{username}\0{weber.password}".encode()
            return smtp.docmd("AUTH", "PLAIN " + base64.b64encode(raw).decode())

    code, text = await trio.to_thread.run_sync(attempt)
    assert code == 501
    assert b"MandantId" in text


async def test_wrong_password_is_refused_535(cm: Kim) -> None:
    """digest §1.3: the MTA refuses the credentials -> 535 5.7.8 (KOM-LE-A_2012: the password
    goes to the Fachdienst unchanged; KOM-LE-A_2015: the result of the MTA login)."""
    p = cm.participant("praxis.weber")

    def attempt() -> None:
        with cm.smtp_connect() as smtp:
            smtp.ehlo("pvs.test")
            smtp.login(p.smtp_username, "wrong-" + p.password)

    with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        await trio.to_thread.run_sync(attempt)
    assert caught.value.smtp_code == 535
    assert caught.value.smtp_error.startswith(b"5.7.8")


async def test_unreachable_mta_is_454(cm: Kim) -> None:
    """digest §1.3: the Clientmodul connects to the MTA the username names (KOM-LE-A_2011);
    unreachable -> 454 4.7.0 (KOM-LE-A_2015)."""
    # the username names the MTA (digest §1.2); a host that is none of the appliance's
    # Fachdienst domains is connected to as written, and nothing listens on this port
    p = cm.participant("praxis.weber")
    username = with_upstream(p.smtp_username, "127.0.0.1", closed_port())
    with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        await trio.to_thread.run_sync(partial(cm.smtp_login, "praxis.weber", username=username))
    assert caught.value.smtp_code == 454
    assert caught.value.smtp_error.startswith(b"4.7.0")


async def test_auth_login_and_plain_both_work(cm: Kim) -> None:
    """KOM-LE-A_2009: AUTH PLAIN and AUTH LOGIN -> 235 2.7.0."""
    p = cm.participant("apotheke.sonne")

    def both() -> list[tuple[int, bytes]]:
        out = []
        for mechanism in ("PLAIN", "LOGIN"):
            with cm.smtp_connect() as smtp:
                smtp.ehlo("pvs.test")
                smtp.user, smtp.password = p.smtp_username, p.password
                method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
                out.append(smtp.auth(mechanism, method, initial_response_ok=False))
        return out

    for code, text in await trio.to_thread.run_sync(both):
        assert code == 235
        assert text.startswith(b"2.7.0")


# --- tests: the Clientmodul's MTA session, against a scripted MTA (digest §1.3) ----------------


@dataclass
class _MtaConnection:
    """What one connection of the scripted MTA saw: the AUTH mechanism, the decoded
    credentials, and how it ended (``QUIT``, ``EOF``, or still ``open``)."""

    mechanism: str = ""
    credentials: tuple[str, str] = ("", "")
    end: str = "open"
    ended: trio.Event = field(default_factory=trio.Event)


async def _scripted_mta(
    nursery: trio.Nursery,
    app: KimAppliance,
    offered: str,
    *,
    refuse: str = "",
    drop_after_login: bytes | None = None,
) -> tuple[int, list[_MtaConnection]]:
    """An SMTPS server on 127.0.0.1 with a Fachdienst's certificate that offers ``AUTH
    <offered>``, accepts every login but one with the password ``refuse`` (535), answers
    NOOP/RSET with 250 and QUIT with 221; (port, its connections). With ``drop_after_login``
    it sends those bytes (``b""``: nothing) after a successful login and closes the connection
    (an MTA whose idle timeout ends the session before the PVS sends anything)."""
    domain = app.participant("praxis.weber").fachdienst
    tls = app.data_dir / "tls"
    context = server_context(tls / f"{domain}.server.chain.pem", tls / f"{domain}.server.key.pem")
    seen: list[_MtaConnection] = []

    async def mta(stream: trio.SSLStream[trio.SocketStream]) -> None:
        connection = _MtaConnection()
        seen.append(connection)
        buffer = b""

        async def line() -> bytes | None:
            nonlocal buffer
            while b"\r\n" not in buffer:
                data = await stream.receive_some(4096)
                if not data:
                    return None
                buffer += data
            first, buffer = buffer.split(b"\r\n", 1)
            return first

        def b64(text: bytes) -> str:
            return base64.b64decode(text).decode()

        try:
            await stream.send_all(b"220 scripted MTA ESMTP\r\n")
            while (command := await line()) is not None:
                verb = command.split(b" ", 1)[0].upper()
                if verb == b"EHLO":
                    await stream.send_all(f"250-scripted\r\n250 AUTH {offered}\r\n".encode())
                    continue
                if verb == b"AUTH" and command.upper().startswith(b"AUTH PLAIN "):
                    _, user, password = b64(command.split(b" ")[2]).split("\0")
                    connection.mechanism, connection.credentials = "PLAIN", (user, password)
                elif verb == b"AUTH" and command.upper() == b"AUTH LOGIN":
                    await stream.send_all(b"334 VXNlcm5hbWU6\r\n")
                    user = b64(await line() or b"")
                    await stream.send_all(b"334 UGFzc3dvcmQ6\r\n")
                    password = b64(await line() or b"")
                    connection.mechanism, connection.credentials = "LOGIN", (user, password)
                elif verb == b"QUIT":
                    connection.end = "QUIT"
                    await stream.send_all(b"221 2.0.0 bye\r\n")
                    return
                else:
                    await stream.send_all(b"250 2.0.0 ok\r\n")
                    continue
                ok = connection.credentials[1] != refuse
                await stream.send_all(b"235 2.7.0 ok\r\n" if ok else b"535 5.7.8 no\r\n")
                if ok and drop_after_login is not None:
                    await stream.send_all(drop_after_login)
                    connection.end = "dropped by the MTA"
                    return
            connection.end = "EOF"
        except trio.BrokenResourceError:
            connection.end = "EOF"
        finally:
            connection.ended.set()
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(trio.serve_ssl_over_tcp, mta, 0, context)
    return listeners[0].transport_listener.socket.getsockname()[1], seen


async def test_clientmodul_logs_in_at_the_mta_with_plain_or_login(
    start_kim: StartKim, nursery: trio.Nursery
) -> None:
    """KOM-LE-A_2013: the Clientmodul's client side of SASL PLAIN and LOGIN: towards an MTA
    that offers only LOGIN it logs in with LOGIN, towards one that offers both with PLAIN;
    either way with the plain account and the PVS's password (KOM-LE-A_2012), and the PVS
    gets 235."""
    app = await start_kim()
    p = app.participant("praxis.weber")
    login_only, login_seen = await _scripted_mta(nursery, app, "LOGIN")
    both, both_seen = await _scripted_mta(nursery, app, "PLAIN LOGIN")

    def login(port: int) -> tuple[int, bytes]:
        host, cm_port = app.clientmodul_smtp
        with smtplib.SMTP_SSL(host, cm_port, context=app.ssl_context(), timeout=30) as smtp:
            return smtp.login(with_upstream(p.smtp_username, "127.0.0.1", port), p.password)

    for port in (login_only, both):
        code, _ = await trio.to_thread.run_sync(login, port)
        assert code == 235
    assert [(c.mechanism, c.credentials) for c in login_seen] == [
        ("LOGIN", (p.address, p.password))
    ]
    assert [(c.mechanism, c.credentials) for c in both_seen] == [("PLAIN", (p.address, p.password))]


async def test_mta_session_lives_as_long_as_the_pvs_session(
    start_kim: StartKim, nursery: trio.Nursery
) -> None:
    """KOM-LE-A_2016: the PVS connection stays open after a refused login (535) and takes the
    next AUTH; KOM-LE-A_2017: the MTA connection of a successful login stays open while the
    PVS session goes on, gets QUIT when the PVS quits and is closed when the PVS drops its
    connection without QUIT (digest §1.3: the session ends for both sides)."""
    app = await start_kim()
    p = app.participant("praxis.weber")
    port, seen = await _scripted_mta(nursery, app, "PLAIN", refuse="falsch")
    username = with_upstream(p.smtp_username, "127.0.0.1", port)
    host, cm_port = app.clientmodul_smtp

    def refused_then_logged_in() -> smtplib.SMTP_SSL:
        smtp = smtplib.SMTP_SSL(host, cm_port, context=app.ssl_context(), timeout=30)
        smtp.ehlo("pvs.test")
        smtp.user, smtp.password = username, "falsch"
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            smtp.auth("PLAIN", smtp.auth_plain)  # one attempt (login() would try LOGIN too)
        assert caught.value.smtp_code == 535
        assert smtp.login(username, p.password)[0] == 235  # the same PVS connection
        assert smtp.noop()[0] == 250
        return smtp

    smtp = await trio.to_thread.run_sync(refused_then_logged_in)
    with trio.fail_after(10):
        await seen[0].ended.wait()  # the refused login's MTA connection is given up
    await trio.sleep(0.2)
    assert [c.end for c in seen] == ["QUIT", "open"]
    assert (await trio.to_thread.run_sync(smtp.quit))[0] == 221
    with trio.fail_after(10):
        await seen[1].ended.wait()
    assert seen[1].end == "QUIT"

    def login_and_drop() -> None:
        dropped = smtplib.SMTP_SSL(host, cm_port, context=app.ssl_context(), timeout=30)
        assert dropped.login(username, p.password)[0] == 235
        dropped.close()  # no QUIT: the PVS just goes away

    await trio.to_thread.run_sync(login_and_drop)
    with trio.fail_after(10):
        await seen[2].ended.wait()
    assert len(seen) == 3


@pytest.mark.parametrize(
    "farewell", [b"421 4.4.2 idle timeout, closing\r\n", b""], ids=["421", "connection-dropped"]
)
async def test_mta_closing_the_connection_closes_the_pvs_session(
    start_kim: StartKim, nursery: trio.Nursery, farewell: bytes
) -> None:
    """KOM-LE-A_2016/2017: one MTA connection per PVS connection, ended together. The MTA
    closes the connection while the PVS is idle (with 421, or just drops it); the PVS's next
    message gets 421 4.4.2 at the end of DATA (not sent: nothing was acknowledged), and the
    Clientmodul closes the PVS connection instead of logging in at the MTA again on its own
    with the stored password (the MTA sees exactly one connection)."""
    app = await start_kim()
    p = app.participant("praxis.weber")
    port, seen = await _scripted_mta(nursery, app, "PLAIN", drop_after_login=farewell)
    username = with_upstream(p.smtp_username, "127.0.0.1", port)
    host, cm_port = app.clientmodul_smtp
    to = app.participant("zahnarzt.klein").address

    def login() -> smtplib.SMTP_SSL:
        smtp = smtplib.SMTP_SSL(host, cm_port, context=app.ssl_context(), timeout=30)
        assert smtp.login(username, p.password)[0] == 235
        return smtp

    def send_message(smtp: smtplib.SMTP_SSL) -> tuple[int, bytes, str]:
        assert smtp.mail(p.address)[0] == 250  # held back: answered by the Clientmodul
        assert smtp.rcpt(to)[0] == 250
        code, text = smtp.data(client_mail(p.address, [to]))
        try:
            smtp.noop()
            after = "open"
        except smtplib.SMTPServerDisconnected:
            after = "closed"
        smtp.close()
        return code, text, after

    smtp = await trio.to_thread.run_sync(login)
    with trio.fail_after(10):
        await seen[0].ended.wait()  # the MTA has ended the session; the PVS is idle
    code, text, after = await trio.to_thread.run_sync(send_message, smtp)
    assert code == 421, text
    assert b"closed the connection" in text
    assert b"KOM-LE-A_2016" in text
    assert after == "closed"
    await trio.sleep(0.2)
    assert [c.end for c in seen] == ["dropped by the MTA"]  # no second login at the MTA
    # the PVS connects again: a new PVS connection, a new MTA connection
    await trio.to_thread.run_sync(lambda: login().close())
    assert len(seen) == 2


# --- tests: the pipeline's refusals and reports (digest §1.4) ---------------------------------

UNKNOWN = "niemand@fd1.kim.telematik-test"


def _reports(mails: list[bytes]) -> list[email.message.Message]:
    return [m for m in map(header_of, mails) if m.get_content_type() == "multipart/report"]


@both_modes
async def test_unknown_recipient_is_dropped_and_reported(cm: Kim) -> None:
    """KOM-LE-A_2024-01, KOM-LE-A_2028: a recipient without an encryption certificate in the
    VZD is dropped (4004), removed from To, and reported to the sender in one unsigned mail;
    the others get the message."""
    sender, to = cm.address("praxis.weber"), cm.address("apotheke.sonne")
    data = client_mail(sender, [to, UNKNOWN])
    refused = await trio.to_thread.run_sync(cm.send, "praxis.weber", [to, UNKNOWN], data)
    assert refused == {}  # RCPT TO is answered 250 and held back (digest §1.4)
    (outer,) = await wait_for(cm, "apotheke.sonne")
    report, inner = open_kim(outer, cm, "apotheke.sonne")
    assert report.verified, report.lines()
    assert header_of(inner)["To"] == to
    assert UNKNOWN not in header_of(outer)["To"]
    (sender_report,) = _reports(await wait_for(cm, "praxis.weber"))
    assert sender_report["X-KOM-LE-Version"] is None  # neither signed nor encrypted
    assert sender_report["X-KIM-Fehlermeldung"] == "4004"
    assert UNKNOWN in sender_report.as_string()


@both_modes
async def test_recipient_emails_name_only_the_addresses_encrypted_for(cm: Kim) -> None:
    """KOM-LE-A_2027: of the recipients, one has no encryption certificate; the KIM message's
    recipient-emails attribute has entries for the sender and the other recipient only, one per
    certificate encrypted for; KOM-LE-A_2116: each entry's address is that of the holder of the
    certificate it names."""
    from cryptography import x509

    from kim_appliance.clientmodul.keys import scan_recipient_emails

    sender, recipient = "praxis.weber", "zahnarzt.klein"
    to = cm.address(recipient)
    data = client_mail(cm.address(sender), [to, UNKNOWN])
    assert await trio.to_thread.run_sync(cm.send, sender, [to, UNKNOWN], data) == {}
    (outer,) = await wait_for(cm, recipient)
    entries = scan_recipient_emails(io.BytesIO(outer))
    for local in (sender, recipient):
        certificates = [
            x509.load_pem_x509_certificate(path.read_bytes())
            for path in cm.participant(local).enc_certs
        ]
        mine = [e for e in entries if e.address == cm.address(local)]
        assert len(mine) == len(certificates), local
        assert all(any(e.matches(c) for c in certificates) for e in mine), local
    assert {e.address for e in entries} == {cm.address(sender), to}


@both_modes
async def test_no_valid_recipient_is_451_with_report(cm: Kim) -> None:
    """KOM-LE-A_2025: no recipient with a valid encryption certificate -> 451 to the PVS (and
    the dropped recipient is reported to the sender)."""
    sender = cm.address("praxis.weber")
    with pytest.raises(smtplib.SMTPDataError) as caught:
        await trio.to_thread.run_sync(
            cm.send, "praxis.weber", [UNKNOWN], client_mail(sender, [UNKNOWN])
        )
    assert caught.value.smtp_code == 451
    assert b"Verschluesselungszertifikate" in caught.value.smtp_error
    (sender_report,) = _reports(await wait_for(cm, "praxis.weber"))
    assert UNKNOWN in sender_report.as_string()


def _drop_certificates(local: str) -> Callable[[Path], Awaitable[None]]:
    """A ``prepare`` hook: the VZD entry of ``local`` loses its certificates."""

    async def prepare(data_dir: Path) -> None:
        async with open_store(None, data_dir) as store:
            directory = await DirectoryStore.open(store.directory)
            entry = directory.find_by_mail(demo_address(data_dir, local))
            assert entry is not None
            await directory.put_entry(replace(entry, certificates=()))

    return prepare


@both_modes
async def test_sender_without_certificate_is_553(start_kim: StartKim) -> None:
    """digest §1.4 step 6 (FAQ): no encryption certificate of the sender -> 553, nothing sent."""
    # the entry is changed before the start, through the store
    cm = Kim(await start_kim(prepare=_drop_certificates("praxis.weber")))
    to = cm.address("apotheke.sonne")
    with pytest.raises(smtplib.SMTPDataError) as caught:
        await trio.to_thread.run_sync(
            cm.send, "praxis.weber", [to], client_mail(cm.address("praxis.weber"), [to])
        )
    assert caught.value.smtp_code == 553
    assert b"praxis.weber" in caught.value.smtp_error
    assert await trio.to_thread.run_sync(cm.fd_fetch, "apotheke.sonne") == []


@both_modes
async def test_card_removed_is_451(cm: Kim) -> None:
    """KOM-LE-A_2021, KOM-LE-A_2057: signing fails (the SMC-B was pulled, 4008) -> the
    signing is abandoned, RSET upstream, 451."""
    await cm.fault(card_removed=cm.participant("praxis.weber"))
    to = cm.address("apotheke.sonne")
    with pytest.raises(smtplib.SMTPDataError) as caught:
        await trio.to_thread.run_sync(
            cm.send, "praxis.weber", [to], client_mail(cm.address("praxis.weber"), [to])
        )
    assert caught.value.smtp_code == 451
    assert b"KOM-LE-A_2021" in caught.value.smtp_error


@both_modes
async def test_card_reinserted_gets_used_again(cm: Kim) -> None:
    """A card pulled, inserted again and unlocked has a new handle; the Clientmodul finds it
    (the cached handle is dropped on 4008) and the next mail goes out."""
    weber = cm.participant("praxis.weber")
    sender, to = cm.address("praxis.weber"), cm.address("apotheke.sonne")
    await trio.to_thread.run_sync(cm.send, "praxis.weber", [to], client_mail(sender, [to]))
    await cm.fault(card_removed=weber)
    await cm.fault(card_inserted=weber)
    # a card put back in must be unlocked again (the Konnektor says 4085 until then): the
    # admin API's PIN switch stands in for VerifyPin at the terminal
    await cm.fault(pin_status={"iccsn": weber.iccsn, "status": "VERIFIED"})
    await trio.to_thread.run_sync(cm.send, "praxis.weber", [to], client_mail(sender, [to]))
    assert len(await wait_for(cm, "apotheke.sonne", count=2)) == 2


@both_modes
async def test_konnektor_unreachable_is_451(cm: Kim) -> None:
    """KOM-LE-A_2021: the Konnektor does not answer when signing -> 451."""
    sender, to = cm.address("praxis.weber"), cm.address("apotheke.sonne")

    def send_while_down() -> None:
        with cm.smtp_login("praxis.weber") as smtp:
            cm.app.fault(unreachable=True)
            smtp.sendmail(sender, [to], client_mail(sender, [to]))

    with pytest.raises(smtplib.SMTPDataError) as caught:
        await trio.to_thread.run_sync(send_while_down)
    assert caught.value.smtp_code == 451
    assert b"not reachable" in caught.value.smtp_error


async def test_mta_refusal_is_relayed(start_kim: StartKim) -> None:
    """digest §1.4 step 11: MAIL FROM goes up with SIZE= of the S/MIME message; the MTA's
    refusal (here 552 5.3.4, maxMailSize) reaches the PVS unchanged (KOM-LE-A_2018)."""
    cm = Kim(await start_kim(config={"fachdienst": {"max_message_size": 6000}}))
    sender, to = cm.address("praxis.weber"), cm.address("apotheke.sonne")
    data = client_mail(sender, [to], body="x" * 1000 + "\n")  # ~2 KB, the KIM message > 6 KB
    with pytest.raises(smtplib.SMTPDataError) as caught:
        await trio.to_thread.run_sync(cm.send, "praxis.weber", [to], data)
    assert caught.value.smtp_code == 552
    assert caught.value.smtp_error.startswith(b"5.3.4")
    # the Clientmodul has the same limit but the client mail is below it: the refusal is the
    # MTA's answer to a MAIL FROM whose SIZE= is the (larger) S/MIME message's
    announced = re.search(rb"SIZE=(\d+)", caught.value.smtp_error)
    assert announced is not None, caught.value.smtp_error
    assert int(announced.group(1)) > len(data)


async def test_from_is_rewritten_to_the_account(cm: Kim) -> None:
    """digest §1.4 step 3: a From that is not the authenticated account is rewritten, inside
    and outside; a Dienstkennung set by the PVS is kept (A_19488-02 only fills a gap)."""
    to = cm.address("apotheke.sonne")
    data = client_mail(
        "Dr. Weber <weber@praxis.example>",
        [to],
        headers={"X-KIM-Dienstkennung": "eAU;Einreichung;V1.0"},
    )
    await trio.to_thread.run_sync(cm.send, "praxis.weber", [to], data)
    (outer,) = await wait_for(cm, "apotheke.sonne")
    report, inner = open_kim(outer, cm, "apotheke.sonne")
    assert report.verified, report.lines()
    for mail in (outer, inner):
        parsed = header_of(mail)
        assert parsed["From"].addresses[0].addr_spec == cm.address("praxis.weber")
        assert parsed["X-KIM-Dienstkennung"] == "eAU;Einreichung;V1.0"


@both_modes
async def test_five_megabyte_attachment(cm: Kim) -> None:
    """A 5 MB attachment arrives byte for byte (streamed through spool files)."""
    import os

    payload = os.urandom(5 * 1024 * 1024)
    sender, to = cm.address("zahnarzt.klein"), cm.address("apotheke.sonne")
    data = client_mail(sender, [to], attachment=payload)
    await trio.to_thread.run_sync(cm.send, "zahnarzt.klein", [to], data)
    (outer,) = await wait_for(cm, "apotheke.sonne", timeout=60)
    report, inner = await trio.to_thread.run_sync(open_kim, outer, cm, "apotheke.sonne")
    assert report.verified, report.lines()
    parsed = header_of(inner)
    assert isinstance(parsed, EmailMessage)
    (attachment,) = parsed.iter_attachments()
    assert attachment.get_content() == payload


async def test_forwarded_kim_message_is_sent_as_it_is(cm: Kim) -> None:
    """KOM-LE-A_2029: a protected KIM message forwarded as a message/rfc822 part is extracted,
    gets the forwarder's From and is sent without signing or encrypting it again."""
    sender, me = cm.address("praxis.weber"), cm.address("apotheke.sonne")
    await trio.to_thread.run_sync(cm.send, "praxis.weber", [me], client_mail(sender, [me]))
    (original,) = await wait_for(cm, "apotheke.sonne")
    forward = EmailMessage()
    forward["From"] = me
    forward["To"] = me
    forward["Subject"] = "Fwd: KOM-LE-Nachricht"
    forward.set_content("bitte spaeter entschluesseln\n")
    forward.add_attachment(email.message_from_bytes(original, policy=email.policy.SMTP))
    data = forward.as_bytes(policy=email.policy.SMTP)
    await trio.to_thread.run_sync(cm.send, "apotheke.sonne", [me], data)
    (again,) = await wait_for(cm, "apotheke.sonne")
    body_of = lambda mail: mail.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n")  # noqa: E731
    assert body_of(again) == body_of(original)  # the same CMS, not encrypted again
    assert header_of(again)["From"] == me
    assert header_of(again)["X-KOM-LE-Version"] == "1.0"
    report, _ = open_kim(again, cm, "apotheke.sonne")
    assert report.decrypted


@both_modes
@pytest.mark.parametrize(("prefer_ecc", "expected"), [(True, "ecdsa"), (False, "pss")])
async def test_signing_key_follows_the_ecc_preference(
    start_kim: StartKim, prefer_ecc: bool, expected: str
) -> None:
    """digest §1.4 step 8: an SMC-B with RSA and ECC OSIG keys signs with ECC when ECC is
    preferred (release 1.5.4), with RSA (KOM-LE-A_2020) otherwise; the HBA holder's mail is
    signed by her practice's SMC-B (KOM-LE-A_2129)."""
    cm = Kim(await start_kim(config={"clientmodul": {"prefer_ecc": prefer_ecc}}))
    sender, to = cm.address("zahnarzt.klein"), cm.address("praxis.weber")
    await trio.to_thread.run_sync(cm.send, "zahnarzt.klein", [to], client_mail(sender, [to]))
    meyer = cm.address("dr.meyer")
    await trio.to_thread.run_sync(cm.send, "dr.meyer", [to], client_mail(meyer, [to]))
    first, second = await wait_for(cm, "praxis.weber", count=2)
    klein, _ = open_kim(first, cm, "praxis.weber")
    practice, _ = open_kim(second, cm, "praxis.weber")
    if "Meyer" in (klein.signer or ""):
        klein, practice = practice, klein
    assert expected in (klein.signature_algorithm or "").lower(), klein.lines()
    assert "Praxis Dr. Meyer" in (practice.signer or ""), practice.lines()


async def _serve_older_connector_sds(
    app: KimAppliance, nursery: trio.Nursery, *, encryption_service: str
) -> str:
    """An HTTPS server (the Konnektor's TLS certificate) that answers every request with
    ``app``'s connector.sds, its EncryptionService version replaced by ``encryption_service``:
    a Konnektor of an older release whose endpoints are ``app``'s. The URL to configure."""
    from kim_appliance.konnektor.soap.directory import connector_sds

    sds_url = app.konnektor_sds
    base = sds_url.rsplit("/", 1)[0]
    sds = connector_sds(base, tls=True, client_auth=False)
    assert b'Version="6.1.1"' in sds
    body = sds.replace(b'Version="6.1.1"', f'Version="{encryption_service}"'.encode())
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    tls = app.data_dir / "tls"
    context = server_context(tls / "konnektor.server.chain.pem", tls / "konnektor.server.key.pem")

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        request = b""
        try:
            while b"\r\n\r\n" not in request and (data := await stream.receive_some(4096)):
                request += data
            await stream.send_all(answer)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    serve = partial(trio.serve_ssl_over_tcp, host="127.0.0.1")
    listeners = await nursery.start(serve, handler, 0, context)
    port = listeners[0].transport_listener.socket.getsockname()[1]
    return f"https://127.0.0.1:{port}/connector.sds"


async def test_behind_a_konnektor_without_ecc_only_rsa_is_used(
    start_kim: StartKim, nursery: trio.Nursery
) -> None:
    """A_17464, A_17472: the Clientmodul's Konnektor (SOAP, found through connector.sds) offers
    EncryptionService 6.1.0, older than the 6.1.1 that ECC needs: zahnarzt.klein's SMC-B has RSA
    and ECC keys and ECC is preferred, yet the message is signed with RSA (RSASSA-PSS), and
    encrypted for RSA certificates only (no ECC recipient info, also not for the sender's own ECC
    certificate); apotheke.sonne, who has ECC certificates only, is dropped (4004) and reported
    to the sender (KOM-LE-A_2024-01)."""
    konnektor = await start_kim()  # the Konnektor the old connector.sds points to
    old_sds = await _serve_older_connector_sds(konnektor, nursery, encryption_service="6.1.0")
    cm = Kim(await start_kim(config={"clientmodul": {"konnektor": old_sds}}))
    sender, weber, sonne = (cm.address(p) for p in ("zahnarzt.klein", "praxis.weber",
                                                     "apotheke.sonne"))  # fmt: skip
    data = client_mail(sender, [weber, sonne])
    refused = await trio.to_thread.run_sync(cm.send, "zahnarzt.klein", [weber, sonne], data)
    assert refused == {}
    (outer,) = await wait_for(cm, "praxis.weber")
    report, inner = open_kim(outer, cm, "praxis.weber")
    assert report.verified, report.lines()
    assert "pss" in (report.signature_algorithm or "").lower(), report.lines()
    assert len(report.recipient_infos) == 2, report.recipient_infos  # Weber's and Klein's RSA
    assert all(info.startswith("ktri") for info in report.recipient_infos), report.lines()
    assert sonne not in header_of(inner)["To"]
    (sender_report,) = _reports(await wait_for(cm, "zahnarzt.klein"))
    assert sender_report["X-KIM-Fehlermeldung"] == "4004"
    assert sonne in sender_report.as_string()
    assert "ECC" in sender_report.as_string()


def _foreign_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed client certificate no configured CA issued (PEM chain, PEM key)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fremdes PVS")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    chain, key_file = directory / "foreign.pem", directory / "foreign.key.pem"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return chain, key_file


@pytest.mark.parametrize("enabled", [False, True], ids=["default-off", "pvs_client_auth"])
async def test_pvs_client_certificate_is_asked_only_when_configured(
    start_kim: StartKim, tmp_path: Path, enabled: bool
) -> None:
    """KOM-LE-A_2181: the Clientmodul offers TLS towards the PVS both with certificate-based
    client authentication and without. Default (as a Clientmodul ships): no certificate asked,
    smtplib and poplib without one log in. With ``[clientmodul] pvs_client_auth = true`` a PVS
    without a certificate, or with one no configured CA issued, fails the TLS handshake on SMTPS
    and POP3S; one with a certificate of the configured CA (here the appliance's TLS CA, the
    default of ``pvs_client_ca``) logs in and sends; the listeners go on serving."""
    import poplib
    import ssl

    app = await start_kim(config={"clientmodul": {"pvs_client_auth": enabled}})
    cm = Kim(app)
    tls = app.data_dir / "tls"
    ours = (tls / "clientmodul.server.chain.pem", tls / "clientmodul.server.key.pem")
    foreign = _foreign_certificate(tmp_path)
    p = cm.participant("praxis.weber")

    def context(cert: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = cm.ssl_context()
        if cert is not None:
            ctx.load_cert_chain(*cert)
        return ctx

    def smtp(cert: tuple[Path, Path] | None) -> str:
        host, port = app.clientmodul_smtp
        try:
            with smtplib.SMTP_SSL(host, port, context=context(cert), timeout=30) as s:
                s.ehlo("pvs.test")
                code, _ = s.login(p.smtp_username, p.password)
                return str(code)
        except (ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError) as exc:
            return f"refused: {exc!r}"

    def pop3(cert: tuple[Path, Path] | None) -> str:
        host, port = app.clientmodul_pop3
        try:
            pop = poplib.POP3_SSL(host, port, context=context(cert), timeout=30)
            pop.user(p.pop3_username)
            answer = pop.pass_(p.password).decode()
            pop.quit()
            return answer[:3]
        except (ssl.SSLError, poplib.error_proto, ConnectionError, EOFError) as exc:
            return f"refused: {exc!r}"

    results = {
        (protocol.__name__, label): await trio.to_thread.run_sync(protocol, cert)
        for protocol in (smtp, pop3)
        for label, cert in (("none", None), ("foreign", foreign), ("ours", ours))
    }
    for protocol, ok in (("smtp", "235"), ("pop3", "+OK")):
        assert results[(protocol, "ours")] == ok, results
        if enabled:
            assert results[(protocol, "none")].startswith("refused"), results
            assert results[(protocol, "foreign")].startswith("refused"), results
        else:
            assert results[(protocol, "none")] == ok, results
            assert results[(protocol, "foreign")] == ok, results  # not asked, not checked
