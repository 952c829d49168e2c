"""SHA-256 and AES-256-GCM of ``kim_appliance._native`` against hashlib and pyca/cryptography.

The oracles are independent implementations (pyca/cryptography ships its own OpenSSL build, not
the system libssl that the extension's EVP engine runs on); data and chunk splits are random
(hypothesis). These tests must never weaken the rule that the decryptor releases no
unauthenticated plaintext.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from kim_appliance import _native as n


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut ``data`` at the given (unsorted, possibly out-of-range) positions."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


@given(st.binary(max_size=5000), st.lists(st.integers(min_value=0), max_size=8))
def test_sha256_matches_hashlib(data: bytes, cuts: list[int]) -> None:
    h = n.Sha256()
    for piece in split(data, cuts):
        h.update(piece)
    c = h.copy()
    assert h.finalize() == hashlib.sha256(data).digest()
    c.update(b"x")
    assert c.finalize() == hashlib.sha256(data + b"x").digest()
    assert n.sha256(data) == hashlib.sha256(data).digest()
    assert n.Sha256(data).finalize() == hashlib.sha256(data).digest()


def test_sha256_cannot_be_used_after_finalize() -> None:
    h = n.Sha256()
    h.finalize()
    with pytest.raises(n.NativeError, match="already finalized"):
        h.update(b"x")


keys = st.binary(min_size=32, max_size=32)
nonces = st.binary(min_size=12, max_size=12)


cut_lists = st.lists(st.integers(0), max_size=8)


@given(keys, nonces, st.binary(max_size=64), st.binary(max_size=4000), cut_lists)
def test_gcm_streaming_matches_cryptography(
    key: bytes, nonce: bytes, aad: bytes, data: bytes, cuts: list[int]
) -> None:
    expected = AESGCM(key).encrypt(nonce, data, aad)
    enc = n.AesGcmEncryptor(key, nonce, aad)
    ct = b"".join(enc.update(p) for p in split(data, cuts))
    assert ct + enc.finalize() == expected
    assert n.gcm_seal(key, nonce, data, aad) == expected
    assert n.gcm_open(key, nonce, expected, aad) == data
    dec = n.AesGcmDecryptor(key, nonce, aad)
    for p in split(ct, cuts[::-1]):
        dec.update(p)
    with dec.finalize(expected[-16:]) as pt:
        assert pt.size == len(data)
        assert pt.read() == data


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` cut into random pieces: mostly small and unaligned, now and then empty or large."""
    out, i = [], 0
    while i < len(data):
        size = rng.choice([0, 1, 15, 16, 17, rng.randrange(1, 100), rng.randrange(1, 70_000)])
        out.append(data[i : i + size])
        i += size
    return out


def gcm_round_trip(seed: int, length: int) -> None:
    """Encrypt and decrypt ``length`` random bytes in random chunkings and compare every output
    with pyca/cryptography's AESGCM; then a flipped bit in the ciphertext, the tag or the AAD
    must fail authentication and release nothing."""
    rng = random.Random(seed)
    key, nonce = rng.randbytes(32), rng.randbytes(12)
    aad = rng.randbytes(rng.choice([0, 1, 13, 16, 200]))
    data = rng.randbytes(length)
    expected = AESGCM(key).encrypt(nonce, data, aad)
    enc = n.AesGcmEncryptor(key, nonce, aad)
    ct = b"".join(enc.update(p) for p in pieces(data, rng))
    assert ct + enc.finalize() == expected
    ct, tag = expected[:-16], expected[-16:]
    dec = n.AesGcmDecryptor(key, nonce, aad)
    for p in pieces(ct, rng):
        dec.update(p)
    with dec.finalize(tag) as pt:
        assert pt.size == length
        assert pt.read() == data
    assert n.gcm_open(key, nonce, expected, aad) == data
    # Tampering: one bit of the ciphertext (if any), of the tag, or of the AAD.
    bad_ct = bytearray(ct)
    if bad_ct:
        bad_ct[rng.randrange(len(bad_ct))] ^= 1 << rng.randrange(8)
    bad_tag = bytearray(tag)
    bad_tag[rng.randrange(16)] ^= 1 << rng.randrange(8)
    for c, t, a in [
        (bytes(bad_ct), tag, aad),
        (ct, bytes(bad_tag), aad),
        (ct, tag, aad + b"x"),
    ]:
        if (c, t, a) == (ct, tag, aad):
            continue  # empty ciphertext: nothing to flip
        dec = n.AesGcmDecryptor(key, nonce, a)
        for p in pieces(c, rng):
            dec.update(p)
        with pytest.raises(n.TagMismatchError):
            dec.finalize(t)
        with pytest.raises(n.TagMismatchError):
            n.gcm_open(key, nonce, c + t, a)


@given(st.integers(0, 2**32), st.integers(0, 100_000))
def test_gcm_matches_cryptography_over_random_lengths_and_chunkings(seed: int, length: int) -> None:
    gcm_round_trip(seed, length)


@pytest.mark.parametrize("length", [(1 << 20) - 1, 3 * (1 << 20) + 5, 5 * 1000 * 1000])
def test_gcm_matches_cryptography_over_megabytes(length: int) -> None:
    for seed in range(2):
        gcm_round_trip(seed * 7919 + length, length)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_gcm_runs_on_the_system_openssl() -> None:
    """The cipher is the system's OpenSSL (the library of the ``openssl`` command), not a copy
    shipped with the extension."""
    out = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=True)
    match = re.search(r"\(Library: (.*)\)", out.stdout)
    library = match.group(1) if match else out.stdout.strip()
    assert library == n.OPENSSL_VERSION


def test_decryptor_rejects_altered_ciphertext_and_leaves_no_file(tmp_path: Path) -> None:
    """A flipped bit anywhere fails authentication and no plaintext is released (the spool is
    anonymous, so the spool dir stays empty throughout)."""
    key, nonce = os.urandom(32), os.urandom(12)
    data = os.urandom(200_000)
    sealed = AESGCM(key).encrypt(nonce, data, b"hdr")
    for pos in (0, 100_000, len(sealed) - 1):
        bad = bytearray(sealed)
        bad[pos] ^= 0x01
        dec = n.AesGcmDecryptor(key, nonce, b"hdr", spool_dir=str(tmp_path))
        dec.update(bytes(bad[:-16]))
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(n.TagMismatchError, match="tag mismatch"):
            dec.finalize(bytes(bad[-16:]))
        with pytest.raises(n.NativeError, match="already finalized"):
            dec.finalize(sealed[-16:])
    with pytest.raises(n.TagMismatchError):
        n.gcm_open(key, nonce, sealed, b"other aad")


def test_gcm_argument_errors_name_the_field() -> None:
    with pytest.raises(n.NativeError, match=r"key: .*32-byte"):
        n.AesGcmEncryptor(b"k" * 16, b"n" * 12)
    with pytest.raises(n.NativeError, match=r"nonce: .*12-byte"):
        n.AesGcmDecryptor(b"k" * 32, b"n" * 16)
    dec = n.AesGcmDecryptor(b"k" * 32, b"n" * 12)
    with pytest.raises(n.NativeError, match=r"tag: .*16 bytes"):
        dec.finalize(b"short")
    with pytest.raises(OSError, match="spool"):
        n.AesGcmDecryptor(b"k" * 32, b"n" * 12, spool_dir="/nonexistent/spool")


def test_plaintext_is_a_seekable_file() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    data = os.urandom(300_000)
    sealed = AESGCM(key).encrypt(nonce, data, None)
    dec = n.AesGcmDecryptor(key, nonce)
    dec.update(sealed[:-16])
    pt = dec.finalize(sealed[-16:])
    assert pt.tell() == 0
    assert pt.read(10) == data[:10]
    buf = bytearray(100_000)
    assert pt.readinto(buf) == 100_000
    assert bytes(buf) == data[10:100_010]
    view = memoryview(bytearray(5))
    assert pt.readinto(view) == 5
    assert pt.seek(-3, 2) == len(data) - 3
    assert pt.read() == data[-3:]
    assert pt.read() == b""
    assert pt.seek(5) == 5
    assert pt.read(1) == data[5:6]
    with pytest.raises(ValueError, match="writable"):
        pt.readinto(memoryview(b"readonly"))
    pt.close()
    with pytest.raises(ValueError, match="closed"):
        pt.read()


def test_25mb_message_in_threads_matches_cryptography() -> None:
    """Two 25 MB messages encrypted and decrypted in parallel threads (the GIL is released)."""
    key, nonce = os.urandom(32), os.urandom(12)
    data = os.urandom(25 * 1024 * 1024)
    expected = AESGCM(key).encrypt(nonce, data, b"")
    results: list[bool] = []
    MB = 1 << 20

    def work() -> None:
        enc = n.AesGcmEncryptor(key, nonce)
        ct = b"".join(enc.update(data[i : i + MB]) for i in range(0, len(data), MB))
        tag = enc.finalize()
        dec = n.AesGcmDecryptor(key, nonce)
        for i in range(0, len(ct), MB):
            dec.update(ct[i : i + MB])
        with dec.finalize(tag) as pt:
            results.append(ct + tag == expected and pt.read() == data)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True, True]
