"""What the Clientmodul's SMTP and POP3 proxies share: Konnektor, VZD, upstream resolution,
TLS contexts, the version strings it writes (digest §1.4, §2.2, §2.3), its caches and the
observer that records each hop of a message (issue 15).

The Clientmodul reaches the Fachdienst over real SMTPS/POP3S/HTTPS even in one process
(DESIGN.md), and the Konnektor and the VZD through its two ports (:mod:`.ports`): in-process
adapters, or SOAP and LDAP to a Konnektor and a VZD anywhere. This module holds state only: the
caches (VZD lookups, signing cards, decryption cards, account limits, version notices) live
here, one set per Clientmodul, so two Clientmodule in one process never share what they
learned. It never does I/O itself.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio

from kim_appliance.clientmodul.cards import SigningCards
from kim_appliance.clientmodul.cm_certificate import CmCertificate
from kim_appliance.clientmodul.keys import DecryptionKeyFinder
from kim_appliance.clientmodul.limits import LimitsCache
from kim_appliance.clientmodul.ports import DirectoryPort, KonnektorPort
from kim_appliance.clientmodul.rest import ConnectTo
from kim_appliance.clientmodul.username import NO_DEFAULTS, ContextDefaults
from kim_appliance.clientmodul.versions import VersionNotices
from kim_appliance.clientmodul.vzd_lookup import VzdLookup
from kim_appliance.observe.observer import Observer
from kim_appliance.serving import ListenerLimits

#: A function mapping the host:port the PVS named in its username (digest §1.2 index 1; None
#: when it left the field out) and the protocol ("smtp" | "pop3") to the address to connect to.
UpstreamResolver = Callable[[str | None, int | None, str, str], tuple[str, int]]
#: A function mapping a KIM domain to the ``https://host:port`` base of its Fachdienst's REST
#: services (Account Manager, AccountLimit, KAS; digest §3.1 discovery). LookupError if unknown.
HttpsResolver = Callable[[str], str]

#: KIM >= 1.5.3: a client mail above this goes through the KAS (digest §1.4 step 7) unless
#: getLimits names another kasMailSizeThreshold.
KAS_THRESHOLD: Final = 15 * 1024 * 1024
#: CM_KAS_TIMEOUT of Tab_Konf_Param (digest §1.9): 30 s per KAS/REST exchange without progress
CM_KAS_TIMEOUT: Final = 30.0


def _direct(host: str, port: int) -> tuple[str, int]:
    return host, port


def _no_https(domain: str) -> str:
    raise LookupError(f"no Fachdienst HTTPS endpoint known for {domain}")


def _no_fallbacks(domain: str, protocol: str) -> list[tuple[str, int]]:
    return []


@dataclass
class ClientmodulContext:
    #: the Konnektor port: cards, signing, decryption, certificate checks (digest §1.8)
    konnektor: KonnektorPort
    #: the directory port: the VZD's entries of KIM addresses (digest §4.1)
    directory: DirectoryPort
    #: (host from the username or None, port or None, protocol, account address) -> (host, port)
    resolve_upstream: UpstreamResolver
    #: verifies the Fachdienst's C.FD.TLS-S against the TLS CA (KOM-LE-A_2074/2075) and presents
    #: the Clientmodul's C.CM.TLS-CS as client certificate when one is loaded (digest §1.9)
    upstream_ssl: ssl.SSLContext
    #: the PVS side: the Clientmodul's own server certificate (C.CM.TLS-CS), client cert optional
    server_ssl: ssl.SSLContext
    spool_dir: Path
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("kim_appliance.cm"))
    #: KIM domain -> https://host:port of its Fachdienst (KAS, AccountLimit, Account Manager)
    resolve_https: HttpsResolver = _no_https
    #: (KIM domain, "smtp" or "pop3") -> further (host, port) serving it, tried in order when
    #: the resolved one cannot be reached (the other live nodes of a cluster; equal-preference
    #: MX records)
    fallbacks: Callable[[str, str], list[tuple[str, int]]] = _no_fallbacks
    #: X-KIM-CMVersion / X-KIM-PTVersion / X-KIM-KONVersion (digest §2.2, A_21388-01)
    cm_version: str = "KIMAP_0.1.0"
    pt_version: str = "1.5.3"
    kon_version: str = "<kim-appliance Konnektor><Konnektor PTV5><5.0.2><1.0.0><1.0.0><null>"
    #: sign with the SMC-B's ECC key when it has one (release 1.5.4 preference, digest §1.4 step 8)
    prefer_ecc: bool = True
    #: EHLO SIZE the Clientmodul offers the PVS (digest §1.3: >= 35882577); also the maxMailSize
    #: used when the AccountLimit service cannot be asked (A_19355-01)
    max_message_size: int = 734003200
    #: the KAS threshold when getLimits names none (digest §1.4 step 7)
    kas_threshold: int = KAS_THRESHOLD
    #: CM_KAS_TIMEOUT (digest §1.9), also used for AccountLimit and Account Manager calls
    kas_timeout_seconds: float = CM_KAS_TIMEOUT
    #: dataTimeToLive for the Expires header (A_22417), days
    data_ttl_days: int = 90
    session_timeout_seconds: int = 300
    #: the call context for usernames that write ``*`` for a context field (``[clientmodul]``)
    context_defaults: ContextDefaults = NO_DEFAULTS
    #: (host, port) a REST URL names -> (host, port) to connect to (``[clientmodul.fachdienste]``;
    #: the TLS name checked stays the URL's host)
    connect_to: ConnectTo = _direct
    #: connection cap and deadlines of its listeners (``[limits]``, kim_appliance.serving)
    listener_limits: ListenerLimits = field(default_factory=ListenerLimits)
    #: records every hop of a message (trace and metrics, issue 15); the appliance's observer
    #: writes to the store, a test's default one keeps metrics only
    observer: Observer = field(default_factory=Observer)
    #: at most this many messages in the CPU-heavy pipelines at a time (2 cores)
    pipeline_limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(4))
    # --- the caches (made from the fields above unless given) ---
    #: VZD lookups with TTL_ENC_CERT / A_22340 (KOM-LE-A_2026)
    vzd: VzdLookup = field(default=None)  # type: ignore[assignment]
    #: decryption cards with TTL_EMAIL_ICCSN (KOM-LE-A_2061)
    key_finder: DecryptionKeyFinder = field(default=None)  # type: ignore[assignment]
    #: the SMC-B that signs per context and account
    signing_cards: SigningCards = field(default=None)  # type: ignore[assignment]
    #: getLimits per account, 24 h (A_22416)
    limits: LimitsCache = field(default_factory=LimitsCache)
    #: 4017 notices and kimVersion updates per account, once a day (A_21387-01)
    version_notices: VersionNotices = field(default_factory=VersionNotices)
    #: the C.CM.TLS-CS from a PKCS#12 of createCert, renewed before it expires (A_21381); None
    #: when the appliance's own issued certificate is used
    cm_certificate: CmCertificate | None = None

    def __post_init__(self) -> None:
        if self.vzd is None:
            self.vzd = VzdLookup(self.directory)
        if self.key_finder is None:
            self.key_finder = DecryptionKeyFinder(self.konnektor)
        if self.signing_cards is None:
            self.signing_cards = SigningCards(self.konnektor)
