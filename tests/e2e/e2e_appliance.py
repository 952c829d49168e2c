"""A real ``kim-appliance run`` process for the end-to-end tests, and small mail client helpers.

:func:`start` launches ``python -m kim_appliance.cli run --ephemeral-ports`` as a subprocess
with its stderr in a file, and waits (bounded) for a fresh ``endpoints.json``: the contract in
DESIGN.md is all the tests know of the process. The helpers here never reach into the
appliance's modules; they use the files the appliance writes and the standard library's
clients, as a user would. Resource handling: every process started goes through a
:class:`Launcher`, whose ``close`` kills whatever is still running.
"""

from __future__ import annotations

import json
import os
import poplib
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENDPOINTS = "endpoints.json"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def cli(*args: str, cwd: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``kim-appliance ARGS`` to completion (for init and the failing runs)."""
    return subprocess.run(
        [sys.executable, "-m", "kim_appliance.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Appliance:
    """One running ``kim-appliance run`` process and what it told us."""

    data_dir: Path
    process: subprocess.Popen[bytes]
    stderr_path: Path
    endpoints: dict[str, Any]
    started_in: float

    @property
    def demo(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.data_dir / "demo.json").read_text("utf-8"))
        return result

    def participant(self, local: str) -> dict[str, Any]:
        for p in self.demo["participants"]:
            if p["address"].startswith(local + "@"):
                return dict(p)
        raise AssertionError(f"demo.json: no participant {local}@...")

    def fd(self, domain: str, kind: str) -> tuple[str, int]:
        """The (host, port) of a Fachdienst's ``smtp`` or ``pop3`` listener."""
        return split_hostport(self.endpoints["fachdienste"][domain][kind])

    def fd_of(self, participant: dict[str, Any], kind: str) -> tuple[str, int]:
        return self.fd(participant["fachdienst"], kind)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly the appliance's ``tls_ca`` (and checks names)."""
        return ssl.create_default_context(cafile=self.endpoints["tls_ca"])

    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8", errors="replace")

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> tuple[int, float]:
        """Send ``signum`` and wait for the exit: (exit code, seconds it took)."""
        begin = time.monotonic()
        self.process.send_signal(signum)
        try:
            code = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"kim-appliance did not exit within {STOP_TIMEOUT} s of {signum.name}; "
                f"stderr:\n{self.stderr()[-3000:]}"
            ) from None
        return code, time.monotonic() - begin

    def kill9(self) -> None:
        self.process.kill()
        self.process.wait(STOP_TIMEOUT)


@dataclass
class Launcher:
    """Starts appliances and makes sure none outlives the test."""

    log_dir: Path
    started: list[Appliance] = field(default_factory=list)

    def start(self, data_dir: Path, *extra: str, timeout: float = START_TIMEOUT) -> Appliance:
        """Start ``run --ephemeral-ports --data-dir DATA_DIR`` and wait for a new endpoints.json.

        A file left by a killed run does not count: the wait is for a file written after the
        start (``os.replace`` gives it a new inode). With ``--node NAME`` among ``extra`` the
        file is ``endpoints-NAME.json`` (a node of several sharing one store).
        """
        endpoints_file = data_dir / ENDPOINTS
        if "--node" in extra:
            endpoints_file = data_dir / f"endpoints-{extra[extra.index('--node') + 1]}.json"
        before = _identity(endpoints_file)
        stderr_path = self.log_dir / f"run-{len(self.started)}.stderr"
        begin = time.monotonic()
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kim_appliance.cli",
                    "run",
                    "--ephemeral-ports",
                    "--data-dir",
                    str(data_dir),
                    *extra,
                ],
                cwd=self.log_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        app = Appliance(data_dir, process, stderr_path, {}, 0.0)
        self.started.append(app)
        deadline = begin + timeout
        while True:
            identity = _identity(endpoints_file)
            if identity is not None and identity != before:
                # written atomically: whenever the file is there, it is complete JSON
                app.endpoints = json.loads(endpoints_file.read_text("utf-8"))
                app.started_in = time.monotonic() - begin
                return app
            if process.poll() is not None:
                raise AssertionError(
                    f"kim-appliance run exited with {process.returncode} before writing "
                    f"{ENDPOINTS}; stderr:\n{app.stderr()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {ENDPOINTS} after {timeout} s; stderr:\n{app.stderr()[-3000:]}"
                )
            time.sleep(0.02)

    def close(self) -> None:
        for app in self.started:
            if app.process.poll() is None:
                app.process.kill()
                app.process.wait()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def tls_greeting(host: str, port: int, context: ssl.SSLContext, timeout: float = 10.0) -> bytes:
    """Connect with implicit TLS, verify the server, and return the first line it sends."""
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        line = b""
        while not line.endswith(b"\n"):
            chunk = tls.recv(1024)
            if not chunk:
                break
            line += chunk
        return line


def mail(sender: str, to: str, message_id: str, body: bytes, subject: str = "Befund") -> bytes:
    """A CRLF mail with the given body (which must use CRLF line ends and end with CRLF)."""
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{message_id}>\r\nDate: Mon, 02 Jun 2025 10:00:00 +0200\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    return head.encode("ascii") + body


def smtp_send(app: Appliance, sender: dict[str, Any], to: list[str], data: bytes) -> None:
    host, port = app.fd_of(sender, "smtp")
    with smtplib.SMTP_SSL(host, port, context=app.ssl_context(), timeout=30) as smtp:
        smtp.login(sender["address"], sender["password"])
        refused = smtp.sendmail(sender["address"], to, data)
        assert not refused, f"recipients refused: {refused}"


def pop3_fetch(app: Appliance, who: dict[str, Any], *, delete: bool = False) -> list[bytes]:
    """Every message in ``who``'s mailbox, as the bytes poplib gives back (CRLF lines)."""
    host, port = app.fd_of(who, "pop3")
    pop = poplib.POP3_SSL(host, port, context=app.ssl_context(), timeout=30)
    try:
        pop.user(who["address"])
        pop.pass_(who["password"])
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


_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^>]+)>", re.IGNORECASE | re.MULTILINE)


def message_id_of(message: bytes) -> str | None:
    head = message[: message.find(b"\r\n\r\n") + 2]
    match = _MESSAGE_ID.search(head)
    return match.group(1).decode("ascii") if match else None


def trace_prefix_of(stored: bytes, sent: bytes, sender: str) -> bytes:
    """The prefix the Fachdienst added to ``sent``; fails unless it is Return-Path + Received."""
    assert stored.endswith(sent), (
        f"stored message ({len(stored)} bytes) does not end with the {len(sent)} bytes sent"
    )
    prefix = stored[: len(stored) - len(sent)]
    assert prefix.startswith(f"Return-Path: <{sender}>\r\nReceived: ".encode()), prefix[:200]
    assert prefix.endswith(b"\r\n"), prefix
    assert b"\r\n\r\n" not in prefix, f"the prefix holds an empty line: {prefix!r}"
    return prefix


# --- the Clientmodul as a practice system (PVS) sees it -----------------------------------------


def cm_send(
    app: Appliance,
    sender: dict[str, Any],
    to: list[str],
    data: bytes,
    *,
    mail_from: str | None = None,
    timeout: float = 120,
) -> dict[str, tuple[int, bytes]]:
    """Send ``data`` through the Clientmodul with the sender's demo.json SMTP username; returns
    smtplib's refused-recipients dict (raises on a refused message)."""
    host, port = split_hostport(app.endpoints["clientmodul"]["smtp"])
    with smtplib.SMTP_SSL(host, port, context=app.ssl_context(), timeout=timeout) as smtp:
        smtp.login(sender["smtp_username"], sender["password"])
        return smtp.sendmail(mail_from or sender["address"], to, data)


def cm_fetch(
    app: Appliance, who: dict[str, Any], *, delete: bool = True, timeout: float = 120
) -> list[bytes]:
    """Every message in ``who``'s mailbox as the Clientmodul delivers it (RETR, CRLF lines);
    deleted afterwards unless ``delete`` is false. Checks that LIST sizes match RETR."""
    host, port = split_hostport(app.endpoints["clientmodul"]["pop3"])
    pop = poplib.POP3_SSL(host, port, context=app.ssl_context(), timeout=timeout)
    try:
        pop.user(who["pop3_username"])
        pop.pass_(who["password"])
        count, _ = pop.stat()
        out = []
        for n in range(1, count + 1):
            _, lines, octets = pop.retr(n)
            data = b"\r\n".join(lines) + b"\r\n"
            assert len(data) == octets, f"RETR {n}: {len(data)} octets, the reply said {octets}"
            out.append(data)
            if delete:
                pop.dele(n)
        return out
    finally:
        pop.quit()


def cm_wait(app: Appliance, who: dict[str, Any], count: int, *, wait: float = 120.0) -> list[bytes]:
    """Fetch (and delete) through the Clientmodul until ``count`` messages have come; fails
    with what arrived when they do not come within ``wait`` seconds (relay is asynchronous)."""
    got: list[bytes] = []
    deadline = time.monotonic() + wait
    while True:
        got.extend(cm_fetch(app, who))
        if len(got) >= count:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{who['address']}: {len(got)} of {count} messages after {wait} s: "
                f"{[m[:300] for m in got]}"
            )
        time.sleep(0.3)


def konnektor_faults(app: Appliance, **switches: Any) -> dict[str, Any]:
    """POST ``switches`` to the Konnektor admin API (endpoints.json ``konnektor.admin``, with
    the data dir's admin token); the answer is the fault status. Without switches: GET it."""
    import urllib.request

    url = app.endpoints["konnektor"]["admin"]
    token = (app.data_dir / "admin-token").read_text(encoding="ascii").strip()
    data = json.dumps(switches).encode() if switches else None
    request = urllib.request.Request(
        url, data=data, method="POST" if data else "GET",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )  # fmt: skip
    with urllib.request.urlopen(request, context=app.ssl_context(), timeout=30) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def restore_card(app: Appliance, iccsn: str) -> None:
    """Insert the card again and have its PIN verified (a pulled card loses the verified
    state, as a real one does; the practice enters the PIN again)."""
    pin = {"iccsn": iccsn, "status": "VERIFIED"}
    konnektor_faults(app, card_inserted=iccsn, pin_status=pin)


def curl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run the system ``curl`` (the PVS of a vendor using libcurl)."""
    return subprocess.run(
        ["curl", "--silent", "--show-error", *args],
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def _curl_url(app: Appliance, kind: str, username: str, password: str, path: str = "") -> str:
    """``smtps://`` or ``pop3s://`` URL of the Clientmodul with the credentials in it: the CM
    username holds ``host:port``, and curl's ``--user`` would split it at that colon, so the
    credentials go percent-encoded into the URL (curl decodes them)."""
    from urllib.parse import quote

    host, port = split_hostport(app.endpoints["clientmodul"][kind])
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    return f"{kind}s://{userinfo}@{host}:{port}{path}"


def curl_send(app: Appliance, sender: dict[str, Any], to: list[str], mail_file: Path) -> None:
    """``curl smtps://`` through the Clientmodul with the sender's SMTP username."""
    rcpts = [arg for address in to for arg in ("--mail-rcpt", address)]
    done = curl(
        _curl_url(app, "smtp", sender["smtp_username"], sender["password"]),
        "--cacert", app.endpoints["tls_ca"],
        "--mail-from", sender["address"],
        *rcpts,
        "--upload-file", str(mail_file),
    )  # fmt: skip
    assert done.returncode == 0, f"curl smtps: {done.returncode} {done.stderr.decode()}"


def curl_fetch(app: Appliance, who: dict[str, Any], number: int) -> bytes:
    """``curl pop3s://.../N``: RETR of message ``number`` through the Clientmodul."""
    done = curl(
        _curl_url(app, "pop3", who["pop3_username"], who["password"], f"/{number}"),
        "--cacert", app.endpoints["tls_ca"],
    )  # fmt: skip
    assert done.returncode == 0, f"curl pop3s: {done.returncode} {done.stderr.decode()}"
    return done.stdout


def curl_list(app: Appliance, who: dict[str, Any]) -> list[tuple[int, int]]:
    """``curl pop3s://``: the LIST of ``who``'s mailbox through the Clientmodul."""
    done = curl(
        _curl_url(app, "pop3", who["pop3_username"], who["password"], "/"),
        "--cacert", app.endpoints["tls_ca"],
    )  # fmt: skip
    assert done.returncode == 0, f"curl pop3s LIST: {done.returncode} {done.stderr.decode()}"
    return [
        (int(n), int(size))
        for n, size in (line.split() for line in done.stdout.decode().splitlines() if line)
    ]


def private_appliance(template: Path, root: Path, *extra: str) -> tuple[Launcher, Appliance]:
    """A copy of the template data dir under ``root`` and an appliance running on it (for
    module-scoped fixtures; the caller closes the launcher)."""
    import shutil

    data_dir = root / "kim-data"
    shutil.copytree(template, data_dir)
    log_dir = root / "logs"
    log_dir.mkdir()
    launcher = Launcher(log_dir)
    try:
        return launcher, launcher.start(data_dir, *extra)
    except BaseException:
        launcher.close()
        raise
