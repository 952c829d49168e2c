"""``kim-appliance store copy``: the embedded store of a data dir copied into PostgreSQL, verified.

A user who outgrows one machine keeps the data: every table of the embedded store (accounts,
tombstones, lockout counters, mailboxes, the relay queue with its recipients and delivered
relay ids, KAS attachments with recipients, download counts and reservations, the reply ledger,
registration codes and OTPs, maildrop locks, nodes and leases, the directory with its change
counter, the meta facts, the message traces) goes row for row into the PostgreSQL store, under
the same keys and ids, so that POP3 shows the same UIDLs (KOM-LE-A_2151) and relay ids stay
valid. Bodies are streamed from the blob files into chunk rows under their own names, SHA-256
computed on the way; the identity sequences continue after the largest id the embedded store
ever gave out (``sqlite_sequence``: a deleted message's UID is never given again).

Order and safety: the embedded store is opened first (so an appliance running on the data dir
is refused with `StoreInUse`, and a data dir of an earlier version is imported the usual way);
a target that holds data is refused unless ``force`` (then it is emptied first). Bodies are
written first, then every row in one transaction, so an interrupted copy leaves no rows (run it
again with ``force``). Then the copy is verified: the rows of every table counted on both sides,
and every body read back from PostgreSQL and its SHA-256 compared with the source's. The report
is ``verified`` only if all of that agrees. The source is never changed; this module must never
write to the embedded store or print a password (the target is named by its masked URL).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import trio

from . import EMBEDDED, check_url, mask_url
from .base import BlobRef, StoreError
from .sqlite import DB_NAME, STORE_DIR, SQLiteStore, open_sqlite_store

if TYPE_CHECKING:
    from .postgres import PostgresStore

#: the tables copied row for row, parents before children (same names and columns in both
#: backends); ``blobs`` and ``directory_version`` are copied apart
TABLES = (
    "meta",
    "accounts",
    "retired_addresses",
    "login_failures",
    "messages",
    "relay_entries",
    "relay_recipients",
    "relay_deliveries",
    "kas_attachments",
    "kas_recipients",
    "kas_downloads",
    "kas_reservations",
    "auto_replies",
    "registration_codes",
    "otps",
    "maildrop_locks",
    "nodes",
    "leases",
    "directory_entries",
    "trace_events",
    "trace_keys",
)
#: tables with an identity column whose sequence must continue after the copied ids
IDENTITY_TABLES = ("messages", "relay_entries", "trace_events")
#: bytes read from a blob file at a time
READ_SIZE = 1 << 20


@dataclass
class CopyReport:
    """What a copy did: rows per table on each side, the bodies and their bytes, problems."""

    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    blobs: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.problems and all(s == t for s, t in self.counts.values())

    def lines(self) -> list[str]:
        out = [f"  {'table':22} {'source':>8} {'target':>8}"]
        for table, (source, target) in self.counts.items():
            mark = "" if source == target else "   MISMATCH"
            out.append(f"  {table:22} {source:8} {target:8}{mark}")
        out.append(f"  bodies: {self.blobs} ({self.bytes} bytes), SHA-256 compared one by one")
        out += [f"  problem: {p}" for p in self.problems]
        return out


def _read_source(path: Path) -> tuple[dict[str, tuple[list[str], list[tuple[Any, ...]]]], Any]:
    """Every copied table's columns and rows, the blob rows, the directory version and the
    largest ids ever given out (read-only; blocking)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
        for table in (*TABLES, "blobs"):
            cur = conn.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cur.description]
            tables[table] = (columns, cur.fetchall())
        version = conn.execute("SELECT version FROM directory_version WHERE id = 1").fetchone()
        sequences = dict(conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        return tables, (0 if version is None else int(version[0]), sequences)
    finally:
        conn.close()


async def copy_store(
    data_dir: Path, url: str, *, force: bool = False, out: TextIO | None = None
) -> CopyReport:
    """Copy the embedded store of ``data_dir`` into the PostgreSQL store at ``url`` and verify
    it (see the module docstring). `StoreInUse` while an appliance runs on ``data_dir``;
    `StoreError` for a target that holds data (without ``force``) or is not PostgreSQL."""
    if url.strip().lower() in EMBEDDED:
        raise StoreError("store copy: --to must be a postgresql:// URL (the target store)")
    check_url(url)
    data_dir = Path(data_dir)
    if not (data_dir / STORE_DIR / DB_NAME).exists() and not (data_dir / "demo.json").exists():
        raise StoreError(
            f"store copy: {data_dir} holds no appliance data (no {STORE_DIR}/{DB_NAME})"
        )
    from .postgres import open_postgres_store

    def say(line: str) -> None:
        if out is not None:
            print(line, file=out, flush=True)

    async with open_sqlite_store(data_dir) as source:
        rows, (version, sequences) = await trio.to_thread.run_sync(
            _read_source, source.root / DB_NAME
        )
        async with open_postgres_store(url, sweep=False) as target:
            say(f"copying {source.description} to {target.description}")
            await _prepare_target(target, force)
            hashes = await _copy_blobs(source, target, rows["blobs"], say)
            await _copy_rows(target, rows, version, sequences)
            report = await _verify(target, rows, version, hashes)
    say(f"copied {data_dir} to {mask_url(url)}:")
    for line in report.lines():
        say(line)
    say("verified: every count and every SHA-256 matches" if report.verified else "NOT verified")
    return report


async def _count(target: PostgresStore, table: str) -> int:
    async def op(conn: Any) -> int:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))

    result: int = await target.db.read(op)
    return result


async def _prepare_target(target: PostgresStore, force: bool) -> None:
    """Refuse a target with data (its open wrote an instance fact only), or empty it."""
    held = {
        table: n
        for table in (*TABLES, "blobs")
        if (n := await _count(target, table)) > (1 if table == "meta" else 0)
    }
    if held and not force:
        summary = ", ".join(f"{n} {table}" for table, n in sorted(held.items()))
        raise StoreError(
            f"store copy: the target {target.description} holds data ({summary}); copy into "
            "an empty database, or give --force to replace what it holds"
        )

    async def empty(conn: Any) -> None:
        await conn.execute(
            f"TRUNCATE {', '.join((*TABLES, 'blob_chunks', 'blobs'))} RESTART IDENTITY CASCADE"
        )
        await conn.execute("UPDATE directory_version SET version = 0 WHERE id = 1")

    await target.db.write(empty)


async def _copy_blobs(
    source: SQLiteStore,
    target: PostgresStore,
    blobs: tuple[list[str], list[tuple[Any, ...]]],
    say: Callable[[str], None],
) -> dict[str, tuple[int, str]]:
    """Stream every body into the target under its own name; (size, SHA-256) by name."""
    columns, records = blobs
    hashes: dict[str, tuple[int, str]] = {}
    for record in records:
        row = dict(zip(columns, record, strict=True))
        ref = BlobRef(row["name"], row["size"], row["stored_size"], bool(row["compressed"]))
        digest = hashlib.sha256()
        writer = target.blobs.writer(name=ref.name)
        async with source.blobs.reader(ref) as reader:
            while chunk := await reader.read(READ_SIZE):
                digest.update(chunk)
                await writer.write(chunk)
        # committed and pinned; the rows that reference it come in _copy_rows, which unpins it
        await writer.commit()
        hashes[ref.name] = (ref.size, digest.hexdigest())
    if records:
        say(f"  {len(records)} bodies written")
    return hashes


async def _copy_rows(
    target: PostgresStore,
    rows: dict[str, tuple[list[str], list[tuple[Any, ...]]]],
    version: int,
    sequences: dict[str, int],
) -> None:
    """Every row in one transaction, booleans converted; sequences and the version set."""

    async def op(conn: Any) -> None:
        for table in TABLES:
            columns, records = rows[table]
            if table == "meta":
                # the target's open wrote its own instance fact: the source's replaces it, so
                # that the UIDs of messages without a stored one stay what they were
                await conn.execute("DELETE FROM meta")
            if not records:
                continue
            types = {
                r["column_name"]: r["data_type"]
                for r in await conn.fetch(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = $1 AND table_schema = current_schema()",
                    table,
                )
            }
            missing = [c for c in columns if c not in types]
            if missing:
                raise StoreError(f"store copy: target table {table} lacks columns {missing}")
            flags = [types[c] == "boolean" for c in columns]
            converted = [
                tuple(
                    bool(v) if flag and v is not None else v
                    for v, flag in zip(rec, flags, strict=True)
                )
                for rec in records
            ]
            placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
            await conn.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", converted
            )
        for table in IDENTITY_TABLES:
            # continue after the largest id ever given out, deleted ones included
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"GREATEST(COALESCE(MAX(id), 0), $1::bigint) + 1, false) FROM {table}",
                int(sequences.get(table, 0)),
            )
        await conn.execute("UPDATE directory_version SET version = $1 WHERE id = 1", version)
        await conn.execute("UPDATE blobs SET pinned = false")

    await target.db.write(op)


async def _verify(
    target: PostgresStore,
    rows: dict[str, tuple[list[str], list[tuple[Any, ...]]]],
    version: int,
    hashes: dict[str, tuple[int, str]],
) -> CopyReport:
    """Counts per table on both sides; every body read back and hashed."""
    report = CopyReport()
    for table in (*TABLES, "blobs"):
        report.counts[table] = (len(rows[table][1]), await _count(target, table))

    async def target_version(conn: Any) -> int:
        return int(await conn.fetchval("SELECT version FROM directory_version WHERE id = 1"))

    copied_version = await target.db.read(target_version)
    if copied_version != version:
        report.problems.append(f"directory version {copied_version}, source {version}")
    for name, (size, expected) in hashes.items():
        digest = hashlib.sha256()
        got = 0
        try:
            async with target.blobs.reader(BlobRef(name, size, size, False)) as reader:
                while chunk := await reader.read(READ_SIZE):
                    digest.update(chunk)
                    got += len(chunk)
        except StoreError as exc:
            report.problems.append(f"body {name}: cannot be read back ({exc})")
            continue
        if digest.hexdigest() != expected:
            report.problems.append(f"body {name}: SHA-256 differs after the copy")
        report.blobs += 1
        report.bytes += got
    return report


__all__ = ["TABLES", "CopyReport", "copy_store"]
