"""THE crash test (issue 3 §4): kill -9 a real ``kim-appliance run`` during parallel sends,
restart it on the same data dir, and check that nothing acknowledged is lost and nothing
partial is visible."""

from __future__ import annotations

import base64
import os
import random
import smtplib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_appliance import (
    Appliance,
    Launcher,
    mail,
    message_id_of,
    pop3_fetch,
    trace_prefix_of,
)

ROUNDS = 3
#: (sender, recipient): six parallel submissions, local to fd1 and fd2 (no relay queue)
PAIRS = (
    ("praxis.weber", "zahnarzt.klein"),
    ("zahnarzt.klein", "praxis.weber"),
    ("apotheke.sonne", "dr.meyer"),
    ("dr.meyer", "apotheke.sonne"),
    ("praxis.weber", "zahnarzt.klein"),
    ("apotheke.sonne", "dr.meyer"),
)
MIN_SIZE, MAX_SIZE = 200_000, 3_000_000


@dataclass
class Sent:
    sender: str
    recipient: str
    data: bytes
    acked: bool = False


class Senders:
    """Six smtplib threads that send until their connection dies, recording every 250."""

    def __init__(self, app: Appliance, round_no: int, rng: random.Random) -> None:
        self.app = app
        self.round_no = round_no
        self.sizes = [rng.randint(MIN_SIZE, MAX_SIZE) for _ in range(10_000)]
        self.lock = threading.Lock()
        self.sent: dict[str, Sent] = {}
        #: set once every thread has had a 250: from then on all six are sending
        self.all_sending = threading.Event()
        self._acked_threads: set[int] = set()
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(i, s, r), daemon=True)
            for i, (s, r) in enumerate(PAIRS)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join(30)
            assert not t.is_alive(), "a sender thread hangs after the kill"

    def in_flight(self) -> int:
        with self.lock:
            return sum(not s.acked for s in self.sent.values())

    def _run(self, index: int, sender_local: str, recipient_local: str) -> None:
        sender = self.app.participant(sender_local)
        recipient = self.app.participant(recipient_local)["address"]
        host, port = self.app.fd_of(sender, "smtp")
        n = 0
        try:
            with smtplib.SMTP_SSL(host, port, context=self.app.ssl_context(), timeout=20) as s:
                s.login(sender["address"], sender["password"])
                while True:
                    mid = f"crash-{self.round_no}-{index}-{n}@e2e"
                    size = self.sizes[(index * 997 + n) % len(self.sizes)]
                    data = mail(sender["address"], recipient, mid, _body(size))
                    n += 1
                    with self.lock:
                        self.sent[mid] = Sent(sender["address"], recipient, data)
                    s.sendmail(sender["address"], [recipient], data)
                    with self.lock:
                        self.sent[mid].acked = True
                        self._acked_threads.add(index)
                        if len(self._acked_threads) == len(self.threads):
                            self.all_sending.set()
        except smtplib.SMTPResponseException as exc:
            # a refusal is a failure of the server, not an effect of the kill
            self.errors.append(f"thread {index}: {exc.smtp_code} {exc.smtp_error!r}")
        except (OSError, smtplib.SMTPException):
            pass  # the connection died with the process


def _body(size: int) -> bytes:
    """``size`` bytes of base64 text lines, with dot lines for the stuffing to get right."""
    text = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", b"\r\n")
    return b".\r\n..dots\r\n" + text + b".\r\n"


def _blob_dirs(data_dir: Path) -> list[Path]:
    dirs = sorted((data_dir / "fachdienst").glob("*/blobs"))
    assert dirs, f"no blob directories under {data_dir / 'fachdienst'}"
    return dirs


def _blob_files(blobs: Path) -> list[Path]:
    return [p for p in blobs.glob("[0-9a-f][0-9a-f]/*") if p.is_file()]


@pytest.mark.slow
def test_kill_9_during_parallel_sends_loses_no_acknowledged_message(
    data_dir: Path, launcher: Launcher
) -> None:
    """Issue 3 §4, KOM-LE-A_2152 (messages kept until fetched): kill -9 while six clients send
    200 KB..3 MB messages; after the restart every message that got 250 is in its mailbox,
    byte for byte after the Return-Path/Received prefix; a message not acknowledged is either
    absent or complete; no temp blob and no unreferenced blob file remains. Three rounds."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    app = launcher.start(data_dir)
    mailboxes = sorted({local for pair in PAIRS for local in pair})
    figures: list[str] = []
    for round_no in range(ROUNDS):
        senders = Senders(app, round_no, rng)
        senders.start()
        assert senders.all_sending.wait(30), f"not every sender got a 250: {senders.errors}"
        time.sleep(rng.uniform(0.0, 0.8))
        in_flight = senders.in_flight()
        app.kill9()
        senders.join()
        assert not senders.errors, senders.errors

        app = launcher.start(data_dir)
        for blobs in _blob_dirs(data_dir):
            leftovers = list((blobs / "tmp").iterdir())
            assert not leftovers, f"seed {seed} round {round_no}: temp blobs left: {leftovers}"
        files_before = {b: len(_blob_files(b)) for b in _blob_dirs(data_dir)}

        found: dict[str, bytes] = {}
        per_domain: dict[str, int] = {}
        for local in mailboxes:
            who = app.participant(local)
            messages = pop3_fetch(app, who, delete=True)
            per_domain[who["fachdienst"]] = per_domain.get(who["fachdienst"], 0) + len(messages)
            for stored in messages:
                mid = message_id_of(stored)
                where = f"seed {seed} round {round_no} {who['address']} <{mid}>"
                assert mid is not None, f"{where}: no Message-ID"
                assert mid in senders.sent, f"{where}: not a message sent"
                assert mid not in found, f"{where}: delivered twice"
                sent = senders.sent[mid]
                assert sent.recipient == who["address"], f"{where}: in the wrong mailbox"
                trace_prefix_of(stored, sent.data, sent.sender)  # complete and byte-exact
                found[mid] = stored
        acked = {mid for mid, s in senders.sent.items() if s.acked}
        lost = sorted(acked - set(found))
        assert not lost, f"seed {seed} round {round_no}: acknowledged but lost: {lost}"
        # every blob file belongs to a message in a mailbox: no orphan of the crash remains
        for blobs, count in files_before.items():
            domain = blobs.parent.name
            assert count == per_domain.get(domain, 0), (
                f"seed {seed} round {round_no} {domain}: {count} blob files for "
                f"{per_domain.get(domain, 0)} messages"
            )
        figures.append(
            f"round {round_no}: {len(acked)} acknowledged, {len(found) - len(acked)} more "
            f"complete, {in_flight} in flight at the kill"
        )
    code, _ = app.stop()
    assert code == 0
    print(f"crash test seed {seed}: " + "; ".join(figures))
