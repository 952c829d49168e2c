"""Bounded JSON request bodies: what a client sends as JSON is parsed without crashing or stalling.

``json.loads`` alone is not safe for what arrives over the network: it recurses once per
nesting level (100,000 ``[`` end the request with a ``RecursionError``, issue 11), reads any
size, and accepts ``NaN``, ``Infinity`` and ``1e999`` (a float infinity that later breaks
arithmetic and JSON output). :func:`load_json_body` checks the size first, then the nesting
depth with a linear scan that never recurses, and only then lets ``json.loads`` parse; non-finite
numbers are refused. Every refusal is a :class:`JsonBodyError` (a ``ValueError``) whose text
says what was wrong, for the caller's 400 answer. This module must never do I/O and never
decide what a valid document contains: the caller checks the fields.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any, Final

#: Default limit of a request body (the REST APIs' bodies are a few hundred bytes).
MAX_JSON_BYTES: Final = 64 * 1024
#: Default limit of the nesting depth (gematik's schemas nest three or four levels).
MAX_JSON_DEPTH: Final = 32

# A JSON string, escapes included (RFC 8259 §7); unambiguous, so matching is linear.
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS: Final = re.compile(rb"[^\[\]{}]+")
_STEP: Final = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JsonBodyError(ValueError):
    """The body is not a JSON document this service accepts; ``str()`` says why."""


def nesting_depth(raw: bytes) -> int:
    """The deepest ``[``/``{`` nesting outside strings, by a scan without recursion. On
    malformed input (an unterminated string) the count may be too high, never too low for a
    document ``json.loads`` would accept."""
    brackets = _BRACKETS.sub(b"", _STRING.sub(b"", raw))
    return max(accumulate(_STEP[b] for b in brackets), default=0)


def _refuse_constant(name: str) -> Any:
    raise JsonBodyError(f"{name} is not a JSON number (RFC 8259 §6)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonBodyError(f"number {text[:40]} is too large for a finite value")
    return value


def load_json_body(
    raw: bytes, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Parse ``raw`` (UTF-8 JSON) into Python values; raises :class:`JsonBodyError` for a body
    over ``max_bytes``, nested deeper than ``max_depth``, not UTF-8, not JSON, or holding a
    non-finite or absurdly long number."""
    if len(raw) > max_bytes:
        raise JsonBodyError(f"{len(raw)} bytes, at most {max_bytes} are accepted")
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise JsonBodyError(f"nested {depth} levels deep, at most {max_depth} are accepted")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonBodyError(
            f"not UTF-8 (RFC 8259 §8.1): {exc.reason} at byte {exc.start}"
        ) from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except JsonBodyError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonBodyError(
            f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise JsonBodyError(f"not acceptable JSON: {exc}"[:200]) from None
