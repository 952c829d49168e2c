"""Undo CRLF canonicalisation of a binary signed entity (digest §2.10).

gematik's sample ``inputEmail.txt.03.signedwrap`` (and the decrypted plaintext of every message
built like it) carries the DER SignedData *after* line-ending canonicalisation: each lone CR
(0x0D) and each lone LF (0x0A) became CRLF, and genuine CRLFs stayed. That corrupts every
definite length around them. A receiver should be forgiving (digest §2.10), so this module
guesses the original encoding back: a DER-guided backtracking parser walks the TLV structure
and decides, at every CRLF of the damaged input, whether it was a CRLF, a lone CR or a lone LF.
Definite lengths, the end of input and per-type rules (OIDs, INTEGER, times, printable strings)
prune the structure; what stays ambiguous inside primitive contents is enumerated in order of a
small cost model (known OIDs first, text keeps its CRLFs, binary is neutral), and the caller
picks the candidate whose signature verifies (``repair_signed_data``).

This module is a fallback for small damaged messages. It must never trust a candidate by itself
(only a verifier can say which one is right), never raise on garbage (it returns ``[]``/``None``)
and never work without bound: structural steps, alternatives and candidates are all capped.
"""

from __future__ import annotations

import heapq
import inspect
import re
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from itertools import combinations, pairwise
from typing import Final

from kim_appliance.cms import oids as _kim_oids

__all__ = ["repair_signed_data", "undo_crlf_canonicalisation"]

_CR: Final = 0x0D
_LF: Final = 0x0A

# Work limits (digest §2.10 asks for forgiveness, not for unbounded search).
MAX_STEPS: Final = 100_000
"""Structural parse steps (element starts, length guesses, content end guesses) per input."""
MAX_ALTERNATIVES: Final = 64
"""Back pointers kept per parse state (damaged offset, original bytes so far)."""
MAX_PER_END: Final = 16
"""Structural readings kept per element or sibling run that end at the same offset."""
MAX_ELEMENT_READINGS: Final = 4096
"""Readings kept per element start (a long primitive has one per possible end)."""
MAX_SKELETONS: Final = 64
"""Complete structural parses considered; contents are then enumerated within each."""
MAX_SLOT_COMBINATIONS: Final = 20_000
"""Collapse combinations examined inside one primitive content."""
MAX_SLOT_WORK: Final = 200_000
"""Combinations times collapses examined inside one primitive content."""
MAX_DEPTH: Final = 64
"""Nesting depth of constructed (and encapsulated) elements."""
MAX_CANDIDATE_BYTES: Final = 64 * 1024 * 1024
"""Bytes of candidates built per input (a damaged 3 MB entity gets about twenty tries)."""
_VALIDATE_LIMIT: Final = 4096
"""Primitive contents up to this length are rebuilt and checked per type for each guess."""

# Universal tags that must be primitive / constructed in DER (X.690 §8).
_PRIMITIVE_ONLY: Final = frozenset({1, 2, 5, 6, 9, 10, 13, 23, 24})
_CONSTRUCTED_ONLY: Final = frozenset({16, 17})
# Content may never contain CR or LF: UTCTime, GeneralizedTime, NumericString, PrintableString.
_NO_CRLF_TYPES: Final = frozenset({0x17, 0x18, 0x12, 0x13})
# Character strings: a CR/LF in there is text, so a genuine CRLF is the likely reading.
_TEXT_TYPES: Final = frozenset({0x0C, 0x14, 0x16, 0x1A, 0x1C, 0x1E})

# Per-pair costs (keep CRLF, was lone CR, was lone LF). In binary content every reading is as
# likely as any other; in text a CRLF is most likely genuine, and a lone LF beats a lone CR.
_BINARY_COSTS: Final = (0.0, 0.0, 0.0)
_TEXT_COSTS: Final = (0.0, 3.0, 2.0)
_NON_MINIMAL_LENGTH_COST: Final = 2.0
_RARE_TAG_COST: Final = 1.0


class _BudgetExceeded(Exception):
    """The structural search used up MAX_STEPS; the input counts as unrepairable."""


# --- OID prior --------------------------------------------------------------------------------

# OIDs that the KIM profile and its certificates use all the time (digest §2.5-2.8): a collapse
# that yields one of these is the most likely reading of an OID.
_COMMON_OIDS: Final = frozenset(
    {v for k, v in vars(_kim_oids).items() if k.startswith("ID_") and isinstance(v, str)}
    | {f"2.5.4.{n}" for n in (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 17, 42, 97)}
    | {f"2.5.29.{n}" for n in (14, 15, 17, 19, 31, 32, 35, 37)}
    | {"1.3.6.1.5.5.7.1.1", "1.3.6.1.5.5.7.48.1", "1.3.6.1.5.5.7.48.2", "1.3.36.8.3.3"}
)
_KNOWN_ARCS: Final = (
    "1.2.840.113549.",
    "1.2.840.10045.",
    "1.2.276.0.76.",
    "1.3.36.",
    "1.3.6.1.5.5.7.",
    "1.3.132.",
    "2.5.4.",
    "2.5.29.",
    "2.16.840.1.101.3.4.",
)


def _asn1crypto_oids() -> frozenset[str]:
    """Every OID asn1crypto has a name for (its ObjectIdentifier maps)."""
    from asn1crypto import algos, cms, core, keys, x509

    found: set[str] = set()
    for module in (algos, cms, keys, x509):
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, core.ObjectIdentifier):
                mapping = getattr(obj, "_map", None)
                if isinstance(mapping, dict):
                    found.update(k for k in mapping if isinstance(k, str))
    return frozenset(found)


_KNOWN_OIDS: Final = _asn1crypto_oids()


def _decode_oid(content: bytes) -> str | None:
    """Dotted form of an OID content, or None if it is not a valid DER encoding."""
    if not content or content[-1] & 0x80:
        return None
    arcs: list[int] = []
    value = 0
    fresh = True
    for byte in content:
        if fresh and byte == 0x80:  # non-minimal subidentifier
            return None
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])


def _oid_cost(content: bytes) -> float | None:
    dotted = _decode_oid(content)
    if dotted is None:
        return None
    if dotted in _COMMON_OIDS:
        return 0.0
    if dotted in _KNOWN_OIDS:
        return 1.0
    if dotted.startswith(_KNOWN_ARCS):
        return 3.0
    return 5.0


def _content_valid(tag: int, content: bytes) -> bool:
    """Per-type DER rules a guessed primitive content must follow."""
    if tag == 0x02 or tag == 0x0A:  # INTEGER, ENUMERATED: minimal two's complement
        if not content:
            return False
        if len(content) > 1 and (
            (content[0] == 0x00 and content[1] < 0x80)
            or (content[0] == 0xFF and content[1] >= 0x80)
        ):
            return False
    elif tag == 0x03 and (  # BIT STRING: unused-bits octet 0..7, and 0 when empty
        not content or content[0] > 7 or (len(content) == 1 and content[0] != 0)
    ):
        return False
    return True


# --- structure ------------------------------------------------------------------------------


class _Span:
    """Damaged bytes [start, end) that contain no CR/LF pair: copied as they are."""

    __slots__ = ("end", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end


class _Cat:
    """Concatenation of two pieces of a candidate (a persistent list, no copying)."""

    __slots__ = ("left", "right")

    def __init__(self, left: _Node, right: _Node) -> None:
        self.left = left
        self.right = right


class _Slot:
    """Content of a primitive element whose damaged span [start, end) holds CR/LF pairs.

    Exactly ``collapses`` of the pairs (``pairs`` are their damaged offsets) were a lone CR or
    LF; which ones is what the alternatives enumerate, cheapest first.
    """

    __slots__ = ("_alternatives", "_pairs", "collapses", "end", "length", "start", "tag")

    def __init__(
        self,
        tag: int,
        start: int,
        end: int,
        length: int,
        pairs: tuple[list[int], int, int],
        collapses: int,
    ) -> None:
        self.tag = tag
        self.start = start
        self.end = end
        self.length = length
        self._pairs = pairs  # (all pair offsets, index of the first inside, how many inside)
        self.collapses = collapses
        self._alternatives: list[tuple[float, tuple[tuple[int, int], ...]]] | None = None

    def build(self, data: bytes, choice: tuple[tuple[int, int], ...]) -> bytes:
        """The original content under ``choice`` ((pair offset, CR or LF) per collapse)."""
        parts: list[bytes] = []
        pos = self.start
        for offset, byte in choice:
            parts.append(data[pos:offset])
            parts.append(bytes((byte,)))
            pos = offset + 2
        parts.append(data[pos : self.end])
        return b"".join(parts)

    def alternatives(
        self, data: bytes, limit: int
    ) -> list[tuple[float, tuple[tuple[int, int], ...]]]:
        """Valid collapse choices, cheapest first (at most ``limit``).

        Choices come in order of how many collapses read as CR (fewest first), which is the
        order of their text/binary cost; only OIDs, whose cost depends on the value, are all
        examined and sorted. Examination is capped (MAX_SLOT_COMBINATIONS, MAX_SLOT_WORK).
        """
        if self._alternatives is not None:
            return self._alternatives
        text = self.tag in _TEXT_TYPES or (self.tag == 0x04 and _looks_like_text(data, self))
        _, cr_cost, lf_cost = _TEXT_COSTS if text else _BINARY_COSTS
        is_oid = self.tag == 0x06
        found: list[tuple[float, tuple[tuple[int, int], ...]]] = []
        every, first, n = self._pairs
        pairs = every[first : first + n]
        c = self.collapses
        budget = min(MAX_SLOT_COMBINATIONS, max(1, MAX_SLOT_WORK // (c + 1)))
        examined = 0
        for crs in range(c + 1):
            base = cr_cost * crs + lf_cost * (c - crs)
            for chosen in combinations(range(n), c):
                for cr_at in combinations(range(c), crs):
                    examined += 1
                    if examined > budget or (not is_oid and len(found) >= limit):
                        break
                    readings = [_LF] * c
                    for k in cr_at:
                        readings[k] = _CR
                    choice = tuple(zip((pairs[i] for i in chosen), readings, strict=True))
                    if _cr_then_lf(choice):
                        continue
                    cost = base
                    if is_oid:
                        oid_cost = (
                            _oid_cost(self.build(data, choice))
                            if self.length <= _VALIDATE_LIMIT
                            else None
                        )
                        if oid_cost is None:
                            continue
                        cost += oid_cost
                    elif self.tag in (0x02, 0x03, 0x0A) and not _content_valid(
                        self.tag, self._head(data, choice)
                    ):
                        continue
                    found.append((cost, choice))
                else:
                    continue
                break
            else:
                continue
            break
        found.sort(key=lambda item: item[0])  # stable: keeps the generation order on ties
        self._alternatives = found[:limit]
        return self._alternatives

    def _head(self, data: bytes, choice: tuple[tuple[int, int], ...]) -> bytes:
        """The first two original content bytes under ``choice`` (enough for _content_valid)."""
        if self.length < 2:
            return self.build(data, choice)
        cut = min(self.end, self.start + 6)
        head = _Slot(self.tag, self.start, cut, 0, ([], 0, 0), 0)
        return head.build(data, tuple(x for x in choice if x[0] + 2 <= cut))[:2]


_Node = bytes | _Span | _Slot | _Cat | None
# (end offset in the damaged input, original length, cost, node)
_Result = tuple[int, int, float, _Node]


def _tag_allowed(first: int) -> bool:
    """X.690 rules for a low-number identifier octet: no EOC here, no reserved universal tags,
    SEQUENCE/SET constructed, the scalar universal types primitive."""
    if first >> 6 != 0 or first & 0x1F == 0x1F:
        return True
    number = first & 0x1F
    if number in (0, 14, 15):
        return False
    if first & 0x20:
        return number not in _PRIMITIVE_ONLY
    return number not in _CONSTRUCTED_ONLY


def _cr_then_lf(choice: tuple[tuple[int, int], ...]) -> bool:
    """A lone CR directly followed by a lone LF would have been a CRLF: not a preimage."""
    return any(a[1] == _CR and b[1] == _LF and b[0] == a[0] + 2 for a, b in pairwise(choice))


def _looks_like_text(data: bytes, slot: _Slot) -> bool:
    sample = data[slot.start : min(slot.end, slot.start + 4096)]
    if not sample:
        return False
    printable = sum(1 for b in sample if 0x20 <= b < 0x7F or b in (0x09, _CR, _LF))
    return printable >= 0.95 * len(sample)


def _cat(left: _Node, right: _Node) -> _Node:
    if left is None:
        return right
    if right is None:
        return left
    return _Cat(left, right)


class _Search:
    """The DER-guided backtracking parse of one damaged input."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.pairs = [m.start() for m in re.finditer(b"\r\n", data)]
        self.steps = 0
        self.elem_memo: dict[int, list[_Result]] = {}
        self.children_memo: dict[tuple[int, int], list[_Result]] = {}

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise _BudgetExceeded

    # Reading one original byte: a CRLF pair reads as CR (pair kept, LF follows), as a lone CR
    # or as a lone LF (pair collapsed). Everything else reads as itself.
    def read(self, pos: int) -> list[tuple[int, int]]:
        data = self.data
        if pos >= self.size:
            return []
        if data[pos] == _CR and pos + 1 < self.size and data[pos + 1] == _LF:
            return [(_CR, pos + 1), (_CR, pos + 2), (_LF, pos + 2)]
        return [(data[pos], pos + 1)]

    def read_tag(self, pos: int) -> list[tuple[bytes, int, bool, int, float]]:
        """(tag octets, first octet, constructed, next offset, cost) for each reading."""
        out: list[tuple[bytes, int, bool, int, float]] = []
        for first, nxt in self.read(pos):
            constructed = bool(first & 0x20)
            cls = first >> 6
            number = first & 0x1F
            if number == 0x1F:
                for tail, end in self._read_high_tag(nxt, 0):
                    out.append((bytes((first,)) + tail, first, constructed, end, 0.0))
                continue
            if not _tag_allowed(first):
                continue
            # ENUMERATED, RELATIVE-OID: rare in CMS, and exactly what a damaged LF/CR looks like
            cost = _RARE_TAG_COST if cls == 0 and number in (10, 13) else 0.0
            out.append((bytes((first,)), first, constructed, nxt, cost))
        return out

    def _read_high_tag(self, pos: int, count: int) -> list[tuple[bytes, int]]:
        if count >= 4:
            return []
        out: list[tuple[bytes, int]] = []
        for byte, nxt in self.read(pos):
            if count == 0 and byte == 0x80:
                continue
            if byte & 0x80:
                out.extend((bytes((byte,)) + t, e) for t, e in self._read_high_tag(nxt, count + 1))
            elif count > 0 or byte >= 0x1F:
                # X.690 8.1.2.4: the high-tag form only for tag numbers of 31 and more
                out.append((bytes((byte,)), nxt))
        return out

    def read_length(self, pos: int) -> list[tuple[bytes, int | None, int, float]]:
        """(length octets, length or None for indefinite, next offset, cost) per reading."""
        out: list[tuple[bytes, int | None, int, float]] = []
        for first, nxt in self.read(pos):
            if first < 0x80:
                out.append((bytes((first,)), first, nxt, 0.0))
            elif first == 0x80:
                out.append((b"\x80", None, nxt, 0.0))
            elif first <= 0x84:
                for octets, end in self._read_n(nxt, first & 0x7F):
                    value = int.from_bytes(octets, "big")
                    minimal = octets[0] != 0 and (len(octets) > 1 or value >= 0x80)
                    cost = 0.0 if minimal else _NON_MINIMAL_LENGTH_COST
                    out.append((bytes((first,)) + octets, value, end, cost))
        return out

    def _read_n(self, pos: int, n: int) -> list[tuple[bytes, int]]:
        if n == 0:
            return [(b"", pos)]
        out: list[tuple[bytes, int]] = []
        for byte, nxt in self.read(pos):
            out.extend((bytes((byte,)) + rest, end) for rest, end in self._read_n(nxt, n - 1))
        return out

    def element(self, pos: int, depth: int) -> list[_Result]:
        """Every way to read one TLV starting at damaged offset ``pos``."""
        memo = self.elem_memo.get(pos)
        if memo is not None:
            return memo
        self.step()
        results: list[_Result] = []
        per_end: dict[tuple[int, int], int] = {}
        if depth <= MAX_DEPTH:
            for tag_octets, tag, constructed, after_tag, tag_cost in self.read_tag(pos):
                for len_octets, length, content_at, len_cost in self.read_length(after_tag):
                    header = tag_octets + len_octets
                    cost = tag_cost + len_cost
                    if length is not None and length > self.size - content_at:
                        continue
                    if constructed:
                        inner = (
                            self.children_indefinite(content_at, depth + 1)
                            if length is None
                            else self.children(content_at, length, depth + 1)
                        )
                    elif length is None:
                        continue
                    else:
                        inner = self.primitive(tag, content_at, length, depth + 1)
                    for end, out_len, inner_cost, node in inner:
                        self.step()
                        key = (end, len(header) + out_len)
                        if per_end.get(key, 0) >= MAX_PER_END:
                            continue
                        per_end[key] = per_end.get(key, 0) + 1
                        results.append(
                            (end, len(header) + out_len, cost + inner_cost, _cat(header, node))
                        )
                        if len(results) >= MAX_ELEMENT_READINGS:
                            break
                    if len(results) >= MAX_ELEMENT_READINGS:
                        break
                if len(results) >= MAX_ELEMENT_READINGS:
                    break
        self.elem_memo[pos] = results
        return results

    def children(self, pos: int, length: int, depth: int) -> list[_Result]:
        """Every way to read a run of elements from ``pos`` that is ``length`` original bytes."""
        if length == 0:
            return [(pos, 0, 0.0, None)]
        key = (pos, length)
        memo = self.children_memo.get(key)
        if memo is None:
            memo = self._run(pos, length, depth)
            self.children_memo[key] = memo
        return memo

    def children_indefinite(self, pos: int, depth: int) -> list[_Result]:
        """Every way to read elements from ``pos`` up to and including an end-of-contents."""
        return self._run(pos, None, depth)

    def _run(self, pos: int, length: int | None, depth: int) -> list[_Result]:
        """Read sibling elements: exactly ``length`` original bytes, or up to an EOC if None.

        A forward pass over states (damaged offset, original bytes so far) records back
        pointers only; every element is at least two bytes, so taking states in order of bytes
        so far visits each once. Paths are spelled out afterwards, at most MAX_ALTERNATIVES.
        """
        data = self.data
        start = (pos, 0)
        edges: dict[tuple[int, int], list[tuple[tuple[int, int], _Result]]] = {start: []}
        finals: list[tuple[tuple[int, int], _Result | None]] = []
        queue: list[tuple[int, int]] = [(0, pos)]
        while queue and len(finals) < MAX_ELEMENT_READINGS:
            done, at = heapq.heappop(queue)
            here = (at, done)
            self.step()
            if length is None:
                if data[at : at + 2] == b"\x00\x00":
                    finals.append((here, None))
                    continue
            elif length - done > self.size - at:
                continue
            for result in self.element(at, depth):
                self.step()
                total = done + result[1]
                if length is not None:
                    if total > length:
                        continue
                    if total == length:
                        finals.append((here, result))
                        continue
                target = (result[0], total)
                incoming = edges.get(target)
                if incoming is None:
                    edges[target] = [(here, result)]
                    heapq.heappush(queue, (total, result[0]))
                elif len(incoming) < MAX_ALTERNATIVES:
                    incoming.append((here, result))
        results: list[_Result] = []
        per_end: dict[tuple[int, int], int] = {}
        for here, last in finals:
            suffix: _Node
            if last is None:
                end, total, cost, suffix = here[0] + 2, here[1] + 2, 0.0, b"\x00\x00"
            else:
                end, total, cost, suffix = last[0], here[1] + last[1], last[2], last[3]
            # Readings that end alike look the same to the parent: keep a few of each, so that
            # one ambiguous run cannot crowd out the other ends.
            stack: list[tuple[tuple[int, int], _Node, float]] = [(here, suffix, cost)]
            while stack and per_end.get((end, total), 0) < MAX_PER_END:
                self.step()
                state, node, path_cost = stack.pop()
                if state == start:
                    results.append((end, total, path_cost, node))
                    per_end[(end, total)] = per_end.get((end, total), 0) + 1
                    continue
                for previous, result in edges[state]:
                    stack.append((previous, _cat(result[3], node), path_cost + result[2]))
        return results

    def primitive(self, tag: int, pos: int, length: int, depth: int) -> list[_Result]:
        """Every way to read ``length`` original content bytes from ``pos``."""
        data = self.data
        if (tag == 0x01 and length != 1) or (tag == 0x05 and length != 0):
            return []
        results: list[_Result] = []
        nested_ends: set[int] = set()
        # OCTET STRING / BIT STRING often encapsulate DER (extnValue, subjectPublicKey): their
        # inner lengths tell which CRLFs were lone, better than any guess (digest §2.10).
        if tag == 0x04 and length >= 2 and data[pos] in (0x30, 0x31):
            for res in self.children(pos, length, depth):
                results.append(res)
                nested_ends.add(res[0])
        elif tag == 0x03 and length >= 3 and data[pos] == 0x00 and data[pos + 1] in (0x30, 0x31):
            for inner_end, out_len, cost, inner in self.children(pos + 1, length - 1, depth):
                results.append((inner_end, out_len + 1, cost, _cat(b"\x00", inner)))
                nested_ends.add(inner_end)
        if tag in _NO_CRLF_TYPES:
            end = pos + length
            if end <= self.size and _CR not in data[pos:end] and _LF not in data[pos:end]:
                results.append((end, length, 0.0, _Span(pos, end)))
            return results
        pairs = self.pairs
        first_pair = bisect_left(pairs, pos)
        end = pos + length
        while end <= self.size:
            self.step()
            collapses = end - pos - length
            inside = bisect_right(pairs, end - 2) - first_pair
            if collapses > inside:
                break
            if end not in nested_ends:
                if inside == 0:
                    node: _Node = _Span(pos, end)
                else:
                    node = _Slot(tag, pos, end, length, (pairs, first_pair, inside), collapses)
                results.append((end, length, 0.0, node))
            end += 1
        return results


def _pieces(node: _Node) -> list[bytes | _Span | _Slot]:
    """The candidate's pieces in order (iterative: nesting of _Cat can be deep)."""
    out: list[bytes | _Span | _Slot] = []
    stack: list[_Node] = [node]
    while stack:
        item = stack.pop()
        if item is None:
            continue
        if isinstance(item, _Cat):
            stack.append(item.right)
            stack.append(item.left)
        else:
            out.append(item)
    return out


def _canonicalise(data: bytes) -> bytes:
    """What the damaging sender did: every lone CR or LF becomes CRLF."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def _parses_as_is(data: bytes) -> bool:
    """True if ``data`` is exactly one BER element whose definite lengths all agree."""
    size = len(data)
    pos = 0
    ends: list[int | None] = []  # open constructed elements: end offset, None = indefinite
    started = False
    while True:
        while ends and ends[-1] is not None and pos == ends[-1]:
            ends.pop()
        if started and not ends:
            return pos == size
        if ends and ends[-1] is None and data[pos : pos + 2] == b"\x00\x00":
            pos += 2
            ends.pop()
            continue
        started = True
        if pos >= size:
            return False
        first = data[pos]
        pos += 1
        if not _tag_allowed(first):
            return False
        if first & 0x1F == 0x1F:
            # X.690 8.1.2.4: no leading 0x80, and a one-octet high tag is 31 or more
            if pos >= size or data[pos] == 0x80 or data[pos] < 0x1F:
                return False
            while pos < size and data[pos] & 0x80:
                pos += 1
            pos += 1
        if pos >= size:
            return False
        length_octet = data[pos]
        pos += 1
        length: int | None
        if length_octet < 0x80:
            length = length_octet
        elif length_octet == 0x80:
            length = None
        elif length_octet <= 0x84:
            n = length_octet & 0x7F
            if pos + n > size:
                return False
            length = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        else:
            return False
        limit = ends[-1] if ends and ends[-1] is not None else size
        if length is None:
            if not first & 0x20:
                return False
            ends.append(None)
            continue
        if pos + length > limit:
            return False
        if first & 0x20:
            ends.append(pos + length)
        else:
            pos += length


def _candidates(damaged: bytes, limit: int) -> Iterator[bytes]:
    """Repaired encodings, cheapest first, at most ``limit`` of them."""
    if limit <= 0:
        return
    if _parses_as_is(damaged):
        yield damaged
        return
    if b"\r\n" not in damaged:
        return
    search = _Search(damaged)
    try:
        tops = [r for r in search.element(0, 0) if r[0] == len(damaged)]
    except (_BudgetExceeded, RecursionError):
        return
    # Only a true preimage canonicalises back to the input; if the input has lone CR/LF it was
    # not (only) canonicalised and this check would reject everything, so it is skipped.
    check_preimage = _canonicalise(damaged) == damaged
    skeletons: list[tuple[float, list[bytes | _Span | _Slot], list[_Slot]]] = []
    for _end, _len, cost, node in sorted(tops, key=lambda r: r[2])[:MAX_SKELETONS]:
        pieces = _pieces(node)
        slots = [p for p in pieces if isinstance(p, _Slot)]
        skeletons.append((cost, pieces, slots))
    # k-best enumeration over the product of each skeleton's slot alternatives: every vector
    # has one parent (lower its last raised index), so each combination is pushed once.
    heap: list[tuple[float, int, int, tuple[int, ...]]] = []
    counter = 0
    alts_of: list[list[list[tuple[float, tuple[tuple[int, int], ...]]]]] = []
    for index, (cost, _, slots) in enumerate(skeletons):
        alts = [s.alternatives(damaged, limit) for s in slots]
        alts_of.append(alts)
        if any(not a for a in alts):
            continue
        start = tuple(0 for _ in alts)
        heapq.heappush(heap, (cost + sum(a[0][0] for a in alts), counter, index, start))
        counter += 1
    seen: set[bytes] = set()
    produced = 0
    popped = 0
    built = 0
    while (
        heap
        and produced < limit
        and popped < 16 * limit + 1024
        and built + len(damaged) <= MAX_CANDIDATE_BYTES
    ):
        total, _, index, vector = heapq.heappop(heap)
        popped += 1
        alts = alts_of[index]
        last = max((i for i, v in enumerate(vector) if v), default=0)
        for j in range(last, len(vector)):
            if vector[j] + 1 < len(alts[j]):
                raised = (*vector[:j], vector[j] + 1, *vector[j + 1 :])
                delta = alts[j][vector[j] + 1][0] - alts[j][vector[j]][0]
                heapq.heappush(heap, (total + delta, counter, index, raised))
                counter += 1
        pieces = skeletons[index][1]
        slot_choice = {
            id(slot): alts[j][v][1]
            for j, (slot, v) in enumerate(zip(skeletons[index][2], vector, strict=True))
        }
        parts: list[bytes] = []
        for piece in pieces:
            if isinstance(piece, bytes):
                parts.append(piece)
            elif isinstance(piece, _Span):
                parts.append(damaged[piece.start : piece.end])
            else:
                parts.append(piece.build(damaged, slot_choice[id(piece)]))
        candidate = b"".join(parts)
        built += len(candidate)
        if candidate in seen or (check_preimage and _canonicalise(candidate) != damaged):
            continue
        seen.add(candidate)
        produced += 1
        yield candidate


def undo_crlf_canonicalisation(damaged: bytes, *, max_candidates: int = 64) -> list[bytes]:
    """Guess the DER encoding(s) that CRLF canonicalisation turned into ``damaged`` (§2.10).

    ``damaged`` is the body of the signed entity after its MIME headers. Returns up to
    ``max_candidates`` encodings, most likely first, each one complete BER/DER element whose
    definite lengths all agree and which canonicalises back to ``damaged``. An input that
    already parses is returned as ``[damaged]``; an input that cannot be repaired within the
    work limits gives ``[]``. Never raises on malformed input.
    """
    return list(_candidates(damaged, max_candidates))


def repair_signed_data(
    damaged: bytes,
    verify: Callable[[bytes], bool],
    *,
    max_candidates: int = 4096,
    max_seconds: float | None = None,
) -> bytes | None:
    """The first repair candidate that ``verify`` accepts, or None (digest §2.10).

    ``verify`` gets each candidate DER in turn (most likely first) and says whether it is the
    real one, typically by checking messageDigest and the signature of the SignedData. A
    ``ValueError`` from ``verify`` (for instance a ``CmsError`` about a malformed candidate)
    counts as "no". At most ``max_candidates`` candidates are tried, and none is started after
    ``max_seconds`` (a receiver that must answer quickly bounds the work a sender can cause:
    one verification costs about a millisecond, and fuzzing found inputs with thousands of
    candidates, issue 11).
    """
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    for candidate in _candidates(damaged, max_candidates):
        try:
            if verify(candidate):
                return candidate
        except ValueError:
            continue
        if deadline is not None and time.perf_counter() > deadline:
            return None
    return None
