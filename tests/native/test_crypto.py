"""SHA-256 and AES-256-GCM of ``kim_appliance._native`` against hashlib and pyca/cryptography.

The oracles are independent implementations; data and chunk splits are random (hypothesis). These
tests must never weaken the rule that the decryptor releases no unauthenticated plaintext.
"""

from __future__ import annotations

import hashlib
import os
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
