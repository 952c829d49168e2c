"""Benchmark: the library candidates behind the native hot path, and its Python-facing throughput.

One run measures, on the same random data (``--mib``, default 25 MiB, fed in 1 MiB chunks):

* **candidates** (GB/s; each run's figure and the best): every AES-256-GCM library the extension
  could use, encrypt and decrypt (tag verified) -- OpenSSL's EVP through the ``openssl`` crate,
  streaming (what ships), and RustCrypto ``aes-gcm`` and ring, which are one-shot AEADs and are
  timed over the whole buffer in place (their best case; they cannot stream a message) -- and
  each base64 codec behind the same MIME framing (76 columns, CRLF), encode and decode:
  ``base64-simd`` (what ships) and the ``base64`` crate. The candidates run inside Rust, in a copy
  of the extension built with the cargo feature ``bench-candidates`` (``cargo build --release``
  into ``target/bench-candidates``; about a minute the first time), so that they share buffers
  and chunking. Baseline: ``openssl speed -elapsed -evp aes-256-gcm -bytes 1048576`` of the
  system's OpenSSL, the libssl that the extension links.
* **shipped API** (GB/s, best of ``--repeat``): the installed ``kim_appliance._native`` objects as
  Python calls them (a new bytes object per chunk; the decryptor spools to an anonymous file, as
  in production), next to hashlib, pyca/cryptography and Python's base64 in the same run.

It measures only; it must never be used as a test.

Usage: python bench/native.py [--mib 25] [--repeat 3] [--json PATH] [--no-candidates]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kim_appliance import _native

CHUNK = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
CANDIDATE_TARGET = ROOT / "target" / "bench-candidates"
SHIPPED_GCM = "openssl-evp"
SHIPPED_BASE64 = "base64-simd"


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``fn``, after one untimed warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def build_candidates() -> ModuleType:
    """Build the extension with the ``bench-candidates`` feature and load it under its own name."""
    env = {**os.environ, "PYO3_PYTHON": sys.executable}
    features = "pyo3/extension-module,bench-candidates"
    subprocess.run(
        [
            *("cargo", "build", "--release", "--lib", "--locked", "--features", features),
            *("--target-dir", str(CANDIDATE_TARGET)),
        ],
        cwd=ROOT,
        env=env,
        check=True,
    )
    suffix = "dylib" if sys.platform == "darwin" else "so"
    library = CANDIDATE_TARGET / "release" / f"lib_native.{suffix}"
    # The init function is PyInit__native, so the module's last name component must be _native.
    loader = importlib.machinery.ExtensionFileLoader("kim_bench_candidates._native", str(library))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def openssl_speed(seconds: int) -> float | None:
    """GB/s of ``openssl speed -elapsed -evp aes-256-gcm`` on 1 MiB blocks, or None without it."""
    cmd = ["openssl", "speed", "-elapsed", "-seconds", str(seconds)]
    cmd += ["-evp", "aes-256-gcm", "-bytes", str(CHUNK)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    # The last line: "AES-256-GCM    3679977.47k", in 1000s of bytes per second.
    match = re.search(r"^AES-256-GCM\s+([\d.]+)k\s*$", out, re.MULTILINE | re.IGNORECASE)
    return float(match.group(1)) * 1000 / 1e9 if match else None


def gb_s(size: int, seconds: float) -> float:
    return size / seconds / 1e9


def measure_candidates(data: bytes, repeat: int) -> dict[str, Any]:
    module = build_candidates()
    rows: list[dict[str, Any]] = []
    print(f"\ncandidates, {len(data) / 2**20:.0f} MiB in 1 MiB chunks (GB/s of input; runs, best)")
    for engine in module._GCM_ENGINES:
        for encrypt in (True, False):
            times = module._bench_gcm(engine, encrypt, data, CHUNK, repeat)
            rows.append(candidate_row("gcm", engine, encrypt, len(data), times, SHIPPED_GCM))
    for codec in module._BASE64_CODECS:
        for encode in (True, False):
            times = module._bench_base64(codec, encode, data, CHUNK, 76, repeat)
            rows.append(candidate_row("base64", codec, encode, len(data), times, SHIPPED_BASE64))
    speeds = [s for s in (openssl_speed(2) for _ in range(repeat)) if s is not None]
    if speeds:
        runs = " ".join(f"{s:5.2f}" for s in speeds)
        label = "openssl speed (baseline)"
        print(f"{'gcm':<7} {label:<26} {'encrypt':<8} {runs}  best {max(speeds):.2f}")
    return {
        "candidates": rows,
        "openssl_speed_gb_s": [round(s, 3) for s in speeds],
        "openssl_version": getattr(module, "OPENSSL_VERSION", None),
    }


def candidate_row(
    kind: str, name: str, forward: bool, size: int, times: list[float], shipped: str
) -> dict[str, Any]:
    direction = (
        ("encrypt" if forward else "decrypt")
        if kind == "gcm"
        else ("encode" if forward else "decode")
    )
    speeds = [gb_s(size, t) for t in times]
    label = f"{name} (shipped)" if name == shipped else name
    runs = " ".join(f"{s:5.2f}" for s in speeds)
    print(f"{kind:<7} {label:<26} {direction:<8} {runs}  best {max(speeds):.2f}")
    return {
        "kind": kind,
        "candidate": name,
        "shipped": name == shipped,
        "direction": direction,
        "gb_s_runs": [round(s, 3) for s in speeds],
        "gb_s_best": round(max(speeds), 3),
    }


def measure_shipped(data: bytes, repeat: int) -> list[dict[str, Any]]:
    parts = chunks(data)
    key, nonce = os.urandom(32), os.urandom(12)
    ct = AESGCM(key).encrypt(nonce, data, None)
    ct_body, tag = ct[:-16], ct[-16:]
    ct_parts = chunks(ct_body)
    # The MIME text the decoder sees: 76-column lines ending CRLF.
    text = base64.encodebytes(data).replace(b"\n", b"\r\n")
    text_parts = chunks(text)

    def n_sha() -> None:
        h = _native.Sha256()
        for p in parts:
            h.update(p)
        h.finalize()

    def p_sha() -> None:
        h = hashlib.sha256()
        for p in parts:
            h.update(p)
        h.digest()

    def n_enc() -> None:
        e = _native.AesGcmEncryptor(key, nonce)
        for p in parts:
            e.update(p)
        e.finalize()

    def p_enc_stream() -> None:
        e = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        for p in parts:
            e.update(p)
        e.finalize()

    def p_enc_oneshot() -> None:
        AESGCM(key).encrypt(nonce, data, None)

    def n_dec() -> None:
        d = _native.AesGcmDecryptor(key, nonce)
        for p in ct_parts:
            d.update(p)
        d.finalize(tag).close()

    def p_dec_stream() -> None:
        d = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
        for p in ct_parts:
            d.update(p)
        d.finalize()

    def p_dec_oneshot() -> None:
        AESGCM(key).decrypt(nonce, ct, None)

    def n_b64e() -> None:
        e = _native.Base64Encoder(76)
        for p in parts:
            e.update(p)
        e.finalize()

    def p_b64e() -> None:
        # encodebytes needs whole 57-byte lines per call; 1 MiB rounded down to them.
        step = CHUNK // 57 * 57
        for i in range(0, len(data), step):
            base64.encodebytes(data[i : i + step])

    def n_b64d() -> None:
        d = _native.Base64Decoder()
        for p in text_parts:
            d.update(p)
        d.finalize()

    def p_b64d() -> None:
        binascii.a2b_base64(text)

    def p_b64d_strict() -> None:
        base64.b64decode(text.replace(b"\r\n", b""), validate=True)

    def n_chunk() -> None:
        c = _native.OctetStringChunker(65536)
        for p in parts:
            c.update(p)
        c.finalize()

    def p_chunk() -> None:
        hdr = _native.ber_header(0, False, 4, 65536)
        b"".join(hdr + data[i : i + 65536] for i in range(0, len(data), 65536))

    rows: list[tuple[str, Callable[[], None], Callable[[], None], str]] = [
        ("sha256", n_sha, p_sha, "hashlib"),
        ("gcm_encrypt", n_enc, p_enc_stream, "cryptography Cipher stream"),
        ("gcm_encrypt_vs_oneshot", n_enc, p_enc_oneshot, "cryptography AESGCM one-shot"),
        ("gcm_decrypt_spool", n_dec, p_dec_stream, "cryptography Cipher stream (no spool)"),
        ("gcm_decrypt_vs_oneshot", n_dec, p_dec_oneshot, "cryptography AESGCM one-shot"),
        ("base64_encode_76crlf", n_b64e, p_b64e, "base64.encodebytes (LF)"),
        ("base64_decode_crlf", n_b64d, p_b64d, "binascii.a2b_base64 (lenient)"),
        ("base64_decode_vs_strict", n_b64d, p_b64d_strict, "strip CRLF + b64decode strict"),
        ("octet_string_chunker", n_chunk, p_chunk, "bytes join of header + slice"),
    ]
    results = []
    print(f"\nshipped API, best of {repeat} (GB/s of input)")
    print(f"{'operation':<26} {'native':>7} {'python':>7}  baseline")
    for name, native_fn, python_fn, baseline in rows:
        n = gb_s(len(data), best_seconds(native_fn, repeat))
        p = gb_s(len(data), best_seconds(python_fn, repeat))
        results.append(
            {
                "name": name,
                "native_gb_s": round(n, 3),
                "python_gb_s": round(p, 3),
                "baseline": baseline,
            }
        )
        print(f"{name:<26} {n:>7.2f} {p:>7.2f}  {baseline}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--no-candidates", action="store_true", help="skip building and timing the candidates"
    )
    args = parser.parse_args()

    data = os.urandom(args.mib * 1024 * 1024)
    report: dict[str, Any] = {"mib": args.mib, "chunk": CHUNK, "repeat": args.repeat}
    report["shipped_openssl_version"] = _native.OPENSSL_VERSION
    print(f"shipped extension: AES-256-GCM on {_native.OPENSSL_VERSION}")
    if not args.no_candidates:
        report.update(measure_candidates(data, args.repeat))
    report["operations"] = measure_shipped(data, args.repeat)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
