"""Fixtures for tests of the appliance's own Clientmodul (endpoints ``clientmodul.smtp/pop3``).

``start_kim(config=..., prepare=...)`` copies a session template data dir, lets ``prepare``
change it before the start (VZD entries, mailbox quotas, through the store: the embedded store
admits one process at a time), and runs the appliance in-process with
:func:`kim_appliance.testing.running_appliance`; smtplib and poplib then play the PVS against
its Clientmodul. ``cm`` is such an appliance with the default configuration, wrapped in
:class:`Kim` (the PVS side, the Fachdienst side straight, the participants' exported keys).
Faults are switched through the Konnektor admin API (:meth:`KimAppliance.fault`), as a vendor's
test would.

These fixtures must never build a Clientmodul of their own next to the appliance: the tests
exercise the one ``kim-appliance run`` starts.

Both modes (issue 14): a test that asks for ``cm_mode`` (directly or through
``pytest.mark.usefixtures("cm_mode")``) runs twice, with the same test function: once with the
Clientmodul's in-process Konnektor and VZD, once talking SOAP and LDAPS to the appliance's own
Konnektor and VZD listeners (``[clientmodul] konnektor/directory = "loopback"``). The other
tests run in-process only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from cm_support import Kim, PrepareDir, StartKim

from kim_appliance.testing import (
    KimAppliance,
    copy_template,
    make_template,
    running_appliance,
)

#: the Clientmodul's partners per mode (config.toml [clientmodul])
MODES: dict[str, dict[str, Any]] = {
    "in-process": {},
    "network": {"clientmodul": {"konnektor": "loopback", "directory": "loopback"}},
}


@pytest.fixture(params=list(MODES))
def cm_mode(request: pytest.FixtureRequest) -> str:
    """The Clientmodul's mode: ``in-process`` or ``network`` (SOAP and LDAPS)."""
    mode: str = request.param
    return mode


def _mode_of(request: pytest.FixtureRequest) -> str:
    if "cm_mode" in request.fixturenames:
        mode: str = request.getfixturevalue("cm_mode")
        return mode
    return "in-process"


@pytest.fixture(scope="session")
def kim_cm_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised data dir (demo setup, TLS certificates, quick password hashes)."""
    return make_template(tmp_path_factory.mktemp("kim-cm-template") / "kim-data")


async def _run(
    data_dir: Path,
    config: Mapping[str, Any] | None,
    task_status: trio.TaskStatus[KimAppliance] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with running_appliance(data_dir, config=config) as app:
        task_status.started(app)
        await trio.sleep_forever()


@pytest.fixture
async def start_kim(
    tmp_path: Path, kim_cm_template: Path, request: pytest.FixtureRequest
) -> AsyncIterator[StartKim]:
    mode = MODES[_mode_of(request)]
    # the appliances run in the fixture's nursery (a nursery must close in the task that
    # opened it; the test body runs in another task)
    async with trio.open_nursery() as nursery:
        count = 0

        async def start(
            config: Mapping[str, Any] | None = None, prepare: PrepareDir | None = None
        ) -> KimAppliance:
            nonlocal count
            count += 1
            data_dir = tmp_path / f"kim-data-{count}"
            copy_template(kim_cm_template, data_dir)
            if prepare is not None:
                await prepare(data_dir)
            merged = _merged(mode, config or {})
            app: KimAppliance = await nursery.start(_run, data_dir, merged or None)
            return app

        yield start
        nursery.cancel_scope.cancel()


@pytest.fixture
async def cm(start_kim: StartKim, request: pytest.FixtureRequest) -> Kim:
    """An appliance of this test's own (default configuration, empty mailboxes)."""
    return Kim(await start_kim(), mode=_mode_of(request))


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = {key: dict(value) for key, value in base.items()}
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


# --- the view the Clientmodul tests use (blocking helpers: call through trio.to_thread) -------
