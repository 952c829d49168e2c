"""What the Clientmodul tests share besides fixtures: the typed view of a running appliance
from the PVS side (:class:`Kim`) and small helpers. In a module of its own, not in conftest.py,
so that tests import it by a name no other directory uses."""

from __future__ import annotations

import json
import poplib
import smtplib
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import trio

from kim_appliance.cms.keys import SoftwareKey
from kim_appliance.pki import TestPki, TrustStore
from kim_appliance.testing import (
    KimAppliance,
    Participant,
)

#: changes a data dir before its appliance starts (through the store: an async hook)
PrepareDir = Callable[[Path], Awaitable[None]]


class StartKim(Protocol):
    def __call__(
        self, config: Mapping[str, Any] | None = ..., prepare: PrepareDir | None = ...
    ) -> Awaitable[KimAppliance]: ...


@dataclass
class Kim:
    """A running appliance seen from the PVS (its Clientmodul) and from the Fachdienst side.

    Participants are named by local part (``"praxis.weber"``) or address."""

    app: KimAppliance
    #: "in-process" or "network" (the Clientmodul's Konnektor and VZD over SOAP and LDAPS)
    mode: str = "in-process"
    _keys: dict[str, list[SoftwareKey]] = field(default_factory=dict, repr=False)

    def participant(self, local: str) -> Participant:
        return self.app.participant(local)

    def address(self, local: str) -> str:
        return self.participant(local).address

    def ssl_context(self) -> ssl.SSLContext:
        return self.app.ssl_context()

    @cached_property
    def trust(self) -> TrustStore:
        """The test PKI's anchors and CRLs, as the appliance's Clientmodul trusts them."""
        return TestPki.load(self.app.data_dir / "pki").trust_store()

    def keys(self, local: str) -> list[SoftwareKey]:
        """The participant's exported ENC keys (the card's test keys)."""
        if local not in self._keys:
            p = self.participant(local)
            self._keys[local] = [
                SoftwareKey.from_files(k, c) for k, c in zip(p.enc_keys, p.enc_certs, strict=True)
            ]
        return self._keys[local]

    # -- the Clientmodul's SMTP side (digest §1.3, §1.4)

    def smtp_connect(self) -> smtplib.SMTP_SSL:
        host, port = self.app.clientmodul_smtp
        return smtplib.SMTP_SSL(host, port, context=self.ssl_context(), timeout=60)

    def login_code(self, local: str, username: str) -> int:
        """The Clientmodul's answer to the PVS's AUTH with ``username`` (then QUIT)."""
        with self.smtp_connect() as smtp:
            code, _ = smtp.login(username, self.participant(local).password)
            return code

    def smtp_login(self, local: str, *, username: str | None = None) -> smtplib.SMTP_SSL:
        p = self.participant(local)
        smtp = self.smtp_connect()
        try:
            smtp.ehlo("pvs.test")
            smtp.login(username or p.smtp_username, p.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def send(
        self, local: str, to: list[str], data: bytes, *, username: str | None = None
    ) -> dict[str, tuple[int, bytes]]:
        with self.smtp_login(local, username=username) as smtp:
            return smtp.sendmail(self.address(local), to, data)

    # -- the Clientmodul's POP3 side (digest §1.5)

    def pop3_connect(self) -> poplib.POP3_SSL:
        host, port = self.app.clientmodul_pop3
        return poplib.POP3_SSL(host, port, context=self.ssl_context(), timeout=60)

    def pop3_login(self, local: str, *, username: str | None = None) -> poplib.POP3_SSL:
        p = self.participant(local)
        pop = self.pop3_connect()
        try:
            pop.user(username or p.pop3_username)
            pop.pass_(p.password)
        except BaseException:
            pop.close()
            raise
        return pop

    # -- the Fachdienst straight (no Clientmodul in between)

    def fd_submit(self, sender: str, recipient: str, data: bytes) -> None:
        """``data`` from ``sender`` to ``recipient``, submitted to the sender's Fachdienst."""
        s = self.participant(sender)
        host, port = self.app.fachdienste[s.fachdienst].smtp
        with smtplib.SMTP_SSL(host, port, context=self.ssl_context(), timeout=60) as smtp:
            smtp.ehlo("pvs.test")
            smtp.login(s.address, s.password)
            refused = smtp.sendmail(s.address, [self.address(recipient)], data)
        assert refused == {}, refused

    def fd_pop3(self, local: str, *, wait: float = 10.0) -> poplib.POP3_SSL:
        """A POP3S session with the participant's Fachdienst; waits out ``[IN-USE]``."""
        p = self.participant(local)
        host, port = self.app.fachdienste[p.fachdienst].pop3
        deadline = time.monotonic() + wait
        while True:
            pop = poplib.POP3_SSL(host, port, context=self.ssl_context(), timeout=60)
            try:
                pop.user(p.address)
                pop.pass_(p.password)
                return pop
            except poplib.error_proto as exc:
                pop.close()
                if b"[IN-USE]" not in bytes(exc.args[0]) or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def fd_fetch(self, local: str, *, delete: bool = True) -> list[bytes]:
        """Every message the Fachdienst holds for ``local`` (CRLF), deleted unless told not."""
        pop = self.fd_pop3(local)
        try:
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

    # -- Konnektor faults (the admin API)

    async def fault(self, **switches: Any) -> dict[str, Any]:
        """:meth:`KimAppliance.fault` from a trio test."""
        return await trio.to_thread.run_sync(lambda: self.app.fault(**switches))


def demo_address(data_dir: Path, local: str) -> str:
    """The address of a demo participant in a data dir not yet running (for ``prepare``)."""
    demo = json.loads((data_dir / "demo.json").read_text(encoding="utf-8"))
    return str(next(p["address"] for p in demo["participants"] if p["address"].startswith(local)))


def with_upstream(username: str, host: str, port: int) -> str:
    """A Clientmodul username (digest §1.2: ``addr#host:port#Mandant#Client#Workplace``) that
    names ``host:port`` as the MTA: a host that is not one of the appliance's Fachdienst
    domains is connected to as written."""
    parts = username.split("#")
    parts[1] = f"{host}:{port}"
    return "#".join(parts)


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- the Clientmodul's PKCS#12 from createCert (A_19513, A_21381) ----------------------------

#: what the tests' Administrationsmodul passes to createCert
CERT_PASSWORD = "Zufall-aus-dem-Administrationsmodul-7"
COMMON_NAME = "praxis-weber-cm"


def create_cert(app: KimAppliance, local: str) -> bytes:
    """createCert for ``local``'s account as the Administrationsmodul calls it (blocking): a
    JWT signed on the participant's SMC-B through ExternalAuthenticate (digest §1.10), the
    account password; the PKCS#12 file of the answer."""
    import base64

    import httpx

    from kim_appliance.konnektor.infomodell import Context
    from kim_appliance.konnektor.operations import Konnektor
    from kim_appliance.pki.jwt import build_jwt

    context = Context("Mandant1", "PVS1", "AP1")
    p = app.participant(local)
    konnektor = Konnektor.from_data_dir(app.data_dir, persist_revocations=False)
    cards = konnektor.get_cards(context, "SMC-B")
    card = next(c for c in cards if c.telematik_id == p.telematik_id)
    token = build_jwt(
        certificate=konnektor.read_card_certificate(context, card.card_handle, "C.AUT", "RSA"),
        sign=lambda digest: konnektor.external_authenticate(
            context, card.card_handle, digest, "RSASSA-PSS"
        ),
        subject=p.address,
    )
    https = app.fachdienste[p.fachdienst].https
    with httpx.Client(verify=ssl.create_default_context(cafile=app.tls_ca)) as client:
        answer = client.post(
            f"{https}/AccountMgmt/v2.4/account/{p.address}/cert",
            headers={
                "Authorization": f"Bearer {token}",
                "password": base64.b64encode(p.password.encode()).decode(),
            },
            json={
                "commonName": COMMON_NAME,
                "certPassword": base64.b64encode(CERT_PASSWORD.encode()).decode(),
            },
        )
    assert answer.status_code == 200, answer.text
    return base64.b64decode(answer.json()["file"])


async def serve_certificate_recording_mta(
    nursery: trio.Nursery, app: KimAppliance
) -> tuple[int, list[tuple[str, int]]]:
    """An SMTPS server with a Fachdienst's certificate that requires a client certificate of
    the TLS CA and records (CN, serial) of each one it gets; it accepts every login and ends
    the session at the next command; (port, what it saw)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from kim_appliance.pki.tls import server_context

    domain = app.participant("praxis.weber").fachdienst
    tls = app.data_dir / "tls"
    context = server_context(
        tls / f"{domain}.server.chain.pem",
        tls / f"{domain}.server.key.pem",
        client_ca=app.tls_ca,
        require_client_cert=True,
    )
    presented: list[tuple[str, int]] = []

    async def mta(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
            der = stream.getpeercert(binary_form=True)
            assert der is not None
            cert = x509.load_der_x509_certificate(der)
            cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            presented.append((str(cn), cert.serial_number))
            await stream.send_all(b"220 scripted MTA ESMTP\r\n")
            buffer = b""
            while data := await stream.receive_some(4096):
                buffer += data
                while b"\r\n" in buffer:
                    line, buffer = buffer.split(b"\r\n", 1)
                    if line.upper().startswith(b"EHLO"):
                        await stream.send_all(b"250-scripted\r\n250 AUTH PLAIN\r\n")
                    elif line.upper().startswith(b"AUTH"):
                        await stream.send_all(b"235 2.7.0 ok\r\n")
                    else:
                        await stream.send_all(b"221 2.0.0 bye\r\n")
                        return
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(trio.serve_ssl_over_tcp, mta, 0, context)
    return listeners[0].transport_listener.socket.getsockname()[1], presented
