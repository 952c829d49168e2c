"""The Clientmodul's SMTP side through sockets: smtplib plays the PVS (digest §1.3, §1.4).

A running appliance (in-process, ephemeral ports) provides the Fachdienste; the Clientmodul's
SMTP listener is started here on top of it with its own Konnektor and VZD instances read from
the same data dir. What arrives at the Fachdienst is read with poplib directly and opened with
the recipient's exported keys (``mail.unseal.open_message``), as an independent check that the
Clientmodul made a KIM message the recipient can read.
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import json
import shutil
import smtplib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from fd_support import Running, _quick_hash, _write_config, pop3_fetch_all

from kim_appliance.appliance import ENDPOINTS_FILE, _tls_files, run_appliance
from kim_appliance.clientmodul.context import ClientmodulContext
from kim_appliance.clientmodul.smtp_proxy import serve_cm_smtp_connection
from kim_appliance.cms.keys import SoftwareKey
from kim_appliance.directory import DirectoryStore
from kim_appliance.konnektor import Context, Konnektor
from kim_appliance.mail.unseal import OpenReport, open_message
from kim_appliance.pki import CertProfile, TestPki
from kim_appliance.pki.tls import server_context
from kim_appliance.store import open_store

# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cm_template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir after one full start and stop, with quick password hashes (as the
    Fachdienst tests make it) and the Clientmodul's TLS server certificate."""
    data_dir = tmp_path_factory.mktemp("cm-template") / "kim-data"

    async def once() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_appliance(
                    data_dir, ephemeral_ports=True, task_status=task_status
                )
            )
            nursery.cancel_scope.cancel()

    trio.run(once)
    assert not (data_dir / ENDPOINTS_FILE).exists()
    demo = json.loads((data_dir / "demo.json").read_text())
    for d in (data_dir / "fachdienst").iterdir():
        store = open_store(d)
        try:
            for p in demo["participants"]:
                if store.get_account(p["address"]) is not None:
                    store.update_account(p["address"], password_hash=_quick_hash(p["password"]))
        finally:
            store.close()
    pki = TestPki.load(data_dir / "pki")
    _tls_files(pki, data_dir / "tls", "clientmodul", CertProfile.C_FD_TLS_S)
    return data_dir


@dataclass
class Cm:
    """A running appliance plus a Clientmodul SMTP listener on top of it."""

    app: Running
    ctx: ClientmodulContext
    port: int

    def participant(self, local: str) -> dict[str, Any]:
        return self.app.participant(local)

    def address(self, local: str) -> str:
        return str(self.participant(local)["address"])

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.app.endpoints["tls_ca"])

    def connect(self) -> smtplib.SMTP_SSL:
        return smtplib.SMTP_SSL("127.0.0.1", self.port, context=self.ssl_context(), timeout=60)

    def login(self, local: str, *, username: str | None = None) -> smtplib.SMTP_SSL:
        p = self.participant(local)
        smtp = self.connect()
        smtp.ehlo("pvs.test")
        smtp.login(username or p["smtp_username"], p["password"])
        return smtp

    def send(
        self, local: str, to: list[str], data: bytes, *, username: str | None = None
    ) -> dict[str, tuple[int, bytes]]:
        with self.login(local, username=username) as smtp:
            return smtp.sendmail(self.address(local), to, data)

    def keys(self, local: str) -> list[SoftwareKey]:
        export = self.participant(local)["export"]
        return [
            SoftwareKey.from_files(Path(k), Path(c))
            for k, c in zip(export["enc_key"], export["enc_cert"], strict=True)
        ]

    def fetch(self, local: str) -> list[bytes]:
        p = self.participant(local)
        return pop3_fetch_all(self.app, p["fachdienst"], local)


StartCm = Callable[..., Awaitable[Cm]]


def _resolver(app: Running) -> Callable[[str | None, int | None, str, str], tuple[str, int]]:
    def resolve(host: str | None, port: int | None, protocol: str, account: str) -> tuple[str, int]:
        # the demo usernames name fdN...:465/995, which the test appliance does not listen on:
        # the domain picks the Fachdienst, its ephemeral port is where it really is
        domain = host if host in app.endpoints["fachdienste"] else account.rpartition("@")[2]
        return app.address(domain, protocol)

    return resolve


@pytest.fixture
async def start_cm(tmp_path: Path, cm_template_dir: Path) -> AsyncIterator[StartCm]:
    async with trio.open_nursery() as nursery:

        async def start(fachdienst: dict[str, Any] | None = None, **overrides: Any) -> Cm:
            data_dir = tmp_path / "kim-data"
            shutil.copytree(cm_template_dir, data_dir)
            if fachdienst:
                _write_config(data_dir, fachdienst)
            endpoints = await nursery.start(
                lambda task_status: run_appliance(
                    data_dir, ephemeral_ports=True, task_status=task_status
                )
            )
            demo = json.loads((data_dir / "demo.json").read_text())
            app = Running(data_dir, endpoints, demo)
            konnektor = await trio.to_thread.run_sync(
                partial(Konnektor.from_data_dir, data_dir, persist_revocations=False)
            )
            tls_ca = Path(endpoints["tls_ca"])
            spool = tmp_path / "spool"
            spool.mkdir()
            settings: dict[str, Any] = {
                "konnektor": konnektor,
                "directory": DirectoryStore.open(data_dir),
                "resolve_upstream": _resolver(app),
                "upstream_ssl": ssl.create_default_context(cafile=tls_ca),
                "server_ssl": server_context(
                    data_dir / "tls" / "clientmodul.server.chain.pem",
                    data_dir / "tls" / "clientmodul.server.key.pem",
                ),
                "trust": konnektor.trust,
                "spool_dir": spool,
            }
            settings.update(overrides)
            ctx = ClientmodulContext(**settings)
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(
                partial(
                    trio.serve_listeners,
                    partial(serve_cm_smtp_connection, ctx),
                    [
                        trio.SSLListener(s, ctx.server_ssl, https_compatible=False)
                        for s in listeners
                    ],
                )
            )
            return Cm(app, ctx, port)

        yield start
        nursery.cancel_scope.cancel()


@pytest.fixture
async def cm(start_cm: StartCm) -> Cm:
    return await start_cm()


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


def open_kim(outer: bytes, cm: Cm, local: str) -> tuple[OpenReport, bytes]:
    inner = io.BytesIO()
    report = open_message(io.BytesIO(outer), inner, keys=cm.keys(local), trust=cm.ctx.trust)
    return report, inner.getvalue()


async def wait_for(cm: Cm, local: str, count: int = 1, timeout: float = 20.0) -> list[bytes]:
    got: list[bytes] = []
    with trio.fail_after(timeout):
        while len(got) < count:
            got += await trio.to_thread.run_sync(cm.fetch, local)
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


@pytest.mark.parametrize(("sender", "recipient"), PAIRS)
async def test_mail_arrives_as_kim_message_the_recipient_opens(
    cm: Cm, sender: str, recipient: str
) -> None:
    """KOM-LE-A_2022, A_2111-01, KOM-LE-A_2020/2129: the PVS sends a plain mail; the Fachdienst
    holds a signed and encrypted KIM message that the recipient's keys decrypt and verify."""
    to = cm.address(recipient)
    data = client_mail(cm.address(sender), [to])
    refused = await trio.to_thread.run_sync(cm.send, sender, [to], data)
    assert refused == {}
    (outer,) = await wait_for(cm, recipient)
    outer_header = header_of(outer)
    assert outer_header["Subject"] == "KOM-LE-Nachricht"
    assert outer_header["X-KOM-LE-Version"] == "1.0"
    assert outer_header["X-KIM-CMVersion"] == cm.ctx.cm_version
    assert outer_header["X-KIM-PTVersion"] == cm.ctx.pt_version
    assert outer_header["X-KIM-KONVersion"] == cm.ctx.kon_version
    assert outer_header["Expires"] is not None
    assert outer_header["X-KIM-Dienstkennung"] == "KIM-Mail;Default;V1.0"
    report, inner = open_kim(outer, cm, recipient)
    assert report.verified, report.lines()
    assert b"anbei der Befund." in inner
    assert header_of(inner)["X-KIM-Dienstkennung"] == "KIM-Mail;Default;V1.0"


# --- tests: the CONNECT state, digest §1.3 row by row -------------------------------------------


def _dialogue(cm: Cm, commands: list[str]) -> list[tuple[int, str]]:
    """Send each raw command, collect (code, text) of each reply."""
    out: list[tuple[int, str]] = []
    with cm.connect() as smtp:
        for command in commands:
            code, text = smtp.docmd(command)
            out.append((code, text.decode()))
    return out


async def test_greeting_says_esmtp(cm: Cm) -> None:
    """digest §1.3 (Tab_SMTP_Ant_Init): the greeting contains "ESMTP"."""

    def greet() -> tuple[int, bytes]:
        smtp = smtplib.SMTP_SSL(context=cm.ssl_context(), timeout=30)
        smtp._host = "127.0.0.1"  # type: ignore[attr-defined]  # the TLS server name
        try:
            return smtp.connect("127.0.0.1", cm.port)
        finally:
            smtp.close()

    code, text = await trio.to_thread.run_sync(greet)
    assert code == 220
    assert b"ESMTP" in text


async def test_ehlo_announces_the_extensions_of_the_spec(cm: Cm) -> None:
    """digest §1.3: EHLO -> 250 with SIZE n (n >= 35882577), AUTH LOGIN PLAIN, 8BITMIME,
    ENHANCEDSTATUSCODES, DSN (KOM-LE-A_2009: only PLAIN and LOGIN)."""

    def ehlo() -> tuple[int, dict[str, str]]:
        with cm.connect() as smtp:
            code, _ = smtp.ehlo("pvs.test")
            return code, dict(smtp.esmtp_features)

    code, features = await trio.to_thread.run_sync(ehlo)
    assert code == 250
    assert int(features["size"]) >= 35882577
    assert features["auth"].split() == ["LOGIN", "PLAIN"]
    for keyword in ("8bitmime", "enhancedstatuscodes", "dsn"):
        assert keyword in features


async def test_connect_state_replies(cm: Cm) -> None:
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


async def test_other_sasl_mechanism_is_refused_504(cm: Cm) -> None:
    """digest §1.3: another SASL mechanism -> 504 5.7.4 (KOM-LE-A_2009)."""
    replies = await trio.to_thread.run_sync(_dialogue, cm, ["EHLO pvs.test", "AUTH CRAM-MD5"])
    assert replies[1][0] == 504
    assert replies[1][1].startswith("5.7.4")


async def test_malformed_username_is_refused_501_and_closed(cm: Cm) -> None:
    """digest §1.3: username incomplete or malformed -> 501 5.5.4, then the connection is
    closed (KOM-LE-A_2010)."""
    p = cm.participant("praxis.weber")

    def attempt() -> tuple[int, str, bool]:
        smtp = cm.connect()
        smtp.ehlo("pvs.test")
        raw = f"\0{p['address']}#only-two-fields\0{p['password']}".encode()
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


async def test_unknown_mandant_is_refused_501(cm: Cm) -> None:
    """digest §1.3: a Konnektor fault 4004 on the call context -> 501."""
    p = cm.participant("praxis.weber")
    username = p["smtp_username"].replace("#Mandant1#", "#NoSuchMandant#")
    with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        await trio.to_thread.run_sync(partial(cm.login, "praxis.weber", username=username))
    assert caught.value.smtp_code == 501
    assert b"4004" in caught.value.smtp_error


async def test_wrong_password_is_refused_535(cm: Cm) -> None:
    """digest §1.3: the MTA refuses the credentials -> 535 5.7.8 (KOM-LE-A_2012: the password
    goes to the Fachdienst unchanged)."""
    p = cm.participant("praxis.weber")

    def attempt() -> None:
        with cm.connect() as smtp:
            smtp.ehlo("pvs.test")
            smtp.login(p["smtp_username"], "wrong-" + p["password"])

    with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        await trio.to_thread.run_sync(attempt)
    assert caught.value.smtp_code == 535
    assert caught.value.smtp_error.startswith(b"5.7.8")


async def test_unreachable_mta_is_454(start_cm: StartCm) -> None:
    """digest §1.3: MTA unreachable -> 454 4.7.0."""
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    cm = await start_cm(resolve_upstream=lambda host, p, proto, account: ("127.0.0.1", port))
    with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        await trio.to_thread.run_sync(cm.login, "praxis.weber")
    assert caught.value.smtp_code == 454
    assert caught.value.smtp_error.startswith(b"4.7.0")


async def test_auth_login_and_plain_both_work(cm: Cm) -> None:
    """KOM-LE-A_2009: AUTH PLAIN and AUTH LOGIN -> 235 2.7.0."""
    p = cm.participant("apotheke.sonne")

    def both() -> list[tuple[int, bytes]]:
        out = []
        for mechanism in ("PLAIN", "LOGIN"):
            with cm.connect() as smtp:
                smtp.ehlo("pvs.test")
                smtp.user, smtp.password = p["smtp_username"], p["password"]
                method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
                out.append(smtp.auth(mechanism, method, initial_response_ok=False))
        return out

    for code, text in await trio.to_thread.run_sync(both):
        assert code == 235
        assert text.startswith(b"2.7.0")


# --- tests: the pipeline's refusals and reports (digest §1.4) ---------------------------------

UNKNOWN = "niemand@fd1.kim.telematik-test"


def _reports(mails: list[bytes]) -> list[email.message.Message]:
    return [m for m in map(header_of, mails) if m.get_content_type() == "multipart/report"]


async def test_unknown_recipient_is_dropped_and_reported(cm: Cm) -> None:
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


async def test_no_valid_recipient_is_451_with_report(cm: Cm) -> None:
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


async def test_sender_without_certificate_is_553(cm: Cm) -> None:
    """digest §1.4 step 6 (FAQ): no encryption certificate of the sender -> 553, nothing sent."""
    from dataclasses import replace

    from kim_appliance.clientmodul.vzd_lookup import lookup_for

    directory = cm.ctx.directory
    entry = directory.find_by_mail(cm.address("praxis.weber"))
    assert entry is not None
    directory.put_entry(replace(entry, certificates=()))
    lookup_for(directory, cm.ctx.trust).invalidate()
    to = cm.address("apotheke.sonne")
    with pytest.raises(smtplib.SMTPDataError) as caught:
        await trio.to_thread.run_sync(
            cm.send, "praxis.weber", [to], client_mail(cm.address("praxis.weber"), [to])
        )
    assert caught.value.smtp_code == 553
    assert b"praxis.weber" in caught.value.smtp_error
    assert await trio.to_thread.run_sync(cm.fetch, "apotheke.sonne") == []


async def test_card_removed_is_451(cm: Cm) -> None:
    """KOM-LE-A_2021: signing fails (the SMC-B was pulled, 4008) -> RSET upstream, 451."""
    cm.ctx.konnektor.admin.remove_card(cm.participant("praxis.weber")["card"]["iccsn"])
    to = cm.address("apotheke.sonne")
    with pytest.raises(smtplib.SMTPDataError) as caught:
        await trio.to_thread.run_sync(
            cm.send, "praxis.weber", [to], client_mail(cm.address("praxis.weber"), [to])
        )
    assert caught.value.smtp_code == 451
    assert b"KOM-LE-A_2021" in caught.value.smtp_error


async def test_card_reinserted_gets_used_again(cm: Cm) -> None:
    """A card pulled, inserted again and unlocked has a new handle; the Clientmodul finds it
    (the cached handle is dropped on 4008) and the next mail goes out."""
    iccsn = cm.participant("praxis.weber")["card"]["iccsn"]
    sender, to = cm.address("praxis.weber"), cm.address("apotheke.sonne")
    await trio.to_thread.run_sync(cm.send, "praxis.weber", [to], client_mail(sender, [to]))
    cm.ctx.konnektor.admin.remove_card(iccsn)
    handle = cm.ctx.konnektor.admin.insert_card(iccsn)
    # a card put back in must be unlocked again (the Konnektor says 4085 until then)
    context = Context("Mandant1", "PVS1", "AP1")
    cm.ctx.konnektor.verify_pin(context, handle, "PIN.SMC")
    await trio.to_thread.run_sync(cm.send, "praxis.weber", [to], client_mail(sender, [to]))
    assert len(await wait_for(cm, "apotheke.sonne", count=2)) == 2


async def test_konnektor_unreachable_is_451(cm: Cm) -> None:
    """KOM-LE-A_2021: the Konnektor does not answer when signing -> 451."""
    sender, to = cm.address("praxis.weber"), cm.address("apotheke.sonne")

    def send_while_down() -> None:
        with cm.login("praxis.weber") as smtp:
            cm.ctx.konnektor.admin.set_unreachable(True)
            smtp.sendmail(sender, [to], client_mail(sender, [to]))

    with pytest.raises(smtplib.SMTPDataError) as caught:
        await trio.to_thread.run_sync(send_while_down)
    assert caught.value.smtp_code == 451
    assert b"not reachable" in caught.value.smtp_error


async def test_mta_refusal_is_relayed(start_cm: StartCm) -> None:
    """digest §1.4 step 11: MAIL FROM goes up with SIZE= of the S/MIME message; the MTA's
    refusal (here 552 5.3.4, maxMailSize) reaches the PVS unchanged."""
    cm = await start_cm({"max_message_size": 6000})
    sender, to = cm.address("praxis.weber"), cm.address("apotheke.sonne")
    data = client_mail(sender, [to], body="x" * 1000 + "\n")  # ~2 KB, the KIM message > 6 KB
    with pytest.raises(smtplib.SMTPDataError) as caught:
        await trio.to_thread.run_sync(cm.send, "praxis.weber", [to], data)
    assert caught.value.smtp_code == 552
    assert caught.value.smtp_error.startswith(b"5.3.4")


async def test_from_is_rewritten_to_the_account(cm: Cm) -> None:
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


async def test_five_megabyte_attachment(cm: Cm) -> None:
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


async def test_forwarded_kim_message_is_sent_as_it_is(cm: Cm) -> None:
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


@pytest.mark.parametrize(("prefer_ecc", "expected"), [(True, "ecdsa"), (False, "pss")])
async def test_signing_key_follows_the_ecc_preference(
    start_cm: StartCm, prefer_ecc: bool, expected: str
) -> None:
    """digest §1.4 step 8: an SMC-B with RSA and ECC OSIG keys signs with ECC when ECC is
    preferred (release 1.5.4), with RSA (KOM-LE-A_2020) otherwise; the HBA holder's mail is
    signed by her practice's SMC-B (KOM-LE-A_2129)."""
    cm = await start_cm(prefer_ecc=prefer_ecc)
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
