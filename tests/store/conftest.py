"""Fixtures for the store tests: a fresh SQLite store (plain and compressed) with accounts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from store_helpers import account

from kim_appliance.store import SQLiteMailStore, open_store


@pytest.fixture(params=[False, True], ids=["plain", "zstd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteMailStore]:
    s = open_store(tmp_path / "data", compress=request.param)
    for local in ("alice", "bob", "carol"):
        s.create_account(account(local))
    yield s
    s.close()


@pytest.fixture
def plain_store(tmp_path: Path) -> Iterator[SQLiteMailStore]:
    s = open_store(tmp_path / "data")
    for local in ("alice", "bob", "carol"):
        s.create_account(account(local))
    yield s
    s.close()
