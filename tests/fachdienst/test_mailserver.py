"""The Fachdienst mail server through real sockets and TLS, with smtplib and poplib as clients
(digest §3.2)."""

from __future__ import annotations

import poplib
import smtplib
from email.message import EmailMessage

import trio
from fd_support import Running

FD1, FD2 = "fd1.kim.telematik-test", "fd2.kim.telematik-test"


def _message(sender: str, to: str, subject: str = "Befund", body: str = "Hallo\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = "<2f1d5a6e-3c1b-4f8e-9a77-0d5e1c2b3a44@kim>"
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def _smtp_send(
    app: Running,
    domain: str,
    local: str,
    to: list[str],
    data: bytes,
    rcpt_options: tuple[str, ...] = (),
) -> dict[str, tuple[int, bytes]]:
    p = app.participant(local)
    host, port = app.address(domain, "smtp")
    with smtplib.SMTP_SSL(host, port, context=app.client_ssl(), timeout=30) as smtp:
        smtp.login(p["address"], p["password"])
        return smtp.sendmail(p["address"], to, data, rcpt_options=list(rcpt_options))


def _pop3_fetch_all(app: Running, domain: str, local: str, delete: bool = True) -> list[bytes]:
    p = app.participant(local)
    host, port = app.address(domain, "pop3")
    pop = poplib.POP3_SSL(host, port, context=app.client_ssl(), timeout=30)
    try:
        pop.user(p["address"])
        pop.pass_(p["password"])
        count, _ = pop.stat()
        out = []
        for n in range(1, count + 1):
            _, lines, _ = pop.retr(n)
            out.append(b"\r\n".join(lines) + b"\r\n")
            if delete:
                pop.dele(n)
        return out
    finally:
        pop.quit()


async def test_local_delivery_comes_back_byte_for_byte(appliance: Running) -> None:
    """KOM-LE-A_2148, KOM-LE-A_2161: AUTH with the plain KIM address; POP3 returns the message
    with Return-Path and Received added (I_Message_Service over SMTP and POP3 with TLS,
    KOM-LE-A_2140/2141)."""
    sender = appliance.participant("praxis.weber")["address"]
    to = appliance.participant("zahnarzt.klein")["address"]
    data = _message(sender, to)
    refused = await trio.to_thread.run_sync(_smtp_send, appliance, FD1, "praxis.weber", [to], data)
    assert refused == {}
    got = await trio.to_thread.run_sync(_pop3_fetch_all, appliance, FD1, "zahnarzt.klein")
    assert len(got) == 1
    assert got[0].startswith(b"Return-Path: <" + sender.encode() + b">\r\nReceived: ")
    assert got[0].endswith(data)
    again = await trio.to_thread.run_sync(_pop3_fetch_all, appliance, FD1, "zahnarzt.klein")
    assert again == []


async def test_relay_to_the_other_fachdienst(appliance: Running) -> None:
    """Mail for another domain goes through the relay queue over SMTPS with mutual TLS."""
    sender = appliance.participant("praxis.weber")["address"]
    to = appliance.participant("apotheke.sonne")["address"]
    data = _message(sender, to, subject="Rezept")
    await trio.to_thread.run_sync(_smtp_send, appliance, FD1, "praxis.weber", [to], data)
    with trio.fail_after(20):
        while True:
            got = await trio.to_thread.run_sync(_pop3_fetch_all, appliance, FD2, "apotheke.sonne")
            if got:
                break
            await trio.sleep(0.2)
    assert got[0].endswith(data)


async def test_mail_server_presents_c_fd_tls_s_and_takes_credentials_only_over_tls(
    appliance: Running,
) -> None:
    """KOM-LE-A_2186: the SMTP and POP3 servers of both Fachdienste authenticate with a
    C.FD.TLS-S certificate (technical role of the KOM-LE Fachdienst) that the TLS CA verifies;
    KOM-LE-A_2162: a client that sends EHLO and AUTH PLAIN in clear gets no SMTP or POP3
    answer (TLS from the first byte), so a password never travels unprotected."""
    import base64
    import socket

    from cryptography import x509

    from kim_appliance.pki import CertProfile, profile_of

    def server_certificate(domain: str, kind: str) -> x509.Certificate:
        host, port = appliance.address(domain, kind)
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            appliance.client_ssl().wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def in_clear(domain: str, kind: str) -> bytes:
        p = appliance.participant("praxis.weber")
        secret = base64.b64encode(f"\0{p['address']}\0{p['password']}".encode())
        host, port = appliance.address(domain, kind)
        with socket.create_connection((host, port), timeout=10) as raw:
            raw.sendall(b"EHLO pvs.test\r\nAUTH PLAIN " + secret + b"\r\n")
            answer = b""
            try:
                while chunk := raw.recv(4096):
                    answer += chunk
            except (ConnectionResetError, TimeoutError):
                pass
            return answer

    for domain in (FD1, FD2):
        for kind in ("smtp", "pop3"):
            cert = await trio.to_thread.run_sync(server_certificate, domain, kind)
            assert profile_of(cert) is CertProfile.C_FD_TLS_S, (domain, kind)
            answer = await trio.to_thread.run_sync(in_clear, domain, kind)
            assert not answer.startswith((b"220", b"235", b"+OK", b"-ERR", b"5")), answer
            assert b"\r\n" not in answer, answer  # a TLS alert at most, no text line
