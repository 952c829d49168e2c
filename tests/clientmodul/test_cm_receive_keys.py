"""The key choice of the receive pipeline without sockets (clientmodul/keys.py, digest §1.5
steps 1-2): recipient-emails entries of the account, the card holding their certificates, the
e-mail -> certificate -> ICCSN cache, and the fault mapping to DecryptionResult 01/02/03."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from kim_appliance.adapters import InProcessKonnektor
from kim_appliance.appliance import prepare_files
from kim_appliance.clientmodul.keys import (
    TTL_EMAIL_ICCSN,
    DecryptionKeyFinder,
    KeySelectionError,
    entries_for,
    scan_recipient_emails,
)
from kim_appliance.clientmodul.ports import CallContext
from kim_appliance.cms.keys import SoftwareKey
from kim_appliance.cms.recipient_emails import RecipientEmail
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.mail.seal import Certified, seal

CONTEXT = CallContext("Mandant1", "PVS1", "AP1")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cm-keys") / "kim-data"
    prepare_files(path)
    return path


@pytest.fixture
def konnektor(data_dir: Path) -> Konnektor:
    return Konnektor.from_data_dir(data_dir, persist_revocations=False)


@pytest.fixture(scope="module")
def people(data_dir: Path) -> dict[str, dict[str, Any]]:
    demo = json.loads((data_dir / "demo.json").read_text())
    return {p["address"].split("@")[0]: p for p in demo["participants"]}


def certs(p: dict[str, Any]) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(Path(c).read_bytes()) for c in p["export"]["enc_cert"]]


def entries(p: dict[str, Any], *, address: str | None = None) -> list[RecipientEmail]:
    return [RecipientEmail.for_certificate(address or p["address"], c) for c in certs(p)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_account_entries_are_matched_case_insensitively(people: dict[str, Any]) -> None:
    """KOM-LE-A_2043/A_2059: the entries whose emailAddress is the account, any case."""
    klein, weber = people["zahnarzt.klein"], people["praxis.weber"]
    all_entries = entries(klein) + entries(weber)
    mine = entries_for(klein["address"].upper(), all_entries)
    assert [e.serial for e in mine] == [c.serial_number for c in certs(klein)]


def test_only_the_keys_named_for_the_account(konnektor: Konnektor, people: dict[str, Any]) -> None:
    """KOM-LE-A_2044/A_2045: of Klein's card (RSA and ECC ENC keys) only the key whose
    certificate recipient-emails names is handed out."""
    klein = people["zahnarzt.klein"]
    rsa_only = entries(klein)[:1]
    keys = DecryptionKeyFinder(InProcessKonnektor(konnektor)).decryption_for(
        CONTEXT, klein["address"], rsa_only, telematik_id=klein["telematik_id"]
    )
    assert [k.certificate.serial_number for k in keys] == [rsa_only[0].serial]


def test_forged_entry_does_not_unlock_another_practice(
    konnektor: Konnektor, people: dict[str, Any]
) -> None:
    """KOM-LE-A_2044/A_2045: a recipient-emails that pairs Klein's address with Weber's
    certificate (both cards sit in this Konnektor) gives no key: Weber's card has another
    Telematik-ID than Klein's VZD entry. DecryptionResult 01, code 4009."""
    klein, weber = people["zahnarzt.klein"], people["praxis.weber"]
    forged = entries(weber, address=klein["address"])
    finder = DecryptionKeyFinder(InProcessKonnektor(konnektor))
    with pytest.raises(KeySelectionError) as caught:
        finder.decryption_for(CONTEXT, klein["address"], forged, telematik_id=klein["telematik_id"])
    assert (caught.value.decryption_result, caught.value.error_code) == ("01", "4009")
    # without the owner's Telematik-ID only the certificate decides: Weber's key would be used
    assert finder.decryption_for(CONTEXT, klein["address"], forged)


def test_no_entry_for_the_account_is_01(konnektor: Konnektor, people: dict[str, Any]) -> None:
    """KOM-LE-A_2043: no recipient-emails entry for the account -> 01/4009."""
    with pytest.raises(KeySelectionError, match="names no certificate for") as caught:
        DecryptionKeyFinder(InProcessKonnektor(konnektor)).decryption_for(
            CONTEXT, people["zahnarzt.klein"]["address"], entries(people["praxis.weber"])
        )
    assert caught.value.decryption_result == "01"


def test_hba_needs_the_user_id(konnektor: Konnektor, people: dict[str, Any]) -> None:
    """Digest §1.2: an HBA mailbox is found only with the holder's UserId in the context."""
    meyer = people["dr.meyer"]
    finder = DecryptionKeyFinder(InProcessKonnektor(konnektor))
    with pytest.raises(KeySelectionError, match="UserId"):
        finder.decryption_for(CONTEXT, meyer["address"], entries(meyer))
    with_user = CallContext("Mandant1", "PVS1", "AP1", "dr.meyer")
    assert len(finder.decryption_for(with_user, meyer["address"], entries(meyer))) == 2


def test_cache_ttl_email_iccsn(konnektor: Konnektor, people: dict[str, Any]) -> None:
    """KOM-LE-A_2061 (TTL_EMAIL_ICCSN, 30 days): the card search runs once, then the cache
    answers until the TTL has passed."""
    clock = Clock()
    finder = DecryptionKeyFinder(InProcessKonnektor(konnektor), clock=clock)
    weber = people["praxis.weber"]
    for _ in range(3):
        assert finder.decryption_for(CONTEXT, weber["address"], entries(weber))
    assert finder.card_searches == 1
    clock.now += TTL_EMAIL_ICCSN.total_seconds() + 1
    assert finder.decryption_for(CONTEXT, weber["address"], entries(weber))
    assert finder.card_searches == 2


def test_cached_card_reinserted_gets_its_new_handle(
    konnektor: Konnektor, people: dict[str, Any]
) -> None:
    """A cached ICCSN is looked up by GetCards again: a re-inserted card (new handle) is used
    under its new handle; a removed one gives 01/4009."""
    weber = people["praxis.weber"]
    finder = DecryptionKeyFinder(InProcessKonnektor(konnektor))
    finder.decryption_for(CONTEXT, weber["address"], entries(weber))
    konnektor.admin.remove_card(weber["card"]["iccsn"])
    with pytest.raises(KeySelectionError) as caught:
        finder.decryption_for(CONTEXT, weber["address"], entries(weber))
    assert caught.value.error_code == "4009"
    handle = konnektor.admin.insert_card(weber["card"]["iccsn"])
    [key] = finder.decryption_for(CONTEXT, weber["address"], entries(weber))
    assert key.card_handle == handle


def test_faults_map_to_decryption_results(konnektor: Konnektor, people: dict[str, Any]) -> None:
    """Digest §1.6: Konnektor unreachable -> 03/4011; a context the Konnektor refuses -> 01."""
    weber = people["praxis.weber"]
    finder = DecryptionKeyFinder(InProcessKonnektor(konnektor))
    konnektor.admin.set_unreachable(True)
    with pytest.raises(KeySelectionError) as caught:
        finder.decryption_for(CONTEXT, weber["address"], entries(weber))
    assert (caught.value.decryption_result, caught.value.error_code) == ("03", "4011")
    konnektor.admin.set_unreachable(False)
    with pytest.raises(KeySelectionError) as caught:
        finder.decryption_for(
            CallContext("MandantX", "PVS1", "AP1"), weber["address"], entries(weber)
        )
    assert caught.value.decryption_result == "01"
    assert "4004" in caught.value.reason


def test_scan_reads_recipient_emails(people: dict[str, Any]) -> None:
    """Digest §2.6/§2.7: the unprotected recipient-emails is read from the end of the
    AuthEnvelopedData without decrypting: one entry per certificate, the sender's included
    (KOM-LE-A_2111-01)."""
    weber, klein = people["praxis.weber"], people["zahnarzt.klein"]
    signer = SoftwareKey.from_files(
        Path(weber["export"]["osig_key"][0]), Path(weber["export"]["osig_cert"][0])
    )
    inner = (
        f"From: {weber['address']}\r\nTo: {klein['address']}\r\nSubject: x\r\n\r\nHallo\r\n"
    ).encode()
    out = io.BytesIO()
    seal(
        io.BytesIO(inner),
        out,
        signer=signer,
        sender=[Certified(weber["address"], c) for c in certs(weber)],
        recipients=[Certified(klein["address"], c) for c in certs(klein)],
    )
    out.seek(0)
    found = scan_recipient_emails(out)
    assert sorted(e.address for e in found) == sorted([weber["address"], *[klein["address"]] * 2])


def test_scan_of_a_broken_body_is_02() -> None:
    """Digest §1.6 DecryptionResult 02 (4010): marked as KIM message, but not the format."""
    broken = io.BytesIO(b"X-KOM-LE-Version: 1.0\r\n\r\nnot base64 at all!\r\n")
    with pytest.raises(KeySelectionError) as caught:
        scan_recipient_emails(broken)
    assert (caught.value.decryption_result, caught.value.error_code) == ("02", "4010")
