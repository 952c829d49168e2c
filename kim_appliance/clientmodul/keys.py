"""Which card, and which of its keys, may decrypt a KIM message for the fetching account.

Receive pipeline step 1 and 2 of digest §1.5: read the unprotected ``recipient-emails`` of the
AuthEnvelopedData, keep the entries whose ``emailAddress`` is the POP3 account (case
insensitive, KOM-LE-A_2043/A_2059), and find the card that holds the ENC certificate each entry
names (issuer and serial number): first in the cache e-mail -> certificate -> ICCSN
(``TTL_EMAIL_ICCSN``, 30 days by default, KOM-LE-A_2061), otherwise with ``GetCards`` for the
login's call context and ``ReadCardCertificate`` on every SMC-B and HBA it sees
(KOM-LE-A_2060). Only the keys of that card whose certificate is named for the account are
used, and only from a card of the account's Telematik-ID (from the VZD) when it is known (the
card's own, or the Admission of the matching certificate when the Konnektor does not report
it): the Clientmodul decrypts with the fetching user's keys and nobody else's
(KOM-LE-A_2044/A_2045), even when a forged recipient-emails pairs the account with another
practice's certificate (that attribute is unprotected until the signature is checked). What
decrypts is the Konnektor port's :data:`~.ports.Decryption` for those certificates: the card's
keys in-process, DecryptDocument over SOAP.

Every failure is a :class:`KeySelectionError` carrying the ``X-KIM-DecryptionResult`` and
``X-KIM-Fehlermeldung`` it means (digest §1.6): 01/4009 no entry for the account, no card with
the certificate, card removed or PIN not verified (A_2062/A_2063); 02/4010 the message is not a
well-formed AuthEnvelopedData; 03/4011 the Konnektor does not answer.

The functions here block (the scan reads the whole message; Konnektor calls may wait for a
slow card or the network): call them from a worker thread. This module never sees a private
key, and never decrypts: it only chooses.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kim_appliance import _native
from kim_appliance.clientmodul.ports import (
    CallContext,
    Card,
    CardType,
    Decryption,
    KonnektorFault,
    KonnektorPort,
    KonnektorUnreachable,
)
from kim_appliance.cms.enveloped import AuthEnvelopedReader
from kim_appliance.cms.errors import CmsError
from kim_appliance.cms.recipient_emails import RecipientEmail, decode_recipient_emails
from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import read_header_block
from kim_appliance.pki import admission_of

#: TTL_EMAIL_ICCSN of Tab_Konf_Param (digest §1.9): 30 days.
TTL_EMAIL_ICCSN: Final = dt.timedelta(days=30)
READ_SIZE: Final = 1024 * 1024

# X-KIM-DecryptionResult and X-KIM-Fehlermeldung pairs (digest §1.6, Tab_Fehlertext_Entschl)
KEY_NOT_AVAILABLE: Final = ("01", "4009")
WRONG_FORMAT: Final = ("02", "4010")
KONNEKTOR_UNREACHABLE: Final = ("03", "4011")


class KeySelectionError(Exception):
    """No key may decrypt this message for this account; ``decryption_result`` (01/02/03) and
    ``error_code`` (4009/4010/4011) are what the error mail says (KOM-LE-A_2046/A_2047-01)."""

    def __init__(self, result: tuple[str, str], reason: str) -> None:
        super().__init__(reason)
        self.decryption_result, self.error_code = result
        self.reason = reason


# --- reading recipient-emails ------------------------------------------------------------------


def scan_recipient_emails(outer: BinaryIO) -> list[RecipientEmail]:
    """The unprotected recipient-emails of the KIM message in ``outer`` (read from its start;
    the position afterwards is undefined). Streams the base64 body through the native decoder
    and BER reader; memory stays a few MB.

    Raises KeySelectionError 02/4010 when the body is not a well-formed AuthEnvelopedData with
    recipient-emails (KOM-LE-A_2107, A_2114-01).
    """
    try:
        _, data = read_header_block(outer)
        decoder = _native.Base64Decoder()
        # the structure only, the ciphertext dropped unread: recipient-emails sits after the
        # content (unauthAttrs, digest §2.6), and the scan must not spool 25 MB to learn whom
        # the message is for
        reader = AuthEnvelopedReader(discard_content=True)
        while data:
            reader.feed(decoder.update(data))
            data = outer.read(READ_SIZE)
        reader.feed(decoder.finalize())
        reader.feed_eof()
        attribute = reader.recipient_emails
        if attribute is None:
            raise KeySelectionError(
                WRONG_FORMAT,
                "AuthEnvelopedData.unauthAttrs: no recipient-emails attribute (KOM-LE-A_2107)",
            )
        return decode_recipient_emails(attribute)
    except (CmsError, MailFormatError, ValueError) as exc:  # native errors are ValueErrors
        raise KeySelectionError(WRONG_FORMAT, f"cannot read the KIM message: {exc}") from exc


def entries_for(account: str, entries: Sequence[RecipientEmail]) -> list[RecipientEmail]:
    """The entries naming ``account``, compared case-insensitively (KOM-LE-A_2043/A_2059)."""
    wanted = account.lower()
    return [e for e in entries if e.address.lower() == wanted]


# --- finding the card ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _CacheKey:
    address: str  # lower case
    issuer: bytes  # DER of the issuer Name as in recipient-emails
    serial: int


class DecryptionKeyFinder:
    """Finds what decrypts for an account, with the e-mail -> certificate -> ICCSN cache.

    Thread-safe (the cache has a lock; the Konnektor port is thread-safe). A cached entry is
    only a hint: the card is looked up by its ICCSN again (its handle may have changed), and a
    stale entry falls back to the full search.
    """

    def __init__(
        self,
        konnektor: KonnektorPort,
        *,
        ttl: dt.timedelta = TTL_EMAIL_ICCSN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.konnektor = konnektor
        self.ttl_seconds = ttl.total_seconds()
        self._clock = clock
        self._lock = threading.Lock()
        #: entry -> (ICCSN, the certificate's DER, its Telematik-ID, expiry)
        self._cache: dict[_CacheKey, tuple[str, bytes, str | None, float]] = {}
        #: Konnektor lookups (GetCards + ReadCardCertificate rounds) done: for tests and logs
        self.card_searches = 0

    def decryption_for(
        self,
        context: CallContext,
        account: str,
        recipient_emails: Sequence[RecipientEmail],
        *,
        telematik_id: str | None = None,
    ) -> Decryption:
        """What decrypts with the card's ENC keys of the certificates named for ``account``.

        ``telematik_id`` is the account's Telematik-ID from the VZD: only a card of that
        Telematik-ID is used. recipient-emails is unprotected until the signature has been
        checked, so without this a forged entry could pair the account with another practice's
        certificate whose card sits in the same Konnektor (KOM-LE-A_2044/A_2045). None skips
        the check (an account the VZD does not publish, A_24039).
        Raises KeySelectionError (01/4009, 03/4011) as the module docstring says.
        """
        mine = entries_for(account, recipient_emails)
        if not mine:
            named = ", ".join(sorted({e.address for e in recipient_emails})) or "nobody"
            raise KeySelectionError(
                KEY_NOT_AVAILABLE,
                f"recipient-emails names no certificate for {account} (it names {named}; "
                "KOM-LE-A_2043)",
            )
        try:
            return self._decryption(context, mine, telematik_id)
        except KonnektorUnreachable as exc:
            raise KeySelectionError(KONNEKTOR_UNREACHABLE, str(exc)) from exc
        except KonnektorFault as exc:
            # 4004-4021 context, 4008 card removed, 4085 PIN not verified (A_2062/A_2063)
            raise KeySelectionError(KEY_NOT_AVAILABLE, f"Konnektor: {exc}") from exc

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()

    def _decryption(
        self, context: CallContext, mine: list[RecipientEmail], telematik_id: str | None
    ) -> Decryption:
        cards = [
            c
            for c in self.konnektor.get_cards(context)
            if c.card_type in (CardType.SMC_B, CardType.HBA)
            and (telematik_id is None or c.telematik_id in (None, telematik_id))
        ]
        by_iccsn = {c.iccsn: c for c in cards}
        now = self._clock()
        cached: dict[str, list[x509.Certificate]] = {}
        with self._lock:
            for entry in mine:
                hit = self._cache.get(_key(entry))
                if hit is not None and hit[3] > now and telematik_id in (None, hit[2]):
                    certificate = x509.load_der_x509_certificate(hit[1])
                    cached.setdefault(hit[0], []).append(certificate)
        for iccsn, certificates in sorted(cached.items()):
            card = by_iccsn.get(iccsn)
            if card is not None:
                decryption = self._for_card(context, card, certificates)
                if _usable(decryption):
                    return decryption
        # KOM-LE-A_2060: GetCards, then ReadCardCertificate on every SMC-B and HBA
        self.card_searches += 1
        for card in cards:
            found = self._card_holds(context, card, mine, telematik_id)
            if found:
                with self._lock:
                    expiry = self._clock() + self.ttl_seconds
                    for entry, certificate, owner in found:
                        der = certificate.public_bytes(Encoding.DER)
                        self._cache[_key(entry)] = (card.iccsn, der, owner, expiry)
                decryption = self._for_card(context, card, [c for _, c, _ in found])
                if _usable(decryption):
                    return decryption
        serials = ", ".join(f"{e.issuer.human_friendly} / serial {e.serial:X}" for e in mine)
        owner = f" of Telematik-ID {telematik_id}" if telematik_id else ""
        raise KeySelectionError(
            KEY_NOT_AVAILABLE,
            f"no card{owner} visible to Mandant {context.mandant_id!r}, workplace "
            f"{context.workplace_id!r}"
            + (f", user {context.user_id!r}" if context.user_id else "")
            + f" holds the ENC certificate named for the account ({serials}); is the card "
            "inserted (an HBA needs the holder's UserId in the username)?",
        )

    def _card_holds(
        self,
        context: CallContext,
        card: Card,
        mine: list[RecipientEmail],
        telematik_id: str | None,
    ) -> list[tuple[RecipientEmail, x509.Certificate, str | None]]:
        """The entries whose certificate this card holds (ReadCardCertificate C.ENC), with the
        certificate and its owner's Telematik-ID; only a card of ``telematik_id`` counts."""
        found: list[tuple[RecipientEmail, x509.Certificate, str | None]] = []
        for crypt in ("RSA", "ECC"):
            try:
                certificate = self.konnektor.read_card_certificate(
                    context, card.handle, "C.ENC", crypt
                )
            except KonnektorUnreachable:
                raise
            except KonnektorFault:
                continue  # no ENC key of this algorithm on the card (4058), or it went away
            owner = card.telematik_id or _telematik_id(certificate)
            if telematik_id is not None and owner != telematik_id:
                continue
            found.extend((e, certificate, owner) for e in mine if e.matches(certificate))
        return found

    def _for_card(
        self, context: CallContext, card: Card, certificates: list[x509.Certificate]
    ) -> Decryption:
        """What decrypts with the card's keys of ``certificates`` (A_2044/A_2045)."""
        return self.konnektor.decryption(context, card.handle, list(dict.fromkeys(certificates)))


def _usable(decryption: Decryption) -> bool:
    """False for an empty list of keys (none of the card's keys is one named for the
    account); a DocumentDecryptor is always usable (the Konnektor chooses the key)."""
    return not isinstance(decryption, Sequence) or bool(decryption)


def _telematik_id(certificate: x509.Certificate) -> str | None:
    try:
        admission = admission_of(certificate)
    except ValueError:
        return None
    return admission.telematik_id if admission else None


def _key(entry: RecipientEmail) -> _CacheKey:
    return _CacheKey(entry.address.lower(), entry.issuer.dump(), entry.serial)
