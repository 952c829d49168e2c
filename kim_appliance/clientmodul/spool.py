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

import io
import os
import tempfile
from typing import IO, BinaryIO, Final, cast

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


def in_memory(spool: IO[bytes]) -> bool:
    """True if reading, writing or closing ``spool`` cannot block: an in-memory stream, or a
    spool of :func:`spool_file` that has not moved to disk yet (the event loop may then touch
    it without a thread hop, issue 13). Anything else counts as a file."""
    if isinstance(spool, io.BytesIO):
        return True
    # SpooledTemporaryFile keeps whether it moved to disk in ``_rolled`` (CPython 3.11-3.13)
    rolled = getattr(spool, "_rolled", None)
    return isinstance(spool, tempfile.SpooledTemporaryFile) and rolled is False
