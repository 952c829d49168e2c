"""BER framing and the LDAPMessage codec, on ldap3's RFC 4511 ASN.1 module and pyasn1.

Only the outer TLV header of a PDU is read here by hand, to know where one LDAPMessage ends and
to refuse oversized PDUs before buffering them (RFC 4511 §5.1: definite lengths only). Every
PDU itself is decoded and every response encoded by pyasn1 with ldap3's definitions. This module
must never keep connection state or decide how to answer a request.
"""

from __future__ import annotations

import warnings
from typing import Any

from pyasn1.codec.ber import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type.namedtype import NamedType, NamedTypes

from ._events import (
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
    ResultCode,
    Substrings,
)

with warnings.catch_warnings():
    # ldap3 2.9 imports tagMap and typeMap, names pyasn1 0.6 deprecated. The warning is about
    # ldap3's code, not ours, and it showed in the output of every vendor's test run that loads
    # our pytest plugin (their filterwarnings do not know it; ours in pyproject.toml only
    # covers our own runs, issue 15). Filtered for this import only, these two messages only.
    warnings.filterwarnings(
        "ignore", message="(tag|type)Map is deprecated", category=DeprecationWarning
    )
    from ldap3.protocol import rfc4511 as asn
    from ldap3.protocol.rfc2696 import Cookie, RealSearchControlValue, Size

#: RFC 4511 §4.4.1: responseName of the Notice of Disconnection.
NOTICE_OF_DISCONNECTION = "1.3.6.1.4.1.1466.20036"
#: RFC 4511 §4.14: the StartTLS extended operation (requestName and responseName).
START_TLS_OID = "1.3.6.1.4.1.1466.20037"
#: RFC 2696: the simple paged results control.
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
#: Deepest nesting of and/or/not the core accepts (a real query nests two or three levels).
MAX_FILTER_DEPTH = 32


# --- the decoding schema ---------------------------------------------------------------
# ldap3 declares the recursive Filter by assigning And/Or/Not.componentType after the classes
# are built, but pyasn1 (0.5+) copies componentType into each *instance* when it is created,
# and Filter's instances of And, Or and Not were created before that assignment. ldap3 itself
# never decodes a Filter (it only encodes requests), so it never notices. For decoding, the
# cycle Filter -> and/or/not -> Filter is tied here between instances, leaving ldap3's module
# untouched, and SearchRequest/ProtocolOp/LDAPMessage are rebuilt around that Filter.


class _Filter(asn.Filter):  # type: ignore[misc]
    """ldap3's Filter CHOICE, for an instance that sits in a cycle: pyasn1 formats schema
    objects into messages eagerly (NamedTypes of SEQUENCEs with repeated tags), and the default
    repr would recurse through the cycle forever."""

    def __repr__(self) -> str:
        return "<Filter (recursive)>"


def _tie(node: Any, component: Any) -> None:
    """Set the read-only ``componentType`` of one pyasn1 schema instance."""
    node.__dict__["componentType"] = component
    node._readOnly["componentType"] = component


def _with(named_types: Any, name: str, replacement: Any) -> NamedTypes:
    return NamedTypes(
        *(
            type(nt)(nt.name, replacement if nt.name == name else nt.asn1Object)
            for nt in named_types.namedTypes
        )
    )


def _request_schema() -> Any:
    and_, or_, not_ = asn.And(), asn.Or(), asn.Not()
    filter_ = _Filter(
        componentType=NamedTypes(
            NamedType("and", and_),
            NamedType("or", or_),
            NamedType("notFilter", not_),
            NamedType("equalityMatch", asn.EqualityMatch()),
            NamedType("substringFilter", asn.SubstringFilter()),
            NamedType("greaterOrEqual", asn.GreaterOrEqual()),
            NamedType("lessOrEqual", asn.LessOrEqual()),
            NamedType("present", asn.Present()),
            NamedType("approxMatch", asn.ApproxMatch()),
            NamedType("extensibleMatch", asn.ExtensibleMatch()),
        )
    )
    _tie(and_, filter_)
    _tie(or_, filter_)
    _tie(not_, NamedTypes(NamedType("innerNotFilter", filter_)))
    search = asn.SearchRequest(
        componentType=_with(asn.SearchRequest.componentType, "filter", filter_)
    )
    protocol_op = asn.ProtocolOp(
        componentType=_with(asn.ProtocolOp.componentType, "searchRequest", search)
    )
    return asn.LDAPMessage(
        componentType=_with(asn.LDAPMessage.componentType, "protocolOp", protocol_op)
    )


_LDAP_MESSAGE = _request_schema()


class MalformedPdu(ValueError):
    """A PDU that is not a well-formed LDAPMessage; the session must end (RFC 4511 §4.1.1)."""


#: Length octets of a BER length we read (RFC 4511 §5.1 definite form): 4 octets already
#: describe 4 GiB, far beyond any PDU the server accepts.
MAX_LENGTH_OCTETS = 4
#: Identifier octets of a high tag number (LDAP itself uses tags up to 23).
MAX_TAG_OCTETS = 4
#: Deepest TLV nesting inside one PDU: LDAPMessage, protocolOp, SearchRequest and the filter
#: (MAX_FILTER_DEPTH and/or/not levels, each one or two TLVs) fit well within this.
MAX_BER_DEPTH = 2 * MAX_FILTER_DEPTH + 16
#: How much of a decoder's complaint goes into the Notice of Disconnection.
MAX_REASON = 200

#: What pyasn1 and ldap3's schema raise on input they cannot take (pyasn1 has raised each of
#: these on malformed BER: OverflowError for an 8-octet length, issue 11); mapped to
#: :class:`MalformedPdu` at this module's boundary.
PYASN1_FAILURES = (
    PyAsn1Error,
    RecursionError,
    ValueError,
    TypeError,
    OverflowError,
    IndexError,
    KeyError,
    AttributeError,
    UnicodeError,
)


def _length_at(data: bytes | bytearray, pos: int, end: int, where: str) -> tuple[int, int] | None:
    """(content length, position of the content) of the BER length at ``pos``, or None if
    ``data`` ends before it; definite form only, at most :data:`MAX_LENGTH_OCTETS` octets."""
    if pos >= end:
        return None
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0:
        raise MalformedPdu(f"{where}: indefinite length is not allowed (RFC 4511 §5.1)")
    if count > MAX_LENGTH_OCTETS:
        raise MalformedPdu(
            f"{where}: length field of {count} octets (at most {MAX_LENGTH_OCTETS} accepted)"
        )
    if pos + 1 + count > end:
        return None
    return int.from_bytes(data[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


def frame_length(buffer: bytes | bytearray) -> int | None:
    """Total length of the PDU at the start of ``buffer``, or ``None`` if the header is not
    complete yet. Raises :class:`MalformedPdu` for anything but a definite-length SEQUENCE
    whose length field has at most :data:`MAX_LENGTH_OCTETS` octets; the caller compares the
    result with its PDU limit before buffering the body."""
    if not buffer:
        return None
    if buffer[0] != 0x30:
        raise MalformedPdu(f"LDAPMessage: expected SEQUENCE tag 0x30, got 0x{buffer[0]:02x}")
    found = _length_at(buffer, 1, len(buffer), "LDAPMessage")
    if found is None:
        return None
    length, content = found
    return content + length


def check_ber(pdu: bytes) -> None:
    """Walk every TLV of ``pdu`` without recursion and refuse what pyasn1 must never see:
    an indefinite or over-long length, a length running past its parent, an absurd tag, or
    nesting deeper than :data:`MAX_BER_DEPTH`. Raises :class:`MalformedPdu`."""
    ends = [len(pdu)]  # end offsets of the open constructed TLVs, outermost first
    pos = 0
    while ends:
        if pos == ends[-1]:
            ends.pop()
            continue
        end = ends[-1]
        where = f"BER at offset {pos}"
        identifier = pdu[pos]
        pos += 1
        if identifier & 0x1F == 0x1F:  # high tag number form (X.690 §8.1.2.4)
            count = 0
            while True:
                if pos >= end:
                    raise MalformedPdu(f"{where}: tag runs past its enclosing element")
                count += 1
                if count > MAX_TAG_OCTETS:
                    raise MalformedPdu(f"{where}: tag number of more than {MAX_TAG_OCTETS} octets")
                more = pdu[pos] & 0x80
                pos += 1
                if not more:
                    break
        found = _length_at(pdu, pos, end, where)
        if found is None:
            raise MalformedPdu(f"{where}: length runs past its enclosing element")
        length, pos = found
        if pos + length > end:
            raise MalformedPdu(
                f"{where}: {length} content octets run past the enclosing element's end"
            )
        if identifier & 0x20:  # constructed: its children follow
            if len(ends) >= MAX_BER_DEPTH:
                raise MalformedPdu(f"{where}: nested deeper than {MAX_BER_DEPTH} levels")
            ends.append(pos + length)
        else:
            pos += length


def decode_message(pdu: bytes) -> Any:
    """Decode one complete PDU into an ldap3 ``LDAPMessage``; raises :class:`MalformedPdu`
    (and nothing else) for any input."""
    check_ber(pdu)
    try:
        message, rest = decoder.decode(pdu, asn1Spec=_LDAP_MESSAGE)
    except PYASN1_FAILURES as exc:
        reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON]
        raise MalformedPdu(f"LDAPMessage: cannot decode: {reason}") from exc
    if rest:
        raise MalformedPdu(f"LDAPMessage: {len(rest)} trailing bytes inside the PDU")
    return message


def decode_filter(node: Any, depth: int = 0) -> Filter:
    """Turn a pyasn1 Filter CHOICE into the Filter tree of :mod:`._events`."""
    if depth > MAX_FILTER_DEPTH:
        raise MalformedPdu(f"Filter: nested deeper than {MAX_FILTER_DEPTH} levels")
    name = node.getName()
    inner = node.getComponent()
    match name:
        case "and":
            return And(tuple(decode_filter(x, depth + 1) for x in inner))
        case "or":
            return Or(tuple(decode_filter(x, depth + 1) for x in inner))
        case "notFilter":
            return Not(decode_filter(inner["innerNotFilter"], depth + 1))
        case "equalityMatch" | "greaterOrEqual" | "lessOrEqual" | "approxMatch":
            kind = _ASSERTIONS[name]
            return kind(ldap_string(inner["attributeDesc"]), bytes(inner["assertionValue"]))
        case "present":
            return Presence(ldap_string(inner))
        case "substringFilter":
            return _substrings(inner)
        case "extensibleMatch":
            return Extensible(
                ldap_string(inner["matchingRule"]) if inner["matchingRule"].isValue else None,
                ldap_string(inner["type"]) if inner["type"].isValue else None,
                bytes(inner["matchValue"]),
                bool(inner["dnAttributes"]),
            )
    raise MalformedPdu(f"Filter: unknown choice {name!r}")


_ASSERTIONS: dict[str, type[Equality | GreaterOrEqual | LessOrEqual | Approx]] = {
    "equalityMatch": Equality,
    "greaterOrEqual": GreaterOrEqual,
    "lessOrEqual": LessOrEqual,
    "approxMatch": Approx,
}


def _substrings(inner: Any) -> Substrings:
    initial: bytes | None = None
    final: bytes | None = None
    middle: list[bytes] = []
    parts = list(inner["substrings"])
    if not parts:
        raise MalformedPdu("SubstringFilter: no substrings (SIZE 1..MAX)")
    for index, part in enumerate(parts):
        kind = part.getName()
        value = bytes(part.getComponent())
        # RFC 4511 §4.5.1.7.2: initial at most once and first, final at most once and last
        if kind == "initial":
            if index != 0:
                raise MalformedPdu("SubstringFilter: 'initial' must come first")
            initial = value
        elif kind == "final":
            if index != len(parts) - 1:
                raise MalformedPdu("SubstringFilter: 'final' must come last")
            final = value
        else:
            middle.append(value)
    return Substrings(ldap_string(inner["type"]), initial, tuple(middle), final)


def ldap_string(value: Any) -> str:
    """An LDAPString (UTF-8) as str; raises :class:`MalformedPdu` if it is not UTF-8."""
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPdu(f"LDAPString is not UTF-8: {exc}") from exc


# --- encoding ---------------------------------------------------------------------------


def decode_paged_results(value: bytes) -> tuple[int, bytes]:
    """``(size, cookie)`` of a paged results controlValue (RFC 2696 §2:
    ``realSearchControlValue ::= SEQUENCE { size INTEGER (0..maxInt), cookie OCTET STRING }``);
    raises :class:`MalformedPdu` for anything else."""
    check_ber(value)
    try:
        decoded, rest = decoder.decode(value, asn1Spec=RealSearchControlValue())
        if rest:
            raise MalformedPdu(f"{len(rest)} trailing bytes")
        return int(decoded["size"]), bytes(decoded["cookie"])
    except MalformedPdu as exc:
        raise MalformedPdu(f"paged results control value: {exc}") from exc
    except PYASN1_FAILURES as exc:
        reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON]
        raise MalformedPdu(f"paged results control value: {reason}") from exc


def encode_paged_results(size: int, cookie: bytes) -> bytes:
    """The controlValue of a paged results response: the server's estimate of the result set
    size (0: unknown) and the cookie (empty: the last page)."""
    value = RealSearchControlValue()
    value["size"] = Size(size)
    value["cookie"] = Cookie(cookie)
    data: bytes = encoder.encode(value)
    return data


def _message(
    message_id: int, op_name: str, op: Any, controls: tuple[tuple[str, bytes], ...] = ()
) -> bytes:
    message = asn.LDAPMessage()
    message["messageID"] = asn.MessageID(message_id)
    message["protocolOp"] = asn.ProtocolOp().setComponentByName(op_name, op)
    if controls:
        listing = message.setComponentByName("controls").getComponentByName("controls")
        for position, (oid, value) in enumerate(controls):
            control = asn.Control()
            control["controlType"] = asn.LDAPOID(oid.encode("ascii"))
            control["controlValue"] = asn.ControlValue(value)
            listing.setComponentByPosition(position, control)
    data: bytes = encoder.encode(message)
    return data


def _fill_result(op: Any, code: ResultCode, diagnostic: str, matched_dn: str) -> Any:
    op["resultCode"] = asn.ResultCode(int(code))
    op["matchedDN"] = asn.LDAPDN(matched_dn.encode("utf-8"))
    op["diagnosticMessage"] = asn.LDAPString(diagnostic.encode("utf-8"))
    return op


#: protocolOp name of the response to each request (RFC 4511 §4.2 ... §4.12).
RESPONSE_OF = {
    "bindRequest": ("bindResponse", asn.BindResponse),
    "searchRequest": ("searchResDone", asn.SearchResultDone),
    "modifyRequest": ("modifyResponse", asn.ModifyResponse),
    "addRequest": ("addResponse", asn.AddResponse),
    "delRequest": ("delResponse", asn.DelResponse),
    "modDNRequest": ("modDNResponse", asn.ModifyDNResponse),
    "compareRequest": ("compareResponse", asn.CompareResponse),
    "extendedReq": ("extendedResp", asn.ExtendedResponse),
}


def encode_result(
    message_id: int,
    request: str,
    code: ResultCode,
    diagnostic: str = "",
    matched_dn: str = "",
    *,
    controls: tuple[tuple[str, bytes], ...] = (),
    response_name: str | None = None,
) -> bytes:
    """The LDAPResult-shaped response to ``request`` (a protocolOp name such as
    ``"bindRequest"``), with response ``controls`` (OID, controlValue) and, for an extended
    response, its ``response_name``."""
    op_name, op_type = RESPONSE_OF[request]
    op = _fill_result(op_type(), code, diagnostic, matched_dn)
    if response_name is not None:
        op["responseName"] = asn.ResponseName(response_name.encode("ascii"))
    return _message(message_id, op_name, op, controls)


def encode_entry(message_id: int, dn: str, attributes: dict[str, list[bytes]]) -> bytes:
    """A SearchResultEntry (RFC 4511 §4.5.2); an empty value list encodes a typesOnly
    attribute."""
    entry = asn.SearchResultEntry()
    entry["object"] = asn.LDAPDN(dn.encode("utf-8"))
    attribute_list = entry["attributes"]
    for position, (name, values) in enumerate(attributes.items()):
        partial = asn.PartialAttribute()
        partial["type"] = asn.AttributeDescription(name.encode("utf-8"))
        vals = partial["vals"]
        vals.clear()  # an explicitly empty SET, not an unset component
        for index, value in enumerate(values):
            vals.setComponentByPosition(index, asn.AttributeValue(value))
        attribute_list.setComponentByPosition(position, partial)
    if not attributes:
        attribute_list.clear()
    return _message(message_id, "searchResEntry", entry)


def encode_notice_of_disconnection(code: ResultCode, diagnostic: str) -> bytes:
    """The unsolicited Notice of Disconnection (RFC 4511 §4.4.1): messageID 0, an
    ExtendedResponse with responseName 1.3.6.1.4.1.1466.20036."""
    response = _fill_result(asn.ExtendedResponse(), code, diagnostic, "")
    response["responseName"] = asn.ResponseName(NOTICE_OF_DISCONNECTION.encode("ascii"))
    return _message(0, "extendedResp", response)
