"""The sans-IO LDAP server core: events from client PDUs (built with ldap3's own request
builders), its own refusals, and the Notice of Disconnection for malformed input."""

from __future__ import annotations

from typing import Any

import pytest
from ldap3.operation.bind import bind_operation
from ldap3.operation.search import search_operation
from ldap3.protocol import rfc4511 as asn
from ldap3.utils.asn1 import decode_message_fast
from ldap3.utils.asn1 import encode as ldap3_encode

from kim_appliance.protocols.ldap import (
    NEED_DATA,
    NOTICE_OF_DISCONNECTION,
    Abandon,
    And,
    Bind,
    ConnectionClosed,
    Equality,
    LdapServer,
    LocalProtocolError,
    Not,
    Or,
    Presence,
    ProtocolViolation,
    Refused,
    ResultCode,
    Scope,
    Search,
    Substrings,
    Unbind,
    filter_to_string,
)

BASE = "dc=data,dc=vzd"


def pdu(message_id: int, name: str, op: Any, controls: Any = None) -> bytes:
    message = asn.LDAPMessage()
    message["messageID"] = asn.MessageID(message_id)
    message["protocolOp"] = asn.ProtocolOp().setComponentByName(name, op)
    if controls is not None:
        message["controls"] = controls
    data: bytes = ldap3_encode(message)
    return data


def bind_pdu(message_id: int, name: str = "", password: str = "") -> bytes:
    kind = "SIMPLE" if name else "ANONYMOUS"
    return pdu(message_id, "bindRequest", bind_operation(3, kind, name, password or None))


def search_pdu(
    message_id: int, filter_text: str, attributes: list[str] | None = None, **kw: Any
) -> bytes:
    op = search_operation(
        kw.get("base", BASE), filter_text, kw.get("scope", 2), 0, attributes or ["*"],
        kw.get("size_limit", 0), 0, kw.get("types_only", False), False, False,
    )  # fmt: skip
    return pdu(message_id, "searchRequest", op)


def events(server: LdapServer) -> list[Any]:
    out = []
    while True:
        event = server.next_event()
        if event is NEED_DATA:
            return out
        out.append(event)
        if isinstance(event, ProtocolViolation | ConnectionClosed | Unbind):
            return out


def responses(data: bytes) -> list[dict[str, Any]]:
    """Split response bytes into PDUs and decode each with ldap3's own (independent) decoder."""
    found = []
    while data:
        length = data[1] if data[1] < 0x80 else None
        if length is None:
            count = data[1] & 0x7F
            length = int.from_bytes(data[2 : 2 + count], "big") + count
        total = 2 + length
        found.append(decode_message_fast(data[:total]))
        data = data[total:]
    return found


def result_code(response: dict[str, Any]) -> int:
    return int(response["payload"][0][3])


DIALOGUE = (
    bind_pdu(1)
    + search_pdu(2, "(&(mail=praxis*@fd1.kim.telematik-test)(!(cn=*x*))(|(a=1)(b=*)))")
    + search_pdu(3, "(telematikID=1-SMC-B-Testkarte-883110000100001)", ["userCertificate;binary"])
    + pdu(4, "abandonRequest", asn.AbandonRequest(2))
    + pdu(5, "unbindRequest", asn.UnbindRequest())
)


def test_dialogue_gives_the_same_events_in_any_chunking() -> None:
    """Chunks of 1, 2, 3 ... 512 bytes all yield the same events as one piece."""
    whole = LdapServer()
    whole.receive_data(DIALOGUE)
    expected = events(whole)
    assert [type(e) for e in expected] == [Bind, Search, Search, Abandon, Unbind]
    for size in (1, 2, 3, 5, 7, 64, 512):
        server = LdapServer()
        got: list[Any] = []
        for start in range(0, len(DIALOGUE), size):
            server.receive_data(DIALOGUE[start : start + size])
            got.extend(events(server))
        assert got == expected, f"chunk size {size}"


def test_search_event_carries_the_request_fields_and_filter_tree() -> None:
    server = LdapServer()
    server.receive_data(
        search_pdu(7, "(&(mail=a*b*c)(!(cn=x))(|(sn=*)))", ["mail", "1.1"], scope=1,
                   size_limit=5, types_only=True)
    )  # fmt: skip
    (event,) = events(server)
    assert isinstance(event, Search)
    assert (event.message_id, event.base, event.scope) == (7, BASE, Scope.ONE)
    assert (event.size_limit, event.types_only, event.attributes) == (5, True, ("mail", "1.1"))
    assert event.filter == And(
        (
            Substrings("mail", b"a", (b"b",), b"c"),
            Not(Equality("cn", b"x")),
            Or((Presence("sn"),)),
        )
    )
    assert filter_to_string(event.filter) == "(&(mail=a*b*c)(!(cn=x))(|(sn=*)))"


def test_bind_result_and_search_answers_decode_with_ldap3() -> None:
    server = LdapServer()
    server.receive_data(bind_pdu(1, "cn=admin,dc=data,dc=vzd", "geheim") + search_pdu(2, "(a=b)"))
    bind, _search = events(server)
    assert isinstance(bind, Bind)
    assert bind.password == b"geheim"
    assert "geheim" not in repr(bind)
    assert bind.name == "cn=admin,dc=data,dc=vzd"
    der = bytes(range(256)) * 3
    out = server.send_bind_result(1, ResultCode.INVALID_CREDENTIALS, "wrong password")
    out += server.send_entry(2, "uid=1,dc=data,dc=vzd", {"mail": [b"a@b.de"], "c;binary": [der]})
    out += server.send_entry(2, "uid=2,dc=data,dc=vzd", {"mail": []})
    out += server.send_search_done(2, ResultCode.SIZE_LIMIT_EXCEEDED, "too many")
    bind_response, entry, types_only_entry, done = responses(out)
    assert bind_response["protocolOp"] == 1
    assert result_code(bind_response) == 49
    assert entry["protocolOp"] == 4
    assert entry["messageID"] == 2
    assert entry["payload"][0][3] == b"uid=1,dc=data,dc=vzd"
    attributes = {a[3][0][3]: [v[3] for v in a[3][1][3]] for a in entry["payload"][1][3]}
    assert attributes == {b"mail": [b"a@b.de"], b"c;binary": [der]}
    assert types_only_entry["payload"][1][3][0][3][1][3] == []
    assert done["protocolOp"] == 5
    assert result_code(done) == 4


def test_delete_and_compare_are_refused_as_read_only() -> None:
    """The VZD is read-only over LDAP (digest §4.1/§4.2): unwillingToPerform 53, and the
    session goes on."""
    compare = asn.CompareRequest()
    compare["entry"] = asn.LDAPDN("uid=x,dc=data,dc=vzd")
    compare["ava"]["attributeDesc"] = asn.AttributeDescription("mail")
    compare["ava"]["assertionValue"] = asn.AssertionValue(b"x@y.de")
    server = LdapServer()
    server.receive_data(
        pdu(3, "delRequest", asn.DelRequest("uid=x,dc=data,dc=vzd"))
        + pdu(4, "compareRequest", compare)
        + bind_pdu(5)
    )
    delete, refused_compare, bind = events(server)
    assert delete == Refused(3, "delete", ResultCode.UNWILLING_TO_PERFORM, delete.diagnostic)
    assert "read-only" in delete.diagnostic
    assert isinstance(refused_compare, Refused)
    assert refused_compare.operation == "compare"
    assert isinstance(bind, Bind)
    assert [(r["protocolOp"], result_code(r)) for r in responses(server.data_to_send())] == [
        (11, 53),
        (15, 53),
    ]
    assert not server.closed


def test_add_and_modify_are_refused_with_unwilling_to_perform() -> None:
    add = asn.AddRequest()
    add["entry"] = asn.LDAPDN("uid=x,dc=data,dc=vzd")
    attribute = asn.Attribute()
    attribute["type"] = asn.AttributeDescription("mail")
    attribute["vals"].setComponentByPosition(0, asn.AttributeValue(b"x@y.de"))
    add["attributes"].setComponentByPosition(0, attribute)
    modify = asn.ModifyRequest()
    modify["object"] = asn.LDAPDN("uid=x,dc=data,dc=vzd")
    change = asn.Change()
    change["operation"] = asn.Operation("replace")
    change["modification"]["type"] = asn.AttributeDescription("mail")
    change["modification"]["vals"].setComponentByPosition(0, asn.AttributeValue(b"x@y.de"))
    modify["changes"].setComponentByPosition(0, change)
    server = LdapServer()
    server.receive_data(pdu(4, "addRequest", add) + pdu(5, "modifyRequest", modify))
    refused = events(server)
    assert [(e.operation, e.code) for e in refused] == [
        ("add", ResultCode.UNWILLING_TO_PERFORM),
        ("modify", ResultCode.UNWILLING_TO_PERFORM),
    ]
    assert [(r["protocolOp"], result_code(r)) for r in responses(server.data_to_send())] == [
        (9, 53),
        (7, 53),
    ]


def test_sasl_bind_gets_auth_method_not_supported() -> None:
    server = LdapServer()
    server.receive_data(pdu(1, "bindRequest", bind_operation(3, "SASL", "", None, "EXTERNAL")))
    (event,) = events(server)
    assert isinstance(event, Refused)
    assert event.code is ResultCode.AUTH_METHOD_NOT_SUPPORTED
    (response,) = responses(server.data_to_send())
    assert response["protocolOp"] == 1
    assert result_code(response) == 7


def test_ldap_version_2_bind_is_a_protocol_error() -> None:
    server = LdapServer()
    server.receive_data(pdu(1, "bindRequest", bind_operation(2, "ANONYMOUS")))
    (event,) = events(server)
    assert isinstance(event, Refused)
    assert "version 2" in event.diagnostic
    assert result_code(responses(server.data_to_send())[0]) == 2


def test_extended_operation_gets_protocol_error_and_session_continues() -> None:
    """RFC 4511 §4.12: an unknown extended request name gets protocolError; StartTLS too."""
    request = asn.ExtendedRequest()
    request["requestName"] = asn.RequestName("1.3.6.1.4.1.1466.20037")
    server = LdapServer()
    server.receive_data(pdu(1, "extendedReq", request) + bind_pdu(2))
    refused, bind = events(server)
    assert isinstance(refused, Refused)
    assert "ldaps://" in refused.diagnostic
    assert isinstance(bind, Bind)
    (response,) = responses(server.data_to_send())
    assert response["protocolOp"] == 24
    assert result_code(response) == 2


def test_unknown_critical_control_is_refused() -> None:
    controls = asn.Controls()
    control = asn.Control()
    control["controlType"] = asn.LDAPOID("1.2.3.4.5")
    control["criticality"] = asn.Criticality(True)
    controls.setComponentByPosition(0, control)
    server = LdapServer()
    op = search_operation(BASE, "(a=b)", 2, 0, ["*"], 0, 0, False, False, False)
    server.receive_data(pdu(1, "searchRequest", op, controls))
    (event,) = events(server)
    assert isinstance(event, Refused)
    assert event.code is ResultCode.UNAVAILABLE_CRITICAL_EXTENSION
    assert "1.2.3.4.5" in event.diagnostic


def _assert_disconnected(server: LdapServer, reason_part: str) -> None:
    (event,) = events(server)
    assert isinstance(event, ProtocolViolation), event
    assert reason_part in event.reason
    (notice,) = responses(server.data_to_send())
    assert notice["messageID"] == 0
    assert notice["protocolOp"] == 24
    assert result_code(notice) == 2
    assert NOTICE_OF_DISCONNECTION.encode() in bytes(server.notice_of_disconnection(
        ResultCode.PROTOCOL_ERROR, "again"))  # fmt: skip
    assert server.closed
    assert isinstance(server.next_event(), ConnectionClosed)


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"\x04\x03abc", "expected SEQUENCE"),
        (b"\x30\x80\x02\x01\x01", "indefinite length"),
        (b"\x30\x03\x02\x01\x01", "cannot decode"),  # messageID but no protocolOp
        (b"\x30\x06\x02\x01\x01\x7f\x01\x00", "cannot decode"),  # unknown protocolOp tag
        # issue 11: an OCTET STRING with an 8-octet length was an OverflowError in pyasn1
        (bytes.fromhex("3013020101630e0488ffffffffffffffff00000000"), "length field of 8"),
        (b"\x30\x85\x00\x00\x00\x00\x05", "length field of 5"),  # the frame itself
        (b"\x30\x05\x02\x01\x01\x63\x10", "run past the enclosing"),  # inner longer
        (b"\x30\x07\x02\x01\x01\x7f\xff\xff\xff", "tag runs past"),  # unfinished tag
        (b"\x30\x0a\x02\x01\x01\x7f\xff\xff\xff\xff\x7f\x00\x00\x00", "tag number of more"),
    ],
)
def test_malformed_pdu_gets_notice_of_disconnection(garbage: bytes, reason: str) -> None:
    """RFC 4511 §4.1.1 / §4.4.1: unparseable PDU -> Notice of Disconnection, session ends."""
    server = LdapServer()
    server.receive_data(garbage)
    _assert_disconnected(server, reason)


def test_a_response_pdu_from_the_client_is_a_protocol_violation() -> None:
    server = LdapServer()
    op = asn.SearchResultDone()
    op["resultCode"] = asn.ResultCode(0)
    op["matchedDN"] = asn.LDAPDN("")
    op["diagnosticMessage"] = asn.LDAPString("")
    server.receive_data(pdu(1, "searchResDone", op))
    _assert_disconnected(server, "not a request")


def test_oversized_pdu_is_refused_before_it_is_buffered() -> None:
    server = LdapServer(max_pdu_size=1000)
    server.receive_data(b"\x30\x83\x01\x00\x00")  # announces 65536 bytes
    _assert_disconnected(server, "exceeds the limit of 1000")


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | 2]) + n.to_bytes(2, "big")
    return bytes([tag]) + length + body


@pytest.mark.parametrize("depth", [40, 2000])
def test_deeply_nested_filter_is_malformed_not_a_crash(depth: int) -> None:
    """A filter of `depth` nested NOTs (BER built by hand: ldap3 cannot encode it) ends the
    session with a Notice of Disconnection instead of exhausting the stack."""
    filter_ = _tlv(0xA3, _tlv(0x04, b"a") + _tlv(0x04, b"b"))
    for _ in range(depth):
        filter_ = _tlv(0xA2, filter_)
    body = (
        _tlv(0x04, BASE.encode()) + b"\x0a\x01\x02\x0a\x01\x00\x02\x01\x00\x02\x01\x00"
        + b"\x01\x01\x00" + filter_ + b"\x30\x00"
    )  # fmt: skip
    server = LdapServer()
    server.receive_data(_tlv(0x30, b"\x02\x01\x01" + _tlv(0x63, body)))
    _assert_disconnected(server, "")


def test_eof_mid_pdu_closes_and_answers_nothing() -> None:
    server = LdapServer()
    server.receive_data(bind_pdu(1)[:5])
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    assert isinstance(server.next_event(), ConnectionClosed)
    assert server.data_to_send() == b""


def test_answering_a_request_that_was_never_asked_is_a_local_error() -> None:
    server = LdapServer()
    with pytest.raises(LocalProtocolError, match="no bind request with message id 9"):
        server.send_bind_result(9, ResultCode.SUCCESS)
    server.receive_data(bind_pdu(1))
    events(server)
    with pytest.raises(LocalProtocolError, match="no search request"):
        server.send_search_done(1, ResultCode.SUCCESS)


def test_abandoned_search_sends_nothing_more() -> None:
    server = LdapServer()
    server.receive_data(search_pdu(2, "(a=b)") + pdu(3, "abandonRequest", asn.AbandonRequest(2)))
    _search, abandon = events(server)
    assert abandon == Abandon(3, 2)
    assert server.send_entry(2, "uid=1,dc=data,dc=vzd", {"a": [b"b"]}) == b""
    assert server.send_search_done(2, ResultCode.SUCCESS) == b""


def test_the_issue_11_request_gets_a_notice_and_the_next_connection_is_served() -> None:
    """Issue 11: the 21-byte request that raised OverflowError now ends its own session with a
    Notice of Disconnection; a new session (the server's next connection) is served."""
    server = LdapServer()
    server.receive_data(bytes.fromhex("3013020101630e0488ffffffffffffffff00000000"))
    event = server.next_event()
    assert isinstance(event, ProtocolViolation)
    assert "at most 4 accepted" in event.reason
    (notice,) = responses(server.data_to_send())
    assert result_code(notice) == 2
    fresh = LdapServer()
    fresh.receive_data(bind_pdu(1, "cn=x", "y"))
    assert isinstance(fresh.next_event(), Bind)
