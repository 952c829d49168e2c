"""The KAS blob of a large mail without sockets (digest §2.8, §3.5): checked with
``cryptography``'s AES-GCM and ``hashlib`` as independent oracles."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kim_appliance.clientmodul.large_mail import NONCE_SIZE, encrypt_for_kas


def test_kas_blob_is_aes_256_gcm_under_a_fresh_key_with_the_sha256_of_the_mail(
    tmp_path: Path,
) -> None:
    """GS-A_5016, A_19358, A_19360: the client mail is encrypted with AES-256-GCM under a key
    made for this mail (two blobs of the same mail share neither key nor IV); the blob is
    ``IV (12) || ciphertext || tag`` and decrypts to the mail. A_19644: ``hash`` is the
    base64 SHA-256 of the mail."""
    mail = b"From: a@x.kim.telematik-test\r\n\r\n" + os.urandom(3 * 1024 * 1024 + 17)
    first = encrypt_for_kas(io.BytesIO(mail), str(tmp_path))
    second = encrypt_for_kas(io.BytesIO(mail), str(tmp_path))
    try:
        blobs = [first.file.read(), second.file.read()]
        assert [len(b) for b in blobs] == [first.size, second.size]
        assert len(first.key) == len(second.key) == 32  # AES-256
        assert first.key != second.key
        assert blobs[0][:NONCE_SIZE] != blobs[1][:NONCE_SIZE]
        for blob, made in zip(blobs, (first, second), strict=True):
            nonce, sealed = blob[:NONCE_SIZE], blob[NONCE_SIZE:]
            assert AESGCM(made.key).decrypt(nonce, sealed, None) == mail
            assert made.hash == base64.b64encode(hashlib.sha256(mail).digest()).decode()
            assert made.plain_size == len(mail)
    finally:
        first.close()
        second.close()
