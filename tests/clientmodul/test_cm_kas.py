"""Large mails through the KAS, getLimits and version bookkeeping, through the appliance's own
Clientmodul with smtplib/poplib as the PVS (digest §1.4 steps 2, 7, 12; §1.5 step 5; §3.4-3.5).

Most tests let the AccountLimit service announce a small ``kasMailSizeThreshold`` (the field of
AccountLimit 1.1.2's docs example, digest §3.4) so that a 100 KB mail takes the KAS path; one
test sends a real 30 MB mail above the default 15 MiB threshold.
"""

from __future__ import annotations

import contextlib
import email.policy
import email.utils
import io
import json
import os
import poplib
import smtplib
import sqlite3
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import pytest
import trio
from cm_support import StartKim

from kim_appliance.clientmodul import large_mail
from kim_appliance.clientmodul.kas_client import delete_mail_data
from kim_appliance.cms.keys import SoftwareKey
from kim_appliance.directory import DirectoryStore
from kim_appliance.directory.entries import KimAddress
from kim_appliance.fachdienst import account_limit, kas
from kim_appliance.mail.unseal import open_message
from kim_appliance.pki import TestPki
from kim_appliance.pki.tls import client_context
from kim_appliance.store import open_store
from kim_appliance.testing import KimAppliance

#: runs in both modes: in-process, and SOAP/LDAPS to the appliance's own listeners
both_modes = pytest.mark.usefixtures("cm_mode")

WEBER, SONNE, KLEIN = "praxis.weber", "apotheke.sonne", "zahnarzt.klein"
SMALL_THRESHOLD = 64 * 1024


# --- helpers ------------------------------------------------------------------------------------


def client_mail(
    sender: str, to: list[str], *, attachment: bytes | None = None, extra_part: bool = False
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = "Befund"
    msg["Message-ID"] = email.utils.make_msgid(domain="pvs.test")
    msg.set_content("Sehr geehrte Kollegin,\nanbei der Befund.\n")
    if attachment is not None:
        msg.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename="befund.bin"
        )
    if extra_part:
        msg.add_attachment(
            b'{"link":"https://kas.example/x"}',
            maintype="text",
            subtype="plain",
            disposition="x-kas",
        )
    return msg.as_bytes(policy=email.policy.SMTP)


def send(app: KimAppliance, sender: str, to: list[str], data: bytes) -> dict[str, Any]:
    p = app.participant(sender)
    with app.smtp(p) as smtp:
        return dict(smtp.sendmail(p.address, [app.participant(t).address for t in to], data))


def fetch_cm(app: KimAppliance, local: str) -> list[bytes]:
    """Every message of the mailbox through the Clientmodul (RETR), deleted afterwards."""
    pop = app.pop3(app.participant(local))
    try:
        count, _ = pop.stat()
        out = []
        for n in range(1, count + 1):
            _, lines, _ = pop.retr(n)
            out.append(b"\r\n".join(lines) + b"\r\n")
            pop.dele(n)
        return out
    finally:
        pop.quit()


def fetch_outer(app: KimAppliance, local: str) -> list[bytes]:
    """The stored KIM messages straight from the Fachdienst (not deleted)."""
    p = app.participant(local)
    host, port = app.fachdienste[p.fachdienst].pop3
    pop = poplib.POP3_SSL(host, port, context=app.ssl_context(), timeout=60)
    try:
        pop.user(p.address)
        pop.pass_(p.password)
        count, _ = pop.stat()
        return [b"\r\n".join(pop.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
    finally:
        pop.quit()


async def wait_cm(
    app: KimAppliance, local: str, count: int = 1, timeout: float = 60
) -> list[bytes]:
    got: list[bytes] = []
    with trio.fail_after(timeout):
        while len(got) < count:
            got += await trio.to_thread.run_sync(fetch_cm, app, local)
            if len(got) < count:
                await trio.sleep(0.1)
    return got


def parsed(mail: bytes) -> Message:
    return email.message_from_bytes(mail, policy=email.policy.default)


async def set_version(data_dir: Path, address: str, version: str) -> None:
    async with open_store(None, data_dir) as store:
        directory = await DirectoryStore.open(store.directory)
        entry = directory.find_by_mail(address)
        assert entry is not None
        await directory.set_address(
            entry.telematik_id, address.rpartition("@")[2], KimAddress(address, version)
        )


async def set_quota(data_dir: Path, address: str, quota: int) -> None:
    async with open_store(None, data_dir) as store:
        await store.accounts.update(address, quota_bytes=quota)


def demo_address(data_dir: Path, local: str) -> str:
    demo = json.loads((data_dir / "demo.json").read_text())
    return str(next(p["address"] for p in demo["participants"] if p["address"].startswith(local)))


@pytest.fixture
def limit_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The AccountLimit service announces ``kasMailSizeThreshold`` (and, if set, another
    maxMailSize); ``calls`` counts the answers it gave (server side)."""
    state: dict[str, Any] = {"calls": 0, "threshold": SMALL_THRESHOLD, "max": None}
    original = account_limit.AccountLimit.to_json

    def to_json(self: account_limit.AccountLimit) -> dict[str, int]:
        state["calls"] += 1
        body = original(self)
        body["kasMailSizeThreshold"] = state["threshold"]
        if state["max"] is not None:
            body["maxMailSize"] = state["max"]
        return body

    monkeypatch.setattr(account_limit.AccountLimit, "to_json", to_json)
    return state


def kas_settings(monkeypatch: pytest.MonkeyPatch, **changes: int) -> None:
    """The KAS of the next appliance started uses these KasSettings (e.g. max_downloads)."""
    original = kas.KasSettings
    monkeypatch.setattr(kas, "KasSettings", lambda: original(**changes))  # type: ignore[misc]


def kas_uploads(data_dir: Path, address: str) -> list[str]:
    """The KAS attachments ``address`` has stored, read from the running appliance's embedded
    store (read-only: the store admits one writer process)."""
    db = data_dir / "store" / "kim.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        rows = conn.execute(
            "SELECT id FROM kas_attachments WHERE uploader = ?", (address.lower(),)
        ).fetchall()
    return [str(row[0]) for row in rows]


def kim_link(app: KimAppliance, recipient: str) -> str:
    """The x-kas link of the one KIM message at the Fachdienst, read with the exported keys."""
    (outer,) = fetch_outer(app, recipient)
    p = app.participant(recipient)
    keys = [SoftwareKey.from_files(k, c) for k, c in zip(p.enc_keys, p.enc_certs, strict=True)]
    inner = io.BytesIO()
    trust = TestPki.load(app.data_dir / "pki").trust_store()
    report = open_message(io.BytesIO(outer), inner, keys=keys, trust=trust)
    assert report.decrypted, report.lines()
    inner.seek(0)
    reference = large_mail.kas_reference(inner)
    assert reference is not None
    return reference.link


# --- send side ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_30_mb_mail_goes_through_the_kas_and_arrives_byte_exact(start_kim: StartKim) -> None:
    """A_19356-06, A_22341, A_23467, KOM-LE-A_2100-02, A_23512: a 30 MB client mail (above
    15 MiB) goes AES-256-GCM-encrypted to the sender's KAS; the KIM message at the other
    Fachdienst is small, says X-KOM-LE-Version 1.5 and X-KIM-KAS-Size; the recipient's
    Clientmodul fetches, decrypts, checks the hash and delivers the attachment byte for byte."""
    app = await start_kim()
    payload = os.urandom(30 * 1024 * 1024)
    weber, sonne = app.participant(WEBER), app.participant(SONNE)
    data = client_mail(weber.address, [sonne.address], attachment=payload)
    assert await trio.to_thread.run_sync(send, app, WEBER, [SONNE], data) == {}
    with trio.fail_after(60):
        while not (outer := await trio.to_thread.run_sync(fetch_outer, app, SONNE)):
            await trio.sleep(0.1)
    header = parsed(outer[0])
    assert header["X-KOM-LE-Version"] == "1.5"
    assert int(header["X-KIM-KAS-Size"]) >= len(data) > 30 * 1024 * 1024
    assert len(outer[0]) < 64 * 1024  # the KIM message carries the reference, not the mail
    (mail,) = await wait_cm(app, SONNE)
    message = parsed(mail)
    assert message["X-KIM-DecryptionResult"] == "00"
    assert message["X-KIM-IntegrityCheckResult"] == "01"
    assert message["Return-Path"] is not None
    assert isinstance(message, EmailMessage)
    (attachment,) = [a for a in message.iter_attachments() if a.get_filename() == "befund.bin"]
    assert attachment.get_content() == payload


@both_modes
async def test_recipient_without_large_mail_consent_is_dropped_with_4001(
    start_kim: StartKim, limit_calls: dict[str, Any]
) -> None:
    """A_19356-06/07, KOM-LE-A_2024-01: above the threshold a recipient whose VZD version is
    not 1.5+ is dropped (4001) and reported to the sender in the one report; the others get
    the mail."""
    app = await start_kim(
        prepare=lambda d: set_version(d, demo_address(d, KLEIN), "1.5"),
    )
    weber, sonne, klein = (app.participant(x) for x in (WEBER, SONNE, KLEIN))
    data = client_mail(
        weber.address, [sonne.address, klein.address], attachment=os.urandom(100_000)
    )
    assert await trio.to_thread.run_sync(send, app, WEBER, [SONNE, KLEIN], data) == {}
    (mail,) = await wait_cm(app, SONNE)
    assert parsed(mail)["X-KIM-DecryptionResult"] == "00"
    assert klein.address not in parsed(mail)["To"]
    (report,) = await wait_cm(app, WEBER)
    assert parsed(report)["X-KIM-Fehlermeldung"] == "4001"
    assert klein.address in report.decode()
    assert await trio.to_thread.run_sync(fetch_outer, app, KLEIN) == []


async def test_client_mail_with_an_x_kas_part_is_451(start_kim: StartKim) -> None:
    """A_22341: a client mail that already holds a Content-Disposition: x-kas part -> 451."""
    app = await start_kim()
    weber, sonne = app.participant(WEBER), app.participant(SONNE)
    data = client_mail(weber.address, [sonne.address], extra_part=True)
    with pytest.raises(smtplib.SMTPDataError) as caught:
        await trio.to_thread.run_sync(send, app, WEBER, [SONNE], data)
    assert caught.value.smtp_code == 451
    assert b"x-kas" in caught.value.smtp_error


async def test_kas_quota_exhausted_is_521(start_kim: StartKim, limit_calls: dict[str, Any]) -> None:
    """A_22419: the sender's KAS answers 507 (quota) -> 521 to the PVS, nothing sent."""
    app = await start_kim(prepare=lambda d: set_quota(d, demo_address(d, WEBER), 80_000))
    weber, sonne = app.participant(WEBER), app.participant(SONNE)
    data = client_mail(weber.address, [sonne.address], attachment=os.urandom(100_000))
    with pytest.raises(smtplib.SMTPDataError) as caught:
        await trio.to_thread.run_sync(send, app, WEBER, [SONNE], data)
    assert caught.value.smtp_code == 521
    assert await trio.to_thread.run_sync(fetch_outer, app, SONNE) == []


async def test_kas_upload_failure_is_reported_with_4002_and_nothing_sent(
    start_kim: StartKim, limit_calls: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A_19363-02: an upload error other than 507 (here 413 from a KAS with a 10 KB limit):
    the KIM message is not sent, the sender gets a report with 4002 (A_20650-03: in the
    X-KIM-Fehlermeldung header)."""
    kas_settings(monkeypatch, max_size=10_000)
    app = await start_kim()
    weber, sonne = app.participant(WEBER), app.participant(SONNE)
    data = client_mail(weber.address, [sonne.address], attachment=os.urandom(100_000))
    with pytest.raises(smtplib.SMTPDataError) as caught:
        await trio.to_thread.run_sync(send, app, WEBER, [SONNE], data)
    assert caught.value.smtp_code == 451
    assert b"4002" in caught.value.smtp_error
    (report,) = await wait_cm(app, WEBER)
    assert parsed(report)["X-KIM-Fehlermeldung"] == "4002"
    assert await trio.to_thread.run_sync(fetch_outer, app, SONNE) == []


async def test_blob_is_deleted_when_the_mail_is_not_sent_after_the_upload(
    start_kim: StartKim, limit_calls: dict[str, Any]
) -> None:
    """digest §1.4 step 7: the MTA refuses the only recipient (mailbox full) after the upload:
    the Clientmodul deletes the blob with deleteMailData."""
    app = await start_kim(prepare=lambda d: set_quota(d, demo_address(d, KLEIN), 100))
    weber, klein = app.participant(WEBER), app.participant(KLEIN)
    data = client_mail(weber.address, [klein.address], attachment=os.urandom(100_000))
    with pytest.raises(smtplib.SMTPDataError):
        await trio.to_thread.run_sync(send, app, WEBER, [KLEIN], data)
    assert kas_uploads(app.data_dir, weber.address) == []


# --- receive side -------------------------------------------------------------------------------


async def _large_mail_to_klein(app: KimAppliance) -> bytes:
    weber, klein = app.participant(WEBER), app.participant(KLEIN)
    data = client_mail(weber.address, [klein.address], attachment=os.urandom(100_000))
    assert await trio.to_thread.run_sync(send, app, WEBER, [KLEIN], data) == {}
    return data


async def test_kas_429_gives_the_download_error_mail_4013(
    start_kim: StartKim, limit_calls: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A_19370, digest §1.6: the KAS refuses the download with 429 -> error mail with 4013 and
    the (still encrypted) KIM message attached. A_22412: the 429 case is reported in
    X-KIM-Fehlermeldung (A_20650-03), with 4013 where A_22412 writes 4017 (taken as a typo,
    docs/decisions.md)."""
    kas_settings(monkeypatch, max_downloads=0)
    app = await start_kim()
    await _large_mail_to_klein(app)
    (mail,) = await wait_cm(app, KLEIN)
    message = parsed(mail)
    assert message["Subject"].startswith("Mindestens ein Anhang")
    assert message["X-KIM-Fehlermeldung"] == "4013"
    assert b"KOM-LE-Nachricht" in mail


@both_modes
async def test_missing_blob_gives_the_download_error_mail_4006(
    start_kim: StartKim, limit_calls: dict[str, Any]
) -> None:
    """A_19370: the blob is gone (deleted by its uploader) -> 404 -> error mail with 4006."""
    app = await start_kim()
    await _large_mail_to_klein(app)
    with trio.fail_after(30):
        while not await trio.to_thread.run_sync(fetch_outer, app, KLEIN):
            await trio.sleep(0.1)
    link = await trio.to_thread.run_sync(kim_link, app, KLEIN)
    weber = app.participant(WEBER)
    await delete_mail_data(
        client_context(app.tls_ca), link, account=weber.address, password=weber.password
    )
    (mail,) = await wait_cm(app, KLEIN)
    assert parsed(mail)["X-KIM-Fehlermeldung"] == "4006"


async def test_hash_mismatch_gives_the_error_mail_4012(
    start_kim: StartKim, limit_calls: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """digest §1.5 step 5, §1.6: the downloaded client mail does not have the hash the KIM
    message names (a sending Clientmodul that got it wrong) -> error mail with 4012
    (A_19372-02: the hash of the decrypted data is compared with the one named)."""
    original = large_mail.encrypt_for_kas

    def wrong_hash(client: Any, spool_dir: str | None) -> large_mail.KasBlob:
        blob = original(client, spool_dir)
        blob.hash = "A" * 43 + "="
        return blob

    monkeypatch.setattr(large_mail, "encrypt_for_kas", wrong_hash)
    app = await start_kim()
    await _large_mail_to_klein(app)
    (mail,) = await wait_cm(app, KLEIN)
    assert parsed(mail)["X-KIM-Fehlermeldung"] == "4012"


def _submit_kas_message(app: KimAppliance, sender: str, recipient: str) -> None:
    """A KIM message with an x-kas body, sealed with the sender's exported keys and submitted
    straight to the Fachdienst (a sending Clientmodul that did its part)."""
    from kim_appliance.mail.seal import Certified, seal

    s, r = app.participant(sender), app.participant(recipient)
    inner = (
        f"From: {s.address}\r\nTo: {r.address}\r\nSubject: gross\r\n"
        f"Message-ID: <kas-{os.urandom(4).hex()}@pvs.test>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Disposition: x-kas\r\n\r\n"
        '{"link":"https://127.0.0.1:1/attachments/v2.4/attachment/x","k":"'
        + "A" * 43
        + '=","hash":"'
        + "A" * 43
        + '=","size":1}\r\n'
    ).encode()
    load = SoftwareKey.from_files
    outer = io.BytesIO()
    seal(
        io.BytesIO(inner),
        outer,
        signer=load(s.osig_keys[0], s.osig_certs[0]),
        sender=[
            Certified(s.address, load(k, c).certificate)
            for k, c in zip(s.enc_keys, s.enc_certs, strict=True)
        ],
        recipients=[
            Certified(r.address, load(k, c).certificate)
            for k, c in zip(r.enc_keys, r.enc_certs, strict=True)
        ],
        extra_headers=(("X-KOM-LE-Version", "1.5"),),
    )
    host, port = app.fachdienste[s.fachdienst].smtp
    with smtplib.SMTP_SSL(host, port, context=app.ssl_context(), timeout=60) as smtp:
        smtp.login(s.address, s.password)
        smtp.sendmail(s.address, [r.address], outer.getvalue())


@both_modes
async def test_recipient_without_consent_gets_the_account_settings_error_mail(
    start_kim: StartKim,
) -> None:
    """A_23512: a KAS message reaches an account whose own VZD version is not 1.5+ -> the
    account-settings error mail with the encrypted original, and no download."""
    app = await start_kim(prepare=lambda d: set_version(d, demo_address(d, KLEIN), "1.5"))
    await trio.to_thread.run_sync(_submit_kas_message, app, WEBER, KLEIN)
    (mail,) = await wait_cm(app, KLEIN)
    message = parsed(mail)
    assert message["Subject"].startswith("Die Nachricht entspricht nicht")
    assert b"KOM-LE-Nachricht" in mail  # the encrypted original is attached


# --- getLimits ------------------------------------------------------------------------------------


async def test_max_mail_size_from_get_limits_is_552_5_3_4(
    start_kim: StartKim, limit_calls: dict[str, Any]
) -> None:
    """A_19355-01, A_22416: a client mail above the account's maxMailSize -> 552 5.3.4."""
    limit_calls["max"] = 2000
    app = await start_kim()
    weber, sonne = app.participant(WEBER), app.participant(SONNE)
    data = client_mail(weber.address, [sonne.address], attachment=os.urandom(3000))
    with pytest.raises(smtplib.SMTPDataError) as caught:
        await trio.to_thread.run_sync(send, app, WEBER, [SONNE], data)
    assert caught.value.smtp_code == 552
    assert caught.value.smtp_error.startswith(b"5.3.4")


async def test_get_limits_is_asked_once_per_account_within_24_hours(
    start_kim: StartKim, limit_calls: dict[str, Any]
) -> None:
    """A_22416: the getLimits answer is cached (24 h) per account: three mails in two sessions
    of one account cost one AccountLimit request, another account one more."""
    app = await start_kim()
    weber, sonne, klein = (app.participant(x) for x in (WEBER, SONNE, KLEIN))
    for _ in range(2):
        await trio.to_thread.run_sync(
            send, app, WEBER, [SONNE], client_mail(weber.address, [sonne.address])
        )
    await trio.to_thread.run_sync(
        send, app, WEBER, [KLEIN], client_mail(weber.address, [klein.address])
    )
    assert limit_calls["calls"] == 1
    await trio.to_thread.run_sync(
        send, app, KLEIN, [WEBER], client_mail(klein.address, [weber.address])
    )
    assert limit_calls["calls"] == 2


# --- versions (step 12) -------------------------------------------------------------------------


@both_modes
async def test_vzd_version_above_the_clientmodul_gives_one_4017_notice_a_day(
    start_kim: StartKim,
) -> None:
    """A_21387-01, digest §1.4 step 12: the sender's VZD entry shows a higher KIM version than
    the Clientmodul's -> one unsigned notice with X-KIM-Fehlermeldung 4017 to the sender, not
    one per mail."""
    app = await start_kim(prepare=lambda d: set_version(d, demo_address(d, WEBER), "1.6+"))
    weber, sonne = app.participant(WEBER), app.participant(SONNE)
    for _ in range(2):
        await trio.to_thread.run_sync(
            send, app, WEBER, [SONNE], client_mail(weber.address, [sonne.address])
        )
    assert len(await wait_cm(app, SONNE, count=2)) == 2
    notices = await wait_cm(app, WEBER)
    await trio.sleep(0.5)
    notices += await trio.to_thread.run_sync(fetch_cm, app, WEBER)
    assert [parsed(n)["X-KIM-Fehlermeldung"] for n in notices] == ["4017"]
    assert parsed(notices[0])["X-KOM-LE-Version"] is None


@both_modes
async def test_clientmodul_version_above_the_vzd_updates_kim_version(start_kim: StartKim) -> None:
    """digest §1.4 step 12, §1.10: the Clientmodul's version is higher than the sender's VZD
    entry (1.0) -> setAccount kimVersion 1.5 through the Account Manager (JWT signed on the
    SMC-B's AUT key); the VZD (read over LDAP) then shows 1.5."""
    import ldap3

    app = await start_kim(prepare=lambda d: set_version(d, demo_address(d, WEBER), "1.0"))
    weber, sonne = app.participant(WEBER), app.participant(SONNE)
    await trio.to_thread.run_sync(
        send, app, WEBER, [SONNE], client_mail(weber.address, [sonne.address])
    )

    def vzd_versions() -> list[str]:
        host, port = app.ldap
        connection = ldap3.Connection(ldap3.Server(host, port=port), auto_bind=True)
        connection.search(app.base_dn, f"(mail={weber.address})", attributes=["komLeData"])
        values = [str(v) for e in connection.entries for v in e["komLeData"].values]
        connection.unbind()
        return values

    with trio.fail_after(20):
        while f"1.5,{weber.address}" not in (values := await trio.to_thread.run_sync(vzd_versions)):
            await trio.sleep(0.1)
    assert f"1.0,{weber.address}" not in values


# --- the Clientmodul's TLS client certificate -------------------------------------------------


async def test_clientmodul_presents_its_c_cm_tls_cs_to_the_fachdienst(
    start_kim: StartKim, nursery: trio.Nursery
) -> None:
    """digest §1.9, KOM-LE-A_2074: towards the Fachdienst the Clientmodul authenticates with
    its C.CM.TLS-CS certificate (mutual TLS); a server requiring a client certificate sees it
    (KOM-LE-A_2182-01: the C.CM.TLS-CS the provider's PKI issued)."""
    from cryptography import x509

    from kim_appliance.pki import CertProfile, profile_of
    from kim_appliance.pki.tls import server_context

    app = await start_kim()
    weber = app.participant(WEBER)
    tls = app.data_dir / "tls"
    domain = weber.fachdienst
    context = server_context(
        tls / f"{domain}.server.chain.pem",
        tls / f"{domain}.server.key.pem",
        client_ca=app.tls_ca,
        require_client_cert=True,
    )
    seen: list[x509.Certificate] = []

    async def mta(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
        if der:
            seen.append(x509.load_der_x509_certificate(der))
        await stream.send_all(b"220 test MTA ESMTP\r\n")
        await stream.receive_some(1024)
        await stream.send_all(b"250-test\r\n250 AUTH PLAIN\r\n")
        await stream.receive_some(1024)
        await stream.send_all(b"535 5.7.8 test MTA says no\r\n")
        await stream.receive_some(1024)

    listeners = await nursery.start(trio.serve_ssl_over_tcp, mta, 0, context)
    port = listeners[0].transport_listener.socket.getsockname()[1]
    # the username's host:port names the server (digest §1.2)
    username = weber.smtp_username.split("#")
    username[1] = f"127.0.0.1:{port}"

    def login() -> None:
        host, cm_port = app.clientmodul_smtp
        with smtplib.SMTP_SSL(host, cm_port, context=app.ssl_context(), timeout=60) as smtp:
            smtp.login("#".join(username), weber.password)

    with pytest.raises(smtplib.SMTPAuthenticationError):
        await trio.to_thread.run_sync(login)
    assert seen, "the Clientmodul presented no client certificate"
    # smtplib tries AUTH PLAIN and then LOGIN: one upstream connection per attempt
    assert all(profile_of(c) is CertProfile.C_CM_TLS_CS for c in seen)
