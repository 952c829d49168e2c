"""A running appliance (in-process, ephemeral ports) for the Fachdienst tests.

The appliance comes from :mod:`kim_appliance.testing` (the plugin vendors use): the demo setup
(test PKI, cards, TLS certificates, seeded accounts with fast test logins) is made once per
test session in a template data dir and copied for every test, so a test starts in well under
a second with a fresh data dir. ``start_appliance`` starts one with config.toml overrides
written before the start (``[fachdienst]`` keys such as a short relay give-up or a small
message size) and an optional hook that changes the store before the start (quota,
deregistration): the embedded store admits one process at a time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import poplib
import queue
import smtplib
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio
from starlette.types import ASGIApp

from kim_appliance.config import DomainConfig, FachdienstConfig
from kim_appliance.fachdienst.accounts import Authenticator
from kim_appliance.fachdienst.context import Fachdienst, RelayEndpoints
from kim_appliance.serving.http import serve_asgi
from kim_appliance.store import Store, open_store
from kim_appliance.testing import KimAppliance, fast_hash, write_config


@dataclass
class Running:
    data_dir: Path
    endpoints: dict[str, Any]
    demo: dict[str, Any]
    #: the typed view kim_appliance.testing gives vendors' tests
    app: KimAppliance | None = None

    def participant(self, local: str) -> dict[str, Any]:
        return next(p for p in self.demo["participants"] if p["address"].startswith(local + "@"))

    def address(self, domain: str, kind: str) -> tuple[str, int]:
        host, _, port = self.endpoints["fachdienste"][domain][kind].rpartition(":")
        return host, int(port)

    def client_ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.endpoints["tls_ca"])
        return context

    @classmethod
    def of(cls, app: KimAppliance) -> Running:
        demo = json.loads((app.data_dir / "demo.json").read_text(encoding="utf-8"))
        return cls(app.data_dir, dict(app.endpoints), demo, app)


#: a hook that changes the appliance's store before the appliance starts
Prepare = Callable[[Store], Awaitable[None]]


class StartAppliance(Protocol):
    def __call__(
        self, fachdienst: dict[str, Any] | None = ..., prepare: Prepare | None = ...
    ) -> Awaitable[Running]: ...


#: ``scrypt$n$r$p$salt$hash`` with n = 2**10 (kim_appliance.testing's fast test logins)
_quick_hash = fast_hash


def _write_config(data_dir: Path, fachdienst: dict[str, Any]) -> None:
    """Merge the given ``[fachdienst]`` keys into ``config.toml``."""
    write_config(data_dir, {"fachdienst": fachdienst})


# -- client helpers (blocking: call them through trio.to_thread.run_sync) ----------------------

FD1, FD2 = "fd1.kim.telematik-test", "fd2.kim.telematik-test"


def make_message(
    sender: str,
    to: str,
    *,
    subject: str = "Befund",
    body: str = "Hallo\n",
    headers: dict[str, str] | None = None,
) -> bytes:
    """A small RFC 5322 message with CRLF line ends and a unique Message-ID."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="kim.test")
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def text_of(reply: bytes | str) -> str:
    """An SMTP reply text as str (smtplib types it bytes | str)."""
    return reply if isinstance(reply, str) else reply.decode()


def smtp_connect(app: Running, domain: str, local: str | None = None) -> smtplib.SMTP_SSL:
    """An SMTPS session after EHLO, logged in (AUTH PLAIN) as ``local`` unless None."""
    host, port = app.address(domain, "smtp")
    smtp = smtplib.SMTP_SSL(host, port, context=app.client_ssl(), timeout=30)
    smtp.ehlo("pvs.test")
    if local is not None:
        p = app.participant(local)
        smtp.user, smtp.password = p["address"], p["password"]
        code, text = smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=True)
        assert code == 235, (code, text)
    return smtp


def smtp_send(
    app: Running,
    domain: str,
    local: str,
    to: list[str],
    data: bytes,
    *,
    mail_options: tuple[str, ...] = (),
    rcpt_options: tuple[str, ...] = (),
) -> dict[str, tuple[int, bytes]]:
    with smtp_connect(app, domain, local) as smtp:
        return smtp.sendmail(
            app.participant(local)["address"],
            to,
            data,
            mail_options=list(mail_options),
            rcpt_options=list(rcpt_options),
        )


def pop3_connect(app: Running, domain: str, local: str, *, wait: float = 5.0) -> poplib.POP3_SSL:
    """A POP3S session logged in with USER/PASS; waits out ``[IN-USE]`` of a closing session."""
    p = app.participant(local)
    host, port = app.address(domain, "pop3")
    deadline = time.monotonic() + wait
    while True:
        pop = poplib.POP3_SSL(host, port, context=app.client_ssl(), timeout=30)
        try:
            pop.user(p["address"])
            pop.pass_(p["password"])
            return pop
        except poplib.error_proto as exc:
            pop.close()
            if b"[IN-USE]" not in exc.args[0] or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def pop3_command(pop: poplib.POP3_SSL, line: str) -> bytes:
    """Send one raw command, return the one-line answer; ``-ERR`` comes back, not raised."""
    try:
        answer: bytes = pop._shortcmd(line)  # type: ignore[attr-defined]
    except poplib.error_proto as exc:
        answer = bytes(exc.args[0])
    return answer


def pop3_fetch_all(app: Running, domain: str, local: str, *, delete: bool = True) -> list[bytes]:
    """Every message of the mailbox as bytes (CRLF), deleted afterwards unless told not to."""
    pop = pop3_connect(app, domain, local)
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


async def wait_for_mail(
    app: Running, domain: str, local: str, *, count: int = 1, timeout: float = 20.0
) -> list[bytes]:
    """Poll the mailbox until it holds ``count`` messages; return (and delete) them."""
    got: list[bytes] = []
    with trio.fail_after(timeout):
        while len(got) < count:
            got += await trio.to_thread.run_sync(pop3_fetch_all, app, domain, local)
            if len(got) < count:
                await trio.sleep(0.1)
    return got


# -- a Fachdienst object on a real store, without listeners (unit tests of its parts) ----------


def fachdienst_on(
    store: Store,
    domain: str,
    *,
    config: FachdienstConfig | None = None,
    max_failed_logins: int = 5,
    lockout_seconds: int = 900,
    **fields: Any,
) -> Fachdienst:
    """A :class:`Fachdienst` of ``domain`` on ``store`` with default TLS contexts."""
    return Fachdienst(
        domain=domain,
        config=config or FachdienstConfig(domains=(DomainConfig(domain, 0, 0),)),
        store=store,
        auth=Authenticator(
            store,
            domain=domain,
            max_failed_logins=max_failed_logins,
            lockout_seconds=lockout_seconds,
        ),
        endpoints=RelayEndpoints(),
        server_ssl=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        client_ssl=ssl.create_default_context(),
        log=logging.getLogger(f"tests.{domain.split('.')[0]}"),
        **fields,
    )


async def store_bytes(store: Store, mailbox: str, body: bytes, prefix: bytes = b"") -> int:
    """Deliver ``body`` to ``mailbox`` (no quota check); the new message's id."""
    async with store.blobs.writer() as writer:
        await writer.write(body)
        blob = await writer.commit()
        now = dt.datetime.now(dt.UTC)
        [message] = await store.mail.deliver(blob, [(mailbox, prefix)], now, check_quota=False)
    return message.id


async def read_message(store: Store, message_id: int) -> bytes:
    data = b""
    async with store.mail.reader(message_id) as reader:
        while chunk := await reader.read(1 << 20):
            data += chunk
    return data


# -- an ASGI app on the store, served by trio in a background thread (sync tests) --------------

T = TypeVar("T")


class TrioServed:
    """An ASGI app served over plain HTTP on 127.0.0.1 by a trio loop in a daemon thread, on a
    store opened in that loop (the store and the Fachdienst's parts are trio code). Sync tests
    (schemathesis, a blocking HTTP client) talk to :attr:`url`; :meth:`call` runs a coroutine
    function in the loop, e.g. ``served.call(store.accounts.get, address)``."""

    def __init__(self, url: str, token: trio.lowlevel.TrioToken, store: Store) -> None:
        self.url = url
        self.store = store
        self._token = token

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self._token)


@contextlib.contextmanager
def serve_in_thread(
    data_dir: Path, build: Callable[[Store], Awaitable[ASGIApp]]
) -> Iterator[TrioServed]:
    """Open the store of ``data_dir`` and serve ``await build(store)`` until the block ends."""
    ready: queue.Queue[TrioServed | BaseException] = queue.Queue()
    scope_holder: list[trio.CancelScope] = []

    async def main() -> None:
        try:
            async with open_store(None, data_dir) as store, trio.open_nursery() as nursery:
                scope_holder.append(nursery.cancel_scope)
                app = await build(store)
                host, port = await nursery.start(
                    partial(serve_asgi, app, bind="127.0.0.1", port=0, ssl_context=None)
                )
                ready.put(TrioServed(f"http://{host}:{port}", trio.lowlevel.current_trio_token(),
                                     store))  # fmt: skip
        except BaseException as exc:
            ready.put(exc)
            raise

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    got = ready.get(timeout=60)
    if isinstance(got, BaseException):
        thread.join(timeout=10)
        raise got
    try:
        yield got
    finally:
        trio.from_thread.run_sync(scope_holder[0].cancel, trio_token=got._token)
        thread.join(timeout=30)
