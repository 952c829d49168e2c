"""The relay queue: mail for other Fachdienste waits here until relayed (digest §3.2), and
the relay ids that make a repeated relay attempt deliver nothing twice (issue 11)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from store_helpers import address, body_for

from kim_appliance.store import (
    RelayEntryNotFound,
    RelayRecipient,
    SQLiteMailStore,
    StoredMessage,
)
from kim_appliance.store.sqlite import RELAY_ID_KEEP

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


def test_relay_id_is_random_and_kept_across_attempts(store: SQLiteMailStore) -> None:
    """Exactly-once relay (issue 11): every entry has its own random relay id (32 hex digits)
    and keeps it when an attempt is recorded, so the receiving Fachdienst recognises a repeat."""
    first, second = _enqueue(store, b"one"), _enqueue(store, b"two")
    ids = {e.id: e.relay_id for e in store.due_relays(T0)}
    assert len(set(ids.values())) == 2
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in ids.values())
    store.relay_attempted(first, next_attempt=T0 + timedelta(seconds=30), error="451")
    again = {e.id: e.relay_id for e in store.due_relays(T0 + timedelta(minutes=1))}
    assert again == ids
    assert second in again


def test_done_recipients_leave_the_entry_in_the_same_step(store: SQLiteMailStore) -> None:
    """A partly delivered entry keeps its id and relay id with only the recipients still
    pending (issue 11: the old split into a new entry was two transactions, and a crash
    between them relayed the rest twice)."""
    entry_id = _enqueue(store, b"partly")
    [before] = store.due_relays(T0)
    store.relay_attempted(
        entry_id,
        next_attempt=T0 + timedelta(seconds=30),
        error="451 4.2.1 try later",
        done=[f"DR.X@{REMOTE}"],  # compared case-insensitively
    )
    [after] = store.due_relays(T0 + timedelta(minutes=1))
    assert (after.id, after.relay_id, after.attempts) == (entry_id, before.relay_id, 1)
    assert after.recipients == (RelayRecipient(f"dr.y@{REMOTE}", None, None),)
    with pytest.raises(ValueError, match="every recipient is done"):
        store.relay_attempted(
            entry_id, next_attempt=T0 + timedelta(hours=1), error=None, done=[f"dr.y@{REMOTE}"]
        )
    [unchanged] = store.due_relays(T0 + timedelta(minutes=1))
    assert unchanged == after


def test_deliver_with_a_relay_id_stores_each_mailbox_once(store: SQLiteMailStore) -> None:
    """The receiving side of exactly-once relay: a second delivery with the same relay id
    stores nothing for the mailboxes that have it (and frees its blob), and still delivers to
    a mailbox that did not get it the first time; another relay id is a new message."""
    rid = "<" + "ab" * 16 + "@fd1.kim.telematik-test>"
    _, first = put_relayed(store, b"relayed", [address("alice")], rid)
    assert [m.mailbox for m in first] == [address("alice")]
    _, repeat = put_relayed(store, b"relayed", [address("alice"), address("bob")], rid)
    assert [m.mailbox for m in repeat] == [address("bob")]
    _, nothing = put_relayed(store, b"relayed", [address("ALICE")], rid)
    assert nothing == []
    assert len(store.list_messages(address("alice"))) == 1
    assert len(store.list_messages(address("bob"))) == 1
    assert _files(store) == 2  # the repeats' blobs were released, not kept
    _, other = put_relayed(store, b"relayed", [address("alice")], rid.replace("ab", "cd"))
    assert len(other) == 1


def test_expire_forgets_old_relay_ids(store: SQLiteMailStore) -> None:
    """Relay ids are kept RELAY_ID_KEEP (14 days): far longer than a sender retries."""
    rid = "<" + "ef" * 16 + "@fd1.kim.telematik-test>"
    with store.new_blob() as w:
        w.write(b"old")
        store.deliver(w.commit(), [(address("carol"), b"P:")], now=T0, relay_id=rid)
    store.expire(T0 + RELAY_ID_KEEP - timedelta(seconds=1))
    assert put_relayed(store, b"old", [address("carol")], rid)[1] == []
    store.expire(T0 + RELAY_ID_KEEP + timedelta(seconds=1))
    assert len(put_relayed(store, b"old", [address("carol")], rid)[1]) == 1


def put_relayed(
    store: SQLiteMailStore, body: bytes, mailboxes: list[str], relay_id: str
) -> tuple[object, list[StoredMessage]]:
    with store.new_blob() as w:
        w.write(body)
        blob = w.commit()
        return blob, store.deliver(blob, [(m, b"P:") for m in mailboxes], relay_id=relay_id)
