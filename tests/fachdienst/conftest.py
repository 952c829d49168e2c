"""Fixtures of the Fachdienst tests: a running appliance (in-process, ephemeral ports).

The helpers live in tests/fd_support.py (shared with the Clientmodul tests; a unique module
name, since tests/e2e has a conftest too).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from fd_support import (
    Prepare,
    Running,
    StartAppliance,
    _quick_hash,
    _write_config,
)

from kim_appliance.appliance import ENDPOINTS_FILE, run_appliance
from kim_appliance.store import MailStore, open_store


@pytest.fixture(scope="session")
def template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir after one full start and clean stop: demo setup, TLS certs, seeded stores."""
    data_dir = tmp_path_factory.mktemp("template") / "kim-data"

    async def once() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_appliance(
                    data_dir, ephemeral_ports=True, task_status=task_status
                )
            )
            nursery.cancel_scope.cancel()

    trio.run(once)
    assert not (data_dir / ENDPOINTS_FILE).exists()
    # the demo passwords again as salted scrypt, with a small work factor: every login of every
    # test costs milliseconds instead of ~170 ms (the format and the check stay the same)
    demo = json.loads((data_dir / "demo.json").read_text())
    for d in (data_dir / "fachdienst").iterdir():
        store = open_store(d)
        try:
            for p in demo["participants"]:
                if store.get_account(p["address"]) is not None:
                    store.update_account(p["address"], password_hash=_quick_hash(p["password"]))
        finally:
            store.close()
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
            shutil.copytree(template_dir, data_dir)
            if fachdienst:
                _write_config(data_dir, fachdienst)
            if prepare is not None:
                stores: dict[str, MailStore] = {
                    d.name: open_store(d) for d in (data_dir / "fachdienst").iterdir() if d.is_dir()
                }
                try:
                    prepare(stores)
                finally:
                    for store in stores.values():
                        store.close()
            endpoints = await nursery.start(
                lambda task_status: run_appliance(
                    data_dir, ephemeral_ports=True, task_status=task_status
                )
            )
            demo = json.loads((data_dir / "demo.json").read_text())
            return Running(data_dir, endpoints, demo)

        yield start
        nursery.cancel_scope.cancel()


@pytest.fixture
async def appliance(start_appliance: StartAppliance) -> Running:
    """The appliance with its default configuration and the demo participants."""
    return await start_appliance()
