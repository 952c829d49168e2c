"""What the VZD tests share: the ldapsearch runner, an LDIF reader, the test TLS certificate.
In a module of its own, not in conftest.py, so that tests import it by a name no other
directory uses."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest
import trio

from kim_appliance.pki import Algorithm, CertProfile, TestPki

BASE = "dc=data,dc=vzd"
ADMIN = ("cn=pvs,dc=data,dc=vzd", "geheim")
WEBER = "praxis.weber@fd1.kim.telematik-test"
MEYER = "dr.meyer@fd2.kim.telematik-test"

needs_ldapsearch = pytest.mark.skipif(
    shutil.which("ldapsearch") is None, reason="ldapsearch (ldap-utils) is not installed"
)


def tls_files_for(demo_dir: Path, directory: Path) -> tuple[Path, Path, Path]:
    """(chain, key, CA) of a C.ZD.TLS-S certificate for 127.0.0.1 from the demo test PKI,
    written to ``directory``."""
    pki = TestPki.load(demo_dir / "pki")
    issued = pki.issue(
        CertProfile.C_ZD_TLS_S, Algorithm.RSA, common_name="vzd.localhost",
        dns_names=["localhost"], ip_addresses=["127.0.0.1"],
    )  # fmt: skip
    chain, key = directory / "chain.pem", directory / "key.pem"
    ca = pki.ca_for(CertProfile.C_ZD_TLS_S, Algorithm.RSA)
    chain.write_bytes(issued.cert_pem() + ca.issued.cert_pem())
    key.write_bytes(issued.key_pem())
    return chain, key, demo_dir / "pki" / "tls-ca.pem"


async def ldapsearch(
    url: str, *args: str, env: dict[str, str] | None = None, ldif: str = "-LLL"
) -> tuple[int, str, str]:
    """``ldapsearch -x`` below the base DN; ``ldif`` ``-LL`` keeps the comments (e.g. one
    ``# pagedresults`` per page)."""
    result = await trio.run_process(
        ["ldapsearch", "-x", ldif, "-o", "ldif-wrap=no", "-H", url, "-b", BASE, *args],
        capture_stdout=True, capture_stderr=True, check=False,
        env={**os.environ, "LDAPTLS_REQCERT": "demand", **(env or {})},
    )  # fmt: skip
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def ldif_entries(text: str) -> list[dict[str, list[bytes]]]:
    entries = []
    for block in text.strip().split("\n\n"):
        if not block.strip():
            continue
        entry: dict[str, list[bytes]] = {}
        for line in block.splitlines():
            if line.startswith(("#", "version:")):
                continue
            if ":: " in line:
                name, value = line.split(":: ", 1)
                entry.setdefault(name, []).append(base64.b64decode(value))
            else:
                name, value = line.split(": ", 1)
                entry.setdefault(name, []).append(value.encode())
        if entry:
            entries.append(entry)
    return entries


def url(address: tuple[str, int] | None, scheme: str = "ldap") -> str:
    assert address is not None
    return f"{scheme}://{address[0]}:{address[1]}"
