"""The Clientmodul renews its C.CM.TLS-CS through createCert before it expires
(clientmodul/cm_certificate.py, A_21381).

A first appliance's Account Manager issues the PKCS#12 the way the Administrationsmodul fetches
it; a second appliance's Clientmodul runs with it (``[clientmodul] tls_pkcs12``) and a renewal
window longer than the certificate's life, so that the certificate is due at once. What the
Clientmodul presents is read by a scripted MTA that asks for a client certificate.
"""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import trio
from cm_support import (
    CERT_PASSWORD,
    COMMON_NAME,
    Kim,
    StartKim,
    closed_port,
    create_cert,
    serve_certificate_recording_mta,
    with_upstream,
)

from kim_appliance.clientmodul.cm_certificate import RENEWAL_FAILED, renewal_failed_notice

#: longer than any certificate of the test PKI lives: the renewal is due at once
ALWAYS_DUE = 365 * 100


def _mail(sender: str, to: str) -> bytes:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: Befund\r\n\r\nanbei\r\n".encode()


async def _appliance_with_pkcs12(start_kim: StartKim, tmp_path: Path, **extra: Any) -> Kim:
    issuer = await start_kim()
    p12 = tmp_path / "clientmodul.p12"
    p12.write_bytes(await trio.to_thread.run_sync(create_cert, issuer, "praxis.weber"))
    settings = {"tls_pkcs12": str(p12), "tls_pkcs12_password": CERT_PASSWORD,
                "tls_renew_days": ALWAYS_DUE, **extra}  # fmt: skip
    return Kim(await start_kim(config={"clientmodul": settings}))


async def test_the_certificate_is_renewed_through_create_cert_before_it_expires(
    start_kim: StartKim, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A_21381: within the renewal window (a month by default; here longer than the
    certificate lives) the Clientmodul asks createCert for a new PKCS#12 after the PVS's next
    message, with the logged-in account (KOM-LE-A_2301-02, A_21382: its own certPassword),
    and presents the new certificate (same commonName, another serial) on the TLS connections
    it makes from then on; it does not ask again with every message."""
    cm = await _appliance_with_pkcs12(start_kim, tmp_path)
    app = cm.app
    p = app.participant("praxis.weber")
    port, presented = await serve_certificate_recording_mta(nursery, app)
    username = with_upstream(p.smtp_username, "127.0.0.1", port)
    to = cm.address("zahnarzt.klein")

    assert await trio.to_thread.run_sync(cm.login_code, "praxis.weber", username) == 235
    await trio.to_thread.run_sync(cm.send, "praxis.weber", [to], _mail(p.address, to))
    assert await trio.to_thread.run_sync(cm.login_code, "praxis.weber", username) == 235
    await trio.to_thread.run_sync(cm.send, "praxis.weber", [to], _mail(p.address, to))
    assert await trio.to_thread.run_sync(cm.login_code, "praxis.weber", username) == 235

    (first_cn, first), (second_cn, second), (third_cn, third) = presented
    assert first_cn == second_cn == third_cn == f"{COMMON_NAME}#CM"
    assert second != first  # renewed after the first message
    assert third == second  # not again after the second one (once a day at most)
    # the renewed key and certificate are kept with the appliance's TLS files
    assert (app.data_dir / "tls" / "clientmodul.pkcs12.key.pem").stat().st_mode & 0o077 == 0


async def test_a_failed_renewal_is_reported_to_the_sender_with_4016(
    start_kim: StartKim, tmp_path: Path
) -> None:
    """A_21381: when the renewal fails (here the Account Manager cannot be reached), the
    sender gets one mail, neither signed nor encrypted, with X-KIM-Fehlermeldung 4016 saying
    that updating the PKCS#12 file failed and ``Fehlertext:<message>``; the message itself was
    sent, and the old certificate stays in use."""
    weber_domain = "fd1.kim.telematik-test"
    cm = await _appliance_with_pkcs12(
        start_kim, tmp_path, fachdienste={f"{weber_domain}:443": f"127.0.0.1:{closed_port()}"}
    )
    p = cm.app.participant("praxis.weber")
    assert p.fachdienst == weber_domain
    to = cm.address("zahnarzt.klein")
    refused = await trio.to_thread.run_sync(cm.send, "praxis.weber", [to], _mail(p.address, to))
    assert refused == {}
    with trio.fail_after(20):
        while True:
            mails = await trio.to_thread.run_sync(cm.fd_fetch, "praxis.weber")
            notices = [m for m in mails if b"X-KIM-Fehlermeldung: 4016" in m]
            if notices:
                break
            await trio.sleep(0.1)
    (notice,) = notices
    message = email.message_from_bytes(notice, policy=email.policy.default)
    assert message["X-KOM-LE-Version"] is None  # neither signed nor encrypted
    body = message.get_content()
    assert "Aktualisierung der PKCS#12-Datei" in body
    assert "Fehlertext:" in body
    assert len(await trio.to_thread.run_sync(cm.fd_fetch, "zahnarzt.klein")) == 1


def test_the_4016_notice_carries_the_account_managers_text() -> None:
    """A_21381: the notice's text is "Fehlertext:<message>" with the Account Manager's message
    on one line; From and To are the account."""
    notice = renewal_failed_notice("praxis.weber@fd1.test", "401 JWT:\r\nnot accepted")
    message = email.message_from_bytes(notice, policy=email.policy.default)
    assert message["X-KIM-Fehlermeldung"] == RENEWAL_FAILED
    assert message["To"].addresses[0].addr_spec == "praxis.weber@fd1.test"
    assert "Fehlertext:401 JWT: not accepted\r\n" in message.get_content()
