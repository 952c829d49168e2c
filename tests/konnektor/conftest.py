"""Fixtures for the Konnektor tests: one demo data dir per session, a fresh Konnektor per test.

The demo setup (kim_appliance.demo) gives the cards the tests use: praxis.weber (SMC-B, RSA),
apotheke.sonne (SMC-B, ECC), zahnarzt.klein (SMC-B, RSA+ECC), dr.meyer (HBA, RSA+ECC, visible
with UserId "dr.meyer") and the SMC-B of her practice (OSIG only).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kim_appliance import demo
from kim_appliance.konnektor import Konnektor
from kim_appliance.konnektor.infomodell import load
from kim_appliance.pki import TestPki


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("konnektor-demo") / "data"
    demo.initialise(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def demo_pki(demo_dir: Path) -> TestPki:
    """The demo's test PKI, loaded once (loading it takes a quarter of a second)."""
    return TestPki.load(demo_dir / "pki")


@pytest.fixture
def konnektor(demo_dir: Path, demo_pki: TestPki) -> Konnektor:
    """A fresh Konnektor (fresh PIN states, handles, faults) on the shared PKI: tests that
    revoke must use ``own_data_dir`` and ``Konnektor.from_data_dir`` instead."""
    return Konnektor(load(demo_dir), demo_dir, trust=demo_pki.trust_store())


@pytest.fixture
def own_data_dir(demo_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the demo data dir, for tests that write into it."""
    copy = tmp_path / "data"
    shutil.copytree(demo_dir, copy)
    return copy
