"""Accounts: create, case-insensitive lookup, update with validation (digest §3.2, §3.3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from store_helpers import account, address, put

from kim_appliance.store import (
    AccountExists,
    AccountNotFound,
    OutOfOffice,
    SQLiteMailStore,
)


def test_create_and_get_case_insensitive(plain_store: SQLiteMailStore) -> None:
    plain_store.create_account(account("Dr.Weber"))
    found = plain_store.get_account(address("dr.weber").upper())
    assert found is not None
    assert found.address == address("Dr.Weber")  # displayed as given
    assert found.telematik_id == "1-SMC-B-Testkarte-Dr.Weber"
    assert plain_store.get_account(address("nobody")) is None


def test_create_twice_in_other_case_is_refused(plain_store: SQLiteMailStore) -> None:
    with pytest.raises(AccountExists, match="account exists"):
        plain_store.create_account(account("ALICE"))
    with pytest.raises(ValueError, match="exists"):  # AccountExists is a ValueError
        plain_store.create_account(account("alice"))


def test_list_accounts(plain_store: SQLiteMailStore) -> None:
    assert [a.address for a in plain_store.list_accounts()] == [
        address("alice"),
        address("bob"),
        address("carol"),
    ]


def test_update_fields_roundtrip(plain_store: SQLiteMailStore) -> None:
    """KOM-LE-A_2149/2150 status, quota, deregDate and the absence note survive a reread."""
    until = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    note = OutOfOffice(True, until, until + timedelta(days=7), "Urlaub")
    new = plain_store.update_account(
        address("ALICE"),
        status="deregistered",
        dereg_date=until,
        quota_bytes=1_000_000,
        out_of_office=note,
    )
    assert new.status == "deregistered"
    again = plain_store.get_account(address("alice"))
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
def test_update_rejects_bad_values(
    plain_store: SQLiteMailStore, changes: dict[str, object], field: str
) -> None:
    """dataTimeToLive 10..365, quota >= -1 (digest §3.2); nothing changes on error."""
    before = plain_store.get_account(address("alice"))
    with pytest.raises(ValueError, match=field):
        plain_store.update_account(address("alice"), **changes)
    assert plain_store.get_account(address("alice")) == before


def test_update_unknown_account(plain_store: SQLiteMailStore) -> None:
    with pytest.raises(AccountNotFound, match="nobody"):
        plain_store.update_account(address("nobody"), quota_bytes=1)


def test_naive_datetime_is_refused(plain_store: SQLiteMailStore) -> None:
    with pytest.raises(ValueError, match=r"dereg_date.*time zone"):
        plain_store.update_account(address("alice"), dereg_date=datetime(2030, 1, 1))


def test_new_ttl_applies_to_stored_messages(plain_store: SQLiteMailStore) -> None:
    """dataTimeToLive (digest §3.2): changing it moves the expiry of stored mail too."""
    _, [msg] = put(plain_store, b"body", [(address("alice"), b"P\r\n")])
    assert msg.expires_at - msg.received_at == timedelta(days=90)
    plain_store.update_account(address("alice"), data_ttl_days=10)
    [again] = plain_store.list_messages(address("alice"))
    assert again.expires_at - again.received_at == timedelta(days=10)
    assert plain_store.expire(msg.received_at + timedelta(days=11)) == 1
