"""Fixtures of the VZD tests: one demo data dir per session (test PKI, four participants)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kim_appliance import demo


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("vzd") / "data"
    demo.initialise(data_dir)
    return data_dir
