"""Anonymous spool files of the Clientmodul: in memory up to 1 MiB, then on disk.

A message passes several stages (client mail, outer mail, decrypted mail, delivered mail); a
20 KiB message should not pay a file creation and deletion at each of them, and a 25 MB
message must not be held in memory. :func:`spool_file` gives a file object that keeps up to
``IN_MEMORY_LIMIT`` bytes in memory and moves to an anonymous temporary file in the spool
directory once it grows beyond that (one in-memory copy per stage at most).

This module never gives a spool a name on disk: whatever it holds is gone when it is closed
(KOM-LE-A_2005, nothing kept after delivery).
"""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Final, cast

#: bytes a spool keeps in memory before it moves to an anonymous file on disk
IN_MEMORY_LIMIT: Final = 1024 * 1024


def spool_file(
    spool_dir: str | os.PathLike[str] | None, max_size: int = IN_MEMORY_LIMIT
) -> BinaryIO:
    """A new empty read/write spool: in memory up to ``max_size`` bytes, then a nameless file
    in ``spool_dir``. The caller closes it."""
    directory = None if spool_dir is None else os.fspath(spool_dir)
    spool = tempfile.SpooledTemporaryFile(max_size=max_size, mode="w+b", dir=directory)  # noqa: SIM115
    return cast(BinaryIO, spool)
