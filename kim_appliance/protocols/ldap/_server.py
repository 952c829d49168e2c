"""The server side of LDAPv3 (RFC 4511) as a sans-IO state machine for a read-only directory.

Feed received bytes with ``receive_data``, take events from ``next_event`` until it returns
:class:`NEED_DATA`, write ``data_to_send()`` after each event, and answer :class:`Bind`,
:class:`Search` and :class:`StartTls` with the ``send_*`` methods. The core answers by itself
whatever a read-only directory refuses: write operations (unwillingToPerform 53), SASL binds
(authMethodNotSupported 7), other LDAP versions and extended operations (protocolError 2),
unknown critical controls (unavailableCriticalExtension 12). It knows two extensions: the
simple paged results control of a search (RFC 2696, critical or not: :class:`PagedResults` on
the Search; ``send_search_done`` returns the cookie), and StartTLS (RFC 4511 §4.14) when the
application offers it (``start_tls=True``): refused with operationsError 1 while TLS is active
or another operation is outstanding, and a client that sends more before the response breaks
the protocol. A malformed or oversized PDU ends the session with a Notice of Disconnection
(RFC 4511 §4.4.1, §4.1.1). This module must never touch a socket, trio, the directory's
entries or decide whether a password is right, or what a paged search's cookie means.
"""

from __future__ import annotations

from typing import Any

from ._codec import (
    MAX_REASON,
    PAGED_RESULTS_OID,
    PYASN1_FAILURES,
    START_TLS_OID,
    MalformedPdu,
    decode_filter,
    decode_message,
    decode_paged_results,
    encode_entry,
    encode_notice_of_disconnection,
    encode_paged_results,
    encode_result,
    frame_length,
    ldap_string,
)
from ._events import (
    NEED_DATA,
    Abandon,
    Bind,
    ConnectionClosed,
    Event,
    PagedResults,
    ProtocolViolation,
    Refused,
    ResultCode,
    Scope,
    Search,
    StartTls,
    Unbind,
)

#: Largest PDU the core buffers. A search request is a few hundred bytes; a bind, less.
MAX_PDU_SIZE = 256 * 1024
#: Controls a search may carry, also when critical (RFC 4511 §4.1.11)
SEARCH_CONTROLS = frozenset({PAGED_RESULTS_OID})
READ_ONLY = (
    "the VZD is read-only over LDAP; KIM Fachdaten are maintained through "
    "I_Directory_Application_Maintenance (digest §4.2)"
)
_WRITE_OPERATIONS = {
    "addRequest": "add",
    "modifyRequest": "modify",
    "delRequest": "delete",
    "modDNRequest": "modifyDN",
    "compareRequest": "compare",
}


class LocalProtocolError(RuntimeError):
    """The application misused the core (e.g. answered a request that was never asked)."""


class LdapServer:
    """One LDAP connection, server role. Not thread-safe; one instance per connection."""

    def __init__(
        self, *, max_pdu_size: int = MAX_PDU_SIZE, start_tls: bool = False, tls: bool = False
    ) -> None:
        """``start_tls``: the application can upgrade this connection (StartTLS is offered);
        ``tls``: the connection is already encrypted (LDAPS)."""
        self.max_pdu_size = max_pdu_size
        self.start_tls = start_tls
        self._tls = tls
        self._buffer = bytearray()
        self._out = bytearray()
        self._eof = False
        self._closed = False
        self._pending: dict[int, str] = {}  # message id -> "bind" | "search" | "starttls"
        self._paged: set[int] = set()  # searches that carried the paged results control
        self._abandoned: set[int] = set()

    @property
    def tls(self) -> bool:
        """True on LDAPS and after a successful StartTLS."""
        return self._tls

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken by an event (how much the next decoding may cost)."""
        return len(self._buffer)

    @property
    def closed(self) -> bool:
        """True once the session is over (Unbind, protocol violation, peer closed)."""
        return self._closed

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means the peer closed its side."""
        if self._closed:
            return
        if not data:
            self._eof = True
        else:
            self._buffer += data

    def next_event(self) -> Event | type[NEED_DATA]:
        """The next event, or :class:`NEED_DATA` until a whole PDU has arrived."""
        while True:
            if self._closed:
                return ConnectionClosed()
            try:
                length = frame_length(self._buffer)
            except MalformedPdu as exc:
                return self._violation(str(exc))
            if length is not None and length > self.max_pdu_size:
                return self._violation(
                    f"LDAPMessage of {length} bytes exceeds the limit of {self.max_pdu_size}"
                )
            if length is None or len(self._buffer) < length:
                if self._eof:
                    self._closed = True
                    return ConnectionClosed()
                return NEED_DATA
            pdu = bytes(self._buffer[:length])
            del self._buffer[:length]
            event = self._handle(pdu)
            if event is not None:
                return event

    def data_to_send(self) -> bytes:
        """Responses the core queued by itself (refusals, Notice of Disconnection)."""
        data = bytes(self._out)
        self._out.clear()
        return data

    # --- answers of the application -----------------------------------------------------

    def send_bind_result(
        self, message_id: int, code: ResultCode, diagnostic: str = "", matched_dn: str = ""
    ) -> bytes:
        """The BindResponse to :class:`Bind` ``message_id`` (RFC 4511 §4.2.2)."""
        self._take(message_id, "bind")
        return encode_result(message_id, "bindRequest", code, diagnostic, matched_dn)

    def send_entry(self, message_id: int, dn: str, attributes: dict[str, list[bytes]]) -> bytes:
        """One SearchResultEntry for :class:`Search` ``message_id``; empty value lists for
        typesOnly. Returns ``b""`` if the client abandoned the search."""
        if self._pending.get(message_id) != "search":
            return self._not_pending(message_id, "search")
        return encode_entry(message_id, dn, attributes)

    def send_search_done(
        self,
        message_id: int,
        code: ResultCode,
        diagnostic: str = "",
        matched_dn: str = "",
        *,
        cookie: bytes = b"",
        estimate: int = 0,
    ) -> bytes:
        """The SearchResultDone that ends :class:`Search` ``message_id`` (RFC 4511 §4.5.2).

        For a paged search it carries the paged results control (RFC 2696 §3): ``cookie`` for
        the next page (empty: this was the last one) and ``estimate``, the result set's size
        as far as known (0: unknown). A cookie for a search without the control is a
        :class:`LocalProtocolError`."""
        if self._pending.get(message_id) != "search":
            return self._not_pending(message_id, "search")
        paged = message_id in self._paged
        if cookie and not paged:
            raise LocalProtocolError(f"search {message_id} was not paged: no cookie to send")
        self._take(message_id, "search")
        self._paged.discard(message_id)
        controls = ((PAGED_RESULTS_OID, encode_paged_results(estimate, cookie)),) if paged else ()
        return encode_result(
            message_id, "searchRequest", code, diagnostic, matched_dn, controls=controls
        )

    def send_start_tls_result(
        self, message_id: int, code: ResultCode, diagnostic: str = ""
    ) -> bytes:
        """The ExtendedResponse to :class:`StartTls` ``message_id`` (RFC 4511 §4.14.2, with the
        StartTLS responseName). After ``SUCCESS`` the core counts the connection as encrypted:
        the application must start the TLS handshake right after sending this."""
        self._take(message_id, "starttls")
        if code is ResultCode.SUCCESS:
            self._tls = True
        return encode_result(
            message_id, "extendedReq", code, diagnostic, response_name=START_TLS_OID
        )

    def notice_of_disconnection(self, code: ResultCode, diagnostic: str) -> bytes:
        """An unsolicited Notice of Disconnection the server sends before it closes (e.g.
        ``UNAVAILABLE`` on shutdown or idle timeout, digest §4.1); the session is over."""
        self._closed = True
        return encode_notice_of_disconnection(code, diagnostic)

    # --- internals ----------------------------------------------------------------------

    def _take(self, message_id: int, kind: str) -> None:
        if self._pending.get(message_id) != kind:
            raise LocalProtocolError(f"no {kind} request with message id {message_id} to answer")
        del self._pending[message_id]

    def _not_pending(self, message_id: int, kind: str) -> bytes:
        if message_id in self._abandoned:
            return b""  # RFC 4511 §4.11: no further responses to an abandoned operation
        raise LocalProtocolError(f"no {kind} request with message id {message_id} to answer")

    def _violation(self, reason: str) -> ProtocolViolation:
        self._out += encode_notice_of_disconnection(ResultCode.PROTOCOL_ERROR, reason)
        self._closed = True
        self._buffer.clear()
        return ProtocolViolation(reason)

    def _refuse(
        self, message_id: int, request: str, operation: str, code: ResultCode, diagnostic: str
    ) -> Refused:
        self._out += encode_result(message_id, request, code, diagnostic)
        return Refused(message_id, operation, code, diagnostic)

    def _handle(self, pdu: bytes) -> Event | None:
        try:
            message = decode_message(pdu)
        except MalformedPdu as exc:
            return self._violation(str(exc))
        try:
            # reading the decoded message: pyasn1 raises its own errors for components a
            # peer left out or filled wrongly; each of them is a malformed PDU, not a crash
            message_id = int(message["messageID"])
            op = message["protocolOp"]
            name = op.getName()
            body = op.getComponent()
            return self._dispatch(message, message_id, name, body)
        except MalformedPdu as exc:
            return self._violation(str(exc))
        except PYASN1_FAILURES as exc:
            reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON]
            return self._violation(f"LDAPMessage: malformed: {reason}")

    def _dispatch(self, message: Any, message_id: int, name: str, body: Any) -> Event | None:
        if name == "unbindRequest":
            self._closed = True
            return Unbind(message_id)
        if name == "abandonRequest":
            abandoned = int(body)
            if self._pending.pop(abandoned, None) is not None:
                self._abandoned.add(abandoned)
                self._paged.discard(abandoned)
            return Abandon(message_id, abandoned)
        if name not in ("bindRequest", "searchRequest", "extendedReq", *_WRITE_OPERATIONS):
            raise MalformedPdu(f"protocolOp {name!r} is not a request a client may send")
        controls = _controls(message)
        known = SEARCH_CONTROLS if name == "searchRequest" else frozenset()
        critical = [oid for oid, is_critical, _ in controls if is_critical and oid not in known]
        if critical:
            return self._refuse(
                message_id,
                name,
                name,
                ResultCode.UNAVAILABLE_CRITICAL_EXTENSION,
                f"critical control(s) {', '.join(critical)} not supported (RFC 4511 §4.1.11)",
            )
        if name in _WRITE_OPERATIONS:
            operation = _WRITE_OPERATIONS[name]
            return self._refuse(
                message_id, name, operation, ResultCode.UNWILLING_TO_PERFORM,
                f"{operation} refused: {READ_ONLY}",
            )  # fmt: skip
        if name == "extendedReq":
            oid = ldap_string(body["requestName"])
            if oid == START_TLS_OID and (self.start_tls or self._tls):
                return self._start_tls(message_id, body)
            hint = "; use ldaps:// (implicit TLS)" if oid == START_TLS_OID else ""
            return self._refuse(
                message_id, name, f"extended {oid}", ResultCode.PROTOCOL_ERROR,
                f"extended operation {oid} is not supported{hint}",
            )  # fmt: skip
        if name == "bindRequest":
            return self._bind(message_id, body)
        paged: PagedResults | None = None
        for oid, is_critical, value in controls:
            if oid != PAGED_RESULTS_OID:
                continue  # an unknown non-critical control is ignored (RFC 4511 §4.1.11)
            if paged is not None:
                return self._refuse(
                    message_id, name, "search", ResultCode.PROTOCOL_ERROR,
                    "the paged results control appears twice (RFC 2696)",
                )  # fmt: skip
            try:
                size, cookie = decode_paged_results(value or b"")
            except MalformedPdu as exc:
                return self._refuse(message_id, name, "search", ResultCode.PROTOCOL_ERROR, str(exc))
            paged = PagedResults(size, cookie, is_critical)
        return self._search(message_id, body, paged)

    def _start_tls(self, message_id: int, body: Any) -> Event:
        """RFC 4511 §4.14.1: no requestValue; not while TLS is active or operations are
        outstanding; nothing may follow the request before the response."""
        refuse = "extendedReq"
        if body["requestValue"].isValue:
            return self._refuse(
                message_id, refuse, "StartTLS", ResultCode.PROTOCOL_ERROR,
                "StartTLS takes no requestValue (RFC 4511 §4.14.1)",
            )  # fmt: skip
        if self._tls:
            return self._refuse(
                message_id, refuse, "StartTLS", ResultCode.OPERATIONS_ERROR,
                "TLS is already established on this connection (RFC 4511 §4.14.1)",
            )  # fmt: skip
        if self._pending:
            return self._refuse(
                message_id, refuse, "StartTLS", ResultCode.OPERATIONS_ERROR,
                "StartTLS while other operations are outstanding (RFC 4511 §4.14.1)",
            )  # fmt: skip
        if self._buffer:
            return self._violation(
                "data after the StartTLS request: the client must wait for the response "
                "(RFC 4511 §4.14.1)"
            )
        self._pending[message_id] = "starttls"
        return StartTls(message_id)

    def _bind(self, message_id: int, body: Any) -> Event:
        version = int(body["version"])
        bind_name = ldap_string(body["name"])
        auth = body["authentication"]
        if version != 3:
            return self._refuse(
                message_id, "bindRequest", "bind", ResultCode.PROTOCOL_ERROR,
                f"bind: LDAP version {version} is not supported; use LDAPv3",
            )  # fmt: skip
        if auth.getName() != "simple":
            return self._refuse(
                message_id, "bindRequest", "bind", ResultCode.AUTH_METHOD_NOT_SUPPORTED,
                f"bind: {auth.getName()} authentication is not supported; use simple bind",
            )  # fmt: skip
        self._pending[message_id] = "bind"
        return Bind(message_id, version, bind_name, bytes(auth.getComponent()))

    def _search(self, message_id: int, body: Any, paged: PagedResults | None) -> Event:
        scope = int(body["scope"])
        if scope not in (0, 1, 2):  # pragma: no cover - pyasn1 rejects other enum values
            raise MalformedPdu(f"SearchRequest.scope: {scope} is not 0, 1 or 2")
        search = Search(
            message_id=message_id,
            base=ldap_string(body["baseObject"]),
            scope=Scope(scope),
            deref=int(body["derefAliases"]),
            size_limit=int(body["sizeLimit"]),
            time_limit=int(body["timeLimit"]),
            types_only=bool(body["typesOnly"]),
            filter=decode_filter(body["filter"]),
            attributes=tuple(ldap_string(a) for a in body["attributes"]),
            paged=paged,
        )
        self._pending[message_id] = "search"
        if paged is not None:
            self._paged.add(message_id)
        return search


def _controls(message: Any) -> list[tuple[str, bool, bytes | None]]:
    """(controlType, criticality, controlValue or None) of every control of ``message``."""
    controls = message["controls"]
    if not controls.isValue:
        return []
    return [
        (
            ldap_string(c["controlType"]),
            bool(c["criticality"]),
            bytes(c["controlValue"]) if c["controlValue"].isValue else None,
        )
        for c in controls
    ]
