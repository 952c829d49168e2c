"""Absence notes: the Fachdienst answers senders while a participant is away (issue 5 §4,
KOM-LE-A_2223, A_2277, A_2278, RFC 3834), through real SMTP/POP3."""

from __future__ import annotations

import datetime as dt
import email
import email.policy

import trio
from fd_support import (
    FD1,
    FD2,
    Prepare,
    StartAppliance,
    make_message,
    pop3_fetch_all,
    smtp_send,
    wait_for_mail,
)

from kim_appliance.store import OutOfOffice, Store

NOTE = "Die Praxis ist bis Montag geschlossen. Vertretung: Dr. Klein."


def _away(address: str, domain: str) -> Prepare:
    async def prepare(store: Store) -> None:
        assert address.endswith("@" + domain)
        now = dt.datetime.now(dt.UTC)
        await store.accounts.update(
            address,
            out_of_office=OutOfOffice(
                active=True,
                start=now - dt.timedelta(days=1),
                end=now + dt.timedelta(days=1),
                message=NOTE,
            ),
        )

    return prepare


async def test_sender_on_the_other_fachdienst_gets_the_note_once(
    start_appliance: StartAppliance,
) -> None:
    """KOM-LE-A_2223, KOM-LE-A_2277, KOM-LE-A_2278: an unsigned, unencrypted reply with the
    note, Auto-Submitted: auto-replied, the Abwesend Dienstkennung, no X-KOM-LE-Version; a
    second mail from the same sender gets no second reply."""
    app = await start_appliance(prepare=_away("dr.meyer@fd2.kim.telematik-test", FD2))
    weber = app.participant("praxis.weber")["address"]
    meyer = app.participant("dr.meyer")["address"]
    first = make_message(weber, meyer, subject="Befund 1")
    await trio.to_thread.run_sync(smtp_send, app, FD1, "praxis.weber", [meyer], first)
    [reply] = await wait_for_mail(app, FD1, "praxis.weber")
    parsed = email.message_from_bytes(reply, policy=email.policy.default)
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["X-KIM-Dienstkennung"] == "KIM-Mail;Abwesend;V1.0"
    assert parsed["X-KOM-LE-Version"] is None
    assert parsed["From"].addresses[0].addr_spec == meyer
    original_id = email.message_from_bytes(first)["Message-ID"]
    assert parsed["In-Reply-To"] == original_id
    body = parsed.get_body(("plain",))
    assert body is not None
    assert NOTE in body.get_content()
    # the note itself arrived for dr.meyer, and a second mail gets no second reply
    await wait_for_mail(app, FD2, "dr.meyer")
    second = make_message(weber, meyer, subject="Befund 2")
    await trio.to_thread.run_sync(smtp_send, app, FD1, "praxis.weber", [meyer], second)
    await wait_for_mail(app, FD2, "dr.meyer")
    await trio.sleep(1.0)
    assert await trio.to_thread.run_sync(pop3_fetch_all, app, FD1, "praxis.weber") == []


async def test_automatic_mail_gets_no_note(start_appliance: StartAppliance) -> None:
    """RFC 3834 §2: no reply to auto-submitted mail (loops between two absent participants)."""
    app = await start_appliance(prepare=_away("zahnarzt.klein@fd1.kim.telematik-test", FD1))
    weber = app.participant("praxis.weber")["address"]
    klein = app.participant("zahnarzt.klein")["address"]
    automatic = make_message(weber, klein, headers={"Auto-Submitted": "auto-generated"})
    await trio.to_thread.run_sync(smtp_send, app, FD1, "praxis.weber", [klein], automatic)
    await wait_for_mail(app, FD1, "zahnarzt.klein")
    await trio.sleep(0.5)
    assert await trio.to_thread.run_sync(pop3_fetch_all, app, FD1, "praxis.weber") == []
