"""The Clientmodul's two ports: what it needs from a Konnektor and from the VZD, and no more.

In real KIM the Clientmodul stands in the practice and talks SOAP to the practice's Konnektor
and LDAP to the TI's directory (digest §1.8, §4.1). Here it reaches both only through the two
interfaces of this module, so that it runs against this appliance's own objects (in-process
adapters, :mod:`kim_appliance.adapters`), against this or another appliance over the wire, or
against a practice's real Konnektor and the TI's VZD (network adapters,
:mod:`kim_appliance.clientmodul.network`), with the same results:

* :class:`KonnektorPort`: find the cards a call context sees (GetCards), read a card's
  certificates (ReadCardCertificate), sign a document for a card, decrypt a message for a card,
  verify a certificate (VerifyCertificate), and sign a hash with the AUT key
  (ExternalAuthenticate), and say whether it supports ECC (its service versions, A_17464).
  *How* a document is signed or a message decrypted is the adapter's
  choice: the in-process adapter hands out the card's keys, so the native streaming path signs
  a digest and unwraps a content key (the speed of issue 4); the SOAP adapter sends the whole
  document to SignDocument and DecryptDocument, as gematik's Clientmodul specification
  prescribes (KOM-LE-A_2190). Encrypting the outgoing message is no Konnektor operation here:
  the Clientmodul encrypts itself, for the certificates the VZD publishes.
* :class:`DirectoryPort`: the entries publishing some KIM addresses (``(mail=...)``, digest
  §4.1), as :class:`DirectoryRecord` values.

Both are blocking: a method may wait for a slow card or the network. Call them from a worker
thread (``trio.to_thread.run_sync``); the network adapters hand their I/O back to the event loop
from there. Refusals are :class:`KonnektorFault` (with gematik's error code) and
:class:`KonnektorUnreachable` / :class:`DirectoryUnreachable` (nothing answered). This module
holds interfaces and values only; it must never do I/O, and nothing in it may name a Konnektor
or directory implementation.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography import x509

from kim_appliance.cms.keys import KeyOperations
from kim_appliance.errors import KimError
from kim_appliance.mail.seal import DocumentSigner
from kim_appliance.mail.unseal import DocumentDecryptor
from kim_appliance.pki.validate import CertificateValidator

# --- gematik's error codes the Clientmodul acts on (digest §1.6, §1.8; TUC_KON_000) ---------

SYNTAX_ERROR: Final = 4000
CARD_NOT_INSERTED: Final = 4008
CALL_NOT_ALLOWED: Final = 4058
ACCESS_CONDITIONS_NOT_MET: Final = 4085
#: the call context is invalid (Mandant, ClientSystem, Workplace, User; digest §1.3: ``501``)
CONTEXT_ERRORS: Final = frozenset({4004, 4005, 4006, 4010, 4011, 4014, 4021})

#: ``Crypt`` of SignDocument: the ECC key when the card has one, else RSA (digest §2.8)
RSA_ECC: Final = "RSA_ECC"

#: A_17464: a Konnektor supports ECC when it offers SignatureService at least 7.4.1 and
#: EncryptionService at least 6.1.1 (digest §1.4 step 5, §2.8)
ECC_MINIMUM_VERSIONS: Final[Mapping[str, tuple[int, ...]]] = {
    "SignatureService": (7, 4, 1),
    "EncryptionService": (6, 1, 1),
}


def version_tuple(version: str) -> tuple[int, ...]:
    """``"7.4.1"`` -> ``(7, 4, 1)``; a part that is not a number ends it (``"6.1.0-rc"``
    -> ``(6, 1)``), so a version nobody can read counts as the lowest."""
    parts: list[int] = []
    for part in version.strip().split("."):
        digits = part[: len(part) - len(part.lstrip("0123456789"))] if part else ""
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(part):
            break
    return tuple(parts)


def ecc_capable(offered: Mapping[str, Sequence[str]]) -> bool:
    """A_17464: whether a Konnektor offering these service versions (service name -> the
    versions its service directory lists) supports ECC: the highest version of each service
    of :data:`ECC_MINIMUM_VERSIONS` reaches the minimum. A service it does not offer at all
    counts as too old."""
    return all(
        max((version_tuple(v) for v in offered.get(service, ())), default=()) >= minimum
        for service, minimum in ECC_MINIMUM_VERSIONS.items()
    )


class CardType(enum.StrEnum):
    """The card types the Clientmodul looks for (CardServiceCommon CardType)."""

    SMC_B = "SMC-B"
    HBA = "HBA"


@dataclass(frozen=True)
class CallContext:
    """The Konnektor call context (CCTX:Context, digest §1.8) of a Clientmodul login."""

    mandant_id: str
    client_system_id: str
    workplace_id: str
    #: needed when the mailbox uses an HBA (the holder's UserId)
    user_id: str | None = None


@dataclass(frozen=True)
class Card:
    """One card GetCards reports for a context.

    ``telematik_id`` is known only to an in-process Konnektor (GetCards over SOAP does not
    report it); callers learn it from the card's certificates otherwise."""

    handle: str
    card_type: str
    iccsn: str
    holder_name: str
    telematik_id: str | None = None


class KonnektorFault(KimError):
    """The Konnektor refused a call with a gematik error (SOAP Fault ``GERROR:Trace``).

    ``code`` is the Trace Code (None when the Konnektor named none, e.g. a SOAP Fault of the
    envelope itself), ``text`` the ErrorText, ``detail`` what was wrong in this call. Not a
    ``ValueError``: the CMS code turns ValueErrors of a key operation into decryption errors,
    and a Konnektor's refusal must reach the pipeline as it is.
    """

    def __init__(self, code: int | None, text: str, detail: str = "") -> None:
        shown = f"{code} {text}" if code is not None else text
        super().__init__(shown + (f": {detail}" if detail else ""))
        self.code = code
        self.text = text
        self.detail = detail

    @property
    def context_refused(self) -> bool:
        """The call context is invalid (4004-4021): the PVS sent a wrong username."""
        return self.code in CONTEXT_ERRORS


class KonnektorUnreachable(KimError, ConnectionError):
    """No answer from the Konnektor: refused or broken connection, TLS failure, timeout. The
    Clientmodul refuses to send (451/454) and reports DecryptionResult 03 (4011) on receive.
    The message starts ``Konnektor not reachable:`` and says what failed."""

    PREFIX = "Konnektor not reachable: "

    def __init__(self, reason: str) -> None:
        super().__init__(reason if reason.startswith(self.PREFIX) else self.PREFIX + reason)


class DirectoryUnreachable(KimError, ConnectionError):
    """No usable answer from the VZD (connection, TLS, timeout, LDAP error). The message starts
    ``VZD not reachable:`` and says what failed."""

    PREFIX = "VZD not reachable: "

    def __init__(self, reason: str) -> None:
        super().__init__(reason if reason.startswith(self.PREFIX) else self.PREFIX + reason)


#: what signs a KIM message for a card: its key (a digest is signed on the card, the message
#: streams through the native path) or the Konnektor's SignDocument (the whole document)
Signer = KeyOperations | DocumentSigner
#: what decrypts a KIM message for a card: its ENC keys (the card unwraps the content key) or
#: the Konnektor's DecryptDocument (the whole AuthEnvelopedData)
Decryption = Sequence[KeyOperations] | DocumentDecryptor


class KonnektorPort(Protocol):
    """The Konnektor operations of digest §1.8 that the Clientmodul uses. Blocking."""

    def get_cards(self, context: CallContext, card_type: CardType | None = None) -> list[Card]:
        """EventService GetCards: the inserted cards ``context`` sees (of ``card_type``)."""
        ...

    def read_card_certificate(
        self, context: CallContext, card_handle: str, purpose: str, crypt: str
    ) -> x509.Certificate:
        """CertificateService ReadCardCertificate of one CertRef (``C.ENC``, ``C.AUT``, ...)
        and ``crypt`` (``RSA``/``ECC``); KonnektorFault 4058 when the card has no such key."""
        ...

    def signer(self, context: CallContext, card_handle: str, crypt: str) -> Signer:
        """What signs a KIM message with the SMC-B's C.HCI.OSIG key (``crypt`` RSA, ECC or
        :data:`RSA_ECC`; KOM-LE-A_2020/2129). Faults may come now or when it signs."""
        ...

    def decryption(
        self, context: CallContext, card_handle: str, certificates: Sequence[x509.Certificate]
    ) -> Decryption:
        """What decrypts for the card's ENC keys of ``certificates`` only (the fetching
        account's, KOM-LE-A_2044/2045). Faults may come now or when it decrypts."""
        ...

    def certificate_validator(self, context: CallContext) -> CertificateValidator:
        """Checks certificates the way the Konnektor's VerifyCertificate does (path to the TI's
        trust anchors, validity, revocation); raises PathValidationError when one fails."""
        ...

    def external_authenticate(
        self, context: CallContext, card_handle: str, digest: bytes, scheme: str
    ) -> bytes:
        """AuthSignatureService ExternalAuthenticate: a SHA-256 hash signed with the card's
        AUT key (``RSASSA-PSS`` with the RSA key, ``ECDSA`` plain r||s with the ECC key)."""
        ...

    def supports_ecc(self) -> bool:
        """A_17464: whether the Konnektor supports ECC, by the versions of SignatureService and
        EncryptionService in its service directory (:func:`ecc_capable`). Without ECC the
        Clientmodul signs with RSA and encrypts for no ECC certificate (A_17472).
        Raises :class:`KonnektorUnreachable` when the directory cannot be read."""
        ...


@dataclass(frozen=True)
class DirectoryRecord:
    """What the VZD says about one KIM address (digest §4.1): the entry's Telematik-ID, its
    ``userCertificate;binary`` values (DER, RSA and ECC side by side) and the address's KIM
    version (``komLeData``/``kimData``; ``1.0`` when none is published)."""

    address: str
    telematik_id: str | None
    certificates: tuple[bytes, ...]
    version: str


class DirectoryPort(Protocol):
    """The VZD's ``I_Directory_Query`` as the Clientmodul uses it. Blocking."""

    def find_by_mail(self, addresses: Sequence[str]) -> Mapping[str, DirectoryRecord]:
        """The entries publishing ``addresses`` (compared case-insensitively), keyed by the
        case-folded address; an address the VZD does not know is missing from the result.
        Raises :class:`DirectoryUnreachable`."""
        ...
