"""Faults switched on at runtime surface as a real Konnektor reports them (issue 4, item 4),
and the switches that repair them work as a tester expects (issue 15)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from konnektor_helpers import ADDRESSES, CONTEXT, KLEIN, MEYER, SONNE, WEBER, handle

from kim_appliance.cms.recipient_emails import RecipientEmail, encode_recipient_emails
from kim_appliance.directory import DirectoryStore
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
from kim_appliance.konnektor.faults import RenewError
from kim_appliance.konnektor.infomodell import load
from kim_appliance.pki import CertProfile, TestPki, TrustStore, profile_of

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


# --- issue 15: the switches that repair what the faults broke ---------------------------------


def test_card_put_back_needs_its_pin_verified_again(konnektor: Konnektor) -> None:
    """A card pulled and put back has its PIN VERIFIABLE (4085 on the next key use), as a real
    card; the verify_pin switch (the user typing the PIN) makes it usable again."""
    konnektor.admin.remove_card(WEBER)
    konnektor.admin.insert_card(WEBER)
    h = handle(konnektor, WEBER)
    assert konnektor.get_pin_status(CONTEXT, h, PIN_SMC).status is PinStatus.VERIFIABLE
    with pytest.raises(AccessError) as info:
        konnektor.sign_document(CONTEXT, h, DOCUMENT, _emails(konnektor), "RSA")
    assert info.value.code == 4085
    konnektor.admin.verify_pin(WEBER)
    status = konnektor.get_pin_status(CONTEXT, h, PIN_SMC)
    assert (status.status, status.left_tries) == (PinStatus.VERIFIED, 3)
    signed = konnektor.sign_document(CONTEXT, h, DOCUMENT, _emails(konnektor), "RSA")
    assert konnektor.verify_document(CONTEXT, signed).result is HighLevelResult.VALID


def test_verify_pin_says_what_to_do_first(konnektor: Konnektor) -> None:
    """A removed card or a BLOCKED PIN cannot be verified: the refusal names the switch that
    comes first, and nothing changes."""
    konnektor.admin.remove_card(SONNE)
    with pytest.raises(ValueError, match=r"removed: insert it first .*--card-inserted"):
        konnektor.admin.verify_pin(SONNE)
    konnektor.admin.insert_card(SONNE)
    konnektor.admin.block_pin(SONNE)
    with pytest.raises(ValueError, match=r"BLOCKED: unblock it first.*--unblock-pin"):
        konnektor.admin.verify_pin(SONNE)
    card = konnektor.admin.status()["cards"][1]
    assert card["iccsn"] == SONNE
    assert card["pins"][PIN_SMC] == {"status": "BLOCKED", "left_tries": 0}


def test_unblock_pin_then_verify_makes_a_blocked_card_work(konnektor: Konnektor) -> None:
    """UnblockPin as with the PUK: BLOCKED becomes VERIFIABLE with three tries; verifying it
    then lets the card decrypt again."""
    h = handle(konnektor, WEBER)
    cert = konnektor.read_card_certificate(CONTEXT, h, "C.ENC")
    der = konnektor.encrypt_document(CONTEXT, [cert], DOCUMENT, _emails(konnektor))
    konnektor.admin.block_pin(WEBER)
    konnektor.admin.unblock_pin(WEBER)
    status = konnektor.get_pin_status(CONTEXT, h, PIN_SMC)
    assert (status.status, status.left_tries) == (PinStatus.VERIFIABLE, 3)
    with pytest.raises(AccessError):
        konnektor.decrypt_document(CONTEXT, h, der)
    konnektor.admin.verify_pin(WEBER)
    assert konnektor.decrypt_document(CONTEXT, h, der) == DOCUMENT


def test_clear_returns_every_card_to_its_first_state(konnektor: Konnektor) -> None:
    """clear: every card inserted, every PIN VERIFIED with three tries (the demo cards' first
    state), no latency, reachable; a card that stayed inserted keeps its handle."""
    kept = handle(konnektor, KLEIN)
    konnektor.admin.remove_card(WEBER)
    konnektor.admin.block_pin(SONNE)
    konnektor.admin.remove_card(MEYER)
    konnektor.admin.insert_card(MEYER)  # VERIFIABLE now
    h = handle(konnektor, KLEIN)
    assert konnektor.verify_pin(CONTEXT, h, PIN_SMC, "000000").left_tries == 2
    konnektor.admin.set_latency(0.2)
    konnektor.admin.set_unreachable()
    konnektor.admin.clear()
    status = konnektor.admin.status()
    assert status["unreachable"] is False
    assert status["latency"] == 0
    for card in status["cards"]:
        assert card["inserted"], card
        assert card["latency"] == 0
        for pin in card["pins"].values():
            assert pin == {"status": "VERIFIED", "left_tries": 3}, card
    assert handle(konnektor, KLEIN) == kept
    signed = konnektor.sign_document(
        CONTEXT, handle(konnektor, SONNE), DOCUMENT, _emails(konnektor), "ECC"
    )
    assert konnektor.verify_document(CONTEXT, signed).result is HighLevelResult.VALID


def test_revoked_list_comes_from_the_crls_and_survives_a_restart(own_data_dir: Path) -> None:
    """The status lists a revoked card certificate from the CRLs the Konnektor validates
    against: a Konnektor started again on the same data dir lists it too (it was empty after
    a restart before issue 15)."""
    konnektor = Konnektor.from_data_dir(own_data_dir)
    assert konnektor.admin.status()["revoked"] == []
    cert = konnektor.admin.revoke_certificate(WEBER, KeyPurpose.ENC, Crypt.RSA)
    expected = {
        "iccsn": WEBER,
        "holder": "Hausarztpraxis Dr. Weber",
        "purpose": "ENC",
        "crypt": "RSA",
        "serial": f"{cert.serial_number:X}",
        "reason": "key_compromise",
    }
    (listed,) = konnektor.admin.status()["revoked"]
    assert {k: v for k, v in listed.items() if k != "revoked_at"} == expected
    restarted = Konnektor.from_data_dir(own_data_dir)
    (again,) = restarted.admin.status()["revoked"]
    assert again == listed
    restarted.admin.clear()  # a revocation cannot be undone
    assert restarted.admin.status()["revoked"] == [listed]


async def test_renew_replaces_a_revoked_enc_certificate_on_the_card_and_in_the_vzd(
    own_data_dir: Path,
) -> None:
    """The way out of a revocation: a new key pair and certificate (same subject and
    profile, valid, not revoked) on the card, in its key files (so a restart keeps it), and in
    the VZD entry through the publisher the appliance wires (kim_appliance.appliance
    .vzd_publisher, called from the admin request's worker thread); mail encrypted for the new
    certificate decrypts on the card."""
    from kim_appliance import demo
    from kim_appliance.appliance import vzd_publisher
    from kim_appliance.store import open_store

    konnektor = Konnektor.from_data_dir(own_data_dir)
    async with open_store(None, own_data_dir) as store:
        await demo.populate(store, own_data_dir)
        directory = await DirectoryStore.open(store.directory)
        konnektor.admin.publisher = vzd_publisher(directory, trio.lowlevel.current_trio_token())
        old = await trio.to_thread.run_sync(
            konnektor.admin.revoke_certificate, WEBER, KeyPurpose.ENC, Crypt.RSA
        )
        renewal = await trio.to_thread.run_sync(
            konnektor.admin.renew_certificate, WEBER, KeyPurpose.ENC, Crypt.RSA
        )
        entry = directory.find_by_mail(ADDRESSES[WEBER])
    new = renewal.new
    assert renewal.old == old
    assert renewal.published
    assert new.serial_number != old.serial_number
    assert new.subject == old.subject
    assert new.public_key().public_numbers() != old.public_key().public_numbers()  # type: ignore[union-attr]
    assert profile_of(new) is profile_of(old) is CertProfile.C_HCI_ENC
    assert konnektor.verify_certificate(CONTEXT, new).result is HighLevelResult.VALID
    assert konnektor.admin.status()["revoked"] == []
    h = handle(konnektor, WEBER)
    assert konnektor.read_card_certificate(CONTEXT, h, "C.ENC") == new
    assert entry is not None
    assert new.public_bytes(Encoding.DER) in entry.certificates
    assert old.public_bytes(Encoding.DER) not in entry.certificates
    der = konnektor.encrypt_document(CONTEXT, [new], DOCUMENT, None)
    assert konnektor.decrypt_document(CONTEXT, h, der) == DOCUMENT
    restarted = Konnektor.from_data_dir(own_data_dir)
    assert restarted.read_card_certificate(CONTEXT, handle(restarted, WEBER), "C.ENC") == new


def test_renew_of_an_osig_key_signs_with_the_new_key(own_data_dir: Path) -> None:
    """OSIG is not in the VZD: renewed without a publisher; signatures from now on carry the
    new certificate and verify."""
    konnektor = Konnektor.from_data_dir(own_data_dir)
    renewal = konnektor.admin.renew_certificate(KLEIN, KeyPurpose.OSIG, Crypt.ECC)
    assert not renewal.published
    assert renewal.to_json()["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    h = handle(konnektor, KLEIN)
    signed = konnektor.sign_document(CONTEXT, h, DOCUMENT, _emails(konnektor), "ECC")
    verification = konnektor.verify_document(CONTEXT, signed)
    assert verification.result is HighLevelResult.VALID
    assert verification.report is not None
    assert verification.report.signer_certificate == renewal.new


def test_renew_refuses_what_it_cannot_do_and_changes_nothing(own_data_dir: Path) -> None:
    """An ENC certificate without a VZD publisher (senders would go on finding the old one),
    and a certificate of another PKI (an imported card), are refused; the card keeps its
    key and its files stay as they were."""
    konnektor = Konnektor.from_data_dir(own_data_dir)
    before = konnektor.cards.by_iccsn(WEBER).certificate(KeyPurpose.ENC, Crypt.RSA)
    files = {p: p.read_bytes() for p in (own_data_dir / "cards" / "praxis.weber").iterdir()}
    with pytest.raises(RenewError, match="publishing the new ENC certificate in the VZD"):
        konnektor.admin.renew_certificate(WEBER, KeyPurpose.ENC, Crypt.RSA)
    assert konnektor.cards.by_iccsn(WEBER).certificate(KeyPurpose.ENC, Crypt.RSA) == before
    assert {p: p.read_bytes() for p in files} == files
    foreign = TestPki.generate()
    stranger = Konnektor(load(own_data_dir), own_data_dir, trust=foreign.trust_store(), pki=foreign)
    with pytest.raises(RenewError, match="not issued by this appliance's test PKI"):
        stranger.admin.renew_certificate(KLEIN, KeyPurpose.OSIG, Crypt.RSA)
