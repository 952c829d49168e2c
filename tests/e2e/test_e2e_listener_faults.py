"""A bug in any connection handler ends only that connection (issue 11: fault isolation by
construction). For every listener of the in-process appliance, the code that handles a request
is made to raise once; the client hears that protocol's internal-error answer, the error is
logged once with its traceback, and the same listener (and every other) serves the next client.
The failures are injected with monkeypatch because after issue 11 no known input raises."""

from __future__ import annotations

import logging
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from e2e_appliance import split_hostport

from kim_appliance.testing import KimAppliance

Connect = Callable[[KimAppliance], bytes]
#: a BindResponse (APPLICATION 1) whose resultCode is success (ENUMERATED 0)
BIND_SUCCESS = b"\x61\x07\x0a\x01\x00"


def _raise_once(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Make ``owner.name`` raise RuntimeError on its first call, then behave as before."""
    original = getattr(owner, name)
    calls: list[int] = []

    def first_call_fails(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(f"injected bug in {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, first_call_fails)
    return calls


def _tls_dialogue(app: KimAppliance, hostport: str, send: bytes) -> bytes:
    """Implicit TLS: read the greeting, send ``send``, read until the server closes."""
    host, port = split_hostport(hostport)
    with (
        socket.create_connection((host, port), timeout=30) as raw,
        app.ssl_context().wrap_socket(raw, server_hostname=host) as tls,
    ):
        received = tls.recv(4096)
        tls.sendall(send)
        try:
            while chunk := tls.recv(4096):
                received += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
        return received


def _smtp(which: str) -> Connect:
    def connect(app: KimAppliance) -> bytes:
        fd1 = app.endpoints["fachdienste"]["fd1.kim.telematik-test"]
        hostport = fd1["smtp"] if which == "fd" else app.endpoints["clientmodul"]["smtp"]
        return _tls_dialogue(app, hostport, b"EHLO pvs.example\r\nQUIT\r\n")

    return connect


def _pop3(which: str) -> Connect:
    def connect(app: KimAppliance) -> bytes:
        fd1 = app.endpoints["fachdienste"]["fd1.kim.telematik-test"]
        hostport = fd1["pop3"] if which == "fd" else app.endpoints["clientmodul"]["pop3"]
        return _tls_dialogue(
            app, hostport, b"USER someone@fd1.kim.telematik-test\r\nPASS wrong\r\nQUIT\r\n"
        )

    return connect


def _ldap(app: KimAppliance) -> bytes:
    """An anonymous simple bind, raw, then read until the server closes or 2 s pass."""
    host, port = split_hostport(app.endpoints["directory"]["ldap"])
    bind = bytes.fromhex("300c020101600702010304008000")
    unbind = bytes.fromhex("30050201024200")
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(bind)
        received = sock.recv(4096)
        try:
            sock.sendall(unbind)
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass  # the server closed after its Notice of Disconnection
        return received


def _https(url_of: Callable[[KimAppliance], str]) -> Connect:
    def connect(app: KimAppliance) -> bytes:
        url = url_of(app)
        context = app.ssl_context() if url.startswith("https") else None
        try:
            with urllib.request.urlopen(url, context=context, timeout=30) as response:
                return f"{response.status}".encode() + b" " + response.read()
        except urllib.error.HTTPError as exc:
            return f"{exc.code}".encode() + b" " + exc.read()
        except (urllib.error.URLError, ConnectionError) as exc:
            return f"closed {exc}".encode()

    return connect


def _serviceinfo(app: KimAppliance) -> str:
    https = app.endpoints["fachdienste"]["fd1.kim.telematik-test"]["https"]
    return str(https) + "/ServiceInformation/v1.0/serviceinfo"


def _console(app: KimAppliance) -> str:
    return str(app.endpoints["console"]) + "api/status"


def _konnektor(app: KimAppliance) -> str:
    return str(app.endpoints["konnektor"]["sds"])


def _targets() -> list[Any]:
    from hypercorn.trio.tcp_server import TCPServer

    from kim_appliance.clientmodul.pop3_proxy import CmPop3Session
    from kim_appliance.clientmodul.smtp_proxy import CmSmtpSession
    from kim_appliance.directory import server as directory_server
    from kim_appliance.fachdienst import service_info
    from kim_appliance.fachdienst.pop3_session import Pop3Session
    from kim_appliance.fachdienst.smtp_session import SmtpSession
    from kim_appliance.konnektor.soap.server import _App
    from kim_appliance.web.console import app as console_app

    ok_http = b"200 "
    return [
        # listener, (owner, name) that raises, client, what the failed client hears, a good answer
        ("fd smtp", SmtpSession, "decide", _smtp("fd"), b"421 4.3.0 internal error", b"250"),
        ("fd pop3", Pop3Session, "answer", _pop3("fd"), b"-ERR [SYS/TEMP] internal error", b"+OK"),
        ("cm smtp", CmSmtpSession, "decide", _smtp("cm"), b"421 4.3.0 internal error", b"250"),
        (
            "cm pop3",
            CmPop3Session,
            "answer",
            _pop3("cm"),
            b"-ERR [SYS/TEMP] internal error",
            b"+OK",
        ),
        (
            "ldap",
            directory_server,
            "_check_bind",
            _ldap,
            b"internal error of the directory",
            BIND_SUCCESS,
        ),
        ("konnektor https", _App, "route", _https(_konnektor), b"500 internal error", ok_http),
        ("rest app", service_info, "JsonUtf8Response", _https(_serviceinfo), b"500 ", ok_http),
        ("rest connection", TCPServer, "run", _https(_serviceinfo), b"closed", ok_http),
        ("console app", console_app, "status", _https(_console), b"500 ", ok_http),
        ("console connection", TCPServer, "run", _https(_console), b"closed", ok_http),
    ]


@pytest.mark.parametrize(
    ("owner", "name", "connect", "failed", "served"),
    [pytest.param(*t[1:], id=t[0]) for t in _targets()],
)
def test_a_bug_in_a_handler_ends_only_its_connection(
    kim_appliance: KimAppliance,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    owner: Any,
    name: str,
    connect: Connect,
    failed: bytes,
    served: bytes,
) -> None:
    """The first client meets the injected bug and hears the protocol's internal-error answer
    (or, where HTTP has none left to give, a closed connection); the error is logged with its
    traceback; the next client of the same listener is served."""
    caplog.set_level(logging.ERROR)
    calls = _raise_once(monkeypatch, owner, name)
    first = connect(kim_appliance)
    assert calls, f"{name} was never called: the test does not reach the handler"
    assert failed in first, first
    second = connect(kim_appliance)
    assert served in second, second
    assert failed not in second
    logged = [r for r in caplog.records if r.exc_info and f"injected bug in {name}" in str(
        r.exc_info[1]
    )]  # fmt: skip
    assert logged, "the bug was not logged with its traceback"
