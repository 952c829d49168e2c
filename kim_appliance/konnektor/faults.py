"""Faults a tester switches on at runtime: card removed, PIN blocked, certificate revoked,
Konnektor unreachable, slow card.

:class:`FaultState` is the switchboard every operation and every card key reads before it
acts; :class:`FaultAdmin` is the small admin API on top of it (the HTTP/CLI front ends call
it). Errors then surface exactly as a real Konnektor reports them: a removed card gives 4008, a
blocked PIN gives PinStatus BLOCKED and 4085 on every key use, a revoked certificate makes
VerifyCertificate/VerifyDocument INVALID (the test PKI's CRL lists it), and "unreachable"
makes every call raise :class:`~kim_appliance.konnektor.errors.KonnektorUnreachableError`.

Slow card: the latency is a blocking ``time.sleep`` inside each private-key operation, taken
while the card's lock is held, so parallel operations on one card queue up as on a real card
(100-300 ms per RSA operation). Callers in the trio event loop must therefore run card
operations in a worker thread (``trio.to_thread.run_sync``), which they do anyway because the
operations are CPU work. This module must never touch a private key itself.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509

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


class FaultAdmin:
    """The admin API: switch faults on and off for a running Konnektor.

    ``pki`` (with its CA keys) is needed to revoke card certificates; when ``pki_dir`` is given
    a revocation is also saved there, so the CRL files on disk list it too.
    """

    def __init__(
        self,
        state: FaultState,
        cards: CardSet,
        *,
        pki: TestPki | None = None,
        pki_dir: Path | None = None,
    ) -> None:
        self.state = state
        self._cards = cards
        self._pki = pki
        self._pki_dir = pki_dir
        self._lock = threading.Lock()
        self._revoked: list[dict[str, Any]] = []

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
        """Insert the card again; it gets a new card handle, which is returned."""
        return self._cards.by_iccsn(iccsn).insert()

    def block_pin(self, iccsn: str, pin_type: str | None = None) -> None:
        """Block a PIN (default: the card's main PIN, PIN.SMC or PIN.CH)."""
        card = self._cards.by_iccsn(iccsn)
        card.pin(pin_type or card.main_pin_type).block()

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
        card = self._cards.by_iccsn(iccsn)
        certificate = card.certificate(purpose, crypt)
        with self._lock:
            self._pki.revoke(certificate, reason=reason)
            if self._pki_dir is not None:
                self._pki.save(self._pki_dir)
            self._revoked.append(
                {
                    "iccsn": iccsn,
                    "purpose": str(purpose),
                    "crypt": str(crypt),
                    "serial": f"{certificate.serial_number:X}",
                }
            )
        return certificate

    def clear(self) -> None:
        """Switch off unreachable and latency, insert every card. PIN states and revocations
        stay (a revocation cannot be undone, as in a real PKI)."""
        self.state.unreachable = False
        self.state.latency = 0.0
        self.state.card_latency.clear()
        for card in self._cards:
            if not card.inserted:
                card.insert()

    def status(self) -> dict[str, Any]:
        """A JSON-ready view of what is switched on, per card, for the console and the CLI."""
        cards: list[dict[str, Any]] = []
        for card in self._cards:
            cards.append(_card_status(card, self.state))
        return {
            "unreachable": self.state.unreachable,
            "latency": self.state.latency,
            "cards": cards,
            "revoked": list(self._revoked),
        }


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
