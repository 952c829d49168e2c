"""The embedded store's schema, created and migrated by the program, versioned.

``schema_migrations(version, applied_at)`` lists every version applied. Each version is a list
of statements (:data:`MIGRATIONS`) run in one transaction together with its row, so a database
is always at exactly one version; a database of a newer version than this code knows is
refused (the code that wrote it must read it). Version 1 is the whole schema of issue 12,
version 2 adds the message traces (issue 15); later versions append steps, never edit earlier
ones. The PostgreSQL backend keeps its own list with
the same version numbers and the same tables (types differ: BIGINT, BYTEA, identity columns).

Every time is integer microseconds since the epoch (UTC), in both backends. This module must
never hold data logic; it only says what the tables are.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

from ..base import StoreError
from ._db import us

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # --- accounts (digest §3.2/§3.3), tombstones (KOM-LE-A_2155, A_19464-02) ---
        """CREATE TABLE accounts (
            key TEXT PRIMARY KEY,
            domain TEXT NOT NULL,
            address TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            telematik_id TEXT NOT NULL,
            display_name TEXT NOT NULL,
            status TEXT NOT NULL,
            quota_bytes INTEGER NOT NULL,
            data_ttl_days INTEGER NOT NULL,
            kim_version TEXT NOT NULL,
            dereg_date INTEGER,
            no_vzd_mail_entry INTEGER NOT NULL,
            ooo_active INTEGER NOT NULL,
            ooo_start INTEGER,
            ooo_end INTEGER,
            ooo_message TEXT
        )""",
        "CREATE INDEX accounts_by_domain ON accounts(domain, key)",
        """CREATE TABLE retired_addresses (
            key TEXT PRIMARY KEY,
            address TEXT NOT NULL,
            telematik_id TEXT NOT NULL,
            purged_at INTEGER NOT NULL
        )""",
        # --- failed logins per (account, client address) (KOM-LE-A_2167) ---
        """CREATE TABLE login_failures (
            account TEXT NOT NULL,
            client TEXT NOT NULL,
            failures INTEGER NOT NULL,
            locks INTEGER NOT NULL,
            locked_until INTEGER,
            last_failure INTEGER NOT NULL,
            PRIMARY KEY (account, client)
        )""",
        "CREATE INDEX login_failures_by_time ON login_failures(last_failure)",
        # --- bodies, mailboxes ---
        """CREATE TABLE blobs (
            name TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            stored_size INTEGER NOT NULL,
            compressed INTEGER NOT NULL
        )""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            mailbox TEXT NOT NULL REFERENCES accounts(key),
            blob TEXT NOT NULL REFERENCES blobs(name),
            uid TEXT,
            prefix BLOB NOT NULL,
            size INTEGER NOT NULL,
            received_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL
        )""",
        "CREATE INDEX messages_by_mailbox ON messages(mailbox, id)",
        "CREATE INDEX messages_by_expiry ON messages(expires_at)",
        "CREATE INDEX messages_by_blob ON messages(blob)",
        # --- relay queues (one per source_domain), claims as leases ---
        """CREATE TABLE relay_entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            blob TEXT NOT NULL REFERENCES blobs(name),
            sender TEXT NOT NULL,
            envid TEXT,
            ret TEXT,
            source_domain TEXT NOT NULL,
            domain TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            next_attempt INTEGER NOT NULL,
            not_after INTEGER NOT NULL,
            last_error TEXT,
            created_at INTEGER NOT NULL,
            relay_id TEXT NOT NULL,
            claimed_by TEXT,
            claim_until INTEGER
        )""",
        "CREATE INDEX relay_by_due ON relay_entries(source_domain, next_attempt, id)",
        "CREATE INDEX relay_by_blob ON relay_entries(blob)",
        """CREATE TABLE relay_recipients (
            entry_id INTEGER NOT NULL REFERENCES relay_entries(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            address TEXT NOT NULL,
            notify TEXT,
            orcpt TEXT,
            PRIMARY KEY (entry_id, position)
        )""",
        # the receiving side: which (relay id, mailbox) were delivered (exactly once)
        """CREATE TABLE relay_deliveries (
            relay_id TEXT NOT NULL,
            mailbox TEXT NOT NULL,
            delivered_at INTEGER NOT NULL,
            PRIMARY KEY (relay_id, mailbox)
        )""",
        "CREATE INDEX relay_deliveries_by_time ON relay_deliveries(delivered_at)",
        # --- KAS (digest §3.5) ---
        """CREATE TABLE kas_attachments (
            id TEXT PRIMARY KEY,
            domain TEXT NOT NULL,
            uploader TEXT NOT NULL,
            message_id TEXT NOT NULL,
            filename TEXT,
            size INTEGER NOT NULL,
            blob TEXT NOT NULL REFERENCES blobs(name),
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL
        )""",
        "CREATE INDEX kas_by_uploader ON kas_attachments(uploader)",
        "CREATE INDEX kas_by_expiry ON kas_attachments(expires_at)",
        "CREATE INDEX kas_by_blob ON kas_attachments(blob)",
        """CREATE TABLE kas_recipients (
            attachment TEXT NOT NULL REFERENCES kas_attachments(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            address TEXT NOT NULL,
            PRIMARY KEY (attachment, position)
        )""",
        """CREATE TABLE kas_downloads (
            attachment TEXT NOT NULL REFERENCES kas_attachments(id) ON DELETE CASCADE,
            recipient TEXT NOT NULL,
            at INTEGER NOT NULL
        )""",
        "CREATE INDEX kas_downloads_key ON kas_downloads(attachment, recipient, at)",
        """CREATE TABLE kas_reservations (
            id TEXT PRIMARY KEY,
            mailbox TEXT NOT NULL,
            size INTEGER NOT NULL,
            expires_at INTEGER NOT NULL
        )""",
        "CREATE INDEX kas_reservations_by_mailbox ON kas_reservations(mailbox)",
        # --- absence-note reply ledger (RFC 3834) ---
        """CREATE TABLE auto_replies (
            mailbox TEXT NOT NULL,
            sender TEXT NOT NULL,
            note_start INTEGER NOT NULL,
            replied_at INTEGER NOT NULL,
            PRIMARY KEY (mailbox, sender, note_start)
        )""",
        # --- Account Manager: registration codes and OTPs (digest §3.3) ---
        """CREATE TABLE registration_codes (
            domain TEXT NOT NULL,
            reference_id TEXT NOT NULL,
            ini_password_hash TEXT NOT NULL,
            telematik_id TEXT,
            used_by TEXT,
            used_key TEXT,
            PRIMARY KEY (domain, reference_id)
        )""",
        "CREATE INDEX registration_codes_by_user ON registration_codes(used_key)",
        """CREATE TABLE otps (
            address TEXT PRIMARY KEY,
            digest TEXT NOT NULL,
            expires_at INTEGER NOT NULL
        )""",
        # --- POP3 maildrop locks (RFC 1939 §8) and node leases ---
        """CREATE TABLE maildrop_locks (
            mailbox TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            until INTEGER NOT NULL
        )""",
        """CREATE TABLE nodes (
            name TEXT PRIMARY KEY,
            endpoints TEXT NOT NULL,
            components TEXT NOT NULL,
            seen_at INTEGER NOT NULL
        )""",
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            until INTEGER NOT NULL
        )""",
        # --- the VZD (digest §4) with its change counter ---
        """CREATE TABLE directory_entries (
            uid TEXT PRIMARY KEY,
            telematik_id TEXT NOT NULL UNIQUE,
            data TEXT NOT NULL
        )""",
        """CREATE TABLE directory_version (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL
        )""",
        "INSERT INTO directory_version (id, version) VALUES (1, 0)",
        # --- data dirs of earlier versions imported into this store (store.legacy) ---
        """CREATE TABLE legacy_imports (
            source TEXT PRIMARY KEY,
            imported_at INTEGER NOT NULL,
            summary TEXT NOT NULL
        )""",
    ),
    # --- issue 15: message traces (store.base.Traces), one row per hop, keys to find them ---
    2: (
        """CREATE TABLE trace_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            node TEXT NOT NULL,
            component TEXT NOT NULL,
            stage TEXT NOT NULL,
            ids TEXT NOT NULL,
            sender TEXT,
            recipients TEXT NOT NULL,
            result TEXT,
            size INTEGER,
            facts TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
        "CREATE INDEX trace_events_by_expiry ON trace_events(expires_at)",
        """CREATE TABLE trace_keys (
            event_id INTEGER NOT NULL REFERENCES trace_events(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            PRIMARY KEY (event_id, kind, key)
        )""",
        "CREATE INDEX trace_keys_by_key ON trace_keys(kind, key)",
    ),
}

#: the version this code writes and reads
SCHEMA_VERSION = max(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: Path, now: datetime) -> int:
    """Bring the database of ``conn`` (in a write transaction) to SCHEMA_VERSION; returns the
    version it had before (0: new)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
    )
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    before = int(row[0])
    if before > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {before}, this code knows {SCHEMA_VERSION}; use the "
            "kim-appliance that wrote it"
        )
    for version in range(before + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[version]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
            (version, us(now, "now")),
        )
    return before
