"""A running appliance (in-process, ephemeral ports) for the Fachdienst tests."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from kim_appliance.appliance import run_appliance


@dataclass
class Running:
    data_dir: Path
    endpoints: dict[str, Any]
    demo: dict[str, Any]

    def participant(self, local: str) -> dict[str, Any]:
        return next(p for p in self.demo["participants"] if p["address"].startswith(local + "@"))

    def address(self, domain: str, kind: str) -> tuple[str, int]:
        host, _, port = self.endpoints["fachdienste"][domain][kind].rpartition(":")
        return host, int(port)

    def client_ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.endpoints["tls_ca"])
        return context


@pytest.fixture
async def appliance(tmp_path: Path) -> AsyncIterator[Running]:
    data_dir = tmp_path / "kim-data"
    async with trio.open_nursery() as nursery:
        endpoints = await nursery.start(
            lambda task_status: run_appliance(
                data_dir, ephemeral_ports=True, task_status=task_status
            )
        )
        demo = json.loads((data_dir / "demo.json").read_text())
        yield Running(data_dir, endpoints, demo)
        nursery.cancel_scope.cancel()
