"""Fixtures for the PKI tests: one generated test PKI per session (plus a second, unrelated
one with the same names), and gematik's sample certificates from SMIME-Profil.zip."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from kim_appliance.pki import TestPki

# gematik's S/MIME sample (github.com/gematik/api-kim, Apache-2.0), copied into the repo
SAMPLE_ZIP = Path(__file__).resolve().parents[1] / "data/gematik/SMIME-Profil.zip"


@pytest.fixture(scope="session")
def pki() -> TestPki:
    return TestPki.generate()


@pytest.fixture(scope="session")
def other_pki() -> TestPki:
    """A second test PKI: same CA names, different keys."""
    return TestPki.generate()


@pytest.fixture(scope="session")
def gematik_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """recipientAkeys.zip and recipientBkeys.zip unpacked into A/ and B/, and the signed CMS."""
    root = tmp_path_factory.mktemp("gematik-pki-sample")
    with zipfile.ZipFile(SAMPLE_ZIP) as outer:
        outer.extractall(root)
    for who in ("A", "B"):
        with zipfile.ZipFile(root / f"recipient{who}keys.zip") as inner:
            inner.extractall(root / who)
    return root
