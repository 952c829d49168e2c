"""Which card, and which of its keys, may decrypt a KIM message for the fetching account.

Receive pipeline step 1 and 2 of digest §1.5: read the unprotected ``recipient-emails`` of the
AuthEnvelopedData, keep the entries whose ``emailAddress`` is the POP3 account (case
insensitive, KOM-LE-A_2043/A_2059), and find the card that holds the ENC certificate each entry
names (issuer and serial number): first in the cache e-mail -> certificate -> ICCSN
(``TTL_EMAIL_ICCSN``, 30 days by default, KOM-LE-A_2061), otherwise with ``GetCards`` for the
login's call context and ``ReadCardCertificate`` on every SMC-B and HBA it sees
(KOM-LE-A_2060). Only the keys of that card whose certificate is named for the account are
handed out, and only from a card of the account's Telematik-ID (from the VZD) when it is
known: the Clientmodul decrypts with the fetching user's keys and nobody else's
(KOM-LE-A_2044/A_2045), even when a forged recipient-emails pairs the account with another
practice's certificate (that attribute is unprotected until the signature is checked).

Every failure is a :class:`KeySelectionError` carrying the ``X-KIM-DecryptionResult`` and
``X-KIM-Fehlermeldung`` it means (digest §1.6): 01/4009 no entry for the account, no card with
the certificate, card removed or PIN not verified (A_2062/A_2063); 02/4010 the message is not a
well-formed AuthEnvelopedData; 03/4011 the Konnektor does not answer.

The functions here block (the scan reads the whole message; Konnektor calls may wait for a
slow card): call them from a worker thread. This module never sees a private key, and never
decrypts: it only chooses.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Final

from kim_appliance import _native
from kim_appliance.cms.enveloped import AuthEnvelopedReader
from kim_appliance.cms.errors import CmsError
from kim_appliance.cms.recipient_emails import RecipientEmail, decode_recipient_emails
from kim_appliance.konnektor.cards import CardKey, CardType
from kim_appliance.konnektor.errors import KonnektorError, KonnektorUnreachableError
from kim_appliance.konnektor.infomodell import Context
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import read_header_block

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
    """Finds the card keys for an account, with the e-mail -> certificate -> ICCSN cache.

    Thread-safe (the cache has a lock; the Konnektor is thread-safe). A cached ICCSN is only a
    hint: the card's keys are still matched against the certificates the message names, and a
    stale entry falls back to the full search.
    """

    def __init__(
        self,
        konnektor: Konnektor,
        *,
        ttl: dt.timedelta = TTL_EMAIL_ICCSN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.konnektor = konnektor
        self.ttl_seconds = ttl.total_seconds()
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[_CacheKey, tuple[str, float]] = {}
        #: Konnektor lookups (GetCards + ReadCardCertificate rounds) done: for tests and logs
        self.card_searches = 0

    def keys_for(
        self,
        context: Context,
        account: str,
        recipient_emails: Sequence[RecipientEmail],
        *,
        telematik_id: str | None = None,
    ) -> list[CardKey]:
        """The ENC keys of the card holding the certificates named for ``account``.

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
            return self._keys(context, mine, telematik_id)
        except KonnektorUnreachableError as exc:
            raise KeySelectionError(KONNEKTOR_UNREACHABLE, str(exc)) from exc
        except KonnektorError as exc:
            # 4004-4021 context, 4008 card removed, 4085 PIN not verified (A_2062/A_2063)
            raise KeySelectionError(KEY_NOT_AVAILABLE, f"Konnektor: {exc}") from exc

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()

    def _keys(
        self, context: Context, mine: list[RecipientEmail], telematik_id: str | None
    ) -> list[CardKey]:
        cards = [
            c
            for c in self.konnektor.get_cards(context)
            if c.card_type in (CardType.SMC_B, CardType.HBA)
            and (telematik_id is None or c.telematik_id == telematik_id)
        ]
        by_iccsn = {c.iccsn: c for c in cards}
        now = self._clock()
        cached: set[str] = set()
        with self._lock:
            for entry in mine:
                hit = self._cache.get(_key(entry))
                if hit is not None and hit[1] > now:
                    cached.add(hit[0])
        for iccsn in sorted(cached):
            info = by_iccsn.get(iccsn)
            if info is not None:
                keys = self._matching_keys(context, info.card_handle, mine)
                if keys:
                    return keys
        # KOM-LE-A_2060: GetCards, then ReadCardCertificate on every SMC-B and HBA
        self.card_searches += 1
        for info in cards:
            found = self._card_holds(context, info.card_handle, mine)
            if found:
                with self._lock:
                    expiry = self._clock() + self.ttl_seconds
                    for entry in found:
                        self._cache[_key(entry)] = (info.iccsn, expiry)
                keys = self._matching_keys(context, info.card_handle, found)
                if keys:
                    return keys
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
        self, context: Context, card_handle: str, mine: list[RecipientEmail]
    ) -> list[RecipientEmail]:
        """The entries whose certificate this card holds (ReadCardCertificate C.ENC)."""
        found: list[RecipientEmail] = []
        for crypt in ("RSA", "ECC"):
            try:
                certificate = self.konnektor.read_card_certificate(
                    context, card_handle, "C.ENC", crypt
                )
            except KonnektorUnreachableError:
                raise
            except KonnektorError:
                continue  # no ENC key of this algorithm on the card (4058), or it went away
            found.extend(e for e in mine if e.matches(certificate))
        return found

    def _matching_keys(
        self, context: Context, card_handle: str, mine: list[RecipientEmail]
    ) -> list[CardKey]:
        """The card's ENC keys whose certificate is named for the account (A_2044/A_2045)."""
        keys = self.konnektor.decryption_keys(context, card_handle)
        return [k for k in keys if any(e.matches(k.certificate) for e in mine)]


def _key(entry: RecipientEmail) -> _CacheKey:
    return _CacheKey(entry.address.lower(), entry.issuer.dump(), entry.serial)
