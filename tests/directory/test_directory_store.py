"""The VZD store: demo entries, persistence in the appliance's store, readers on other nodes,
and the §4.2 maintenance API for the Account Manager (I_Directory_Application_Maintenance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from kim_appliance.directory import DirectoryError, DirectoryStore, EntryNotFound, KimAddress
from kim_appliance.directory.demo import entries_from_demo
from kim_appliance.pki import admission_of
from kim_appliance.store import Store, open_store

FAD = "fd1.kim.telematik-test"


@pytest.fixture
async def store(demo_dir: Path, kim_store: Store) -> DirectoryStore:
    s = await DirectoryStore.open(kim_store.directory)
    await s.populate(entries_from_demo(demo_dir))
    return s


def weber(store: DirectoryStore) -> str:
    entry = store.find_by_mail("praxis.weber@fd1.kim.telematik-test")
    assert entry is not None
    return entry.telematik_id


async def test_demo_entries_carry_every_enc_certificate_and_the_admission_data(
    store: DirectoryStore, demo_dir: Path
) -> None:
    """digest §4.1: one entry per Telematik-ID (TIP1-A_5569: base data and every Fachdaten of
    the Telematik-ID in it), RSA and ECC ENC certificates side by side."""
    demo = json.loads((demo_dir / "demo.json").read_text())
    assert len(store) == len(demo["participants"]) == 4
    for p in demo["participants"]:
        entry = store.find_by_mail(p["address"].upper())
        assert entry is not None, p["address"]
        assert entry.telematik_id == p["telematik_id"]
        assert len(entry.certificates) == len(p["card"]["keys"].split("+"))
        pems = [
            x509.load_pem_x509_certificate(Path(c).read_bytes()) for c in p["export"]["enc_cert"]
        ]
        assert {x509.load_der_x509_certificate(d) for d in entry.certificates} == set(pems)
        admission = admission_of(pems[0])
        assert admission is not None
        assert list(entry.profession_oid) == list(admission.profession_oids)
        attributes = entry.ldap_attributes()
        assert attributes["komLeData"] == [f"1.5+,{p['address']}".encode()]
        assert attributes["kimData"] == [f"{p['address']},1.5+".encode()]
        assert attributes["cn"] == attributes["displayName"] == [p["display_name"].encode()]
        assert entry.dn == f"uid={entry.uid},dc=data,dc=vzd"


async def test_changes_survive_a_reopen(demo_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "own"
    async with open_store(None, data_dir) as kim:
        store = await DirectoryStore.open(kim.directory)
        await store.populate(entries_from_demo(demo_dir))
        tid = weber(store)
        await store.set_address(tid, FAD, KimAddress("empfang.weber@fd1.kim.telematik-test", "1.5"))
        before = store.get(tid)
    async with open_store(None, data_dir) as kim:
        reopened = await DirectoryStore.open(kim.directory)
        assert reopened.get(tid) == before
        found = reopened.find_by_mail("empfang.weber@fd1.kim.telematik-test")
        assert found is not None
        assert found.telematik_id == tid


async def test_a_change_on_another_node_is_seen_after_refresh(
    store: DirectoryStore, kim_store: Store
) -> None:
    """Two DirectoryStores on one store (two nodes sharing it): a change made through one is
    invisible to the other's snapshot until its refresh sees the change counter move."""
    other = await DirectoryStore.open(kim_store.directory)
    tid = weber(store)
    await store.set_address(tid, FAD, KimAddress("neu@fd1.kim.telematik-test", "1.5"))
    assert other.find_by_mail("neu@fd1.kim.telematik-test") is None
    assert await other.refresh() is True
    found = other.find_by_mail("neu@fd1.kim.telematik-test")
    assert found is not None
    assert found.telematik_id == tid
    assert await other.refresh() is False  # nothing new: one cheap version query


async def test_a_change_validated_against_a_stale_snapshot_is_checked_again(
    store: DirectoryStore, kim_store: Store
) -> None:
    """digest §4.2: an address is in the directory once. Another node added it to Weber's
    entry; a node whose snapshot predates that must not add it to Sonne's entry: its write
    meets the new version, it reloads, and the validation refuses (400)."""
    stale = await DirectoryStore.open(kim_store.directory)
    tid = weber(store)
    sonne = store.find_by_mail("apotheke.sonne@fd2.kim.telematik-test")
    assert sonne is not None
    await store.set_address(tid, FAD, KimAddress("doppelt@fd1.kim.telematik-test"))
    with pytest.raises(DirectoryError, match="already in the entry"):
        await stale.set_address(
            sonne.telematik_id,
            "fd2.kim.telematik-test",
            KimAddress("doppelt@fd1.kim.telematik-test"),
        )
    assert stale.version == store.version


async def test_add_get_modify_delete_fachdaten(store: DirectoryStore) -> None:
    """digest §4.2: add (201), get (FAD1), modify writes the whole list, delete."""
    tid = weber(store)
    added = await store.add_fachdaten(
        tid, "fd9.kim.telematik-test",
        [KimAddress("a@fd9.kim.telematik-test", "1.5+", ("eEB;V1.0", "DALE-UV;Einsendung;V1.0"))],
    )  # fmt: skip
    assert added.to_json()["kimData"] == [
        {"mail": "a@fd9.kim.telematik-test", "version": "1.5+",
         "appTags": ["eEB;V1.0", "DALE-UV;Einsendung;V1.0"]}
    ]  # fmt: skip
    attributes = store.get(tid).ldap_attributes()
    assert (
        b"a@fd9.kim.telematik-test,1.5+,eEB;V1.0|DALE-UV;Einsendung;V1.0" in attributes["kimData"]
    )
    assert b"1.5+,a@fd9.kim.telematik-test" in attributes["komLeData"]
    await store.modify_fachdaten(
        tid, "fd9.kim.telematik-test", [KimAddress("b@fd9.kim.telematik-test")]
    )
    got = store.get_fachdaten(tid, "fd9.kim.telematik-test")
    assert [(a.mail, a.version) for a in got.addresses] == [("b@fd9.kim.telematik-test", "1.0")]
    assert store.find_by_mail("a@fd9.kim.telematik-test") is None
    await store.delete_fachdaten(tid, "fd9.kim.telematik-test")
    with pytest.raises(DirectoryError) as info:
        store.get_fachdaten(tid, "fd9.kim.telematik-test")
    assert info.value.status == 404
    assert store.find_by_mail("praxis.weber@fd1.kim.telematik-test") is not None


async def test_set_and_remove_one_address_keep_the_others(store: DirectoryStore) -> None:
    tid = weber(store)
    await store.set_address(tid, FAD, KimAddress("zweite@fd1.kim.telematik-test"))
    await store.set_address(tid, FAD, KimAddress("praxis.weber@fd1.kim.telematik-test", "1.0"))
    mails = {a.mail: a.version for a in store.get_fachdaten(tid, FAD).addresses}
    assert mails == {
        "praxis.weber@fd1.kim.telematik-test": "1.0",
        "zweite@fd1.kim.telematik-test": "1.0",
    }
    await store.remove_address(tid, FAD, "ZWEITE@fd1.kim.telematik-test")
    assert [a.mail for a in store.get_fachdaten(tid, FAD).addresses] == [
        "praxis.weber@fd1.kim.telematik-test"
    ]
    with pytest.raises(DirectoryError, match="not among"):
        await store.remove_address(tid, FAD, "zweite@fd1.kim.telematik-test")


async def test_no_vzd_mail_entry_keeps_the_address_out_of_ldap(store: DirectoryStore) -> None:
    """A_24039 (Basis-Consumer): noVzdMailEntry leaves mail and komLeData unfilled."""
    tid = weber(store)
    await store.set_address(
        tid, FAD, KimAddress("basis@fd1.kim.telematik-test", no_vzd_mail_entry=True)
    )
    attributes = store.get(tid).ldap_attributes()
    assert all(b"basis@" not in v for v in attributes["mail"] + attributes["komLeData"])
    assert store.find_by_mail("basis@fd1.kim.telematik-test") is None


@pytest.mark.parametrize(
    ("addresses", "attribute", "text"),
    [
        ([KimAddress("x@fd1.kim.telematik-test", "2.x")], "version", "Unzulässiger Wert"),
        ([KimAddress("no-at-sign")], "mail", "Unzulässiger Wert"),
        ([KimAddress(f"m{i}@fd1.kim.telematik-test") for i in range(11)], "mail", "maxKOMLEadr"),
        ([KimAddress("apotheke.sonne@fd2.kim.telematik-test")], "mail", "already in the entry"),
        ([KimAddress("d@fd1.kim.telematik-test"), KimAddress("D@fd1.kim.telematik-test")],
         "mail", "twice"),
    ],
)  # fmt: skip
async def test_invalid_fachdaten_are_refused_with_400(
    store: DirectoryStore, addresses: list[KimAddress], attribute: str, text: str
) -> None:
    """digest §4.2 Error body: 400 with attributeName/attributeError; nothing is changed."""
    tid = weber(store)
    before = store.get(tid)
    with pytest.raises(DirectoryError) as info:
        await store.modify_fachdaten(tid, FAD, addresses)
    assert info.value.status == 400
    body = info.value.to_json()
    assert any(
        e["attributeName"] == attribute and text in e["attributeError"] for e in body["errors"]
    ), body
    assert store.get(tid) == before


async def test_unknown_telematik_id_is_404(store: DirectoryStore) -> None:
    with pytest.raises(EntryNotFound) as info:
        await store.add_fachdaten("9-nobody", FAD, [KimAddress("n@fd1.kim.telematik-test")])
    assert info.value.status == 404
    assert "9-nobody" in str(info.value)


async def test_search_fachdaten_with_wildcards(store: DirectoryStore) -> None:
    """digest §4.2 search_Directory_FA-Attributes: `*` wildcards, "" for absent."""
    assert {f.fad for f in store.search_fachdaten(mail="*@fd2.kim.telematik-test")} == {
        "fd2.kim.telematik-test"
    }
    assert len(store.search_fachdaten(kom_le_data="1.5+,*")) == 4
    assert store.search_fachdaten(mail="nobody*") == []
    tid = weber(store)
    await store.modify_fachdaten(tid, FAD, [])
    (empty,) = store.search_fachdaten(mail="")
    assert empty.telematik_id == tid
