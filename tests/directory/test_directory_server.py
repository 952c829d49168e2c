"""The VZD over sockets: ``ldapsearch`` (OpenLDAP) and the ``ldap3`` client against the
in-process server, plain LDAP and LDAPS, on port 0 (digest §4.1)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import ldap3
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from directory_helpers import (
    ADMIN,
    BASE,
    MEYER,
    WEBER,
    ldapsearch,
    ldif_entries,
    needs_ldapsearch,
    tls_files_for,
    url,
)
from ldap3.core.exceptions import LDAPException

from kim_appliance.directory import DirectoryAddresses, DirectoryStore, serve_directory
from kim_appliance.directory.demo import entries_from_demo
from kim_appliance.directory.entries import DirectoryEntry, KimAddress
from kim_appliance.pki.tls import server_context
from kim_appliance.store import Store


@pytest.fixture(scope="module")
def tls_files(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(chain, key, CA) of a C.ZD.TLS-S certificate for 127.0.0.1 from the demo test PKI."""
    return tls_files_for(demo_dir, tmp_path_factory.mktemp("vzd-tls"))


@pytest.fixture
async def store(demo_dir: Path, kim_store: Store) -> DirectoryStore:
    s = await DirectoryStore.open(kim_store.directory)
    await s.populate(entries_from_demo(demo_dir))
    return s


@pytest.fixture
async def vzd(
    store: DirectoryStore, tls_files: tuple[Path, Path, Path]
) -> AsyncIterator[DirectoryAddresses]:
    chain, key, _ = tls_files
    async with trio.open_nursery() as nursery:
        addresses: DirectoryAddresses = await nursery.start(
            partial(
                serve_directory, store, bind="127.0.0.1", ldap_port=0, ldaps_port=0,
                ssl_context=server_context(chain, key), users={ADMIN[0].upper(): ADMIN[1]},
            )
        )  # fmt: skip
        yield addresses
        nursery.cancel_scope.cancel()


def enc_certs_der(demo_dir: Path, address: str) -> set[bytes]:
    demo = json.loads((demo_dir / "demo.json").read_text())
    (p,) = [p for p in demo["participants"] if p["address"] == address]
    return {
        x509.load_pem_x509_certificate(Path(c).read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        for c in p["export"]["enc_cert"]
    }


@needs_ldapsearch
async def test_ldapsearch_cm_lookup_gets_both_certificates_byte_exact(
    vzd: DirectoryAddresses, demo_dir: Path
) -> None:
    """The Clientmodul's lookup (digest §4.1): (mail=addr) -> userCertificate;binary (RSA and
    ECC side by side) and komLeData."""
    code, out, err = await ldapsearch(
        url(vzd.ldap), f"(mail={MEYER})", "userCertificate;binary", "komLeData"
    )
    assert code == 0, err
    (entry,) = ldif_entries(out)
    assert set(entry["userCertificate;binary"]) == enc_certs_der(demo_dir, MEYER)
    assert len(entry["userCertificate;binary"]) == 2
    assert entry["komLeData"] == [f"1.5+,{MEYER}".encode()]
    assert set(entry) == {"dn", "userCertificate;binary", "komLeData"}


@needs_ldapsearch
async def test_ldapsearch_over_ldaps_with_the_test_ca(
    vzd: DirectoryAddresses, tls_files: tuple[Path, Path, Path], demo_dir: Path
) -> None:
    code, out, err = await ldapsearch(
        url(vzd.ldaps, "ldaps"), f"(mail={WEBER})", "userCertificate;binary",
        env={"LDAPTLS_CACERT": str(tls_files[2])},
    )  # fmt: skip
    assert code == 0, err
    (entry,) = ldif_entries(out)
    assert set(entry["userCertificate;binary"]) == enc_certs_der(demo_dir, WEBER)


@needs_ldapsearch
@pytest.mark.parametrize(
    ("filter_text", "expected"),
    [
        ("(displayName=*praxis*)", {"praxis.weber", "zahnarzt.klein"}),
        ("(&(mail=*@fd1.kim.telematik-test)(!(displayName=zahnarzt*)))", {"praxis.weber"}),
        ("(|(mail=dr.meyer@FD2.kim.telematik-test)(telematikID=3-SMC-B-*))",
         {"dr.meyer", "apotheke.sonne"}),
        ("(&(personalEntry=TRUE)(givenName=*))", {"dr.meyer"}),
        ("(mail=nobody@fd1.kim.telematik-test)", set()),
        ("(&(mail=*)(unknownAttribute=x))", set()),
    ],
)  # fmt: skip
async def test_ldapsearch_filters(
    vzd: DirectoryAddresses, filter_text: str, expected: set[str]
) -> None:
    code, out, err = await ldapsearch(url(vzd.ldap), filter_text, "mail")
    assert code == 0, err  # no match is success with 0 entries
    found = {e["mail"][0].decode().split("@")[0] for e in ldif_entries(out)}
    assert found == expected


@needs_ldapsearch
async def test_ldapsearch_malformed_filter_is_a_filter_error(vzd: DirectoryAddresses) -> None:
    code, _, err = await ldapsearch(url(vzd.ldap), "(mail=praxis")
    assert code != 0
    assert "Bad search filter" in err


@needs_ldapsearch
async def test_ldapsearch_bind_failures_and_success(vzd: DirectoryAddresses) -> None:
    code, _, err = await ldapsearch(url(vzd.ldap), "-D", ADMIN[0], "-w", "falsch", "(mail=*)")
    assert code == 49, err
    assert "Invalid credentials" in err
    code, out, err = await ldapsearch(
        url(vzd.ldap), "-D", ADMIN[0], "-w", ADMIN[1], f"(mail={WEBER})"
    )
    assert code == 0, err
    assert len(ldif_entries(out)) == 1


@needs_ldapsearch
async def test_ldapadd_is_refused(vzd: DirectoryAddresses) -> None:
    result = await trio.run_process(
        ["ldapadd", "-x", "-H", url(vzd.ldap), "-D", ADMIN[0], "-w", ADMIN[1]],
        stdin=b"dn: uid=x,dc=data,dc=vzd\nobjectClass: top\nuid: x\n",
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    assert result.returncode == 53
    assert b"read-only" in result.stderr


@needs_ldapsearch
async def test_size_limit_100_with_the_entries_sent(
    vzd: DirectoryAddresses, store: DirectoryStore
) -> None:
    """TIP1-A_5552: at most 100 entries, then sizeLimitExceeded (4) — ldapsearch exits 4 and
    prints the 100 entries it got."""
    template = store.get("1-SMC-B-Testkarte-883110000100001")
    for i in range(120):
        await store.put_entry(
            replace(
                template, uid=DirectoryEntry.new_uid(), telematik_id=f"9-test-{i}",
                fachdaten={"fd3.kim.telematik-test": (KimAddress(f"p{i}@fd3.kim.telematik-test"),)},
            )
        )  # fmt: skip
    code, out, err = await ldapsearch(url(vzd.ldap), "(mail=p*@fd3.kim.telematik-test)", "1.1")
    assert code == 4, err
    assert "Size limit exceeded" in err
    assert len(ldif_entries(out)) == 100
    code, out, _ = await ldapsearch(url(vzd.ldap), "-z", "5", "(mail=p*)", "1.1")
    assert code == 4
    assert len(ldif_entries(out)) == 5


@needs_ldapsearch
async def test_a_change_made_on_another_node_is_found_by_the_next_search(
    vzd: DirectoryAddresses, store: DirectoryStore, kim_store: Store
) -> None:
    """One store, two nodes: the Account Manager of another node adds an address through its
    own DirectoryStore; this node's LDAP server finds it at the next search (the store's change
    counter), without a restart."""
    other_node = await DirectoryStore.open(kim_store.directory)
    entry = store.find_by_mail(WEBER)
    assert entry is not None
    new = "vertretung@fd1.kim.telematik-test"
    code, out, _ = await ldapsearch(url(vzd.ldap), f"(mail={new})", "telematikID")
    assert (code, ldif_entries(out)) == (0, [])
    await other_node.set_address(entry.telematik_id, "fd1.kim.telematik-test", KimAddress(new))
    code, out, err = await ldapsearch(url(vzd.ldap), f"(mail={new})", "telematikID")
    assert code == 0, err
    assert f"telematikID: {entry.telematik_id}" in out


@needs_ldapsearch
async def test_scopes_and_bases(vzd: DirectoryAddresses, store: DirectoryStore) -> None:
    entry = store.find_by_mail(WEBER)
    assert entry is not None
    code, out, err = await ldapsearch(
        url(vzd.ldap), "-b", entry.dn, "-s", "base", "(objectClass=*)", "telematikID"
    )
    assert code == 0, err
    assert ldif_entries(out) == [
        {"dn": [entry.dn.encode()], "telematikID": [entry.telematik_id.encode()]}
    ]
    code, out, _ = await ldapsearch(url(vzd.ldap), "-s", "one", "(mail=*)", "1.1")
    assert (code, len(ldif_entries(out))) == (0, 4)
    code, _, err = await ldapsearch(url(vzd.ldap), "-b", "dc=other,dc=vzd", "(mail=*)")
    assert code == 32, err


def _ldap3_connection(
    address: tuple[str, int], ca: Path | None = None, **kw: Any
) -> ldap3.Connection:
    tls = ldap3.Tls(ca_certs_file=str(ca), validate=ssl.CERT_REQUIRED) if ca else None
    server = ldap3.Server(address[0], port=address[1], use_ssl=ca is not None, tls=tls,
                          get_info=ldap3.NONE)  # fmt: skip
    return ldap3.Connection(server, **kw)


def _ldap3_session(vzd: DirectoryAddresses, ca: Path, demo_dir: Path) -> None:
    assert vzd.ldap is not None
    assert vzd.ldaps is not None
    with _ldap3_connection(vzd.ldaps, ca, auto_bind=True) as conn:
        assert conn.search(BASE, f"(mail={MEYER})", attributes=["userCertificate;binary", "cn"])
        (entry,) = conn.response
        certs = entry["raw_attributes"]["userCertificate;binary"]
        assert set(certs) == enc_certs_der(demo_dir, MEYER)
        assert entry["raw_attributes"]["cn"] == [b"Dr. Anna Meyer"]
        assert not conn.search(BASE, "(mail=nobody@fd1.kim.telematik-test)", attributes=["cn"])
        assert conn.result["result"] == 0
        assert conn.entries == []
        assert conn.search(BASE, "(&(mail=*)(!(mail=*fd2*)))", attributes=["mail"])
        assert {e["attributes"]["mail"][0] for e in conn.response} == {
            WEBER, "zahnarzt.klein@fd1.kim.telematik-test"}  # fmt: skip
        assert not conn.add("uid=x,dc=data,dc=vzd", ["top"], {"uid": "x"})
        assert conn.result["result"] == 53
        assert not conn.delete(f"uid=x,{BASE}")
        assert conn.result["result"] == 53
        with pytest.raises(LDAPException, match=r"(?i)filter"):
            conn.search(BASE, "(mail=praxis", attributes=["cn"])
    wrong = _ldap3_connection(vzd.ldap, user=ADMIN[0], password="falsch")
    assert not wrong.bind()
    assert wrong.result["result"] == 49
    wrong.unbind()
    with _ldap3_connection(vzd.ldap, user=ADMIN[0], password=ADMIN[1]) as conn:
        assert conn.bind()
        assert conn.search(BASE, f"(mail={WEBER})", attributes=["komLeData", "kimData"],
                           types_only=True)  # fmt: skip
        raw = conn.response[0]["raw_attributes"]
        assert set(raw) == {"komLeData", "kimData"}
        assert not any(raw.values())  # types only: names without values


async def test_ldap3_client_session(
    vzd: DirectoryAddresses, tls_files: tuple[Path, Path, Path], demo_dir: Path
) -> None:
    """The ldap3 client (LDAPS with the test CA, and plain): search, binary certificates, no
    match, write refused (53), malformed filter raises, bind failure (49), typesOnly."""
    await trio.to_thread.run_sync(_ldap3_session, vzd, tls_files[2], demo_dir)


async def test_malformed_bytes_get_a_notice_of_disconnection(vzd: DirectoryAddresses) -> None:
    assert vzd.ldap is not None
    stream = await trio.open_tcp_stream(*vzd.ldap)
    async with stream:
        await stream.send_all(b"\x30\x03\x02\x01\x01")
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(4096):
                data += chunk
    assert b"1.3.6.1.4.1.1466.20036" in data  # then the server closed the connection
