"""The PostgreSQL store from the command line (issue 12): ``init --store URL``, ``run --store
URL``, ``[store] url`` in config.toml, and ``store copy`` moving a used embedded store into
PostgreSQL, after which ``run --store URL`` serves the same mailboxes: POP3 (poplib, the
standard library's client) shows the same UIDLs and the same bytes. Passwords in the URL never
appear in what the commands print or log."""

from __future__ import annotations

import poplib
import time
from pathlib import Path
from typing import Any

from e2e_appliance import Appliance, Launcher, cli, mail, smtp_send

#: how long the relay from fd2 to fd1 may take before the new message counts as missing
RELAY_WAIT_S = 30.0


def _mailbox(app: Appliance, who: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """(UIDL, message) of every message in ``who``'s mailbox, through POP3."""
    host, port = app.fd_of(who, "pop3")
    pop = poplib.POP3_SSL(host, port, context=app.ssl_context(), timeout=30)
    try:
        pop.user(who["address"])
        pop.pass_(who["password"])
        _, listing, _ = pop.uidl()
        out = []
        for line in listing:
            number, uid = line.split()
            _, lines, _ = pop.retr(int(number))
            out.append((uid, b"\r\n".join(lines) + b"\r\n"))
        return out
    finally:
        pop.quit()


def _password(url: str) -> str:
    return url.split(":")[2].split("@")[0]


def test_store_copy_then_run_on_postgresql_serves_the_same_mailboxes(
    data_dir: Path, launcher: Launcher, pg_url: str
) -> None:
    """KOM-LE-A_2151/2152 across the move: a data dir with mail delivered locally, relayed to
    the other Fachdienst, and partly deleted; `store copy` is refused while the appliance runs,
    then copies and verifies; `run --store URL` shows every mailbox with the same UIDLs and
    bytes, and new mail is stored in PostgreSQL."""
    app = launcher.start(data_dir)
    weber, klein = app.participant("praxis.weber"), app.participant("zahnarzt.klein")
    sonne = app.participant("apotheke.sonne")
    big = b"".join(b"Zeile %06d des Befunds\r\n" % i for i in range(60_000))  # 1.5 MB
    for n, body in enumerate((b"Erste Nachricht.\r\n", big, b"Wird geloescht.\r\n")):
        sent = mail(weber["address"], klein["address"], f"copy-{n}@e2e", body)
        smtp_send(app, weber, [klein["address"], sonne["address"]], sent)
    # delete the last one from klein's mailbox (sonne keeps it)
    host, port = app.fd_of(klein, "pop3")
    pop = poplib.POP3_SSL(host, port, context=app.ssl_context(), timeout=30)
    pop.user(klein["address"])
    pop.pass_(klein["password"])
    pop.dele(3)
    pop.quit()
    refused = cli("store", "copy", "--data-dir", str(data_dir), "--to", pg_url, cwd=data_dir)
    assert refused.returncode == 1
    assert "in use by another process" in refused.stderr
    before = {who["address"]: _mailbox(app, who) for who in (klein, sonne, weber)}
    assert [len(before[p["address"]]) for p in (klein, sonne)] == [2, 3]
    assert app.stop()[0] == 0

    copied = cli("store", "copy", "--data-dir", str(data_dir), "--to", pg_url, cwd=data_dir)
    assert copied.returncode == 0, copied.stderr + copied.stdout
    assert "verified: every count and every SHA-256 matches" in copied.stdout
    assert _password(pg_url) not in copied.stdout + copied.stderr

    moved = launcher.start(data_dir, "--store", pg_url)
    after = {who["address"]: _mailbox(moved, who) for who in (klein, sonne, weber)}
    assert after == before
    sent = mail(sonne["address"], klein["address"], "after@e2e", b"Nach dem Umzug.\r\n")
    smtp_send(moved, sonne, [klein["address"]], sent)
    # sonne is on fd2, klein on fd1: the 250 came from fd2, the relay to fd1 follows
    deadline = time.monotonic() + RELAY_WAIT_S
    while len(newest := _mailbox(moved, klein)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(newest) == 3
    assert newest[-1][1].endswith(sent)
    assert newest[-1][0] not in {uid for uid, _ in before[klein["address"]]}
    assert moved.stop()[0] == 0
    assert _password(pg_url) not in moved.stderr()
    assert "PostgreSQL store postgresql://kim:***@" in moved.stderr()


def test_init_with_a_store_url_writes_the_demo_into_postgresql(
    tmp_path: Path, launcher: Launcher, pg_url: str
) -> None:
    """`init --store URL` creates the schema and the demo's state (accounts, directory entries,
    registration codes) in that database and writes the URL into config.toml's `[store] url`
    (docs/decisions.md), so that `run` without --store uses it; the embedded store is never
    created. A second init with the same URL leaves config.toml alone."""
    data_dir = tmp_path / "kim-data"
    done = cli("init", "--data-dir", str(data_dir), "--store", pg_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "state in the PostgreSQL store postgresql://kim:***@" in done.stdout
    assert _password(pg_url) not in done.stdout + done.stderr
    assert not (data_dir / "store").exists()
    config = data_dir / "config.toml"
    assert f'\nurl = "{pg_url}"\n' in config.read_text("utf-8")
    assert "[store] url set; `run` uses this store without --store" in done.stdout
    before = config.read_bytes()
    again = cli("init", "--data-dir", str(data_dir), "--store", pg_url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert config.read_bytes() == before
    app = launcher.start(data_dir)
    assert not (data_dir / "store").exists()
    weber, klein = app.participant("praxis.weber"), app.participant("zahnarzt.klein")
    sent = mail(weber["address"], klein["address"], "pg@e2e", b"In PostgreSQL.\r\n")
    smtp_send(app, weber, [klein["address"]], sent)
    [(_, stored)] = _mailbox(app, klein)
    assert stored.endswith(sent)
    assert app.stop()[0] == 0


def test_a_bad_store_url_is_refused_without_showing_its_password(tmp_path: Path) -> None:
    data_dir = tmp_path / "kim-data"
    for url, reason in (
        ("mysql://kim:hunter2@db/kim", "not a store URL"),
        ("postgresql://kim:hunter2@127.0.0.1:1/kim", "cannot connect"),
    ):
        done = cli("init", "--data-dir", str(data_dir), "--store", url, cwd=tmp_path)
        assert done.returncode == 1
        assert reason in done.stderr
        assert "hunter2" not in done.stderr + done.stdout
        assert "kim:***@" in done.stderr
