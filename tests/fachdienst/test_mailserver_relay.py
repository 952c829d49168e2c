"""The relay keeps its mutual-TLS connection to the other Fachdienst open between messages
(issue 7) and opens a new one when the other side has closed it, without losing a message; a
relay attempt repeated after the other side's 250 is delivered once (issue 11)."""

from __future__ import annotations

import logging

import pytest
import trio
from fd_support import FD1, FD2, Running, StartAppliance, make_message, smtp_send, wait_for_mail

from kim_appliance.fachdienst import relay
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.store import RelayEntry

FD2_LOGGER = "kim_appliance.fachdienst.fd2"
FD1_LOGGER = "kim_appliance.fachdienst.fd1"


def _relay_sessions_at_fd2(caplog: pytest.LogCaptureFixture) -> int:
    """SMTP connections FD2 accepted from another Fachdienst (C.FD.TLS-C client)."""
    return sum(
        1
        for r in caplog.records
        if r.name == FD2_LOGGER and "connected (Fachdienst" in r.getMessage()
    )


async def _relay_one(app: Running, subject: str) -> None:
    sender = app.participant("praxis.weber")["address"]
    to = app.participant("apotheke.sonne")["address"]
    data = make_message(sender, to, subject=subject)
    refused = await trio.to_thread.run_sync(smtp_send, app, FD1, "praxis.weber", [to], data)
    assert refused == {}
    [got] = await wait_for_mail(app, FD2, "apotheke.sonne", timeout=30)
    assert got.endswith(data)


async def test_two_relayed_messages_share_one_tls_connection(
    appliance: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """Relay to the other provider (digest §3.2, "relayed by MX") over mutual TLS with
    C.FD.TLS-C (digest §2.9): two messages from fd1 to fd2, one after the other, arrive byte
    for byte over a single TLS connection (RSET between them), not one handshake each."""
    caplog.set_level(logging.INFO, logger="kim_appliance")
    await _relay_one(appliance, "erste")
    await _relay_one(appliance, "zweite")
    assert _relay_sessions_at_fd2(caplog) == 1
    opened = [r for r in caplog.records if r.name == FD1_LOGGER and "relay connection" in r.msg]
    assert len(opened) == 1, [r.getMessage() for r in opened]


@pytest.mark.slow
async def test_connection_closed_by_the_other_side_is_reopened(
    start_appliance: StartAppliance, caplog: pytest.LogCaptureFixture
) -> None:
    """fd2 closes the idle relay connection (its session timeout, 421 4.4.2); the next
    message finds that out by the RSET, opens a new connection and arrives exactly once."""
    app = await start_appliance({"session_timeout_seconds": 3})
    caplog.set_level(logging.INFO, logger="kim_appliance")
    await _relay_one(app, "vorher")
    await trio.sleep(4.5)  # fd2's idle timeout closes the pooled connection meanwhile
    await _relay_one(app, "nachher")
    assert _relay_sessions_at_fd2(caplog) == 2
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1, dropped
    assert "reconnecting" in dropped[0]
    # nothing left over: no second copy, nothing still queued for a retry
    await trio.sleep(0.5)
    assert await wait_for_mail(app, FD2, "apotheke.sonne", count=0) == []


async def test_an_attempt_repeated_after_the_250_is_delivered_once(
    start_appliance: StartAppliance,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exactly once between Fachdienste (issue 11): fd2 has answered 250 but fd1 dies before it
    removes the queue entry; here its bookkeeping fails once, which leaves the entry queued as
    the crash would. fd1 relays it again with the same KIM-Relay-ID, fd2 recognises it and
    stores no second copy."""
    real_settle = relay._settle
    failed: list[int] = []

    def settle_fails_once(fd: Fachdienst, entry: RelayEntry, outcome: relay._Outcome) -> object:
        if not failed and outcome.delivered:
            failed.append(entry.id)
            raise RuntimeError("killed between the remote 250 and relay_attempted")
        return real_settle(fd, entry, outcome)

    monkeypatch.setattr(relay, "_settle", settle_fails_once)
    app = await start_appliance({"relay_retry_seconds": [1]})
    caplog.set_level(logging.INFO, logger="kim_appliance")
    sender = app.participant("praxis.weber")["address"]
    to = app.participant("apotheke.sonne")["address"]
    data = make_message(sender, to, subject="einmal")
    assert await trio.to_thread.run_sync(smtp_send, app, FD1, "praxis.weber", [to], data) == {}
    with trio.fail_after(30):
        while not any("repeated: already delivered" in r.getMessage() for r in caplog.records):
            await trio.sleep(0.05)
    assert failed
    [got] = await wait_for_mail(app, FD2, "apotheke.sonne", timeout=30)
    assert got.endswith(data)
    assert b"\r\nKIM-Relay-ID: <" in got[: got.find(data)]
    await trio.sleep(1.5)  # a third attempt would have come by now
    assert await wait_for_mail(app, FD2, "apotheke.sonne", count=0) == []
