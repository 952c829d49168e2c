"""The VZD of a running ``kim-appliance run``, found through endpoints.json and asked with
``ldapsearch`` like a practice system would (issue 4 §5/§6, digest §4.1)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from e2e_appliance import Launcher

LDAPSEARCH = shutil.which("ldapsearch")


@pytest.mark.skipif(LDAPSEARCH is None, reason="ldapsearch missing (.ci/run installs ldap-utils)")
def test_ldapsearch_finds_every_encryption_certificate_of_a_participant(
    data_dir: Path, launcher: Launcher
) -> None:
    """KOM-LE-A_2023: the certificates a Clientmodul encrypts for come from the VZD; the RSA and
    the brainpool certificate of a participant with both come back byte for byte, over LDAP and
    LDAPS (verified with tls_ca)."""
    assert LDAPSEARCH is not None
    app = launcher.start(data_dir)
    directory = app.endpoints["directory"]
    assert directory["base_dn"] == "dc=data,dc=vzd"
    klein = app.participant("zahnarzt.klein")
    expected = {
        x509.load_pem_x509_certificate(Path(p).read_bytes()).public_bytes(Encoding.DER)
        for p in klein["export"]["enc_cert"]
    }
    assert len(expected) == 2
    for url in (f"ldap://{directory['ldap']}", f"ldaps://{directory['ldaps']}"):
        done = subprocess.run(
            [LDAPSEARCH, "-x", "-LLL", "-o", "ldif-wrap=no", "-H", url, "-b", "dc=data,dc=vzd",
             f"(mail={klein['address']})", "userCertificate;binary", "telematikID"],
            capture_output=True,
            timeout=30,
            check=False,
            env={**os.environ, "LDAPTLS_CACERT": app.endpoints["tls_ca"]},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        text = done.stdout.decode()
        got = {
            base64.b64decode(m)
            for m in re.findall(r"^userCertificate;binary:: (\S+)$", text, re.MULTILINE)
        }
        assert got == expected, url
        assert f"telematikID: {klein['telematik_id']}" in text
