"""Helpers for the store tests: accounts, deterministic bodies, one-call delivery and reading,
written against the `Store` interface only (so the contract tests run on every backend)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

from kim_appliance.store import Account, BlobReader, BlobRef, Store, StoredMessage

DOMAIN = "test1.kim.telematik-test"
#: the chunk size the helpers write and read with (several per body: streaming, not one piece)
CHUNK = 65536


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


async def put(
    store: Store,
    body: bytes,
    deliveries: Sequence[tuple[str, bytes]],
    *,
    now: datetime | None = None,
    check_quota: bool = False,
    relay_id: str | None = None,
) -> tuple[BlobRef, list[StoredMessage]]:
    """Write `body` as a blob and deliver it; the writer is released afterwards."""
    async with store.blobs.writer() as writer:
        for i in range(0, len(body), CHUNK):
            await writer.write(body[i : i + CHUNK])
        blob = await writer.commit()
        stored = await store.mail.deliver(
            blob,
            deliveries,
            now or datetime.now(UTC),
            check_quota=check_quota,
            relay_id=relay_id,
        )
    return blob, stored


async def drain(reader: BlobReader, size: int = CHUNK) -> bytes:
    data = bytearray()
    while chunk := await reader.read(size):
        data += chunk
    return bytes(data)


async def read(store: Store, message_id: int) -> bytes:
    async with store.mail.reader(message_id) as reader:
        return await drain(reader)
