"""The in-process adapters of the Clientmodul's ports: the Konnektor's and the directory's own
objects, with their errors translated into the ports' (gematik codes kept), also the errors a
card key raises while the Clientmodul streams a message (issue 14)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kim_appliance.adapters import InProcessDirectory, InProcessKonnektor
from kim_appliance.appliance import prepare_files
from kim_appliance.clientmodul.ports import (
    CallContext,
    CardType,
    KonnektorFault,
    KonnektorUnreachable,
)
from kim_appliance.directory import DirectoryStore
from kim_appliance.directory.demo import entries_from_demo
from kim_appliance.directory.entries import KimAddress
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.store import Store

CONTEXT = CallContext("Mandant1", "PVS1", "AP1")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("adapters") / "kim-data"
    prepare_files(path)
    return path


@pytest.fixture(scope="module")
def people(data_dir: Path) -> dict[str, dict[str, Any]]:
    demo = json.loads((data_dir / "demo.json").read_text())
    return {p["address"].split("@")[0]: p for p in demo["participants"]}


@pytest.fixture
def konnektor(data_dir: Path) -> Konnektor:
    return Konnektor.from_data_dir(data_dir, persist_revocations=False)


def test_cards_carry_the_telematik_id_the_konnektor_knows(
    konnektor: Konnektor, people: dict[str, Any]
) -> None:
    port = InProcessKonnektor(konnektor)
    cards = {c.iccsn: c for c in port.get_cards(CONTEXT, CardType.SMC_B)}
    weber = people["praxis.weber"]
    assert cards[weber["card"]["iccsn"]].telematik_id == weber["telematik_id"]
    assert cards[weber["card"]["iccsn"]].card_type == "SMC-B"
    assert port.certificate_validator(CONTEXT) is konnektor.trust


def test_errors_become_the_ports_with_their_codes(
    konnektor: Konnektor, people: dict[str, Any]
) -> None:
    """A context the Infomodell refuses is KonnektorFault 4004 (context_refused); the fault
    "unreachable" is KonnektorUnreachable, whose text says so."""
    port = InProcessKonnektor(konnektor)
    with pytest.raises(KonnektorFault) as refused:
        port.get_cards(CallContext("MandantX", "PVS1", "AP1"))
    assert refused.value.code == 4004
    assert refused.value.context_refused
    assert refused.value.text == "Ungültige Mandanten-ID"
    konnektor.admin.set_unreachable(True)
    with pytest.raises(KonnektorUnreachable, match=r"^Konnektor not reachable: "):
        port.get_cards(CONTEXT)


def test_a_card_pulled_while_the_message_streams_is_a_port_fault(
    konnektor: Konnektor, people: dict[str, Any]
) -> None:
    """The signer handed out is the card's key; the card pulled before it signs the digest:
    KonnektorFault 4008 reaches the Clientmodul (451, KOM-LE-A_2021), not the Konnektor's own
    error class. Decryption keys are only those of the certificates asked for."""
    port = InProcessKonnektor(konnektor)
    weber = people["zahnarzt.klein"]
    card = next(c for c in port.get_cards(CONTEXT) if c.iccsn == weber["card"]["iccsn"])
    signer = port.signer(CONTEXT, card.handle, "RSA_ECC")
    konnektor.admin.remove_card(weber["card"]["iccsn"])
    with pytest.raises(KonnektorFault) as pulled:
        signer.sign_digest(hashlib.sha256(b"x").digest())  # type: ignore[union-attr]
    assert pulled.value.code == 4008
    handle = konnektor.admin.insert_card(weber["card"]["iccsn"])
    konnektor.admin.set_pin_status(weber["card"]["iccsn"], "VERIFIED")
    rsa = port.read_card_certificate(CONTEXT, handle, "C.ENC", "RSA")
    keys = port.decryption(CONTEXT, handle, [rsa])
    assert [k.certificate for k in keys] == [rsa]  # type: ignore[union-attr]


async def test_directory_records_as_a_mail_search_finds_them(
    data_dir: Path, kim_store: Store
) -> None:
    """(mail=...) in-process: Telematik-ID, certificates and the address's version; an address
    kept out of the VZD (noVzdMailEntry, A_24039) is not found, nor an unknown one."""
    store = await DirectoryStore.open(kim_store.directory)
    await store.populate(entries_from_demo(data_dir))
    entry = store.find_by_mail("praxis.weber@fd1.kim.telematik-test")
    assert entry is not None
    fad = next(iter(entry.fachdaten))
    hidden = KimAddress("versteckt@fd1.kim.telematik-test", "1.5+", no_vzd_mail_entry=True)
    await store.put_entry(replace(entry, fachdaten={fad: (*entry.fachdaten[fad], hidden)}))
    port = InProcessDirectory(store)
    found = port.find_by_mail(
        ["Praxis.Weber@fd1.kim.telematik-test", hidden.mail, "niemand@fd1.kim.telematik-test"]
    )
    assert list(found) == ["praxis.weber@fd1.kim.telematik-test"]
    record = found["praxis.weber@fd1.kim.telematik-test"]
    assert record.telematik_id == entry.telematik_id
    assert record.certificates == entry.certificates
    assert record.version == entry.fachdaten[fad][0].version
