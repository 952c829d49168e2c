"""The in-process appliance for tests: data dirs, the typed view of a running appliance, and
the trio flavour (:func:`running_appliance`, :func:`serve_appliance`).

A test gets a :class:`KimAppliance`: the endpoints of ``endpoints.json`` and the participants of
``demo.json`` (DESIGN.md, the contract) as typed values, plus small helpers that log a demo
participant in through the Clientmodul with the standard library's clients and switch Konnektor
faults through the admin API. Everything here talks to the appliance the way a vendor's code
does (sockets, files of the data dir); it must never reach into a running component's objects,
and it must never touch a data dir it was not given or did not create.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import poplib
import shutil
import smtplib
import ssl
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from kim_appliance.errors import KimError
from kim_appliance.konnektor.admin_client import FaultSwitchError as FaultSwitchError
from kim_appliance.konnektor.admin_client import switch_faults as switch_faults

#: files of a data dir that belong to one run and are never copied from a template
_RUN_FILES = frozenset({"endpoints.json", "endpoints.json.tmp"})


class ApplianceStartError(KimError, RuntimeError):
    """The appliance did not start; ``__cause__`` is what stopped it (e.g. a ConfigError)."""


# -- the typed view --------------------------------------------------------------------------


@dataclass(frozen=True)
class Participant:
    """One demo participant of ``demo.json`` (DESIGN.md): mailbox, card and exported keys."""

    address: str
    password: str
    telematik_id: str
    display_name: str
    #: the domain of the participant's Fachdienst
    fachdienst: str
    #: "SMC-B" (an institution's card) or "HBA" (a health professional's card)
    card_type: str
    iccsn: str
    #: the card's key types: "RSA", "ECC" or "RSA+ECC"
    keys: str
    #: ready-made Clientmodul usernames (digest §1.2: address#host:port#Mandant#Client#Workplace)
    smtp_username: str
    pop3_username: str
    #: exported test keys of the emulated card; ``enc_keys[i]`` belongs to ``enc_certs[i]``
    enc_certs: tuple[Path, ...]
    enc_keys: tuple[Path, ...]
    osig_certs: tuple[Path, ...]
    osig_keys: tuple[Path, ...]
    #: the participant's demo.json entry as it is
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def local_part(self) -> str:
        return self.address.rpartition("@")[0]

    @classmethod
    def from_demo(cls, entry: Mapping[str, Any]) -> Participant:
        export = entry.get("export", {})
        card = entry["card"]

        def paths(key: str) -> tuple[Path, ...]:
            return tuple(Path(p) for p in export.get(key, []))

        return cls(
            address=entry["address"],
            password=entry["password"],
            telematik_id=entry["telematik_id"],
            display_name=entry["display_name"],
            fachdienst=entry["fachdienst"],
            card_type=card["type"],
            iccsn=card["iccsn"],
            keys=card["keys"],
            smtp_username=entry["smtp_username"],
            pop3_username=entry["pop3_username"],
            enc_certs=paths("enc_cert"),
            enc_keys=paths("enc_key"),
            osig_certs=paths("osig_cert"),
            osig_keys=paths("osig_key"),
            raw=entry,
        )


@dataclass(frozen=True)
class FachdienstEndpoints:
    """Where one Fachdienst listens: mail server (implicit TLS) and REST services."""

    smtp: tuple[str, int]
    pop3: tuple[str, int]
    #: base URL of Account Manager, AccountLimit, ServiceInformation and KAS
    https: str


@dataclass(frozen=True)
class KimAppliance:
    """A running appliance as a test sees it: endpoints, participants, client helpers.

    The blocking helpers (:meth:`smtp`, :meth:`pop3`, :meth:`fault`) are for ordinary tests; in
    a trio test call them through ``trio.to_thread.run_sync``.
    """

    data_dir: Path
    #: ``endpoints.json`` as the appliance reported it
    endpoints: Mapping[str, Any]
    #: the PEM of the CA that signs every TLS server certificate of the appliance
    tls_ca: Path
    clientmodul_smtp: tuple[str, int]
    clientmodul_pop3: tuple[str, int]
    fachdienste: Mapping[str, FachdienstEndpoints]
    konnektor_sds: str
    #: the fault admin API (``POST``/``GET``), see :meth:`fault`
    konnektor_admin: str
    ldap: tuple[str, int]
    base_dn: str
    participants: list[Participant]
    #: the test PKI's roots and CAs (demo.json ``trust_anchors``)
    trust_anchors: tuple[Path, ...] = ()

    @classmethod
    def from_data_dir(cls, data_dir: Path, endpoints: Mapping[str, Any]) -> KimAppliance:
        """The view of the appliance running in ``data_dir`` that reported ``endpoints``."""
        demo = json.loads((data_dir / "demo.json").read_text(encoding="utf-8"))
        fachdienste = {
            domain: FachdienstEndpoints(
                smtp=split_hostport(urls["smtp"]),
                pop3=split_hostport(urls["pop3"]),
                https=urls.get("https", ""),
            )
            for domain, urls in endpoints["fachdienste"].items()
        }
        konnektor = endpoints["konnektor"]
        directory = endpoints["directory"]
        return cls(
            data_dir=data_dir,
            endpoints=endpoints,
            tls_ca=Path(endpoints["tls_ca"]),
            clientmodul_smtp=split_hostport(endpoints["clientmodul"]["smtp"]),
            clientmodul_pop3=split_hostport(endpoints["clientmodul"]["pop3"]),
            fachdienste=fachdienste,
            konnektor_sds=konnektor["sds"],
            konnektor_admin=konnektor.get("admin", ""),
            ldap=split_hostport(directory["ldap"]),
            base_dn=directory["base_dn"],
            participants=[Participant.from_demo(p) for p in demo["participants"]],
            trust_anchors=tuple(Path(p) for p in demo.get("trust_anchors", [])),
        )

    def participant(self, which: str | Callable[[Participant], bool]) -> Participant:
        """The participant with this address (or local part), or the first one ``which(p)``
        holds for: ``app.participant(lambda p: p.card_type == "HBA")``."""
        if isinstance(which, str):
            wanted = which.lower()
            for p in self.participants:
                if wanted in (p.address.lower(), p.local_part.lower()):
                    return p
            known = ", ".join(p.address for p in self.participants)
            raise LookupError(f"participant {which!r}: not in demo.json (known: {known})")
        for p in self.participants:
            if which(p):
                return p
        raise LookupError("participant: no demo participant matches the predicate")

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the appliance's TLS CA (and checks host names)."""
        return ssl.create_default_context(cafile=str(self.tls_ca))

    def smtp(self, participant: Participant | str, *, timeout: float = 60.0) -> smtplib.SMTP_SSL:
        """An SMTPS session with the Clientmodul, logged in as ``participant`` with its
        ready-made username (digest §1.2); use it as a context manager."""
        p = self._participant(participant)
        host, port = self.clientmodul_smtp
        smtp = smtplib.SMTP_SSL(host, port, context=self.ssl_context(), timeout=timeout)
        try:
            smtp.login(p.smtp_username, p.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def pop3(
        self, participant: Participant | str, *, timeout: float = 60.0, wait: float = 10.0
    ) -> poplib.POP3_SSL:
        """A POP3S session with the Clientmodul, logged in as ``participant``; call
        ``quit()`` when done. A mailbox still locked by a closing session (``[IN-USE]``) is
        retried for up to ``wait`` seconds."""
        p = self._participant(participant)
        host, port = self.clientmodul_pop3
        deadline = time.monotonic() + wait
        while True:
            pop = poplib.POP3_SSL(host, port, context=self.ssl_context(), timeout=timeout)
            try:
                pop.user(p.pop3_username)
                pop.pass_(p.password)
                return pop
            except poplib.error_proto as exc:
                pop.close()
                if b"[IN-USE]" not in bytes(exc.args[0]) or time.monotonic() > deadline:
                    raise
            except BaseException:
                pop.close()
                raise
            time.sleep(0.1)

    def fault(
        self,
        *,
        clear: bool = False,
        card_removed: Participant | str | None = None,
        card_inserted: Participant | str | None = None,
        pin_blocked: Participant | str | None = None,
        pin_status: Mapping[str, str] | None = None,
        revoke: Mapping[str, str] | None = None,
        latency_ms: float | Mapping[str, Any] | None = None,
        unreachable: bool | None = None,
    ) -> dict[str, Any]:
        """Switch Konnektor faults (the ``POST /admin/faults`` switches of
        kim_appliance/konnektor/soap/admin.py; a card is named by its participant or ICCSN)
        and return the fault status. Without arguments it only reads the status."""
        request: dict[str, Any] = {}
        if clear:
            request["clear"] = True
        for key, card in (
            ("card_removed", card_removed),
            ("card_inserted", card_inserted),
            ("pin_blocked", pin_blocked),
        ):
            if card is not None:
                request[key] = card.iccsn if isinstance(card, Participant) else card
        if pin_status is not None:
            request["pin_status"] = dict(pin_status)
        if revoke is not None:
            request["revoke"] = dict(revoke)
        if latency_ms is not None:
            request["latency_ms"] = (
                dict(latency_ms) if isinstance(latency_ms, Mapping) else latency_ms
            )
        if unreachable is not None:
            request["unreachable"] = unreachable
        token = (self.data_dir / "admin-token").read_text(encoding="ascii").strip()
        return switch_faults(self.endpoints, request or None, token=token)

    def _participant(self, participant: Participant | str) -> Participant:
        if isinstance(participant, Participant):
            return participant
        return self.participant(participant)


def split_hostport(value: str) -> tuple[str, int]:
    """``"127.0.0.1:1465"`` or ``"[::1]:1465"`` as ``(host, port)``."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


# -- data dirs --------------------------------------------------------------------------------


def make_template(data_dir: Path, *, fast_logins: bool = True) -> Path:
    """Initialise ``data_dir`` (empty or missing) for copying: the demo setup, one start and
    clean stop (TLS certificates issued, mailboxes seeded). Blocking; takes seconds.

    ``fast_logins`` stores the demo passwords again as salted scrypt with a small work factor
    (n = 2**10 instead of 2**14): every login then costs about a millisecond instead of
    ~100 ms. Same format, same check (KOM-LE-A_2164) -- for test data only.
    """
    data_dir = Path(data_dir)
    trio.run(_start_and_stop, data_dir)
    if fast_logins:
        trio.run(_fast_logins, data_dir)
    return data_dir


def copy_template(template: Path, data_dir: Path) -> Path:
    """Copy an initialised data dir to ``data_dir`` (missing or empty): a fresh appliance with
    the template's keys and passwords and empty mailboxes, in a fraction of a second.

    The absolute paths in ``demo.json`` are rewritten to point into the copy.
    """
    template, data_dir = Path(template).resolve(), Path(data_dir).resolve()
    if not (template / "demo.json").is_file():
        raise KimError(f"template {template}: not an initialised data dir (no demo.json)")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise KimError(f"data dir {data_dir}: not empty; the template is copied into a new one")
    shutil.copytree(
        template,
        data_dir,
        dirs_exist_ok=True,
        ignore=lambda _dir, names: [n for n in names if n in _RUN_FILES],
    )
    demo_file = data_dir / "demo.json"
    demo = json.loads(demo_file.read_text(encoding="utf-8"))
    demo = _rebase(demo, str(template), str(data_dir))
    tmp = demo_file.with_name("demo.json.tmp")
    tmp.write_text(json.dumps(demo, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, demo_file)
    return data_dir


def write_config(data_dir: Path, overrides: Mapping[str, Any]) -> None:
    """Merge ``overrides`` (the tables of config.toml, e.g. ``{"fachdienst": {"quota_bytes":
    ...}}``) into ``data_dir/config.toml``: tables are merged key by key, other values
    replaced. The appliance checks the result when it starts (unknown keys are refused)."""
    path = Path(data_dir) / "config.toml"
    current: dict[str, Any] = {}
    if path.exists():
        current = tomllib.loads(path.read_text(encoding="utf-8"))
    merged = _merge(current, overrides)
    tmp = path.with_name("config.toml.tmp")
    tmp.write_text(_toml(merged), encoding="utf-8")
    os.replace(tmp, path)


# -- the trio flavour -------------------------------------------------------------------------


@asynccontextmanager
async def running_appliance(
    data_dir: Path | None = None,
    *,
    template: Path | None = None,
    config: Mapping[str, Any] | None = None,
) -> AsyncIterator[KimAppliance]:
    """Run the whole appliance in this trio process on free ports (127.0.0.1) while the block
    runs; yields its :class:`KimAppliance`.

    ``data_dir``: where it runs; a temporary dir, removed afterwards, when None. ``template``:
    an initialised data dir (:func:`make_template`) copied into ``data_dir`` first, instead of
    the demo setup (which takes seconds). ``config``: overrides merged into config.toml
    (:func:`write_config`); the listeners' ports are always ephemeral.

    Error handling: if the appliance does not start, :class:`ApplianceStartError` is raised
    with the cause chained. An exception of the block propagates as it is (not wrapped in an
    exception group); the appliance is stopped first, and ``endpoints.json`` is gone.
    """
    from kim_appliance.appliance import prepare_data_dir, run_appliance

    scratch: Path | None = None
    if data_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="kim-appliance-"))
        data_dir = scratch / "kim-data"
    data_dir = Path(data_dir).resolve()
    failure: BaseException | None = None
    try:
        try:
            if template is not None:
                await trio.to_thread.run_sync(copy_template, Path(template), data_dir)
            if config:
                await prepare_data_dir(data_dir)
                await trio.to_thread.run_sync(write_config, data_dir, config)
        except Exception as exc:
            raise ApplianceStartError(f"kim-appliance in {data_dir} did not start: {exc}") from exc
        try:
            async with trio.open_nursery() as nursery:
                try:
                    endpoints = await nursery.start(
                        partial(run_appliance, data_dir, ephemeral_ports=True)
                    )
                except Exception as exc:
                    raise ApplianceStartError(
                        f"kim-appliance in {data_dir} did not start: {_describe(exc)}"
                    ) from exc
                app = KimAppliance.from_data_dir(data_dir, endpoints)
                try:
                    yield app
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # one failure (the block's, or the start's) is raised as itself, so that callers
            # and ``asynccontextmanager`` see the exception they expect
            if len(group.exceptions) != 1:
                raise
            failure = group.exceptions[0]
        if failure is not None:
            raise failure
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


async def serve_appliance(
    data_dir: Path | None = None,
    *,
    template: Path | None = None,
    config: Mapping[str, Any] | None = None,
    task_status: trio.TaskStatus[KimAppliance] = trio.TASK_STATUS_IGNORED,
) -> None:
    """:func:`running_appliance` as a task: ``app = await nursery.start(serve_appliance)``
    runs the appliance until the nursery is cancelled (for fixtures that own a nursery)."""
    async with running_appliance(data_dir, template=template, config=config) as app:
        task_status.started(app)
        await trio.sleep_forever()


# -- helpers ----------------------------------------------------------------------------------


async def _start_and_stop(data_dir: Path) -> None:
    from kim_appliance.appliance import run_appliance

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_appliance, data_dir, ephemeral_ports=True))
        nursery.cancel_scope.cancel()


async def _fast_logins(data_dir: Path) -> None:
    """The demo passwords as fast test hashes, written through the appliance's store."""
    from kim_appliance.store import open_store

    demo = json.loads((data_dir / "demo.json").read_text(encoding="utf-8"))
    async with open_store(None, data_dir) as store:
        for p in demo["participants"]:
            if await store.accounts.get(p["address"]) is not None:
                await store.accounts.update(p["address"], password_hash=fast_hash(p["password"]))


def fast_hash(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` as kim_appliance.store.passwords writes it, with n = 2**10
    (test data only: see :func:`make_template`)."""
    n, r, p, salt = 2**10, 8, 1, os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def _describe(exc: BaseException) -> str:
    """An exception as one line, looking into exception groups for the first leaf."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _rebase(value: Any, old: str, new: str) -> Any:
    """``value`` with every string path under ``old`` moved under ``new``."""
    if isinstance(value, str):
        if value == old or value.startswith(old + os.sep):
            return new + value[len(old) :]
        return value
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    return value


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


def _toml(data: Mapping[str, Any]) -> str:
    """The subset of TOML config.toml uses: scalars, arrays of scalars, tables, arrays of
    tables."""
    lines: list[str] = []
    _toml_table(data, (), lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_table(table: Mapping[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    where = ".".join(path) or "config"
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, list[Mapping[str, Any]]]] = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value, f'{where}.{key}')}")
    for key, sub in tables:
        lines += ["", "[" + ".".join(_toml_key(k) for k in (*path, key)) + "]"]
        _toml_table(sub, (*path, key), lines)
    for key, items in arrays:
        for item in items:
            lines += ["", "[[" + ".".join(_toml_key(k) for k in (*path, key)) + "]]"]
            _toml_table(item, (*path, key), lines)


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    raise TypeError(f"config {where}: a {type(value).__name__} cannot be written to config.toml")
