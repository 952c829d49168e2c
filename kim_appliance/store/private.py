"""File modes of the store: every directory 0700, every file 0600 (issue 11).

The store holds mail, password hashes and the failed-login counters of one appliance; no other
user of the machine may read them, whatever umask the process runs with (the CLI sets 0o077,
an application embedding the appliance in its tests may not). This module only creates files
and directories and narrows modes; it must never widen one or touch a file outside a store.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) as 0700; an existing one is narrowed to 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, DIR_MODE)


def create_private(path: Path) -> BinaryIO:
    """A new file opened for binary writing, 0600 from its creation; FileExistsError if taken."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    return os.fdopen(fd, "wb")


def private_database(path: Path) -> None:
    """Make an SQLite database file 0600 before SQLite opens it (creating it empty if missing):
    SQLite gives the -wal and -shm files it creates the mode of the database file. The files
    of an older data dir are narrowed too."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, FILE_MODE)
