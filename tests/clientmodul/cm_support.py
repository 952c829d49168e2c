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
