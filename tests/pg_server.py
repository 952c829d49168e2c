"""A throwaway PostgreSQL server for the tests: initdb and pg_ctl in a temp dir, on a free port of
127.0.0.1, one per test session, and a fresh database per test (a copy of a migrated template).

Debian's binaries live in /usr/lib/postgresql/<version>/bin (not on PATH); the newest version
found there is used, unless ``KIM_PG_BINDIR`` names another directory or ``initdb`` is on PATH.
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user (made by
Debian's package) through ``runuser``, in a temp dir that user owns. pg_ctl's own output goes to
a file, never to a pipe: the server it starts inherits it and would keep a pipe open for ever.
The server trades durability for speed (fsync off): it lives for one test run, and what the
tests check is the store's logic, not PostgreSQL's disk. This module never touches a server it
did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: the superuser the tests connect as, over TCP with a password (so URLs carry one)
USER = "kim"
#: the database every test database is copied from (schema already migrated)
TEMPLATE = "kim_template"
START_TIMEOUT_S = 30
COMMAND_TIMEOUT_S = 60


def unavailable(reason: str) -> None:
    """PostgreSQL cannot run here: skipped with the reason, a failure under CI (KIM_CI=1)."""
    if os.environ.get("KIM_CI"):
        pytest.fail(f"PostgreSQL unavailable under CI: {reason}")
    pytest.skip(reason)


def find_bindir() -> Path | None:
    """The directory with initdb, pg_ctl and psql, or None."""
    explicit = os.environ.get("KIM_PG_BINDIR")
    if explicit:
        return Path(explicit)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent  # a symlink into the real bin dir (with psql)
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    return Path(max(found, key=version)).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PgServer:
    """A running throwaway server; ``url(db)`` is a store URL with the password in it."""

    bindir: Path
    root: Path
    port: int
    password: str
    as_user: str | None
    _counter: int = field(default=0)
    _admin: _Admin | None = field(default=None)
    _spare: tuple[str, Future[Any]] | None = field(default=None)

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _command(self, *argv: str) -> list[str]:
        if self.as_user is None:
            return list(argv)
        return ["runuser", "-u", self.as_user, "--", *argv]

    def run(self, *argv: str, log: str | None = None) -> None:
        """A server binary (by name), its output to ``log`` in the temp dir (or captured)."""
        cmd = self._command(str(self.bindir / argv[0]), *argv[1:])
        if log is None:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv[:2])} failed: {done.stderr or done.stdout}")
            return
        with open(self.root / log, "ab") as out:
            done = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        if done.returncode != 0:
            tail = (self.root / log).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(argv[:2])} failed (exit {done.returncode}): {tail}")

    def sql(self, statement: str, database: str = "postgres") -> None:
        """One statement through psql over the server's socket (trust: no password)."""
        self.run(
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir), "-p",
            str(self.port), "-U", USER, "-d", database, "-c", statement,
        )  # fmt: skip

    def admin(self, statement: str, *, wait: bool = True) -> None:
        """One statement on the session's admin connection (faster than a psql per test);
        with ``wait=False`` it runs in the background (drops at teardown)."""
        if self._admin is None:
            self._admin = _Admin(self.url("postgres"))
        done = self._admin.submit(statement)
        if wait:
            done.result(timeout=COMMAND_TIMEOUT_S)

    def new_database(self) -> str:
        """A fresh database with the store's schema (a copy of the template); its name. The
        next test's database is made in the background meanwhile."""
        if self._spare is None:
            self._spare = self._create_from_template()
        name, done = self._spare
        self._spare = self._create_from_template()
        done.result(timeout=COMMAND_TIMEOUT_S)
        return name

    def _create_from_template(self) -> tuple[str, Future[Any]]:
        if self._admin is None:
            self._admin = _Admin(self.url("postgres"))
        self._counter += 1
        name = f"kim_t{os.getpid()}_{self._counter}"
        return name, self._admin.submit(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")

    def empty_database(self) -> str:
        """A fresh database without any table (to test the migrations themselves)."""
        self._counter += 1
        name = f"kim_e{os.getpid()}_{self._counter}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE template0")
        return name

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        with contextlib.suppress(Exception):
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", log="ctl.log")
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PgServer:
    """initdb + pg_ctl start in a new temp dir; raises RuntimeError with the reason."""
    bindir = find_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        raise LookupError(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin; "
            "Debian: apt-get install postgresql)"
        )
    as_user: str | None = None
    root = Path(tempfile.mkdtemp(prefix="kim-pg-"))
    if os.geteuid() == 0:
        as_user = "postgres"
        try:
            entry = pwd.getpwnam(as_user)
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise LookupError("running as root and there is no 'postgres' user to run as") from None
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = PgServer(bindir, root, _free_port(), secrets.token_hex(12), as_user)
    pwfile = root / "pw"
    pwfile.write_text(server.password + "\n")
    if as_user is not None:
        entry = pwd.getpwnam(as_user)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    try:
        server.run(
            "initdb", "-D", str(server.data), "-U", USER, f"--pwfile={pwfile}", "-E", "UTF8",
            "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
            log="initdb.log",
        )  # fmt: skip
        if as_user is not None:
            server.socket_dir.mkdir()
            os.chown(server.socket_dir, entry.pw_uid, entry.pw_gid)
        else:
            server.socket_dir.mkdir()
        options = (
            f"-p {server.port} -h 127.0.0.1 -k {server.socket_dir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
            "-c shared_buffers=32MB"
        )
        server.run(
            "pg_ctl", "-D", str(server.data), "-l", str(root / "server.log"), "-o", options,
            "-w", "-t", str(START_TIMEOUT_S), "start", log="ctl.log",
        )  # fmt: skip
        server.sql(f"CREATE DATABASE {TEMPLATE} TEMPLATE template0")
    except BaseException:
        server.stop()
        raise
    return server


class _Admin:
    """An asyncpg connection on an asyncio loop in a thread of its own, for the fixtures (which
    are synchronous, outside any trio run); statements run one after the other."""

    def __init__(self, url: str) -> None:
        import asyncpg

        # a plain loop: trio-asyncio, once imported, makes new_event_loop() one of its own
        self._loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._conn: Any = asyncio.run_coroutine_threadsafe(asyncpg.connect(url), self._loop).result(
            timeout=COMMAND_TIMEOUT_S
        )
        self._lock = asyncio.Lock()

    def submit(self, statement: str) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(self._execute(statement), self._loop)

    async def _execute(self, statement: str) -> Any:
        # one connection runs one statement at a time: queue behind background drops
        async with self._lock:
            return await self._conn.execute(statement)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._conn.close(), self._loop).result(
                timeout=COMMAND_TIMEOUT_S
            )
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=COMMAND_TIMEOUT_S)
        self._loop.close()
