"""The embedded store's KAS attachments, download counts and upload reservations.

An attachment's bytes are a blob of the shared blob store (uncompressed: the data is
encrypted), referenced by its row like a message references its body, so the crash-safety
rules of the package hold for them too. A reservation counts in the uploader's quota
(`_mail.usage_of`) until `commit` turns it into the attachment row in the same transaction,
`release` drops it, or it lapses. This module must never check credentials or decide on a
size limit; the KAS routes (kim_appliance.fachdienst.kas) do.
"""

from __future__ import annotations

import builtins
import secrets
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import BinaryIO

from ..base import Attachment, AttachmentNotFound, BlobRef
from ..blobs import open_chain
from ._blobs import ThreadedReader
from ._db import Database, Tx, blob_of, dt, span_us, us
from ._mail import check_room, claim_blob

_QUERY = (
    "SELECT a.*, b.name AS b_name, b.size AS b_size, b.stored_size AS b_stored_size, "
    "b.compressed AS b_compressed FROM kas_attachments a JOIN blobs b ON b.name = a.blob "
)


def canonical_id(attachment_id: str) -> str:
    """The id if it is a canonical UUID (what the KAS hands out), else `AttachmentNotFound`."""
    try:
        canonical = str(uuid.UUID(attachment_id))
    except ValueError:
        raise AttachmentNotFound(f"attachment {attachment_id[:64]!r}: not a UUID") from None
    if canonical != attachment_id:
        raise AttachmentNotFound(f"attachment {attachment_id[:64]!r}: not a canonical UUID")
    return canonical


def _attachment(tx: Tx, row: sqlite3.Row) -> Attachment:
    recipients = tuple(
        r[0]
        for r in tx.execute(
            "SELECT address FROM kas_recipients WHERE attachment = ? ORDER BY position",
            (row["id"],),
        )
    )
    return Attachment(
        id=row["id"],
        domain=row["domain"],
        uploader=row["uploader"],
        message_id=row["message_id"],
        filename=row["filename"],
        size=row["size"],
        created_at=dt(row["created_at"]),
        expires_at=dt(row["expires_at"]),
        recipients=recipients,
        blob=blob_of(row, "b_"),
    )


def insert_attachment(db: Database, tx: Tx, a: Attachment) -> None:
    claim_blob(db, tx, a.blob)
    tx.execute(
        "INSERT INTO kas_attachments (id, domain, uploader, message_id, filename, size, blob, "
        "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            a.id,
            a.domain,
            a.uploader,
            a.message_id,
            a.filename,
            a.size,
            a.blob.name,
            us(a.created_at, "created_at"),
            us(a.expires_at, "expires_at"),
        ),
    )
    tx.conn.executemany(
        "INSERT INTO kas_recipients (attachment, position, address) VALUES (?, ?, ?)",
        [(a.id, i, r) for i, r in enumerate(a.recipients)],
    )


class SQLiteKas:
    """`store.base.Kas` of the embedded store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def reserve(self, mailbox: str, size: int, now: datetime, ttl: timedelta) -> str:
        if size < 0:
            raise ValueError(f"size: {size} is negative")
        when = us(now, "now")
        reservation = secrets.token_hex(16)

        def op(tx: Tx) -> str:
            check_room(tx, mailbox, size, when, "attachment")
            tx.execute(
                "INSERT INTO kas_reservations (id, mailbox, size, expires_at) VALUES (?, ?, ?, ?)",
                (reservation, mailbox.lower(), size, when + span_us(ttl)),
            )
            return reservation

        return await self._db.write(op)

    async def release(self, reservation_id: str) -> None:
        await self._db.write(
            lambda tx: tx.execute("DELETE FROM kas_reservations WHERE id = ?", (reservation_id,))
        )

    async def commit(
        self,
        blob: BlobRef,
        *,
        reservation_id: str | None,
        domain: str,
        uploader: str,
        recipients: Sequence[str],
        message_id: str,
        filename: str | None,
        expires_at: datetime,
        now: datetime,
    ) -> Attachment:
        attachment = Attachment(
            id=str(uuid.uuid4()),
            domain=domain.lower(),
            uploader=uploader.lower(),
            message_id=message_id,
            filename=filename,
            size=blob.size,
            created_at=now,
            expires_at=expires_at,
            recipients=tuple(dict.fromkeys(r.lower() for r in recipients)),
            blob=blob,
        )
        db = self._db

        def op(tx: Tx) -> None:
            insert_attachment(db, tx, attachment)
            if reservation_id is not None:
                tx.execute("DELETE FROM kas_reservations WHERE id = ?", (reservation_id,))

        await db.write(op)
        return attachment

    async def get(self, attachment_id: str, domain: str, now: datetime) -> Attachment:
        key = canonical_id(attachment_id)
        when = us(now, "now")

        def op(tx: Tx) -> Attachment:
            row = tx.one(_QUERY + "WHERE a.id = ? AND a.domain = ?", (key, domain.lower()))
            if row is None or row["expires_at"] <= when:
                raise AttachmentNotFound(f"attachment {attachment_id}: not found")
            return _attachment(tx, row)

        return await self._db.read(op)

    def reader(self, attachment: Attachment) -> ThreadedReader:
        files = self._db.files

        def opener() -> BinaryIO:
            try:
                return open_chain([], attachment.blob, files)
            except FileNotFoundError:
                raise AttachmentNotFound(f"attachment {attachment.id}: not found") from None

        return ThreadedReader(self._db, opener)

    async def delete(self, attachment_id: str, domain: str) -> None:
        key = canonical_id(attachment_id)

        def op(tx: Tx) -> None:
            row = tx.one(
                "DELETE FROM kas_attachments WHERE id = ? AND domain = ? RETURNING blob",
                (key, domain.lower()),
            )
            if row is None:
                raise AttachmentNotFound(f"attachment {attachment_id}: not found")
            tx.collect_garbage({row[0]})

        await self._db.write(op)

    async def expire(self, now: datetime, domain: str | None = None) -> int:
        when = us(now, "now")

        def op(tx: Tx) -> int:
            if domain is None:
                rows = tx.execute(
                    "DELETE FROM kas_attachments WHERE expires_at <= ? RETURNING blob", (when,)
                ).fetchall()
            else:
                rows = tx.execute(
                    "DELETE FROM kas_attachments WHERE expires_at <= ? AND domain = ? "
                    "RETURNING blob",
                    (when, domain.lower()),
                ).fetchall()
            tx.execute("DELETE FROM kas_reservations WHERE expires_at <= ?", (when,))
            tx.collect_garbage({row[0] for row in rows})
            return len(rows)

        return await self._db.write(op)

    async def delete_uploads_of(self, uploader: str) -> int:
        def op(tx: Tx) -> int:
            rows = tx.execute(
                "DELETE FROM kas_attachments WHERE uploader = ? RETURNING blob",
                (uploader.lower(),),
            ).fetchall()
            tx.collect_garbage({row[0] for row in rows})
            return len(rows)

        return await self._db.write(op)

    async def uploaders(self, domain: str | None = None) -> builtins.set[str]:
        def op(tx: Tx) -> builtins.set[str]:
            if domain is None:
                rows = tx.execute("SELECT DISTINCT uploader FROM kas_attachments")
            else:
                rows = tx.execute(
                    "SELECT DISTINCT uploader FROM kas_attachments WHERE domain = ?",
                    (domain.lower(),),
                )
            return {row[0] for row in rows}

        return await self._db.read(op)

    async def record_download(
        self, attachment_id: str, recipient: str, *, now: datetime, limit: int, window: timedelta
    ) -> bool:
        when = us(now, "now")
        since = when - span_us(window)
        key = recipient.lower()

        def op(tx: Tx) -> bool:
            tx.execute(
                "DELETE FROM kas_downloads WHERE attachment = ? AND recipient = ? AND at <= ?",
                (attachment_id, key, since),
            )
            row = tx.one(
                "SELECT COUNT(*) FROM kas_downloads WHERE attachment = ? AND recipient = ?",
                (attachment_id, key),
            )
            assert row is not None
            if row[0] >= limit:
                return False
            tx.execute(
                "INSERT INTO kas_downloads (attachment, recipient, at) VALUES (?, ?, ?)",
                (attachment_id, key, when),
            )
            return True

        return await self._db.write(op)
