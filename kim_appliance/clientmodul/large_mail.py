"""Large mails through the KAS (KIM >= 1.5.3, digest §1.4 step 7, §1.5 receive step 5, §3.5).

Send side: above the KAS threshold the whole processed client mail is encrypted with a fresh
AES-256-GCM key (:func:`encrypt_for_kas`, streaming through the native GCM into a spool file)
and uploaded to the sender's KAS; the KIM message then carries a copy of the client mail's
header with the body replaced by one ``x-kas`` part holding the attachment JSON
(:func:`kas_message`, exactly the shape of gematik's ``samples/KAS/1_3_*.txt``:
``Content-Type: text/plain; charset=utf-8``, ``Content-Disposition: x-kas``, then
``{"link","k","hash","size"}``, api-kim ``Attachment_schema.json``).

Receive side: :func:`kas_reference` recognises a decrypted KIM message whose body is such a
part; :func:`decrypt_blob` decrypts the downloaded blob and checks the hash.

Choices where the spec is silent (digest §7.4): the blob is ``nonce (12) || ciphertext ||
tag (16)``; ``hash`` is the base64 SHA-256 of the *plaintext* client mail (openkim, and the
receive rule "decrypt, then compare the hash"); ``size`` is the client mail's size in bytes
(as transferred, i.e. with its base64 attachments; also ``X-KIM-KAS-Size``, A_23467).

Resource handling: nothing here holds a mail in memory; the plaintext of a download is
released only after the GCM tag verified (native spool). All functions block (disk, CPU):
call them from worker threads. This module never talks to the network.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import tempfile
from dataclasses import dataclass
from typing import IO, BinaryIO, Final

from kim_appliance import _native
from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import HeaderBlock, HeaderField, read_header_block
from kim_appliance.protocols.jsonbody import load_json_body

READ_SIZE: Final = 1024 * 1024
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
KEY_SIZE: Final = 32
#: the attachment JSON is a few hundred bytes; anything much larger is not one
MAX_REFERENCE: Final = 64 * 1024
#: the X-KOM-LE-Version of a KAS message (KOM-LE-A_2100-02)
KAS_KOM_LE_VERSION: Final = "1.5"
#: top-level fields of the client mail that the x-kas part replaces
_REPLACED: Final = frozenset({"content-type", "content-transfer-encoding", "content-disposition"})


class KasDataError(Exception):
    """The KAS data is not usable: ``code`` 4007 (cannot decrypt) or 4012 (hash mismatch),
    digest §1.6."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class KasBlob:
    """An encrypted client mail ready for addMailData (``file`` from offset 0, ``size`` bytes)."""

    file: IO[bytes]
    size: int
    key: bytes
    #: base64 SHA-256 of the plaintext
    hash: str
    #: the client mail's size in bytes (``size`` of the JSON and X-KIM-KAS-Size)
    plain_size: int

    def close(self) -> None:
        self.file.close()


def encrypt_for_kas(client_mail: BinaryIO, spool_dir: str | None) -> KasBlob:
    """Encrypt ``client_mail`` (read to its end) with a fresh AES-256-GCM key into a spool."""
    key = os.urandom(KEY_SIZE)
    nonce = os.urandom(NONCE_SIZE)
    encryptor = _native.AesGcmEncryptor(key, nonce)
    hasher = _native.Sha256()
    out = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 (handed to the caller)
    try:
        out.write(nonce)
        plain = 0
        while chunk := client_mail.read(READ_SIZE):
            hasher.update(chunk)
            out.write(encryptor.update(chunk))
            plain += len(chunk)
        out.write(encryptor.finalize())
        size = out.tell()
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return KasBlob(out, size, key, base64.b64encode(hasher.finalize()).decode("ascii"), plain)


def attachment_json(link: str, blob: KasBlob) -> bytes:
    """The KIM attachment data structure (digest §3.5), as compact JSON."""
    return json.dumps(
        {
            "link": link,
            "k": base64.b64encode(blob.key).decode("ascii"),
            "hash": blob.hash,
            "size": blob.plain_size,
        },
        separators=(",", ":"),
    ).encode("ascii")


def kas_message(header: HeaderBlock, reference: bytes) -> bytes:
    """The KIM message's inner mail: the client mail's header without its top-level
    Content-Type/-Transfer-Encoding/-Disposition, then the x-kas part (samples/KAS/1_3)."""
    fields = [f for f in header if f.name.lower() not in _REPLACED]
    fields.append(HeaderField("Content-Type", b" text/plain; charset=utf-8"))
    fields.append(HeaderField("Content-Disposition", b" x-kas"))
    return HeaderBlock(tuple(fields)).encode() + b"\r\n" + reference + b"\r\n"


# --- receive side --------------------------------------------------------------------------


@dataclass(frozen=True)
class KasReference:
    """The attachment JSON of a received KAS message."""

    link: str
    key: bytes
    #: the 32-byte SHA-256 the client mail must have
    digest: bytes
    size: int


def kas_reference(inner: BinaryIO) -> KasReference | None:
    """The reference if the decrypted mail in ``inner`` (read from its position) is an x-kas
    message, else None. KasDataError 4007 when it is one but the JSON is not usable."""
    try:
        header, rest = read_header_block(inner)
    except MailFormatError:
        return None
    disposition = (header.get("Content-Disposition") or "").split(";")[0].strip().lower()
    if disposition != "x-kas":
        return None
    body = rest + inner.read(MAX_REFERENCE + 1 - len(rest))
    if len(body) > MAX_REFERENCE:
        raise KasDataError("4007", f"the x-kas part is larger than {MAX_REFERENCE} bytes")
    try:
        data = load_json_body(body, max_bytes=MAX_REFERENCE)
        link, key, digest, size = data["link"], data["k"], data["hash"], data["size"]
        key_bytes = base64.b64decode(key, validate=True)
        digest_bytes = base64.b64decode(digest, validate=True)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise KasDataError(
            "4007", f"the x-kas part is not the KIM attachment JSON (link, k, hash, size): {exc}"
        ) from exc
    if not isinstance(link, str) or not link.startswith("https://"):
        raise KasDataError("4007", f"x-kas link {str(link)[:80]!r} is not an https URL")
    if len(key_bytes) != KEY_SIZE:
        raise KasDataError("4007", f"x-kas k: {len(key_bytes)} bytes, an AES-256 key has 32")
    if len(digest_bytes) != 32:
        raise KasDataError("4007", f"x-kas hash: {len(digest_bytes)} bytes, SHA-256 has 32")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise KasDataError("4007", f"x-kas size {size!r} is not a byte count")
    return KasReference(link, key_bytes, digest_bytes, size)


def decrypt_blob(
    blob: BinaryIO, reference: KasReference, spool_dir: str | None
) -> _native.Plaintext:
    """Decrypt the downloaded ``blob`` (from offset 0) and check the hash. Returns the client
    mail (released only after the tag verified); KasDataError 4007 or 4012 otherwise."""
    blob.seek(0, os.SEEK_END)
    total = blob.tell()
    if total < NONCE_SIZE + TAG_SIZE:
        raise KasDataError("4007", f"the KAS blob has {total} bytes: too short for nonce and tag")
    blob.seek(0)
    nonce = blob.read(NONCE_SIZE)
    decryptor = _native.AesGcmDecryptor(reference.key, nonce, b"", spool_dir)
    left = total - NONCE_SIZE - TAG_SIZE
    while left > 0:
        chunk = blob.read(min(READ_SIZE, left))
        if not chunk:
            raise KasDataError("4007", "the KAS blob ended early")
        decryptor.update(chunk)
        left -= len(chunk)
    tag = blob.read(TAG_SIZE)
    try:
        plaintext = decryptor.finalize(tag)
    except _native.TagMismatchError as exc:
        raise KasDataError(
            "4007", "the KAS blob does not decrypt with the key of the message (GCM tag)"
        ) from exc
    try:
        hasher = _native.Sha256()
        plaintext.seek(0)
        while chunk := plaintext.read(READ_SIZE):
            hasher.update(chunk)
        if not hmac.compare_digest(hasher.finalize(), reference.digest):
            raise KasDataError(
                "4012", "the SHA-256 of the downloaded client mail is not the hash of the message"
            )
        plaintext.seek(0)
    except BaseException:
        plaintext.close()
        raise
    return plaintext
