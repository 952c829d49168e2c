"""Fixtures of the store tests: which backends the contract suite runs against, and a fresh,
opened store with three accounts.

``store_url`` is parametrized over :data:`BACKENDS`; each backend gives every test a fresh,
empty store (the embedded one: a new data dir; a server backend: a new database on a throwaway
server). To add a backend, add a :class:`Backend` whose ``prepare`` returns the URL of an empty
store for one test and name it in BACKENDS; a backend that cannot run here is skipped with a
reason, except under CI (``KIM_CI=1``), where a missing backend is a failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
from store_helpers import account

from kim_appliance.store import Store, open_store


@dataclass(frozen=True)
class Backend:
    """A store backend under test. ``prepare(request)`` returns the URL of an empty store for
    one test, or raises ``pytest.skip`` (outside CI) when the backend cannot run here."""

    name: str
    prepare: Callable[[pytest.FixtureRequest], str]
    #: several Store objects (nodes) may open it at once (the embedded store admits one)
    shared: bool = False


def _embedded(request: pytest.FixtureRequest) -> str:
    return "sqlite"  # the data dir (tmp_path / "kim-data") is the test's own: an empty store


def _postgresql(request: pytest.FixtureRequest) -> str:
    # a fresh database on the session's throwaway server (tests/conftest.py: pg_server,
    # pg_url), which starts with the first test that needs it
    url: str = request.getfixturevalue("pg_url")
    return url


#: every backend the contract suite runs against
BACKENDS = [Backend("sqlite", _embedded), Backend("postgresql", _postgresql, shared=True)]
#: the backends several nodes share: the contract tests with two Store objects run on these
SHARED_BACKENDS = [b for b in BACKENDS if b.shared]


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def store_url(request: pytest.FixtureRequest) -> str:
    backend: Backend = request.param
    return backend.prepare(request)


@pytest.fixture(params=SHARED_BACKENDS, ids=[b.name for b in SHARED_BACKENDS])
def shared_store_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty store that two Store objects (two nodes) open at once."""
    backend: Backend = request.param
    return backend.prepare(request)


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
