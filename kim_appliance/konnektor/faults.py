"""Faults a tester switches on at runtime: card removed, PIN blocked, certificate revoked,
Konnektor unreachable, slow card; and the switches that repair them: PIN verified, PIN
unblocked, certificate renewed, everything cleared.

:class:`FaultState` is the switchboard every operation and every card key reads before it
acts; :class:`FaultAdmin` is the small admin API on top of it (the HTTP/CLI front ends call
it). Errors then surface exactly as a real Konnektor reports them: a removed card gives 4008, a
blocked PIN gives PinStatus BLOCKED and 4085 on every key use, a revoked certificate makes
VerifyCertificate/VerifyDocument INVALID (the test PKI's CRL lists it), and "unreachable"
makes every call raise :class:`~kim_appliance.konnektor.errors.KonnektorUnreachableError`.
What the status reports as revoked is read from the CRLs the Konnektor validates against, so
it is the truth also after a restart. A revocation cannot be undone, as in a real PKI; the
card certificate is renewed instead (a new key pair, published in the VZD by the appliance's
publisher hook).

Slow card: the latency is a blocking ``time.sleep`` inside each private-key operation, taken
while the card's lock is held, so parallel operations on one card queue up as on a real card
(100-300 ms per RSA operation). Callers in the trio event loop must therefore run card
operations in a worker thread (``trio.to_thread.run_sync``), which they do anyway because the
operations are CPU work. This module must never touch a private key itself.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kim_appliance.errors import KimError
from kim_appliance.pki import TestPki

if TYPE_CHECKING:
    from kim_appliance.konnektor.cards import Card, CardSet, Crypt, KeyPurpose


#: the slowest card a fault may emulate, per private-key operation
MAX_LATENCY_SECONDS: Final = 60.0


@dataclass
class FaultState:
    """What is switched on. Reads are plain attribute reads, safe from any thread."""

    unreachable: bool = False
    #: seconds of latency added to every private-key operation of every card
    latency: float = 0.0
    #: per-ICCSN latency overriding :attr:`latency`
    card_latency: dict[str, float] = field(default_factory=dict)

    def latency_for(self, iccsn: str) -> float:
        return self.card_latency.get(iccsn, self.latency)


class RenewError(KimError):
    """A certificate cannot be renewed here; the message says why and what to do."""


@dataclass(frozen=True)
class Renewal:
    """One renewed card certificate: what the publisher hook and the admin API's answer get."""

    iccsn: str
    purpose: str
    crypt: str
    #: the Telematik-ID of the card (its VZD entry), None for a card without one
    telematik_id: str | None
    old: x509.Certificate
    new: x509.Certificate
    #: True when :attr:`FaultAdmin.publisher` put the new certificate into the VZD
    published: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "iccsn": self.iccsn,
            "purpose": self.purpose,
            "crypt": self.crypt,
            "telematik_id": self.telematik_id,
            "old_serial": f"{self.old.serial_number:X}",
            "serial": f"{self.new.serial_number:X}",
            "not_after": self.new.not_valid_after_utc.isoformat(),
            "certificate": self.new.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            "published": self.published,
        }


#: what publishes a renewed ENC certificate in the VZD: called in a worker thread with the
#: renewal (old and new certificate, Telematik-ID); it replaces the old certificate of the
#: entry by the new one. Wired by the appliance, which owns both Konnektor and directory.
Publisher = Callable[[Renewal], None]


class FaultAdmin:
    """The admin API: switch faults on and off for a running Konnektor.

    ``pki`` (with its CA keys) is needed to revoke and to renew card certificates; when
    ``pki_dir`` is given a revocation is also saved there, so the CRL files on disk list it
    too. ``crls`` gives the CRLs the Konnektor validates against (its trust store's): the
    status lists the card certificates they revoke. ``publisher`` puts a renewed ENC
    certificate into the VZD (see :data:`Publisher`); without one an ENC certificate is not
    renewed, since senders would go on finding the old one.
    """

    def __init__(
        self,
        state: FaultState,
        cards: CardSet,
        *,
        pki: TestPki | None = None,
        pki_dir: Path | None = None,
        crls: Callable[[], Sequence[x509.CertificateRevocationList]] | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        self.state = state
        self._cards = cards
        self._pki = pki
        self._pki_dir = pki_dir
        self._crls = crls or (pki.current_crls if pki is not None else list)
        self.publisher = publisher
        self._lock = threading.Lock()

    # -- switches ---------------------------------------------------------------------------

    def set_unreachable(self, on: bool = True) -> None:
        """Every operation (and every card key handed out) raises "unreachable" while on."""
        self.state.unreachable = on

    def set_latency(self, seconds: float, *, iccsn: str | None = None) -> None:
        """Latency per private-key operation, for every card or for the card ``iccsn``: 0 to
        :data:`MAX_LATENCY_SECONDS` (longer only hangs every caller)."""
        if not 0 <= seconds <= MAX_LATENCY_SECONDS:  # also refuses NaN and infinities
            raise ValueError(f"latency: must be 0..{MAX_LATENCY_SECONDS} s, got {seconds}")
        if iccsn is None:
            self.state.latency = seconds
        else:
            self._cards.by_iccsn(iccsn)  # refuses an unknown card
            self.state.card_latency[iccsn] = seconds

    def remove_card(self, iccsn: str) -> None:
        """Pull the card: its handle becomes invalid (4008) and its PINs lose their state."""
        self._cards.by_iccsn(iccsn).remove()

    def insert_card(self, iccsn: str) -> str:
        """Insert the card again; it gets a new card handle, which is returned. Its PINs are
        VERIFIABLE, as after any insertion: :meth:`verify_pin` unlocks it again."""
        return self._cards.by_iccsn(iccsn).insert()

    def block_pin(self, iccsn: str, pin_type: str | None = None) -> None:
        """Block a PIN (default: the card's main PIN, PIN.SMC or PIN.CH)."""
        card = self._cards.by_iccsn(iccsn)
        card.pin(pin_type or card.main_pin_type).block()

    def verify_pin(self, iccsn: str, pin_type: str | None = None) -> None:
        """The user types the right PIN at the terminal (VerifyPin): a VERIFIABLE PIN becomes
        VERIFIED. ValueError, saying what to do first, for a removed card, a BLOCKED PIN or
        one still in its transport state."""
        from kim_appliance.konnektor.cards import PinResult

        card = self._cards.by_iccsn(iccsn)
        pin = card.pin(pin_type or card.main_pin_type)
        if not card.inserted:
            raise ValueError(
                f"card {iccsn} ({card.holder}) is removed: insert it first "
                f"(kim-appliance fault --card-inserted {iccsn})"
            )
        result, _ = pin.verify()
        if result is PinResult.WASBLOCKED:
            raise ValueError(
                f"{pin.pin_type} of card {iccsn} ({card.holder}) is BLOCKED: unblock it first, "
                f"as with the PUK (kim-appliance fault --unblock-pin {iccsn})"
            )
        if result is not PinResult.OK:
            raise ValueError(
                f"{pin.pin_type} of card {iccsn} ({card.holder}) is {pin.status}: VerifyPin "
                f"answers {result}"
            )

    def unblock_pin(self, iccsn: str, pin_type: str | None = None) -> None:
        """UnblockPin with the card's PUK: a BLOCKED PIN becomes VERIFIABLE with a full retry
        counter (verify it next, as a user would)."""
        card = self._cards.by_iccsn(iccsn)
        card.pin(pin_type or card.main_pin_type).reset_retry_counter()

    def set_pin_status(self, iccsn: str, status: str, pin_type: str | None = None) -> None:
        """Force a PIN state (VERIFIED, VERIFIABLE, TRANSPORT_PIN, BLOCKED, ...); resets the
        retry counter."""
        from kim_appliance.konnektor.cards import PinStatus

        card = self._cards.by_iccsn(iccsn)
        card.pin(pin_type or card.main_pin_type).force(PinStatus(status))

    def revoke_certificate(
        self,
        iccsn: str,
        purpose: KeyPurpose,
        crypt: Crypt,
        *,
        reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise,
    ) -> x509.Certificate:
        """Revoke one card certificate in the test PKI; the next CRL lists it."""
        if self._pki is None:
            raise RuntimeError("revoke_certificate needs the test PKI with its CA keys")
        certificate = self._cards.by_iccsn(iccsn).certificate(purpose, crypt)
        with self._lock:
            self._pki.revoke(certificate, reason=reason)
            if self._pki_dir is not None:
                self._pki.save(self._pki_dir)
        return certificate

    def renew_certificate(self, iccsn: str, purpose: KeyPurpose, crypt: Crypt) -> Renewal:
        """A new key pair and certificate for one key slot of a card (the way out of a
        revocation): issued by the test PKI with the old certificate's subject and profile,
        written over the card's key files (so it survives a restart), used by the card at
        once, and for an ENC certificate published in the VZD through :attr:`publisher`.

        Error handling: :class:`RenewError` when this Konnektor cannot renew it (no CA keys,
        a certificate of another PKI, an ENC certificate without a publisher); nothing has
        changed then. ValueError for an unknown card.
        """
        from kim_appliance.konnektor.cards import KeyPurpose

        card = self._cards.by_iccsn(iccsn)
        pki = self._pki
        if pki is None:
            raise RenewError("renewing a certificate needs the test PKI with its CA keys")
        old = card.certificate(purpose, crypt)
        if pki.issuer_of(old) is None:
            raise RenewError(
                f"the {purpose}/{crypt} certificate of card {iccsn} was not issued by this "
                "appliance's test PKI; import the card again with a new key and certificate "
                "(kim-appliance card import)"
            )
        publisher = self.publisher
        if purpose is KeyPurpose.ENC and publisher is None:
            raise RenewError(
                "publishing the new ENC certificate in the VZD needs the running appliance's "
                "directory, and this Konnektor runs without one; nothing was changed"
            )
        with self._lock:
            old, new = card.renew(purpose, crypt, pki.renew)
        renewal = Renewal(iccsn, str(purpose), str(crypt), card.telematik_id, old, new)
        if purpose is KeyPurpose.ENC and publisher is not None:
            try:
                publisher(renewal)
            except (KimError, OSError, ValueError) as exc:
                raise RenewError(
                    f"card {iccsn} has its new {purpose}/{crypt} certificate (serial "
                    f"{new.serial_number:X}), but publishing it in the VZD failed: {exc}"
                ) from exc
            renewal = dataclasses.replace(renewal, published=True)
        return renewal

    def clear(self) -> None:
        """Every card back to its first state (inserted, PINs as konnektor.json configured
        them, for the demo and imported cards VERIFIED, retry counters full), no latency,
        reachable. Revocations stay: a revocation cannot be undone, as in a real PKI; renew
        the certificate instead."""
        self.state.unreachable = False
        self.state.latency = 0.0
        self.state.card_latency.clear()
        for card in self._cards:
            card.restore()

    def revoked(self) -> list[dict[str, Any]]:
        """The card certificates the Konnektor's CRLs revoke (read from the CRLs, so the list
        is the same after a restart): ICCSN, purpose, algorithm, serial, date and reason."""
        crls = list(self._crls())
        found: list[dict[str, Any]] = []
        for card in self._cards:
            for purpose, crypt in card.key_slots():
                certificate = card.certificate(purpose, crypt)
                for crl in crls:
                    if crl.issuer != certificate.issuer:
                        continue
                    entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
                    if entry is None:
                        continue
                    found.append(
                        {
                            "iccsn": card.iccsn,
                            "holder": card.holder,
                            "purpose": str(purpose),
                            "crypt": str(crypt),
                            "serial": f"{certificate.serial_number:X}",
                            "revoked_at": entry.revocation_date_utc.isoformat(),
                            "reason": _reason(entry),
                        }
                    )
                    break
        return found

    def status(self) -> dict[str, Any]:
        """A JSON-ready view of what is switched on, per card, for the console and the CLI."""
        cards: list[dict[str, Any]] = []
        for card in self._cards:
            cards.append(_card_status(card, self.state))
        return {
            "unreachable": self.state.unreachable,
            "latency": self.state.latency,
            "cards": cards,
            "revoked": self.revoked(),
        }


def _reason(entry: x509.RevokedCertificate) -> str:
    try:
        return str(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name)
    except x509.ExtensionNotFound:
        return "unspecified"


def _card_status(card: Card, state: FaultState) -> dict[str, Any]:
    return {
        "iccsn": card.iccsn,
        "type": str(card.card_type),
        "holder": card.holder,
        "inserted": card.inserted,
        "card_handle": card.card_handle,
        "latency": state.latency_for(card.iccsn),
        "pins": {
            name: {"status": str(pin.status), "left_tries": pin.left_tries}
            for name, pin in card.pins.items()
        },
    }
