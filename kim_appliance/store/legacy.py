"""One-time import of a data dir made by an earlier kim-appliance into the embedded store.

Before issue 12 each Fachdienst had a store of its own, ``fachdienst/<domain>/mail.sqlite3``
with ``blobs/`` beside it, a KAS with its own database (``fachdienst/<domain>/kas/``), the
Account Manager's ``registration-codes.json``; the VZD lived in ``directory.json``. At the first
open of the new store (``store/kim.sqlite3``) everything found there is copied in, in ONE
transaction, and checked by counts before it commits: accounts with their tombstones and
lockout counters, messages (keeping their POP3 UIDs, KOM-LE-A_2152), relay queues (keeping
relay ids, attempts and due times), delivered relay ids, KAS attachments with recipients and
download counts, registration codes and OTPs, directory entries. Blob files are hard-linked
into the new blob directory (copied where a link is impossible) and made durable before the
rows that reference them commit (store.sqlite crash-safety rule 1). Only then are the old files
renamed with a ``.imported`` suffix: a user's kim-data keeps its mail, and the old files stay
for inspection. A crash before the commit leaves the old files as they were (the linked blobs
are swept); a crash after it is finished at the next open (``legacy_imports`` names what was
imported, so nothing is imported twice).

This module only reads the old files and writes rows through the embedded store's database; it
must never change an old file except by the final renames, and never import a source twice.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import StoreError, domain_of
from .blobs import fsync_dir

if TYPE_CHECKING:
    from .sqlite._db import Database, Tx

SUFFIX = ".imported"
OLD_MAIL_DB = "mail.sqlite3"
OLD_BLOBS = "blobs"
OLD_KAS = "kas"
OLD_KAS_DB = "kas.sqlite3"
OLD_CODES = "registration-codes.json"
OLD_DIRECTORY = "directory.json"
_CODES_FORMAT = "kim-appliance-account-manager/1"
_DIRECTORY_FORMAT = "kim-appliance-vzd/1"
#: the meta fact that the demo state exists (kim_appliance.demo writes it at init)
DEMO_FACT = "demo-state"


@dataclass
class Imported:
    """What one source (a Fachdienst directory, or directory.json) brought in."""

    source: str
    counts: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        what = ", ".join(f"{n} {name}" for name, n in self.counts.items())
        return f"{self.source} ({what or 'empty'})"


@dataclass
class _Source:
    """An old Fachdienst directory or directory.json, and the files renamed when done."""

    name: str  # relative to the data dir: "fachdienst/<domain>" or "directory.json"
    path: Path
    renames: list[Path] = field(default_factory=list)


def _sources(data_dir: Path) -> list[_Source]:
    found: list[_Source] = []
    fd_root = data_dir / "fachdienst"
    if fd_root.is_dir():
        for fd_dir in sorted(p for p in fd_root.iterdir() if p.is_dir()):
            renames = [
                fd_dir / name
                for name in (OLD_MAIL_DB, OLD_BLOBS, OLD_KAS, OLD_CODES)
                if (fd_dir / name).exists()
            ]
            if renames:
                found.append(_Source(f"fachdienst/{fd_dir.name}", fd_dir, renames))
    directory = data_dir / OLD_DIRECTORY
    if directory.is_file():
        found.append(_Source(OLD_DIRECTORY, directory, [directory]))
    return found


def import_data_dir(db: Database, data_dir: Path, now: datetime) -> list[Imported]:
    """Import every old source of ``data_dir`` not imported yet (blocking; at open only).

    Raises `StoreError` naming the source when an old file cannot be read or the counts do not
    match; nothing is committed then, and the old files stay as they were."""
    sources = _sources(data_dir)
    if not sources:
        return []
    done = db.read_sync(
        lambda tx: {row[0] for row in tx.execute("SELECT source FROM legacy_imports")}
    )
    imported: list[Imported] = []
    for source in sources:
        if source.name not in done:
            imported.append(_import(db, source, now))
        _rename(source)
    return imported


def _import(db: Database, source: _Source, now: datetime) -> Imported:
    from .sqlite._db import us

    result = Imported(source.name)
    try:
        if source.name == OLD_DIRECTORY:
            rows = _read_directory(source.path)

            def op(tx: Tx) -> None:
                _write_directory(tx, rows, result)
                _record(tx, result, us(now, "now"))

        else:
            domain = source.path.name.lower()
            mail = _read_mail(source.path / OLD_MAIL_DB)
            kas = _read_kas(source.path / OLD_KAS / OLD_KAS_DB)
            codes = _read_codes(source.path / OLD_CODES)
            links = _link_blobs(db, source.path, mail, kas)

            def op(tx: Tx) -> None:
                _write_mail(tx, domain, mail, result)
                _write_kas(tx, domain, kas, links, result)
                _write_codes(tx, domain, codes, result)
                if mail.get("accounts"):
                    tx.execute(
                        "INSERT INTO meta (name, value) VALUES (?, 'imported') "
                        "ON CONFLICT DO NOTHING",
                        (DEMO_FACT,),
                    )
                _record(tx, result, us(now, "now"))

        db.write_sync(op)
    except (OSError, ValueError, KeyError, TypeError, sqlite3.Error) as exc:
        raise StoreError(
            f"importing {source.path} (a data dir of an earlier kim-appliance) failed: {exc}; "
            "nothing was changed"
        ) from exc
    return result


def _record(tx: Tx, result: Imported, when: int) -> None:
    tx.execute(
        "INSERT INTO legacy_imports (source, imported_at, summary) VALUES (?, ?, ?)",
        (result.source, when, json.dumps(result.counts)),
    )


def _rename(source: _Source) -> None:
    """The old files get the ``.imported`` suffix (SQLite's -wal/-shm with their database)."""
    parents: set[Path] = set()
    for path in source.renames:
        extra = [Path(f"{path}-wal"), Path(f"{path}-shm")] if path.suffix == ".sqlite3" else []
        for old in [path, *extra]:
            if old.exists():
                os.replace(old, old.with_name(old.name + SUFFIX))
                parents.add(old.parent)
    for parent in parents:
        fsync_dir(parent)


# --- reading the old files ------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    """The old database, its WAL folded in (so the renamed file alone holds everything)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return conn


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _all(conn: sqlite3.Connection, table: str, order: str = "") -> list[dict[str, Any]]:
    if not _columns(conn, table):
        return []  # a table an older schema did not have
    return [dict(row) for row in conn.execute(f"SELECT * FROM {table} {order}")]


def _read_mail(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    conn = _connect(path)
    try:
        instance = conn.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()[0]
        data: dict[str, Any] = {
            "instance": str(instance),
            "accounts": _all(conn, "accounts"),
            "retired": _all(conn, "retired_addresses"),
            "logins": _all(conn, "login_failures"),
            "blobs": _all(conn, "blobs"),
            "messages": _all(conn, "messages", "ORDER BY id"),
            "relay": _all(conn, "relay_entries", "ORDER BY id"),
            "recipients": _all(conn, "relay_recipients", "ORDER BY entry_id, position"),
            "deliveries": _all(conn, "relay_deliveries"),
        }
    finally:
        conn.close()
    return data


def _read_kas(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    conn = _connect(path)
    try:
        return {
            "attachments": _all(conn, "attachments"),
            "recipients": _all(conn, "recipients", "ORDER BY rowid"),
            "downloads": _all(conn, "downloads"),
        }
    finally:
        conn.close()


def _read_codes(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != _CODES_FORMAT:
        raise ValueError(f"{path}: format is not {_CODES_FORMAT!r}")
    return data


def _read_directory(path: Path) -> list[tuple[str, str, str]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != _DIRECTORY_FORMAT:
        raise ValueError(f"{path}: format is not {_DIRECTORY_FORMAT!r}")
    return [(str(e["uid"]), str(e["telematikID"]), json.dumps(e)) for e in data["entries"]]


# --- blob files -----------------------------------------------------------------------------


def _link_blobs(
    db: Database, fd_dir: Path, mail: dict[str, Any], kas: dict[str, Any]
) -> dict[str, str]:
    """Link (or copy) every referenced old blob file into the new blob directory and make the
    links durable; returns KAS attachment id -> new blob name. A missing or short old file
    stops the import (StoreError): nothing acknowledged may be dropped silently."""
    files = db.files
    shards: set[Path] = set()
    for blob in mail.get("blobs", []):
        name, compressed = str(blob["name"]), bool(blob["compressed"])
        old = fd_dir / OLD_BLOBS / name[:2] / (name + (".zst" if compressed else ""))
        new = files.path(name, compressed)
        _place(old, new, int(blob["stored_size"]))
        shards.add(new.parent)
    kas_names: dict[str, str] = {}
    for attachment in kas.get("attachments", []):
        attachment_id = str(attachment["id"])
        name = uuid.UUID(attachment_id).hex
        old = fd_dir / OLD_KAS / attachment_id[:2] / attachment_id
        new = files.path(name, False)
        _place(old, new, int(attachment["size"]))
        shards.add(new.parent)
        kas_names[attachment_id] = name
    for shard in sorted(shards):
        fsync_dir(shard)
    return kas_names


def _place(old: Path, new: Path, size: int) -> None:
    try:
        found = old.stat().st_size
    except FileNotFoundError:
        raise StoreError(f"{old}: the old store references this file, but it is gone") from None
    if found != size:
        raise StoreError(f"{old}: {found} bytes, the old store recorded {size}")
    if new.exists():
        if new.stat().st_size == size and os.path.samefile(old, new):
            return  # linked by an earlier attempt that did not commit
        raise StoreError(f"{new}: a blob of that name exists already")
    try:
        os.link(old, new)
    except OSError:
        tmp = new.with_name(new.name + ".copy")
        shutil.copyfile(old, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, new)


# --- writing the rows -----------------------------------------------------------------------


def _count(tx: Tx, sql: str, params: tuple[object, ...]) -> int:
    row = tx.one(sql, params)
    assert row is not None
    return int(row[0])


def _check(what: str, expected: int, found: int) -> None:
    if expected != found:
        raise ValueError(f"{what}: {expected} in the old store, {found} after the import")


def _write_mail(tx: Tx, domain: str, mail: dict[str, Any], result: Imported) -> None:
    if not mail:
        return
    for a in mail["accounts"]:
        tx.execute(
            "INSERT INTO accounts (key, domain, address, password_hash, telematik_id, "
            "display_name, status, quota_bytes, data_ttl_days, kim_version, dereg_date, "
            "no_vzd_mail_entry, ooo_active, ooo_start, ooo_end, ooo_message) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                a["key"], domain_of(a["address"]), a["address"], a["password_hash"],
                a["telematik_id"], a["display_name"], a["status"], a["quota_bytes"],
                a["data_ttl_days"], a["kim_version"], a["dereg_date"], a["no_vzd_mail_entry"],
                a["ooo_active"], a["ooo_start"], a["ooo_end"], a["ooo_message"],
            ),
        )  # fmt: skip
    for r in mail["retired"]:
        tx.execute(
            "INSERT OR REPLACE INTO retired_addresses (key, address, telematik_id, purged_at) "
            "VALUES (?, ?, ?, ?)",
            (r["key"], r["address"], r["telematik_id"], r["purged_at"]),
        )
    for f in mail["logins"]:
        tx.execute(
            "INSERT OR IGNORE INTO login_failures (account, client, failures, locks, "
            "locked_until, last_failure) VALUES (?, ?, ?, ?, ?, ?)",
            (f["account"], f["client"], f["failures"], f["locks"], f["locked_until"],
             f["last_failure"]),
        )  # fmt: skip
    for b in mail["blobs"]:
        tx.execute(
            "INSERT INTO blobs (name, size, stored_size, compressed) VALUES (?, ?, ?, ?)",
            (b["name"], b["size"], b["stored_size"], b["compressed"]),
        )
    instance = mail["instance"]
    for m in mail["messages"]:
        tx.execute(
            "INSERT INTO messages (mailbox, blob, uid, prefix, size, received_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (m["mailbox"], m["blob"], f"{m['id']}.{instance}", m["prefix"], m["size"],
             m["received_at"], m["expires_at"]),
        )  # fmt: skip
    ids: dict[int, int] = {}
    for e in mail["relay"]:
        row = tx.one(
            "INSERT INTO relay_entries (blob, sender, envid, ret, source_domain, domain, "
            "attempts, next_attempt, not_after, last_error, created_at, relay_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                e["blob"], e["sender"], e["envid"], e["ret"], domain, e["domain"],
                e["attempts"], e["next_attempt"], e["not_after"], e["last_error"],
                e["created_at"], e.get("relay_id") or uuid.uuid4().hex,
            ),
        )  # fmt: skip
        assert row is not None
        ids[int(e["id"])] = int(row[0])
    for r in mail["recipients"]:
        tx.execute(
            "INSERT INTO relay_recipients (entry_id, position, address, notify, orcpt) "
            "VALUES (?, ?, ?, ?, ?)",
            (ids[int(r["entry_id"])], r["position"], r["address"], r["notify"], r["orcpt"]),
        )
    for d in mail["deliveries"]:
        tx.execute(
            "INSERT OR IGNORE INTO relay_deliveries (relay_id, mailbox, delivered_at) "
            "VALUES (?, ?, ?)",
            (d["relay_id"], d["mailbox"], d["delivered_at"]),
        )
    keys = [a["key"] for a in mail["accounts"]]
    marks = ",".join("?" * len(keys)) or "NULL"
    _check(
        "accounts",
        len(keys),
        _count(tx, f"SELECT COUNT(*) FROM accounts WHERE key IN ({marks})", tuple(keys)),
    )
    _check(
        "messages",
        len(mail["messages"]),
        _count(tx, f"SELECT COUNT(*) FROM messages WHERE mailbox IN ({marks})", tuple(keys)),
    )
    _check(
        "relay entries",
        len(mail["relay"]),
        _count(tx, "SELECT COUNT(*) FROM relay_entries WHERE source_domain = ?", (domain,)),
    )
    result.counts.update(
        accounts=len(keys),
        messages=len(mail["messages"]),
        relay_entries=len(mail["relay"]),
        blobs=len(mail["blobs"]),
    )


def _write_kas(
    tx: Tx, domain: str, kas: dict[str, Any], names: dict[str, str], result: Imported
) -> None:
    if not kas:
        return
    for a in kas["attachments"]:
        name = names[str(a["id"])]
        tx.execute(
            "INSERT INTO blobs (name, size, stored_size, compressed) VALUES (?, ?, ?, 0)",
            (name, a["size"], a["size"]),
        )
        tx.execute(
            "INSERT INTO kas_attachments (id, domain, uploader, message_id, filename, size, "
            "blob, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (a["id"], domain, a["uploader"], a["message_id"], a["filename"], a["size"], name,
             a["created_at"], a["expires_at"]),
        )  # fmt: skip
    positions: dict[str, int] = {}
    for r in kas["recipients"]:
        position = positions.get(r["attachment"], 0)
        positions[r["attachment"]] = position + 1
        tx.execute(
            "INSERT INTO kas_recipients (attachment, position, address) VALUES (?, ?, ?)",
            (r["attachment"], position, r["address"]),
        )
    for d in kas["downloads"]:
        tx.execute(
            "INSERT INTO kas_downloads (attachment, recipient, at) VALUES (?, ?, ?)",
            (d["attachment"], d["recipient"], d["at"]),
        )
    _check(
        "KAS attachments",
        len(kas["attachments"]),
        _count(tx, "SELECT COUNT(*) FROM kas_attachments WHERE domain = ?", (domain,)),
    )
    result.counts["kas_attachments"] = len(kas["attachments"])


def _write_codes(tx: Tx, domain: str, codes: dict[str, Any], result: Imported) -> None:
    if not codes:
        return
    for c in codes.get("codes", []):
        used_by = c.get("used_by")
        tx.execute(
            "INSERT INTO registration_codes (domain, reference_id, ini_password_hash, "
            "telematik_id, used_by, used_key) VALUES (?, ?, ?, ?, ?, ?)",
            (domain, c["reference_id"], c["ini_password_hash"], c.get("telematik_id"), used_by,
             None if used_by is None else str(used_by).lower()),
        )  # fmt: skip
    from .sqlite._db import us

    for key, otp in codes.get("otps", {}).items():
        expires = us(datetime.fromisoformat(otp["expires"]), "expires")
        tx.execute(
            "INSERT OR REPLACE INTO otps (address, digest, expires_at) VALUES (?, ?, ?)",
            (key.lower(), otp["sha256"], expires),
        )
    _check(
        "registration codes",
        len(codes.get("codes", [])),
        _count(tx, "SELECT COUNT(*) FROM registration_codes WHERE domain = ?", (domain,)),
    )
    result.counts["registration_codes"] = len(codes.get("codes", []))


def _write_directory(tx: Tx, rows: list[tuple[str, str, str]], result: Imported) -> None:
    before = _count(tx, "SELECT COUNT(*) FROM directory_entries", ())
    for uid, telematik_id, data in rows:
        tx.execute(
            "INSERT INTO directory_entries (uid, telematik_id, data) VALUES (?, ?, ?)",
            (uid, telematik_id, data),
        )
    if rows:
        tx.execute("UPDATE directory_version SET version = version + 1 WHERE id = 1")
    after = _count(tx, "SELECT COUNT(*) FROM directory_entries", ())
    _check("directory entries", len(rows), after - before)
    result.counts["directory_entries"] = len(rows)
