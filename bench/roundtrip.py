"""Benchmark: KIM messages end to end through the Clientmodul, against `openssl cms` (issues 7, 13).

The appliance runs as a subprocess (``python -m kim_appliance.cli run --ephemeral-ports``,
started in the bench's temporary directory, so that the *installed* package with its built
extension runs even when the bench is started from the repository root after a plain
``pip install .``) on a fresh data dir: the demo setup (RSA, ECC, RSA+ECC SMC-Bs and an HBA
over both Fachdienste) plus six bench-only SMC-B participants (RSA, ECC, RSA+ECC; a second HBA
would need a second practice card, which the Clientmodul cannot tell apart), so that ten
senders and ten receivers each have their own mailbox, card and directory entry. One run:

1. **send**: ten threads play the PVS; each logs in to the Clientmodul's SMTPS with its demo
   username and sends its share of ``--messages`` client mails of ``--size-mb`` MiB (a realistic
   Arztbrief: multipart/mixed, a text/plain letter and a base64 ``application/pdf`` attachment of
   random bytes) to the next participant (same or other Fachdienst); the Clientmodul signs,
   encrypts and hands each one to the Fachdienst, which stores or relays it;
2. **relay**: the bench waits until every mailbox holds its messages, reading the Fachdienste's
   SQLite stores read-only (polling by POP3 would load the appliance with logins);
3. **receive**: one thread per recipient logs in to the Clientmodul's POP3S, UIDL, then RETR
   and DELE of each message; the Clientmodul decrypts and verifies on RETR. Afterwards every
   attachment is decoded and compared with what was sent (SHA-256) and the status header
   ``X-KIM-IntegrityCheckResult: 01`` is checked; ``verified`` counts the messages that passed.
   ``total_s`` is send + relay + receive: the wall time from the first SMTP connect to the last
   RETR;
4. **baseline**: the system's ``openssl cms`` doing only the crypto of the same messages: for
   each one ``openssl cms -sign | openssl cms -encrypt -aes-256-gcm`` (the sender's OSIG key,
   ECC where the card has it as the Clientmodul prefers; every ENC certificate of the recipient
   and the sender), then ``openssl cms -decrypt | openssl cms -verify`` with the recipient's
   exported key. ``baseline.openssl_crypto_s`` runs as many such pipelines at a time as the
   machine has cores (the appliance uses every core too, issue 13); the one-at-a-time figure
   is ``baseline_detail.openssl_one_pipeline_s``. The ratio target uses the parallel figure.

Above the KAS threshold (15 MiB unless the Fachdienst's AccountLimit says otherwise) a client
mail goes through the sender's KAS: the Clientmodul encrypts it, uploads it over HTTPS and sends
a small x-kas KIM message. ``--direct`` sets ``[fachdienst] kas_threshold_bytes`` above the
message size (served as AccountLimit ``kasMailSizeThreshold``), so that every message goes as
one CMS message through SMTP, the store and POP3, i.e. through the Rust stream end to end.

The bench's own client does no per-line Python: a message is dot-stuffed by the native
:class:`DotStuffer` and written in 1 MiB ``sendall()`` calls on a plain ``ssl`` socket; a RETR
is read with 1 MiB ``recv_into()`` calls and its end found by a byte search for CRLF.CRLF over
only the new bytes, then unstuffed natively. CPU seconds of the appliance (``/proc/PID/stat``)
and of this process are reported, so a reader sees that the client was not the bottleneck;
``appliance_peak_rss_mb`` is the appliance's VmHWM over the whole run.

``--small`` sends 1,000 messages of 20 KiB instead (round trips per second; the openssl
baseline then runs on 20 of them and is scaled to all). ``--konnektor soap`` runs the same with
the Clientmodul talking SOAP and LDAPS to the appliance's own Konnektor and VZD listeners
(``[clientmodul] konnektor = directory = "loopback"``, issue 14): the cost of the network
mode beside the in-process figures (``--konnektor in-process``, the default);
``--konnektor soap-process`` puts the Konnektor and the VZD in a second process (``run
--components konnektor,directory``) whose peak RSS and CPU are reported apart. Over SOAP the
Konnektor signs and decrypts the small x-kas message of a large mail, or the whole message with
``--direct`` or ``--size-mb`` below 15. Targets (issue 13): ``total_s`` <= 1.3 x
``openssl_crypto_s`` (parallel), peak RSS <= 200 MB, >= 150 small round trips/s.
How each figure is measured, and the figures before and after issue 13: bench/README.md.

This is a benchmark only: it never edits the package and touches no data dir but its own
temporary one. Usage (after ``pip install .``, from anywhere):

    python bench/roundtrip.py [--messages 10] [--size-mb 25] [--small] [--direct] [--json PATH]
                              [--konnektor in-process|soap|soap-process]
                              [--profile DIR]  (py-spy of the appliance, pip install py-spy)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kim_appliance._native import Base64Encoder, DotStuffer, DotUnstuffer

MIB: Final = 1024 * 1024
WRITE_SIZE: Final = MIB
READ_SIZE: Final = MIB
TERMINATOR: Final = b"\r\n.\r\n"
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
#: the most sender/receiver pairs (each its own mailbox): the four demo ones + six bench ones
MAX_PARTICIPANTS: Final = 10
SMALL_MESSAGES: Final = 1000
SMALL_SIZE_MB: Final = 20 / 1024
#: --small: the openssl baseline runs on this many messages and is scaled to all of them
SMALL_BASELINE_SAMPLE: Final = 20
#: the Clientmodul's KAS threshold unless AccountLimit names another (clientmodul/context.py)
KAS_DEFAULT_THRESHOLD: Final = 15 * MIB
WAIT_FOR_MAIL_SECONDS: Final = 600.0
TARGET_RATIO: Final = 1.3
TARGET_RSS_MB: Final = 200.0
TARGET_ROUND_TRIPS_S: Final = 150.0
#: openssl pipelines at a time in the baseline: every core, as the appliance uses every core
BASELINE_PIPELINES: Final = os.cpu_count() or 1
SOCKET_TIMEOUT: Final = 600.0


# --- the bytes on the wire: stuffing, terminator search, unstuffing ---------------------------


def stuffed_pieces(message: bytes, size: int = WRITE_SIZE) -> Iterator[bytes]:
    """``message`` as the body of SMTP DATA, terminator included, in pieces of about ``size``
    bytes: every line-leading '.' doubled by the native stuffer (a '.' that ends one piece and a
    line start in the next are handled by the stuffer's state, not here)."""
    stuffer = DotStuffer()
    view = memoryview(message)
    for offset in range(0, len(view), size):
        piece = stuffer.update(bytes(view[offset : offset + size]))
        if piece:
            yield piece
    yield stuffer.finalize()


def find_terminator(buffer: bytes | bytearray, start: int) -> int:
    """The offset of CRLF.CRLF in ``buffer`` at or after ``start`` (-1 if absent). ``buffer``
    must begin with the CRLF that ended the status line, so an empty body (".\\r\\n" right after
    it) is found too; ``start`` lets a reader search only the new bytes (minus 4)."""
    return buffer.find(TERMINATOR, max(0, start))


def unstuff(body: bytes | bytearray | memoryview) -> bytes:
    """A multi-line POP3 body (after the status line, up to and including CRLF.CRLF) without
    its dot-stuffing and terminator, by the native unstuffer."""
    unstuffer = DotUnstuffer()
    out = unstuffer.feed(bytes(body))
    if not unstuffer.done:
        raise ValueError("the multi-line body does not end with CRLF.CRLF")
    return out


# --- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientMail:
    """One client mail as the PVS sends it, and what the receiver must find in it."""

    index: int
    sender: int
    recipient: int
    data: bytes
    filename: str
    attachment_sha256: bytes


LETTER: Final = (
    "Sehr geehrte Frau Kollegin, sehr geehrter Herr Kollege,\r\n"
    "\r\n"
    "wir berichten über Ihre Patientin, die sich vom 02.11. bis 09.11.2026 in unserer\r\n"
    "stationären Behandlung befand. Diagnosen: Z. n. Cholezystektomie; arterielle Hypertonie.\r\n"
    ".Befund und Verlauf siehe Anlage (diese Zeile beginnt mit einem Punkt).\r\n"
    "..\r\n"
    ".\r\n"
    "Mit freundlichen kollegialen Grüßen\r\n"
)


def make_client_mail(
    index: int, sender: int, recipient: int, addresses: list[str], size: int
) -> ClientMail:
    """A multipart/mixed Arztbrief of about ``size`` bytes from ``addresses[sender]`` to
    ``addresses[recipient]``: the letter (with lines starting with '.', so stuffing matters)
    and a PDF of random bytes as base64 lines of 76 characters."""
    boundary = f"=_bench_{index:04d}_{secrets.token_hex(6)}"
    filename = f"arztbrief-{index:04d}.pdf"
    date = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    head = (
        f"From: {addresses[sender]}\r\nTo: {addresses[recipient]}\r\n"
        f"Subject: Arztbrief {index:04d}\r\nDate: {date}\r\n"
        f"Message-ID: <bench-{index:04d}-{secrets.token_hex(4)}@bench.kim>\r\n"
        f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        "This is a multi-part message in MIME format.\r\n"
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{LETTER}"
        f'--{boundary}\r\nContent-Type: application/pdf; name="{filename}"\r\n'
        f'Content-Disposition: attachment; filename="{filename}"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode()
    tail = f"--{boundary}--\r\n".encode()
    # base64 of n bytes in 76-column CRLF lines takes n * 4/3 * 78/76 bytes
    raw_size = max(1024, int((size - len(head) - len(tail)) * 3 / 4 * 76 / 78))
    pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + os.urandom(raw_size - 15)
    encoder = Base64Encoder(76)
    encoded = encoder.update(pdf) + encoder.finalize()
    data = head + encoded + tail
    return ClientMail(index, sender, recipient, data, filename, hashlib.sha256(pdf).digest())


def attachment_of(mail: bytes, filename: str) -> bytes:
    """The decoded attachment named ``filename`` in a delivered mail (found by a byte search;
    its part ends at the next boundary line). Raises ValueError naming what was missing."""
    marker = f'filename="{filename}"'.encode()
    at = mail.find(marker)
    if at < 0:
        raise ValueError(f"no part with {marker.decode()} in the delivered mail")
    start = mail.find(b"\r\n\r\n", at)
    if start < 0:
        raise ValueError(f"the header of {filename} does not end")
    start += 4
    end = mail.find(b"\r\n--", start)
    if end < 0:
        raise ValueError(f"the part {filename} has no closing boundary")
    return binascii.a2b_base64(mail[start:end])


# --- a minimal client with big writes and reads ------------------------------------------------


class Conn:
    """An implicit-TLS connection; reply lines parsed only for commands, bodies in bulk."""

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, name: str) -> None:
        raw = socket.create_connection(address, timeout=SOCKET_TIMEOUT)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=name)
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self, expect: str) -> bytes:
        """One SMTP reply (all its lines); its code must start with ``expect``."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line[3:4] != b"-":
                break
        if not line.startswith(expect.encode()):
            raise RuntimeError(f"expected {expect}xx, got {b' | '.join(lines)!r}")
        return b"\r\n".join(lines)

    def ok(self) -> bytes:
        line = self.line()
        if not line.startswith(b"+OK"):
            raise RuntimeError(f"expected +OK, got {line!r}")
        return line

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_multiline(self) -> bytes:
        """The body of a multi-line POP3 answer (after its status line), unstuffed. Received in
        1 MiB ``recv_into`` calls into one buffer; only the new bytes are searched."""
        acc = bytearray(b"\r\n")  # the CRLF that ended the status line begins the search
        acc += self.buf
        self.buf = b""
        chunk = bytearray(READ_SIZE)
        view = memoryview(chunk)
        start = 0
        while True:
            hit = find_terminator(acc, start)
            if hit >= 0:
                end = hit + len(TERMINATOR)
                self.buf = bytes(acc[end:])
                del acc[end:]
                return unstuff(memoryview(acc)[2:])
            start = len(acc) - 4
            n = self.sock.recv_into(chunk)
            if not n:
                raise ConnectionError("the server closed the connection before CRLF.CRLF")
            acc += view[:n]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def plain_token(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


@dataclass
class Progress:
    """Counters the worker threads bump and the display thread reads."""

    phase: str = "starting"
    total_messages: int = 0
    messages: int = 0
    total_bytes: int = 0
    done_bytes: int = 0
    started: float = field(default_factory=time.perf_counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self, phase: str, messages: int, total_bytes: int) -> None:
        with self.lock:
            self.phase, self.total_messages, self.messages = phase, messages, 0
            self.total_bytes, self.done_bytes = total_bytes, 0
            self.started = time.perf_counter()

    def add(self, messages: int = 0, nbytes: int = 0) -> None:
        with self.lock:
            self.messages += messages
            self.done_bytes += nbytes

    def line(self) -> str:
        with self.lock:
            elapsed = time.perf_counter() - self.started
            mb = self.done_bytes / MIB
            total = self.total_bytes / MIB
            return (
                f"{self.phase:<8} {self.messages:>5}/{self.total_messages} messages "
                f"{mb:>8.1f}/{total:.1f} MiB {elapsed:>7.1f} s "
                f"{mb / elapsed if elapsed > 0 else 0.0:>7.1f} MiB/s"
            )


@contextlib.contextmanager
def progress_display(progress: Progress, interval: float = 0.5) -> Iterator[None]:
    """A status line on stderr while the body runs: rewritten in place on a terminal, one line
    every few seconds otherwise (a log file stays readable)."""
    stop = threading.Event()
    tty = sys.stderr.isatty()

    def show() -> None:
        last = 0.0
        while not stop.wait(interval):
            if tty:
                sys.stderr.write("\r" + progress.line() + "\x1b[K")
                sys.stderr.flush()
            elif time.monotonic() - last >= 5.0:
                last = time.monotonic()
                print(progress.line(), file=sys.stderr, flush=True)

    thread = threading.Thread(target=show, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        end = "\r" if tty else ""
        print(end + progress.line() + (" \x1b[K" if tty else ""), file=sys.stderr, flush=True)


def smtp_session(
    address: tuple[str, int],
    context: ssl.SSLContext,
    participant: dict[str, Any],
    mails: list[ClientMail],
    progress: Progress,
) -> None:
    """One PVS session: EHLO, AUTH PLAIN with the demo username, then every mail in turn."""
    conn = Conn(address, context, "localhost")
    try:
        conn.reply("220")
        conn.send(b"EHLO pvs.bench\r\n")
        ehlo = conn.reply("250")
        pipelining = b"PIPELINING" in ehlo.upper()
        token = plain_token(participant["smtp_username"], participant["password"])
        conn.send(f"AUTH PLAIN {token}\r\n".encode())
        conn.reply("235")
        sender = participant["address"]
        for mail in mails:
            recipient = mail.data.split(b"\r\nTo: ", 1)[1].split(b"\r\n", 1)[0].decode()
            commands = [f"MAIL FROM:<{sender}>\r\n", f"RCPT TO:<{recipient}>\r\n", "DATA\r\n"]
            if pipelining:
                conn.send("".join(commands).encode())
                for expect in ("250", "250", "354"):
                    conn.reply(expect)
            else:
                for command, expect in zip(commands, ("250", "250", "354"), strict=True):
                    conn.send(command.encode())
                    conn.reply(expect)
            for piece in stuffed_pieces(mail.data):
                conn.send(piece)
                progress.add(nbytes=len(piece))
            conn.reply("250")
            progress.add(messages=1)
        conn.send(b"QUIT\r\n")
        conn.reply("221")
    finally:
        conn.close()


def uidl(conn: Conn) -> list[str]:
    conn.send(b"UIDL\r\n")
    conn.ok()
    lines = conn.read_multiline().decode("ascii", "replace").split("\r\n")
    return [line for line in lines if line]


def pop3_session(
    address: tuple[str, int],
    context: ssl.SSLContext,
    participant: dict[str, Any],
    expected: int,
    progress: Progress,
) -> list[bytes]:
    """One PVS session: USER/PASS with the demo username, UIDL, then RETR and DELE of every
    message listed (there must be ``expected``), QUIT."""
    conn = Conn(address, context, "localhost")
    try:
        conn.ok()
        conn.send(f"USER {participant['pop3_username']}\r\n".encode())
        conn.ok()
        conn.send(f"PASS {participant['password']}\r\n".encode())
        conn.ok()
        listed = uidl(conn)
        if len(listed) != expected:
            raise RuntimeError(
                f"{participant['address']}: UIDL lists {len(listed)} messages, not {expected}"
            )
        mails = []
        for row in listed:
            number = row.split()[0]
            conn.send(f"RETR {number}\r\n".encode())
            conn.ok()
            mail = conn.read_multiline()
            conn.send(f"DELE {number}\r\n".encode())
            conn.ok()
            mails.append(mail)
            progress.add(messages=1, nbytes=len(mail))
        conn.send(b"QUIT\r\n")
        conn.ok()
        return mails
    finally:
        conn.close()


def stored_counts(data_dir: Path) -> dict[str, int]:
    """Messages per mailbox in the appliance's store, read from its SQLite database (read-only,
    no login: waiting for the relay must not load the appliance with scrypt)."""
    counts: dict[str, int] = {}
    for database in sorted((data_dir / "store").glob("kim.sqlite3")):
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT a.address, count(*) FROM messages m JOIN accounts a "
                "ON a.key = m.mailbox GROUP BY a.address"
            ).fetchall()
        for address, count in rows:
            counts[str(address).lower()] = counts.get(str(address).lower(), 0) + int(count)
    return counts


def wait_for_delivery(data_dir: Path, expected: dict[str, int], progress: Progress) -> float:
    """Seconds until every mailbox holds its expected messages (the relay between the
    Fachdienste is asynchronous); fails after WAIT_FOR_MAIL_SECONDS naming what is missing."""
    began = time.perf_counter()
    while True:
        counts = stored_counts(data_dir)
        missing = {a: n - counts.get(a, 0) for a, n in expected.items() if counts.get(a, 0) < n}
        with progress.lock:
            progress.messages = sum(expected.values()) - sum(missing.values())
        if not missing:
            return time.perf_counter() - began
        if time.perf_counter() - began > WAIT_FOR_MAIL_SECONDS:
            raise SystemExit(f"not delivered after {WAIT_FOR_MAIL_SECONDS:.0f} s: {missing}")
        time.sleep(0.05)


# --- running in parallel, measuring ------------------------------------------------------------


@dataclass
class Timed:
    seconds: float
    results: list[Any]
    appliance_cpu: float
    client_cpu: float


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def vm_status_mb(pid: int, key: str) -> float:
    """A ``VmXXX`` line of /proc/PID/status in MiB (0 if absent)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def parallel(jobs: list[Callable[[], Any]], server_pid: int) -> Timed:
    """Run ``jobs`` in threads released together; wall time from the start to the last end.
    The first failure ends the bench (after every thread has ended), naming the job."""
    barrier = threading.Barrier(len(jobs) + 1)
    results: list[Any] = [None] * len(jobs)
    errors: list[tuple[int, BaseException]] = []

    def run(i: int, job: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[i] = job()
        except BaseException as exc:  # reported below, after every thread ended
            errors.append((i, exc))

    threads = [threading.Thread(target=run, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    cpu0, own0 = process_cpu(server_pid), own_cpu()
    t0 = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    cpu1, own1 = process_cpu(server_pid), own_cpu()
    if errors:
        i, exc = errors[0]
        raise SystemExit(f"{len(errors)} of {len(jobs)} sessions failed; session {i}: {exc!r}")
    return Timed(seconds, results, cpu1 - cpu0, own1 - own0)


# --- the data dir: demo setup plus bench participants ------------------------------------------


def prepare(data_dir: Path, participants: int) -> None:
    """The demo setup, then bench-only participants up to ``participants`` (cards, keys,
    directory entries and mailboxes all derive from demo.json), then the rest of the data dir."""
    import trio

    from kim_appliance import demo
    from kim_appliance.appliance import prepare_data_dir
    from kim_appliance.pki import Algorithm, TestPki
    from kim_appliance.pki import oids as pki_oids

    info = demo.initialise(data_dir)
    extra = participants - len(info["participants"])
    if extra > 0:
        pki = TestPki.load(data_dir / "pki")
        # SMC-Bs only: the Clientmodul finds an HBA holder's practice card as the one
        # unpersonalised SMC-B of the Mandant (clientmodul/cards.py), so one HBA (the demo's)
        kinds = [(Algorithm.RSA,), (Algorithm.ECC,), (Algorithm.RSA, Algorithm.ECC)]
        domains = [demo.DOMAINS[0], demo.DOMAINS[0], demo.DOMAINS[1], demo.DOMAINS[1]]
        for k in range(extra):
            number = 200001 + k
            participant = demo.DemoParticipant(
                local_part=f"bench.{k + 1:02d}",
                domain=domains[k % len(domains)],
                display_name=f"Benchpraxis {k + 1:02d}",
                card_type="SMC-B",
                keys=kinds[k % len(kinds)],
                telematik_id=f"1-SMC-B-Testkarte-883110000{number}",
                profession_oid=pki_oids.PROFESSION_PRAXIS_ARZT,
                iccsn=f"80276883110000{number}",
            )
            card_dir = data_dir / "cards" / participant.local_part
            info["participants"].append(demo.issue_participant(pki, participant, card_dir))
        demo.write_json_atomically(data_dir / "demo.json", info)
        # the Konnektor's cards: konnektor.json as init wrote it, plus the bench cards
        demo.konnektor_config(data_dir, info["participants"]).save(data_dir / "konnektor.json")
    trio.run(prepare_data_dir, data_dir)


def wait_for(path: Path, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 180
    while not path.exists():
        if proc.poll() is not None:
            tail = log.read_text("utf-8", "replace")[-1500:] if log.exists() else ""
            raise SystemExit(
                f"{what} exited with {proc.returncode} before it was ready; its log ends:\n{tail}"
            )
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not ready after 180 s")
        time.sleep(0.05)


def start_appliance(data_dir: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "kim_appliance.cli", "run", "--data-dir", str(data_dir)]
    command += ["--ephemeral-ports", "--log-level", "WARNING", *extra]
    with log.open("wb") as stderr:
        # cwd: not the repository root, whose source tree (no built extension) would shadow
        # the installed package for ``python -m``
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stderr=stderr, cwd=data_dir.parent
        )
    wait_for(data_dir / "endpoints.json", proc, "the appliance", log)
    return proc


def start_partner(data_dir: Path, directory: Path) -> subprocess.Popen[bytes]:
    """``--konnektor soap-process``: a copy of the data dir runs the Konnektor and the VZD in a
    second ``kim-appliance run``; ``data_dir``'s config points its Clientmodul there."""
    import shutil

    from kim_appliance.testing import write_config

    partner_dir = directory / "konnektor-vzd"
    shutil.copytree(data_dir, partner_dir)
    proc = start_appliance(partner_dir, directory / "konnektor.log", "--components",
                           "konnektor,directory")  # fmt: skip
    endpoints = json.loads((partner_dir / "endpoints.json").read_text("utf-8"))
    write_config(data_dir, {"clientmodul": {
        "konnektor": endpoints["konnektor"]["sds"],
        "directory": f"ldaps://{endpoints['directory']['ldaps']}",
        "konnektor_ca": endpoints["tls_ca"],
        "directory_ca": endpoints["tls_ca"],
    }})  # fmt: skip
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_py_spy(pid: int, directory: Path) -> subprocess.Popen[bytes]:
    """``py-spy record`` of the appliance (every thread, sampled without pausing it) into
    ``directory/appliance.raw`` as collapsed stacks; stopped with SIGINT by stop_py_spy."""
    directory.mkdir(parents=True, exist_ok=True)
    output = str(directory / "appliance.raw")
    beside = Path(sys.executable).with_name("py-spy")  # the venv's, when it is not on PATH
    command = [
        str(beside) if beside.exists() else "py-spy",
        "record",
        "--pid",
        str(pid),
        "--rate",
        "200",
        "--threads",
        "--nonblocking",
        "--format",
        "raw",
        "-o",
        output,
    ]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the first message
    return spy


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


def summarise_profile(raw: Path, top: int = 25) -> str:
    """The top functions of a collapsed-stack profile: samples per thread, then self and
    inclusive samples per function (file:line dropped so a function counts once)."""
    threads: dict[str, int] = {}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text("utf-8", "replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        thread = frames[0]
        threads[thread] = threads.get(thread, 0) + count
        names = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in frames[1:]]
        if names:
            own[names[-1]] = own.get(names[-1], 0) + count
        for name in set(names):
            inclusive[name] = inclusive.get(name, 0) + count
    out = [f"{total} samples (200/s, active threads only)", "per thread:"]
    out += [f"  {n:>7} {t}" for t, n in sorted(threads.items(), key=lambda x: -x[1])[:8]]
    out.append("self:")
    out += [f"  {n:>7} {f}" for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    out.append("inclusive:")
    out += [f"  {n:>7} {f}" for f, n in sorted(inclusive.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(out)


def address_of(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


# --- the openssl baseline ------------------------------------------------------------------------


def _pick_key(export: dict[str, list[str]], kind: str, prefer_ecc: bool) -> tuple[str, str]:
    """(cert, key) of ``kind`` (enc/osig): the ECC one when ``prefer_ecc`` and the card has one
    (the Clientmodul's default prefer_ecc = true), else the first."""
    certs, keys = export[f"{kind}_cert"], export[f"{kind}_key"]
    ecc = [i for i, c in enumerate(certs) if "-ecc" in Path(c).name]
    i = ecc[0] if prefer_ecc and ecc else 0
    return certs[i], keys[i]


def _recip_args(cert: str) -> str:
    if "-ecc" in Path(cert).name:
        return f"-recip {cert} -keyopt ecdh_kdf_md:sha256"
    return (
        f"-recip {cert} -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha256 "
        "-keyopt rsa_mgf1_md:sha256"
    )


def openssl_commands(
    mail: Path, out: Path, sender: dict[str, Any], recipient: dict[str, Any], trust: Path
) -> tuple[str, str]:
    """(sign | encrypt, decrypt | verify) shell pipelines for one message."""
    signer_cert, signer_key = _pick_key(sender["export"], "osig", prefer_ecc=True)
    pss = (
        ""
        if "-ecc" in Path(signer_cert).name
        else ("-keyopt rsa_padding_mode:pss -keyopt rsa_pss_saltlen:32")
    )
    p7m = mail.with_suffix(".p7m")
    certs = list(dict.fromkeys(recipient["export"]["enc_cert"] + sender["export"]["enc_cert"]))
    seal = (
        f"openssl cms -sign -binary -nodetach -md sha256 -in {mail} -signer {signer_cert} "
        f"-inkey {signer_key} {pss} -outform DER | openssl cms -encrypt -binary -aes-256-gcm "
        f"-outform SMIME -out {p7m} " + " ".join(_recip_args(c) for c in certs)
    )
    enc_cert, enc_key = recipient["export"]["enc_cert"][0], recipient["export"]["enc_key"][0]
    unseal = (
        f"openssl cms -decrypt -binary -inform SMIME -in {p7m} -recip {enc_cert} "
        f"-inkey {enc_key} -outform DER | openssl cms -verify -binary -inform DER "
        f"-CAfile {trust} -out {out}"
    )
    return seal, unseal


def _shell(command: str) -> None:
    subprocess.run(
        f"set -o pipefail; {command}",
        shell=True,
        check=True,
        executable="/bin/bash",
        stderr=subprocess.PIPE,
    )


def openssl_baseline(
    mails: list[ClientMail], participants: list[dict[str, Any]], directory: Path, jobs: int
) -> float:
    """Seconds for sign|encrypt then decrypt|verify of every mail, ``jobs`` pipelines at a time;
    each result is checked against the input afterwards (not timed)."""
    trust = directory / "trust.pem"
    commands: list[tuple[str, str]] = []
    for mail in mails:
        path = directory / f"openssl-{mail.index:04d}.eml"
        path.write_bytes(mail.data)
        commands.append(
            openssl_commands(
                path,
                path.with_suffix(".out"),
                participants[mail.sender],
                participants[mail.recipient],
                trust,
            )
        )

    def one(pair: tuple[str, str]) -> None:
        _shell(pair[0])
        _shell(pair[1])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, commands))
    seconds = time.perf_counter() - t0
    for mail in mails:
        path = directory / f"openssl-{mail.index:04d}.eml"
        if path.with_suffix(".out").read_bytes() != mail.data:
            raise SystemExit(f"openssl round trip of message {mail.index} differs from its input")
        for suffix in (".eml", ".p7m", ".out"):
            path.with_suffix(suffix).unlink()
    return seconds


# --- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    messages = SMALL_MESSAGES if args.small and args.messages is None else (args.messages or 10)
    size_mb = SMALL_SIZE_MB if args.small and args.size_mb is None else (args.size_mb or 25.0)
    size = int(size_mb * MIB)
    pairs = max(2, min(messages, MAX_PARTICIPANTS))
    progress = Progress()
    with tempfile.TemporaryDirectory(prefix="kim-bench-rt-") as tmp:
        directory = Path(tmp)
        data_dir = directory / "kim-data"
        print(f"preparing {data_dir} with {pairs} participants ...", file=sys.stderr)
        prepare(data_dir, pairs)
        demo = json.loads((data_dir / "demo.json").read_text("utf-8"))
        participants: list[dict[str, Any]] = demo["participants"][:pairs]
        trust = directory / "trust.pem"
        trust.write_bytes(b"".join(Path(p).read_bytes() for p in demo["trust_anchors"]))
        addresses = [p["address"] for p in participants]
        print(f"making {messages} client mails of {size_mb:g} MiB ...", file=sys.stderr)
        mails = [
            make_client_mail(j, j % pairs, (j % pairs + 1) % pairs, addresses, size)
            for j in range(messages)
        ]
        volume = sum(len(m.data) for m in mails)
        partner = None
        components: tuple[str, ...] = ()
        if args.direct:
            from kim_appliance.testing import write_config

            # above the largest client mail, so that none goes through the KAS
            write_config(data_dir, {"fachdienst": {"kas_threshold_bytes": direct_threshold(mails)}})
        if args.konnektor == "soap":
            from kim_appliance.testing import write_config

            write_config(data_dir, {"clientmodul": {"konnektor": "loopback",
                                                    "directory": "loopback"}})  # fmt: skip
        elif args.konnektor == "soap-process":
            partner = start_partner(data_dir, directory)
            components = ("--components", "clientmodul,fachdienst,console")
        try:
            proc = start_appliance(data_dir, directory / "appliance.log", *components)
        except BaseException:
            if partner is not None:
                stop(partner)
            raise
        spy = None
        try:  # from here on the appliance is stopped whatever fails (py-spy missing, too)
            spy = start_py_spy(proc.pid, args.profile) if args.profile else None
            endpoints = json.loads((data_dir / "endpoints.json").read_text("utf-8"))
            context = ssl.create_default_context(cafile=endpoints["tls_ca"])
            smtp = address_of(endpoints["clientmodul"]["smtp"])
            pop3 = address_of(endpoints["clientmodul"]["pop3"])
            rss_start = vm_status_mb(proc.pid, "VmRSS")
            cpu_start = process_cpu(proc.pid)
            progress.begin("send", messages, volume)
            with progress_display(progress):
                sent = parallel(
                    [
                        partial_send(smtp, context, participants[s], mails, s, progress)
                        for s in range(pairs)
                    ],
                    proc.pid,
                )
            expected = [sum(1 for m in mails if m.recipient == r) for r in range(pairs)]
            progress.begin("relay", messages, 0)
            with progress_display(progress):
                relay_wait = wait_for_delivery(
                    data_dir, {addresses[r].lower(): n for r, n in enumerate(expected)}, progress
                )
            progress.begin("receive", messages, int(volume * 1.02))
            with progress_display(progress):
                got = parallel(
                    [
                        partial_receive(pop3, context, participants[r], expected[r], progress)
                        for r in range(pairs)
                    ],
                    proc.pid,
                )
            appliance_cpu = process_cpu(proc.pid) - cpu_start
            peak_rss = vm_status_mb(proc.pid, "VmHWM")
            partner_figures = (
                {
                    "konnektor_process_peak_rss_mb": round(vm_status_mb(partner.pid, "VmHWM"), 1),
                    "konnektor_process_cpu_s": round(process_cpu(partner.pid), 2),
                }
                if partner is not None
                else {}
            )
            log_tail = ""
        finally:
            if spy is not None:
                stop_py_spy(spy)
            stop(proc)
            if partner is not None:
                stop(partner)
            log_tail = (directory / "appliance.log").read_text("utf-8", "replace")[-2000:]
        verified, problems = verify(mails, got.results)
        print("running the openssl baseline ...", file=sys.stderr)
        sample = mails[:SMALL_BASELINE_SAMPLE] if args.small else mails
        scale = len(mails) / len(sample)
        openssl_n = openssl_baseline(sample, participants, directory, jobs=BASELINE_PIPELINES)
        openssl_1 = openssl_baseline(sample, participants, directory, jobs=1)

    total = sent.seconds + relay_wait + got.seconds
    result: dict[str, Any] = {
        "konnektor": args.konnektor,
        "messages": messages,
        "size_mb": round(size_mb, 4),
        "send_s": round(sent.seconds, 3),
        "receive_s": round(got.seconds, 3),
        "total_s": round(total, 3),
        "throughput_mb_s": round(messages * size_mb / total, 1),
        "appliance_peak_rss_mb": round(peak_rss, 1),
        "appliance_cpu_s": round(appliance_cpu, 2),
        "verified": verified,
        "path": "direct" if args.direct or size <= KAS_DEFAULT_THRESHOLD else "kas",
        "baseline": {"openssl_crypto_s": round(openssl_n * scale, 3)},
        "baseline_detail": {
            "openssl_pipelines_at_a_time": BASELINE_PIPELINES,
            "openssl_one_pipeline_s": round(openssl_1 * scale, 3),
            "sampled_messages": len(sample),
        },
        "round_trips_per_s": round(messages / total, 1),
        "client_mail_bytes": volume,
        "participants": pairs,
        "relay_wait_s": round(relay_wait, 3),
        "cpu_s": {
            "appliance_send": round(sent.appliance_cpu, 2),
            "appliance_receive": round(got.appliance_cpu, 2),
            "client_send": round(sent.client_cpu, 2),
            "client_receive": round(got.client_cpu, 2),
        },
        "appliance_rss_after_start_mb": round(rss_start, 1),
        "problems": problems[:10],
        **partner_figures,
    }
    result["targets"] = targets(result, args.small)
    if verified != messages:
        result["appliance_log_tail"] = log_tail
    return result


def direct_threshold(mails: list[ClientMail]) -> int:
    """``--direct``: a KAS threshold above every client mail (rounded up to whole MiB)."""
    largest = max(len(m.data) for m in mails)
    return (largest // MIB + 2) * MIB


def partial_send(
    address: tuple[str, int],
    context: ssl.SSLContext,
    participant: dict[str, Any],
    mails: list[ClientMail],
    sender: int,
    progress: Progress,
) -> Callable[[], None]:
    own = [m for m in mails if m.sender == sender]
    return lambda: smtp_session(address, context, participant, own, progress)


def partial_receive(
    address: tuple[str, int],
    context: ssl.SSLContext,
    participant: dict[str, Any],
    expected: int,
    progress: Progress,
) -> Callable[[], list[bytes]]:
    return lambda: pop3_session(address, context, participant, expected, progress)


def verify(mails: list[ClientMail], received: list[list[bytes]]) -> tuple[int, list[str]]:
    """How many attachments arrived byte for byte (SHA-256), and what was wrong otherwise."""
    delivered = [mail for mails_of_one in received for mail in mails_of_one]
    verified = 0
    problems: list[str] = []
    for mail in mails:
        marker = f'filename="{mail.filename}"'.encode()
        found = [d for d in delivered if marker in d]
        if not found:
            problems.append(f"message {mail.index}: not delivered (no part {mail.filename})")
            continue
        try:
            digest = hashlib.sha256(attachment_of(found[0], mail.filename)).digest()
        except (ValueError, binascii.Error) as exc:
            problems.append(f"message {mail.index}: {exc}")
            continue
        if digest != mail.attachment_sha256:
            problems.append(f"message {mail.index}: the attachment differs (SHA-256)")
            continue
        status = found[0][: found[0].find(b"\r\n\r\n")]
        if b"X-KIM-IntegrityCheckResult: 01" not in status:
            problems.append(f"message {mail.index}: no X-KIM-IntegrityCheckResult: 01")
            continue
        verified += 1
    return verified, problems


def targets(r: dict[str, Any], small: bool) -> dict[str, Any]:
    """Issue 13's targets; the ratio is against the parallel openssl baseline."""
    out: dict[str, Any] = {
        "rss_le_200_mb": r["appliance_peak_rss_mb"] <= TARGET_RSS_MB,
    }
    if small:
        out["round_trips_ge_150_s"] = r["round_trips_per_s"] >= TARGET_ROUND_TRIPS_S
    else:
        ratio = r["total_s"] / r["baseline"]["openssl_crypto_s"]
        out["ratio_to_openssl"] = round(ratio, 2)
        out["total_le_1_3x_openssl"] = ratio <= TARGET_RATIO
    return out


_PATHS: Final = {
    "kas": "through the KAS",
    "direct": "as single CMS messages",
}
_MODES: Final = {
    "in-process": "in-process",
    "soap": "over SOAP and LDAPS (the appliance's own listeners)",
    "soap-process": "over SOAP and LDAPS (in a second process)",
}


def print_table(r: dict[str, Any]) -> None:
    cpu = r["cpu_s"]
    t = r["targets"]
    print(
        f"\nKIM round trip through the Clientmodul: {r['messages']} messages x "
        f"{r['size_mb']:g} MiB ({_PATHS[r['path']]}), {r['participants']} senders/receivers, "
        f"Konnektor and VZD {_MODES[r['konnektor']]}"
    )
    print(f"{'phase':<10} {'seconds':>8} {'MiB/s':>8} {'appl CPU s':>11} {'client CPU s':>13}")
    volume = r["messages"] * r["size_mb"]
    for name, seconds, a, c in (
        ("send", r["send_s"], cpu["appliance_send"], cpu["client_send"]),
        ("receive", r["receive_s"], cpu["appliance_receive"], cpu["client_receive"]),
    ):
        print(f"{name:<10} {seconds:>8.2f} {volume / seconds:>8.1f} {a:>11.2f} {c:>13.2f}")
    print(
        f"{'total':<10} {r['total_s']:>8.2f} {r['throughput_mb_s']:>8.1f} "
        f"{r['appliance_cpu_s']:>11.2f}   ({r['round_trips_per_s']} round trips/s; "
        f"{r['relay_wait_s']:.2f} s of it waiting for the relay)"
    )
    b = r["baseline"]["openssl_crypto_s"]
    d = r["baseline_detail"]
    sampled = f", {d['sampled_messages']} sampled" if d["sampled_messages"] != r["messages"] else ""
    print(
        f"openssl cms crypto only: {b:.2f} s with {d['openssl_pipelines_at_a_time']} pipelines "
        f"at a time, {d['openssl_one_pipeline_s']:.2f} s one at a time{sampled}"
    )
    print(
        f"appliance RSS: {r['appliance_rss_after_start_mb']} MiB after start, peak "
        f"{r['appliance_peak_rss_mb']} MiB; verified {r['verified']}/{r['messages']}"
    )
    if "konnektor_process_peak_rss_mb" in r:
        print(
            f"Konnektor/VZD process: peak RSS {r['konnektor_process_peak_rss_mb']} MiB, "
            f"{r['konnektor_process_cpu_s']} s CPU"
        )
    for problem in r["problems"]:
        print(f"  problem: {problem}")
    marks = {True: "met", False: "MISSED"}
    parts = [f"RSS <= {TARGET_RSS_MB:.0f} MB {marks[t['rss_le_200_mb']]}"]
    if "ratio_to_openssl" in t:
        parts.insert(
            0,
            f"total/openssl {t['ratio_to_openssl']} <= {TARGET_RATIO} "
            f"{marks[t['total_le_1_3x_openssl']]}",
        )
    if "round_trips_ge_150_s" in t:
        parts.insert(0, f">= {TARGET_ROUND_TRIPS_S:.0f} round trips/s "
                        f"{marks[t['round_trips_ge_150_s']]}")  # fmt: skip
    print("targets: " + "; ".join(parts))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, help="number of messages (10; --small 1000)")
    parser.add_argument(
        "--size-mb", type=float, help="client mail size in MiB (25; --small 20 KiB)"
    )
    parser.add_argument("--small", action="store_true", help="1,000 messages of 20 KiB")
    parser.add_argument(
        "--direct",
        action="store_true",
        help="raise the Fachdienst's KAS threshold ([fachdienst] kas_threshold_bytes) above the "
        "message size: every message goes as one CMS message, none through the KAS",
    )
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--profile", type=Path, help="py-spy the appliance, output to this dir")
    parser.add_argument(
        "--konnektor",
        choices=["in-process", "soap", "soap-process"],
        default="in-process",
        help="how the Clientmodul reaches the Konnektor and the VZD: its in-process objects, "
        "SOAP and LDAPS to the appliance's own listeners (soap), or to a second "
        "kim-appliance run with only the Konnektor and the VZD (soap-process)",
    )
    args = parser.parse_args()
    result = run(args)
    print_table(result)
    if args.profile:
        print("\nprofile of the appliance (py-spy):")
        print(summarise_profile(args.profile / "appliance.raw"))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["verified"] == result["messages"] else 1


if __name__ == "__main__":
    sys.exit(main())
