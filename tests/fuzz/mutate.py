"""Byte mutations for the fuzz targets: one small vocabulary used by both drivers.

A mutation is data (:class:`Mutation`: an operator, a position, a size and a byte string), so
that the pytest driver can let hypothesis draw and shrink mutations, and the long-run driver
(:mod:`.engine`) can draw them from a seeded :class:`random.Random`. The operators are those
that find bugs in binary and line parsers: flip a bit, set an "interesting" byte, insert,
delete, duplicate or overwrite a range, splice in another seed, insert a dictionary token, and
an ASN.1 length tweak. Nothing here knows a target.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

OPERATORS: Final = (
    "flip",
    "byte",
    "insert",
    "delete",
    "duplicate",
    "overwrite",
    "splice",
    "token",
    "length",
    "truncate",
)
#: bytes that hit edge cases of lengths, tags and text parsers
INTERESTING: Final = (0x00, 0x01, 0x0A, 0x0D, 0x20, 0x2E, 0x30, 0x7F, 0x80, 0x81, 0x84, 0xFF)


@dataclass(frozen=True)
class Mutation:
    """One edit. ``position`` and ``size`` are taken modulo the input's length, so any drawn
    values apply to any input; ``data`` is what an inserting operator inserts."""

    operator: str
    position: int
    size: int
    data: bytes = b""


def apply(
    data: bytes,
    mutation: Mutation,
    *,
    seeds: Sequence[bytes] = (),
    dictionary: Sequence[bytes] = (),
    max_len: int = 1 << 20,
) -> bytes:
    """``data`` with ``mutation`` applied (never longer than ``max_len``)."""
    op, n = mutation.operator, len(data)
    pos = mutation.position % (n + 1)
    size = 1 + mutation.size % 64
    if op == "flip" and n:
        pos %= n
        out = data[:pos] + bytes([data[pos] ^ (1 << (mutation.size % 8))]) + data[pos + 1 :]
    elif op == "byte" and n:
        pos %= n
        value = INTERESTING[mutation.size % len(INTERESTING)]
        out = data[:pos] + bytes([value]) + data[pos + 1 :]
    elif op == "insert":
        out = data[:pos] + (mutation.data or b"\x00") + data[pos:]
    elif op == "delete":
        out = data[:pos] + data[pos + size :]
    elif op == "duplicate" and n:
        out = data[:pos] + data[pos : pos + size] * (1 + mutation.size % 4) + data[pos:]
    elif op == "overwrite":
        piece = mutation.data or b"\xff"
        out = data[:pos] + piece + data[pos + len(piece) :]
    elif op == "splice" and seeds:
        other = seeds[mutation.size % len(seeds)]
        start = mutation.position % (len(other) + 1)
        out = data[:pos] + other[start : start + 1 + mutation.size % 256]
    elif op == "token" and dictionary:
        out = data[:pos] + dictionary[mutation.size % len(dictionary)] + data[pos:]
    elif op == "length" and n:
        # ASN.1 length tweak: the byte after a tag-looking byte gets an edge value
        pos %= n
        value = (0x00, 0x7F, 0x80, 0x81, 0x82, 0x84, 0x88, 0xFF)[mutation.size % 8]
        out = data[:pos] + bytes([value]) + data[pos + 1 :]
    elif op == "truncate":
        out = data[:pos]
    else:
        out = data + (mutation.data or b"\n")
    return out[:max_len]


def random_mutation(rng: random.Random) -> Mutation:
    """A mutation drawn from ``rng`` (the long-run driver's source)."""
    op = rng.choice(OPERATORS)
    length = rng.choice((1, 1, 2, 4, 8, rng.randrange(1, 64)))
    data = bytes(rng.choice(INTERESTING) if rng.random() < 0.3 else rng.randrange(256)
                 for _ in range(length))  # fmt: skip
    # positions near the start matter most for headers and tags; draw them more often
    position = rng.randrange(64) if rng.random() < 0.3 else rng.randrange(1 << 20)
    return Mutation(op, position, rng.randrange(1 << 16), data)


def mutate(
    data: bytes,
    rng: random.Random,
    *,
    seeds: Sequence[bytes] = (),
    dictionary: Sequence[bytes] = (),
    max_len: int = 1 << 20,
) -> bytes:
    """``data`` after 1 to 16 random mutations (mostly few: small changes go deep)."""
    count = min(16, int(rng.expovariate(0.5)) + 1)
    for _ in range(count):
        data = apply(
            data, random_mutation(rng), seeds=seeds, dictionary=dictionary, max_len=max_len
        )
    return data
