"""Fixtures of the end-to-end tests: a launcher for ``kim-appliance run`` processes and a data
dir copied from one initialised once per session (the test PKI takes seconds to make); the
in-process appliance fixtures of the vendors' plugin (kim_appliance.testing.plugin) for the
Clientmodul tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_appliance import Launcher, cli


def pytest_configure(config: pytest.Config) -> None:
    """The plugin's fixtures (``kim_appliance``, ``kim_appliance_fresh``): an installed
    kim-appliance registers it through its pytest11 entry point; an editable install made
    before the entry point existed does not, so it is registered here then."""
    from kim_appliance.testing import plugin

    if not config.pluginmanager.is_registered(plugin) and not config.pluginmanager.is_blocked(
        "kim_appliance"
    ):
        config.pluginmanager.register(plugin, "kim_appliance")


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    result = Launcher(log_dir)
    try:
        yield result
    finally:
        result.close()


@pytest.fixture(scope="session")
def template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir after ``init`` and one clean run (TLS certificates issued, stores created)."""
    root = tmp_path_factory.mktemp("e2e-template")
    data_dir = root / "kim-data"
    done = cli("init", "--data-dir", str(data_dir), cwd=root)
    assert done.returncode == 0, done.stderr
    launcher = Launcher(root)
    try:
        app = launcher.start(data_dir)
        code, _ = app.stop()
        assert code == 0, app.stderr()
    finally:
        launcher.close()
    return data_dir


@pytest.fixture
def data_dir(template_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the initialised data dir."""
    target = tmp_path / "kim-data"
    shutil.copytree(template_dir, target)
    return target
