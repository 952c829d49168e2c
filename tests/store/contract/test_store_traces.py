"""Contract: the message traces (issue 15, `store.traces`) on every backend: events linked by
their ids into one trace, found from any of them, searched by sender and recipient, kept until
their expiry, and durable."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import pytest
import trio

from kim_appliance.observe import Stage, TraceEvent, message_key, relay_key, stored_key
from kim_appliance.store import Store

NOW = datetime(2025, 7, 1, 8, tzinfo=UTC)
KEEP = timedelta(days=90)
PVS_ID = message_key("<pvs-1@praxis.example>")
KIM_ID = message_key("<kim-1@kim>")
RELAY = relay_key("0123456789abcdef0123456789abcdef")
SENDER = "Praxis.Weber@fd1.kim.telematik-test"
RECIPIENT = "praxis.berg@fd2.kim.telematik-test"
Opener = Callable[[], AbstractAsyncContextManager[Store]]


def event(
    stage: Stage,
    ids: tuple[str, ...],
    *,
    minutes: int = 0,
    component: str = "clientmodul",
    sender: str | None = SENDER,
    recipients: tuple[str, ...] = (RECIPIENT,),
    keep: timedelta = KEEP,
    **fields: object,
) -> TraceEvent:
    at = NOW + timedelta(minutes=minutes)
    return TraceEvent(
        at=at,
        node="local",
        component=component,
        stage=stage,
        message_ids=ids,
        expires_at=at + keep,
        sender=sender,
        recipients=recipients,
        **fields,  # type: ignore[arg-type]
    )


def one_message() -> list[TraceEvent]:
    """The hops of one message from the PVS to the recipient's Fachdienst and back out."""
    return [
        event(Stage.ACCEPTED, (PVS_ID,), size=1200),
        event(
            Stage.SEALED,
            (KIM_ID, PVS_ID),
            minutes=1,
            size=5400,
            facts={"keys": "RSA-2048,brainpoolP256r1", "transport": "direct"},
        ),
        event(Stage.ACCEPTED, (KIM_ID,), minutes=2, component="fachdienst fd1", result="250"),
        event(Stage.QUEUED, (KIM_ID, RELAY), minutes=2, component="fachdienst fd1"),
        event(Stage.RELAYED, (RELAY,), minutes=3, component="fachdienst fd1", result="250"),
        event(Stage.STORED, (KIM_ID, RELAY, stored_key(7)), minutes=3, component="fachdienst fd2"),
        event(Stage.FETCHED, (stored_key(7),), minutes=4, component="fachdienst fd2", sender=None),
        event(Stage.OPENED, (KIM_ID,), minutes=5, result="00", facts={"integrity": "01"}),
    ]


async def test_every_id_finds_the_whole_trace_oldest_first(store: Store) -> None:
    """The PVS's Message-ID, the KIM Message-ID and the keys the appliance makes (relay entry,
    stored copy) each find every hop, linked through the ids they share."""
    hops = one_message()
    await store.traces.add(hops[:4])
    await store.traces.add(hops[4:])
    for key in (PVS_ID, KIM_ID, RELAY, stored_key(7)):
        found = await store.traces.trace(key, limit=100)
        assert [e.stage for e in found] == [e.stage for e in hops], key
        assert found == hops  # every field comes back as it went in
    assert await store.traces.trace(message_key("<unknown@x>"), limit=100) == []


async def test_a_trace_does_not_swallow_other_messages(store: Store) -> None:
    other = message_key("<other@kim>")
    await store.traces.add(one_message())
    await store.traces.add([event(Stage.SEALED, (other,), minutes=9)])
    assert [e.message_ids for e in await store.traces.trace(other, limit=10)] == [(other,)]
    assert len(await store.traces.trace(PVS_ID, limit=100)) == len(one_message())


async def test_the_limit_keeps_the_oldest_hops(store: Store) -> None:
    await store.traces.add(one_message())
    found = await store.traces.trace(KIM_ID, limit=3)
    assert [e.stage for e in found] == [Stage.ACCEPTED, Stage.SEALED, Stage.ACCEPTED]


async def test_search_by_sender_and_recipient_newest_first(store: Store) -> None:
    """Addresses match in any case; both filters together must both hold."""
    await store.traces.add(one_message())
    other = event(
        Stage.ACCEPTED,
        (message_key("<2@x>"),),
        minutes=30,
        sender="someone@fd2.kim.telematik-test",
        recipients=(SENDER,),
    )
    await store.traces.add([other])
    by_sender = await store.traces.search(sender=SENDER.upper(), limit=50)
    assert len(by_sender) == len(one_message()) - 1  # the FETCHED hop names no sender
    assert by_sender[0].stage is Stage.OPENED  # newest first
    assert by_sender[-1].stage is Stage.ACCEPTED
    assert await store.traces.search(recipient=SENDER.lower(), limit=50) == [other]
    both = await store.traces.search(sender=SENDER, recipient=RECIPIENT, limit=2)
    assert [e.stage for e in both] == [Stage.OPENED, Stage.STORED]  # FETCHED: no sender
    assert await store.traces.search(sender="nobody@x", limit=50) == []
    with pytest.raises(ValueError, match="sender or a recipient"):
        await store.traces.search(limit=5)


async def test_expire_forgets_what_has_passed_its_retention(store: Store) -> None:
    """Kept with the mail's retention (dataTimeToLive): an event goes at its expires_at, its
    keys with it, and the rest of the trace stays findable."""
    short = event(Stage.DSN, (KIM_ID,), minutes=6, keep=timedelta(days=10))
    await store.traces.add([*one_message(), short])
    assert await store.traces.expire(NOW + timedelta(days=9)) == 0
    assert await store.traces.expire(NOW + timedelta(days=10, minutes=6)) == 1
    assert short not in await store.traces.trace(KIM_ID, limit=100)
    assert await store.traces.expire(NOW + timedelta(days=91)) == len(one_message())
    assert await store.traces.trace(PVS_ID, limit=100) == []
    assert await store.traces.search(sender=SENDER, limit=10) == []


async def test_traces_survive_a_reopen(opener: Opener) -> None:
    async with opener() as store:
        await store.traces.add(one_message())
    async with opener() as store:
        assert len(await store.traces.trace(RELAY, limit=100)) == len(one_message())


async def test_concurrent_batches_are_all_kept(store: Store) -> None:
    """Recorders of several components write at once; no batch is lost."""

    async def write(n: int) -> None:
        key = message_key(f"<m{n}@kim>")
        await store.traces.add([event(Stage.SEALED, (key,)), event(Stage.SUBMITTED, (key,))])

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(write, n)
    for n in range(8):
        assert len(await store.traces.trace(message_key(f"<m{n}@kim>"), limit=10)) == 2
