"""Bounded JSON request bodies (issue 11): what json.loads alone lets through is refused with a
JsonBodyError that says why, and well-formed bodies parse as before."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kim_appliance.protocols.jsonbody import (
    MAX_JSON_DEPTH,
    JsonBodyError,
    load_json_body,
    nesting_depth,
)


def test_a_body_nested_100000_deep_is_refused_quickly() -> None:
    """Issue 11: POST /admin/faults with JSON nested 100,000 deep ended the process with a
    RecursionError; the depth is found without recursion and refused at once."""
    body = b"[" * 100_000 + b"]" * 100_000
    start = time.perf_counter()
    with pytest.raises(JsonBodyError, match="nested 100000 levels deep, at most 32"):
        load_json_body(body, max_bytes=1 << 20)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"latency_ms": NaN}', "NaN is not a JSON number"),
        (b'{"x": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"x": 1e999}', "number 1e999 is too large"),
        (b'{"n": ' + b"9" * 5000 + b"}", "4300 digits"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'{"a": 1,}', "not JSON"),
        (b"", "not JSON"),
        (b"x" * 70_000, "70000 bytes, at most 65536"),
    ],
)
def test_what_json_loads_would_take_or_crash_on_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(JsonBodyError, match=reason):
        load_json_body(body)


def test_brackets_inside_strings_do_not_count() -> None:
    body = json.dumps({"s": "[[[[" * 100, "t": ['\\"]]]', "{"]}).encode()
    assert nesting_depth(body) == 2
    assert load_json_body(body, max_depth=2)["t"] == ['\\"]]]', "{"]
    with pytest.raises(JsonBodyError, match="nested 2 levels deep, at most 1"):
        load_json_body(body, max_depth=1)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)  # fmt: skip


@given(JSON)
def test_well_formed_bodies_parse_as_json_loads_parses_them(value: object) -> None:
    body = json.dumps(value).encode()
    if nesting_depth(body) <= MAX_JSON_DEPTH:
        assert load_json_body(body) == json.loads(body)
