"""The PostgreSQL backend itself (store.postgres): its versioned schema and the migration lock
row, bodies as 1 MiB chunk rows streamed in and out (a 25 MB message never whole in memory),
the sweep of abandoned blobs, damaged chunks, a lost connection, and passwords kept out of
every message. The contract it shares with the embedded store is tested in
tests/store/contract/ (on both backends)."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from pg_server import PgServer
from store_helpers import account, address, body_for, drain, put, read

from kim_appliance.store import (
    AccountExists,
    MessageNotFound,
    RelayRecipient,
    StoreCorrupted,
    StoreError,
    StoreUnavailable,
    mask_url,
    open_store,
)
from kim_appliance.store.postgres import CHUNK_SIZE, SCHEMA_VERSION, PostgresStore

NOW = datetime(2025, 9, 1, 9, tzinfo=UTC)
ALICE = address("alice")
MiB = 1 << 20


async def _sql(store: PostgresStore, query: str, *args: Any) -> list[Any]:
    """Rows of one statement on the store's own pool (to look behind the interface)."""

    async def op(conn: Any) -> list[Any]:
        return list(await conn.fetch(query, *args))

    return await store.db.read(op)


@pytest.fixture
async def pg(pg_url: str, tmp_path: Path) -> AsyncIterator[PostgresStore]:
    async with open_store(pg_url, tmp_path) as store:
        assert isinstance(store, PostgresStore)
        await store.accounts.create(account("alice"))
        yield store


async def test_the_schema_is_created_once_even_by_two_nodes_at_once(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """Two nodes opening an empty database at the same moment: both open it, the schema is
    created once (the migration lock row), and opening again applies nothing."""
    url = pg_server.url(pg_server.empty_database())
    opened: list[str] = []

    async def node(name: str) -> None:
        async with open_store(url, tmp_path / name) as store:
            await store.meta.put_if_absent("first", name)
            opened.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(node, "n1")
        nursery.start_soon(node, "n2")
    assert sorted(opened) == ["n1", "n2"]
    async with open_store(url, tmp_path) as store:
        assert isinstance(store, PostgresStore)
        versions = await _sql(store, "SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == list(range(1, SCHEMA_VERSION + 1))
        assert await store.meta.get("first") in ("n1", "n2")


async def test_a_database_of_a_newer_schema_is_refused(pg_url: str, tmp_path: Path) -> None:
    async with open_store(pg_url, tmp_path) as store:
        assert isinstance(store, PostgresStore)
        await _sql(store, "INSERT INTO schema_migrations VALUES (99, 0) RETURNING version")
    with pytest.raises(StoreError, match="schema version 99"):
        async with open_store(pg_url, tmp_path):
            pass


async def test_bodies_are_chunk_rows_of_one_mib_and_no_large_objects(pg: PostgresStore) -> None:
    body = body_for("chunks", 2 * MiB + MiB // 2)
    blob, [msg] = await put(pg, body, [(ALICE, b"P:")], now=NOW)
    rows = await _sql(
        pg,
        "SELECT seq, octet_length(data) AS n FROM blob_chunks WHERE blob = $1 ORDER BY seq",
        blob.name,
    )
    assert [(r["seq"], r["n"]) for r in rows] == [(0, MiB), (1, MiB), (2, MiB // 2)]
    assert MiB == CHUNK_SIZE
    assert (await _sql(pg, "SELECT count(*) AS n FROM pg_largeobject_metadata"))[0]["n"] == 0
    assert await read(pg, msg.id) == b"P:" + body


@pytest.mark.slow
async def test_a_25_mb_message_never_sits_whole_in_memory(pg: PostgresStore) -> None:
    """The issue's promise: a 25 MB body goes in and out in pieces; neither writing (64 KiB
    at a time) nor reading holds more than a few chunks at once (measured: about 3 MiB
    writing, 5 MiB reading, most of it asyncpg's buffers of one 1 MiB row)."""
    size = 25 * 1000 * 1000
    piece = body_for("big", 65536)
    tracemalloc.start()
    try:
        async with pg.blobs.writer() as writer:
            for _ in range(size // len(piece)):
                await writer.write(piece)
            await writer.write(piece[: size % len(piece)])
            blob = await writer.commit()
            [msg] = await pg.mail.deliver(blob, [(ALICE, b"P:")], NOW, check_quota=False)
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        total = 0
        async with pg.mail.reader(msg.id) as reader:
            while chunk := await reader.read(65536):
                total += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size + 2
    assert write_peak < 8 * MiB, f"writing held {write_peak} bytes"
    assert read_peak < 8 * MiB, f"reading held {read_peak} bytes"


async def test_a_half_written_body_is_invisible_and_swept(pg: PostgresStore) -> None:
    """Rule 1 and 4 of store.postgres._blobs: a writer that died after two chunk rows leaves
    a blob nothing may reference; the sweep removes it once it is older than the sweep age,
    and never removes what a message references."""
    _, [kept] = await put(pg, b"kept", [(ALICE, b"")], now=NOW)
    dead = pg.blobs.writer()
    await dead.write(b"x" * (2 * MiB + 10))  # two chunk rows committed, then the node "dies"
    rows = await _sql(pg, "SELECT committed FROM blobs WHERE name = $1", dead.name)
    assert [r["committed"] for r in rows] == [False]
    assert await pg.sweep() == 0  # younger than the sweep age (a slow client, maybe)
    assert await pg.sweep(timedelta(0)) == 1
    assert await _sql(pg, "SELECT 1 FROM blob_chunks WHERE blob = $1", dead.name) == []
    assert await read(pg, kept.id) == b"kept"


async def test_a_writer_left_with_an_error_leaves_no_rows(pg: PostgresStore) -> None:
    writer = pg.blobs.writer()

    async def fail_midway() -> None:
        async with writer:
            await writer.write(b"y" * (MiB + 1))
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        await fail_midway()
    assert await _sql(pg, "SELECT 1 FROM blobs WHERE name = $1", writer.name) == []
    assert await _sql(pg, "SELECT 1 FROM blob_chunks WHERE blob = $1", writer.name) == []


async def test_damaged_chunk_rows_are_corruption_not_a_short_message(pg: PostgresStore) -> None:
    """A body whose rows disagree with its recorded size raises StoreCorrupted (POP3 then
    answers -ERR) instead of handing out a truncated message."""
    blob, [msg] = await put(pg, body_for("damaged", 2 * MiB), [(ALICE, b"")], now=NOW)
    await _sql(pg, "DELETE FROM blob_chunks WHERE blob = $1 AND seq = 1 RETURNING 1", blob.name)
    with pytest.raises(StoreCorrupted, match=blob.name):
        await read(pg, msg.id)
    _, [small] = await put(pg, b"0123456789", [(ALICE, b"")], now=NOW)
    await _sql(
        pg,
        "UPDATE blob_chunks SET data = '\\x3031'::bytea WHERE blob = "
        "(SELECT blob FROM messages WHERE id = $1) RETURNING 1",
        small.id,
    )
    with pytest.raises(StoreCorrupted):
        await read(pg, small.id)


async def test_a_message_deleted_while_it_is_read_is_not_found(pg: PostgresStore) -> None:
    _, [msg] = await put(pg, body_for("gone", 3 * MiB), [(ALICE, b"")], now=NOW)
    async with pg.mail.reader(msg.id) as reader:
        assert len(await reader.read(65536)) == 65536
        await pg.mail.delete(ALICE, [msg.id])
        with pytest.raises(MessageNotFound, match="deleted while being read"):
            await drain(reader)


async def test_a_lost_connection_is_unavailable_and_the_store_recovers(
    pg: PostgresStore, pg_server: PgServer
) -> None:
    """The server drops every connection of the store (a failover, a restart): an operation in
    the way fails with StoreUnavailable (451 / -ERR [SYS/TEMP]), never with a driver error,
    and the next ones work again on new connections."""
    _, [msg] = await put(pg, b"before", [(ALICE, b"")], now=NOW)
    database = pg_server_database(pg)
    pg_server.admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )
    outcomes: list[str] = []
    for _ in range(3):
        try:
            outcomes.append((await read(pg, msg.id)).decode())
        except StoreUnavailable as exc:
            outcomes.append("unavailable" if "***" in str(exc) else f"password shown: {exc}")
    assert outcomes[-1] == "before"
    assert set(outcomes) <= {"before", "unavailable"}


def pg_server_database(store: PostgresStore) -> str:
    return store.db.where.rpartition("/")[2]


async def test_an_unreachable_server_is_unavailable_without_the_password(
    pg_server: PgServer, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    url = f"postgresql://kim:s3cret-pw@127.0.0.1:{closed_port}/kim"
    with pytest.raises(StoreUnavailable) as refused:
        async with open_store(url, tmp_path):
            pass
    assert "s3cret-pw" not in str(refused.value)
    assert f"kim:***@127.0.0.1:{closed_port}/kim" in str(refused.value)
    wrong = pg_server.url("postgres").replace(pg_server.password, "wrong-pw")
    with pytest.raises(StoreError) as denied:
        async with open_store(wrong, tmp_path):
            pass
    assert "wrong-pw" not in str(denied.value)
    assert "password authentication failed" in str(denied.value)


async def test_the_description_names_the_store_without_its_password(
    pg: PostgresStore, pg_url: str
) -> None:
    password = pg_url.split(":")[2].split("@")[0]
    assert password not in pg.description
    assert pg.description.startswith("PostgreSQL store postgresql://kim:***@127.0.0.1:")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://kim:pw@db:5432/kim", "postgresql://kim:***@db:5432/kim"),
        ("postgresql://kim@db/kim", "postgresql://kim@db/kim"),
        ("postgresql://kim:p%40ss:w@db/kim", "postgresql://kim:***@db/kim"),
        (
            "postgres://u:pw@h/d?sslmode=require&password=pw2",
            "postgres://u:***@h/d?sslmode=require&password=***",
        ),
        (None, "embedded"),
        ("sqlite", "embedded"),
    ],
)
def test_mask_url(url: str | None, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url", ["postgresql://kim:pw@/kim", "postgresql://kim:pw@db:5432/", "postgresql://h:99999/d"]
)
async def test_an_incomplete_url_is_refused_before_connecting(url: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError) as refused:
        async with open_store(url, tmp_path):
            pass
    assert "pw" not in str(refused.value).replace("postgresql", "")


async def test_a_body_stays_while_its_writer_is_open(pg: PostgresStore) -> None:
    """Rule 2: the Fachdienst delivers a body and queues it for relaying from one writer; a
    POP3 deletion of the local copy in between must not take the body from the queue."""
    async with pg.blobs.writer() as writer:
        await writer.write(b"local and remote")
        blob = await writer.commit()
        [msg] = await pg.mail.deliver(blob, [(ALICE, b"")], NOW, check_quota=False)
        await pg.mail.delete(ALICE, [msg.id])
        entry = await pg.relay.enqueue(
            blob, sender=ALICE, recipients=[RelayRecipient("x@test2.kim.telematik-test")],
            envid=None, ret=None, source_domain="test1.kim.telematik-test",
            domain="test2.kim.telematik-test", not_after=NOW + timedelta(days=1), now=NOW,
        )  # fmt: skip
    async with pg.blobs.reader(entry.blob) as reader:
        assert await drain(reader) == b"local and remote"
    await pg.relay.attempted(entry.id, next_attempt=None, error=None)
    assert await _sql(pg, "SELECT 1 FROM blobs WHERE name = $1", blob.name) == []


def test_the_embedded_store_does_not_load_the_postgresql_driver(tmp_path: Path) -> None:
    """asyncpg and trio-asyncio are imported only for a postgresql:// URL: the embedded
    default (and its start-up time) pays nothing for them."""
    import subprocess
    import sys

    code = (
        "import sys, trio, pathlib\n"
        "import kim_appliance.cli, kim_appliance.appliance\n"
        "from kim_appliance.store import open_store\n"
        "async def main():\n"
        f"    async with open_store(None, pathlib.Path({str(tmp_path)!r})) as s:\n"
        "        await s.accounts.list()\n"
        "trio.run(main)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncpg', 'trio_asyncio')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


async def test_writes_that_queue_up_share_one_commit_and_keep_their_own_errors(
    pg: PostgresStore,
) -> None:
    """Group commit (issue 13): writes that arrive while a commit runs wait in the queue and go
    in ONE transaction after it; each caller returns after that commit, and a write that fails
    (an account that exists) fails alone, rolled back to its savepoint: the others commit."""
    db = pg.db

    async def hold() -> None:
        if db._commit_lock is None:
            db._commit_lock = asyncio.Lock()
        await db._commit_lock.acquire()

    async def free() -> None:
        assert db._commit_lock is not None
        db._commit_lock.release()

    before = (db.writes, db.commits)
    names = ["b1", "b2", "alice", "b3"]
    errors: dict[str, BaseException] = {}

    async def create(local: str) -> None:
        try:
            await pg.accounts.create(account(local))
        except StoreError as exc:
            errors[local] = exc

    await db.loop.run_aio_coroutine(hold())  # as a long commit would hold it
    async with trio.open_nursery() as nursery:
        for local in names:
            nursery.start_soon(create, local)
        with trio.fail_after(10):
            while len(db._queue) < len(names):
                await trio.sleep(0.01)
        await db.loop.run_aio_coroutine(free())
    assert (db.writes - before[0], db.commits - before[1]) == (4, 1)
    assert list(errors) == ["alice"]
    assert isinstance(errors["alice"], AccountExists)
    for local in ("b1", "b2", "b3"):
        assert await pg.accounts.get(address(local)) is not None
