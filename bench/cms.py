"""Benchmark: seal and open 1, 10 and 25 MB KIM messages, against `openssl cms` on the same input.

For each size an inner mail (headers + a base64 attachment-like body) is sealed for an RSA
recipient, a brainpoolP256r1 recipient and the (RSA) sender, then opened by the ECC recipient
with path validation. The baseline is the system's OpenSSL doing the same work in one run:
`openssl cms -sign | openssl cms -encrypt -aes-256-gcm` to S/MIME (RSA-PSS signature; OAEP and
ECDH recipients), then `openssl cms -decrypt | openssl cms -verify`. Each size runs in a fresh
worker process so that its peak RSS is its own; ``peak_rss_mb`` is the peak above the worker's
baseline after imports and key loading.

Usage: python bench/cms.py [--sizes 1,10,25] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_RATIO = 0.5
TARGET_RSS_MB = 64.0


def make_inner(path: Path, size_mb: int) -> None:
    """An inner mail of about ``size_mb`` MiB: headers and base64 lines of random data."""
    import base64

    header = (
        b"From: Hausarztpraxis <praxis.rsa@fd1.kim.telematik-test>\r\n"
        b"To: apotheke.ecc@fd2.kim.telematik-test, labor.rsa@fd2.kim.telematik-test\r\n"
        b"Subject: Befunde\r\nDate: Sat, 28 Nov 2026 10:00:00 +0100\r\n"
        b"Message-ID: <bench-0001@kim>\r\nX-KIM-Dienstkennung: KIM-Mail;Default;V1.0\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    target = size_mb * 1024 * 1024
    with path.open("wb") as f:
        f.write(header)
        written = len(header)
        while written < target:
            raw = os.urandom(57 * 1024)
            block = base64.encodebytes(raw).replace(b"\n", b"\r\n")
            block = block[: target - written] if written + len(block) > target else block
            f.write(block)
            written += len(block)


def setup_keys(directory: Path) -> dict[str, Path]:
    from kim_appliance.pki import Algorithm, CertProfile, TestPki

    pki = TestPki.generate()
    files: dict[str, Path] = {}
    items = {
        "signer": (CertProfile.C_HCI_OSIG, Algorithm.RSA),
        "sender_enc": (CertProfile.C_HCI_ENC, Algorithm.RSA),
        "rsa_enc": (CertProfile.C_HCI_ENC, Algorithm.RSA),
        "ecc_enc": (CertProfile.C_HCI_ENC, Algorithm.ECC),
    }
    for name, (profile, algorithm) in items.items():
        issued = pki.issue(
            profile,
            algorithm,
            common_name=f"bench {name} TEST-ONLY",
            telematik_id="1-SMC-B-Testkarte-883110000999999",
            profession_oid="1.2.276.0.76.4.50",
        )
        files[f"{name}_key"] = directory / f"{name}.key.pem"
        files[f"{name}_cert"] = directory / f"{name}.cert.pem"
        files[f"{name}_key"].write_bytes(issued.key_pem())
        files[f"{name}_cert"].write_bytes(issued.cert_pem())
    chain = b"".join(ca.issued.cert_pem() for ca in [*pki.roots, *pki.intermediates])
    files["trust"] = directory / "trust.pem"
    files["trust"].write_bytes(chain)
    return files


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(size_mb: int, directory: Path) -> dict[str, Any]:
    """Seal and open one message in this (fresh) process; report times and peak RSS."""
    from cryptography import x509

    from kim_appliance.cms.keys import SoftwareKey
    from kim_appliance.mail.seal import Certified, seal
    from kim_appliance.mail.unseal import open_message
    from kim_appliance.pki import TrustStore

    def cert(name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((directory / f"{name}.cert.pem").read_bytes())

    signer = SoftwareKey.from_files(directory / "signer.key.pem", directory / "signer.cert.pem")
    reader = SoftwareKey.from_files(directory / "ecc_enc.key.pem", directory / "ecc_enc.cert.pem")
    trust = TrustStore.from_pem_files([directory / "trust.pem"])
    sender = [Certified("praxis.rsa@fd1.kim.telematik-test", cert("sender_enc"))]
    recipients = [
        Certified("apotheke.ecc@fd2.kim.telematik-test", cert("ecc_enc")),
        Certified("labor.rsa@fd2.kim.telematik-test", cert("rsa_enc")),
    ]
    inner, outer, opened = (directory / f"{n}-{size_mb}.eml" for n in ("inner", "outer", "opened"))
    baseline = rss_mb()
    t0 = time.perf_counter()
    with inner.open("rb") as src, outer.open("wb") as dst:
        seal(src, dst, signer=signer, sender=sender, recipients=recipients)
    t1 = time.perf_counter()
    with outer.open("rb") as src, opened.open("wb") as dst:
        report = open_message(src, dst, keys=[reader], trust=trust)
    t2 = time.perf_counter()
    peak = max(0.0, rss_mb() - baseline)
    if report.exit_code != 0:
        raise SystemExit(f"open failed: {report.lines()}")
    if not same_content(inner, opened):
        raise SystemExit("opened message differs from the input")
    return {
        "seal_s": t1 - t0,
        "open_s": t2 - t1,
        "peak_rss_mb": peak,
        "outer_bytes": outer.stat().st_size,
    }


def same_content(a: Path, b: Path) -> bool:
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def openssl_case(size_mb: int, directory: Path) -> tuple[float, float]:
    d = directory
    inner, smime, back = (
        d / f"inner-{size_mb}.eml",
        d / f"ossl-{size_mb}.p7m",
        d / f"ossl-{size_mb}.eml",
    )
    sign = (
        f"openssl cms -sign -binary -nodetach -md sha256 -in {inner} -signer {d}/signer.cert.pem "
        f"-inkey {d}/signer.key.pem -keyopt rsa_padding_mode:pss -keyopt rsa_pss_saltlen:32 "
        f"-outform DER"
    )
    encrypt = (
        f"openssl cms -encrypt -binary -aes-256-gcm -outform SMIME -out {smime} "
        f"-recip {d}/ecc_enc.cert.pem -keyopt ecdh_kdf_md:sha256 "
        f"-recip {d}/rsa_enc.cert.pem -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha256 "
        f"-keyopt rsa_mgf1_md:sha256 "
        f"-recip {d}/sender_enc.cert.pem -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha256 "
        f"-keyopt rsa_mgf1_md:sha256"
    )
    decrypt = (
        f"openssl cms -decrypt -binary -inform SMIME -in {smime} -recip {d}/ecc_enc.cert.pem "
        f"-inkey {d}/ecc_enc.key.pem -outform DER"
    )
    verify = f"openssl cms -verify -binary -inform DER -CAfile {d}/trust.pem -out {back}"
    t0 = time.perf_counter()
    subprocess.run(
        f"set -o pipefail; {sign} | {encrypt}", shell=True, check=True, executable="/bin/bash"
    )
    t1 = time.perf_counter()
    subprocess.run(
        f"set -o pipefail; {decrypt} | {verify}",
        shell=True,
        check=True,
        executable="/bin/bash",
        stderr=subprocess.DEVNULL,
    )
    t2 = time.perf_counter()
    if not same_content(back, inner):
        raise SystemExit("openssl round trip differs from the input")
    return t1 - t0, t2 - t1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,25")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.dir)))
        return 0
    cases = []
    with tempfile.TemporaryDirectory(prefix="kim-bench-") as tmp:
        directory = Path(tmp)
        setup_keys(directory)
        for size in (int(s) for s in args.sizes.split(",")):
            make_inner(directory / f"inner-{size}.eml", size)
            out = subprocess.run(
                [sys.executable, __file__, "--worker", str(size), "--dir", str(directory)],
                check=True,
                capture_output=True,
                text=True,
            )
            ours = json.loads(out.stdout)
            openssl_seal, openssl_open = openssl_case(size, directory)
            cases.append(
                {
                    "size_mb": size,
                    "seal_s": round(ours["seal_s"], 4),
                    "open_s": round(ours["open_s"], 4),
                    "openssl_seal_s": round(openssl_seal, 4),
                    "openssl_open_s": round(openssl_open, 4),
                    "peak_rss_mb": round(ours["peak_rss_mb"], 1),
                }
            )
            for name in ("inner", "outer", "opened", "ossl"):
                for f in directory.glob(f"{name}-{size}*"):
                    f.unlink()
    print(
        f"{'MB':>4} {'seal s':>8} {'open s':>8} {'ossl seal':>10} {'ossl open':>10} "
        f"{'ratio':>6} {'RSS +MB':>8}"
    )
    for c in cases:
        ratio = (c["seal_s"] + c["open_s"]) / (c["openssl_seal_s"] + c["openssl_open_s"])
        c_ratio = round(ratio, 3)
        print(
            f"{c['size_mb']:>4} {c['seal_s']:>8.3f} {c['open_s']:>8.3f} "
            f"{c['openssl_seal_s']:>10.3f} {c['openssl_open_s']:>10.3f} {c_ratio:>6.2f} "
            f"{c['peak_rss_mb']:>8.1f}"
        )
    largest = max(cases, key=lambda c: c["size_mb"])
    ratio = (largest["seal_s"] + largest["open_s"]) / (
        largest["openssl_seal_s"] + largest["openssl_open_s"]
    )
    ok = ratio <= TARGET_RATIO and largest["peak_rss_mb"] <= TARGET_RSS_MB
    print(
        f"target for {largest['size_mb']} MB: ratio {ratio:.2f} <= {TARGET_RATIO}, "
        f"RSS +{largest['peak_rss_mb']} MB <= {TARGET_RSS_MB}: {'met' if ok else 'MISSED'}"
    )
    if args.json:
        args.json.write_text(json.dumps({"cases": cases}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
