"""The BER push parser, header writer and OCTET STRING chunker of ``kim_appliance._native``.

asn1crypto is the independent oracle for DER and BER. The parser must never crash or hang on any
input: random and truncated inputs end in events or a ``BerError``, nothing else.
"""

from __future__ import annotations

from typing import Union

import pytest
from asn1crypto import core, parser
from hypothesis import given
from hypothesis import strategies as st

from kim_appliance import _native as n

# A tree: (tag_class, tag_number, bytes) for a primitive, (tag_class, tag_number, [children]).
Tree = tuple[int, int, Union[bytes, list["Tree"]]]  # noqa: UP007 (recursive alias)

tag_numbers = st.one_of(st.integers(1, 30), st.integers(31, 100_000))
primitives = st.tuples(st.integers(0, 3), tag_numbers, st.binary(max_size=300))
trees: st.SearchStrategy[Tree] = st.recursive(
    primitives,
    lambda kids: st.tuples(st.integers(0, 3), tag_numbers, st.lists(kids, max_size=4)),
    max_leaves=12,
)


def encode(tree: Tree, definite: bool) -> bytes:
    cls, tag, body = tree
    if isinstance(body, bytes):
        return n.ber_header(cls, False, tag, len(body)) + body
    content = b"".join(encode(k, definite) for k in body)
    if definite:
        return n.ber_header(cls, True, tag, len(content)) + content
    return n.ber_header(cls, True, tag, None) + content + b"\x00\x00"


def oracle(data: bytes) -> Tree:
    """Decode with asn1crypto's parser, recursively."""
    cls, method, tag, _header, contents, _trailer = parser.parse(data)
    if method == 0:
        return (cls, tag, contents)
    kids: list[Tree] = []
    rest = contents
    while rest:
        kid = parser.parse(rest)
        size = len(kid[3]) + len(kid[4]) + len(kid[5])
        kids.append(oracle(rest[:size]))
        rest = rest[size:]
    return (cls, tag, kids)


def read_tree(data: bytes, step: int) -> Tree:
    """Parse with BerReader fed ``step`` bytes at a time, rebuilding the tree from the events."""
    r = n.BerReader()
    stack: list[tuple[int, int, list[Tree]]] = []
    result: list[Tree] = []
    pending: Tree | None = None

    def pump() -> None:
        nonlocal pending
        while (ev := r.next_event()) is not None:
            if ev.kind == n.EVENT_START and ev.constructed:
                stack.append((ev.tag_class, ev.tag_number, []))
            elif ev.kind == n.EVENT_VALUE:
                pending = (ev.tag_class, ev.tag_number, ev.value)
            elif ev.kind == n.EVENT_END:
                if ev.constructed:
                    cls, tag, kids = stack.pop()
                    done: Tree = (cls, tag, kids)
                else:
                    assert pending is not None
                    done, pending = pending, None
                (stack[-1][2] if stack else result).append(done)

    for i in range(0, len(data), step):
        r.feed(data[i : i + step])
        pump()
    r.feed_eof()
    pump()
    assert r.done
    assert r.offset == len(data)
    return result[0]


@given(trees, st.integers(1, 50))
def test_der_and_ber_round_trip_against_asn1crypto(tree: Tree, step: int) -> None:
    der = encode(tree, definite=True)
    assert oracle(der) == tree
    assert read_tree(der, step) == tree
    ber = encode(tree, definite=False)
    assert read_tree(ber, step) == tree


@given(trees, st.integers(1, 50))
def test_capture_yields_what_asn1crypto_parses(tree: Tree, step: int) -> None:
    """RAW carries the complete encoding of the captured element, header included."""
    for definite in (True, False):
        data = encode(tree, definite)
        r = n.BerReader()
        events = []
        for i in range(0, len(data), step):
            r.feed(data[i : i + step])
            while (ev := r.next_event()) is not None:
                if ev.kind == n.EVENT_START:
                    r.capture()
                events.append(ev)
        assert [e.kind for e in events] == [n.EVENT_START, n.EVENT_RAW]
        assert events[1].value == data
        assert oracle(data) == tree


@given(st.binary(max_size=3000), st.integers(1, 700), st.integers(1, 500))
def test_flatten_constructed_octet_string(data: bytes, chunk_size: int, step: int) -> None:
    """A streamed constructed OCTET STRING (ber_header(..., None) + chunker + EOC), wrapped in a
    SEQUENCE, flattens to the original bytes, as asn1crypto reads it."""
    chunker = n.OctetStringChunker(chunk_size)
    inner = n.ber_header(n.CLASS_UNIVERSAL, True, 4, None)
    inner += chunker.update(data[: len(data) // 2]) + chunker.update(data[len(data) // 2 :])
    inner += chunker.finalize() + b"\x00\x00"
    assert core.OctetString.load(inner).native == data
    wire = n.ber_header(n.CLASS_UNIVERSAL, True, 16, None) + inner + b"\x00\x00"
    r = n.BerReader()
    out, kinds = [], []
    for i in range(0, len(wire), step):
        r.feed(wire[i : i + step])
        while (ev := r.next_event()) is not None:
            kinds.append(ev.kind)
            if ev.kind == n.EVENT_START and ev.depth == 1:
                r.flatten()
            if ev.kind == n.EVENT_DATA:
                assert ev.depth == 1
                assert len(ev.value) <= step  # coalesced per feed, never more than was fed
                out.append(ev.value)
    r.feed_eof()
    assert r.next_event() is None
    assert b"".join(out) == data
    assert kinds[0:2] == [n.EVENT_START, n.EVENT_START]
    assert kinds[-2:] == [n.EVENT_END, n.EVENT_END]


def test_chunker_segments_are_exact() -> None:
    c = n.OctetStringChunker(4)
    assert c.update(b"abcdefghij") == b"\x04\x04abcd\x04\x04efgh"
    assert c.finalize() == b"\x04\x02ij"
    assert c.finalize() == b""
    big = n.OctetStringChunker(65536).update(b"x" * 65536)
    assert big[:5] == b"\x04\x83\x01\x00\x00"
    assert len(big) == 65541
    with pytest.raises(n.NativeError, match="chunk_size"):
        n.OctetStringChunker(0)


def test_ber_header_forms() -> None:
    assert n.ber_header(n.CLASS_CONTEXT, True, 0, None) == b"\xa0\x80"
    assert n.ber_header(n.CLASS_UNIVERSAL, False, 4, 300) == b"\x04\x82\x01\x2c"
    assert n.ber_header(n.CLASS_APPLICATION, False, 1000, 0) == b"\x5f\x87\x68\x00"
    with pytest.raises(n.NativeError, match="indefinite"):
        n.ber_header(n.CLASS_UNIVERSAL, False, 4, None)
    with pytest.raises(n.NativeError, match="tag_class"):
        n.ber_header(4, False, 4, 1)


def events_of(data: bytes) -> list[n.BerEvent]:
    r = n.BerReader(max_depth=4, max_capture=64)
    r.feed(data)
    r.feed_eof()
    out = []
    while (ev := r.next_event()) is not None:
        out.append(ev)
    return out


@pytest.mark.parametrize(
    ("data", "offset", "reason"),
    [
        (b"\x30\x03\x04\x05abcde", 2, "runs past the end"),
        (b"\x30\x04\x00\x00\x05\x00", 2, "end-of-contents inside the definite-length"),
        (b"\x04\x80abc\x00\x00", 0, "indefinite length on a primitive"),
        (b"\x30\x05\x04\x01a", 5, "input ends"),
        (b"\x30\x80\x04\x01a", 5, "input ends"),
        (b"\x04\x89" + b"\x00" * 9, 0, "9 length octets"),
        (b"\x30\x80\x30\x80\x30\x80\x30\x80\x30\x80", 8, "max_depth=4"),
        (b"\x04\x41" + b"x" * 65, 0, "max_capture=64"),
        (b"", 0, "before any BER element"),
    ],
)
def test_malformed_input_names_offset_and_reason(data: bytes, offset: int, reason: str) -> None:
    with pytest.raises(n.BerError, match=rf"offset {offset}: .*{reason}"):
        events_of(data)


def test_trailing_bytes_and_misuse() -> None:
    r = n.BerReader()
    r.feed(b"\x02\x01\x07trailing")
    kinds = []
    while (ev := r.next_event()) is not None:
        kinds.append(ev.kind)
    assert kinds == [n.EVENT_START, n.EVENT_VALUE, n.EVENT_END]
    assert r.done
    assert r.offset == 3
    assert r.remaining() == b"trailing"
    with pytest.raises(n.NativeError, match="capture: must be called right after a START"):
        r.capture()
    with pytest.raises(n.NativeError, match="flatten"):
        r.flatten()


@given(st.binary(max_size=200), st.integers(1, 20), st.lists(st.integers(0, 2), max_size=50))
def test_random_input_never_crashes_or_hangs(data: bytes, step: int, choices: list[int]) -> None:
    r = n.BerReader(max_depth=8, max_capture=1024)
    count = 0
    try:
        for i in range(0, len(data) + 1, step):
            r.feed(data[i : i + step])
            if i + step > len(data):
                r.feed_eof()
            while (ev := r.next_event()) is not None:
                count += 1
                assert count < 10_000
                if ev.kind == n.EVENT_START and choices:
                    choice = choices.pop()
                    if choice == 1:
                        r.capture()
                    elif choice == 2:
                        r.flatten()
    except n.BerError:
        return
    assert r.done


@given(trees)
def test_every_truncation_raises_ber_error(tree: Tree) -> None:
    data = encode(tree, definite=False)
    for cut in range(len(data)):
        with pytest.raises(n.BerError, match=r"input ends|runs past"):
            read_tree(data[:cut], 7)
