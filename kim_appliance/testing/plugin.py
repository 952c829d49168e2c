"""The pytest plugin of kim-appliance (entry point ``pytest11``: loaded by every pytest run in
an environment where kim-appliance is installed).

Fixtures (the sync flavour, :class:`~kim_appliance.testing.KimApplianceThread`, so they work in
any test suite, trio or not):

- ``kim_template`` (session): an initialised data dir (demo setup, TLS certificates, seeded
  mailboxes, fast test logins) that the appliances are copied from. It is made once per
  kim-appliance version and kept in the user's cache directory (:mod:`._cache`), so a run
  starts its first appliance in about a second; ``--kim-no-cache`` makes a new one for the
  session instead. ``--kim-data-dir DIR`` makes it ``DIR``, initialised on first use and kept
  between runs (the demo keys and passwords stay the same; the appliances still run in
  copies).
- ``kim_appliance`` (session): one appliance for the whole session -- the cheap choice.
- ``kim_appliance_fresh`` (function): an appliance of its own per test, with empty mailboxes;
  ``@pytest.mark.kim_config({"fachdienst": {...}})`` merges config.toml overrides first.

A trio test uses :func:`~kim_appliance.testing.running_appliance` directly. The plugin must
not cost a run that does not use it anything but its registration: the appliance is imported
when a fixture is first set up.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kim_appliance.testing import KimAppliance

MARKER = "kim_config"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kim-appliance")
    group.addoption(
        "--kim-data-dir",
        metavar="DIR",
        default=None,
        help="kim-appliance: keep the initialised template data dir here between runs "
        "(made on first use); the fixtures' appliances run in copies of it",
    )
    group.addoption(
        "--kim-no-cache",
        action="store_true",
        default=False,
        help="kim-appliance: make a new template data dir for this session instead of "
        "reusing the one cached in the user's cache directory",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(overrides): config.toml overrides for the kim_appliance_fresh fixture, "
        'e.g. {"fachdienst": {"max_message_size": 4096}}',
    )


@pytest.fixture(scope="session")
def kim_template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The initialised data dir the appliances are copied from (see the module docstring)."""
    from kim_appliance.testing import make_template

    option = request.config.getoption("kim_data_dir", default=None)
    if option:
        template = Path(option).expanduser().resolve()
        if not (template / "demo.json").is_file():
            make_template(template)
        return template
    if request.config.getoption("kim_no_cache", default=False):
        return make_template(tmp_path_factory.mktemp("kim-template") / "kim-data")
    from kim_appliance.testing._cache import cached_template

    cached = cached_template(make_template)
    # held (a shared lock) until the session ends: nobody removes it while we copy from it
    request.config.add_cleanup(cached.release)
    return cached.data_dir


@pytest.fixture(scope="session")
def kim_appliance(
    kim_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KimAppliance]:
    """One running appliance for the session (mailboxes shared by every test using it)."""
    from kim_appliance.testing import KimApplianceThread

    data_dir = tmp_path_factory.mktemp("kim-appliance") / "kim-data"
    with KimApplianceThread(data_dir, template=kim_template) as app:
        yield app


@pytest.fixture
def kim_appliance_fresh(
    kim_template: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[KimAppliance]:
    """A running appliance of this test's own, copied from ``kim_template``."""
    from kim_appliance.testing import KimApplianceThread

    overrides: dict[str, Any] = {}
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        overrides = dict(marker.args[0] if marker.args else marker.kwargs)
    with KimApplianceThread(tmp_path / "kim-data", template=kim_template, config=overrides) as app:
        yield app
