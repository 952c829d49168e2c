"""The fault admin API over HTTP: ``POST /admin/faults`` switches faults, ``GET /admin/faults``
shows them (issue 4, item 4; issue 15).

The POST body is one JSON object; every key is optional and they are applied in this order::

    {"clear": true,                       # first: every card back to its first state
                                          # (inserted, PINs VERIFIED), latency 0, reachable
     "card_removed": "<ICCSN>",           # pull the card (4008 from now on)
     "card_inserted": "<ICCSN>",          # put it back (new card handle, PIN VERIFIABLE)
     "pin_blocked": "<ICCSN>",            # block its main PIN (PinStatus BLOCKED, 4085)
     "unblock_pin": "<ICCSN>",            # UnblockPin with the PUK: BLOCKED -> VERIFIABLE
     "verify_pin": "<ICCSN>",             # the user types the PIN: VERIFIABLE -> VERIFIED
                                          # (both also {"iccsn": ..., "pin_type": "PIN.CH"})
                                          # every card switch (and revoke) also takes a list
     "pin_status": {"iccsn": "...", "status": "VERIFIABLE", "pin_type": "PIN.SMC"},
     "revoke": {"iccsn": "...", "purpose": "ENC|OSIG|AUT|C.ENC|...", "crypt": "RSA|ECC"},
     "renew": {"iccsn": "...", "purpose": "...", "crypt": "..."},   # new key and certificate
     "latency_ms": 250,                   # every card; or {"iccsn": "...", "ms": 250}; 0..60000
     "unreachable": true}                 # the SOAP services and connector.sds go silent

The answer is :meth:`FaultAdmin.status` as JSON; after a ``renew`` it also carries
``"renewed"`` (:meth:`Renewal.to_json`: serials, the new certificate's PEM, whether it was
published in the VZD). A value of the wrong type or an unknown card is HTTP 400 with
``{"error": "<field>: <reason>"}``; unknown keys are refused too, so a typo never passes
silently. The admin API itself stays reachable while "unreachable" is on, so a test can switch
it off again. This module must never touch the Konnektor except through
:class:`~kim_appliance.konnektor.faults.FaultAdmin`; it does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from kim_appliance.konnektor.cards import parse_crypt, parse_purpose
from kim_appliance.konnektor.errors import KonnektorError, ParameterError
from kim_appliance.konnektor.faults import FaultAdmin, Renewal, RenewError
from kim_appliance.protocols.jsonbody import JsonBodyError, load_json_body

#: the slowest card a test may ask for: a minute per key operation (a real card takes well
#: under a second; anything longer only hangs every caller)
MAX_LATENCY_MS: Final = 60_000

KEYS: Final = (
    "clear",
    "card_removed",
    "card_inserted",
    "pin_blocked",
    "unblock_pin",
    "verify_pin",
    "pin_status",
    "revoke",
    "renew",
    "latency_ms",
    "unreachable",
)


class AdminRequestError(ValueError):
    """The admin request is malformed; ``str()`` is ``"<field>: <reason>"``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def apply_faults(admin: FaultAdmin, body: bytes) -> dict[str, Any]:
    """Apply a POST body to ``admin`` and return the new status. Blocking (revoking writes
    the CRL files): run it in a worker thread.

    Error handling: everything the caller got wrong is :class:`AdminRequestError`; switches
    before the faulty key have been applied (the order above), none after it.
    """
    try:
        request = load_json_body(body or b"{}")
    except JsonBodyError as exc:
        raise AdminRequestError("body", f"is not acceptable JSON: {exc}") from None
    if not isinstance(request, dict):
        raise AdminRequestError("body", "must be a JSON object")
    unknown = sorted(set(request) - set(KEYS))
    if unknown:
        raise AdminRequestError(unknown[0], f"unknown switch; known: {', '.join(KEYS)}")
    try:
        renewed = _apply(admin, request)
    except ParameterError as exc:
        raise AdminRequestError(exc.field, exc.reason) from None
    except KonnektorError as exc:
        raise AdminRequestError("request", str(exc)) from None
    status = admin.status()
    if renewed is not None:
        status["renewed"] = renewed.to_json()
    return status


def _apply(admin: FaultAdmin, request: Mapping[str, Any]) -> Renewal | None:
    renewed: Renewal | None = None
    if request.get("clear") is True:
        admin.clear()
    elif "clear" in request and request["clear"] is not False:
        raise AdminRequestError("clear", "must be true or false")
    if "card_removed" in request:
        _card(admin, "card_removed", request["card_removed"], admin.remove_card)
    if "card_inserted" in request:
        _card(admin, "card_inserted", request["card_inserted"], admin.insert_card)
    if "pin_blocked" in request:
        _card(admin, "pin_blocked", request["pin_blocked"], admin.block_pin)
    if "unblock_pin" in request:
        _pin(admin, "unblock_pin", request["unblock_pin"], admin.unblock_pin)
    if "verify_pin" in request:
        _pin(admin, "verify_pin", request["verify_pin"], admin.verify_pin)
    if "pin_status" in request:
        spec = _object(request["pin_status"], "pin_status", ("iccsn", "status"))
        try:
            admin.set_pin_status(
                _string(spec["iccsn"], "pin_status.iccsn"),
                _string(spec["status"], "pin_status.status"),
                spec.get("pin_type"),
            )
        except ValueError as exc:
            raise AdminRequestError("pin_status", str(exc)) from None
    for item in _each(request["revoke"], "revoke") if "revoke" in request else []:
        spec = _object(item, "revoke", ("iccsn", "purpose", "crypt"))
        try:
            admin.revoke_certificate(
                _string(spec["iccsn"], "revoke.iccsn"),
                parse_purpose(_string(spec["purpose"], "revoke.purpose"), "revoke.purpose"),
                parse_crypt(_string(spec["crypt"], "revoke.crypt"), "revoke.crypt"),
            )
        except (ValueError, RuntimeError) as exc:
            raise AdminRequestError("revoke", str(exc)) from None
    if "renew" in request:
        spec = _object(request["renew"], "renew", ("iccsn", "purpose", "crypt"))
        try:
            renewed = admin.renew_certificate(
                _string(spec["iccsn"], "renew.iccsn"),
                parse_purpose(_string(spec["purpose"], "renew.purpose"), "renew.purpose"),
                parse_crypt(_string(spec["crypt"], "renew.crypt"), "renew.crypt"),
            )
        except (ValueError, RenewError) as exc:
            raise AdminRequestError("renew", str(exc)) from None
    if "latency_ms" in request:
        _latency(admin, request["latency_ms"])
    if "unreachable" in request:
        if not isinstance(request["unreachable"], bool):
            raise AdminRequestError("unreachable", "must be true or false")
        admin.set_unreachable(request["unreachable"])
    return renewed


def _card(admin: FaultAdmin, field: str, value: Any, action: Any) -> None:
    """A card switch: ``"<ICCSN>"`` or a list of them (applied in order)."""
    for iccsn in _each(value, field):
        try:
            action(_string(iccsn, field))
        except ValueError as exc:
            raise AdminRequestError(field, str(exc)) from None


def _each(value: Any, field: str) -> list[Any]:
    if isinstance(value, list):
        if not value:
            raise AdminRequestError(field, "an empty list switches nothing")
        return value
    return [value]


def _pin(admin: FaultAdmin, field: str, value: Any, action: Any) -> None:
    """A PIN switch: ``"<ICCSN>"`` (the card's main PIN), ``{"iccsn": ..., "pin_type": ...}``,
    or a list of those (applied in order)."""
    for item in _each(value, field):
        pin_type: str | None = None
        if isinstance(item, dict):
            spec = _object(item, field, ("iccsn",))
            if "pin_type" in spec:
                pin_type = _string(spec["pin_type"], f"{field}.pin_type")
            item = spec["iccsn"]
        try:
            action(_string(item, field), pin_type)
        except ValueError as exc:
            raise AdminRequestError(field, str(exc)) from None


def _latency(admin: FaultAdmin, value: Any) -> None:
    iccsn: str | None = None
    if isinstance(value, dict):
        spec = _object(value, "latency_ms", ("ms",))
        iccsn = _string(spec["iccsn"], "latency_ms.iccsn") if "iccsn" in spec else None
        value = spec["ms"]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_LATENCY_MS  # also refuses NaN and infinities
    ):
        raise AdminRequestError(
            "latency_ms", f"must be a number of milliseconds 0..{MAX_LATENCY_MS}, got {value!r}"
        )
    try:
        admin.set_latency(value / 1000, iccsn=iccsn)
    except ValueError as exc:
        raise AdminRequestError("latency_ms", str(exc)) from None


def _object(value: Any, field: str, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AdminRequestError(field, f"must be an object with {', '.join(required)}")
    missing = [key for key in required if key not in value]
    if missing:
        raise AdminRequestError(f"{field}.{missing[0]}", "missing")
    return value


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise AdminRequestError(field, f"must be a non-empty string, got {value!r}")
    return value
