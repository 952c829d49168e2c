"""The Clientmodul's side of the KAS (``I_Attachment_Service`` 2.4, digest §3.5).

addMailData uploads the encrypted client mail of a large mail to the *sender's* KAS
(multipart/form-data: ``messageID``, one ``recipients`` part per address, ``expires``, the
``attachment`` with its own Content-Length; HTTP Basic with the sender's mail account);
readMailData fetches it from the link with the ``recipient`` header (no Basic auth);
deleteMailData removes an upload whose KIM message could not be sent (digest §1.4 step 7).

Everything streams: the upload reads the blob file in 1 MiB pieces (in worker threads), the
download writes to the caller's file the same way. Error handling: a status other than the
documented success is a :class:`KasError` carrying it (507 for quota, 429 for too many
downloads, 404 for a missing blob); no answer at all is a KasError with ``status`` None.
This module never logs the password and never keeps a blob.
"""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import BinaryIO, Final

import trio

from kim_appliance.clientmodul.rest import ConnectTo, RestUnavailable, https_request

#: AttachmentService.yaml 2.4.0 base path (digest §3.5)
KAS_PATH: Final = "/attachments/v2.4/attachment/"
PIECE: Final = 1024 * 1024


class KasError(Exception):
    """The KAS refused (``status``) or could not be reached (``status`` None)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def basic_auth(account: str, password: str) -> str:
    """``Basic base64(account:password)`` (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{account}:{password}".encode()).decode("ascii")


def _form_part(boundary: str, name: str, value: str) -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        ).encode()
        + value.encode("utf-8")
        + b"\r\n"
    )


async def add_mail_data(
    ssl_context: ssl.SSLContext,
    base_url: str,
    *,
    account: str,
    password: str,
    message_id: str,
    recipients: Sequence[str],
    expires: str,
    blob: BinaryIO,
    blob_size: int,
    timeout: float = 30.0,
    connect_to: ConnectTo | None = None,
) -> str:
    """addMailData: upload ``blob_size`` bytes of ``blob`` (from its start); the sharedLink."""
    boundary = f"kim-kas-{uuid.uuid4().hex}"
    head = b"".join(
        [
            _form_part(boundary, "messageID", message_id),
            *(_form_part(boundary, "recipients", r) for r in recipients),
            _form_part(boundary, "expires", expires),
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="attachment"; '
                f'filename="mail.kas"\r\nContent-Type: application/octet-stream\r\n'
                f"Content-Length: {blob_size}\r\n\r\n"
            ).encode(),
        ]
    )
    tail = f"\r\n--{boundary}--\r\n".encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        await trio.to_thread.run_sync(blob.seek, 0)
        left = blob_size
        while left > 0:
            piece = await trio.to_thread.run_sync(blob.read, min(PIECE, left))
            if not piece:
                raise KasError(None, "the KAS blob spool ended early")
            left -= len(piece)
            yield piece
        yield tail

    url = base_url.rstrip("/") + KAS_PATH
    try:
        async with https_request(
            ssl_context,
            "POST",
            url,
            headers={
                "Authorization": basic_auth(account, password),
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Accept": "application/json",
            },
            body=body(),
            body_length=len(head) + blob_size + len(tail),
            timeout=timeout,
            connect_to=connect_to,
        ) as response:
            if response.status != 201:
                raise KasError(
                    response.status,
                    f"addMailData {url}: {response.status} {await response.message()}",
                )
            try:
                answer = json.loads(await response.read())
                link = answer["sharedLink"]
            except (ValueError, KeyError, TypeError) as exc:
                raise KasError(201, f"addMailData {url}: no sharedLink in the answer") from exc
            if not isinstance(link, str) or not link.startswith("https://"):
                raise KasError(201, f"addMailData {url}: sharedLink {link!r} is not https")
            return link
    except RestUnavailable as exc:
        raise KasError(None, f"addMailData: {exc}") from exc


async def read_mail_data(
    ssl_context: ssl.SSLContext,
    link: str,
    *,
    recipient: str,
    out: BinaryIO,
    timeout: float = 30.0,
    connect_to: ConnectTo | None = None,
) -> int:
    """readMailData: the blob behind ``link`` appended to ``out``; the number of bytes."""
    size = 0
    try:
        async with https_request(
            ssl_context,
            "GET",
            link,
            headers={"recipient": recipient},
            timeout=timeout,
            connect_to=connect_to,
        ) as response:
            if response.status != 200:
                raise KasError(
                    response.status,
                    f"readMailData {link}: {response.status} {await response.message()}",
                )
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in response.chunks():
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= PIECE:
                    data = b"".join(pending)
                    await trio.to_thread.run_sync(out.write, data)
                    size += len(data)
                    pending, pending_size = [], 0
            if pending:
                data = b"".join(pending)
                await trio.to_thread.run_sync(out.write, data)
                size += len(data)
    except RestUnavailable as exc:
        raise KasError(None, f"readMailData: {exc}") from exc
    return size


async def delete_mail_data(
    ssl_context: ssl.SSLContext,
    link: str,
    *,
    account: str,
    password: str,
    timeout: float = 30.0,
    connect_to: ConnectTo | None = None,
) -> None:
    """deleteMailData on ``link`` as its uploader; KasError unless 200 (or 404: already gone)."""
    try:
        async with https_request(
            ssl_context,
            "DELETE",
            link,
            headers={"Authorization": basic_auth(account, password)},
            timeout=timeout,
            connect_to=connect_to,
        ) as response:
            if response.status not in (200, 204, 404):
                raise KasError(
                    response.status,
                    f"deleteMailData {link}: {response.status} {await response.message()}",
                )
    except RestUnavailable as exc:
        raise KasError(None, f"deleteMailData: {exc}") from exc
