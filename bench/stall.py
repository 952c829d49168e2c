"""How long hostile requests stall everyone else (issue 11: "no request stalls other listeners
for more than 100 ms").

Starts ``kim-appliance run --ephemeral-ports`` in a temporary data dir, keeps one SMTP session
open to a Fachdienst and measures the round trip of ``NOOP`` every 20 ms (the probe: a cheap
request that needs the event loop and nothing else). It does that first on an idle appliance
(the baseline), then while attackers run in parallel for ``--seconds``:

- ``ldap``: anonymous searches whose filter is an OR of 1,500 items (just under the 64 KiB
  request limit), back to back on 4 connections: pyasn1 decoding and filter evaluation;
- ``soap``: 20 MiB SOAP bodies (XML parsing and base64 in the Konnektor) on 4 connections;
- ``json``: the Konnektor admin API with JSON nested 10,000 deep, on 2 connections.

Output: p50, p99 and max probe latency per phase, the number of attack requests done, and
``--json PATH`` for the figures. Run from the repository root after ``pip install .``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PROBE_INTERVAL = 0.02


def start_appliance(data_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "kim_appliance.cli", "run", "--ephemeral-ports", "--data-dir",
         str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoints = data_dir / "endpoints.json"
    deadline = time.monotonic() + 120
    while not endpoints.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the appliance did not start")
        time.sleep(0.1)
    return process, json.loads(endpoints.read_text())


def hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class Probe:
    """One SMTP session; NOOP round trips every PROBE_INTERVAL, latencies per phase."""

    def __init__(self, endpoints: dict[str, Any], context: ssl.SSLContext) -> None:
        host, port = hostport(endpoints["fachdienste"]["fd1.kim.telematik-test"]["smtp"])
        raw = socket.create_connection((host, port), timeout=30)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self._line()
        self.sock.sendall(b"EHLO probe\r\n")
        while not self._line().startswith(b"250 "):
            pass

    def _line(self) -> bytes:
        data = b""
        while not data.endswith(b"\n"):
            data += self.sock.recv(1)
        return data

    def measure(self, seconds: float) -> list[float]:
        latencies = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            self.sock.sendall(b"NOOP\r\n")
            self._line()
            latencies.append(time.perf_counter() - started)
            time.sleep(PROBE_INTERVAL)
        return latencies


def ldap_attack(endpoints: dict[str, Any], stop: threading.Event, done: list[int]) -> None:
    from ldap3.operation.search import search_operation
    from ldap3.protocol.rfc4511 import LDAPMessage, MessageID, ProtocolOp
    from pyasn1.codec.ber import encoder

    query = "(|" + "".join(f"(mail=p{i}@fd1.kim.telematik-test)" for i in range(1500)) + ")"
    request = search_operation(
        "dc=data,dc=vzd", query, "SUBTREE", "NEVER", ["mail"], 0, 0, False,
        auto_escape=False, auto_encode=False, schema=None, validator=None, check_names=False,
    )  # fmt: skip
    message = LDAPMessage()
    message["messageID"] = MessageID(1)
    message["protocolOp"] = ProtocolOp().setComponentByName("searchRequest", request)
    pdu = encoder.encode(message)
    host, port = hostport(endpoints["directory"]["ldap"])
    while not stop.is_set():
        with socket.create_connection((host, port), timeout=60) as sock:
            sock.sendall(pdu)
            answer = b""
            while b"\x65" not in answer[-200:]:  # SearchResultDone (APPLICATION 5)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        done[0] += 1


def https_attack(
    url: str,
    context: ssl.SSLContext,
    body: bytes,
    headers: dict[str, str],
    stop: threading.Event,
    done: list[int],
) -> None:
    import urllib.error
    import urllib.request

    while not stop.is_set():
        request = urllib.request.Request(url, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, context=context, timeout=120) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.read()
        done[0] += 1


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "probes": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase (default 20)")
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kim-stall-"))
    process, endpoints = start_appliance(root / "kim-data")
    try:
        context = ssl.create_default_context(cafile=endpoints["tls_ca"])
        token = (root / "kim-data" / "admin-token").read_text().strip()
        probe = Probe(endpoints, context)
        results: dict[str, Any] = {"baseline": summary(probe.measure(args.seconds))}
        print(f"baseline: {results['baseline']}", file=sys.stderr)
        sds = endpoints["konnektor"]["sds"]
        soap_url = sds.removesuffix("/connector.sds") + "/ws/SignatureService"
        soap_body = b"<x>" + b"A" * (20 * 1024 * 1024) + b"</x>"
        json_body = b"[" * 10_000 + b"]" * 10_000
        attacks = {
            "ldap": [
                (ldap_attack, (endpoints,)) for _ in range(4)
            ],
            "soap": [
                (https_attack, (soap_url, context, soap_body, {"Content-Type": "text/xml"}))
                for _ in range(4)
            ],
            "json": [
                (https_attack, (endpoints["konnektor"]["admin"], context, json_body,
                                {"Content-Type": "application/json",
                                 "Authorization": f"Bearer {token}"}))
                for _ in range(2)
            ],
        }  # fmt: skip
        for name, workers in attacks.items():
            stop = threading.Event()
            done = [0]
            threads = [
                threading.Thread(target=fn, args=(*a, stop, done), daemon=True) for fn, a in workers
            ]
            for t in threads:
                t.start()
            time.sleep(1.0)  # the attack is under way
            figures = summary(probe.measure(args.seconds))
            stop.set()
            for t in threads:
                t.join(180)
            figures["attack_requests"] = done[0]
            results[name] = figures
            print(f"{name}: {figures}", file=sys.stderr)
        print(json.dumps(results, indent=2))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
