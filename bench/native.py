"""Benchmark: throughput of each native hot-path operation against its Python baseline.

For 25 MB of random data fed in 1 MiB chunks, measures MB/s of the native SHA-256, AES-256-GCM
encrypt and decrypt (the decryptor spools to an anonymous file, as in production), base64 encode
(76 columns, CRLF) and decode, and the OCTET STRING chunker, next to hashlib, cryptography's
one-shot AESGCM and streaming Cipher, and base64.encodebytes / b64decode in the same run. Each
figure is the best of ``--repeat`` runs. It measures only; it must never be used as a test.

Usage: python bench/native.py [--mb 25] [--repeat 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kim_appliance import _native

CHUNK = 1024 * 1024


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``fn``."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    data = os.urandom(args.mb * 1000 * 1000)
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
    mb = len(data) / 1e6
    results = []
    print(f"{'operation':<26} {'native MB/s':>12} {'python MB/s':>12}  baseline")
    for name, native_fn, python_fn, baseline in rows:
        n = mb / best_seconds(native_fn, args.repeat)
        p = mb / best_seconds(python_fn, args.repeat)
        results.append(
            {"name": name, "native_mb_s": round(n), "python_mb_s": round(p), "baseline": baseline}
        )
        print(f"{name:<26} {n:>12.0f} {p:>12.0f}  {baseline}")
    if args.json:
        args.json.write_text(json.dumps({"operations": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
