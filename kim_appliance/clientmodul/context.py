"""What the Clientmodul's SMTP and POP3 proxies share: Konnektor, VZD, upstream resolution,
TLS contexts and the version strings it writes (digest §1.4, §2.2, §2.3).

The Clientmodul reaches the Fachdienst over real SMTPS/POP3S even in one process (DESIGN.md);
the Konnektor and the VZD through their in-process interfaces. This module holds state only.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from kim_appliance.directory import DirectoryStore
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.pki import TrustStore

#: A function mapping the host:port the PVS named in its username (digest §1.2 index 1; None
#: when it left the field out) and the protocol ("smtp" | "pop3") to the address to connect to.
UpstreamResolver = Callable[[str | None, int | None, str, str], tuple[str, int]]


@dataclass
class ClientmodulContext:
    konnektor: Konnektor
    directory: DirectoryStore
    #: (host from the username or None, port or None, protocol, account address) -> (host, port)
    resolve_upstream: UpstreamResolver
    #: verifies the Fachdienst's C.FD.TLS-S against the TLS CA (KOM-LE-A_2074/2075)
    upstream_ssl: ssl.SSLContext
    #: the PVS side: the Clientmodul's own server certificate (C.CM.TLS-CS), client cert optional
    server_ssl: ssl.SSLContext
    #: trust anchors, intermediates and CRLs for the signer's certificate path
    trust: TrustStore
    spool_dir: Path
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("kim_appliance.cm"))
    #: X-KIM-CMVersion / X-KIM-PTVersion / X-KIM-KONVersion (digest §2.2, A_21388-01)
    cm_version: str = "KIMAP_0.1.0"
    pt_version: str = "1.5.3"
    kon_version: str = "<kim-appliance Konnektor><Konnektor PTV5><5.0.2><1.0.0><1.0.0><null>"
    #: sign with the SMC-B's ECC key when it has one (release 1.5.4 preference, digest §1.4 step 8)
    prefer_ecc: bool = True
    #: EHLO SIZE the Clientmodul offers the PVS (digest §1.3: >= 35882577)
    max_message_size: int = 734003200
    #: dataTimeToLive for the Expires header (A_22417), days
    data_ttl_days: int = 90
    session_timeout_seconds: int = 300
    #: at most this many messages in the CPU-heavy pipelines at a time (2 cores)
    pipeline_limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(4))
