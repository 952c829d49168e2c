"""The Clientmodul's C.CM.TLS-CS kept current: renewed through createCert before it expires.

A Clientmodul whose TLS client identity comes from a PKCS#12 of the Account Manager (``[clientmodul]
tls_pkcs12``, :mod:`.pkcs12`) must ask for a new one a month before the certificate expires
(A_21381, digest §1.10): createCert with a fresh random ``certPassword`` (A_21382), a bearer JWT
signed on the account's SMC-B (KOM-LE-A_2187) and the account password, answered with a new
PKCS#12 that is unpacked and checked like the first (A_19513) and used for every TLS connection
to the Fachdienste made from then on (KOM-LE-A_2301-02). The Clientmodul holds account passwords
only while a PVS is logged in, so the renewal runs after a message the PVS sent (as the KIM
version bookkeeping of step 12 does); it is tried at most once a day while due. When it fails,
the sender gets one unsigned, unencrypted notice with ``X-KIM-Fehlermeldung: 4016`` saying that
updating the PKCS#12 file failed, with ``Fehlertext:<message>`` of the Account Manager.
This module never writes a key anywhere but the appliance's TLS directory (mode 0600) and never
logs the certPassword.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
import secrets
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.x509.oid import NameOID

from kim_appliance.clientmodul.pkcs12 import (
    ClientIdentity,
    Pkcs12Error,
    unpack_pkcs12,
    write_identity,
)
from kim_appliance.clientmodul.rest import ConnectTo, RestUnavailable, https_request
from kim_appliance.clientmodul.versions import ACCOUNT_PATH, account_manager_headers
from kim_appliance.mail.headers import HeaderBlock, HeaderField
from kim_appliance.pki.tls import client_context

#: A_21381: "einen Monat vor Ablauf des TLS-Zertifikates"
RENEW_BEFORE: Final = dt.timedelta(days=30)
#: a failed renewal is tried again after this long (not on every message)
RETRY_INTERVAL: Final = 24 * 3600.0
#: X-KIM-Fehlermeldung of a failed renewal (digest §1.10, Tab_Fehlercodes_KOMLE-Clientmodule)
RENEWAL_FAILED: Final = "4016"
NOTICE_SUBJECT: Final = "Fehler bei der Aktualisierung der PKCS#12-Datei des Clientmoduls"
#: A_21382: the certPassword (a symmetric key per gemSpec_Krypt: 256 bits of randomness)
CERT_PASSWORD_BYTES: Final = 32
_CM_SUFFIX: Final = "#CM"


class CertRenewalFailed(Exception):
    """createCert failed or its PKCS#12 is unusable; ``str()`` is the reason for the notice."""


@dataclass
class CmCertificate:
    """The current C.CM.TLS-CS from a PKCS#12, and when to renew it (event loop only)."""

    identity: ClientIdentity
    tls_dir: Path
    tls_ca: Path
    renew_before: dt.timedelta = RENEW_BEFORE
    clock: Callable[[], float] = time.monotonic
    #: certificates fetched by renewal so far (logs, tests)
    renewals: int = 0
    _last_attempt: float | None = field(default=None, repr=False)

    @property
    def common_name(self) -> str:
        """The ``commonName`` for createCert: the certificate's CN without ``#CM``."""
        attributes = self.identity.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(attributes[0].value) if attributes else "clientmodul"
        return cn[: -len(_CM_SUFFIX)] if cn.endswith(_CM_SUFFIX) else cn

    def due(self, now: dt.datetime | None = None) -> bool:
        """True (and remembered) when the certificate expires within ``renew_before`` and no
        attempt was made within :data:`RETRY_INTERVAL`."""
        moment = now or dt.datetime.now(dt.UTC)
        if self.identity.not_after - moment > self.renew_before:
            return False
        tick = self.clock()
        if self._last_attempt is not None and tick - self._last_attempt < RETRY_INTERVAL:
            return False
        self._last_attempt = tick
        return True

    async def renew(
        self,
        ssl_context: ssl.SSLContext,
        base_url: str,
        *,
        account: str,
        password: str,
        jwt: str,
        timeout: float,
        connect_to: ConnectTo | None = None,
    ) -> ssl.SSLContext:
        """createCert for ``account`` (over ``ssl_context``, the current identity); the new
        identity replaces the old one and a client context presenting it is returned. Raises
        :class:`CertRenewalFailed`."""
        cert_password = secrets.token_urlsafe(CERT_PASSWORD_BYTES)
        url = base_url.rstrip("/") + ACCOUNT_PATH + account + "/cert"
        body = json.dumps(
            {
                "commonName": self.common_name,
                "certPassword": base64.b64encode(cert_password.encode("ascii")).decode("ascii"),
            }
        ).encode("ascii")
        try:
            async with https_request(
                ssl_context,
                "POST",
                url,
                headers=account_manager_headers(jwt, password),
                body=body,
                timeout=timeout,
                connect_to=connect_to,
            ) as response:
                if response.status not in (200, 201):
                    raise CertRenewalFailed(f"{response.status} {await response.message()}")
                answer = json.loads(await response.read())
            identity = unpack_pkcs12(
                base64.b64decode(answer["file"], validate=True), cert_password, source=url
            )
        except RestUnavailable as exc:
            raise CertRenewalFailed(str(exc)) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise CertRenewalFailed(f"createCert answered no PKCS#12 file: {exc!r}") from exc
        except Pkcs12Error as exc:
            raise CertRenewalFailed(str(exc)) from exc
        chain, key = write_identity(identity, self.tls_dir, "clientmodul.pkcs12")
        self.identity = identity
        self.renewals += 1
        return client_context(self.tls_ca, chain=chain, key=key)


def renewal_failed_notice(account: str, message: str, *, now: dt.datetime | None = None) -> bytes:
    """The 4016 notice of A_21381: unsigned, unencrypted, from the account to itself; says
    that updating the PKCS#12 file failed, and ``Fehlertext:<message>`` of the Account
    Manager."""
    when = email.utils.format_datetime(now or dt.datetime.now().astimezone())
    domain = account.rpartition("@")[2]
    reason = " ".join(message.split())[:500]
    text = (
        f"{NOTICE_SUBJECT}.\r\n\r\n[Fehlercode {RENEWAL_FAILED}] Bei der Aktualisierung der "
        "PKCS#12-Datei (TLS-Zertifikat des Clientmoduls, createCert) ist ein Fehler "
        f"aufgetreten.\r\nFehlertext:{reason}\r\n"
    )
    fields = (
        HeaderField("Date", b" " + when.encode("ascii")),
        HeaderField("From", f" KIM-Clientmodul <{account}>".encode("ascii")),
        HeaderField("To", f" <{account}>".encode("ascii")),
        HeaderField("Subject", b" " + NOTICE_SUBJECT.encode("utf-8")),
        HeaderField("Message-ID", f" <{uuid.uuid4()}@{domain}>".encode("ascii")),
        HeaderField("Auto-Submitted", b" auto-generated"),
        HeaderField("X-KIM-Fehlermeldung", b" " + RENEWAL_FAILED.encode("ascii")),
        HeaderField("MIME-Version", b" 1.0"),
        HeaderField("Content-Type", b" text/plain; charset=utf-8"),
        HeaderField("Content-Transfer-Encoding", b" 8bit"),
    )
    return HeaderBlock(fields).encode() + b"\r\n" + text.encode("utf-8")
