"""Contract: accounts (digest §3.2, §3.3), registration with a code, tombstones of purged
accounts (KOM-LE-A_2155, A_19464-02)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import pytest
import trio
from store_helpers import account, address, body_for, prefix_for, put, read

from kim_appliance.store import (
    Account,
    AccountExists,
    AccountNotFound,
    LockoutPolicy,
    OutOfOffice,
    RegistrationCode,
    RegistrationCodeUsed,
    Store,
)

NOW = datetime(2025, 6, 1, tzinfo=UTC)
Opener = Callable[[], AbstractAsyncContextManager[Store]]


async def test_create_and_get_case_insensitive(store: Store) -> None:
    await store.accounts.create(account("Dr.Weber"))
    found = await store.accounts.get(address("dr.weber").upper())
    assert found is not None
    assert found.address == address("Dr.Weber")  # displayed as given
    assert found.telematik_id == "1-SMC-B-Testkarte-Dr.Weber"
    assert await store.accounts.get(address("nobody")) is None


async def test_create_twice_in_other_case_is_refused(store: Store) -> None:
    with pytest.raises(AccountExists, match="account exists"):
        await store.accounts.create(account("ALICE"))
    with pytest.raises(ValueError, match="exists"):  # AccountExists is a ValueError
        await store.accounts.create(account("alice"))


async def test_list_all_and_per_domain(store: Store) -> None:
    """One store holds every Fachdienst's accounts; a Fachdienst lists its own domain's."""
    await store.accounts.create(
        Account("zoe@other.kim.telematik-test", "scrypt$1$1$1$AA$AA", "1-z", "Zoe")
    )
    assert [a.address for a in await store.accounts.list("TEST1.kim.telematik-test")] == [
        address("alice"),
        address("bob"),
        address("carol"),
    ]
    assert len(await store.accounts.list()) == 4
    assert [a.address for a in await store.accounts.list("other.kim.telematik-test")] == [
        "zoe@other.kim.telematik-test"
    ]


async def test_update_fields_roundtrip(store: Store) -> None:
    """KOM-LE-A_2149/2150 status, quota, deregDate and the absence note survive a reread."""
    until = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    note = OutOfOffice(True, until, until + timedelta(days=7), "Urlaub")
    new = await store.accounts.update(
        address("ALICE"),
        status="deregistered",
        dereg_date=until,
        quota_bytes=1_000_000,
        out_of_office=note,
    )
    assert new.status == "deregistered"
    again = await store.accounts.get(address("alice"))
    assert again == new
    assert again is not None
    assert again.dereg_date == until
    assert again.out_of_office == note


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"data_ttl_days": 9}, "data_ttl_days"),
        ({"data_ttl_days": 366}, "data_ttl_days"),
        ({"quota_bytes": -2}, "quota_bytes"),
        ({"status": "gone"}, "status"),
        ({"kim_version": "2.0"}, "kim_version"),
        ({"address": "x@y"}, "no such field"),
        ({"colour": "blue"}, "no such field"),
    ],
)
async def test_update_rejects_bad_values(
    store: Store, changes: dict[str, object], field: str
) -> None:
    """dataTimeToLive 10..365, quota >= -1 (digest §3.2); nothing changes on error."""
    before = await store.accounts.get(address("alice"))
    with pytest.raises(ValueError, match=field):
        await store.accounts.update(address("alice"), **changes)
    assert await store.accounts.get(address("alice")) == before


async def test_update_unknown_account(store: Store) -> None:
    with pytest.raises(AccountNotFound, match="nobody"):
        await store.accounts.update(address("nobody"), quota_bytes=1)


async def test_naive_datetime_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match=r"dereg_date.*time zone"):
        await store.accounts.update(address("alice"), dereg_date=datetime(2030, 1, 1))


async def test_new_ttl_applies_to_stored_messages(store: Store) -> None:
    """dataTimeToLive (digest §3.2): changing it moves the expiry of stored mail too."""
    _, [msg] = await put(store, b"body", [(address("alice"), b"P\r\n")], now=NOW)
    assert msg.expires_at - msg.received_at == timedelta(days=90)
    await store.accounts.update(address("alice"), data_ttl_days=10)
    [again] = await store.mail.list(address("alice"))
    assert again.expires_at - again.received_at == timedelta(days=10)
    assert await store.mail.expire(msg.received_at + timedelta(days=11)) == 1


async def test_registration_uses_its_code_in_the_same_step(store: Store) -> None:
    """registerAccount (digest §3.3): the account and the code's use are one transaction; a
    second registration with the code, even one that raced the first, adds nothing."""
    code = RegistrationCode("test1.kim.telematik-test", "REF-1", "scrypt$1$1$1$AA$AA")
    await store.registrations.put_code(code)
    outcomes: list[str] = []

    async def register(local: str) -> None:
        try:
            await store.accounts.create(account(local), reference_id="REF-1")
            outcomes.append(local)
        except RegistrationCodeUsed:
            outcomes.append("refused")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(register, "neu.eins")
        nursery.start_soon(register, "neu.zwei")
    assert sorted(outcomes)[-1] == "refused"
    [winner] = [o for o in outcomes if o != "refused"]
    used = await store.registrations.get_code("test1.kim.telematik-test", "REF-1")
    assert used is not None
    assert used.used_by == address(winner)
    assert (await store.registrations.code_of(address(winner).upper())) == used
    loser = "neu.zwei" if winner == "neu.eins" else "neu.eins"
    assert await store.accounts.get(address(loser)) is None
    with pytest.raises(RegistrationCodeUsed):
        await store.accounts.create(account("neu.drei"), reference_id="REF-unknown")
    assert await store.accounts.get(address("neu.drei")) is None


async def test_purge_deletes_everything_of_the_account_and_keeps_a_tombstone(
    store: Store,
) -> None:
    """KOM-LE-A_2155: every message of the mailbox, its KAS uploads and reservations, its
    lockout counters and reply ledger go in one step; a message body another mailbox still
    holds stays; the tombstone names the Telematik-ID (A_19464-02)."""
    alt, bleibt = address("alt"), address("bleibt")
    await store.accounts.create(account("alt"))
    await store.accounts.create(account("bleibt"))
    await put(store, body_for("only-alt"), [(alt, prefix_for("1", alt))])
    _, shared = await put(
        store,
        body_for("shared"),
        [(alt, prefix_for("2", alt)), (bleibt, prefix_for("2", bleibt))],
    )
    async with store.blobs.writer(compress=False) as writer:
        await writer.write(b"kas")
        blob = await writer.commit()
        await store.kas.commit(
            blob, reservation_id=None, domain="test1.kim.telematik-test", uploader=alt,
            recipients=[bleibt], message_id="<m>", filename=None,
            expires_at=NOW + timedelta(days=9), now=NOW,
        )  # fmt: skip
    await store.kas.reserve(alt, 10, NOW, timedelta(hours=1))
    await store.autoreplies.remember(alt, bleibt, NOW, NOW)
    await store.logins.record_failure(alt, "192.0.2.1", NOW, LockoutPolicy())
    purged = await store.accounts.purge(alt.upper(), now=NOW)
    assert (purged.messages, purged.attachments) == (2, 1)
    assert await store.accounts.get(alt) is None
    assert await store.kas.uploaders() == set()
    assert await store.logins.state(alt, "192.0.2.1") is None
    assert (await read(store, shared[1].id)).endswith(body_for("shared"))
    assert await store.accounts.retired_telematik_id(address("ALT")) == "1-SMC-B-Testkarte-alt"
    assert await store.accounts.retired_telematik_id(bleibt) is None
    with pytest.raises(AccountNotFound):
        await store.accounts.purge(alt, now=NOW)
    # the address comes back: an account of that name starts empty (same Telematik-ID only:
    # the Account Manager's rule, kim_appliance.fachdienst.account_manager)
    await store.accounts.create(account("alt"))
    assert await store.mail.list(alt) == []
    assert await store.mail.usage(alt, NOW) == 0


async def test_tombstone_survives_a_reopen(opener: Opener) -> None:
    """The retired address is durable: a restart does not give it out again."""
    async with opener() as store:
        await store.accounts.create(account("alt"))
        await store.accounts.purge(address("alt"), now=NOW)
    async with opener() as store:
        assert await store.accounts.retired_telematik_id(address("alt")) == "1-SMC-B-Testkarte-alt"
        assert await store.accounts.list() == []
