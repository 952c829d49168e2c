"""Helpers for the store tests: accounts, deterministic bodies and one-call delivery."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from kim_appliance.store import Account, BlobRef, SQLiteMailStore, StoredMessage

DOMAIN = "test1.kim.telematik-test"


def address(local: str) -> str:
    return f"{local}@{DOMAIN}"


def account(local: str, **fields: object) -> Account:
    return Account(
        address=address(local),
        password_hash="scrypt$16384$8$1$AAAA$AAAA",
        telematik_id=f"1-SMC-B-Testkarte-{local}",
        display_name=f"Praxis {local}",
        **fields,  # type: ignore[arg-type]
    )


def body_for(seed: str, size: int | None = None) -> bytes:
    """A deterministic body, base64-like text of `size` bytes (default: derived from seed)."""
    digest = hashlib.sha256(seed.encode()).digest()
    if size is None:
        size = 1 + int.from_bytes(digest[:3], "big") % 200_000
    line = hashlib.sha256(digest).hexdigest().encode() + b"\r\n"
    return (line * (size // len(line) + 1))[:size]


def prefix_for(seed: str, mailbox: str) -> bytes:
    return f"Return-Path: <x@{DOMAIN}>\r\nX-Seed: {seed}\r\nDelivered-To: {mailbox}\r\n".encode()


def put(
    store: SQLiteMailStore, body: bytes, deliveries: Sequence[tuple[str, bytes]]
) -> tuple[BlobRef, list[StoredMessage]]:
    """Write `body` as a blob and deliver it; the writer is released afterwards."""
    with store.new_blob() as writer:
        for i in range(0, len(body), 65536):
            writer.write(body[i : i + 65536])
        blob = writer.commit()
        return blob, store.deliver(blob, deliveries)


def read(store: SQLiteMailStore, message_id: int) -> bytes:
    with store.open_message(message_id) as stream:
        return stream.read()
