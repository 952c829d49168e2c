"""Which SMC-B signs for an account: GetCards(SMC-B) and ReadCardCertificate, cached.

KIM messages are signed with the SMC-B's C.HCI.OSIG key (KOM-LE-A_2020, KOM-LE-A_2129: never
with an HBA). The Clientmodul finds the sender's SMC-B among the cards the login's call context
sees (digest §1.8 GetCards, ReadCardCertificate): the card whose Telematik-ID (CardInfo, else
the Admission of its C.ENC certificate) is the account's Telematik-ID from the VZD, or whose
C.ENC certificate is one the VZD publishes for the account.

An HBA mailbox (the Telematik-ID is the holder's) is signed with the SMC-B of her practice
(KOM-LE-A_2129); the card holds no KIM identity of its own. Choice written down here: when no
SMC-B matches, the one visible SMC-B without a Telematik-ID and without an ENC key is taken for an
HBA mailbox (the demo's practice card); with none or several such cards, or for an SMC-B
mailbox whose card is missing, the lookup fails and says so.

The Konnektor is the Clientmodul's Konnektor port (:mod:`.ports`): GetCards over SOAP does not
report a card's Telematik-ID, so it is read from the Admission of the card's C.ENC certificates
whenever the port does not know it. The handle is cached per context and account in a
:class:`SigningCards` (one per Clientmodul, held by its ClientmodulContext); a card pulled and
inserted again gets a new handle, so callers drop the cached one when the Konnektor answers 4008
(:meth:`SigningCards.forget`). All functions block (Konnektor calls): run them in a worker
thread. This module never touches a key.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.serialization import Encoding

from kim_appliance.clientmodul.ports import (
    CallContext,
    Card,
    CardType,
    KonnektorFault,
    KonnektorPort,
)
from kim_appliance.errors import KimError
from kim_appliance.pki import admission_of


class NoSigningCardError(KimError):
    """No SMC-B visible to the context can sign for the account (digest §1.4 step 8)."""


@dataclass(frozen=True)
class SigningCard:
    card_handle: str
    iccsn: str
    holder: str


_Key = tuple[CallContext, str]


@dataclass
class SigningCards:
    """The signing-card lookups of one Clientmodul with their cache. Thread-safe."""

    konnektor: KonnektorPort
    _cache: dict[_Key, SigningCard] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def find(
        self,
        context: CallContext,
        account: str,
        telematik_id: str | None,
        enc_certificates: Sequence[bytes] = (),
        *,
        hba_mailbox: bool = False,
    ) -> SigningCard:
        """The SMC-B that signs for ``account`` (cached). Blocking.

        ``telematik_id`` and ``enc_certificates`` are the account's VZD entry's; ``hba_mailbox``
        says that they are an HBA's (C.HP.ENC), so the practice's SMC-B may sign. Raises
        :class:`NoSigningCardError`, or the Konnektor's own errors (context 4004-4021,
        unreachable).
        """
        key = (context, account.casefold())
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        found = _search(
            self.konnektor, context, account, telematik_id, set(enc_certificates), hba_mailbox
        )
        with self._lock:
            self._cache[key] = found
        return found

    def forget(self, context: CallContext, account: str) -> None:
        """Drop the cached card of ``account`` (its handle went stale: card pulled, 4008)."""
        with self._lock:
            self._cache.pop((context, account.casefold()), None)


def _search(
    konnektor: KonnektorPort,
    context: CallContext,
    account: str,
    telematik_id: str | None,
    enc_certificates: set[bytes],
    hba_mailbox: bool,
) -> SigningCard:
    cards = konnektor.get_cards(context, CardType.SMC_B)
    if not cards:
        raise NoSigningCardError(
            f"no SMC-B is inserted for Mandant {context.mandant_id!r}, workplace "
            f"{context.workplace_id!r}: insert the practice's SMC-B to send as {account}"
        )
    unpersonalised: list[Card] = []
    for card in cards:
        if telematik_id is not None and card.telematik_id == telematik_id:
            return SigningCard(card.handle, card.iccsn, card.holder_name)
        enc = _enc_certificates(konnektor, context, card)
        for certificate_der, card_telematik_id in enc:
            if certificate_der in enc_certificates or (
                telematik_id is not None and card_telematik_id == telematik_id
            ):
                return SigningCard(card.handle, card.iccsn, card.holder_name)
        if card.telematik_id is None and not enc:
            unpersonalised.append(card)
    # KOM-LE-A_2129: an HBA holder's mail is signed with her practice's SMC-B
    if hba_mailbox and len(unpersonalised) == 1:
        card = unpersonalised[0]
        return SigningCard(card.handle, card.iccsn, card.holder_name)
    seen = ", ".join(f"{c.iccsn} ({c.holder_name})" for c in cards)
    raise NoSigningCardError(
        f"none of the SMC-Bs visible to Mandant {context.mandant_id!r} ({seen}) belongs to "
        f"{account} (Telematik-ID {telematik_id or 'unknown'})"
    )


def _enc_certificates(
    konnektor: KonnektorPort, context: CallContext, card: Card
) -> list[tuple[bytes, str | None]]:
    """The card's C.ENC certificates (DER) with their Telematik-IDs (ReadCardCertificate)."""
    out: list[tuple[bytes, str | None]] = []
    for crypt in ("RSA", "ECC"):
        try:
            certificate = konnektor.read_card_certificate(context, card.handle, "C.ENC", crypt)
        except KonnektorFault:
            continue  # no key of that kind on this card (4058)
        try:
            admission = admission_of(certificate)
        except ValueError:
            admission = None
        out.append(
            (certificate.public_bytes(Encoding.DER), admission.telematik_id if admission else None)
        )
    return out
