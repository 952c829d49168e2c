"""Base64 with CRLF line wrapping and SMTP/POP3 dot-stuffing of ``kim_appliance._native``.

Python's ``base64`` and ``smtplib``'s own quoting are the oracles. The unstuffer tests include the
SMTP smuggling sequences, which must never end a message body.
"""

from __future__ import annotations

import base64
import random
import smtplib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kim_appliance import _native as n


def chunks(data: bytes, step: int) -> list[bytes]:
    return [data[i : i + step] for i in range(0, len(data), step)] or [b""]


@given(st.binary(max_size=3000), st.integers(1, 400))
def test_base64_encoder_matches_mime_encoding(data: bytes, step: int) -> None:
    """RFC 2045 §6.8: 76-character lines ending CRLF, as email.base64mime writes them."""
    enc = n.Base64Encoder()
    out = b"".join(enc.update(c) for c in chunks(data, step)) + enc.finalize()
    expected = base64.encodebytes(data).replace(b"\n", b"\r\n")
    assert out == expected
    dec = n.Base64Decoder()
    assert b"".join(dec.update(c) for c in chunks(out, step)) + dec.finalize() == data


@given(st.binary(max_size=500), st.integers(1, 100), st.integers(1, 50))
def test_base64_other_line_lengths(data: bytes, line_length: int, step: int) -> None:
    enc = n.Base64Encoder(line_length)
    out = b"".join(enc.update(c) for c in chunks(data, step)) + enc.finalize()
    lines = out.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) == line_length for line in lines[:-2])
    assert b"".join(lines) == base64.b64encode(data)


def random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` cut at random places, piece sizes from 0 to about 100 KB."""
    sizes = [0, 1, 2, 3, 4, 5, 77, 78]
    out, i = [], 0
    while i < len(data):
        size = rng.choice([*sizes, rng.randrange(1, 1000), rng.randrange(1, 100_000)])
        out.append(data[i : i + size])
        i += size
    return out


def rewrap(text: bytes, rng: random.Random) -> bytes:
    """The base64 characters of ``text`` in lines of random lengths, ended by CRLF, LF or a CR,
    with spaces and tabs here and there: everything RFC 2045 readers skip."""
    chars = text.replace(b"\r", b"").replace(b"\n", b"")
    out, i = [], 0
    while i < len(chars):
        size = rng.randrange(1, 120)
        out.append(chars[i : i + size])
        out.append(rng.choice([b"\r\n", b"\r\n", b"\n", b"\r", b" ", b"\t", b"\r\n ", b""]))
        i += size
    return b"".join(out)


@given(st.integers(0, 2**32), st.integers(0, 120_000), st.integers(1, 200))
def test_base64_matches_python_over_random_lengths_lines_and_chunkings(
    seed: int, length: int, line_length: int
) -> None:
    """Encoder and decoder against Python's base64, any line length, any chunking."""
    rng = random.Random(seed)
    data = rng.randbytes(length)
    enc = n.Base64Encoder(line_length)
    out = b"".join(enc.update(c) for c in random_chunks(data, rng)) + enc.finalize()
    plain = base64.b64encode(data)
    wrapped = b"".join(
        plain[i : i + line_length] + b"\r\n" for i in range(0, len(plain), line_length)
    )
    assert out == wrapped
    for text in (out, base64.encodebytes(data), rewrap(out, rng)):
        dec = n.Base64Decoder()
        assert b"".join(dec.update(c) for c in random_chunks(text, rng)) + dec.finalize() == data


@pytest.mark.parametrize("length", [3 * (1 << 20), 5 * 1000 * 1000 + 1, 5 * 1000 * 1000 + 2])
def test_base64_matches_python_over_megabytes(length: int) -> None:
    rng = random.Random(length)
    data = rng.randbytes(length)
    enc = n.Base64Encoder(76)
    text = b"".join(enc.update(c) for c in random_chunks(data, rng)) + enc.finalize()
    assert text == base64.encodebytes(data).replace(b"\n", b"\r\n")
    dec = n.Base64Decoder()
    assert b"".join(dec.update(c) for c in random_chunks(text, rng)) + dec.finalize() == data


@given(st.integers(0, 2**32), st.integers(4, 3000), st.sampled_from(b"!-_.=:\x00\x0c\x80\xff"))
def test_base64_decoder_names_the_offset_of_a_bad_byte_anywhere(
    seed: int, length: int, bad: int
) -> None:
    """A byte outside the alphabet (or a misplaced '=') anywhere in a long text is reported at its
    exact offset, however the text is chunked. A '=' that could be padding (third or fourth
    character of a quantum) is not itself an error: the next character after it is."""
    rng = random.Random(seed)
    text = base64.encodebytes(rng.randbytes(length)).replace(b"\n", b"\r\n")
    # A character position of a complete quantum that is not the last one.
    positions = [i for i, b in enumerate(text[:-8]) if b not in b"\r\n="]
    pos = rng.choice(positions)
    broken = text[:pos] + bytes([bad]) + text[pos + 1 :]
    expected = pos
    if bad == ord("="):
        index = len(text[:pos].replace(b"\r\n", b"")) % 4
        if index >= 2:
            # padding; the error is the next alphabet character (skipping a CRLF)
            expected = pos + 1
            while broken[expected] in b"\r\n":
                expected += 1
    dec = n.Base64Decoder()

    def decode_all() -> None:
        for c in random_chunks(broken, rng):
            dec.update(c)
        dec.finalize()

    with pytest.raises(n.Base64Error, match=rf"offset {expected}: "):
        decode_all()


@pytest.mark.parametrize(
    ("text", "offset", "reason"),
    [
        (b"Zm9v\r\nZm9v!", 10, "character '!' outside the base64 alphabet"),
        (b"Zg==Zg==", 4, "after padding"),
        (b"Zm9", 3, "inside a quantum"),
        (b"Z===", 1, "'=' at position 2"),
        (b"Zm9v\x00", 4, "byte 0x00"),
        (b"Zm9v\x0c", 4, "byte 0x0c outside"),
        (b"Zg=a", 3, "character 'a' after padding"),
        (b"Zg===", 4, "'=' after the final quantum"),
    ],
)
def test_base64_decoder_errors_name_offset(text: bytes, offset: int, reason: str) -> None:
    dec = n.Base64Decoder()

    def decode_all() -> None:
        for c in chunks(text, 1):
            dec.update(c)
        dec.finalize()

    with pytest.raises(n.Base64Error, match=rf"offset {offset}: .*{reason}"):
        decode_all()


def test_base64_decoder_skips_whitespace() -> None:
    dec = n.Base64Decoder()
    assert dec.update(b" Zm9v\r\n\tYmFy \r\n") + dec.finalize() == b"foobar"


lines = st.lists(
    st.sampled_from(
        [b".", b"..", b"x", b".x", b"\r\n", b"\n", b"\r", b"\r\n.", b"\r\n.\r\n", b" "]
    ),
    max_size=40,
).map(b"".join)


@given(lines, st.integers(1, 10))
def test_dot_stuffing_round_trip_and_smtplib(body: bytes, step: int) -> None:
    """The stuffed body never contains the terminator early, unstuffs back to the body (with a
    final CRLF added), and matches smtplib's quoting where the body has CRLF line ends only."""
    stuffer = n.DotStuffer()
    wire = b"".join(stuffer.update(c) for c in chunks(body, step)) + stuffer.finalize()
    assert wire.endswith(b".\r\n")
    u = n.DotUnstuffer()
    out = b"".join(u.feed(c) for c in chunks(wire + b"NEXT", step))
    assert u.done
    assert u.take_rest() == b"NEXT"
    expect = body if body == b"" or body.endswith(b"\r\n") else body + b"\r\n"
    assert out == expect
    if b"\r" not in body.replace(b"\r\n", b"") and b"\n" not in body.replace(b"\r\n", b""):
        quoted = smtplib.quotedata(body.decode()).encode()
        assert wire[: len(quoted)] == quoted


@pytest.mark.parametrize(
    "evil",
    [
        b"a\n.\r\nRSET\r\n",
        b"a\n.\nRSET\r\n",
        b"a\r.\r\nRSET\r\n",
        b"a\r\n.\nRSET\r\n",
        b"a\r\n.\rRSET",
    ],
)
def test_smuggling_sequences_never_end_the_body(evil: bytes) -> None:
    """SMTP smuggling: only CRLF '.' CRLF ends DATA; bare LF / bare CR variants are content and
    are counted so that a server can refuse them."""
    for step in range(1, len(evil) + 1):
        u = n.DotUnstuffer()
        out = b"".join(u.feed(c) for c in chunks(evil, step))
        assert not u.done
        assert b"RSET" in out
        assert u.bare_lf + u.bare_cr >= 1


def test_terminator_split_at_every_position() -> None:
    wire = b"From: a\r\n\r\n..leading dot\r\nend\r\n.\r\nQUIT\r\n"
    for cut in range(len(wire) + 1):
        u = n.DotUnstuffer()
        out = u.feed(wire[:cut]) + u.feed(wire[cut:])
        assert u.done
        assert out == b"From: a\r\n\r\n.leading dot\r\nend\r\n"
        assert u.take_rest() == b"QUIT\r\n"
        assert u.take_rest() == b""
        assert u.feed(b"more") == b""
        assert u.take_rest() == b"more"


def test_counters_and_longest_line() -> None:
    u = n.DotUnstuffer()
    u.feed(b"short\r\n" + b"y" * 1200 + b"\r\nbare\nlf and bare\rcr\r\n")
    assert (u.bare_lf, u.bare_cr) == (1, 1)
    assert u.longest_line == 1200
    assert not u.done
    u.feed(b".\r\n")
    assert u.done


@pytest.mark.parametrize("step", [1 << 20, 65536, 4099])
def test_base64_bulk_path_matches_python_and_names_deep_offsets(step: int) -> None:
    """Megabytes of MIME base64 (the SIMD bulk path) round-trip exactly, and a bad character
    deep inside a long stream is reported at its exact offset."""
    data = bytes(range(256)) * 12000 + b"tail"
    enc = n.Base64Encoder(76)
    text = b"".join(enc.update(c) for c in chunks(data, step)) + enc.finalize()
    assert text == base64.encodebytes(data).replace(b"\n", b"\r\n")
    dec = n.Base64Decoder()
    assert b"".join(dec.update(c) for c in chunks(text, step)) + dec.finalize() == data

    def decode(text: bytes) -> bytes:
        dec = n.Base64Decoder()
        return b"".join(dec.update(c) for c in chunks(text, step)) + dec.finalize()

    # A '=' that ends a quantum is valid padding: the character after it is the error.
    for pos, bad, at in [
        (2_000_003, b"!", 2_000_003),
        (1_500_076, b"=", 1_500_077),
        (3_000_000, b"\x00", 3_000_000),
    ]:
        broken = text[:pos] + bad + text[pos + 1 :]
        with pytest.raises(n.Base64Error, match=f"offset {at}:"):
            decode(broken)
