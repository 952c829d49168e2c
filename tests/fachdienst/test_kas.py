"""KAS (AttachmentService.yaml 2.4, digest §3.5): every documented status code, streaming, expiry.

The app under test is the KAS routes in a REST app over the appliance's real (embedded) store in
``tmp_path``, driven in-process through httpx's ASGI transport under trio. The
multipart bodies are built by hand because the YAML requires part headers (``Content-Length``
of the attachment) that httpx's form encoder does not write.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from fd_support import _quick_hash, fachdienst_on, store_bytes

from kim_appliance.config import FachdienstConfig
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.kas import KasSettings, expire_kas, kas_routes
from kim_appliance.store.base import Account
from kim_appliance.store.sqlite import SQLiteStore
from kim_appliance.web.server import rest_app

DOMAIN = "kas.kim.telematik-test"
BASE_URL = "https://kas.example:8443"
SENDER = f"praxis.weber@{DOMAIN}"
SENDER_PW = "Sender-Passw0rd!"
OTHER = f"klinik.nord@{DOMAIN}"
OTHER_PW = "Other-Passw0rd!"
SMALL = f"knapp@{DOMAIN}"  # an account with a small quota
SMALL_PW = "Small-Passw0rd!"
SMALL_QUOTA = 5000
RCPT = "dr.meier@fd2.kim.telematik-test"
RCPT2 = "apotheke@fd2.kim.telematik-test"
BOUNDARY = "kasTestBoundary7MA4YWxkTrZu0gW"
URL = "/attachments/v2.4/attachment/"


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2025, 3, 1, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Kas:
    client: httpx.AsyncClient
    store: SQLiteStore
    clock: Clock
    fd: Fachdienst

    async def blob_file(self, path: str) -> Path:
        """The file of the attachment behind a sharedLink path (the embedded store's)."""
        attachment = await self.store.kas.get(path.rsplit("/", 1)[1], DOMAIN, self.clock.now)
        name = attachment.blob.name
        return self.store.root / "blobs" / name[:2] / name

    def temp_files(self) -> list[Path]:
        return list((self.store.root / "blobs" / "tmp").iterdir())


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def form_head(
    *,
    message_id: str | None = "<kas-test@praxis>",
    recipients: tuple[str, ...] = (RCPT, RCPT2),
    expires: str | None = None,
    clock_now: datetime | None = None,
) -> bytes:
    """The non-attachment parts (each omitted when None)."""
    if expires is None:
        expires = format_datetime((clock_now or Clock().now) + timedelta(days=30))
    parts: list[tuple[str, str]] = []
    if message_id is not None:
        parts.append(("messageID", message_id))
    parts += [("recipients", r) for r in recipients]
    if expires:
        parts.append(("expires", expires))
    out = b""
    for name, value in parts:
        out += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    return out


def attachment_head(size: int | None, *, filename: str = "attachment.enc") -> bytes:
    length = f"Content-Length: {size}\r\n" if size is not None else ""
    return (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=attachment; "
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n{length}\r\n'
    ).encode()


TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
CONTENT_TYPE = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def body(data: bytes, *, declared: int | None = -1, **head: object) -> bytes:
    size = len(data) if declared == -1 else declared
    return form_head(**head) + attachment_head(size) + data + TAIL  # type: ignore[arg-type]


async def upload(
    kas: Kas,
    data: bytes,
    *,
    auth: tuple[str, str] = (SENDER, SENDER_PW),
    **head: object,
) -> httpx.Response:
    return await kas.client.post(
        URL,
        content=body(data, clock_now=kas.clock.now, **head),
        headers={**CONTENT_TYPE, **basic(*auth)},
    )


async def upload_ok(kas: Kas, data: bytes, **head: object) -> str:
    response = await upload(kas, data, **head)
    assert response.status_code == 201, response.text
    link = response.json()["sharedLink"]
    assert link.startswith(BASE_URL + URL)
    return str(link.removeprefix(BASE_URL))


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert set(doc) == {"message", "traceId"}
    assert 0 < len(doc["traceId"]) <= 255
    for word in words:
        assert word in doc["message"], doc["message"]


@pytest.fixture
async def fachdienst(kim_store: SQLiteStore) -> Fachdienst:
    for address, password, quota in (
        (SENDER, SENDER_PW, -1),
        (OTHER, OTHER_PW, -1),
        (SMALL, SMALL_PW, SMALL_QUOTA),
    ):
        await kim_store.accounts.create(
            Account(address, _quick_hash(password), "1-test", address, quota_bytes=quota)
        )
    return fachdienst_on(kim_store, DOMAIN, config=FachdienstConfig(domains=()))


def make_kas(fd: Fachdienst, settings: KasSettings) -> tuple[Clock, object]:
    clock = Clock()
    app = rest_app(kas_routes(fd, base_url=BASE_URL + "/", settings=settings, clock=clock))
    return clock, app


@pytest.fixture
async def kas(fachdienst: Fachdienst, kim_store: SQLiteStore) -> AsyncIterator[Kas]:
    settings = KasSettings(max_size=40 * 1024 * 1024, max_downloads=3, download_window_seconds=300)
    clock, app = make_kas(fachdienst, settings)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield Kas(client, kim_store, clock, fachdienst)


# -- addMailData ------------------------------------------------------------------------------


async def test_upload_then_download_returns_the_same_bytes(kas: Kas) -> None:
    """addMailData 201 with a sharedLink under the KAS base URL; readMailData 200 octets."""
    data = os.urandom(70_000)
    path = await upload_ok(kas, data)
    uuid.UUID(path.rsplit("/", 1)[1])
    response = await kas.client.get(path, headers={"recipient": RCPT})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == data


async def test_30_mb_upload_streams_and_downloads_byte_exact(kas: Kas) -> None:
    """A 30 MiB blob (above the 25 MB Konnektor limit, the reason KAS exists) round-trips."""
    size = 30 * 1024 * 1024
    piece = os.urandom(1 << 20)
    head = form_head() + attachment_head(size)

    async def chunks() -> AsyncIterator[bytes]:
        yield head
        for _ in range(size // len(piece)):
            yield piece
        yield TAIL

    response = await kas.client.post(
        URL,
        content=chunks(),
        headers={
            **CONTENT_TYPE,
            **basic(SENDER, SENDER_PW),
            "Content-Length": str(len(head) + size + len(TAIL)),
        },
    )
    assert response.status_code == 201, response.text
    path = response.json()["sharedLink"].removeprefix(BASE_URL)
    head_response = await kas.client.head(path, headers={"recipient": RCPT})
    assert head_response.headers["content-length"] == str(size)
    got = await kas.client.get(path, headers={"recipient": RCPT})
    assert got.status_code == 200
    assert len(got.content) == size
    assert got.content == piece * (size // len(piece))


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        (basic(SENDER, "wrong"), "wrong username or password"),
        (basic(f"nobody@{DOMAIN}", "x"), "wrong username or password"),
        ({"Authorization": "Bearer abc"}, "not Basic"),
        ({"Authorization": "Basic %%%"}, "base64"),
    ],
)
async def test_upload_without_valid_basic_auth_is_401(
    kas: Kas, headers: dict[str, str], reason: str
) -> None:
    """addMailData 401: HTTP Basic with the sender's mail account is required (KIMBasicAuth)."""
    response = await kas.client.post(
        URL, content=body(b"x" * 10), headers={**CONTENT_TYPE, **headers}
    )
    assert_error(response, 401, reason)
    assert response.headers["www-authenticate"].startswith("Basic")


async def test_upload_by_a_deregistered_account_is_401(kas: Kas) -> None:
    """A deregistered account neither sends nor uploads (KOM-LE-A_2149)."""
    await kas.fd.store.accounts.update(SENDER, status="deregistered")
    assert_error(await upload(kas, b"abc"), 401, "deregistered")


async def test_upload_without_content_length_header_is_400(kas: Kas) -> None:
    """addMailData: the Content-Length header of the whole body is required."""
    request = kas.client.build_request(
        "POST", URL, content=body(b"abc"), headers={**CONTENT_TYPE, **basic(SENDER, SENDER_PW)}
    )
    del request.headers["Content-Length"]
    assert_error(await kas.client.send(request), 400, "Content-Length")


@pytest.mark.parametrize("missing", ["messageID", "recipients", "expires"])
async def test_upload_missing_a_form_part_is_400(kas: Kas, missing: str) -> None:
    """addMailData 400: messageID, recipients, expires and attachment are all required."""
    head: dict[str, object] = {
        "messageID": {"message_id": None},
        "recipients": {"recipients": ()},
        "expires": {"expires": ""},
    }[missing]
    assert_error(await upload(kas, b"abc", **head), 400, missing)


async def test_upload_without_attachment_part_is_400(kas: Kas) -> None:
    response = await kas.client.post(
        URL, content=form_head() + TAIL[2:], headers={**CONTENT_TYPE, **basic(SENDER, SENDER_PW)}
    )
    assert_error(response, 400, "attachment")


async def test_attachment_part_without_content_length_is_400(kas: Kas) -> None:
    """The attachment part's Content-Length header is required (encoding in the YAML)."""
    content = form_head() + attachment_head(None) + b"abc" + TAIL
    response = await kas.client.post(
        URL, content=content, headers={**CONTENT_TYPE, **basic(SENDER, SENDER_PW)}
    )
    assert_error(response, 400, "Content-Length")


@pytest.mark.parametrize("declared", [2, 5000])
async def test_attachment_size_other_than_declared_is_400_and_nothing_is_stored(
    kas: Kas, declared: int
) -> None:
    response = await kas.client.post(
        URL,
        content=body(b"x" * 100, declared=declared),
        headers={**CONTENT_TYPE, **basic(SENDER, SENDER_PW)},
    )
    assert_error(response, 400, "Content-Length")
    assert kas.temp_files() == []
    assert await kas.store.kas.uploaders() == set()
    assert await kas.store.mail.usage(SENDER, datetime.now(UTC)) == 0  # no reservation left


@pytest.mark.parametrize(
    ("head", "words"),
    [
        ({"recipients": ("not-an-address",)}, ("recipients", "not-an-address")),
        ({"recipients": ("a" * 300 + "@x.de",)}, ("recipients", "longer")),
        ({"expires": "next tuesday"}, ("expires", "RFC 5322")),
        ({"expires": "Sat, 01 Mar 2025 11:00:00 +0000"}, ("expires", "past")),
        ({"message_id": "<" + "m" * 1200 + ">"}, ("messageID", "longer")),
    ],
)
async def test_upload_with_invalid_field_is_400(
    kas: Kas, head: dict[str, object], words: tuple[str, ...]
) -> None:
    """Wrong types and oversized fields get the documented 400 naming the field, never a 500."""
    assert_error(await upload(kas, b"abc", **head), 400, *words)


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"messageID": "x"}', "application/json"),
        (b"--" + BOUNDARY.encode() + b"\r\ngarbage without headers end", None),
        (form_head(), None),  # no final boundary
    ],
)
async def test_malformed_body_is_400(kas: Kas, content: bytes, content_type: str | None) -> None:
    headers = {**basic(SENDER, SENDER_PW), **CONTENT_TYPE}
    if content_type:
        headers["Content-Type"] = content_type
    response = await kas.client.post(URL, content=content, headers=headers)
    assert_error(response, 400)


async def test_upload_over_the_maximum_size_is_413(kas: Kas) -> None:
    """addMailData 413 when the declared attachment exceeds the KAS maximum (KAS-ref
    max-mail-size, configurable; 40 MiB in this fixture)."""
    big = 40 * 1024 * 1024 + 1
    content = form_head() + attachment_head(big) + b"x" * 10 + TAIL
    response = await kas.client.post(
        URL, content=content, headers={**CONTENT_TYPE, **basic(SENDER, SENDER_PW)}
    )
    assert_error(response, 413, str(big))


async def test_request_content_length_far_over_the_maximum_is_413_before_reading(kas: Kas) -> None:
    request = kas.client.build_request(
        "POST", URL, content=b"", headers={**CONTENT_TYPE, **basic(SENDER, SENDER_PW)}
    )
    request.headers["Content-Length"] = str(600 * 1024 * 1024)
    assert_error(await kas.client.send(request), 413, "Content-Length")


async def test_upload_over_the_quota_is_507(kas: Kas) -> None:
    """addMailData 507: the quota is shared by the mailbox and the KAS (digest §3.2, §3.5)."""
    await upload_ok(kas, b"a" * 3000, auth=(SMALL, SMALL_PW))
    response = await upload(kas, b"b" * 2500, auth=(SMALL, SMALL_PW))
    assert_error(response, 507, "quota", SMALL)
    # the mailbox counts too: 1500 bytes of mail leave 500 bytes for the KAS
    await store_bytes(kas.fd.store, SMALL, b"m" * 1500)
    assert_error(await upload(kas, b"c" * 600, auth=(SMALL, SMALL_PW)), 507, "quota")
    await upload_ok(kas, b"d" * 400, auth=(SMALL, SMALL_PW))
    # another account's quota is untouched
    await upload_ok(kas, b"e" * 6000)


async def test_expires_is_capped_at_the_accounts_data_time_to_live(kas: Kas) -> None:
    """KAS blobs follow dataTimeToLive (digest §3.2, default 90 days)."""
    path = await upload_ok(
        kas, b"abc", expires=format_datetime(kas.clock.now + timedelta(days=400))
    )
    attachment = await kas.store.kas.get(path.rsplit("/", 1)[1], DOMAIN, kas.clock.now)
    assert attachment.expires_at == kas.clock.now + timedelta(days=90)
    assert attachment.uploader == SENDER.lower()
    assert attachment.recipients == (RCPT.lower(), RCPT2.lower())


# -- readMailData and HEAD ----------------------------------------------------------------------


async def test_download_without_recipient_header_is_400(kas: Kas) -> None:
    path = await upload_ok(kas, b"abc")
    assert_error(await kas.client.get(path), 400, "recipient")
    assert_error(await kas.client.get(path, headers={"recipient": "no address"}), 400, "recipient")


async def test_download_by_a_non_recipient_is_403(kas: Kas) -> None:
    """readMailData 403: recipient not included in the KIM mail's recipient list."""
    path = await upload_ok(kas, b"abc")
    assert_error(await kas.client.get(path, headers={"recipient": OTHER}), 403, OTHER)
    upper = await kas.client.get(path, headers={"recipient": RCPT.upper()})
    assert upper.status_code == 200  # addresses compare case-insensitively


@pytest.mark.parametrize(
    "attachment_id", [str(uuid.uuid4()), "not-a-uuid", "..%2F..%2Fkas.sqlite3"]
)
async def test_download_of_unknown_attachment_is_404(kas: Kas, attachment_id: str) -> None:
    response = await kas.client.get(URL + attachment_id, headers={"recipient": RCPT})
    assert_error(response, 404)


async def test_too_many_downloads_are_429_per_recipient_and_window(kas: Kas) -> None:
    """readMailData 429 after max_downloads per (recipient, resource) within the window
    (KAS-ref: 1000 per 300 s; 3 in this fixture)."""
    path = await upload_ok(kas, b"abc")
    for _ in range(3):
        assert (await kas.client.get(path, headers={"recipient": RCPT})).status_code == 200
    response = await kas.client.get(path, headers={"recipient": RCPT})
    assert_error(response, 429, "3 times")
    assert response.headers["retry-after"] == "300"
    # another recipient has its own count; HEAD does not count
    assert (await kas.client.head(path, headers={"recipient": RCPT2})).status_code == 200
    assert (await kas.client.get(path, headers={"recipient": RCPT2})).status_code == 200
    kas.clock.now += timedelta(seconds=301)
    assert (await kas.client.get(path, headers={"recipient": RCPT})).status_code == 200


async def test_head_reports_the_size_without_body(kas: Kas) -> None:
    """HEAD 200 with the size (A_24002); 404 for unknown ids and for non-recipients."""
    path = await upload_ok(kas, b"z" * 1234)
    response = await kas.client.head(path, headers={"recipient": RCPT})
    assert response.status_code == 200
    assert response.headers["content-length"] == "1234"
    assert response.content == b""
    assert (
        await kas.client.head(URL + str(uuid.uuid4()), headers={"recipient": RCPT})
    ).status_code == 404
    assert (await kas.client.head(path, headers={"recipient": OTHER})).status_code == 404


# -- deleteMailData ---------------------------------------------------------------------------


async def test_delete_by_the_uploader_removes_the_attachment(kas: Kas) -> None:
    """deleteMailData 200 (uploader, Basic auth); afterwards readMailData 404."""
    path = await upload_ok(kas, b"abc")
    blob = await kas.blob_file(path)
    assert blob.exists()
    response = await kas.client.delete(path, headers=basic(SENDER, SENDER_PW))
    assert response.status_code == 200
    assert not blob.exists()
    assert_error(await kas.client.get(path, headers={"recipient": RCPT}), 404)
    assert_error(await kas.client.delete(path, headers=basic(SENDER, SENDER_PW)), 404)


async def test_delete_needs_auth_and_the_uploader(kas: Kas) -> None:
    """deleteMailData 401 without credentials; 404 for another account's attachment."""
    path = await upload_ok(kas, b"abc")
    assert_error(await kas.client.delete(path), 401)
    assert_error(await kas.client.delete(path, headers=basic(OTHER, OTHER_PW)), 404, OTHER)
    assert (await kas.client.get(path, headers={"recipient": RCPT})).status_code == 200


# -- expiry and crash safety --------------------------------------------------------------------


async def test_expired_attachment_is_gone_and_cleaned_up(kas: Kas) -> None:
    """After ``expires`` the link answers 404 at once; expire_kas removes row and file."""
    path = await upload_ok(kas, b"abc", expires=format_datetime(kas.clock.now + timedelta(hours=1)))
    keep = await upload_ok(kas, b"def")
    blob = await kas.blob_file(path)
    assert await expire_kas(kas.fd, kas.clock.now) == 0
    kas.clock.now += timedelta(hours=1)
    assert_error(await kas.client.get(path, headers={"recipient": RCPT}), 404)
    assert blob.exists()
    assert await expire_kas(kas.fd, kas.clock.now) == 1
    assert not blob.exists()
    assert (await kas.client.get(keep, headers={"recipient": RCPT})).status_code == 200
