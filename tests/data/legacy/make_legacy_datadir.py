"""Writes the store files of a data dir as kim-appliance wrote them before issue 12, with the
code of that version (commit aa52c68): per Fachdienst ``fachdienst/<domain>/mail.sqlite3`` +
``blobs/`` (one message body zstd-compressed), ``kas/`` and ``registration-codes.json``, and the
VZD's ``directory.json``. tests/store/test_legacy.py imports the result (kim-data/ beside this
script) into the store of issue 12.

Run with that version on the path:
    git worktree add /tmp/old aa52c68 && cp kim_appliance/_native*.so /tmp/old/kim_appliance/
    PYTHONPATH=/tmp/old python tests/data/legacy/make_legacy_datadir.py
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kim_appliance.fachdienst.kas_store import KasStore

from kim_appliance.directory.entries import DirectoryEntry, KimAddress
from kim_appliance.directory.store import DirectoryStore
from kim_appliance.fachdienst.account_lifecycle import AccountManagerState
from kim_appliance.store import Account, LockoutPolicy, OutOfOffice, RelayRecipient, open_store

OUT = Path(__file__).with_name("kim-data")
FD1, FD2 = "fd1.kim.telematik-test", "fd2.kim.telematik-test"
NOW = datetime(2025, 11, 3, 9, 30, tzinfo=UTC)
#: messages and uploads expire far in the future, so the test can run any year
FAR = datetime(2099, 1, 1, tzinfo=UTC)
HASH = "scrypt$1024$8$1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g="


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    weber, klein = f"praxis.weber@{FD1}", f"Zahnarzt.Klein@{FD1}"
    sonne = f"apotheke.sonne@{FD2}"
    with open_store(OUT / "fachdienst" / FD1) as store:
        store.create_account(Account(weber, HASH, "1-weber", "Praxis Weber", quota_bytes=50_000))
        store.create_account(
            Account(
                klein, HASH, "2-klein", "Zahnarzt Klein", data_ttl_days=365,
                out_of_office=OutOfOffice(True, NOW, FAR, "Urlaub"),
            )
        )  # fmt: skip
        store.create_account(Account(f"alt@{FD1}", HASH, "1-alt", "Alt"))
        store.purge_account(f"alt@{FD1}", now=NOW)
        with store.new_blob() as writer:  # one body, two mailboxes, and the relay queue
            writer.write(b"Subject: an beide\r\n\r\nHallo\r\n")
            blob = writer.commit()
            store.deliver(blob, [(weber, b"Received: w\r\n"), (klein, b"Received: k\r\n")], now=NOW)
            store.enqueue_relay(
                blob, sender=weber,
                recipients=[RelayRecipient(sonne, frozenset({"SUCCESS", "FAILURE"}),
                                           f"rfc822;{sonne}")],
                envid="ENV-1", ret="HDRS", domain=FD2, not_after=FAR, now=NOW,
            )  # fmt: skip
        with store.new_blob() as writer:
            writer.write(b"Subject: zweite\r\n\r\n" + b"Befund\r\n" * 2000)
            store.deliver(writer.commit(), [(weber, b"Received: w2\r\n")], now=NOW)
        [entry] = store.due_relays(FAR)
        store.relay_attempted(entry.id, next_attempt=FAR, error="451 4.4.3 later")
        store.record_login_failure(weber, "198.51.100.7", NOW, LockoutPolicy())
    # the second Fachdienst compresses its bodies and has got a relayed message
    with open_store(OUT / "fachdienst" / FD2, compress=True) as store:
        store.create_account(Account(sonne, HASH, "3-sonne", "Sonnen-Apotheke"))
        with store.new_blob() as writer:
            writer.write(b"Subject: relayed\r\n\r\n" + b"komprimiert " * 5000)
            store.deliver(writer.commit(), [(sonne, b"Received: s\r\n")], now=NOW,
                          relay_id="<" + "ab" * 16 + f"@{FD1}>")  # fmt: skip
    with (
        KasStore.open(OUT / "fachdienst" / FD1 / "kas") as kas,
        kas.new_upload(declared_size=4096) as upload,
    ):
        upload.write(bytes(range(256)) * 16)
        attachment = upload.commit(
            uploader=weber, recipients=[sonne, f"dr.meyer@{FD2}"], message_id="<kas@weber>",
            filename="befund.enc", expires_at=FAR, now=NOW,
        )  # fmt: skip
        kas.record_download(attachment.id, sonne, now=NOW, limit=1000, window=timedelta(days=1))
    codes = AccountManagerState.open(OUT / "fachdienst" / FD1)
    codes.add_code("REF-FD1-0001", "Start-Kennwort-1!")
    codes.add_code("REF-FD1-0002", "Start-Kennwort-2!", telematik_id="2-klein")
    codes.mark_used("REF-FD1-0002", klein)
    codes.new_otp(klein, NOW)
    directory = DirectoryStore.open(OUT)
    for tid, name, address, fad in (
        ("1-weber", "Praxis Weber", weber, FD1),
        ("3-sonne", "Sonnen-Apotheke", sonne, FD2),
    ):
        directory.put_entry(DirectoryEntry(uid=f"uid-{tid}", telematik_id=tid, display_name=name))
        directory.set_address(tid, fad, KimAddress(address, "1.5+"))
    # what a store keeps beside its data: no lock files, WAL folded in, compact (small pages:
    # the files are committed to the repository)
    for path in OUT.rglob("*.sqlite3"):
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA page_size = 512")
        conn.execute("VACUUM")
        conn.close()
    for path in [*OUT.rglob("store.lock"), *OUT.rglob("*-wal"), *OUT.rglob("*-shm")]:
        path.unlink()
    # git keeps no empty directory: drop them here already (the empty shards and tmp/)
    for path in sorted(OUT.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


if __name__ == "__main__":
    main()
