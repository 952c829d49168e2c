"""Purging an account (KOM-LE-A_2155): mailbox, blob files and account row go in one step; a
tombstone keeps the address for its Telematik-ID (A_19464-02)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from store_helpers import account, address, body_for, prefix_for, put, read

from kim_appliance.store import AccountNotFound, SQLiteMailStore, open_store

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def _blob_files(store: SQLiteMailStore) -> int:
    return sum(1 for p in (store.data_dir / "blobs").rglob("*") if p.is_file())


def test_purge_deletes_mailbox_blobs_and_row_and_keeps_a_tombstone(
    store: SQLiteMailStore,
) -> None:
    """KOM-LE-A_2155: every message of the mailbox and its blob go, unless another mailbox
    still holds the same blob; the account row goes; the tombstone names the Telematik-ID."""
    store.create_account(account("alt"))
    store.create_account(account("bleibt"))
    put(store, body_for("only-alt"), [(address("alt"), prefix_for("1", address("alt")))])
    _, shared = put(
        store,
        body_for("shared"),
        [
            (address("alt"), prefix_for("2", address("alt"))),
            (address("bleibt"), prefix_for("2", address("bleibt"))),
        ],
    )
    assert _blob_files(store) == 2
    assert store.purge_account(address("alt"), now=NOW) == 2
    assert store.get_account(address("alt")) is None
    assert _blob_files(store) == 1
    kept = shared[1]
    assert read(store, kept.id).endswith(body_for("shared"))
    assert store.retired_telematik_id(address("ALT")) == "1-SMC-B-Testkarte-alt"
    assert store.retired_telematik_id(address("bleibt")) is None
    with pytest.raises(AccountNotFound):
        store.purge_account(address("alt"), now=NOW)


def test_tombstone_survives_a_reopen(tmp_path: Path) -> None:
    """The retired address is durable: a restart does not give it out again."""
    with open_store(tmp_path / "s") as store:
        store.create_account(account("alt"))
        store.purge_account(address("alt"), now=NOW)
    with open_store(tmp_path / "s") as store:
        assert store.retired_telematik_id(address("alt")) == "1-SMC-B-Testkarte-alt"
        assert store.list_accounts() == []
