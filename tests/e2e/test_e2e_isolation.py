"""Nothing from outside ends the appliance (issue 11): every listener of a real
``kim-appliance run`` gets the inputs that used to end the whole process, a connection flood
over its cap and silent clients, and every listener serves on afterwards. Clients here are the
standard library's sockets, ``ssl``, ``urllib`` and ldap3, as an attacker on the host would use.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest
from e2e_appliance import Appliance, Launcher, split_hostport, tls_greeting

#: RFC 4511 §4.4.1: the responseName of an unsolicited Notice of Disconnection
NOTICE = b"1.3.6.1.4.1.1466.20036"
#: resultCode busy (51) as BER: ENUMERATED, length 1, 0x33
BUSY = b"\x0a\x01\x33"
CAP = 4
FIRST_COMMAND_SECONDS = 2


@pytest.fixture(scope="module")
def app(template_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """One appliance with a small connection cap and a short first-command deadline."""
    import shutil

    root = tmp_path_factory.mktemp("isolation")
    data_dir = root / "kim-data"
    shutil.copytree(template_dir, data_dir)
    config = data_dir / "config.toml"
    config.write_text(
        config.read_text(encoding="utf-8")
        .replace("max_connections = 256", f"max_connections = {CAP}")
        .replace("first_command_seconds = 30", f"first_command_seconds = {FIRST_COMMAND_SECONDS}"),
        encoding="utf-8",
    )
    launcher = Launcher(root)
    try:
        yield launcher.start(data_dir)
    finally:
        launcher.close()


# --- what a user of each listener notices when it works ----------------------------------------


def assert_all_serving(app: Appliance) -> None:
    """Every listener answers as it should: the process and all its components are alive."""
    assert app.process.poll() is None, f"the appliance exited:\n{app.stderr()[-3000:]}"
    context = app.ssl_context()
    for domain in app.endpoints["fachdienste"]:
        assert tls_greeting(*app.fd(domain, "smtp"), context).startswith(b"220 ")
        assert tls_greeting(*app.fd(domain, "pop3"), context).startswith(b"+OK")
    cm = app.endpoints["clientmodul"]
    assert tls_greeting(*split_hostport(cm["smtp"]), context).startswith(b"220 ")
    assert tls_greeting(*split_hostport(cm["pop3"]), context).startswith(b"+OK")
    sonne = app.participant("apotheke.sonne")["address"]
    host, port = split_hostport(app.endpoints["directory"]["ldap"])
    server = ldap3.Server(host, port=port, get_info=ldap3.NONE)
    with ldap3.Connection(server, auto_bind=True, receive_timeout=10) as ldap:
        ldap.search("dc=data,dc=vzd", f"(mail={sonne})", attributes=["mail"])
        assert [e.mail.value for e in ldap.entries] == [sonne]
    assert _https(app, app.endpoints["konnektor"]["sds"])[0] == 200
    for urls in app.endpoints["fachdienste"].values():
        assert _https(app, urls["https"] + "/ServiceInformation/v1.0/serviceinfo")[0] == 200
    console = app.endpoints["console"]
    assert _http(console + "api/status")[0] == 200


def _https(
    app: Appliance,
    url: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, context=app.ssl_context(), timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _http(
    url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _ldap_exchange(app: Appliance, pdu: bytes, *, tls: bool = False) -> bytes:
    """Send ``pdu`` to the LDAP (or LDAPS) listener and read until the server closes."""
    host, port = split_hostport(app.endpoints["directory"]["ldaps" if tls else "ldap"])
    raw = socket.create_connection((host, port), timeout=30)
    sock: socket.socket = app.ssl_context().wrap_socket(raw, server_hostname=host) if tls else raw
    with sock:
        sock.sendall(pdu)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
        return received


def _admin_headers(app: Appliance) -> dict[str, str]:
    token = (app.data_dir / "admin-token").read_text(encoding="ascii").strip()
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


# --- the inputs that used to end the process ------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["ldap", "ldaps"])
def test_ldap_octet_string_with_8_octet_length(app: Appliance, tls: bool) -> None:
    """The 21-byte search whose OCTET STRING claims an 8-octet length raised OverflowError in
    the BER decoder and ended the appliance; now the client gets a Notice of Disconnection
    (protocolError) and every listener serves on."""
    pdu = bytes.fromhex("3013020101630e0488ffffffffffffffff00000000")
    answer = _ldap_exchange(app, pdu, tls=tls)
    assert NOTICE in answer
    assert_all_serving(app)


def test_ldap_search_of_15000_alternatives_is_refused_unread(app: Appliance) -> None:
    """An OR of 15,000 items (259 KB) kept the event loop busy for seconds; a request PDU above
    64 KiB is now refused before it is decoded, and the rest of the process never noticed."""
    from ldap3.operation.search import search_operation
    from ldap3.protocol.rfc4511 import LDAPMessage, MessageID, ProtocolOp
    from pyasn1.codec.ber import encoder

    query = "(|" + "".join(f"(mail=x{i}@fd1.kim.telematik-test)" for i in range(15_000)) + ")"
    request = search_operation(
        "dc=data,dc=vzd", query, ldap3.SUBTREE, ldap3.DEREF_NEVER, ["mail"], 0, 0, False,
        auto_escape=False, auto_encode=False, schema=None, validator=None, check_names=False,
    )  # fmt: skip
    message = LDAPMessage()
    message["messageID"] = MessageID(1)
    message["protocolOp"] = ProtocolOp().setComponentByName("searchRequest", request)
    pdu = encoder.encode(message)
    assert len(pdu) > 250_000
    started = time.monotonic()
    answer = _ldap_exchange(app, pdu)
    assert NOTICE in answer
    assert b"exceeds the limit" in answer
    assert time.monotonic() - started < 10
    assert_all_serving(app)


def test_konnektor_overlong_wsdl_path_is_404(app: Appliance) -> None:
    """``GET /wsdl/`` + 300 characters raised ``OSError: file name too long``."""
    base = app.endpoints["konnektor"]["sds"].removesuffix("/connector.sds")
    status, body = _https(app, f"{base}/wsdl/{'a' * 300}")
    assert status == 404
    assert b"no such file" in body
    assert_all_serving(app)


def test_konnektor_admin_json_nested_100000_deep(app: Appliance) -> None:
    """JSON nested 100,000 deep raised RecursionError in the admin API; now it is a 400 that
    names the problem, and the Konnektor keeps its faults as they were."""
    status, body = _https(
        app,
        app.endpoints["konnektor"]["admin"],
        data=b"[" * 100_000 + b"]" * 100_000,
        headers=_admin_headers(app),
    )
    assert status == 400, body
    assert json.loads(body)["error"]
    assert_all_serving(app)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content-Type": "application/json"}, 401),  # no token
        ({"Content-Type": "text/plain"}, 415),  # what a cross-site form or fetch can send
        ({"Content-Type": "application/json", "Origin": "https://evil.example"}, 403),
        ({"Content-Type": "application/json", "Host": "evil.example:443"}, 403),  # rebinding
        ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403),
    ],
    ids=["no-token", "text-plain", "foreign-origin", "foreign-host", "cross-site"],
)
def test_konnektor_admin_refuses_what_a_browser_or_stranger_sends(
    app: Appliance, headers: dict[str, str], status: int
) -> None:
    """The admin API switched faults for cross-site requests without a token; now it requires
    the admin token, JSON, its own Host and no foreign Origin (like the console), and a refused
    switch changes nothing."""
    token_headers = _admin_headers(app)
    request_headers = dict(headers)
    if status != 401:
        request_headers["Authorization"] = token_headers["Authorization"]
    got, body = _https(
        app,
        app.endpoints["konnektor"]["admin"],
        data=b'{"unreachable": true}',
        headers=request_headers,
    )
    assert got == status, body
    _, state = _https(app, app.endpoints["konnektor"]["admin"], headers=token_headers)
    assert json.loads(state)["unreachable"] is False


@pytest.mark.parametrize("latency", [b"1e999", b"-1", b"3600001", b'"slow"'])
def test_konnektor_admin_refuses_unbounded_latency(app: Appliance, latency: bytes) -> None:
    """``latency_ms`` of 1e999 made every card operation hang; values outside 0..60000 ms are a
    400 naming the field, and cards keep answering."""
    status, body = _https(
        app,
        app.endpoints["konnektor"]["admin"],
        data=b'{"latency_ms": ' + latency + b"}",
        headers=_admin_headers(app),
    )
    assert status == 400, body
    error = json.loads(body)["error"]
    assert error.startswith("latency_ms") or "1e999" in error, error
    _, state = _https(app, app.endpoints["konnektor"]["admin"], headers=_admin_headers(app))
    assert json.loads(state)["latency"] == 0


def test_konnektor_refuses_an_oversized_soap_body_before_reading_it(app: Appliance) -> None:
    """A SOAP request announcing more than the Konnektor takes per operation (digest §1.8, just
    under 25 MiB of document) gets 413 at once: the body is never read into memory."""
    host, port = split_hostport(app.endpoints["konnektor"]["sds"].split("/")[2])
    head = (
        f"POST /ws/SignatureService HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: text/xml; charset=utf-8\r\nContent-Length: 600000000\r\n\r\n"
    ).encode()
    with (
        socket.create_connection((host, port), timeout=30) as raw,
        app.ssl_context().wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(head + b"<" * 1000)
        answer = tls.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")
    assert_all_serving(app)


# --- resources: caps and deadlines -------------------------------------------------------------


def test_connection_cap_refuses_and_silent_clients_are_closed(app: Appliance) -> None:
    """Idle connections used to starve every listener (1,100 silent LDAP clients, "too many
    open files"). Over the cap a client hears LDAP busy at once; the other listeners serve
    meanwhile; a client that never sends its first PDU is closed after the first-command
    deadline (seconds, not the 15 minutes of an idle session), which frees the listener."""
    host, port = split_hostport(app.endpoints["directory"]["ldap"])
    silent = [socket.create_connection((host, port), timeout=30) for _ in range(CAP)]
    try:
        time.sleep(0.3)  # the listener has accepted them
        answer = _ldap_exchange(app, b"")
        assert NOTICE in answer
        assert BUSY in answer, answer
        context = app.ssl_context()
        for domain in app.endpoints["fachdienste"]:
            assert tls_greeting(*app.fd(domain, "smtp"), context).startswith(b"220 ")
        started = time.monotonic()
        for sock in silent:
            notice = b""
            while chunk := sock.recv(4096):
                notice += chunk
            assert NOTICE in notice  # "unavailable: idle for 2 s"
        assert time.monotonic() - started < FIRST_COMMAND_SECONDS + 5
    finally:
        for sock in silent:
            sock.close()
    assert_all_serving(app)


def test_silent_smtp_client_is_closed_after_the_first_command_deadline(app: Appliance) -> None:
    """A client that finishes TLS and never sends a command hears ``421 4.4.2`` after the
    first-command deadline (the 5-minute idle timeout is for clients that have spoken)."""
    host, port = app.fd("fd1.kim.telematik-test", "smtp")
    with (
        socket.create_connection((host, port), timeout=30) as raw,
        app.ssl_context().wrap_socket(raw, server_hostname=host) as tls,
    ):
        started = time.monotonic()
        received = b""
        while chunk := tls.recv(4096):
            received += chunk
        waited = time.monotonic() - started
    assert received.startswith(b"220 ")
    assert received.endswith(b"421 4.4.2 idle timeout\r\n")
    assert FIRST_COMMAND_SECONDS - 0.5 < waited < FIRST_COMMAND_SECONDS + 5


def test_console_refuses_nested_json(app: Appliance) -> None:
    """The console's fault switch refuses a body nested 100,000 deep with 400 (or 413 for
    its size), never a 500, and keeps serving."""
    console = app.endpoints["console"]
    status, _ = _http(
        console + "api/faults",
        data=b"[" * 8000 + b"]" * 8000,
        headers={"Content-Type": "application/json"},
    )
    assert status in (400, 413)
    assert_all_serving(app)
