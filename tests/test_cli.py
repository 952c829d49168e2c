"""The command line contract of DESIGN.md: init, message seal, message open (exit 0/2/3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kim_appliance.store import open_store

INNER = (
    b"From: Hausarztpraxis Dr. Weber <praxis.weber@fd1.kim.telematik-test>\r\n"
    b"To: apotheke.sonne@fd2.kim.telematik-test\r\n"
    b"Cc: dr.meyer@fd2.kim.telematik-test, zahnarzt.klein@fd1.kim.telematik-test\r\n"
    b"Subject: eRezept-Rueckfrage\r\n"
    b"Date: Sat, 28 Nov 2026 10:00:00 +0100\r\n"
    b"Message-ID: <7d4c2a8e-51f0-4c55-9f6b-1d9c5b0e2a77@kim>\r\n"
    b"X-KIM-Dienstkennung: KIM-Mail;Default;V1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Bitte um Rueckruf.\r\n"
)


def kim(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kim_appliance.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cli") / "kim-data"
    result = kim("init", "--data-dir", str(directory))
    assert result.returncode == 0, result.stderr.decode()
    return directory


@pytest.fixture(scope="module")
def demo(data_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((data_dir / "demo.json").read_text())
    return data


def participant(demo: dict[str, Any], local: str) -> dict[str, Any]:
    return next(p for p in demo["participants"] if p["address"].startswith(local + "@"))


def test_init_writes_the_demo_participants(demo: dict[str, Any], data_dir: Path) -> None:
    """DESIGN.md demo.json: two domains, RSA-only, ECC-only, both, and an HBA participant; every
    exported key belongs to the certificate at the same index."""
    people = demo["participants"]
    assert {p["fachdienst"] for p in people} >= {"fd1.kim.telematik-test", "fd2.kim.telematik-test"}
    assert {p["card"]["keys"] for p in people} >= {"RSA", "ECC", "RSA+ECC"}
    assert "HBA" in {p["card"]["type"] for p in people}
    for p in people:
        assert p["address"].endswith(".kim.telematik-test")
        assert p["smtp_username"].startswith(p["address"] + "#")
        for kind in ("enc", "osig"):
            certs, keys = p["export"][f"{kind}_cert"], p["export"][f"{kind}_key"]
            assert len(certs) == len(keys) == len(p["card"]["keys"].split("+"))
            for cert_path, key_path in zip(certs, keys, strict=True):
                cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
                key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
                assert Path(key_path).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
                assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert all(Path(t).is_file() for t in demo["trust_anchors"])
    # registration codes for the Account Manager (an extension of the demo.json contract)
    assert {c["fachdienst"] for c in demo["registration_codes"]} == {
        "fd1.kim.telematik-test",
        "fd2.kim.telematik-test",
    }
    # issue 4 §6: init also creates the Konnektor's Infomodell; issue 12: it writes the initial
    # state through the store (mailboxes, directory entries, registration codes)
    assert (data_dir / "konnektor.json").is_file()
    assert not (data_dir / "directory.json").exists()

    async def stored() -> tuple[list[str], list[str], int]:
        async with open_store(None, data_dir) as store:
            accounts = [a.address for a in await store.accounts.list()]
            snapshot = await store.directory.snapshot()
            codes = [
                await store.registrations.get_code(c["fachdienst"], c["referenceID"])
                for c in demo["registration_codes"]
            ]
        return accounts, [row.telematik_id for row in snapshot.rows], sum(1 for c in codes if c)

    accounts, telematik_ids, codes = trio.run(stored)
    assert sorted(accounts) == sorted(p["address"] for p in people)
    assert sorted(telematik_ids) == sorted(p["telematik_id"] for p in people)
    assert codes == len(demo["registration_codes"])
    again = kim("init", "--data-dir", str(data_dir))
    assert again.returncode == 0
    assert b"already initialised" in again.stderr


def _seal_args(demo: dict[str, Any], sender: str, recipients: list[str], alg: int = 0) -> list[str]:
    s = participant(demo, sender)
    args = [
        "message",
        "seal",
        "--signer-key",
        s["export"]["osig_key"][alg],
        "--signer-cert",
        s["export"]["osig_cert"][alg],
    ]
    for cert in s["export"]["enc_cert"]:
        args += ["--from", f"{s['address']}={cert}"]
    for local in recipients:
        r = participant(demo, local)
        for cert in r["export"]["enc_cert"]:
            args += ["--to", f"{r['address']}={cert}"]
    return args


def _open_args(demo: dict[str, Any], local: str, trust: bool = True) -> list[str]:
    r = participant(demo, local)
    args = ["message", "open"]
    for key, cert in zip(r["export"]["enc_key"], r["export"]["enc_cert"], strict=True):
        args += ["--key", key, "--cert", cert]
    if trust:
        for anchor in demo["trust_anchors"]:
            args += ["--trust", anchor]
    return args


@pytest.fixture(scope="module")
def sealed(demo: dict[str, Any]) -> bytes:
    result = kim(
        *_seal_args(demo, "praxis.weber", ["apotheke.sonne", "dr.meyer", "zahnarzt.klein"]),
        stdin=INNER,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert (
        b"encrypted for: apotheke.sonne@fd2.kim.telematik-test (brainpoolP256r1)" in result.stderr
    )
    return result.stdout


@pytest.mark.parametrize("local", ["apotheke.sonne", "dr.meyer", "zahnarzt.klein", "praxis.weber"])
def test_every_demo_participant_opens_and_verifies(
    demo: dict[str, Any], sealed: bytes, local: str
) -> None:
    """KOM-LE-A_2042/2048: decrypted with the participant's own card keys (RSA, ECC or both),
    signature and signer path (C.HCI.OSIG, KOM-LE-A_2129) verified against the test PKI."""
    result = kim(*_open_args(demo, local), stdin=sealed)
    report = result.stderr.decode()
    assert result.returncode == 0, report
    assert result.stdout == INNER
    assert "X-KIM-DecryptionResult: 00" in report
    assert "X-KIM-IntegrityCheckResult: 01" in report
    assert "signer: " in report
    assert "Hausarztpraxis Dr. Weber" in report


def test_open_without_the_right_key_exits_2(demo: dict[str, Any]) -> None:
    result = kim(*_seal_args(demo, "praxis.weber", ["apotheke.sonne"]), stdin=INNER)
    assert result.returncode == 0
    opened = kim(*_open_args(demo, "zahnarzt.klein"), stdin=result.stdout)
    assert opened.returncode == 2
    assert opened.stdout == b""
    assert b"X-KIM-DecryptionResult: 01" in opened.stderr


def test_open_with_untrusted_signer_exits_3(
    demo: dict[str, Any], sealed: bytes, tmp_path: Path
) -> None:
    """IntegrityCheckResult 05: the signer's path does not lead to the given trust anchors."""
    other = tmp_path / "other"
    assert kim("init", "--data-dir", str(other)).returncode == 0
    other_demo = json.loads((other / "demo.json").read_text())
    args = _open_args(demo, "apotheke.sonne", trust=False)
    for anchor in other_demo["trust_anchors"]:
        args += ["--trust", anchor]
    result = kim(*args, stdin=sealed)
    assert result.returncode == 3, result.stderr.decode()
    assert b"X-KIM-IntegrityCheckResult: 05" in result.stderr
    assert result.stdout == INNER  # decrypted and authenticated; the verdict is in the exit code


def test_open_of_garbage_exits_with_a_clear_message(demo: dict[str, Any]) -> None:
    result = kim(*_open_args(demo, "apotheke.sonne"), stdin=b"Subject: hello\r\n\r\nhi\r\n")
    assert result.returncode == 2
    assert b"X-KOM-LE-Version is missing" in result.stderr


def test_seal_usage_errors_say_what_is_wrong(demo: dict[str, Any]) -> None:
    args = _seal_args(demo, "praxis.weber", ["apotheke.sonne"])
    args[args.index("--to") + 1] = "apotheke.sonne@fd2.kim.telematik-test"
    result = kim(*args, stdin=INNER)
    assert result.returncode == 1
    assert b"expected ADDR=ENC.pem" in result.stderr
