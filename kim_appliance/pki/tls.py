"""TLS contexts from the test PKI's certificate files (TLS 1.2 and newer only).

Servers present a certificate chain file (leaf + issuing CA) and may ask for a client
certificate verified against the TLS CA; clients verify the server against the TLS CA and may
present their own certificate. RSA is the default key type of TLS certificates: OpenSSL 3.0
clients do not offer brainpool curves for TLS by default (see the pki tests). This module only
builds ``ssl.SSLContext`` objects; it never opens a connection.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(
    chain: Path, key: Path, *, client_ca: Path | None = None, require_client_cert: bool = False
) -> ssl.SSLContext:
    """A server context presenting ``chain``; with ``client_ca`` it asks for a client
    certificate (optional unless ``require_client_cert``) and verifies it against that CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(chain, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca: Path, *, chain: Path | None = None, key: Path | None = None, check_hostname: bool = True
) -> ssl.SSLContext:
    """A client context that trusts ``ca`` only, optionally presenting ``chain``/``key``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    if chain is not None and key is not None:
        context.load_cert_chain(chain, key)
    return context
