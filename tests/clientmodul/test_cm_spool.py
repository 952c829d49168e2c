"""The Clientmodul's spool files: small messages stay in memory, large ones go to an anonymous
file in the spool directory, and nothing is left behind (KOM-LE-A_2005)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from kim_appliance.clientmodul.spool import IN_MEMORY_LIMIT, spool_file


def test_small_spool_creates_no_file(tmp_path: Path) -> None:
    """A 20 KiB message is spooled without a file in the spool directory."""
    with spool_file(tmp_path) as spool:
        spool.write(b"x" * 20 * 1024)
        spool.seek(0)
        assert spool.read() == b"x" * 20 * 1024
        assert os.listdir(tmp_path) == []
        assert isinstance(getattr(spool, "_file", None), io.BytesIO)


def test_large_spool_moves_to_an_anonymous_file_and_reads_back(tmp_path: Path) -> None:
    """KOM-LE-A_2005: beyond the limit the data goes to disk in the spool directory, under
    no name; the whole content reads back, and closing leaves nothing."""
    data = os.urandom(IN_MEMORY_LIMIT + 4096)
    with spool_file(tmp_path) as spool:
        for i in range(0, len(data), 65536):
            spool.write(data[i : i + 65536])
        spool.flush()
        assert os.listdir(tmp_path) == []  # anonymous: no name on disk
        # bounded memory: the content is no longer held in an in-memory buffer
        assert not isinstance(getattr(spool, "_file", None), io.BytesIO)
        spool.seek(0)
        assert spool.read() == data
        spool.seek(0, os.SEEK_END)
        assert spool.tell() == len(data)
    assert os.listdir(tmp_path) == []
