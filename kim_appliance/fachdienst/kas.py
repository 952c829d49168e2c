"""The KAS (``I_Attachment_Service`` 2.4): REST routes for the encrypted mail data of large mails.

Implements gematik's ``AttachmentService.yaml`` v2.4.0 (digest §3.5) under
``/attachments/v2.4``: addMailData (``POST /attachment/``, multipart with one ``recipients`` part
per address, HTTP Basic with the sender's mail account), readMailData (``GET``, header
``recipient``), its ``HEAD`` (size only, A_24002) and deleteMailData (``DELETE``, uploader only).
The attachments live in the appliance's store (``store.kas`` on the shared blob store, rows
carrying this Fachdienst's domain); uploads and downloads stream through it in chunks of at most
:data:`FLUSH_BYTES`, so a 500 MiB blob is never held in memory. An upload's declared size is
reserved in the uploader's quota when its part begins and turns into the stored attachment in
one store transaction (kim_appliance.fachdienst.quota).

Every failure is an :class:`~kim_appliance.web.errors.ApiError` with a status documented in the
YAML and a message naming the field and the reason. This module never logs or echoes a password,
and never lets a request read an attachment without the recipient check.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import trio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from kim_appliance.fachdienst import quota
from kim_appliance.fachdienst.accounts import client_of_request
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.jobs import take_turn
from kim_appliance.store import (
    Attachment,
    AttachmentNotFound,
    BlobWriter,
    QuotaExceeded,
    Store,
)
from kim_appliance.web.errors import JSON_UTF8, ApiError, JsonUtf8Response

#: the base path of AttachmentService.yaml 2.4.0 (``servers: - url: /attachments/v2.4/``)
BASE_PATH = "/attachments/v2.4"
#: KAS-ref ``max-mail-size`` (digest §3.5)
DEFAULT_MAX_SIZE = 500 * 1024 * 1024
#: KAS-ref ``max-attachment-requests`` within ``time-to-keep-request-record`` (digest §3.5)
DEFAULT_MAX_DOWNLOADS = 1000
DEFAULT_DOWNLOAD_WINDOW_SECONDS = 300
#: the uploaded bytes are written to disk in pieces of this size (bounded memory per upload)
FLUSH_BYTES = 1 << 20
DOWNLOAD_CHUNK = 1 << 20
#: multipart overhead allowed on top of the attachment in the request's Content-Length
MAX_FORM_OVERHEAD = 1 << 20
#: a refused upload's remaining body is read and dropped, up to this much and this long, before
#: the refusal is sent: the client is still sending, and a close with unread data makes the
#: kernel reset the connection, which can swallow the answer it must see (507 -> 521 at the PVS,
#: A_22419); RFC 9112 §9.6 ("lingering close"). Beyond the bounds the connection just closes.
MAX_DRAIN_BYTES = 32 << 20
DRAIN_SECONDS = 10.0
#: Username/email maxLength (CommonSchemas)
MAX_ADDRESS = 256
#: a Message-ID is one header line (RFC 5322 §2.1.1: at most 998 characters)
MAX_MESSAGE_ID = 998
MAX_EXPIRES = 256
MAX_RECIPIENTS = 1000
MAX_OTHER_FIELD = 8192
_FIELD_LIMITS = {"messageID": MAX_MESSAGE_ID, "recipients": MAX_ADDRESS, "expires": MAX_EXPIRES}
_KNOWN_FIELDS = tuple(_FIELD_LIMITS)


@dataclass(frozen=True)
class KasSettings:
    """The KAS limits (KAS-ref defaults, digest §3.5); all configurable."""

    max_size: int = DEFAULT_MAX_SIZE
    max_downloads: int = DEFAULT_MAX_DOWNLOADS
    download_window_seconds: int = DEFAULT_DOWNLOAD_WINDOW_SECONDS


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SizeMismatch(ValueError):
    """The upload's bytes differ from the size it declared (part Content-Length)."""


@dataclass
class _KasState:
    fd: Fachdienst
    #: ``https://host:port`` of the listener, or a function giving it once it is bound
    base_url: str | Callable[[], str]
    settings: KasSettings
    clock: Callable[[], datetime]


# -- helpers --------------------------------------------------------------------------------


def _valid_address(value: str) -> bool:
    """A plausible mail address: local part and domain around the last ``@``, no white space
    or control characters, at most 256 characters (CommonSchemas Username). Lenient on purpose:
    RFC 5321 allows ``'``, ``*``, ``&`` and quoted local parts."""
    local, at, domain = value.rpartition("@")
    return (
        bool(at and local and domain)
        and len(value) <= MAX_ADDRESS
        and value.isprintable()
        and not any(c.isspace() for c in value)
    )


async def _authenticate(state: _KasState, request: Request) -> str:
    """The mail account of the HTTP Basic credentials (KIMBasicAuth), or ApiError 401."""
    challenge = {"WWW-Authenticate": f'Basic realm="KAS {state.fd.domain}", charset="UTF-8"'}
    header = request.headers.get("authorization")
    if header is None:
        raise ApiError(
            401, "Authorization: missing (HTTP Basic with the mail account)", headers=challenge
        )
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise ApiError(401, f"Authorization: scheme {scheme!r} is not Basic", headers=challenge)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(
            401, "Authorization: Basic credentials are not base64 of UTF-8", headers=challenge
        ) from None
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise ApiError(
            401, "Authorization: Basic credentials are not 'username:password'", headers=challenge
        )
    fd = state.fd
    result = await fd.auth.authenticate(username, password, client=client_of_request(request))
    if not result.ok:
        raise ApiError(401, result.text, headers=challenge)
    return result.address


def _parse_expires(value: str, now: datetime) -> datetime:
    """RFC 5322 date-time as the YAML says; RFC 3339 accepted as well (lenient)."""
    when: datetime | None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ApiError(400, f"expires: {value[:64]!r} is not an RFC 5322 date-time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # RFC 5322 "-0000": UTC without a local offset
    if when <= now:
        raise ApiError(400, f"expires: {value[:64]!r} lies in the past")
    return when


class _Form:
    """Streaming multipart/form-data reader for addMailData.

    The parser's callbacks only record events; :meth:`feed` returns them so that the async
    caller can do blocking work (quota, disk) between chunks.
    """

    def __init__(self, boundary: bytes) -> None:
        self.events: list[tuple[str, Any]] = []
        self.ended = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._header_field.decode("latin-1").strip().lower()
        self._headers[name] = self._header_value.decode("latin-1").strip()
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        self.events.append(("headers", dict(self._headers)))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(("data", data[start:end]))

    def _on_part_end(self) -> None:
        self.events.append(("end", None))

    def _on_end(self) -> None:
        self.ended = True

    def feed(self, chunk: bytes) -> list[tuple[str, Any]]:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise ApiError(400, f"request body: malformed multipart/form-data ({exc})") from None
        events, self.events = self.events, []
        return events


def _part_name(headers: dict[str, str]) -> tuple[str, str | None]:
    disposition = headers.get("content-disposition")
    if disposition is None:
        raise ApiError(400, "multipart part: Content-Disposition header missing")
    kind, options = parse_options_header(disposition)
    name = options.get(b"name")
    if kind.lower() != b"form-data" or name is None:
        raise ApiError(
            400,
            f"multipart part: Content-Disposition {disposition[:80]!r} is not form-data "
            "with a name",
        )
    filename = options.get(b"filename")
    return name.decode("utf-8", "replace"), (
        filename.decode("utf-8", "replace") if filename is not None else None
    )


# -- addMailData ------------------------------------------------------------------------------


@dataclass
class _Upload:
    """What addMailData has read so far."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    writer: BlobWriter | None = None
    #: the quota reservation of the attachment's declared size (store.kas.reserve)
    reservation: str | None = None
    filename: str | None = None
    declared: int = 0

    async def write(self, data: bytes) -> None:
        assert self.writer is not None
        if self.writer.size + len(data) > self.declared:
            raise SizeMismatch(
                f"attachment: more bytes than its declared Content-Length {self.declared}"
            )
        await self.writer.write(data)


def _store(state: _KasState) -> Store:
    return state.fd.store


async def _reserve_quota(state: _KasState, uploader: str, size: int) -> str:
    """Check and reserve ``size`` bytes of the uploader's quota in one step, or 507 (digest
    §3.5; the quota is shared by the mailbox and the KAS, §3.2, fachdienst.quota). Returns the
    reservation, which the commit turns into the attachment (or the caller releases)."""
    store = _store(state)
    free = await store.blobs.space()
    if free is not None and size > free:
        raise ApiError(507, f"attachment: {size} bytes, but the KAS has only {free} bytes free")
    try:
        return await store.kas.reserve(uploader, size, _utcnow(), quota.UPLOAD_RESERVATION_TTL)
    except QuotaExceeded as exc:
        raise ApiError(
            507,
            f"attachment: {size} bytes exceed the remaining quota of {uploader} "
            f"({max(exc.quota - exc.used, 0)} of {exc.quota} bytes left, mailbox and KAS "
            "together)",
        ) from None


async def _start_attachment(
    state: _KasState, uploader: str, form: _Upload, headers: dict[str, str], filename: str | None
) -> None:
    if form.writer is not None:
        raise ApiError(400, "attachment: more than one attachment part")
    raw = headers.get("content-length")
    if raw is None:
        raise ApiError(
            400,
            "attachment: the part's Content-Length header is missing (required by "
            "AttachmentService.yaml, encoding of attachment)",
        )
    if not raw.isdigit():
        raise ApiError(400, f"attachment: part Content-Length {raw[:32]!r} is not a byte count")
    size = int(raw)
    if size > state.settings.max_size:
        raise ApiError(
            413,
            f"attachment: {size} bytes exceed the maximum of {state.settings.max_size} bytes",
        )
    form.reservation = await _reserve_quota(state, uploader, size)
    form.declared = size
    form.filename = filename
    # encrypted data does not compress
    form.writer = _store(state).blobs.writer(compress=False)


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read and drop what is left of a refused request's body (see :data:`MAX_DRAIN_BYTES`)."""
    drained = 0
    with trio.move_on_after(DRAIN_SECONDS):
        try:
            async for chunk in chunks:
                drained += len(chunk)
                if drained > MAX_DRAIN_BYTES:
                    return
        except ClientDisconnect:
            return


async def _read_form(state: _KasState, request: Request, uploader: str, form: _Upload) -> None:
    content_type = request.headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind.lower() != b"multipart/form-data" or not boundary:
        raise ApiError(
            400, f"Content-Type: {content_type[:80]!r} is not multipart/form-data with a boundary"
        )
    parser = _Form(boundary)
    current: str | None = None
    value = bytearray()
    pending = bytearray()

    async def flush() -> None:
        if pending and form.writer is not None:
            data = bytes(pending)
            pending.clear()
            try:
                await form.write(data)
            except SizeMismatch as exc:
                raise ApiError(400, str(exc)) from None

    chunks = request.stream()
    try:
        try:
            async for chunk in chunks:
                for kind_, payload in parser.feed(chunk):
                    if kind_ == "headers":
                        current, filename = _part_name(payload)
                        value.clear()
                        if current == "attachment":
                            await _start_attachment(state, uploader, form, payload, filename)
                    elif kind_ == "data":
                        if current == "attachment":
                            pending += payload
                            if len(pending) >= FLUSH_BYTES:
                                await flush()
                        else:
                            value += payload
                            limit = _FIELD_LIMITS.get(current or "", MAX_OTHER_FIELD)
                            if len(value) > limit:
                                raise ApiError(400, f"{current}: longer than {limit} bytes")
                    elif kind_ == "end":
                        if current == "attachment":
                            await flush()
                        elif current in _KNOWN_FIELDS:
                            try:
                                text = value.decode("utf-8").strip()
                            except UnicodeDecodeError:
                                raise ApiError(400, f"{current}: not UTF-8") from None
                            values = form.fields.setdefault(current, [])
                            if current != "recipients" and values:
                                raise ApiError(400, f"{current}: given more than once")
                            values.append(text)
                            if len(form.fields.get("recipients", ())) > MAX_RECIPIENTS:
                                raise ApiError(400, f"recipients: more than {MAX_RECIPIENTS}")
                        current = None
        except ApiError:
            await _drain(chunks)
            raise
    except ClientDisconnect:
        raise ApiError(400, "request body: the client disconnected during the upload") from None
    if not parser.ended:
        raise ApiError(400, "request body: multipart/form-data ends before its final boundary")


async def add_mail_data(state: _KasState, request: Request) -> Response:
    """addMailData: 201 {"sharedLink"}; 400, 401, 413, 507 (digest §3.5)."""
    uploader = await _authenticate(state, request)
    raw_length = request.headers.get("content-length")
    if raw_length is None:
        raise ApiError(400, "Content-Length: header missing (required by addMailData)")
    if not raw_length.isdigit():
        raise ApiError(400, f"Content-Length: {raw_length[:32]!r} is not a byte count")
    if int(raw_length) > state.settings.max_size + MAX_FORM_OVERHEAD:
        raise ApiError(
            413,
            f"Content-Length: {raw_length} bytes exceed the maximum attachment size of "
            f"{state.settings.max_size} bytes",
        )
    store = _store(state)
    account = await state.fd.local_account(uploader)
    if account is None or account.status != "active":
        raise ApiError(401, f"account {uploader} is deregistered and cannot send (KOM-LE-A_2149)")
    form = _Upload()
    attachment: Attachment | None = None
    try:
        await _read_form(state, request, uploader, form)
        fields = form.fields
        for name in ("messageID", "recipients", "expires"):
            if not fields.get(name) or not any(fields[name]):
                raise ApiError(400, f"{name}: form part missing or empty")
        if form.writer is None:
            raise ApiError(400, "attachment: form part missing")
        if form.writer.size != form.declared:
            raise ApiError(
                400,
                f"attachment: {form.writer.size} bytes received, its Content-Length declared "
                f"{form.declared}",
            )
        recipients = fields["recipients"]
        for r in recipients:
            if not _valid_address(r):
                raise ApiError(400, f"recipients: {r[:64]!r} is not a KIM mail address")
        now = state.clock()
        expires = _parse_expires(fields["expires"][0], now)
        # KAS blobs follow the account's dataTimeToLive (digest §3.2): never kept longer
        expires = min(expires, now + timedelta(days=account.data_ttl_days))
        blob = await form.writer.commit()
        # one transaction: the attachment row, and its reservation gone from the quota
        attachment = await store.kas.commit(
            blob,
            reservation_id=form.reservation,
            domain=state.fd.domain,
            uploader=uploader,
            recipients=recipients,
            message_id=fields["messageID"][0],
            filename=form.filename,
            expires_at=expires,
            now=now,
        )
    finally:
        if form.writer is not None:
            await form.writer.abort()  # releases the blob unless the attachment holds it
        if attachment is None and form.reservation is not None:
            with trio.CancelScope(shield=True):
                await store.kas.release(form.reservation)
    state.fd.observer.kas_bytes(state.fd.domain, "upload", attachment.size)
    state.fd.log.info(
        "KAS: %s stored attachment %s (%d bytes) for %d recipient(s)",
        uploader,
        attachment.id,
        attachment.size,
        len(attachment.recipients),
    )
    base = state.base_url() if callable(state.base_url) else state.base_url
    link = f"{base.rstrip('/')}{BASE_PATH}/attachment/{attachment.id}"
    return JsonUtf8Response({"sharedLink": link}, status_code=201)


# -- readMailData, HEAD, deleteMailData -------------------------------------------------------


def _recipient(request: Request) -> str:
    recipient = request.headers.get("recipient")
    if recipient is None:
        raise ApiError(400, "recipient: header missing (the recipient's KIM address)")
    recipient = recipient.strip()
    if not _valid_address(recipient):
        raise ApiError(400, f"recipient: {recipient[:64]!r} is not a KIM mail address")
    return recipient


async def read_mail_data(state: _KasState, request: Request) -> Response:
    """readMailData: 200 streamed octets; 400, 403, 404, 429; HEAD: 200 with size or 404."""
    attachment_id = request.path_params["attachmentId"]
    try:
        recipient = _recipient(request)
    except ApiError as exc:
        # HEAD documents 200 and 404 only (A_24002): an address that cannot be a recipient
        # finds nothing (404). A missing required header stays an input error (400), as for GET
        if request.method != "HEAD" or "recipient" not in request.headers:
            raise
        raise ApiError(404, exc.message) from None
    now = state.clock()
    store = _store(state)
    try:
        attachment = await store.kas.get(attachment_id, state.fd.domain, now)
    except AttachmentNotFound:
        raise ApiError(404, f"attachment {attachment_id[:64]!r}: not found or expired") from None
    size_headers = {
        "Content-Length": str(attachment.size),
        "Content-Type": "application/octet-stream",
    }
    if request.method == "HEAD":
        # A_24002: the size before the download. HEAD documents 200 and 404 only: an address
        # that is not a recipient learns nothing (404)
        if not attachment.is_recipient(recipient):
            raise ApiError(404, f"attachment {attachment_id}: not found for {recipient}")
        return Response(status_code=200, headers=size_headers)
    if not attachment.is_recipient(recipient):
        raise ApiError(403, f"recipient: {recipient} is not a recipient of this KIM mail")
    window = timedelta(seconds=state.settings.download_window_seconds)
    allowed = await store.kas.record_download(
        attachment.id, recipient, now=now, limit=state.settings.max_downloads, window=window
    )
    if not allowed:
        raise ApiError(
            429,
            f"attachment {attachment.id}: downloaded {state.settings.max_downloads} times by "
            f"{recipient} within {state.settings.download_window_seconds} s; try again later",
            headers={"Retry-After": str(state.settings.download_window_seconds)},
        )
    reader = store.kas.reader(attachment)
    try:
        await reader.__aenter__()
    except AttachmentNotFound:
        raise ApiError(404, f"attachment {attachment.id}: not found or expired") from None

    async def body() -> AsyncIterator[bytes]:
        try:
            while chunk := await reader.read(DOWNLOAD_CHUNK):
                state.fd.observer.kas_bytes(state.fd.domain, "download", len(chunk))
                yield chunk
        finally:
            await reader.aclose()

    return StreamingResponse(body(), status_code=200, headers=size_headers)


async def delete_mail_data(state: _KasState, request: Request) -> Response:
    """deleteMailData: 200; 401, 404 (also for another account's attachment)."""
    user = await _authenticate(state, request)
    attachment_id = request.path_params["attachmentId"]
    now = state.clock()
    store = _store(state)
    try:
        attachment = await store.kas.get(attachment_id, state.fd.domain, now)
        if attachment.uploader != user.lower():
            raise AttachmentNotFound(attachment_id)
        await store.kas.delete(attachment.id, state.fd.domain)
    except AttachmentNotFound:
        raise ApiError(
            404, f"attachment {attachment_id[:64]!r}: not found among the uploads of {user}"
        ) from None
    state.fd.log.info("KAS: %s deleted attachment %s", user, attachment_id)
    return Response(status_code=200)


# -- wiring -----------------------------------------------------------------------------------


def kas_routes(
    fd: Fachdienst,
    *,
    base_url: str | Callable[[], str],
    settings: KasSettings | None = None,
    clock: Callable[[], datetime] = _utcnow,
) -> list[BaseRoute]:
    """The KAS routes, mounted at ``/attachments/v2.4``, on the Fachdienst's store.

    ``base_url`` (``https://host:port``) prefixes every ``sharedLink``. ``clock`` is for tests.
    """
    state = _KasState(fd, base_url, settings or KasSettings(), clock)

    def bind(
        handler: Callable[[_KasState, Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await handler(state, request)

        return endpoint

    async def by_method(request: Request) -> Response:
        if request.method == "DELETE":
            return await delete_mail_data(state, request)
        return await read_mail_data(state, request)

    # full paths instead of a Mount: Mount's ``.*`` does not match a line feed, so an id
    # such as ``%0A`` would get the router's 404 before the handler checks the headers (400)
    return [
        Route(f"{BASE_PATH}/attachment/", bind(add_mail_data), methods=["POST"]),
        Route(
            f"{BASE_PATH}/attachment/{{attachmentId}}",
            by_method,
            methods=["GET", "HEAD", "DELETE"],
        ),
    ]


async def expire_kas(fd: Fachdienst, now: datetime) -> int:
    """Delete the attachments of ``fd`` whose ``expires`` has passed (KAS-ref cleanup, digest
    §3.5). Returns the number deleted."""
    return await fd.store.kas.expire(now, fd.domain)


async def run_kas_expiry(
    fd: Fachdienst,
    *,
    interval_seconds: float = 3600,
    clock: Callable[[], datetime] = _utcnow,
) -> None:
    """Background task: :func:`expire_kas` every ``interval_seconds`` until cancelled, on the
    one node of a cluster that holds the domain's ``kas-expiry`` lease (fachdienst.jobs)."""
    while True:
        if await take_turn(fd, "kas-expiry", interval_seconds):
            await expire_kas(fd, clock())
        await trio.sleep(interval_seconds)


__all__ = [
    "BASE_PATH",
    "JSON_UTF8",
    "KasSettings",
    "SizeMismatch",
    "expire_kas",
    "kas_routes",
    "run_kas_expiry",
]
