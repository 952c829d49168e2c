"""Fixtures shared by the tests: CMS parties (RSA-2048 and brainpoolP256r1) and gematik's sample.

The parties are plain cryptography-built certificates (one CA per algorithm, see parties.py) so
that the CMS tests do not depend on the test PKI's profiles; tests of the full profile use
kim_appliance.pki.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import settings
from parties import SAMPLE_ZIP, Party, SimpleCa
from pg_server import TEMPLATE, PgServer, start_server, unavailable

from kim_appliance.store.sqlite import SQLiteStore, open_sqlite_store

# CI (.ci/run sets KIM_CI=1) replays the same examples every time, so that a landing commit is
# judged on its own code; a developer's run explores new ones (and found, e.g., the year-140
# date-time bug of the Account Manager)
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("KIM_CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def cas() -> dict[str, SimpleCa]:
    return {"RSA": SimpleCa("RSA"), "ECC": SimpleCa("ECC")}


def _party(cas: dict[str, SimpleCa], kind: str, local: str, usage: str) -> Party:
    ca = cas[kind]
    address = f"{local}@test1.kim.telematik-test"
    return Party(address, ca.issue(kind, f"{local} TEST-ONLY", usage=usage), ca.cert)


@pytest.fixture(scope="session")
def rsa_recipient(cas: dict[str, SimpleCa]) -> Party:
    return _party(cas, "RSA", "praxis.rsa", "enc")


@pytest.fixture(scope="session")
def ecc_recipient(cas: dict[str, SimpleCa]) -> Party:
    return _party(cas, "ECC", "praxis.ecc", "enc")


@pytest.fixture(scope="session")
def other_rsa_recipient(cas: dict[str, SimpleCa]) -> Party:
    return _party(cas, "RSA", "apotheke.rsa", "enc")


@pytest.fixture(scope="session")
def rsa_signer(cas: dict[str, SimpleCa]) -> Party:
    return _party(cas, "RSA", "praxis.rsa", "sign")


@pytest.fixture(scope="session")
def ecc_signer(cas: dict[str, SimpleCa]) -> Party:
    return _party(cas, "ECC", "praxis.ecc", "sign")


@pytest.fixture(scope="session")
def gematik_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gematik's SMIME-Profil.zip unpacked, with recipientA/B key zips unpacked into A/ and B/."""
    import zipfile

    if not SAMPLE_ZIP.exists():
        pytest.fail(f"gematik sample missing: {SAMPLE_ZIP}")
    root = tmp_path_factory.mktemp("smime-sample")
    with zipfile.ZipFile(SAMPLE_ZIP) as z:
        z.extractall(root)
    for who in ("A", "B"):
        with zipfile.ZipFile(root / f"recipient{who}keys.zip") as z:
            z.extractall(root / who)
    return root


@pytest.fixture
async def kim_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """The appliance's embedded store in a fresh data dir (``tmp_path/kim-data``), opened."""
    async with open_sqlite_store(tmp_path / "kim-data") as store:
        yield store


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server for the session (tests/pg_server.py), with a template
    database migrated by the store itself; skipped without PostgreSQL, except under CI."""
    try:
        server = start_server()
    except (LookupError, RuntimeError, OSError) as exc:
        unavailable(f"cannot start a throwaway PostgreSQL server: {exc}")
        raise  # unreachable: unavailable() skips or fails
    try:
        from kim_appliance.store import open_store

        async def migrate() -> None:
            async with open_store(server.url(TEMPLATE), Path(server.root)):
                pass

        trio.run(migrate)
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL (with a password) of a fresh PostgreSQL database with the store's schema."""
    name = pg_server.new_database()
    # not dropped: a drop forces a checkpoint (it doubled the contract suite's time), and the
    # server's temp dir goes at the end of the session (about 8 MB per database)
    return pg_server.url(name)
