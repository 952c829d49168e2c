"""This process's emulated Konnektor behind the Clientmodul's Konnektor port.

The adapter keeps today's speed (issue 4): it hands out the card's keys, so the Clientmodul
streams a 25 MB message through the native path while the card only signs a digest or unwraps
a content key; it does not go through SignDocument/DecryptDocument. Certificates are checked
with the Konnektor's trust store (the TI's trust anchors and CRLs of the test PKI), which is
what the Konnektor's VerifyCertificate checks as well. Every error of the Konnektor, also the
ones a card key raises while the Clientmodul streams, reaches the Clientmodul as the port's
:class:`~kim_appliance.clientmodul.ports.KonnektorFault` (same gematik code) or
:class:`~kim_appliance.clientmodul.ports.KonnektorUnreachable`. Blocking, like the Konnektor.
This module only translates; it must never decide a Konnektor result itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from kim_appliance.clientmodul.ports import (
    CallContext,
    Card,
    CardType,
    KonnektorFault,
    KonnektorUnreachable,
    ecc_capable,
)
from kim_appliance.cms.keys import KeyOperations
from kim_appliance.konnektor.cards import CardKey
from kim_appliance.konnektor.errors import KonnektorError, KonnektorUnreachableError
from kim_appliance.konnektor.infomodell import Context
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.konnektor.soap.services import SERVICES
from kim_appliance.pki import TrustStore


@contextmanager
def translated() -> Iterator[None]:
    """The Konnektor's errors as the port's (code, ErrorText and Detail kept)."""
    try:
        yield
    except KonnektorUnreachableError as exc:
        raise KonnektorUnreachable(str(exc)) from exc
    except KonnektorError as exc:
        raise KonnektorFault(exc.code, exc.message, exc.detail) from exc


def _context(context: CallContext) -> Context:
    return Context(
        mandant_id=context.mandant_id,
        client_system_id=context.client_system_id,
        workplace_id=context.workplace_id,
        user_id=context.user_id,
    )


class CardKeyOperations:
    """A card key (:class:`~kim_appliance.cms.keys.KeyOperations`) whose Konnektor errors are
    the port's. Every use still checks presence, PIN and faults on the card."""

    def __init__(self, key: CardKey) -> None:
        self._key = key

    @property
    def certificate(self) -> x509.Certificate:
        return self._key.certificate

    @property
    def card_handle(self) -> str:
        return self._key.card_handle

    def decrypt_key_transport(self, encrypted_key: bytes) -> bytes:
        with translated():
            return self._key.decrypt_key_transport(encrypted_key)

    def agree_key(self, originator_public_key: ec.EllipticCurvePublicKey) -> bytes:
        with translated():
            return self._key.agree_key(originator_public_key)

    def sign_digest(self, digest: bytes) -> bytes:
        with translated():
            return self._key.sign_digest(digest)


class InProcessKonnektor:
    """:class:`~kim_appliance.clientmodul.ports.KonnektorPort` over a :class:`Konnektor`.

    ``trust`` checks certificates (default: the Konnektor's own trust store)."""

    def __init__(self, konnektor: Konnektor, trust: TrustStore | None = None) -> None:
        self.konnektor = konnektor
        self.trust = trust or konnektor.trust

    def get_cards(self, context: CallContext, card_type: CardType | None = None) -> list[Card]:
        with translated():
            infos = self.konnektor.get_cards(_context(context), card_type)
        return [
            Card(i.card_handle, str(i.card_type), i.iccsn, i.card_holder_name, i.telematik_id)
            for i in infos
        ]

    def read_card_certificate(
        self, context: CallContext, card_handle: str, purpose: str, crypt: str
    ) -> x509.Certificate:
        with translated():
            return self.konnektor.read_card_certificate(
                _context(context), card_handle, purpose, crypt
            )

    def signer(self, context: CallContext, card_handle: str, crypt: str) -> KeyOperations:
        with translated():
            key = self.konnektor.signing_key(_context(context), card_handle, crypt)
        return CardKeyOperations(key)

    def decryption(
        self, context: CallContext, card_handle: str, certificates: Sequence[x509.Certificate]
    ) -> list[KeyOperations]:
        with translated():
            keys = self.konnektor.decryption_keys(_context(context), card_handle)
        wanted = set(certificates)
        return [CardKeyOperations(k) for k in keys if k.certificate in wanted]

    def certificate_validator(self, context: CallContext) -> TrustStore:
        return self.trust

    def external_authenticate(
        self, context: CallContext, card_handle: str, digest: bytes, scheme: str
    ) -> bytes:
        with translated():
            return self.konnektor.external_authenticate(
                _context(context), card_handle, digest, scheme
            )

    def supports_ecc(self) -> bool:
        """A_17464 by the versions this Konnektor's connector.sds lists (the SOAP services'
        table: the in-process Konnektor is the same Konnektor as the SOAP one)."""
        return ecc_capable({spec.name: [spec.version] for spec in SERVICES})
