"""Faults switched on at runtime surface as a real Konnektor reports them (issue 4, item 4)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from konnektor_helpers import ADDRESSES, CONTEXT, KLEIN, SONNE, WEBER, handle

from kim_appliance.cms.recipient_emails import RecipientEmail, encode_recipient_emails
from kim_appliance.konnektor import (
    PIN_SMC,
    AccessError,
    CardError,
    HighLevelResult,
    KeyPurpose,
    Konnektor,
    KonnektorUnreachableError,
    PinResult,
    PinStatus,
)
from kim_appliance.konnektor.cards import Crypt
from kim_appliance.konnektor.infomodell import load
from kim_appliance.pki import TestPki, TrustStore

DOCUMENT = b"Content-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\nbody\r\n"


def _emails(konnektor: Konnektor) -> bytes:
    cert = konnektor.read_card_certificate(CONTEXT, handle(konnektor, WEBER), "C.ENC")
    return encode_recipient_emails([RecipientEmail.for_certificate(ADDRESSES[WEBER], cert)])


def test_unreachable_fails_every_operation_and_handed_out_keys(konnektor: Konnektor) -> None:
    """While "unreachable" is on, every call raises KonnektorUnreachableError (a
    ConnectionError: no SOAP fault), including keys handed out before."""
    h = handle(konnektor, WEBER)
    key = konnektor.signing_key(CONTEXT, h, "RSA")
    konnektor.admin.set_unreachable()
    calls = [
        lambda: konnektor.get_cards(CONTEXT),
        lambda: konnektor.get_pin_status(CONTEXT, h, PIN_SMC),
        lambda: konnektor.verify_pin(CONTEXT, h, PIN_SMC),
        lambda: konnektor.read_card_certificate(CONTEXT, h, "C.ENC"),
        lambda: konnektor.verify_document(CONTEXT, b"x"),
        lambda: konnektor.decrypt_document(CONTEXT, h, b"x"),
        lambda: konnektor.external_authenticate(CONTEXT, h, bytes(32)),
        lambda: key.sign_digest(bytes(32)),
    ]
    for call in calls:
        with pytest.raises(KonnektorUnreachableError):
            call()
    assert isinstance(KonnektorUnreachableError("x"), ConnectionError)
    konnektor.admin.set_unreachable(False)
    assert len(key.sign_digest(bytes(32))) == 256


def test_card_removed_surfaces_as_4008_also_for_a_handed_out_key(konnektor: Konnektor) -> None:
    h = handle(konnektor, SONNE)
    keys = konnektor.decryption_keys(CONTEXT, h)
    konnektor.admin.remove_card(SONNE)
    assert SONNE not in {c.iccsn for c in konnektor.get_cards(CONTEXT)}
    with pytest.raises(CardError) as info:
        keys[0].agree_key(keys[0].certificate.public_key())  # type: ignore[arg-type]
    assert info.value.code == 4008
    assert info.value.message == "Karte nicht als gesteckt identifiziert"
    with pytest.raises(CardError) as info:
        konnektor.sign_document(CONTEXT, h, DOCUMENT, _emails(konnektor))
    assert info.value.code == 4008


def test_pin_blocked_surfaces_in_status_verify_and_key_use(konnektor: Konnektor) -> None:
    h = handle(konnektor, WEBER)
    konnektor.admin.block_pin(WEBER)
    status = konnektor.get_pin_status(CONTEXT, h, PIN_SMC)
    assert (status.status, status.left_tries) == (PinStatus.BLOCKED, 0)
    assert konnektor.verify_pin(CONTEXT, h, PIN_SMC).result is PinResult.WASBLOCKED
    with pytest.raises(AccessError) as info:
        konnektor.sign_document(CONTEXT, h, DOCUMENT, _emails(konnektor), "RSA")
    assert info.value.code == 4085
    assert "BLOCKED" in info.value.detail
    assert konnektor.admin.status()["cards"][0]["pins"]["PIN.SMC"]["status"] == "BLOCKED"


def test_transport_pin_state_refuses_decryption(konnektor: Konnektor) -> None:
    h = handle(konnektor, WEBER)
    cert = konnektor.read_card_certificate(CONTEXT, h, "C.ENC")
    der = konnektor.encrypt_document(CONTEXT, [cert], DOCUMENT, _emails(konnektor))
    konnektor.admin.set_pin_status(WEBER, "TRANSPORT_PIN")
    with pytest.raises(AccessError, match="TRANSPORT_PIN"):
        konnektor.decrypt_document(CONTEXT, h, der)


def test_revoked_certificate_makes_verification_invalid(own_data_dir: Path) -> None:
    """Revoking a card certificate in the test PKI: VerifyCertificate says CERT_REVOKED,
    VerifyDocument INVALID/4206 (IntegrityCheckResult 05) for KIM and generic signatures; the
    CRL on disk lists it."""
    konnektor = Konnektor.from_data_dir(own_data_dir)
    h = handle(konnektor, KLEIN)
    signed = konnektor.sign_document(CONTEXT, h, DOCUMENT, _emails(konnektor), "ECC")
    assert konnektor.verify_document(CONTEXT, signed).result is HighLevelResult.VALID
    detached = konnektor.sign_document(CONTEXT, h, DOCUMENT, None, "ECC", include_content=False)
    generic = konnektor.verify_document(CONTEXT, detached, document=DOCUMENT)
    assert generic.result is HighLevelResult.VALID
    cert = konnektor.admin.revoke_certificate(KLEIN, KeyPurpose.OSIG, Crypt.ECC)
    result = konnektor.verify_certificate(CONTEXT, cert)
    assert (result.result, result.reason) == (HighLevelResult.INVALID, "CERT_REVOKED")
    for verification in (
        konnektor.verify_document(CONTEXT, signed),
        konnektor.verify_document(CONTEXT, detached, document=DOCUMENT),
    ):
        assert (verification.result, verification.code) == (HighLevelResult.INVALID, 4206)
        assert verification.integrity_check_result == "05"
        assert "revoked" in verification.detail
    # persisted: a Konnektor started afterwards sees the revocation too
    crls = TestPki.load(own_data_dir / "pki").current_crls()
    assert any(crl.get_revoked_certificate_by_serial_number(cert.serial_number) for crl in crls)
    other = konnektor.read_card_certificate(CONTEXT, h, "C.SIG", "RSA")
    assert konnektor.verify_certificate(CONTEXT, other).result is HighLevelResult.VALID


def test_missing_crls_make_the_result_inconclusive(demo_dir: Path) -> None:
    """Without revocation information: INCONCLUSIVE / 4264 (IntegrityCheckResult 07), for KIM
    and generic signatures alike."""
    pki = TestPki.load(demo_dir / "pki")
    trust = TrustStore(
        anchors=[ca.certificate for ca in pki.roots],
        intermediates=[ca.certificate for ca in pki.intermediates],
    )
    konnektor = Konnektor(load(demo_dir), demo_dir, trust=trust)
    signed = konnektor.sign_document(
        CONTEXT, handle(konnektor, WEBER), DOCUMENT, _emails(konnektor), "RSA"
    )
    generic = konnektor.sign_document(CONTEXT, handle(konnektor, WEBER), DOCUMENT, None, "RSA")
    for verification in (
        konnektor.verify_document(CONTEXT, signed),
        konnektor.verify_document(CONTEXT, generic),
    ):
        assert (verification.result, verification.code) == (HighLevelResult.INCONCLUSIVE, 4264)
        assert verification.integrity_check_result == "07"
    cert = konnektor.read_card_certificate(CONTEXT, handle(konnektor, WEBER), "C.ENC")
    result = konnektor.verify_certificate(CONTEXT, cert)
    assert (result.result, result.reason) == (HighLevelResult.INCONCLUSIVE, "NO_REVOCATION_CHECK")


def test_slow_card_latency_is_observable_and_serialised(konnektor: Konnektor) -> None:
    """A latency per private-key operation; parallel operations on one card queue up."""
    key = konnektor.signing_key(CONTEXT, handle(konnektor, SONNE), "ECC")
    digest = hashlib.sha256(b"x").digest()
    konnektor.admin.set_latency(0.05, iccsn=SONNE)
    start = time.monotonic()
    threads = [threading.Thread(target=key.sign_digest, args=(digest,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - start >= 0.15
    # other cards are not slowed down
    fast = konnektor.signing_key(CONTEXT, handle(konnektor, WEBER), "RSA")
    start = time.monotonic()
    fast.sign_digest(digest)
    assert time.monotonic() - start < 0.05
    konnektor.admin.clear()
    start = time.monotonic()
    key.sign_digest(digest)
    assert time.monotonic() - start < 0.05


def test_admin_refuses_unknown_cards_and_unbounded_latency(konnektor: Konnektor) -> None:
    """A latency outside 0..60 s (negative, infinite, NaN, an hour) is refused: a card that
    never answers only hangs every caller (issue 11: latency_ms of 1e999)."""
    with pytest.raises(ValueError, match="no card with ICCSN 123"):
        konnektor.admin.remove_card("123")
    for seconds in (-1, float("inf"), float("nan"), 3600):
        with pytest.raises(ValueError, match=r"must be 0\.\.60"):
            konnektor.admin.set_latency(seconds)
    konnektor.admin.set_latency(60)
    assert konnektor.admin.state.latency == 60


def test_clear_inserts_removed_cards(konnektor: Konnektor) -> None:
    konnektor.admin.remove_card(WEBER)
    konnektor.admin.set_unreachable()
    konnektor.admin.clear()
    assert WEBER in {c.iccsn for c in konnektor.get_cards(CONTEXT)}
    assert isinstance(
        konnektor.read_card_certificate(CONTEXT, handle(konnektor, WEBER), "C.ENC"),
        x509.Certificate,
    )
