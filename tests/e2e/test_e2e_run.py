"""``kim-appliance run`` as a user starts it: a subprocess, endpoints.json, signals, restarts
(the contract in DESIGN.md; issue 3 §1)."""

from __future__ import annotations

import json
import os
import signal
import ssl
from pathlib import Path

import pytest
from e2e_appliance import (
    ENDPOINTS,
    Launcher,
    cli,
    mail,
    pop3_fetch,
    smtp_send,
    split_hostport,
    tls_greeting,
    trace_prefix_of,
)

FD1 = "fd1.kim.telematik-test"


def _check_every_listener(endpoints: dict[str, object]) -> None:
    """Every SMTP/POP3 listener of every Fachdienst greets over TLS verified with tls_ca."""
    tls_ca = endpoints["tls_ca"]
    assert isinstance(tls_ca, str)
    context = ssl.create_default_context(cafile=tls_ca)
    fachdienste = endpoints["fachdienste"]
    assert isinstance(fachdienste, dict)
    for domain, listeners in fachdienste.items():
        for kind, greeting in (("smtp", b"220 "), ("pop3", b"+OK")):
            host, port = split_hostport(listeners[kind])
            assert host == "127.0.0.1", f"{domain} {kind}: bound to {host}, not 127.0.0.1"
            line = tls_greeting(host, port, context)
            assert line.startswith(greeting), f"{domain} {kind} greeted {line!r}"


@pytest.mark.slow
def test_first_run_on_empty_dir_initialises_and_publishes_endpoints(
    tmp_path: Path, launcher: Launcher
) -> None:
    """On an empty data dir ``run`` makes the demo setup, and endpoints.json appears only when
    every listener is bound: each port listed answers over TLS verified with ``tls_ca`` alone
    (KOM-LE-A_2142 ports, KOM-LE-A_2143/KOM-LE-A_2144 TLS)."""
    data_dir = tmp_path / "empty"
    data_dir.mkdir()
    app = launcher.start(data_dir)
    endpoints = app.endpoints
    # the listeners are up the moment the file is there
    _check_every_listener(endpoints)
    assert Path(endpoints["tls_ca"]).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    domains = set(endpoints["fachdienste"])
    assert len(domains) >= 2, domains
    assert all(d.endswith(".kim.telematik-test") for d in domains), domains
    demo = json.loads((data_dir / "demo.json").read_text("utf-8"))
    assert len(demo["participants"]) >= 4
    assert {p["fachdienst"] for p in demo["participants"]} <= domains
    assert not (data_dir / (ENDPOINTS + ".tmp")).exists(), "temp file of the atomic write left"


def test_tls_ca_is_needed_to_trust_the_listeners(data_dir: Path, launcher: Launcher) -> None:
    """KOM-LE-A_2143/KOM-LE-A_2144: the servers present certificates of the test TLS CA; a client
    with the system trust store refuses them, a client with ``tls_ca`` accepts every one."""
    app = launcher.start(data_dir)
    _check_every_listener(app.endpoints)
    host, port = app.fd(FD1, "smtp")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_greeting(host, port, ssl.create_default_context())


@pytest.mark.parametrize(
    "signum", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
)
def test_signal_stops_cleanly_and_removes_endpoints(
    data_dir: Path, launcher: Launcher, signum: signal.Signals
) -> None:
    """SIGTERM and Ctrl-C (SIGINT) end ``run`` with exit code 0 within seconds, without a
    traceback, and endpoints.json is gone (no stale ports for the next caller)."""
    app = launcher.start(data_dir)
    code, took = app.stop(signum)
    assert code == 0, f"exit code {code} after {signum.name}; stderr:\n{app.stderr()[-2000:]}"
    assert took < 5, f"{signum.name}: took {took:.1f} s to exit"
    assert not (data_dir / ENDPOINTS).exists()
    assert "Traceback" not in app.stderr()


def test_json_logs_are_one_object_per_line(data_dir: Path, launcher: Launcher) -> None:
    """``run --log-format json`` (issue 15): every line of stderr, start to stop, is one JSON
    object with time, level, logger and message; the startup lines name every component."""
    app = launcher.start(data_dir, "--log-format", "json")
    code, _ = app.stop()
    assert code == 0, app.stderr()[-2000:]
    lines = app.stderr().splitlines()
    entries = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    messages = [e["message"] for e in entries]
    assert any(m.startswith("console: http://127.0.0.1:") for m in messages), messages
    assert any(m.startswith("kim-appliance running") for m in messages), messages
    assert any("SIGTERM received" in m for m in messages), messages


def test_restart_keeps_accounts_and_messages(data_dir: Path, launcher: Launcher) -> None:
    """A second start on the same data dir keeps the accounts (same passwords) and the stored
    messages (KOM-LE-A_2152: UIDs stay); the demo setup is not made again."""
    app = launcher.start(data_dir)
    weber, klein = app.participant("praxis.weber"), app.participant("zahnarzt.klein")
    sent = mail(weber["address"], klein["address"], "restart-1@e2e", b"Bleibt erhalten.\r\n")
    smtp_send(app, weber, [klein["address"]], sent)
    before = pop3_fetch(app, klein)
    demo_before = (data_dir / "demo.json").read_bytes()
    assert app.stop()[0] == 0

    again = launcher.start(data_dir)
    assert (data_dir / "demo.json").read_bytes() == demo_before
    after = pop3_fetch(again, klein)
    assert after == before
    trace_prefix_of(after[0], sent, weber["address"])


def test_restart_after_kill_publishes_fresh_endpoints(data_dir: Path, launcher: Launcher) -> None:
    """After a kill -9 the old endpoints.json stays behind, carrying the pid of the dead run (a
    waiting script can tell it is stale); the next run replaces it with one whose ports answer
    and whose pid is the new process's, and still removes it on a clean stop."""
    first = launcher.start(data_dir)
    assert first.endpoints["pid"] == first.process.pid
    first.kill9()
    stale = json.loads((data_dir / ENDPOINTS).read_text(encoding="utf-8"))
    assert stale["pid"] == first.process.pid
    with pytest.raises(ProcessLookupError):
        os.kill(stale["pid"], 0)
    second = launcher.start(data_dir)
    assert second.endpoints["pid"] == second.process.pid
    _check_every_listener(second.endpoints)
    assert second.stop()[0] == 0
    assert not (data_dir / ENDPOINTS).exists()


def test_second_run_on_same_dir_is_refused(data_dir: Path, launcher: Launcher) -> None:
    """A second ``run`` on a data dir in use exits non-zero, says the dir is in use (no
    traceback) and leaves the first run's endpoints.json alone."""
    app = launcher.start(data_dir)
    done = cli("run", "--ephemeral-ports", "--data-dir", str(data_dir), cwd=data_dir.parent)
    assert done.returncode != 0
    assert "in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert json.loads((data_dir / ENDPOINTS).read_text("utf-8")) == app.endpoints
    _check_every_listener(app.endpoints)
