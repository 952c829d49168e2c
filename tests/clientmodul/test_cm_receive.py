"""The Clientmodul's POP3 side through real sockets, poplib playing the PVS (digest §1.5).

Every test runs a whole appliance in-process (``cm``/``start_kim`` of conftest.py, on
kim_appliance.testing) and fetches through its own Clientmodul (endpoint
``clientmodul.pop3``); a card is pulled or the Konnektor made unreachable through the Konnektor
admin API. KIM messages are sealed with the demo participants' exported keys (mail.seal) and
submitted straight to the Fachdienst with smtplib as the sender, then fetched through the
Clientmodul.
"""

from __future__ import annotations

import io
import poplib
import re
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from functools import partial
from typing import Any

import pytest
import trio
from cm_support import Kim, StartKim, closed_port, with_upstream
from fd_support import make_message

from kim_appliance.clientmodul.keys import DecryptionKeyFinder
from kim_appliance.cms.keys import SoftwareKey
from kim_appliance.mail.seal import Certified, seal
from kim_appliance.protocols.pop3 import Pop3Client
from kim_appliance.testing import KimAppliance, Participant

#: runs in both modes: in-process, and SOAP/LDAPS to the appliance's own listeners
both_modes = pytest.mark.usefixtures("cm_mode")

WEBER, SONNE, KLEIN, MEYER = "praxis.weber", "apotheke.sonne", "zahnarzt.klein", "dr.meyer"
#: who sends to whom in the per-kind tests: same Fachdienst, so no relay wait
SENDER_OF = {WEBER: KLEIN, KLEIN: WEBER, SONNE: MEYER, MEYER: SONNE}


# --- PVS-side helpers (blocking: call through trio.to_thread.run_sync) ---------------------------


def cm_connect(cm: Kim) -> poplib.POP3_SSL:
    return cm.pop3_connect()


def cm_login(cm: Kim, local: str, *, username: str | None = None) -> poplib.POP3_SSL:
    return cm.pop3_login(local, username=username)


def command(pop: poplib.POP3_SSL, line: str) -> bytes:
    """One raw command; the one-line answer, ``-ERR`` returned rather than raised."""
    try:
        answer: bytes = pop._shortcmd(line)  # type: ignore[attr-defined]
    except poplib.error_proto as exc:
        error = exc.args[0]
        answer = error if isinstance(error, bytes) else str(error).encode()
    return answer


def fetch_all(cm: Kim, local: str) -> list[tuple[int, bytes]]:
    """(LIST size, RETR bytes) of every message, fetched through the Clientmodul."""
    pop = cm_login(cm, local)
    try:
        _, listing, _ = pop.list()
        sizes = dict(tuple(map(int, line.split())) for line in listing)
        out = []
        for n in sorted(sizes):
            _, lines, octets = pop.retr(n)
            assert octets == sizes[n], f"LIST said {sizes[n]} octets, RETR gave {octets}"
            out.append((sizes[n], b"\r\n".join(lines) + b"\r\n"))
        return out
    finally:
        pop.quit()


def enc_certs(p: Participant) -> list[Certified]:
    from cryptography import x509

    return [
        Certified(p.address, x509.load_pem_x509_certificate(c.read_bytes())) for c in p.enc_certs
    ]


def seal_message(
    cm: Kim,
    sender: str,
    recipient: str,
    *,
    inner: bytes | None = None,
    recipients_for: str | None = None,
) -> bytes:
    """A KIM message from ``sender`` to ``recipient``, signed with the sender's exported OSIG
    key; encrypted for ``recipients_for`` (default: the recipient) and the sender."""
    s, r = cm.participant(sender), cm.participant(recipient)
    target = cm.participant(recipients_for or recipient)
    signer = SoftwareKey.from_files(s.osig_keys[0], s.osig_certs[0])
    data = inner or make_message(
        s.address,
        r.address,
        subject="Arztbrief",
        body="Sehr geehrte Kollegin,\nanbei der Befund.\n",
        headers={"X-KIM-Dienstkennung": "Arztbrief;VHitG-Versand;V1.2"},
    )
    out = io.BytesIO()
    seal(io.BytesIO(data), out, signer=signer, sender=enc_certs(s), recipients=enc_certs(target))
    return out.getvalue()


def submit(cm: Kim, sender: str, recipient: str, data: bytes) -> None:
    """Send ``data`` from ``sender`` to ``recipient`` straight to the sender's Fachdienst."""
    cm.fd_submit(sender, recipient, data)


async def deliver(cm: Kim, sender: str, recipient: str, data: bytes) -> None:
    await trio.to_thread.run_sync(submit, cm, sender, recipient, data)


async def fetch(cm: Kim, local: str) -> list[tuple[int, bytes]]:
    return await trio.to_thread.run_sync(fetch_all, cm, local)


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage) -> str:
    """All text/plain parts, decoded and joined."""
    return "\n".join(
        str(part.get_content())
        for part in message.walk()
        if part.get_content_type() == "text/plain"
    )


def attached_message(message: EmailMessage) -> bytes:
    """The bytes of the message/rfc822 part of an error mail (digest §1.7)."""
    for part in message.walk():
        if part.get_content_type() == "message/rfc822":
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) else payload
            return bytes(inner.as_bytes(policy=policy.default.clone(linesep="\r\n")))
    raise AssertionError("the error mail has no message/rfc822 part")


# --- CONNECT (digest §1.5, Tab_POP3_Ant_Init / Tab_POP3_Verbindung) ------------------------------


async def test_greeting_capa_and_commands_before_login(cm: Kim) -> None:
    """Digest §1.5 CONNECT: greeting (over TLS from the first byte, KOM-LE-A_2067), CAPA with
    TOP/USER/SASL PLAIN/UIDL (KOM-LE-A_2031), every message command before login -ERR, QUIT
    +OK."""

    def dialogue() -> tuple[bytes, list[bytes], list[bytes], bytes]:
        pop = cm_connect(cm)
        welcome = pop.getwelcome()
        _, capa, _ = pop._longcmd("CAPA")  # type: ignore[attr-defined]
        refused = [command(pop, c) for c in ("STAT", "LIST", "RETR 1", "TOP 1 0", "NOOP", "XYZ")]
        bye = pop.quit()
        return welcome, capa, refused, bye

    welcome, capa, refused, bye = await trio.to_thread.run_sync(dialogue)
    assert welcome == b"+OK KOM-LE Clientmodul POP3"
    for capability in (b"TOP", b"USER", b"SASL PLAIN", b"UIDL"):
        assert capability in capa
    assert all(r.startswith(b"-ERR") for r in refused), refused
    assert bye.startswith(b"+OK")


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("malformed username", lambda u, pw: ("praxis.weber@fd1.kim.telematik-test#x", pw)),
        ("unknown Mandant (4004)", lambda u, pw: (u.replace("#Mandant1#", "#MandantX#"), pw)),
        ("unknown workplace (4006)", lambda u, pw: (u.replace("#AP1", "#AP9"), pw)),
        ("wrong password", lambda u, pw: (u, pw + "x")),
    ],
)
async def test_login_failures_are_plain_err(
    cm: Kim, case: str, change: Callable[[str, str], tuple[str, str]]
) -> None:
    """Digest §1.5: every CONNECT failure (bad username, Konnektor fault 4004-4006, wrong
    password upstream) is a plain -ERR; the PVS may then try again (KOM-LE-A_2032).
    KOM-LE-A_2034: the wrong password is refused by the POP3 server and the right one logs in
    with the account taken from the username; KOM-LE-A_2038: the PVS connection stays open
    after the failure."""
    p = cm.participant(WEBER)
    username, password = change(p.pop3_username, p.password)

    def dialogue() -> tuple[bytes, bytes]:
        pop = cm_connect(cm)
        try:
            command(pop, f"USER {username}")
            failed = command(pop, f"PASS {password}")
            # and the right login works afterwards in the same session
            command(pop, f"USER {p.pop3_username}")
            ok = command(pop, f"PASS {p.password}")
            return failed, ok
        finally:
            pop.quit()

    failed, ok = await trio.to_thread.run_sync(dialogue)
    assert failed.startswith(b"-ERR"), (case, failed)
    assert not failed.startswith(b"-ERR ["), "plain -ERR: no response code"
    assert ok.startswith(b"+OK"), ok


async def test_auth_plain_and_other_mechanism(cm: Kim) -> None:
    """Digest §1.5: AUTH PLAIN logs in; another SASL mechanism is -ERR (KOM-LE-A_2032,
    KOM-LE-A_2030, KOM-LE-A_2031)."""
    import base64

    p = cm.participant(KLEIN)
    token = base64.b64encode(f"\0{p.pop3_username}\0{p.password}".encode()).decode()

    def dialogue() -> tuple[bytes, bytes, bytes]:
        pop = cm_connect(cm)
        try:
            other = command(pop, "AUTH CRAM-MD5")
            plain = command(pop, f"AUTH PLAIN {token}")
            stat = command(pop, "STAT")
            return other, plain, stat
        finally:
            pop.quit()

    other, plain, stat = await trio.to_thread.run_sync(dialogue)
    assert other.startswith(b"-ERR")
    assert plain.startswith(b"+OK"), plain
    assert re.fullmatch(rb"\+OK 0 0", stat), stat


async def test_unreachable_fachdienst_is_err(cm: Kim) -> None:
    """Digest §1.5: the Clientmodul connects to the POP3 server the username names
    (KOM-LE-A_2033); not reachable -> plain -ERR (KOM-LE-A_2037)."""
    # the username names the MTA (digest §1.2); a host that is none of the appliance's
    # Fachdienst domains is connected to as written, and nothing listens on this port
    username = with_upstream(cm.participant(WEBER).pop3_username, "127.0.0.1", closed_port())
    with pytest.raises(poplib.error_proto, match="-ERR"):
        await trio.to_thread.run_sync(partial(cm_login, cm, WEBER, username=username))


def scripted_pop3(
    capabilities: list[bytes] | None,
) -> tuple[Callable[[trio.SSLStream[trio.SocketStream]], Any], list[bytes], trio.Event]:
    """A scripted POP3S server that records every command line it sees: ``CAPA`` lists
    ``capabilities`` (``None``: ``-ERR``, an RFC 1939 server without extensions), QUIT ends,
    every other command is ``+OK``."""
    seen: list[bytes] = []
    ended = trio.Event()

    async def pop3_server(stream: trio.SSLStream[trio.SocketStream]) -> None:
        buffer = b""
        try:
            await stream.send_all(b"+OK scripted POP3\r\n")
            while data := await stream.receive_some(4096):
                buffer += data
                while b"\r\n" in buffer:
                    line, buffer = buffer.split(b"\r\n", 1)
                    seen.append(line)
                    if line.upper() == b"QUIT":
                        await stream.send_all(b"+OK bye\r\n")
                        return
                    if line.upper() == b"CAPA":
                        if capabilities is None:
                            await stream.send_all(b"-ERR unknown command\r\n")
                        else:
                            listing = b"".join(c + b"\r\n" for c in capabilities)
                            await stream.send_all(b"+OK\r\n" + listing + b".\r\n")
                        continue
                    await stream.send_all(b"+OK 0 0\r\n")
            seen.append(b"<EOF>")
        except trio.BrokenResourceError:
            seen.append(b"<closed without TLS close_notify>")
        finally:
            ended.set()
            await trio.aclose_forcefully(stream)

    return pop3_server, seen, ended


async def start_scripted_pop3(
    app: KimAppliance, p: Participant, nursery: trio.Nursery, capabilities: list[bytes] | None
) -> tuple[str, list[bytes], trio.Event]:
    """The scripted server on a free port with the Fachdienst's TLS certificate; the PVS's
    POP3 username that names it, what it sees, and the event set when its session ends."""
    from kim_appliance.pki.tls import server_context

    tls = app.data_dir / "tls"
    context = server_context(
        tls / f"{p.fachdienst}.server.chain.pem", tls / f"{p.fachdienst}.server.key.pem"
    )
    handler, seen, ended = scripted_pop3(capabilities)
    listeners = await nursery.start(trio.serve_ssl_over_tcp, handler, 0, context)
    port = listeners[0].transport_listener.socket.getsockname()[1]
    return with_upstream(p.pop3_username, "127.0.0.1", port), seen, ended


async def test_pop3_server_session_follows_the_pvs_session(
    start_kim: StartKim, nursery: trio.Nursery
) -> None:
    """KOM-LE-A_2034: the Clientmodul logs in at the POP3 server the username names with the
    plain account and the PVS's password (here USER/PASS after CAPA, as the PVS did: the example
    of gemSpec_CM_KOMLE §3.4.5, KOM-LE-A_2035); KOM-LE-A_2039: that connection stays open
    while the PVS session goes on and gets QUIT when the PVS quits (against a scripted POP3S
    server that records what it sees)."""
    app = await start_kim()
    p = app.participant(WEBER)
    capabilities = [b"TOP", b"USER", b"SASL PLAIN", b"UIDL"]
    username, seen, ended = await start_scripted_pop3(app, p, nursery, capabilities)

    def session() -> tuple[bytes, list[bytes], bytes]:
        pop = Kim(app).pop3_connect()
        pop.user(username)
        logged_in = pop.pass_(p.password)
        before_quit = list(seen)
        return logged_in, before_quit, pop.quit()

    logged_in, before_quit, bye = await trio.to_thread.run_sync(session)
    assert logged_in.startswith(b"+OK")
    assert bye.startswith(b"+OK")
    assert before_quit == [b"CAPA", f"USER {p.address}".encode(), f"PASS {p.password}".encode()]
    with trio.fail_after(10):
        await ended.wait()
    assert seen[-1] == b"QUIT"


SASL_AND_USER = [b"TOP", b"USER", b"SASL PLAIN", b"UIDL"]


@pytest.mark.parametrize(
    ("pvs_uses", "capabilities", "upstream"),
    [
        ("PLAIN", SASL_AND_USER, "PLAIN"),  # the PVS's mechanism, offered
        ("USER", SASL_AND_USER, "USER"),
        ("PLAIN", [b"TOP", b"USER", b"UIDL"], "USER"),  # no SASL PLAIN upstream
        ("PLAIN", None, "USER"),  # no CAPA: an RFC 1939 server
        ("USER", [b"TOP", b"SASL PLAIN", b"UIDL"], "PLAIN"),  # no USER upstream
    ],
    ids=["plain-plain", "user-user", "plain-no-sasl", "plain-no-capa", "user-no-user"],
)
async def test_the_clientmodul_logs_in_with_user_pass_or_sasl_plain(
    start_kim: StartKim,
    nursery: trio.Nursery,
    pvs_uses: str,
    capabilities: list[bytes] | None,
    upstream: str,
) -> None:
    """KOM-LE-A_2035: the Clientmodul has the client parts of USER/PASS and SASL PLAIN. After
    CAPA it uses the mechanism the PVS used when the POP3 server offers it, else the other one
    (a server without CAPA offers USER/PASS); it logs in once, and the PVS's session works."""
    import base64

    app = await start_kim()
    p = app.participant(WEBER)
    username, seen, ended = await start_scripted_pop3(app, p, nursery, capabilities)

    def session() -> tuple[bytes, bytes, bytes]:
        pop = Kim(app).pop3_connect()
        if pvs_uses == "PLAIN":
            token = base64.b64encode(f"\0{username}\0{p.password}".encode()).decode()
            logged_in = command(pop, f"AUTH PLAIN {token}")
        else:
            pop.user(username)
            logged_in = pop.pass_(p.password)
        return logged_in, command(pop, "NOOP"), pop.quit()

    logged_in, noop, bye = await trio.to_thread.run_sync(session)
    assert logged_in.startswith(b"+OK"), logged_in
    assert noop.startswith(b"+OK")
    assert bye.startswith(b"+OK")
    with trio.fail_after(10):
        await ended.wait()
    plain = base64.b64encode(f"\0{p.address}\0{p.password}".encode())
    login = (
        [b"AUTH PLAIN " + plain]
        if upstream == "PLAIN"
        else [f"USER {p.address}".encode(), f"PASS {p.password}".encode()]
    )
    assert seen == [b"CAPA", *login, b"NOOP", b"QUIT"]


async def test_pop3_server_offering_neither_mechanism_is_refused_without_the_password(
    start_kim: StartKim, nursery: trio.Nursery
) -> None:
    """KOM-LE-A_2035: a POP3 server whose CAPA offers neither SASL PLAIN nor USER
    gets no password (other mechanisms are optional and not built); the PVS gets -ERR saying
    why."""
    app = await start_kim()
    p = app.participant(WEBER)
    username, seen, ended = await start_scripted_pop3(app, p, nursery, [b"TOP", b"SASL GSSAPI"])

    def session() -> bytes:
        pop = Kim(app).pop3_connect()
        pop.user(username)
        return command(pop, f"PASS {p.password}")

    refused = await trio.to_thread.run_sync(session)
    assert refused.startswith(b"-ERR"), refused
    assert b"neither SASL PLAIN nor USER" in refused, refused
    with trio.fail_after(10):
        await ended.wait()
    assert seen[0] == b"CAPA"
    assert not any(p.password.encode() in line for line in seen)


# --- PROCESS: the receive pipeline per participant kind ------------------------------------------


@both_modes
@pytest.mark.parametrize("recipient", [WEBER, SONNE, KLEIN, MEYER])
async def test_kim_message_is_delivered_decrypted(cm: Kim, recipient: str) -> None:
    """Digest §1.5 receive pipeline for each card kind (RSA SMC-B, ECC SMC-B, RSA+ECC SMC-B,
    HBA with the UserId in the username): X-KIM-DecryptionResult 00 and IntegrityCheckResult
    01 (KOM-LE-A_2047-01, KOM-LE-A_2049), the notes in the text (KOM-LE-A_2179-01, A_2050),
    Return-Path and Received carried over (A_21236, A_20628), and LIST size == RETR octets."""
    sender = SENDER_OF[recipient]
    data = await trio.to_thread.run_sync(partial(seal_message, cm, sender, recipient))
    await deliver(cm, sender, recipient, data)
    [(size, mail)] = await fetch(cm, recipient)
    message = parsed(mail)
    assert message["X-KIM-DecryptionResult"] == "00"
    assert message.get_all("X-KIM-IntegrityCheckResult") == ["01"]
    assert message["Subject"] == "Arztbrief"
    assert message["From"] == cm.participant(sender).address
    assert message["X-KIM-Dienstkennung"] == "Arztbrief;VHitG-Versand;V1.2"
    text = text_of(message)
    assert "anbei der Befund." in text
    assert "Die Nachricht wurde entschlüsselt." in text
    assert "Die Signatur wurde erfolgreich geprüft." in text
    assert message["Return-Path"] is not None
    assert message.get_all("Received")
    assert b"KOM-LE-Nachricht" not in mail
    assert size == len(mail)


@both_modes
async def test_cached_card_lookup_and_second_session(
    start_kim: StartKim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KOM-LE-A_2060/2061: the card is found with GetCards + ReadCardCertificate once, then from
    the e-mail -> certificate -> ICCSN cache (TTL_EMAIL_ICCSN)."""
    # the count of card searches is only known to the Clientmodul's key finder: the appliance
    # (in this process) makes one when it starts its Clientmodul, and the spy keeps it
    finders: list[DecryptionKeyFinder] = []
    original = DecryptionKeyFinder.__init__

    def spy(self: DecryptionKeyFinder, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        finders.append(self)

    monkeypatch.setattr(DecryptionKeyFinder, "__init__", spy)
    cm = Kim(await start_kim())
    [finder] = finders
    for _ in range(2):
        data = await trio.to_thread.run_sync(partial(seal_message, cm, WEBER, KLEIN))
        await deliver(cm, WEBER, KLEIN, data)
        [(_, mail)] = await fetch(cm, KLEIN)
        assert parsed(mail)["X-KIM-DecryptionResult"] == "00"
        await trio.to_thread.run_sync(_delete_all, cm, KLEIN)
    assert finder.card_searches == 1


def _delete_all(cm: Kim, local: str) -> None:
    pop = cm_login(cm, local)
    count, _ = pop.stat()
    for n in range(1, count + 1):
        pop.dele(n)
    pop.quit()


async def test_non_kim_mail_passes_unchanged(cm: Kim) -> None:
    """A_21390: a mail without X-KOM-LE-Version (here a plain mail) reaches the PVS unchanged:
    the bytes the Fachdienst holds are the bytes RETR returns through the Clientmodul."""
    weber, klein = cm.participant(WEBER).address, cm.participant(KLEIN).address
    data = make_message(weber, klein, subject="Kein KIM", body="klartext\n")
    await deliver(cm, WEBER, KLEIN, data)

    def direct() -> bytes:
        pop = cm.fd_pop3(KLEIN)
        try:
            _, lines, _ = pop.retr(1)
            return b"\r\n".join(lines) + b"\r\n"
        finally:
            pop.quit()

    upstream = await trio.to_thread.run_sync(direct)
    [(size, mail)] = await fetch(cm, KLEIN)
    assert mail == upstream
    assert size == len(upstream)
    assert b"X-KIM-DecryptionResult" not in mail


async def test_top_goes_upstream_as_top_n_0(cm: Kim, monkeypatch: pytest.MonkeyPatch) -> None:
    """KOM-LE-A_2041: TOP n 5 from the PVS is sent to the Fachdienst as TOP n 0; the PVS gets
    the outer header (with X-KIM-Dienstkennung) and not one line of the encrypted body."""
    sent: list[tuple[int, int]] = []
    original = Pop3Client.top

    def spy(self: Pop3Client, n: int, lines: int) -> bytes:
        sent.append((n, lines))
        return original(self, n, lines)

    monkeypatch.setattr(Pop3Client, "top", spy)
    data = await trio.to_thread.run_sync(partial(seal_message, cm, WEBER, KLEIN))
    await deliver(cm, WEBER, KLEIN, data)

    def dialogue() -> list[bytes]:
        pop = cm_login(cm, KLEIN)
        try:
            _, lines, _ = pop.top(1, 5)
            return list(lines)
        finally:
            pop.quit()

    lines = await trio.to_thread.run_sync(dialogue)
    assert sent == [(1, 0)]
    assert b"X-KIM-Dienstkennung: Arztbrief;VHitG-Versand;V1.2" in lines
    assert lines[-1] == b"", "the header and its blank line, then nothing"
    assert lines.count(b"") == 1


# --- PROCESS: faults and tampering ---------------------------------------------------------------


def _tamper_ciphertext(data: bytes) -> bytes:
    """Flip one base64 character in the middle of the body (inside the encrypted content)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = body.split(b"\r\n")
    i = len(lines) // 2
    line = bytearray(lines[i])
    line[10] = ord("B") if line[10] != ord("B") else ord("C")
    lines[i] = bytes(line)
    return head + b"\r\n\r\n" + b"\r\n".join(lines)


@both_modes
async def test_tampered_ciphertext_gives_error_mail_02(cm: Kim) -> None:
    """KOM-LE-A_2046, A_2047-01: a message whose ciphertext was altered fails the GCM tag; the PVS
    gets the error mail 'konnte nicht entschlüsselt werden' with DecryptionResult 02, code 4010
    and the still-encrypted original attached."""
    data = await trio.to_thread.run_sync(partial(seal_message, cm, WEBER, KLEIN))
    tampered = _tamper_ciphertext(data)
    await deliver(cm, WEBER, KLEIN, tampered)
    [(size, mail)] = await fetch(cm, KLEIN)
    message = parsed(mail)
    assert message["Subject"] == "Die Nachricht konnte nicht entschlüsselt werden"
    assert message["X-KIM-DecryptionResult"] == "02"
    assert "4010" in (message.get_all("X-KIM-Fehlermeldung") or [])
    assert message.get_content_type() == "multipart/mixed"
    assert b"KOM-LE-Nachricht" in attached_message(message)
    assert size == len(mail)


@both_modes
async def test_header_mismatch_gives_integrity_08_mail(cm: Kim) -> None:
    """A_23165, KOM-LE-A_2049, digest §1.6 ID 08: the outer Reply-To was changed after
    encryption; the PVS gets
    the integrity error mail with DecryptionResult 00, IntegrityCheckResult 08 and the
    decrypted original attached."""
    data = await trio.to_thread.run_sync(partial(seal_message, cm, WEBER, KLEIN))
    changed = b"Reply-To: angreifer@fd1.kim.telematik-test\r\n" + data
    await deliver(cm, WEBER, KLEIN, changed)
    [(_, mail)] = await fetch(cm, KLEIN)
    message = parsed(mail)
    assert message["X-KIM-DecryptionResult"] == "00"
    assert "08" in (message.get_all("X-KIM-IntegrityCheckResult") or [])
    assert "Sicherheitsverletzung" in text_of(message)
    original = attached_message(message)
    assert b"anbei der Befund." in original
    assert b"Subject: Arztbrief" in original


@both_modes
async def test_removed_card_gives_error_mail_01(cm: Kim) -> None:
    """KOM-LE-A_2046, A_2047-01, A_2062: the recipient's card is not inserted: DecryptionResult
    01, code 4009, the encrypted original attached; inserted again and unlocked (VerifyPin)
    the same message decrypts (nothing was deleted upstream)."""
    data = await trio.to_thread.run_sync(partial(seal_message, cm, WEBER, KLEIN))
    await deliver(cm, WEBER, KLEIN, data)
    await cm.fault(card_removed=cm.participant(KLEIN))
    [(_, mail)] = await fetch(cm, KLEIN)
    message = parsed(mail)
    assert message["Subject"] == "Die Nachricht konnte nicht entschlüsselt werden"
    assert message["X-KIM-DecryptionResult"] == "01"
    assert "4009" in (message.get_all("X-KIM-Fehlermeldung") or [])
    assert b"KOM-LE-Nachricht" in attached_message(message)
    # inserted again, the card's PIN must be verified anew (A_2062): still 01, then 00
    await cm.fault(card_inserted=cm.participant(KLEIN))
    [(_, mail)] = await fetch(cm, KLEIN)
    assert parsed(mail)["X-KIM-DecryptionResult"] == "01"
    # the admin API's PIN switch stands in for VerifyPin at the terminal
    await cm.fault(pin_status={"iccsn": cm.participant(KLEIN).iccsn, "status": "VERIFIED"})
    [(_, mail)] = await fetch(cm, KLEIN)
    assert parsed(mail)["X-KIM-DecryptionResult"] == "00"


@both_modes
async def test_unverified_pin_gives_error_mail_01(cm: Kim) -> None:
    """A_2062/A_2063: the SMC-B is not unlocked (PIN.SMC not verified): DecryptionResult 01."""
    data = await trio.to_thread.run_sync(partial(seal_message, cm, KLEIN, WEBER))
    await deliver(cm, KLEIN, WEBER, data)
    await cm.fault(pin_status={"iccsn": cm.participant(WEBER).iccsn, "status": "VERIFIABLE"})
    [(_, mail)] = await fetch(cm, WEBER)
    assert parsed(mail)["X-KIM-DecryptionResult"] == "01"


@both_modes
async def test_unreachable_konnektor_gives_error_mail_03(cm: Kim) -> None:
    """KOM-LE-A_2047-01 ID 03: the Konnektor does not answer: DecryptionResult 03, code 4011.
    The login still works (the PVS can fetch the error mail)."""
    data = await trio.to_thread.run_sync(partial(seal_message, cm, WEBER, KLEIN))
    await deliver(cm, WEBER, KLEIN, data)
    await cm.fault(unreachable=True)
    [(_, mail)] = await fetch(cm, KLEIN)
    message = parsed(mail)
    assert message["X-KIM-DecryptionResult"] == "03"
    assert "4011" in (message.get_all("X-KIM-Fehlermeldung") or [])


@both_modes
async def test_message_not_encrypted_for_the_account_gives_01(cm: Kim) -> None:
    """KOM-LE-A_2043/2044/2045: recipient-emails names no certificate of the fetching account
    (the message was encrypted for another practice): the Clientmodul does not use anyone
    else's key; DecryptionResult 01."""
    data = await trio.to_thread.run_sync(
        partial(seal_message, cm, WEBER, KLEIN, recipients_for=SONNE)
    )
    await deliver(cm, WEBER, KLEIN, data)
    [(_, mail)] = await fetch(cm, KLEIN)
    message = parsed(mail)
    assert message["X-KIM-DecryptionResult"] == "01"
    assert "4009" in (message.get_all("X-KIM-Fehlermeldung") or [])


async def test_unsupported_version_gives_error_mail_4008(cm: Kim) -> None:
    """A_21391-02: an X-KOM-LE-Version this Clientmodul does not support: error mail with
    code 4008 and the original attached."""
    data = await trio.to_thread.run_sync(partial(seal_message, cm, WEBER, KLEIN))
    data = data.replace(b"X-KOM-LE-Version: 1.0", b"X-KOM-LE-Version: 7.0")
    await deliver(cm, WEBER, KLEIN, data)
    [(_, mail)] = await fetch(cm, KLEIN)
    message = parsed(mail)
    assert "4008" in (message.get_all("X-KIM-Fehlermeldung") or [])
    assert message["Subject"] == "Die KIM-Version der empfangenen Nachricht wird nicht unterstützt"
    assert b"X-KOM-LE-Version: 7.0" in attached_message(message)


async def test_stat_list_uidl_dele_through_the_proxy(cm: Kim) -> None:
    """Digest §1.5 PROXY (KOM-LE-A_2040): STAT and LIST give the sizes RETR returns (processed
    lazily and cached per session), UIDL is the Fachdienst's, DELE + QUIT delete upstream."""
    for _ in range(2):
        data = await trio.to_thread.run_sync(partial(seal_message, cm, WEBER, KLEIN))
        await deliver(cm, WEBER, KLEIN, data)

    def dialogue() -> tuple[tuple[int, int], dict[int, int], list[bytes], int, list[int]]:
        pop = cm_login(cm, KLEIN)
        stat = pop.stat()
        _, listing, _ = pop.list()
        sizes = {int(a): int(b) for a, b in (line.split() for line in listing)}
        _, uidl, _ = pop.uidl()
        _, _, octets = pop.retr(2)
        single = command(pop, "LIST 2")
        assert single == f"+OK 2 {sizes[2]}".encode()
        pop.dele(1)
        pop.quit()
        pop = cm_login(cm, KLEIN)
        try:
            return stat, sizes, uidl, octets, [pop.stat()[0]]
        finally:
            pop.quit()

    stat, sizes, uidl, octets, after = await trio.to_thread.run_sync(dialogue)
    assert stat == (2, sum(sizes.values()))
    assert octets == sizes[2]
    assert len(uidl) == 2
    assert after == [1]


@both_modes
@pytest.mark.slow
async def test_25_mb_message_through_the_clientmodul(cm: Kim) -> None:
    """Issue 6 item 5 (digest §1.5): a 25 MB KIM message is spooled, decrypted, verified and
    delivered through POP3 with LIST size == RETR octets and the body intact (KOM-LE-A_2004:
    25 MB net on the receive side)."""
    weber, klein = cm.participant(WEBER).address, cm.participant(KLEIN).address
    line = b"A" * 998 + b"\r\n"
    inner = make_message(weber, klein, body="PLACEHOLDER\n").replace(
        b"PLACEHOLDER\r\n", line * 25_000
    )
    data = await trio.to_thread.run_sync(partial(seal_message, cm, WEBER, KLEIN, inner=inner))
    await deliver(cm, WEBER, KLEIN, data)
    [(size, mail)] = await fetch(cm, KLEIN)
    assert size == len(mail) > 25_000_000
    head, _, body = mail.partition(b"\r\n\r\n")
    assert b"X-KIM-DecryptionResult: 00" in head
    assert body.startswith(line * 25_000)
    assert "Die Nachricht wurde entschlüsselt." in body[25_000_000:].decode("utf-8")
