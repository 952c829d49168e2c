"""The template cache of the pytest plugin: an initialised data dir (test PKI, demo cards, TLS
certificates, seeded mailboxes) made once per kim-appliance version and reused by later runs.

Making a template takes seconds, mostly RSA key generation for the test PKI; copying one takes
a fraction of a second. The cache lives in the user's cache directory
(``platformdirs.user_cache_dir("kim-appliance")`` when platformdirs is installed, else
``$XDG_CACHE_HOME/kim-appliance`` or ``~/.cache/kim-appliance``), mode 0700: it holds test keys
only, but they are the user's. Entries are keyed by the package version and a hash of the
package's Python source (the PKI profiles, the demo, the stores' formats: everything a template
is made of), so two versions, or a changed checkout, never share one.

An entry is made in a temporary directory next to the others and renamed into place, so a
reader never sees half of one; a lock file per key makes two pytest processes starting at once
build it once (the second waits for the first). A process using an entry holds a shared lock on
it for its session; an entry older than :data:`MAX_AGE` is replaced by a new one, and removed
once no process holds it. This module must never hand out an entry it did not finish, and
never touch anything outside its cache directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

#: an entry older than this is made again (certificates, CRLs and their dates age)
MAX_AGE: Final = 7 * 24 * 3600.0
#: how long a process waits for another one building the same entry
BUILD_WAIT: Final = 600.0
#: the file that marks a finished entry, with what it was made from
READY: Final = "ready.json"
_LOCK: Final = "in-use.lock"
_PREFIX: Final = "template-"


class CacheError(RuntimeError):
    """The cache cannot be used (its directory is not writable, a build timed out)."""


def cache_root() -> Path:
    """The user's cache directory for kim-appliance."""
    try:
        import platformdirs
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "kim-appliance"
    return Path(platformdirs.user_cache_dir("kim-appliance"))


def template_key() -> str:
    """``<version>-<hash>``: the installed version and a SHA-256 over the package's Python
    source files (names and contents), cut to 16 hex digits."""
    from importlib.metadata import PackageNotFoundError, version

    import kim_appliance

    try:
        release = version("kim-appliance")
    except PackageNotFoundError:
        release = "0.0.0"
    package = Path(kim_appliance.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"{release}-{digest.hexdigest()[:16]}"


@dataclass
class CachedTemplate:
    """A finished entry, held with a shared lock until :meth:`release`: ``data_dir`` is the
    template to copy from (never to run in)."""

    data_dir: Path
    #: True when this call made the entry (the first run of a version)
    built: bool
    _lock_fd: int | None

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the shared lock
            self._lock_fd = None


def cached_template(
    make: Callable[[Path], Any],
    *,
    root: Path | None = None,
    key: str | None = None,
    max_age: float = MAX_AGE,
    wait: float = BUILD_WAIT,
) -> CachedTemplate:
    """The cached template of ``key`` (default :func:`template_key`), made with
    ``make(data_dir)`` (:func:`kim_appliance.testing.make_template`) when there is none younger
    than ``max_age`` seconds. Blocking; the caller releases it at the end of its session.

    Error handling: :class:`CacheError` when the cache directory cannot be used or another
    process did not finish the entry within ``wait`` seconds; an error of ``make`` propagates,
    and its half-made directory is removed.
    """
    root = Path(root) if root is not None else cache_root()
    key = key or template_key()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"template cache {root}: cannot create it: {exc}") from exc
    held = _use_fresh(root, key, max_age)
    if held is not None:
        return held
    with _exclusive(root / f"{_PREFIX}{key}.lock", wait):
        # whoever held the lock before us may have made it meanwhile
        held = _use_fresh(root, key, max_age)
        if held is not None:
            return held
        entry = _build(root, key, make)
        held = _use(entry)
        if held is None:  # pragma: no cover - only if someone removed it in between
            raise CacheError(f"template cache {entry}: removed while being handed out")
        _prune(root, keep=entry, max_age=max_age)
        held.built = True
        return held


def _entries(root: Path, key: str) -> list[Path]:
    """The finished entries of ``key``, newest first."""
    found = [p for p in root.glob(f"{_PREFIX}{key}-*") if (p / READY).is_file()]
    return sorted(found, key=_created, reverse=True)


def _created(entry: Path) -> float:
    try:
        return float(json.loads((entry / READY).read_text(encoding="utf-8"))["created"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _use_fresh(root: Path, key: str, max_age: float) -> CachedTemplate | None:
    now = time.time()
    for entry in _entries(root, key):
        if now - _created(entry) < max_age:
            held = _use(entry)
            if held is not None:
                return held
    return None


def _use(entry: Path) -> CachedTemplate | None:
    """A shared lock on ``entry`` (None if it went away meanwhile)."""
    try:
        fd = os.open(entry / _LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    if not (entry / READY).is_file():  # removed between finding and locking it
        os.close(fd)
        return None
    os.utime(entry / READY)  # last used: the pruning looks at it
    return CachedTemplate(entry / "kim-data", False, fd)


def _build(root: Path, key: str, make: Callable[[Path], Any]) -> Path:
    """Make an entry in a temporary directory and rename it into place."""
    building = Path(tempfile.mkdtemp(prefix=f".building-{key}-", dir=root))
    try:
        make(building / "kim-data")
        (building / _LOCK).touch()
        created = time.time()
        ready = {"key": key, "created": created, "pid": os.getpid()}
        (building / READY).write_text(json.dumps(ready) + "\n", encoding="utf-8")
        entry = root / f"{_PREFIX}{key}-{int(created * 1000)}"
        os.rename(building, entry)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return entry


def _prune(root: Path, *, keep: Path, max_age: float) -> None:
    """Remove entries (of any key) not used for ``max_age`` that no process holds, and
    building directories a crashed process left behind (older than :data:`BUILD_WAIT`)."""
    now = time.time()
    for path in root.iterdir():
        if path == keep or not path.is_dir():
            continue
        if path.name.startswith((".building-", ".removing-")):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > BUILD_WAIT:
                    shutil.rmtree(path, ignore_errors=True)
            continue
        if not path.name.startswith(_PREFIX):
            continue
        with contextlib.suppress(OSError):
            if now - (path / READY).stat().st_mtime < max_age:
                continue
            fd = os.open(path / _LOCK, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # out of the way while still locked (rename is atomic): a process that locks
                # it after us finds no ready.json under the old name and passes it by
                doomed = path.with_name(f".removing-{path.name}")
                os.rename(path, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
            except BlockingIOError:
                continue  # a session still copies from it
            finally:
                os.close(fd)


@contextlib.contextmanager
def _exclusive(lock: Path, wait: float) -> Iterator[None]:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CacheError(
                        f"template cache: another process has been making {lock.stem} for "
                        f"more than {wait:.0f} s"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
