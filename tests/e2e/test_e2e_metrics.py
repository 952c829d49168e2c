"""Issue 15 (metrics): ``/metrics`` on the console's port in Prometheus text format, scraped
with a real HTTP client (httpx) and read with the Prometheus client's own parser, after a
message went through, a login failed and a relay target was unreachable."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import httpx
import pytest
from e2e_appliance import Appliance, Launcher, cm_send, cm_wait, mail, split_hostport
from prometheus_client.parser import text_string_to_metric_families

#: a Fachdienst nobody serves: the relay's connection is refused, the entry waits in the queue
NOWHERE = "fd9.kim.telematik-test"


def scrape(app: Appliance) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics: (name, labels) -> value."""
    reply = httpx.get(f"{app.endpoints['console']}metrics", timeout=30)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_messages_sessions_logins_and_the_relay_queue(
    data_dir: Path, launcher: Launcher
) -> None:
    """The Fachdienst's state on request (KOM-LE-A_2138): messages per stage and result code,
    latency histograms per stage, sessions, login failures (KOM-LE-A_2167 counts them per
    client), and the relay queue's depth and age (read from the store at scrape time)."""
    config = data_dir / "config.toml"
    config.write_text(
        config.read_text().replace(
            "[fachdienst.relay_map]\n", f'[fachdienst.relay_map]\n"{NOWHERE}" = "127.0.0.1:1"\n'
        )
    )
    app = launcher.start(data_dir)
    people = app.demo["participants"]
    sender = people[0]
    recipient = next(p for p in people if p["fachdienst"] != sender["fachdienst"])
    fd_a = sender["fachdienst"]
    before = scrape(app)
    assert value(before, "kim_relay_queue_entries", domain=fd_a) == 0
    to = recipient["address"]
    cm_send(app, sender, [to], mail(sender["address"], to, "metrics-1@e2e", b"Hallo\r\n"))
    cm_wait(app, recipient, 1)
    # a wrong password at the sender's Fachdienst, and a message to a Fachdienst that is down
    host, port = app.fd(fd_a, "smtp")
    with smtplib.SMTP_SSL(host, port, context=app.ssl_context(), timeout=30) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = sender["address"], "wrong-password"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.auth("PLAIN", smtp.auth_plain)  # one attempt (login() tries every mechanism)
        smtp.login(sender["address"], sender["password"])
        away = f"praxis@{NOWHERE}"
        smtp.sendmail(sender["address"], [away], mail(sender["address"], away, "m-2@e2e", b"x\r\n"))
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(app)
        deferred = value(
            samples,
            "kim_messages_total",
            component="fachdienst",
            domain=fd_a,
            stage="deferred",
            result="",
        )
        if deferred >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert deferred >= 1
    cm = {"component": "clientmodul", "domain": ""}
    assert value(samples, "kim_messages_total", **cm, stage="submitted", result="250") == 1
    assert value(samples, "kim_messages_total", **cm, stage="opened", result="00") == 1
    assert (
        value(
            samples,
            "kim_messages_total",
            component="fachdienst",
            domain=recipient["fachdienst"],
            stage="stored",
            result="",
        )
        == 1
    )
    assert (
        value(samples, "kim_stage_duration_seconds_count", component="clientmodul", stage="sealed")
        == 1
    )
    assert (
        value(samples, "kim_stage_duration_seconds_count", component="fachdienst", stage="relayed")
        == 1
    )
    assert (
        value(samples, "kim_sessions_started_total", component="clientmodul", protocol="smtp") >= 1
    )
    assert value(samples, "kim_sessions", component="clientmodul", protocol="smtp") == 0
    assert value(samples, "kim_auth_failures_total", domain=fd_a) == 1
    assert value(samples, "kim_relay_queue_entries", domain=fd_a) == 1
    age = value(samples, "kim_relay_queue_oldest_seconds", domain=fd_a)
    assert 0 < age < 120
    assert value(samples, "kim_trace_events_dropped_total") == 0
    time.sleep(0.5)
    assert value(scrape(app), "kim_relay_queue_oldest_seconds", domain=fd_a) > age


def test_metrics_answer_only_the_console_host(data_dir: Path, launcher: Launcher) -> None:
    """/metrics is on the console's listener and behind its Host check like every page."""
    app = launcher.start(data_dir)
    host, port = split_hostport(app.endpoints["console"].removeprefix("http://").rstrip("/"))
    reply = httpx.get(f"http://{host}:{port}/metrics", headers={"Host": "evil.example"})
    assert reply.status_code == 403
    assert "kim_messages" not in reply.text
