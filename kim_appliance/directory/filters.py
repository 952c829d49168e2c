"""Search filters and attribute selection of the VZD's LDAP interface, against one entry.

Evaluates the Filter tree of :mod:`kim_appliance.protocols.ldap` with the three-valued logic of
RFC 4511 §4.5.1.7: an item the directory cannot judge (an attribute type it does not know, an
unknown option, a matching rule it lacks, an ordering on a certificate) is *Undefined*, which
is not an error and never matches, even under ``not``. Attribute names are case-insensitive and
have their aliases (``o``, ``l``, ``st``, ``streetAddress``, ...); directory strings compare with
caseIgnoreMatch (case folded, insignificant spaces dropped, RFC 4518 in spirit), integers as
integers, certificates byte for byte. Certificates travel with the ``;binary`` option (RFC 4523,
RFC 4522). This module must never see the network, the store or the LDAP codec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

from kim_appliance.protocols.ldap import (
    And,
    Approx,
    Equality,
    Extensible,
    Filter,
    GreaterOrEqual,
    LessOrEqual,
    Not,
    Or,
    Presence,
    Substrings,
)

CERTIFICATE = "userCertificate"
#: Every attribute type the VZD knows (digest §4.1), in its LDAP spelling.
KNOWN_ATTRIBUTES = (
    "objectClass", "uid", "telematikID", "displayName", "cn", "givenName", "sn", "title",
    "organization", "otherName", "street", "postalCode", "l", "st", "countryCode",
    "specialization", "domainID", "holder", "professionOID", "entryType", "lanr", "providedBy",
    "personalEntry", "dataFromAuthority", "active", "maxKOMLEadr", "changeDateTime", "mail",
    "komLeData", "kimData", "meta", CERTIFICATE,
)  # fmt: skip
_ALIASES = {
    "o": "organization",
    "commonname": "cn",
    "surname": "sn",
    "streetaddress": "street",
    "localityname": "l",
    "stateorprovincename": "st",
    "userid": "uid",
    "email": "mail",
    "rfc822mailbox": "mail",
}
_CANONICAL = {name.lower(): name for name in KNOWN_ATTRIBUTES} | {
    alias: next(n for n in KNOWN_ATTRIBUTES if n.lower() == target)
    for alias, target in _ALIASES.items()
}
_INTEGER_ATTRIBUTES = {"maxKOMLEadr", "entryType"}
_BOOLEAN_ATTRIBUTES = {"personalEntry", "dataFromAuthority", "active"}


class Truth(Enum):
    """RFC 4511 §4.5.1.7 three-valued filter result."""

    TRUE = "TRUE"
    FALSE = "FALSE"
    UNDEFINED = "Undefined"


def canonical(description: str) -> tuple[str, frozenset[str]] | None:
    """``(attribute type in LDAP spelling, lowercased options)`` of an attribute description,
    or ``None`` for a type the VZD does not know. Only ``binary`` is a known option, and only
    on ``userCertificate``; any other option makes the description unknown."""
    name, *options = description.split(";")
    attribute = _CANONICAL.get(name.lower())
    if attribute is None:
        return None
    opts = frozenset(o.lower() for o in options)
    if opts - {"binary"} or (opts and attribute != CERTIFICATE):
        return None
    return attribute, opts


def matches(f: Filter, attributes: dict[str, list[bytes]]) -> bool:
    """True when ``f`` evaluates to TRUE for an entry with ``attributes`` (LDAP spelling, as
    :meth:`DirectoryEntry.ldap_attributes` gives them)."""
    return evaluate(f, attributes) is Truth.TRUE


def evaluate(f: Filter, attributes: dict[str, list[bytes]]) -> Truth:
    match f:
        case And(filters):
            results = [evaluate(x, attributes) for x in filters]
            if Truth.FALSE in results:
                return Truth.FALSE
            return Truth.UNDEFINED if Truth.UNDEFINED in results else Truth.TRUE
        case Or(filters):
            results = [evaluate(x, attributes) for x in filters]
            if Truth.TRUE in results:
                return Truth.TRUE
            return Truth.UNDEFINED if Truth.UNDEFINED in results else Truth.FALSE
        case Not(inner):
            result = evaluate(inner, attributes)
            if result is Truth.UNDEFINED:
                return result
            return Truth.FALSE if result is Truth.TRUE else Truth.TRUE
        case Presence(description):
            known = canonical(description)
            return _truth(known is not None and bool(attributes.get(known[0])))
        case Equality(description, value) | Approx(description, value):
            # no approximate matching rule: approxMatch falls back to equality (RFC 4511
            # §4.5.1.7.6 leaves the algorithm to the server; OpenLDAP does the same)
            return _compare(description, value, attributes, _equal)
        case GreaterOrEqual(description, value):
            return _compare(description, value, attributes, lambda a, b: a >= b)
        case LessOrEqual(description, value):
            return _compare(description, value, attributes, lambda a, b: a <= b)
        case Substrings(description, initial, middle, final):
            return _substrings(description, initial, middle, final, attributes)
        case Extensible():
            return Truth.UNDEFINED  # no extensible matching rules in this directory
    raise TypeError(f"not a Filter: {f!r}")  # pragma: no cover


def _truth(value: bool) -> Truth:
    return Truth.TRUE if value else Truth.FALSE


def normalise(value: bytes) -> str | None:
    """caseIgnoreMatch preparation: UTF-8, case folded, runs of spaces collapsed, leading and
    trailing spaces dropped; ``None`` if the value is not UTF-8 (then Undefined)."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return " ".join(text.casefold().split())


def _equal(a: Any, b: Any) -> bool:
    return bool(a == b)


def _compare(
    description: str,
    assertion: bytes,
    attributes: dict[str, list[bytes]],
    check: Callable[[Any, Any], bool],
) -> Truth:
    known = canonical(description)
    if known is None:
        return Truth.UNDEFINED
    name = known[0]
    values = attributes.get(name, [])
    if name == CERTIFICATE:
        if check is not _equal:
            return Truth.UNDEFINED  # no ordering rule for certificates
        return _truth(assertion in values)
    if name in _INTEGER_ATTRIBUTES:
        wanted = _integer(assertion)
        if wanted is None:
            return Truth.UNDEFINED  # assertion invalid for the syntax
        return _truth(any(check(v, wanted) for v in map(_integer, values) if v is not None))
    if name in _BOOLEAN_ATTRIBUTES and check is not _equal:
        return Truth.UNDEFINED  # booleanMatch has no ordering
    wanted_text = normalise(assertion)
    if wanted_text is None:
        return Truth.UNDEFINED
    return _truth(any(check(v, wanted_text) for v in map(normalise, values) if v is not None))


def _integer(value: bytes) -> int | None:
    try:
        return int(value.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


def _substrings(
    description: str,
    initial: bytes | None,
    middle: Iterable[bytes],
    final: bytes | None,
    attributes: dict[str, list[bytes]],
) -> Truth:
    known = canonical(description)
    if known is None or known[0] == CERTIFICATE or known[0] in _BOOLEAN_ATTRIBUTES:
        return Truth.UNDEFINED  # no substrings rule for these syntaxes
    parts = [normalise(p) for p in (initial or b"", *middle, final or b"")]
    if any(p is None for p in parts):
        return Truth.UNDEFINED
    head, *inner, tail = [p or "" for p in parts]
    for raw in attributes.get(known[0], []):
        value = normalise(raw)
        if value is None or not value.startswith(head):
            continue
        position = len(head)
        for piece in inner:
            found = value.find(piece, position)
            if found < 0:
                break
            position = found + len(piece)
        else:
            if value.endswith(tail) and len(value) - len(tail) >= position:
                return Truth.TRUE
    return Truth.FALSE


def select_attributes(
    attributes: dict[str, list[bytes]], selectors: Iterable[str], *, types_only: bool = False
) -> dict[str, list[bytes]]:
    """The attributes a SearchResultEntry carries (RFC 4511 §4.5.1.8): all user attributes for
    no selector or ``*``, none for ``1.1`` alone, else the named ones (any case, aliases allowed,
    unknown names ignored). Certificates are always returned as ``userCertificate;binary``
    (RFC 4523 §2.1). ``types_only`` leaves the value lists empty."""
    requested = list(selectors)
    wanted: set[str] = set()
    everything = not requested  # RFC 4511 §4.5.1.8: an empty list means all user attributes
    chosen = [s for s in requested if s != "1.1"]
    for selector in chosen:
        if selector == "*":
            everything = True
        elif selector == "+":
            continue  # operational attributes: the VZD publishes none
        else:
            known = canonical(selector)
            if known is not None:
                wanted.add(known[0])
    result: dict[str, list[bytes]] = {}
    for name, values in attributes.items():
        if not (everything or name in wanted):
            continue
        label = f"{CERTIFICATE};binary" if name == CERTIFICATE else name
        result[label] = [] if types_only else list(values)
    return result
