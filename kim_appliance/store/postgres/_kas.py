"""The PostgreSQL store's KAS attachments, download counts and upload reservations.

As in the embedded store (``store.sqlite._kas``): an attachment's bytes are a blob of the shared
blob store, referenced by its row; a reservation counts in the uploader's quota until `commit`
turns it into the attachment row in the same transaction. Across nodes, a reservation locks the
uploader's account row as a delivery does (``_mail.check_room``), and a download count locks the
attachment row, so concurrent downloads on two nodes never exceed the limit. This module must
never check credentials or decide on a size limit; the KAS routes do.
"""

from __future__ import annotations

import builtins
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from ..base import Attachment, AttachmentNotFound, BlobRef
from ..sqlite._db import dt, span_us, us
from ..sqlite._kas import canonical_id
from ._blobs import OPEN_COLUMNS, Opened, PgReader, blob_of, claim_blob, collect_garbage, opened
from ._db import Conn, Database, Row
from ._mail import check_room, lock_accounts

_QUERY = (
    "SELECT a.*, b.name AS b_name, b.size AS b_size, b.stored_size AS b_stored_size, "
    "b.compressed AS b_compressed FROM kas_attachments a JOIN blobs b ON b.name = a.blob "
)


async def _attachment(conn: Conn, row: Row) -> Attachment:
    recipients = tuple(
        r["address"]
        for r in await conn.fetch(
            "SELECT address FROM kas_recipients WHERE attachment = $1 ORDER BY position",
            row["id"],
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


class PgKas:
    """`store.base.Kas` of the PostgreSQL store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def reserve(self, mailbox: str, size: int, now: datetime, ttl: timedelta) -> str:
        if size < 0:
            raise ValueError(f"size: {size} is negative")
        when = us(now, "now")
        reservation = secrets.token_hex(16)

        async def op(conn: Conn) -> str:
            account = (await lock_accounts(conn, [mailbox], exclusive=True))[mailbox.lower()]
            await check_room(conn, account, size, when, "attachment")
            await conn.execute(
                "INSERT INTO kas_reservations (id, mailbox, size, expires_at) "
                "VALUES ($1, $2, $3, $4)",
                reservation,
                account.key,
                size,
                when + span_us(ttl),
            )
            return reservation

        return await self._db.write(op)

    async def release(self, reservation_id: str) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute("DELETE FROM kas_reservations WHERE id = $1", reservation_id)

        await self._db.write(op)

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
        a = Attachment(
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
        created, expires = us(a.created_at, "created_at"), us(a.expires_at, "expires_at")

        async def op(conn: Conn) -> None:
            await claim_blob(conn, blob)
            await conn.execute(
                "INSERT INTO kas_attachments (id, domain, uploader, message_id, filename, size, "
                "blob, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                a.id, a.domain, a.uploader, a.message_id, a.filename, a.size, blob.name,
                created, expires,
            )  # fmt: skip
            await conn.executemany(
                "INSERT INTO kas_recipients (attachment, position, address) VALUES ($1, $2, $3)",
                [(a.id, i, r) for i, r in enumerate(a.recipients)],
            )
            if reservation_id is not None:
                await conn.execute("DELETE FROM kas_reservations WHERE id = $1", reservation_id)

        await self._db.write(op)
        return a

    async def get(self, attachment_id: str, domain: str, now: datetime) -> Attachment:
        key = canonical_id(attachment_id)
        when = us(now, "now")

        async def op(conn: Conn) -> Attachment:
            row = await conn.fetchrow(
                _QUERY + "WHERE a.id = $1 AND a.domain = $2", key, domain.lower()
            )
            if row is None or row["expires_at"] <= when:
                raise AttachmentNotFound(f"attachment {attachment_id}: not found")
            return await _attachment(conn, row)

        return await self._db.read(op, snapshot=True)

    def reader(self, attachment: Attachment) -> PgReader:
        def gone() -> AttachmentNotFound:
            return AttachmentNotFound(f"attachment {attachment.id}: not found")

        async def opener(conn: Conn) -> Opened:
            row = await conn.fetchrow(
                f"SELECT {OPEN_COLUMNS} FROM kas_attachments a JOIN blobs b ON b.name = a.blob "
                "WHERE a.id = $1",
                attachment.id,
            )
            if row is None:
                raise gone()
            return opened(row)

        return PgReader(self._db, opener, gone)

    async def delete(self, attachment_id: str, domain: str) -> None:
        key = canonical_id(attachment_id)

        async def op(conn: Conn) -> None:
            name = await conn.fetchval(
                "DELETE FROM kas_attachments WHERE id = $1 AND domain = $2 RETURNING blob",
                key,
                domain.lower(),
            )
            if name is None:
                raise AttachmentNotFound(f"attachment {attachment_id}: not found")
            await collect_garbage(conn, {name})

        await self._db.write(op)

    async def expire(self, now: datetime, domain: str | None = None) -> int:
        when = us(now, "now")

        async def op(conn: Conn) -> int:
            if domain is None:
                rows = await conn.fetch(
                    "DELETE FROM kas_attachments WHERE expires_at <= $1 RETURNING blob", when
                )
            else:
                rows = await conn.fetch(
                    "DELETE FROM kas_attachments WHERE expires_at <= $1 AND domain = $2 "
                    "RETURNING blob",
                    when,
                    domain.lower(),
                )
            await conn.execute("DELETE FROM kas_reservations WHERE expires_at <= $1", when)
            await collect_garbage(conn, {r["blob"] for r in rows})
            return len(rows)

        return await self._db.write(op)

    async def delete_uploads_of(self, uploader: str) -> int:
        async def op(conn: Conn) -> int:
            rows = await conn.fetch(
                "DELETE FROM kas_attachments WHERE uploader = $1 RETURNING blob", uploader.lower()
            )
            await collect_garbage(conn, {r["blob"] for r in rows})
            return len(rows)

        return await self._db.write(op)

    async def uploaders(self, domain: str | None = None) -> builtins.set[str]:
        async def op(conn: Conn) -> builtins.set[str]:
            if domain is None:
                rows = await conn.fetch("SELECT DISTINCT uploader FROM kas_attachments")
            else:
                rows = await conn.fetch(
                    "SELECT DISTINCT uploader FROM kas_attachments WHERE domain = $1",
                    domain.lower(),
                )
            return {row["uploader"] for row in rows}

        return await self._db.read(op)

    async def record_download(
        self, attachment_id: str, recipient: str, *, now: datetime, limit: int, window: timedelta
    ) -> bool:
        when = us(now, "now")
        since = when - span_us(window)
        key = recipient.lower()

        async def op(conn: Conn) -> bool:
            # the attachment's row serialises the counting of its downloads on every node
            found = await conn.fetchval(
                "SELECT 1 FROM kas_attachments WHERE id = $1 FOR NO KEY UPDATE", attachment_id
            )
            if found is None:
                raise AttachmentNotFound(f"attachment {attachment_id}: not found")
            await conn.execute(
                "DELETE FROM kas_downloads WHERE attachment = $1 AND recipient = $2 AND at <= $3",
                attachment_id,
                key,
                since,
            )
            count = await conn.fetchval(
                "SELECT COUNT(*) FROM kas_downloads WHERE attachment = $1 AND recipient = $2",
                attachment_id,
                key,
            )
            if count >= limit:
                return False
            await conn.execute(
                "INSERT INTO kas_downloads (attachment, recipient, at) VALUES ($1, $2, $3)",
                attachment_id,
                key,
                when,
            )
            return True

        return await self._db.write(op)
