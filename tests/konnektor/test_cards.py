"""Cards: the PIN state machine, transport PIN, removal and the access rules of card keys."""

from __future__ import annotations

import pytest
from konnektor_helpers import CONTEXT, HBA_CONTEXT, MEYER, WEBER, handle

from kim_appliance.konnektor import (
    PIN_CH,
    PIN_SMC,
    AccessError,
    CardError,
    Konnektor,
    ParameterError,
    PinResult,
    PinStatus,
)
from kim_appliance.konnektor.cards import MAX_PIN_TRIES, Pin


def test_wrong_pin_counts_down_and_blocks_after_three() -> None:
    pin = Pin(PIN_SMC, "123456")
    assert pin.verify("000000") == (PinResult.REJECTED, 2)
    assert pin.verify("000000") == (PinResult.REJECTED, 1)
    assert pin.verify("000000") == (PinResult.NOWBLOCKED, 0)
    assert pin.status is PinStatus.BLOCKED
    # once blocked, even the right PIN does not help
    assert pin.verify("123456") == (PinResult.WASBLOCKED, 0)


def test_right_pin_resets_the_counter() -> None:
    pin = Pin(PIN_SMC, "123456")
    pin.verify("000000")
    assert pin.verify("123456") == (PinResult.OK, MAX_PIN_TRIES)
    assert pin.status is PinStatus.VERIFIED


def test_wrong_pin_drops_a_verified_state() -> None:
    pin = Pin(PIN_SMC, "123456", status=PinStatus.VERIFIED)
    assert pin.verify("999999") == (PinResult.REJECTED, 2)
    assert not pin.usable


def test_transport_pin_must_be_changed_first() -> None:
    pin = Pin(PIN_CH, "111111", status=PinStatus.TRANSPORT_PIN)
    assert pin.verify("111111") == (PinResult.TRANSPORT_PIN, MAX_PIN_TRIES)
    assert pin.change("111111", "654321") == (PinResult.OK, MAX_PIN_TRIES)
    assert pin.status is PinStatus.VERIFIED
    assert pin.verify("111111") == (PinResult.REJECTED, 2)
    assert pin.verify("654321")[0] is PinResult.OK


def test_puk_unblocks() -> None:
    pin = Pin(PIN_SMC, "123456", status=PinStatus.BLOCKED, puk="12345678")
    assert pin.unblock("00000000") == (PinResult.REJECTED, 0)
    assert pin.unblock("12345678", "222222") == (PinResult.OK, MAX_PIN_TRIES)
    assert pin.status is PinStatus.VERIFIABLE
    assert pin.verify("222222")[0] is PinResult.OK


def test_pin_state_machine_through_the_card_service(konnektor: Konnektor) -> None:
    """GetPinStatus/VerifyPin as the CardService shows them: demo cards start VERIFIED."""
    h = handle(konnektor, WEBER)
    assert konnektor.get_pin_status(CONTEXT, h, PIN_SMC).status is PinStatus.VERIFIED
    assert konnektor.verify_pin(CONTEXT, h, PIN_SMC, "000000").result is PinResult.REJECTED
    status = konnektor.get_pin_status(CONTEXT, h, PIN_SMC)
    assert (status.status, status.left_tries) == (PinStatus.VERIFIABLE, 2)
    konnektor.verify_pin(CONTEXT, h, PIN_SMC, "000000")
    response = konnektor.verify_pin(CONTEXT, h, PIN_SMC, "000000")
    assert (response.result, response.left_tries) == (PinResult.NOWBLOCKED, 0)
    assert konnektor.get_pin_status(CONTEXT, h, PIN_SMC).status is PinStatus.BLOCKED
    response = konnektor.unblock_pin(CONTEXT, h, PIN_SMC, "12345678")
    assert response.result is PinResult.OK
    assert konnektor.verify_pin(CONTEXT, h, PIN_SMC).result is PinResult.OK


def test_hba_has_pin_ch_not_pin_smc(konnektor: Konnektor) -> None:
    h = handle(konnektor, MEYER)
    assert konnektor.get_pin_status(HBA_CONTEXT, h, PIN_CH).status is PinStatus.VERIFIED
    with pytest.raises(ParameterError) as info:
        konnektor.get_pin_status(HBA_CONTEXT, h, PIN_SMC)
    assert info.value.code == 4000
    assert "PIN.SMC" in str(info.value)


def test_key_use_needs_a_verified_pin(konnektor: Konnektor) -> None:
    """An SMC-B that is not unlocked refuses private-key use with 4085."""
    h = handle(konnektor, WEBER)
    key = konnektor.signing_key(CONTEXT, h, "RSA")
    konnektor.verify_pin(CONTEXT, h, PIN_SMC, "000000")  # wrong: no longer VERIFIED
    with pytest.raises(AccessError) as info:
        key.sign_digest(b"\x00" * 32)
    assert info.value.code == 4085
    assert "VERIFIABLE" in info.value.detail
    konnektor.verify_pin(CONTEXT, h, PIN_SMC)
    assert len(key.sign_digest(b"\x00" * 32)) == 256


def test_removed_card_loses_handle_and_verified_state(konnektor: Konnektor) -> None:
    """Pulling a card invalidates its handle (4008); re-inserted, it has a new handle and the
    PIN must be verified again."""
    old = handle(konnektor, WEBER)
    konnektor.admin.remove_card(WEBER)
    with pytest.raises(CardError) as info:
        konnektor.get_pin_status(CONTEXT, old, PIN_SMC)
    assert info.value.code == 4008
    new = konnektor.admin.insert_card(WEBER)
    assert new != old
    assert konnektor.get_pin_status(CONTEXT, new, PIN_SMC).status is PinStatus.VERIFIABLE


def test_signing_key_refuses_the_hba(konnektor: Konnektor) -> None:
    """KOM-LE-A_2129: KIM signs with the SMC-B's C.HCI.OSIG, never with an HBA."""
    with pytest.raises(CardError) as info:
        konnektor.signing_key(HBA_CONTEXT, handle(konnektor, MEYER))
    assert info.value.code == 4058
    assert "KOM-LE-A_2129" in str(info.value)


def test_enc_key_does_not_sign(konnektor: Konnektor) -> None:
    key = konnektor.decryption_keys(CONTEXT, handle(konnektor, WEBER))[0]
    with pytest.raises(CardError, match="not allowed with the ENC key"):
        key.sign_digest(b"\x00" * 32)
