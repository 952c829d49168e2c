"""The crash campaign (issue 11 §6): ``kill -9`` a real ``kim-appliance run`` at chosen points,
restart it on the same data dir, and account for every message.

Kill points (:data:`KILL_POINTS`):

* ``parallel``: six clients send 200 KB..3 MB messages to mailboxes of their own Fachdienst;
  the kill comes at a random moment once all six are sending (the issue 3 crash test);
* ``data``: during DATA: a client has sent a random part of a 2..5 MB message (no final dot
  yet) when it kills the appliance; a relayed sender runs alongside;
* ``queued``: after ``250``, before the relay: fd1 runs alone with fd2 unreachable (its
  ``relay_map`` points at a closed port), so the messages for fd2 are acknowledged and queued;
  after the kill the appliance restarts with both Fachdienste, and the queued mail must be
  relayed, not bounced (issue 11: fd1's relay worker ran before fd2 had registered);
* ``relay``: three clients send to the other Fachdienst; the kill comes while the relay
  connections carry messages;
* ``dele``: a POP3 client has retrieved and marked its messages; the kill comes after some
  DELEs, or right after the QUIT (while the deletion commits).

After the restart the campaign waits until every relay queue is empty, fetches every demo
mailbox (POP3, then DELE) and classifies each message by its Message-ID: every acknowledged one
must arrive exactly once, byte for byte after the receiving Fachdienst's trace fields, and no
delivery report (bounce) may appear; a message that was not acknowledged may arrive, but only
complete. No temp file and no unreferenced blob file may remain. ``dele``: a message whose QUIT
was answered ``+OK`` is gone; otherwise all of them are still there, or none (one transaction),
each complete.

Run from the repository root (2 cores are plenty; the appliance is the busy one):

    python -m tests.e2e.crash_campaign --trials 100 [--json PATH] [--seed S] [--points a,b]

``--trials`` is the total, spread over the kill points; each kill point runs its trials one
after the other on one data dir (a new one every :data:`TRIALS_PER_DATA_DIR`). It prints one
line per trial and a summary (acknowledged, delivered once, lost, duplicated, bounced,
truncated); exit 0 only if nothing acknowledged went wrong. The suite runs a few trials per
point (tests/e2e/test_e2e_crash.py).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import poplib
import random
import re
import shutil
import smtplib
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    from e2e_appliance import Appliance, Launcher, cli, message_id_of, trace_prefix_of
except ModuleNotFoundError:  # run as ``python -m tests.e2e.crash_campaign``
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from e2e_appliance import Appliance, Launcher, cli, message_id_of, trace_prefix_of

from kim_appliance.testing import write_config

KILL_POINTS = ("parallel", "data", "queued", "relay", "dele")
FD1, FD2 = "fd1.kim.telematik-test", "fd2.kim.telematik-test"
MAILBOXES = ("praxis.weber", "zahnarzt.klein", "apotheke.sonne", "dr.meyer")
#: the campaign's config: relay retries every second (a restart finds the queue due at once)
BASE_CONFIG: dict[str, Any] = {"fachdienst": {"relay_retry_seconds": [1]}}
TRIALS_PER_DATA_DIR = 10
#: after a restart, the relay queues must be empty within this long
SETTLE_TIMEOUT = 60.0
#: a client waits this long for all its threads to be under way before the kill
SENDING_TIMEOUT = 30.0


@dataclass
class Sent:
    sender: str
    recipient: str
    data: bytes
    acked: bool = False


@dataclass
class TrialResult:
    point: str
    trial: int
    seed: int
    acknowledged: int = 0
    delivered_once: int = 0
    lost: int = 0
    duplicated: int = 0
    bounced: int = 0
    truncated: int = 0
    #: messages not acknowledged that arrived anyway (complete: allowed)
    unacknowledged_arrived: int = 0
    #: relay attempts repeated after the kill that the receiving Fachdienst recognised by
    #: their relay id and did not deliver again (its log: "repeated: already delivered")
    repeats_recognised: int = 0
    #: what the kill interrupted (for the reader of the figures)
    note: str = ""
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        head = (
            f"trial {self.trial:3d} {self.point:8s} seed {self.seed}: {self.acknowledged} "
            f"acknowledged, {self.delivered_once} delivered once, {self.lost} lost, "
            f"{self.duplicated} duplicated, {self.bounced} bounced, {self.truncated} truncated; "
            f"{self.unacknowledged_arrived} unacknowledged arrived; "
            f"{self.repeats_recognised} relay repeats recognised; {self.note}; "
            f"{self.seconds:.1f} s"
        )
        return head + "".join(f"\n    PROBLEM: {p}" for p in self.problems)


# --- the appliance under test ------------------------------------------------------------------


class Rig:
    """One data dir and the appliance running on it, across kills and restarts."""

    def __init__(self, data_dir: Path, launcher: Launcher) -> None:
        self.data_dir = data_dir
        self.launcher = launcher
        self.original_config = (data_dir / "config.toml").read_text("utf-8")
        write_config(data_dir, BASE_CONFIG)
        self.app: Appliance = launcher.start(data_dir)

    def participant(self, local: str) -> dict[str, Any]:
        return self.app.participant(local)

    def kill9(self) -> None:
        self.app.kill9()

    def restart(self) -> None:
        self.app = self.launcher.start(self.data_dir)

    def stop(self) -> None:
        code, _ = self.app.stop()
        if code != 0:
            raise AssertionError(f"kim-appliance exited with {code}:\n{self.app.stderr()[-3000:]}")

    def set_config(self, overrides: dict[str, Any] | None) -> None:
        """The campaign's config, plus ``overrides`` (for the next start)."""
        (self.data_dir / "config.toml").write_text(self.original_config, "utf-8")
        write_config(self.data_dir, BASE_CONFIG)
        if overrides:
            write_config(self.data_dir, overrides)

    def stores(self) -> list[Path]:
        """The appliance's store directory (one store for every Fachdienst, issue 12)."""
        return [self.data_dir / "store"]

    def relay_queue(self) -> tuple[int, list[str]]:
        """Entries in every relay queue, and their last errors (read-only SQLite reads)."""
        count, errors = 0, []
        for store in self.stores():
            db = store / "kim.sqlite3"
            if not db.exists():
                continue
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                rows = conn.execute("SELECT last_error FROM relay_entries").fetchall()
            finally:
                conn.close()
            count += len(rows)
            errors += [f"{store.name}: {r[0]}" for r in rows if r[0]]
        return count, errors


def make_template(root: Path) -> Path:
    """A data dir after ``init`` and one clean run (what tests/e2e/conftest.py makes)."""
    root.mkdir(parents=True, exist_ok=True)
    data_dir = root / "kim-data"
    done = cli("init", "--data-dir", str(data_dir), cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"kim-appliance init failed: {done.stderr}")
    launcher = Launcher(root)
    try:
        app = launcher.start(data_dir)
        code, _ = app.stop()
        if code != 0:
            raise RuntimeError(f"first run exited with {code}: {app.stderr()[-2000:]}")
    finally:
        launcher.close()
    return data_dir


# --- clients -----------------------------------------------------------------------------------


def body(size: int) -> bytes:
    """``size`` bytes of base64 text lines, with dot lines for the stuffing to get right."""
    text = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", b"\r\n")
    return b".\r\n..dots\r\n" + text + b".\r\n"


def mail(sender: str, to: str, message_id: str, payload: bytes) -> bytes:
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: Befund\r\nMessage-ID: <{message_id}>\r\n"
        "Date: Mon, 02 Jun 2025 10:00:00 +0200\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    return head.encode("ascii") + payload


def _stuffed(data: bytes) -> bytes:
    return re.sub(rb"(?m)^\.", b"..", data)


class Senders:
    """Client threads that each send over one SMTPS connection until it dies, recording every
    message before it goes and every ``250``."""

    def __init__(self, rig: Rig, tag: str, rng: random.Random) -> None:
        self.rig = rig
        self.tag = tag
        self.rng = random.Random(rng.random())
        self.lock = threading.Lock()
        self.sent: dict[str, Sent] = {}
        self.errors: list[str] = []
        self.acked_by: set[int] = set()
        self.threads: list[threading.Thread] = []
        self.stop = threading.Event()

    def add(self, sender: str, recipient: str, sizes: tuple[int, int], count: int = 0) -> None:
        index = len(self.threads)
        self.threads.append(
            threading.Thread(
                target=self._run, args=(index, sender, recipient, sizes, count), daemon=True
            )
        )

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float = 30) -> None:
        for t in self.threads:
            t.join(timeout)
            if t.is_alive():
                raise AssertionError("a sender thread hangs after the kill")

    def all_sending(self) -> bool:
        with self.lock:
            return len(self.acked_by) == len(self.threads)

    def in_flight(self) -> int:
        with self.lock:
            return sum(not s.acked for s in self.sent.values())

    def _record(self, mid: str, sent: Sent) -> None:
        with self.lock:
            self.sent[mid] = sent

    def _run(self, index: int, sender_local: str, to_local: str, sizes: tuple[int, int],
             count: int) -> None:  # fmt: skip
        sender = self.rig.participant(sender_local)
        recipient = self.rig.participant(to_local)["address"]
        host, port = self.rig.app.fd_of(sender, "smtp")
        rng = random.Random(self.rng.random() + index)
        n = 0
        try:
            with smtplib.SMTP_SSL(
                host, port, context=self.rig.app.ssl_context(), timeout=20
            ) as smtp:
                smtp.login(sender["address"], sender["password"])
                while not self.stop.is_set() and (count == 0 or n < count):
                    mid = f"{self.tag}-{index}-{n}@crash"
                    data = mail(sender["address"], recipient, mid, body(rng.randint(*sizes)))
                    n += 1
                    self._record(mid, Sent(sender["address"], recipient, data))
                    smtp.sendmail(sender["address"], [recipient], data)
                    with self.lock:
                        self.sent[mid].acked = True
                        self.acked_by.add(index)
        except smtplib.SMTPResponseException as exc:
            # a refusal is a failure of the server, not an effect of the kill
            self.errors.append(f"sender {index}: {exc.smtp_code} {exc.smtp_error!r}")
        except (OSError, smtplib.SMTPException):
            pass  # the connection died with the process


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@contextmanager
def _pop3(app: Appliance, who: dict[str, Any]) -> Iterator[poplib.POP3_SSL]:
    host, port = app.fd_of(who, "pop3")
    pop = poplib.POP3_SSL(host, port, context=app.ssl_context(), timeout=30)
    try:
        pop.user(who["address"])
        pop.pass_(who["password"])
        yield pop
    finally:
        try:
            pop.quit()
        except (poplib.error_proto, OSError):
            pop.close()


def _retrieve_all(pop: poplib.POP3_SSL, *, delete: bool) -> list[tuple[str, bytes]]:
    """(UIDL, message) of every message; DELE each one if asked (effective at QUIT)."""
    _, listing, _ = pop.uidl()
    out = []
    for line in listing:
        number, uid = line.decode("ascii").split()
        _, lines, _ = pop.retr(int(number))
        out.append((uid, b"\r\n".join(lines) + b"\r\n"))
        if delete:
            pop.dele(int(number))
    return out


# --- accounting --------------------------------------------------------------------------------


def restart_after_kill(rig: Rig, result: TrialResult) -> None:
    """Restart after the kill; the temp files the kill left (bodies cut short) must be gone
    (store rule 3: swept at open). New ones may appear at once: relays resume."""
    left = {store.name: _temp_files(store) for store in rig.stores()}
    rig.restart()
    for store in rig.stores():
        still = left.get(store.name, set()) & _temp_files(store)
        if still:
            result.problems.append(f"{store.name}: temp files of the crash left: {sorted(still)}")


def _temp_files(store: Path) -> set[str]:
    tmp = store / "blobs" / "tmp"
    return set(os.listdir(tmp)) if tmp.is_dir() else set()


def settle_and_account(rig: Rig, sent: dict[str, Sent], result: TrialResult) -> dict[str, int]:
    """Wait for the relay queues to empty, fetch (and delete) every mailbox, and classify
    each message; then no blob file may be left in any store. Returns how often each
    Message-ID arrived."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        queued, errors = rig.relay_queue()
        if queued == 0:
            break
        if time.monotonic() > deadline:
            result.problems.append(f"relay queue holds {queued} after {SETTLE_TIMEOUT} s: {errors}")
            break
        time.sleep(0.1)
    result.repeats_recognised += rig.app.stderr().count("repeated: already delivered")
    arrived: dict[str, int] = {}
    for local in MAILBOXES:
        who = rig.participant(local)
        with _pop3(rig.app, who) as pop:
            messages = _retrieve_all(pop, delete=True)
        for _, stored in messages:
            _classify(stored, who["address"], sent, arrived, result)
    for mid, s in sent.items():
        count = arrived.get(mid, 0)
        if not s.acked:
            result.unacknowledged_arrived += count > 0
            continue
        result.acknowledged += 1
        if count == 1:
            result.delivered_once += 1
        elif count == 0:
            result.lost += 1
            result.problems.append(f"<{mid}> acknowledged but lost")
        else:
            result.duplicated += 1
            result.problems.append(f"<{mid}> delivered {count} times")
    for store in rig.stores():
        left = [p for p in (store / "blobs").glob("[0-9a-f][0-9a-f]/*") if p.is_file()]
        if left:
            result.problems.append(f"{store.name}: {len(left)} blob files left over")
        if _temp_files(store):
            result.problems.append(f"{store.name}: temp files left: {_temp_files(store)}")
    return arrived


def _classify(
    stored: bytes, mailbox: str, sent: dict[str, Sent], arrived: dict[str, int], r: TrialResult
) -> None:
    mid = message_id_of(stored)
    if mid is None or mid not in sent:
        head = stored[: stored.find(b"\r\n\r\n")]
        if head.startswith(b"Return-Path: <>") or b"multipart/report" in head:
            r.bounced += 1
            r.problems.append(f"a delivery report in {mailbox}: {head[:600]!r}")
        else:
            r.problems.append(f"an unexpected message in {mailbox}: {head[:300]!r}")
        return
    arrived[mid] = arrived.get(mid, 0) + 1
    s = sent[mid]
    if s.recipient != mailbox:
        r.problems.append(f"<{mid}> in {mailbox}, sent to {s.recipient}")
    try:
        trace_prefix_of(stored, s.data, s.sender)
    except AssertionError as exc:
        r.truncated += 1
        r.problems.append(f"<{mid}> not complete: {str(exc)[:300]}")


# --- the kill points ---------------------------------------------------------------------------


def kill_parallel(rig: Rig, rng: random.Random, result: TrialResult) -> None:
    """Six clients, mailboxes of their own Fachdienst; a random moment once all send."""
    senders = Senders(rig, f"par{result.trial}", rng)
    pairs = [("praxis.weber", "zahnarzt.klein"), ("zahnarzt.klein", "praxis.weber"),
             ("apotheke.sonne", "dr.meyer"), ("dr.meyer", "apotheke.sonne"),
             ("praxis.weber", "zahnarzt.klein"), ("apotheke.sonne", "dr.meyer")]  # fmt: skip
    for s, r in pairs:
        senders.add(s, r, (200_000, 3_000_000))
    senders.start()
    _wait(senders.all_sending, SENDING_TIMEOUT, f"a 250 for every sender ({senders.errors})")
    time.sleep(rng.uniform(0.0, 0.8))
    in_flight = senders.in_flight()
    rig.kill9()
    senders.join()
    result.problems += senders.errors
    result.note = f"{in_flight} in flight at the kill"
    restart_after_kill(rig, result)
    settle_and_account(rig, senders.sent, result)


def kill_data(rig: Rig, rng: random.Random, result: TrialResult) -> None:
    """The client kills the appliance itself after a random part of a message's DATA."""
    relayed = Senders(rig, f"dat{result.trial}r", rng)
    relayed.add("praxis.weber", "apotheke.sonne", (100_000, 1_000_000))
    relayed.start()
    sender, to = rig.participant("zahnarzt.klein"), rig.participant("praxis.weber")
    sent: dict[str, Sent] = {}
    victim = rng.randint(2, 3)  # the k-th message on the connection: at least one 250 before
    host, port = rig.app.fd_of(sender, "smtp")
    with smtplib.SMTP_SSL(host, port, context=rig.app.ssl_context(), timeout=20) as smtp:
        smtp.login(sender["address"], sender["password"])
        for n in range(1, victim + 1):
            mid = f"dat{result.trial}-{n}@crash"
            data = mail(
                sender["address"], to["address"], mid, body(rng.randint(2_000_000, 5_000_000))
            )
            sent[mid] = Sent(sender["address"], to["address"], data)
            if n < victim:
                smtp.sendmail(sender["address"], [to["address"]], data)
                sent[mid].acked = True
                continue
            smtp.mail(sender["address"])
            smtp.rcpt(to["address"])
            code, _ = smtp.docmd("DATA")
            if code != 354:
                raise AssertionError(f"DATA answered {code}")
            wire = _stuffed(data)
            cut = int(len(wire) * rng.uniform(0.05, 0.95))
            for i in range(0, cut, 256 * 1024):
                smtp.send(wire[i : min(cut, i + 256 * 1024)])  # type: ignore[arg-type]
            rig.kill9()
            result.note = f"killed after {cut} of {len(wire)} DATA bytes of message {victim}"
            with suppress(OSError):
                smtp.close()
    relayed.join()
    result.problems += relayed.errors
    restart_after_kill(rig, result)
    arrived = settle_and_account(rig, {**sent, **relayed.sent}, result)
    victim_mid = f"dat{result.trial}-{victim}@crash"
    if arrived.get(victim_mid):
        # it never got its final dot: not even a complete-looking copy may be there
        result.problems.append(f"<{victim_mid}>, cut in DATA, is in the mailbox")


def kill_queued(rig: Rig, rng: random.Random, result: TrialResult) -> None:
    """Acknowledged and queued for fd2, not relayed: fd1 runs alone with fd2 unreachable;
    after the kill both run again and the queue must go to fd2, nothing to the senders."""
    rig.stop()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: every attempt is refused (temporary)
    rig.set_config(
        {
            "fachdienst": {
                "domains": [{"domain": FD1, "smtp_port": 0, "pop3_port": 0, "https_port": 0}],
                "relay_map": {FD2: f"127.0.0.1:{dead_port}"},
            }
        }
    )
    rig.restart()
    senders = Senders(rig, f"que{result.trial}", rng)
    senders.add("praxis.weber", "apotheke.sonne", (50_000, 1_000_000), count=rng.randint(2, 4))
    senders.add("zahnarzt.klein", "dr.meyer", (50_000, 1_000_000), count=rng.randint(2, 4))
    senders.start()
    senders.join(60)
    result.problems += senders.errors
    time.sleep(rng.uniform(0.0, 1.5))  # some entries tried and rescheduled, some due
    queued, _ = rig.relay_queue()
    result.note = f"{queued} queued for {FD2} at the kill"
    if queued != sum(s.acked for s in senders.sent.values()):
        result.problems.append(f"{queued} queue entries for {len(senders.sent)} messages")
    rig.kill9()
    rig.set_config(None)
    restart_after_kill(rig, result)
    settle_and_account(rig, senders.sent, result)


def kill_relay(rig: Rig, rng: random.Random, result: TrialResult) -> None:
    """Three clients send to the other Fachdienst; the kill comes while the relay works."""
    senders = Senders(rig, f"rel{result.trial}", rng)
    senders.add("praxis.weber", "apotheke.sonne", (200_000, 2_000_000))
    senders.add("zahnarzt.klein", "dr.meyer", (200_000, 2_000_000))
    senders.add("apotheke.sonne", "zahnarzt.klein", (200_000, 2_000_000))
    log_before = rig.app.stderr().count(" delivered, ")
    senders.start()
    _wait(
        lambda: rig.app.stderr().count(" delivered, ") > log_before and senders.all_sending(),
        SENDING_TIMEOUT,
        "the first relayed message",
    )
    time.sleep(rng.uniform(0.0, 0.5))
    # then the first moment with entries in a queue: they are being relayed (or about to be)
    deadline = time.monotonic() + 2.0
    while (queued := rig.relay_queue()[0]) == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    rig.kill9()
    senders.join()
    result.problems += senders.errors
    result.note = f"{queued} in the relay queues at the kill"
    restart_after_kill(rig, result)
    settle_and_account(rig, senders.sent, result)


def kill_dele(rig: Rig, rng: random.Random, result: TrialResult) -> None:
    """A POP3 client retrieves and DELEs its messages; the kill comes after some DELEs (no
    QUIT) or just after the QUIT, while the deletion may be committing."""
    senders = Senders(rig, f"del{result.trial}", rng)
    senders.add("praxis.weber", "zahnarzt.klein", (20_000, 400_000), count=rng.randint(4, 10))
    senders.start()
    senders.join(60)
    result.problems += senders.errors
    who = rig.participant("zahnarzt.klein")
    host, port = rig.app.fd_of(who, "pop3")
    pop = poplib.POP3_SSL(host, port, context=rig.app.ssl_context(), timeout=30)
    pop.user(who["address"])
    pop.pass_(who["password"])
    fetched = _retrieve_all(pop, delete=False)
    before_quit = rng.random() < 1 / 3
    deleted = rng.randint(0, len(fetched)) if before_quit else len(fetched)
    for number in range(1, deleted + 1):
        pop.dele(number)
    confirmed = False
    if before_quit:
        rig.kill9()
        result.note = f"killed after {deleted} of {len(fetched)} DELE, before QUIT"
    else:
        # the client reads the answer as soon as it comes; the kill may come first
        answers: list[bytes] = []

        def read_answer() -> None:
            with suppress(poplib.error_proto, OSError):
                answers.append(pop._getresp())  # type: ignore[attr-defined]

        reader = threading.Thread(target=read_answer, daemon=True)
        pop._putcmd("QUIT")  # type: ignore[attr-defined]
        reader.start()
        delay = rng.uniform(0.0, 0.05)
        time.sleep(delay)
        rig.kill9()
        reader.join(30)
        confirmed = bool(answers) and answers[0].startswith(b"+OK")
        result.note = (
            f"killed {delay * 1000:.0f} ms after QUIT of {len(fetched)} DELE "
            f"({'+OK seen' if confirmed else 'no answer'})"
        )
    pop.close()
    restart_after_kill(rig, result)
    with _pop3(rig.app, who) as again:
        remaining = _retrieve_all(again, delete=False)
    uids = {uid for uid, _ in fetched}
    content = dict(fetched)
    left = {uid for uid, _ in remaining}
    if not left <= uids:
        result.problems.append(f"new messages after the restart: {sorted(left - uids)}")
    if confirmed and left:
        result.problems.append(f"QUIT was answered +OK, yet {len(left)} messages are still there")
    if left and deleted and left != uids:
        result.problems.append(f"{len(left)} of {len(uids)} left: a QUIT deleted only part")
    if before_quit and left != uids:
        result.problems.append("messages gone although QUIT never came")
    mids = [message_id_of(data) for _, data in remaining]
    if len(set(mids)) != len(mids):
        result.problems.append(f"a message twice in the mailbox: {mids}")
    for uid, data in remaining:
        if uid in content and data != content[uid]:
            result.truncated += 1
            result.problems.append(f"{uid} differs from what RETR gave before the kill")
    # the client retrieved every message before the kill (a real client remembers the UIDLs):
    # each acknowledged one must have come exactly once and complete
    seen: dict[str, int] = {}
    for _, data in fetched:
        mid = message_id_of(data) or "?"
        seen[mid] = seen.get(mid, 0) + 1
        s = senders.sent.get(mid)
        if s is None:
            result.problems.append(f"an unexpected message in the mailbox: <{mid}>")
            continue
        try:
            trace_prefix_of(data, s.data, s.sender)
        except AssertionError as exc:
            result.truncated += 1
            result.problems.append(f"<{mid}> not complete: {str(exc)[:300]}")
    for mid, sent in senders.sent.items():
        if not sent.acked:
            continue
        result.acknowledged += 1
        count = seen.get(mid, 0)
        if count == 1:
            result.delivered_once += 1
        elif count == 0:
            result.lost += 1
            result.problems.append(f"<{mid}> acknowledged but not in the mailbox")
        else:
            result.duplicated += 1
            result.problems.append(f"<{mid}> {count} times in the mailbox")
    with _pop3(rig.app, who) as again:
        _retrieve_all(again, delete=True)
    # then every mailbox must be empty, the queues too, and no blob file left
    rest = TrialResult(result.point, result.trial, result.seed)
    settle_and_account(rig, {}, rest)
    result.bounced += rest.bounced
    result.problems += rest.problems


POINTS: dict[str, Callable[[Rig, random.Random, TrialResult], None]] = {
    "parallel": kill_parallel,
    "data": kill_data,
    "queued": kill_queued,
    "relay": kill_relay,
    "dele": kill_dele,
}


# --- running -----------------------------------------------------------------------------------


def run_point(
    point: str,
    trials: int,
    *,
    template: Path,
    work: Path,
    seed: int,
    first_trial: int = 1,
    report: Callable[[TrialResult], None] | None = None,
) -> list[TrialResult]:
    """``trials`` trials of one kill point on copies of ``template`` under ``work``, one data
    dir per TRIALS_PER_DATA_DIR. The first failed trial ends the point: its data dir and logs
    stay under ``work`` for the post-mortem (the file KEEP says why)."""
    results: list[TrialResult] = []
    rng = random.Random(f"{seed}-{point}")
    done = 0
    while done < trials:
        chunk = min(TRIALS_PER_DATA_DIR, trials - done)
        root = Path(tempfile.mkdtemp(prefix=f"{point}-", dir=work))
        data_dir = root / "kim-data"
        shutil.copytree(template, data_dir)
        (root / "logs").mkdir()
        launcher = Launcher(root / "logs")
        try:
            rig = Rig(data_dir, launcher)
            for _ in range(chunk):
                trial_seed = rng.randrange(1 << 32)
                result = TrialResult(point, first_trial + done, trial_seed)
                begin = time.monotonic()
                try:
                    POINTS[point](rig, random.Random(trial_seed), result)
                except Exception as exc:  # the trial's own failure is its result too
                    result.problems.append(f"the trial could not run: {exc!r}")
                result.seconds = time.monotonic() - begin
                results.append(result)
                if report is not None:
                    report(result)
                done += 1
                if not result.ok:
                    (root / "KEEP").write_text(result.line(), "utf-8")
                    break
            else:
                rig.stop()
                shutil.rmtree(root, ignore_errors=True)
                continue
            break  # a failed trial keeps its data dir and logs for the post-mortem
        finally:
            launcher.close()
    return results


def summary(results: list[TrialResult]) -> dict[str, Any]:
    keys = ("acknowledged", "delivered_once", "lost", "duplicated", "bounced", "truncated",
            "unacknowledged_arrived", "repeats_recognised")  # fmt: skip
    total = {k: sum(getattr(r, k) for r in results) for k in keys}
    total["trials"] = len(results)
    total["failed_trials"] = sum(not r.ok for r in results)
    total["by_point"] = {
        p: {k: sum(getattr(r, k) for r in results if r.point == p) for k in ("acknowledged",)}
        | {"trials": sum(r.point == p for r in results)}
        for p in KILL_POINTS
        if any(r.point == p for r in results)
    }
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.crash_campaign", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--trials", type=int, default=len(KILL_POINTS), help="total trials")
    parser.add_argument(
        "--points", default=",".join(KILL_POINTS), help="comma-separated kill points"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write every result here")
    parser.add_argument("--work", type=Path, default=None, help="where the data dirs go")
    args = parser.parse_args(argv)
    points = [p for p in args.points.split(",") if p]
    unknown = set(points) - set(KILL_POINTS)
    if unknown or args.trials < 1:
        parser.error(f"unknown kill points {sorted(unknown)}; known: {', '.join(KILL_POINTS)}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    work = args.work or Path(tempfile.mkdtemp(prefix="kim-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"crash campaign: {args.trials} trials over {', '.join(points)}, seed {seed}, in {work}")
    template = make_template(work / "template")
    results: list[TrialResult] = []
    begin = time.monotonic()
    share = [
        args.trials // len(points) + (i < args.trials % len(points)) for i in range(len(points))
    ]
    for point, trials in zip(points, share, strict=True):
        if trials:
            results += run_point(
                point, trials, template=template, work=work, seed=seed,
                first_trial=len(results) + 1, report=lambda r: print(r.line(), flush=True),
            )  # fmt: skip
    total = summary(results)
    total["seconds"] = round(time.monotonic() - begin, 1)
    total["seed"] = seed
    print("summary: " + json.dumps(total))
    if args.json is not None:
        args.json.write_text(
            json.dumps({"summary": total, "trials": [asdict(r) for r in results]}, indent=2) + "\n",
            "utf-8",
        )
    return 0 if total["failed_trials"] == 0 and len(results) == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
