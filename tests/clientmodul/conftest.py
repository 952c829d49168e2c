"""Fixtures for tests of the appliance's own Clientmodul (endpoints ``clientmodul.smtp/pop3``).

``start_kim(config=..., prepare=...)`` copies a session template data dir, lets ``prepare``
change it before the start (VZD entries, mailbox quotas: the stores are locked while the
appliance runs), and runs the appliance in-process with :func:`kim_appliance.testing.
running_appliance`; smtplib and poplib then play the PVS against its Clientmodul. ``cm`` is
such an appliance with the default configuration, wrapped in :class:`Kim` (the PVS side, the
Fachdienst side straight, the participants' exported keys). Faults are switched through the
Konnektor admin API (:meth:`KimAppliance.fault`), as a vendor's test would.

These fixtures must never build a Clientmodul of their own next to the appliance: the tests
exercise the one ``kim-appliance run`` starts.
"""

from __future__ import annotations

import json
import poplib
import smtplib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import pytest
import trio

from kim_appliance.cms.keys import SoftwareKey
from kim_appliance.pki import TestPki, TrustStore
from kim_appliance.testing import (
    KimAppliance,
    Participant,
    copy_template,
    make_template,
    running_appliance,
)

PrepareDir = Callable[[Path], None]


class StartKim(Protocol):
    def __call__(
        self, config: Mapping[str, Any] | None = ..., prepare: PrepareDir | None = ...
    ) -> Awaitable[KimAppliance]: ...


@pytest.fixture(scope="session")
def kim_cm_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised data dir (demo setup, TLS certificates, quick password hashes)."""
    return make_template(tmp_path_factory.mktemp("kim-cm-template") / "kim-data")


async def _run(
    data_dir: Path,
    config: Mapping[str, Any] | None,
    task_status: trio.TaskStatus[KimAppliance] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with running_appliance(data_dir, config=config) as app:
        task_status.started(app)
        await trio.sleep_forever()


@pytest.fixture
async def start_kim(tmp_path: Path, kim_cm_template: Path) -> AsyncIterator[StartKim]:
    # the appliances run in the fixture's nursery (a nursery must close in the task that
    # opened it; the test body runs in another task)
    async with trio.open_nursery() as nursery:
        count = 0

        async def start(
            config: Mapping[str, Any] | None = None, prepare: PrepareDir | None = None
        ) -> KimAppliance:
            nonlocal count
            count += 1
            data_dir = tmp_path / f"kim-data-{count}"
            copy_template(kim_cm_template, data_dir)
            if prepare is not None:
                prepare(data_dir)
            app: KimAppliance = await nursery.start(_run, data_dir, config)
            return app

        yield start
        nursery.cancel_scope.cancel()


@pytest.fixture
async def cm(start_kim: StartKim) -> Kim:
    """An appliance of this test's own (default configuration, empty mailboxes)."""
    return Kim(await start_kim())


# --- the view the Clientmodul tests use (blocking helpers: call through trio.to_thread) -------


@dataclass
class Kim:
    """A running appliance seen from the PVS (its Clientmodul) and from the Fachdienst side.

    Participants are named by local part (``"praxis.weber"``) or address."""

    app: KimAppliance
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
