"""The relay queue: mail for other Fachdienste waits here until relayed (digest §3.2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from store_helpers import address, body_for

from kim_appliance.store import RelayEntryNotFound, RelayRecipient, SQLiteMailStore

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
REMOTE = "test2.kim.telematik-test"
NOTIFY = frozenset({"SUCCESS", "FAILURE"})


def _enqueue(store: SQLiteMailStore, body: bytes, *, local: bool = False) -> int:
    recipients = [
        RelayRecipient(f"dr.x@{REMOTE}", NOTIFY, f"rfc822;dr.x@{REMOTE}"),
        RelayRecipient(f"dr.y@{REMOTE}"),
    ]
    with store.new_blob() as w:
        w.write(body)
        blob = w.commit()
        if local:
            store.deliver(blob, [(address("alice"), b"L:")])
        entry = store.enqueue_relay(
            blob,
            sender=address("bob"),
            recipients=recipients,
            envid="env-1",
            ret="HDRS",
            domain=REMOTE.upper(),
            not_after=T0 + timedelta(days=5),
            now=T0,
        )
    return entry.id


def _files(store: SQLiteMailStore) -> int:
    return sum(1 for p in store.files.root.glob("??/*"))


def test_lifecycle_due_reschedule_done(store: SQLiteMailStore) -> None:
    body = body_for("relay", 50_000)
    entry_id = _enqueue(store, body)
    assert store.due_relays(T0 - timedelta(seconds=1)) == []
    [entry] = store.due_relays(T0)
    assert entry.id == entry_id
    assert entry.attempts == 0
    assert entry.last_error is None
    assert entry.domain == REMOTE
    assert entry.sender == address("bob")
    assert entry.envid == "env-1"
    assert entry.ret == "HDRS"
    assert entry.not_after == T0 + timedelta(days=5)
    assert entry.recipients == (
        RelayRecipient(f"dr.x@{REMOTE}", NOTIFY, f"rfc822;dr.x@{REMOTE}"),
        RelayRecipient(f"dr.y@{REMOTE}", None, None),
    )
    with store.open_blob(entry.blob) as stream:
        assert stream.read() == body

    store.relay_attempted(entry_id, next_attempt=T0 + timedelta(minutes=5), error="421 4.3.2 busy")
    assert store.due_relays(T0 + timedelta(minutes=4)) == []
    [again] = store.due_relays(T0 + timedelta(minutes=5))
    assert again.attempts == 1
    assert again.last_error == "421 4.3.2 busy"

    store.relay_attempted(entry_id, next_attempt=None, error=None)
    assert store.due_relays(T0 + timedelta(days=10)) == []
    assert _files(store) == 0
    with pytest.raises(RelayEntryNotFound):
        store.relay_attempted(entry_id, next_attempt=None, error=None)


def test_blob_shared_by_mailbox_and_queue(store: SQLiteMailStore) -> None:
    """The blob stays while either the local message or the queue entry needs it."""
    entry_id = _enqueue(store, b"both", local=True)
    [msg] = store.list_messages(address("alice"))
    store.delete_messages(address("alice"), [msg.id])
    assert _files(store) == 1
    [entry] = store.due_relays(T0)
    with store.open_blob(entry.blob) as stream:
        assert stream.read() == b"both"
    store.relay_attempted(entry_id, next_attempt=None, error=None)
    assert _files(store) == 0


def test_due_order_and_limit(store: SQLiteMailStore) -> None:
    ids = [_enqueue(store, bytes([i])) for i in range(3)]
    store.relay_attempted(ids[0], next_attempt=T0 + timedelta(seconds=30), error="later")
    later = T0 + timedelta(minutes=1)
    assert [e.id for e in store.due_relays(later)] == [ids[1], ids[2], ids[0]]
    assert [e.id for e in store.due_relays(later, limit=2)] == ids[1:]


def test_bad_dsn_parameters_are_refused(store: SQLiteMailStore) -> None:
    with store.new_blob() as w:
        w.write(b"x")
        blob = w.commit()
        with pytest.raises(ValueError, match="NOTIFY"):
            store.enqueue_relay(
                blob,
                sender=address("bob"),
                recipients=[RelayRecipient("a@b", frozenset({"ALWAYS"}))],
                envid=None,
                ret=None,
                domain=REMOTE,
                not_after=T0,
            )
        with pytest.raises(ValueError, match="ret"):
            store.enqueue_relay(
                blob,
                sender=address("bob"),
                recipients=[RelayRecipient("a@b")],
                envid=None,
                ret="ALL",
                domain=REMOTE,
                not_after=T0,
            )
    assert store.due_relays(T0 + timedelta(days=1)) == []
