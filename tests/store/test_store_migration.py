"""Schema migrations and file modes of the SQLite store (issue 11).

A data dir made before issue 11 has schema version 1: failed logins as columns of the account,
no relay ids. Opening it migrates it in place (one transaction), keeping accounts, mail and the
relay queue, and gives it the tables a new database has. Every file of a store is 0600 and
every directory 0700, the SQLite -wal/-shm files included, whatever the umask."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from store_helpers import account, address, body_for, put, read

from kim_appliance.store import LockoutPolicy, open_store
from kim_appliance.store.sqlite import _SCHEMA, DB_NAME, SCHEMA_VERSION

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _version_1_store(data_dir: Path) -> None:
    """What kim-appliance wrote before issue 11: schema 1 with an account locked the old way
    (failed_logins, locked_until), a message in its mailbox and a queued relay entry."""
    with open_store(data_dir) as store:
        store.create_account(account("alice"))
        put(store, b"stored before the migration\r\n", [(address("alice"), b"P:\r\n")])
    # rebuild the database as version 1 from the old schema, with the rows of above (the relay
    # entry shares the message's blob)
    db = data_dir / DB_NAME
    old = sqlite3.connect(db)
    rows = old.execute("SELECT name, size, stored_size, compressed FROM blobs").fetchall()
    messages = old.execute(
        "SELECT mailbox, blob, prefix, size, received_at, expires_at FROM messages"
    ).fetchall()
    instance = old.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()[0]
    old.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(_SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('instance', ?)", (instance,))
    conn.execute(
        "INSERT INTO accounts VALUES (?, ?, ?, ?, ?, 'active', -1, 90, 4, ?, '1.5+', NULL, 0, "
        "0, NULL, NULL, NULL)",
        (
            address("alice").lower(),
            address("alice"),
            account("alice").password_hash,
            account("alice").telematik_id,
            "Praxis alice",
            int((T0 + timedelta(days=1)).timestamp() * 1_000_000),
        ),
    )
    conn.executemany("INSERT INTO blobs VALUES (?, ?, ?, ?)", rows)
    conn.executemany(
        "INSERT INTO messages (mailbox, blob, prefix, size, received_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        messages,
    )
    blob = rows[0][0]
    conn.execute(
        "INSERT INTO relay_entries (blob, sender, envid, ret, domain, attempts, next_attempt, "
        "not_after, last_error, created_at) VALUES (?, ?, NULL, NULL, "
        "'fd2.kim.telematik-test', 2, 0, ?, '451 later', 0)",
        (blob, address("alice"), int(T0.timestamp() * 1_000_000)),
    )
    conn.execute(
        "INSERT INTO relay_recipients VALUES (1, 0, 'dr.x@fd2.kim.telematik-test', NULL, NULL)"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.close()


def _tables(db: Path) -> dict[str, list[tuple[str, str]]]:
    conn = sqlite3.connect(db)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            name: sorted((c[1], c[2]) for c in conn.execute(f"PRAGMA table_info({name})"))
            for name in sorted(names)
        }
    finally:
        conn.close()


def test_version_1_store_is_migrated_in_place(tmp_path: Path) -> None:
    """Accounts, mail and the relay queue survive; the queued entry gets a relay id; the old
    per-account lock columns are gone and the new per-client counters work; a new store has
    exactly the same tables."""
    data_dir = tmp_path / "old"
    _version_1_store(data_dir)
    with open_store(data_dir) as store:
        alice = store.get_account(address("alice"))
        assert alice is not None
        assert alice.telematik_id == account("alice").telematik_id
        [message] = store.list_messages(address("alice"))
        assert read(store, message.id) == b"P:\r\nstored before the migration\r\n"
        [entry] = store.due_relays(T0)
        assert (entry.attempts, entry.last_error) == (2, "451 later")
        assert len(entry.relay_id) == 32
        int(entry.relay_id, 16)
        state = store.record_login_failure(address("alice"), "192.0.2.1", T0, LockoutPolicy())
        assert state.failures == 1
    conn = sqlite3.connect(data_dir / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    conn.close()
    with open_store(tmp_path / "new"):
        pass
    assert _tables(data_dir / DB_NAME) == _tables(tmp_path / "new" / DB_NAME)


def test_newer_schema_is_refused_with_the_reason(tmp_path: Path) -> None:
    with open_store(tmp_path / "d"):
        pass
    conn = sqlite3.connect(tmp_path / "d" / DB_NAME, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(Exception, match=f"schema version {SCHEMA_VERSION + 1}, this code knows"):
        open_store(tmp_path / "d")


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A permissive umask, as an application embedding the store might run with."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_every_store_file_is_private(tmp_path: Path, compress: bool) -> None:
    """Issue 11: the store directory and everything under it are for this user only: 0700
    directories, 0600 files, the SQLite -wal and -shm included, also for files made while
    the store runs (blobs, temp files) and under a umask of 022."""
    data_dir = tmp_path / "store"
    with open_store(data_dir, compress=compress) as store:
        store.create_account(account("alice"))
        put(store, body_for("private", 300_000), [(address("alice"), b"P:\r\n")])
        with store.new_blob() as writer:  # a temp file in flight
            writer.write(b"in flight")
            names = _modes(data_dir)
            assert any(n.endswith(".part") for n in names)
            assert any(n.endswith(DB_NAME + "-wal") for n in names)
            _assert_private(names)
    _assert_private(_modes(data_dir))


def test_an_older_store_is_narrowed_at_open(tmp_path: Path) -> None:
    """A data dir made before issue 11 (0755 directory, 0644 database) is narrowed at open."""
    data_dir = tmp_path / "store"
    with open_store(data_dir):
        pass
    os.chmod(data_dir, 0o755)
    for path in data_dir.glob(DB_NAME + "*"):
        os.chmod(path, 0o644)
    with open_store(data_dir):
        modes = _modes(data_dir)
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    _assert_private({k: v for k, v in modes.items() if DB_NAME in k})


def _modes(root: Path) -> dict[str, int]:
    out = {str(root): stat.S_IMODE(os.stat(root).st_mode)}
    for path in root.rglob("*"):
        out[str(path)] = stat.S_IMODE(os.stat(path).st_mode)
    return out


def _assert_private(modes: dict[str, int]) -> None:
    wide = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert not wide, f"readable by group or others: {wide}"
