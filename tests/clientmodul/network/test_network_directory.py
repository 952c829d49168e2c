"""The Clientmodul's LDAP directory adapter against this appliance's VZD (real sockets, LDAPS and
StartTLS with the test PKI): the same records as the in-process adapter, one paged search per
message's addresses, and clear errors when the VZD cannot be used (digest §4.1)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import trio
from network_support import Vzd

from kim_appliance.clientmodul.network.directory import ADDRESSES_PER_SEARCH
from kim_appliance.clientmodul.ports import DirectoryUnreachable
from kim_appliance.directory.entries import DirectoryEntry, KimAddress

WEBER = "praxis.weber@fd1.kim.telematik-test"
MEYER = "dr.meyer@fd2.kim.telematik-test"


def demo_addresses(vzd: Vzd) -> list[str]:
    return [a.mail for e in vzd.store.entries() for a in e.published_addresses()]


@pytest.mark.parametrize("scheme", ["ldaps", "ldap"], ids=["ldaps", "starttls"])
async def test_records_are_the_in_process_ones(vzd: Vzd, scheme: str) -> None:
    """KOM-LE-A_2023: (mail=...) over LDAPS and over plain LDAP upgraded with StartTLS gives,
    for every demo
    address, the Telematik-ID, the certificates (DER, RSA and ECC) and the KIM version the
    in-process adapter gives; all addresses of a message in one search."""
    addresses = demo_addresses(vzd)
    client = vzd.client(scheme)
    found = await trio.to_thread.run_sync(client.find_by_mail, addresses)
    expected = vzd.local.find_by_mail(addresses)
    assert set(found) == {a.casefold() for a in addresses}
    for key, record in expected.items():
        got = found[key]
        assert (got.telematik_id, set(got.certificates), got.version) == (
            record.telematik_id, set(record.certificates), record.version,
        )  # fmt: skip
    assert client.searches == 1
    client.close()


async def test_unknown_and_differently_written_addresses(vzd: Vzd) -> None:
    """An address the VZD does not publish is missing from the answer; the comparison is
    case-insensitive (digest §2.10), the key is the case-folded address."""
    client = vzd.client()
    found = await trio.to_thread.run_sync(
        client.find_by_mail, [WEBER.upper(), "niemand@fd1.kim.telematik-test"]
    )
    assert list(found) == [WEBER]
    client.close()


async def test_many_addresses_go_in_paged_searches(vzd: Vzd) -> None:
    """RFC 2696 with the VZD's size limit (TIP1-A_5552): 60 addresses are asked in searches of
    at most 50 addresses, each read in pages of 25 (the control critical, as python-ldap
    sends it); every address is found once."""
    template = vzd.store.find_by_mail(WEBER)
    assert template is not None
    wanted = [f"p{i}@fd3.kim.telematik-test" for i in range(60)]
    for i, address in enumerate(wanted):
        await vzd.store.put_entry(
            replace(template, uid=DirectoryEntry.new_uid(), telematik_id=f"9-test-{i}",
                    fachdaten={"fd3.kim.telematik-test": (KimAddress(address, "1.5+"),)})
        )  # fmt: skip
    client = vzd.client(page_size=25)
    found = await trio.to_thread.run_sync(client.find_by_mail, wanted)
    assert sorted(found) == sorted(wanted)
    assert {r.version for r in found.values()} == {"1.5+"}
    # the first 50 addresses in two pages of 25 (the second ends the paged search with an empty
    # cookie), the other 10 in one
    assert ADDRESSES_PER_SEARCH == 50
    assert client.searches == 3
    client.close()


async def test_the_version_of_each_address_of_an_entry(vzd: Vzd) -> None:
    """Digest §4.1: kimData ``mail,version`` per address; an entry with two addresses of two
    versions gives each its own; an address without Fachdaten version is 1.0."""
    entry = vzd.store.find_by_mail(WEBER)
    assert entry is not None
    fad = next(iter(entry.fachdaten))
    await vzd.store.put_entry(
        replace(entry, fachdaten={fad: (KimAddress(WEBER, "1.5+"),
                                        KimAddress("praxis.weber2@fd1.kim.telematik-test"))})
    )  # fmt: skip
    client = vzd.client()
    found = await trio.to_thread.run_sync(
        client.find_by_mail, [WEBER, "praxis.weber2@fd1.kim.telematik-test"]
    )
    assert found[WEBER].version == "1.5+"
    assert found["praxis.weber2@fd1.kim.telematik-test"].version == "1.0"
    client.close()


async def test_a_kept_connection_closed_under_the_client_is_reopened(vzd: Vzd) -> None:
    """The VZD closes idle connections (15 min, digest §4.1): the kept connection is dead, the
    next lookup opens a new one and succeeds."""
    client = vzd.client()
    assert await trio.to_thread.run_sync(client.find_by_mail, [WEBER])
    assert client.connections_opened == 1
    for connection in client._idle:
        connection.socket.close()  # as the server's close leaves it: unusable
    assert await trio.to_thread.run_sync(client.find_by_mail, [MEYER])
    assert client.connections_opened == 2
    client.close()


async def test_an_unreachable_or_untrusted_vzd_says_so(vzd: Vzd, data_dir: Path) -> None:
    """KOM-LE-A_2075: no VZD on the port, or a certificate from a CA not configured:
    DirectoryUnreachable that
    names the URL (the Clientmodul answers 451 4.4.3, the PVS tries again later)."""
    from kim_appliance.clientmodul.network import LdapDirectory, LdapSettings

    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nobody = LdapDirectory(LdapSettings(f"ldaps://127.0.0.1:{port}", vzd.ca, timeout=5))
    with pytest.raises(DirectoryUnreachable, match=f"VZD not reachable.*127.0.0.1:{port}"):
        await trio.to_thread.run_sync(nobody.find_by_mail, [WEBER])
    wrong_ca = data_dir / "wrong-ca.pem"
    wrong_ca.write_bytes(next((data_dir / "cards").rglob("enc-rsa.cert.pem")).read_bytes())
    assert vzd.addresses.ldaps is not None
    host, ldaps = vzd.addresses.ldaps
    untrusted = LdapDirectory(LdapSettings(f"ldaps://{host}:{ldaps}", wrong_ca, timeout=5))
    with pytest.raises(DirectoryUnreachable, match="VZD not reachable"):
        await trio.to_thread.run_sync(partial(untrusted.find_by_mail, [WEBER]))


def test_settings_refuse_other_urls(tmp_path: Path) -> None:
    from kim_appliance.clientmodul.network import LdapSettings

    with pytest.raises(ValueError, match="ldaps://HOST:PORT"):
        LdapSettings("http://vzd:636", tmp_path / "ca.pem")
