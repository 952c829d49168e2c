"""serve_asgi over a real socket: port 0, the test PKI's TLS, the Error body on the wire."""

from __future__ import annotations

import ssl
from functools import partial

import httpx
import trio

from kim_appliance.fachdienst.rest import fachdienst_app
from kim_appliance.serving.http import serve_asgi


async def test_port_zero_serves_https_verified_against_the_test_ca(fd_and_ca) -> None:  # type: ignore[no-untyped-def]
    """The bound port comes back through task_status; a client that trusts only the TLS CA
    gets ServiceInformation (digest §3.4), and the listener is gone after cancellation."""
    fd, ca = fd_and_ca
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(
            partial(
                serve_asgi, fachdienst_app(fd), bind="127.0.0.1", port=0, ssl_context=fd.server_ssl
            )
        )
        assert host == "127.0.0.1"
        assert port > 0

        def fetch() -> tuple[httpx.Response, httpx.Response]:
            context = ssl.create_default_context(cafile=str(ca))
            with httpx.Client(verify=context) as client:
                ok = client.get(f"https://127.0.0.1:{port}/ServiceInformation/v1.0/serviceinfo")
                missing = client.get(f"https://127.0.0.1:{port}/nothing/here")
            return ok, missing

        ok, missing = await trio.to_thread.run_sync(fetch)
        assert ok.status_code == 200
        assert ok.headers["content-type"] == "application/json; charset=utf-8"
        assert ok.json()["jwtExpiration"] == 300
        assert missing.status_code == 404
        assert set(missing.json()) == {"message", "traceId"}
        nursery.cancel_scope.cancel()

    def untrusted() -> str:
        try:
            httpx.get(f"https://127.0.0.1:{port}/", verify=True, timeout=2)
        except httpx.ConnectError as exc:
            return str(exc)
        return "connected"

    # after cancellation nothing listens on the port any more
    assert await trio.to_thread.run_sync(untrusted) != "connected"


async def test_client_without_the_test_ca_is_refused(fd_and_ca) -> None:  # type: ignore[no-untyped-def]
    fd, _ = fd_and_ca
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(
            partial(
                serve_asgi, fachdienst_app(fd), bind="127.0.0.1", port=0, ssl_context=fd.server_ssl
            )
        )

        def call() -> str:
            try:
                httpx.get(f"https://127.0.0.1:{port}/ServiceInformation/v1.0/serviceinfo")
            except httpx.ConnectError as exc:
                return str(exc)
            return "no error"

        assert "CERTIFICATE_VERIFY_FAILED" in await trio.to_thread.run_sync(call)
        nursery.cancel_scope.cancel()
