"""The VZD as large-directory code expects it: paged results (RFC 2696) with ``ldapsearch -E
'!pr=N'`` and ldap3's paged search, and StartTLS on the plain port (RFC 4511 §4.14) with
``ldapsearch -ZZ`` and ldap3 (digest §4.1). The same answers as without them otherwise."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import ldap3
import pytest
import trio
from directory_helpers import (
    ADMIN,
    BASE,
    ldapsearch,
    ldif_entries,
    needs_ldapsearch,
    tls_files_for,
    url,
)
from ldap3.extend.standard.PagedSearch import paged_search_generator

from kim_appliance.directory import DirectoryAddresses, DirectoryStore, serve_directory
from kim_appliance.directory.demo import entries_from_demo
from kim_appliance.directory.entries import DirectoryEntry, KimAddress
from kim_appliance.pki.tls import server_context
from kim_appliance.serving import ListenerLimits
from kim_appliance.store import Store

#: the synthetic entries of these tests: p0@ ... p{COUNT-1}@fd3.kim.telematik-test
COUNT = 37
FILTER = "(mail=p*@fd3.kim.telematik-test)"


@pytest.fixture(scope="module")
def tls_files(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return tls_files_for(demo_dir, tmp_path_factory.mktemp("vzd-paging-tls"))


@pytest.fixture
async def store(demo_dir: Path, kim_store: Store) -> DirectoryStore:
    """The demo entries and COUNT more, one address each."""
    s = await DirectoryStore.open(kim_store.directory)
    await s.populate(entries_from_demo(demo_dir))
    template = s.get("1-SMC-B-Testkarte-883110000100001")
    for i in range(COUNT):
        await s.put_entry(
            replace(
                template, uid=DirectoryEntry.new_uid(), telematik_id=f"9-test-{i}",
                fachdaten={"fd3.kim.telematik-test": (KimAddress(f"p{i}@fd3.kim.telematik-test"),)},
            )
        )  # fmt: skip
    return s


async def _serve(
    store: DirectoryStore,
    tls_files: tuple[Path, Path, Path],
    *,
    size_limit: int = 100,
    limits: ListenerLimits | None = None,
    task_status: trio.TaskStatus[DirectoryAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    chain, key, _ = tls_files
    await serve_directory(
        store, bind="127.0.0.1", ldap_port=0, ldaps_port=0,
        ssl_context=server_context(chain, key), users={ADMIN[0]: ADMIN[1]},
        size_limit=size_limit, limits=limits, task_status=task_status,
    )  # fmt: skip


@pytest.fixture
async def vzd(
    store: DirectoryStore, tls_files: tuple[Path, Path, Path]
) -> AsyncIterator[DirectoryAddresses]:
    async with trio.open_nursery() as nursery:
        yield await nursery.start(partial(_serve, store, tls_files))
        nursery.cancel_scope.cancel()


def _mails(text: str) -> list[str]:
    return [e["mail"][0].decode() for e in ldif_entries(text)]


@needs_ldapsearch
@pytest.mark.parametrize("critical", ["!", ""], ids=["critical", "not-critical"])
async def test_ldapsearch_pages_with_pr(vzd: DirectoryAddresses, critical: str) -> None:
    """RFC 2696 (digest §4.1): ``ldapsearch -E '!pr=10/noprompt'`` (critical, as python-ldap
    sends it) and ``-E pr=10`` get every entry once, in pages of at most 10; the same entries
    as the unpaged search."""
    code, unpaged, err = await ldapsearch(url(vzd.ldap), FILTER, "mail")
    assert code == 0, err
    code, paged, err = await ldapsearch(
        url(vzd.ldap), "-E", f"{critical}pr=10/noprompt", FILTER, "mail", ldif="-LL"
    )
    assert code == 0, err
    assert sorted(_mails(paged)) == sorted(_mails(unpaged))
    assert len(_mails(paged)) == COUNT
    # ldapsearch -LL prints one "# pagedresults" comment per page: 10, 10, 10, 7
    comments = [line for line in paged.splitlines() if line.startswith("# pagedresults:")]
    assert len(comments) == 4, comments
    assert comments[-1] == f"# pagedresults: estimate={COUNT} cookie="


def _ldap3_pages(address: tuple[str, int], size: int, *, criticality: bool) -> list[list[str]]:
    """Every page of a paged search, as ldap3 (with the control marked as asked) gets them."""
    server = ldap3.Server(address[0], port=address[1], get_info=ldap3.NONE)
    pages: list[list[str]] = []
    with ldap3.Connection(server, auto_bind=True) as conn:
        cookie: bytes | None = None
        while True:
            assert conn.search(
                BASE, FILTER, attributes=["mail"], paged_size=size,
                paged_criticality=criticality, paged_cookie=cookie,
            ) or conn.result["result"] == 0  # fmt: skip
            pages.append([str(e["attributes"]["mail"][0]) for e in conn.response])
            control = conn.result["controls"]["1.2.840.113556.1.4.319"]["value"]
            cookie = control["cookie"]
            assert control["size"] == COUNT  # the server's estimate of the result set
            if not cookie:
                return pages


async def test_ldap3_paged_search_critical_and_not(vzd: DirectoryAddresses) -> None:
    """RFC 2696 with ldap3: 37 entries in pages of 8 (8, 8, 8, 8, 5), each entry once, the
    estimate in every response, the last cookie empty; the same with the control critical."""
    assert vzd.ldap is not None
    for critical in (False, True):
        pages = await trio.to_thread.run_sync(
            partial(_ldap3_pages, vzd.ldap, 8, criticality=critical)
        )
        assert [len(p) for p in pages] == [8, 8, 8, 8, 5]
        mails = [m for p in pages for m in p]
        assert sorted(mails) == sorted(f"p{i}@fd3.kim.telematik-test" for i in range(COUNT))


def _cookie_misuse(address: tuple[str, int]) -> dict[str, object]:
    """A stale cookie, a cookie for another search, a cookie on another connection, and
    abandoning with size 0: what the server answers to each."""
    server = ldap3.Server(address[0], port=address[1], get_info=ldap3.NONE)
    seen: dict[str, object] = {}
    control = "1.2.840.113556.1.4.319"
    with (
        ldap3.Connection(server, auto_bind=True) as conn,
        ldap3.Connection(server, auto_bind=True) as other,
    ):
        conn.search(BASE, FILTER, attributes=["mail"], paged_size=5, paged_criticality=True)
        first = conn.result["controls"][control]["value"]["cookie"]
        conn.search(BASE, FILTER, attributes=["mail"], paged_size=5, paged_cookie=first)
        second = conn.result["controls"][control]["value"]["cookie"]
        seen["second page"] = len(conn.response)
        # the first cookie was used: it is stale now
        conn.search(BASE, FILTER, attributes=["mail"], paged_size=5, paged_cookie=first)
        seen["stale"] = (conn.result["result"], conn.result["message"])
        # the second cookie, but another filter: not the same search
        conn.search(BASE, "(mail=p1*)", attributes=["mail"], paged_size=5, paged_cookie=second)
        seen["other search"] = (conn.result["result"], conn.result["message"])
        # a mismatch ends the paged search (RFC 2696: the client starts again)
        conn.search(BASE, FILTER, attributes=["mail"], paged_size=5, paged_cookie=second)
        seen["after mismatch"] = conn.result["result"]
        # another connection cannot use this connection's cookie
        conn.search(BASE, FILTER, attributes=["mail"], paged_size=5)
        third = conn.result["controls"][control]["value"]["cookie"]
        other.search(BASE, FILTER, attributes=["mail"], paged_size=5, paged_cookie=third)
        seen["other connection"] = other.result["result"]
        # size 0 with the cookie abandons it: no entries, empty cookie, the cookie is gone
        conn.search(BASE, FILTER, attributes=["mail"], paged_size=0, paged_cookie=third)
        seen["abandon"] = (
            conn.result["result"],
            len(conn.response),
            conn.result["controls"][control]["value"]["cookie"],
        )
        conn.search(BASE, FILTER, attributes=["mail"], paged_size=5, paged_cookie=third)
        seen["after abandon"] = conn.result["result"]
    return seen


async def test_cookies_are_per_connection_single_use_and_per_search(
    vzd: DirectoryAddresses,
) -> None:
    """The cookie (docs/decisions.md): valid once, on its own connection, for the same search;
    otherwise unwillingToPerform (53) with a message that says why; size 0 abandons."""
    assert vzd.ldap is not None
    seen = await trio.to_thread.run_sync(_cookie_misuse, vzd.ldap)
    assert seen["second page"] == 5
    code, message = seen["stale"]  # type: ignore[misc]
    assert code == 53
    assert "used already" in message
    code, message = seen["other search"]  # type: ignore[misc]
    assert code == 53
    assert "another search" in message
    assert seen["after mismatch"] == 53
    assert seen["other connection"] == 53
    assert seen["abandon"] == (0, 0, b"")
    assert seen["after abandon"] == 53


@needs_ldapsearch
async def test_size_limit_counts_for_the_whole_paged_search(
    store: DirectoryStore, tls_files: tuple[Path, Path, Path]
) -> None:
    """TIP1-A_5552 with paging (OpenLDAP's size.prtotal default): with a size limit of 20, a
    paged search gets 20 entries in pages of 6 and ends with sizeLimitExceeded (4), like the
    unpaged one."""
    async with trio.open_nursery() as nursery:
        vzd = await nursery.start(partial(_serve, store, tls_files, size_limit=20))
        code, out, err = await ldapsearch(url(vzd.ldap), "-E", "!pr=6/noprompt", FILTER, "mail")
        assert code == 4, err
        assert "Size limit exceeded" in err
        assert len(_mails(out)) == 20
        assert len(set(_mails(out))) == 20
        nursery.cancel_scope.cancel()


def _pages_while_changing(address: tuple[str, int], store: DirectoryStore) -> list[str]:
    """Page 1, then an entry of the later pages is deleted: the later pages leave it out."""
    server = ldap3.Server(address[0], port=address[1], get_info=ldap3.NONE)
    with ldap3.Connection(server, auto_bind=True) as conn:
        results = paged_search_generator(
            conn, BASE, FILTER, attributes=["mail"], paged_size=10, paged_criticality=True
        )
        mails = [str(next(results)["attributes"]["mail"][0])]
        for _ in range(9):
            mails.append(str(next(results)["attributes"]["mail"][0]))
        later = [
            e for e in store.entries()
            if any(a.mail.endswith("@fd3.kim.telematik-test") for a in e.published_addresses())
            and e.published_addresses()[0].mail not in mails
        ]  # fmt: skip
        assert len(later) == COUNT - 10
        gone = later[0]
        trio.from_thread.run(store.remove_entry, gone.telematik_id)
        mails.extend(str(r["attributes"]["mail"][0]) for r in results)
        assert gone.published_addresses()[0].mail not in mails
        return mails


async def test_an_entry_deleted_between_pages_is_not_sent(
    vzd: DirectoryAddresses, store: DirectoryStore
) -> None:
    """Entries are read again when their page is sent: one deleted after the first page is
    left out; every other entry comes once."""
    assert vzd.ldap is not None
    mails = await trio.to_thread.run_sync(_pages_while_changing, vzd.ldap, store)
    assert len(mails) == COUNT - 1
    assert len(set(mails)) == COUNT - 1


# --- StartTLS on the plain port -----------------------------------------------------------------


@needs_ldapsearch
async def test_ldapsearch_starttls_on_the_plain_port(
    vzd: DirectoryAddresses, tls_files: tuple[Path, Path, Path]
) -> None:
    """RFC 4511 §4.14 (digest §4.1): ``ldapsearch -ZZ`` (StartTLS required) with the test CA
    on the plain port gets the same entry as LDAPS; with paging as well."""
    env = {"LDAPTLS_CACERT": str(tls_files[2])}
    code, out, err = await ldapsearch(
        url(vzd.ldap), "-ZZ", "-E", "!pr=2/noprompt", "(mail=*@fd1.kim.telematik-test)",
        "mail", env=env,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(_mails(out)) == [
        "praxis.weber@fd1.kim.telematik-test", "zahnarzt.klein@fd1.kim.telematik-test"]  # fmt: skip


@needs_ldapsearch
async def test_ldapsearch_starttls_with_an_unknown_ca_fails(vzd: DirectoryAddresses) -> None:
    """The client checks the VZD's certificate after StartTLS: without the test CA, ``-ZZ``
    refuses to go on (nothing is searched in plain text)."""
    code, out, err = await ldapsearch(
        url(vzd.ldap), "-ZZ", "(mail=*)", "mail", env={"LDAPTLS_CACERT": os.devnull}
    )
    assert code != 0
    assert out == ""
    assert "start_tls" in err, err


def _ldap3_start_tls(address: tuple[str, int], ca: Path) -> dict[str, object]:
    tls = ldap3.Tls(ca_certs_file=str(ca), validate=ssl.CERT_REQUIRED)
    server = ldap3.Server(address[0], port=address[1], tls=tls, get_info=ldap3.NONE)
    seen: dict[str, object] = {}
    with ldap3.Connection(server, user=ADMIN[0], password=ADMIN[1]) as conn:
        assert conn.start_tls()
        seen["tls"] = conn.tls_started
        assert conn.bind()
        assert conn.search(BASE, "(mail=dr.meyer@fd2.kim.telematik-test)", attributes=["cn"])
        seen["cn"] = conn.response[0]["raw_attributes"]["cn"]
        # a second StartTLS on the same connection: operationsError (RFC 4511 §4.14.1)
        # ldap3 itself never sends a second one: the request goes out as a plain extended op
        assert not conn.extended("1.3.6.1.4.1.1466.20037")
        seen["again"] = conn.result["result"]
        assert conn.search(BASE, "(mail=dr.meyer@fd2.kim.telematik-test)", attributes=["cn"])
    return seen


async def test_ldap3_starttls_bind_search_and_no_second_starttls(
    vzd: DirectoryAddresses, tls_files: tuple[Path, Path, Path]
) -> None:
    """ldap3 upgrades the plain connection, binds and searches inside TLS; a second StartTLS is
    refused with operationsError (1)."""
    assert vzd.ldap is not None
    seen = await trio.to_thread.run_sync(_ldap3_start_tls, vzd.ldap, tls_files[2])
    assert seen["tls"] is True
    assert seen["cn"] == [b"Dr. Anna Meyer"]
    assert seen["again"] == 1


async def test_starttls_on_ldaps_is_an_operations_error(
    vzd: DirectoryAddresses, tls_files: tuple[Path, Path, Path]
) -> None:
    """On the LDAPS port the connection is encrypted already: StartTLS is operationsError."""
    assert vzd.ldaps is not None

    def attempt() -> int:
        assert vzd.ldaps is not None
        tls = ldap3.Tls(ca_certs_file=str(tls_files[2]), validate=ssl.CERT_REQUIRED)
        host, port = vzd.ldaps
        server = ldap3.Server(host, port=port, use_ssl=True, tls=tls, get_info=ldap3.NONE)
        with ldap3.Connection(server, auto_bind=True) as conn:
            assert not conn.extended("1.3.6.1.4.1.1466.20037")
            return int(conn.result["result"])

    assert await trio.to_thread.run_sync(attempt) == 1


async def test_a_client_that_stalls_after_starttls_is_dropped_within_the_handshake_deadline(
    store: DirectoryStore, tls_files: tuple[Path, Path, Path]
) -> None:
    """The guard's promise, kept for the upgrade: a client that asks for StartTLS and then
    sends no ClientHello is disconnected after ``handshake_seconds``, not idle for 15 min."""
    limits = ListenerLimits(handshake_seconds=0.5, first_command_seconds=5)
    async with trio.open_nursery() as nursery:
        vzd = await nursery.start(partial(_serve, store, tls_files, limits=limits))
        stream = await trio.open_tcp_stream(*vzd.ldap)
        async with stream:
            # LDAPMessage 1: ExtendedRequest StartTLS
            oid = b"1.3.6.1.4.1.1466.20037"
            request = b"\x77" + bytes([len(oid) + 2]) + b"\x80" + bytes([len(oid)]) + oid
            message = b"\x02\x01\x01" + request
            await stream.send_all(b"\x30" + bytes([len(message)]) + message)
            response = await stream.receive_some(1024)
            assert response[0] == 0x30
            assert b"\x0a\x01\x00" in response  # resultCode success
            started = trio.current_time()
            with trio.fail_after(5):
                while await stream.receive_some(1024):
                    pass  # until the server closes
            assert trio.current_time() - started < 3
        nursery.cancel_scope.cancel()
