"""Fixtures of the Fachdienst tests: a running appliance (in-process, ephemeral ports), built on
kim_appliance.testing (the vendors' plugin) so the project's tests run the code vendors use.

The helpers live in tests/fd_support.py (shared with the Clientmodul tests; a unique module
name, since tests/e2e has a conftest too).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from fd_support import Prepare, Running, StartAppliance

from kim_appliance.appliance import ENDPOINTS_FILE
from kim_appliance.store import open_store
from kim_appliance.testing import copy_template, make_template, serve_appliance


@pytest.fixture(scope="session")
def template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir after one full start and clean stop: demo setup, TLS certs, seeded store,
    the demo passwords as fast test hashes (kim_appliance.testing.make_template)."""
    data_dir = make_template(tmp_path_factory.mktemp("template") / "kim-data")
    assert not (data_dir / ENDPOINTS_FILE).exists()
    return data_dir


@pytest.fixture
async def start_appliance(tmp_path: Path, template_dir: Path) -> AsyncIterator[StartAppliance]:
    """``await start_appliance({"max_message_size": 4096}, prepare=hook)`` -> Running."""
    async with trio.open_nursery() as nursery:
        count = 0

        async def start(
            fachdienst: dict[str, Any] | None = None, prepare: Prepare | None = None
        ) -> Running:
            nonlocal count
            count += 1
            data_dir = tmp_path / f"kim-data-{count}"
            copy_template(template_dir, data_dir)
            if prepare is not None:
                async with open_store(None, data_dir) as store:
                    await prepare(store)
            config = {"fachdienst": fachdienst} if fachdienst else None
            # the appliance runs as a task of this fixture's nursery, so it outlives the call
            app = await nursery.start(partial(serve_appliance, data_dir, config=config))
            return Running.of(app)

        yield start
        nursery.cancel_scope.cancel()


@pytest.fixture
async def appliance(start_appliance: StartAppliance) -> Running:
    """The appliance with its default configuration and the demo participants."""
    return await start_appliance()
