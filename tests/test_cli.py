"""The command line contract of DESIGN.md: init, message seal, message open (exit 0/2/3), usage
errors (64), and what a newcomer meets first (issue 15): help, --version, progress of init, the
fault summary and the switches that repair a card, card renew, account list, closed pipes."""

from __future__ import annotations

import argparse
import email
import email.message
import importlib.metadata
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from argparse import SUPPRESS
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kim_appliance.cli import build_parser
from kim_appliance.store import open_store
from kim_appliance.testing import KimAppliance, KimApplianceThread, copy_template

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
def initialised(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[bytes]:
    directory = tmp_path_factory.mktemp("cli") / "kim-data"
    result = kim("init", "--data-dir", str(directory))
    assert result.returncode == 0, result.stderr.decode()
    return result


@pytest.fixture(scope="module")
def data_dir(initialised: subprocess.CompletedProcess[bytes]) -> Path:
    return Path(initialised.args[initialised.args.index("--data-dir") + 1])


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
    """``message open`` with the participant's keys and, with ``trust``, the test PKI's CA
    certificates and CRLs after one ``--trust`` (as a shell glob gives them)."""
    r = participant(demo, local)
    args = ["message", "open"]
    for key, cert in zip(r["export"]["enc_key"], r["export"]["enc_cert"], strict=True):
        args += ["--key", key, "--cert", cert]
    if trust:
        pki = Path(demo["trust_anchors"][0]).parent.parent
        args += ["--trust", *demo["trust_anchors"], *map(str, sorted(pki.glob("*.crl.pem")))]
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
    assert result.returncode == 64
    assert b"expected ADDR=ENC.pem" in result.stderr
    assert result.stderr.startswith(b"usage: kim-appliance message seal")


# --- message open: --trust as the README shows it, and a signer never reported unchecked-valid


def test_trust_takes_the_readme_glob_of_files(demo: dict[str, Any], sealed: bytes) -> None:
    """issue 15: `--trust kim-data/pki/trust/*.pem kim-data/pki/*.crl.pem`, expanded by a real
    shell as in the README, verifies (it exited 2 with argparse's usage error before)."""
    sonne = participant(demo, "apotheke.sonne")
    pki = Path(demo["trust_anchors"][0]).parent.parent
    command = (
        f'"{sys.executable}" -m kim_appliance.cli message open '
        f'--key "{sonne["export"]["enc_key"][0]}" --cert "{sonne["export"]["enc_cert"][0]}" '
        f'--trust "{pki}"/trust/*.pem "{pki}"/*.crl.pem'
    )
    result = subprocess.run(
        ["sh", "-c", command], input=sealed, capture_output=True, timeout=120, check=False
    )
    report = result.stderr.decode()
    assert result.returncode == 0, report
    assert "trust: 16 PEM file(s) given with --trust" in report
    assert "X-KIM-IntegrityCheckResult: 01" in report


def test_trust_without_crls_is_not_valid_but_unknown_status(
    demo: dict[str, Any], sealed: bytes
) -> None:
    """Anchors without CRLs: the signer's revocation cannot be checked, so the result is 07
    (INCONCLUSIVE / 4264, status unknown, digest §1.6) and exit 3, never 01."""
    args = _open_args(demo, "zahnarzt.klein", trust=False)
    result = kim(*args, "--trust", *demo["trust_anchors"], stdin=sealed)
    report = result.stderr.decode()
    assert result.returncode == 3, report
    assert "X-KIM-IntegrityCheckResult: 07" in report
    assert "X-KIM-IntegrityCheckResult: 01" not in report
    assert "no CRL of 'CN=GEM.SMCB-CA1 TEST-ONLY," in report
    assert "not checked" in report
    assert result.stdout == INNER


def test_open_without_trust_uses_the_data_dir_of_the_current_directory(
    demo: dict[str, Any], sealed: bytes, data_dir: Path
) -> None:
    """Without --trust, ./kim-data's test PKI (anchors and CRLs) checks the signer."""
    result = subprocess.run(
        [sys.executable, "-m", "kim_appliance.cli", *_open_args(demo, "dr.meyer", trust=False)],
        input=sealed,
        capture_output=True,
        cwd=data_dir.parent,
        timeout=120,
        check=False,
    )
    report = result.stderr.decode()
    assert result.returncode == 0, report
    assert "trust: the test PKI of kim-data (8 CA certificates, 8 CRLs)" in report
    assert "X-KIM-IntegrityCheckResult: 01" in report


def test_open_without_any_trust_reports_the_signer_as_not_checked(
    demo: dict[str, Any], sealed: bytes, tmp_path: Path
) -> None:
    """issue 15: with no --trust and no data dir, the signature is checked but the signer is
    not: IntegrityCheckResult 07, exit 3 (it said 01 and exited 0 before)."""
    args = _open_args(demo, "praxis.weber", trust=False)
    result = kim(*args, "--data-dir", str(tmp_path / "nothing-here"), stdin=sealed)
    report = result.stderr.decode()
    assert result.returncode == 3, report
    assert "X-KIM-IntegrityCheckResult: 07" in report
    assert "signer certificate NOT checked: no trust anchors given" in report
    assert "result: decrypted, signature verifies, signer's certificate NOT fully checked" in report
    assert result.stdout == INNER


# --- usage, help, version, progress -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (["fault", "--bogus"], "kim-appliance fault"),
        (["fault", "--latency-ms", "slow"], "kim-appliance fault"),
        (["fault", "--revoke", "80276883110000100001:ENC"], "kim-appliance fault"),
        (["account", "list", "--bogus"], "kim-appliance account list"),
        (["account", "add", "x@y"], "kim-appliance account add"),
        (["card", "renew", "80276883110000100001"], "kim-appliance card renew"),
        (
            ["card", "import", "--iccsn", "1", "--key", "a", "--key", "b", "--cert", "c"],
            "kim-appliance card import",
        ),
        (["message", "open", "--cert", "c.pem"], "kim-appliance message open"),
        (
            ["message", "open", "--key", "k", "--key", "l", "--cert", "c"],
            "kim-appliance message open",
        ),
        (["message", "open", "--key", "k", "--cert", "c", "--trust"], "kim-appliance message open"),
        (["run", "--log-level", "LOUD"], "kim-appliance run"),
        (["nonsense"], "kim-appliance"),
        ([], "kim-appliance"),
    ],
)
def test_usage_errors_exit_64_with_the_usage_of_the_command_given(
    args: list[str], usage: str, tmp_path: Path
) -> None:
    """DESIGN.md: usage errors of any command exit 64 (EX_USAGE), never 2 or 3 (which `message
    open` uses for its results), and show the usage of the (sub)command that was given."""
    result = kim(*args, "--data-dir", str(tmp_path)) if args[:1] == ["card"] else kim(*args)
    stderr = result.stderr.decode()
    assert result.returncode == 64, stderr
    assert stderr.startswith((f"usage: {usage} ", f"usage: {usage}\n")), stderr
    assert "error:" in stderr


def test_version() -> None:
    result = kim("--version")
    assert result.returncode == 0
    expected = importlib.metadata.version("kim-appliance")
    assert result.stdout.decode().strip() == f"kim-appliance {expected}"


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_every_option_has_help_and_its_default() -> None:
    """issue 15: help text for every option, with its default where it has one (--data-dir,
    --log-level, --pop3-days ...)."""
    parsers = _parsers(build_parser())
    assert len(parsers) >= 14
    for parser in parsers:
        text = " ".join(parser.format_help().split())  # as one line: wrapping aside
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"{parser.prog} {name}: no help text"
            if action.option_strings and action.default not in (None, False, [], SUPPRESS):
                assert f"(default: {action.default})" in text, f"{parser.prog} {name}"
    run_help = kim("run", "--help").stdout.decode()
    assert "(default: kim-data)" in run_help
    assert "(default: INFO)" in run_help


def test_init_says_what_it_is_doing(initialised: subprocess.CompletedProcess[bytes]) -> None:
    """issue 15: the first start is not silent for seconds: the test PKI and each demo card
    report their progress on stderr."""
    progress = initialised.stderr.decode()
    assert "test PKI: making the RSA-2048 root GEM.RCA1 and its 3 CAs" in progress
    assert "test PKI: making the brainpoolP256r1 root GEM.RCA2 and its 3 CAs" in progress
    for address in ("praxis.weber", "apotheke.sonne", "zahnarzt.klein", "dr.meyer"):
        assert "demo: keys and certificates of the " in progress
        assert f" of {address}@" in progress
    assert b"demo setup written to" in initialised.stdout


def test_a_closed_stdout_ends_the_command_quietly(demo: dict[str, Any]) -> None:
    """issue 15: a reader that went away (`| head`) ends the command with the SIGPIPE status
    and no "[Errno 32] Broken pipe" or traceback on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a byte
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "kim_appliance.cli",
                *_seal_args(demo, "praxis.weber", ["apotheke.sonne"]),
            ],
            input=INNER,
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr.decode()
    assert result.stderr == b""


# --- the running appliance: fault, card renew, account list ------------------------------------

WEBER = "80276883110000100001"
SONNE = "80276883110000100002"
MAIL = (
    "From: praxis.weber@fd1.kim.telematik-test\r\nTo: zahnarzt.klein@fd1.kim.telematik-test\r\n"
    "Subject: Befund\r\n\r\nHallo\r\n"
)


@pytest.fixture(scope="module")
def running(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KimAppliance]:
    """One appliance in a copy of the initialised data dir, for the module's CLI calls."""
    copy = tmp_path_factory.mktemp("cli-running") / "kim-data"
    with KimApplianceThread(copy, template=data_dir) as app:
        yield app


def fault(app: KimAppliance, *args: str) -> subprocess.CompletedProcess[bytes]:
    return kim("fault", "--data-dir", str(app.data_dir), *args)


def _send(app: KimAppliance) -> None:
    with app.smtp("praxis.weber") as smtp:
        sender, recipient = "praxis.weber@fd1", "zahnarzt.klein@fd1"
        smtp.sendmail(f"{sender}.kim.telematik-test", [f"{recipient}.kim.telematik-test"], MAIL)


def test_fault_without_options_prints_one_line_and_json_on_request(running: KimAppliance) -> None:
    """issue 15: `fault` prints what is switched on (one line when nothing is), not 70 lines
    of JSON; `--json` gives the whole state."""
    result = fault(running)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [
        "no faults switched on: 5 cards inserted with verified PINs, Konnektor reachable, no "
        "latency, no revoked card certificate"
    ]
    state = json.loads(fault(running, "--json").stdout)
    assert {c["iccsn"] for c in state["cards"]} >= {WEBER, SONNE}
    assert state["unreachable"] is False


def test_a_card_put_back_works_again_after_verify_pin(running: KimAppliance) -> None:
    """issue 15: after --card-removed/--card-inserted sending fails (PIN not verified, 4085 as
    on a real card) and the summary says what to do; --verify-pin makes the next mail go
    through."""
    removed = fault(running, "--card-removed", WEBER, "--latency-ms", "250")
    assert removed.stdout.decode().splitlines() == [
        "faults switched on:",
        "  every card: 250 ms per key operation (--latency-ms 0)",
        f"  card {WEBER} (Hausarztpraxis Dr. Weber): removed (--card-inserted {WEBER})",
        "(4 of 5 cards ready; `kim-appliance fault --clear` switches every fault but "
        "revocations off)",
    ]
    back = fault(running, "--card-inserted", WEBER, "--latency-ms", "0")
    assert (
        f"  card {WEBER} (Hausarztpraxis Dr. Weber): PIN.SMC not verified (--verify-pin {WEBER})"
        in back.stdout.decode().splitlines()
    )
    with pytest.raises(smtplib.SMTPResponseException) as refused:
        _send(running)
    assert refused.value.smtp_code == 451
    verified = fault(running, "--verify-pin", WEBER)
    assert verified.stdout.decode().startswith("no faults switched on")
    _send(running)


def test_a_blocked_pin_is_unblocked_and_verified(running: KimAppliance) -> None:
    """--verify-pin on a BLOCKED PIN says to unblock it first (exit 1); --unblock-pin with
    --verify-pin (applied in that order) brings the card back; the card switches repeat."""
    fault(running, "--pin-blocked", WEBER, "--pin-blocked", SONNE)
    refused = fault(running, "--verify-pin", WEBER)
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == (
        f"kim-appliance: the Konnektor refused: verify_pin: PIN.SMC of card {WEBER} "
        "(Hausarztpraxis Dr. Weber) is BLOCKED: unblock it first, as with the PUK "
        f"(kim-appliance fault --unblock-pin {WEBER})"
    )
    fixed = fault(
        running, "--unblock-pin", WEBER, "--unblock-pin", SONNE, "--verify-pin", WEBER,
        "--verify-pin", SONNE,
    )  # fmt: skip
    assert fixed.returncode == 0, fixed.stderr.decode()
    assert fixed.stdout.decode().startswith("no faults switched on")
    _send(running)


def test_clear_returns_every_card_to_its_first_state(running: KimAppliance) -> None:
    """issue 15: --clear switches every fault off, including pulled cards and blocked or
    unverified PINs (it left them as they were before)."""
    fault(running, "--card-removed", WEBER, "--pin-blocked", SONNE, "--unreachable", "on")
    assert len(fault(running).stdout.decode().splitlines()) == 5
    cleared = fault(running, "--clear")
    assert cleared.stdout.decode().startswith("no faults switched on: 5 cards inserted")
    _send(running)


def test_account_list_has_a_header_and_a_closed_pipe_ends_it_quietly(
    running: KimAppliance,
) -> None:
    """issue 15: a header line; under `| head` no "[Errno 32] Broken pipe"."""
    listing = kim("account", "list", "--data-dir", str(running.data_dir))
    lines = listing.stdout.decode().splitlines()
    assert lines[0].split() == ["ADDRESS", "STATUS", "FACHDIENST"]
    assert any(line.startswith("praxis.weber@fd1.kim.telematik-test") for line in lines[1:])
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        closed = subprocess.run(
            [
                sys.executable,
                "-m",
                "kim_appliance.cli",
                "account",
                "list",
                "--data-dir",
                str(running.data_dir),
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (closed.returncode, closed.stderr) == (141, b"")


def test_revocation_survives_a_restart_and_renew_replaces_the_certificate(
    data_dir: Path, tmp_path: Path
) -> None:
    """issue 15: a revoked certificate is listed after a restart too (read from the CRLs: it
    was `"revoked": []` before), and while it is the card's only ENC certificate its sender gets
    553; `card renew` replaces a revoked OSIG certificate by a new key and certificate that sign
    from now on (mail arrives with IntegrityCheckResult 01, where the old one gives 05) and is
    in the card's exported files; an ENC renewal is published in the VZD, and the sender whose
    ENC certificate was revoked sends again."""
    copy = tmp_path / "kim-data"
    osig_file = Path(participant(_demo(data_dir), "apotheke.sonne")["export"]["osig_cert"][0])
    weber_line = f"  card {WEBER} (Hausarztpraxis Dr. Weber): ENC RSA certificate (serial "
    with KimApplianceThread(copy, template=data_dir) as app:
        revoked = fault(app, "--revoke", f"{WEBER}:enc:rsa", "--revoke", f"{SONNE}:OSIG:ECC")
        assert revoked.returncode == 0, revoked.stderr.decode()
        assert len([x for x in revoked.stdout.decode().splitlines() if " revoked (" in x]) == 2
    with KimApplianceThread(copy) as again:
        listed = fault(again).stdout.decode().splitlines()
        assert len([x for x in listed if " revoked (" in x]) == 2, listed
        assert next(x for x in listed if " revoked (" in x).startswith(weber_line), listed
        with pytest.raises(smtplib.SMTPResponseException) as refused:
            _send(again)
        # the sender's own ENC certificate is revoked: the Clientmodul refuses the sender
        assert refused.value.smtp_code == 553, refused.value
        renew_enc = kim("card", "renew", f"{WEBER}:ENC:RSA", "--data-dir", str(copy))
        assert renew_enc.returncode == 0, renew_enc.stderr.decode()
        assert "published in the VZD" in renew_enc.stdout.decode(), renew_enc.stdout.decode()
        renewed = kim("card", "renew", f"{SONNE}:OSIG:ECC", "--data-dir", str(copy))
        assert renewed.returncode == 0, renewed.stderr.decode()
        first = renewed.stdout.decode().splitlines()[0]
        assert first.startswith(f"card {SONNE}: new OSIG ECC key and certificate, serial ")
        exported = x509.load_pem_x509_certificate(
            (copy / osig_file.relative_to(data_dir)).read_bytes()
        )
        assert f"serial {exported.serial_number:X} (was " in first
        assert not any(" revoked (" in x for x in fault(again).stdout.decode().splitlines())
        with again.smtp("apotheke.sonne") as smtp:  # signed with the renewed OSIG key
            smtp.sendmail(
                "apotheke.sonne@fd2.kim.telematik-test",
                ["zahnarzt.klein@fd1.kim.telematik-test"],
                MAIL.replace("praxis.weber@fd1", "apotheke.sonne@fd2"),
            )
        assert _fetch_one(again, "zahnarzt.klein")["X-KIM-IntegrityCheckResult"] == "01"
        _send(again)  # weber's new ENC certificate is in the VZD: he sends again


def _fetch_one(app: KimAppliance, local: str) -> email.message.Message:
    """The first message of ``local``'s mailbox through the Clientmodul, waiting (bounded) for
    the relay between the Fachdienste."""
    deadline = time.monotonic() + 30
    while True:
        pop = app.pop3(local)
        try:
            if pop.stat()[0]:
                _, lines, _ = pop.retr(1)
                return email.message_from_bytes(b"\r\n".join(lines))
        finally:
            pop.quit()
        assert time.monotonic() < deadline, f"nothing arrived for {local}"
        time.sleep(0.2)


def _demo(data_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((data_dir / "demo.json").read_text())
    return result


def test_run_prints_one_startup_line_per_component_with_its_address(
    data_dir: Path, tmp_path: Path
) -> None:
    """issue 15: one line per component with its address (host:port, no Python tuple), the
    Konnektor and the console included, and no server banner of a library."""
    copy = tmp_path / "kim-data"
    copy_template(data_dir, copy)
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kim_appliance.cli",
                "run",
                "--ephemeral-ports",
                "--data-dir",
                str(copy),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 90
            while not (copy / "endpoints.json").exists():
                assert process.poll() is None, stderr_path.read_text()
                assert time.monotonic() < deadline, "no endpoints.json after 90 s"
                time.sleep(0.1)
            endpoints = json.loads((copy / "endpoints.json").read_text())
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
    log = stderr_path.read_text()
    lines = [line.split(": ", 1)[1] for line in log.splitlines() if " INFO " in line]
    hostport = r"127\.0\.0\.1:\d+"
    expected = {
        "konnektor": rf"konnektor: https {hostport}, connector\.sds https://{hostport}/connector\.sds",
        "directory": rf"directory: ldap {hostport}, ldaps {hostport}, base dc=data,dc=vzd",
        "clientmodul": rf"clientmodul: smtps {hostport}, pop3s {hostport}",
        "console": rf"console: http://{hostport}/",
    }
    for component, pattern in expected.items():
        found = [line for line in lines if re.fullmatch(pattern, line)]
        assert len(found) == 1, f"{component}: {lines}"
    assert f"console: {endpoints['console']}" in lines
    assert f"connector.sds {endpoints['konnektor']['sds']}" in log
    assert len([line for line in lines if line.startswith("fachdienst ")]) == 2
    assert "('127.0.0.1'" not in log
    assert "Running on" not in log
