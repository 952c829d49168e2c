"""Fixtures of the store tests: which backends the contract suite runs against, and a fresh,
opened store with three accounts.

``store_url`` is parametrized over :data:`BACKENDS`; each backend gives every test a fresh,
empty store (the embedded one: a new data dir; a server backend: a new database on a throwaway
server). To add a backend, add a :class:`Backend` whose ``prepare`` returns the URL of an empty
store for one test and name it in BACKENDS; a backend that cannot run here is skipped with a
reason, except under CI (``KIM_CI=1``), where a missing backend is a failure.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
from store_helpers import account

from kim_appliance.store import Store, open_store


@dataclass(frozen=True)
class Backend:
    """A store backend under test. ``prepare(tmp_path)`` returns the URL of an empty store for
    one test, or raises ``pytest.skip`` (outside CI) when the backend cannot run here."""

    name: str
    prepare: Callable[[Path], str]


def _embedded(tmp_path: Path) -> str:
    return "sqlite"  # the data dir (tmp_path / "kim-data") is the test's own: an empty store


#: every backend the contract suite runs against (PostgreSQL joins with the cluster backend:
#: a throwaway server from initdb/pg_ctl in a temp dir, one database per test)
BACKENDS = [Backend("sqlite", _embedded)]


def unavailable(reason: str) -> None:
    """A backend that cannot run here: skipped with the reason, a failure under CI."""
    if os.environ.get("KIM_CI"):
        pytest.fail(f"store backend unavailable under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    backend: Backend = request.param
    return backend.prepare(tmp_path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "kim-data"


@pytest.fixture
def opener(store_url: str, data_dir: Path) -> Callable[[], AbstractAsyncContextManager[Store]]:
    """Opens the test's store again (durability: what survives a close and a reopen)."""
    return lambda: open_store(store_url, data_dir)


@pytest.fixture
async def store(
    opener: Callable[[], AbstractAsyncContextManager[Store]],
) -> AsyncIterator[Store]:
    """The test's store, open, with the accounts alice, bob and carol."""
    async with opener() as s:
        for local in ("alice", "bob", "carol"):
            await s.accounts.create(account(local))
        yield s
