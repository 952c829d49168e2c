"""The sans-IO LDAP core's two extensions: the simple paged results control (RFC 2696) on a
search, critical or not, and StartTLS (RFC 4511 §4.14) when the application offers it. Client
PDUs are built with ldap3's own request builders; responses decoded with ldap3's decoder."""

from __future__ import annotations

from typing import Any

import pytest
from ldap3.protocol import rfc4511 as asn
from ldap3.protocol.rfc2696 import RealSearchControlValue, paged_search_control
from ldap3.utils.asn1 import decode_message_fast
from pyasn1.codec.ber import decoder
from test_ldap_core import bind_pdu, events, pdu, responses, result_code, search_pdu

from kim_appliance.protocols.ldap import (
    PAGED_RESULTS_OID,
    START_TLS_OID,
    Bind,
    LdapServer,
    LocalProtocolError,
    PagedResults,
    ProtocolViolation,
    Refused,
    ResultCode,
    Search,
    StartTls,
)


def controls_of(*built: tuple[str, bool, bytes | None]) -> Any:
    """An ldap3 Controls component of (oid, criticality, value) triples."""
    controls = asn.Controls()
    for position, (oid, critical, value) in enumerate(built):
        control = asn.Control()
        control["controlType"] = asn.LDAPOID(oid)
        control["criticality"] = asn.Criticality(critical)
        if value is not None:
            control["controlValue"] = asn.ControlValue(value)
        controls.setComponentByPosition(position, control)
    return controls


def paged_value(size: int, cookie: bytes) -> bytes:
    """The controlValue ldap3 itself sends for a paged search."""
    return bytes(paged_search_control(True, size, cookie)["controlValue"])


def paged_search(message_id: int, size: int, cookie: bytes, *, critical: bool = True) -> bytes:
    from ldap3.operation.search import search_operation

    op = search_operation("dc=data,dc=vzd", "(mail=*)", 2, 0, ["mail"], 0, 0, False, False, False)
    control = controls_of((PAGED_RESULTS_OID, critical, paged_value(size, cookie)))
    return pdu(message_id, "searchRequest", op, control)


def response_control(response: bytes) -> tuple[int, bytes]:
    """(size, cookie) of the paged results control of a SearchResultDone."""
    message, _ = decoder.decode(response, asn1Spec=asn.LDAPMessage())
    (control,) = list(message["controls"])
    assert str(control["controlType"]) == PAGED_RESULTS_OID
    value, _ = decoder.decode(bytes(control["controlValue"]), asn1Spec=RealSearchControlValue())
    return int(value["size"]), bytes(value["cookie"])


@pytest.mark.parametrize("critical", [True, False])
def test_paged_control_is_accepted_critical_or_not(critical: bool) -> None:
    """RFC 2696 (issue 14): the control the core once refused as an unknown critical control
    reaches the application; python-ldap and ``ldapsearch -E '!pr=N'`` mark it critical."""
    server = LdapServer()
    server.receive_data(paged_search(3, 10, b"", critical=critical))
    (event,) = events(server)
    assert isinstance(event, Search)
    assert event.paged == PagedResults(10, b"", critical)
    assert server.data_to_send() == b""


def test_search_done_of_a_paged_search_carries_the_cookie() -> None:
    """RFC 2696 §3: SearchResultDone carries the control with the estimate and the cookie of
    the next page; the last page has an empty cookie; an unpaged search gets no control."""
    server = LdapServer()
    server.receive_data(
        paged_search(3, 2, b"") + paged_search(4, 2, b"c1") + search_pdu(5, "(a=b)")
    )
    first, second, plain = events(server)
    assert second.paged == PagedResults(2, b"c1", True)
    done = server.send_search_done(first.message_id, ResultCode.SUCCESS, cookie=b"c1", estimate=7)
    assert result_code(decode_message_fast(done)) == 0
    assert response_control(done) == (7, b"c1")
    last = server.send_search_done(second.message_id, ResultCode.SUCCESS)
    assert response_control(last) == (0, b"")
    unpaged = server.send_search_done(plain.message_id, ResultCode.SUCCESS)
    message, _ = decoder.decode(unpaged, asn1Spec=asn.LDAPMessage())
    assert not message["controls"].isValue


def test_a_cookie_for_an_unpaged_search_is_a_local_error() -> None:
    server = LdapServer()
    server.receive_data(search_pdu(2, "(a=b)"))
    events(server)
    with pytest.raises(LocalProtocolError, match="not paged"):
        server.send_search_done(2, ResultCode.SUCCESS, cookie=b"x")


@pytest.mark.parametrize(
    ("controls", "reason"),
    [
        (((PAGED_RESULTS_OID, True, b"\x04\x00"),), "paged results control value"),
        (((PAGED_RESULTS_OID, True, None),), "paged results control value"),
        (
            ((PAGED_RESULTS_OID, True, paged_value(5, b"")),
             (PAGED_RESULTS_OID, False, paged_value(5, b""))),
            "appears twice",
        ),
    ],
    ids=["not-a-sequence", "no-value", "twice"],
)  # fmt: skip
def test_a_malformed_paged_control_is_a_protocol_error_and_the_session_goes_on(
    controls: tuple[tuple[str, bool, bytes | None], ...], reason: str
) -> None:
    from ldap3.operation.search import search_operation

    op = search_operation("dc=data,dc=vzd", "(a=b)", 2, 0, ["*"], 0, 0, False, False, False)
    server = LdapServer()
    server.receive_data(pdu(1, "searchRequest", op, controls_of(*controls)) + bind_pdu(2))
    refused, bind = events(server)
    assert isinstance(refused, Refused)
    assert refused.code is ResultCode.PROTOCOL_ERROR
    assert reason in refused.diagnostic
    assert isinstance(bind, Bind)
    (response,) = responses(server.data_to_send())
    assert result_code(response) == 2


def test_paged_control_on_a_bind_is_an_unknown_critical_control() -> None:
    """The control belongs to searches only (RFC 2696 §2)."""
    from ldap3.operation.bind import bind_operation

    server = LdapServer()
    control = controls_of((PAGED_RESULTS_OID, True, paged_value(5, b"")))
    server.receive_data(pdu(1, "bindRequest", bind_operation(3, "ANONYMOUS", "", None), control))
    (event,) = events(server)
    assert isinstance(event, Refused)
    assert event.code is ResultCode.UNAVAILABLE_CRITICAL_EXTENSION


# --- StartTLS -------------------------------------------------------------------------------------


def start_tls_pdu(message_id: int, value: bytes | None = None) -> bytes:
    request = asn.ExtendedRequest()
    request["requestName"] = asn.RequestName(START_TLS_OID)
    if value is not None:
        request["requestValue"] = asn.RequestValue(value)
    return pdu(message_id, "extendedReq", request)


def test_start_tls_offered_gives_an_event_and_a_named_success() -> None:
    """RFC 4511 §4.14.2: the response names StartTLS; afterwards the core counts the
    connection as encrypted and refuses a second StartTLS with operationsError."""
    server = LdapServer(start_tls=True)
    server.receive_data(start_tls_pdu(1))
    (event,) = events(server)
    assert event == StartTls(1)
    assert not server.tls
    out = server.send_start_tls_result(1, ResultCode.SUCCESS)
    response = decode_message_fast(out)
    assert response["protocolOp"] == 24
    assert result_code(response) == 0
    message, _ = decoder.decode(out, asn1Spec=asn.LDAPMessage())
    assert str(message["protocolOp"]["extendedResp"]["responseName"]) == START_TLS_OID
    assert server.tls
    server.receive_data(start_tls_pdu(2))
    (again,) = events(server)
    assert isinstance(again, Refused)
    assert again.code is ResultCode.OPERATIONS_ERROR
    assert "already" in again.diagnostic


def test_start_tls_not_offered_is_a_protocol_error_naming_ldaps() -> None:
    server = LdapServer()
    server.receive_data(start_tls_pdu(1))
    (event,) = events(server)
    assert isinstance(event, Refused)
    assert event.code is ResultCode.PROTOCOL_ERROR
    assert "ldaps://" in event.diagnostic


def test_start_tls_with_an_outstanding_operation_is_an_operations_error() -> None:
    server = LdapServer(start_tls=True)
    server.receive_data(bind_pdu(1))
    events(server)  # the bind is not answered yet
    server.receive_data(start_tls_pdu(2))
    (event,) = events(server)
    assert isinstance(event, Refused)
    assert event.code is ResultCode.OPERATIONS_ERROR
    assert "outstanding" in event.diagnostic


def test_start_tls_with_a_request_value_is_a_protocol_error() -> None:
    server = LdapServer(start_tls=True)
    server.receive_data(start_tls_pdu(1, b"x"))
    (event,) = events(server)
    assert isinstance(event, Refused)
    assert event.code is ResultCode.PROTOCOL_ERROR


def test_data_after_the_start_tls_request_breaks_the_protocol() -> None:
    """RFC 4511 §4.14.1: the client sends nothing until the response; bytes that follow could
    only be read as plain text where TLS is due: the session ends."""
    server = LdapServer(start_tls=True)
    server.receive_data(start_tls_pdu(1) + bind_pdu(2))
    (event,) = events(server)
    assert isinstance(event, ProtocolViolation)
    assert "after the StartTLS request" in event.reason
    assert server.closed


def test_start_tls_on_an_encrypted_connection_is_an_operations_error() -> None:
    server = LdapServer(tls=True)
    server.receive_data(start_tls_pdu(1))
    (event,) = events(server)
    assert isinstance(event, Refused)
    assert event.code is ResultCode.OPERATIONS_ERROR
