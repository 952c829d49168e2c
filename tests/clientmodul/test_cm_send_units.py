"""The send pipeline's parts without sockets: VZD lookup with its caches and certificate rules,
the header rewrite, the MIME scan for forwarded KIM messages and x-kas parts (digest §1.4)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kim_appliance.adapters import InProcessDirectory
from kim_appliance.clientmodul.send import (
    DEFAULT_DIENSTKENNUNG,
    Dropped,
    _HeaderThenBody,
    _rewrite_header,
    _scan_parts,
)
from kim_appliance.clientmodul.vzd_lookup import TTL_ENC_CERT, TTL_VERSION, VzdLookup
from kim_appliance.directory import DirectoryStore
from kim_appliance.directory.demo import entries_from_demo
from kim_appliance.mail.headers import parse_header_block
from kim_appliance.pki import TestPki
from kim_appliance.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _demo(data_dir: Path) -> dict[str, Any]:
    demo: dict[str, Any] = json.loads((data_dir / "demo.json").read_text())
    return demo


def _participant(data_dir: Path, local: str) -> dict[str, Any]:
    return next(p for p in _demo(data_dir)["participants"] if p["address"].startswith(local))


def _der(path: str) -> bytes:
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).public_bytes(Encoding.DER)


@pytest.fixture
def pki(kim_cm_template: Path) -> TestPki:
    return TestPki.load(kim_cm_template / "pki")


@pytest.fixture
async def directory(kim_cm_template: Path, kim_store: Store) -> DirectoryStore:
    """The demo's VZD entries in a store of this test's own: the tests change entries."""
    store = await DirectoryStore.open(kim_store.directory)
    await store.populate(entries_from_demo(kim_cm_template))
    return store


async def test_certificates_are_cached_for_ttl_enc_cert(
    directory: DirectoryStore, pki: TestPki
) -> None:
    """KOM-LE-A_2026: the VZD is asked again only after TTL_ENC_CERT (12 h)."""
    clock = Clock()
    lookup = VzdLookup(InProcessDirectory(directory), clock=clock)
    address = "praxis.weber@fd1.kim.telematik-test"
    assert lookup.lookup(address, pki.trust_store()).usable
    clock.now += TTL_ENC_CERT - 1
    assert lookup.lookup(address, pki.trust_store()).usable
    assert lookup.queries == 1
    clock.now += 2
    lookup.lookup(address, pki.trust_store())
    assert lookup.queries == 2


async def test_version_is_cached_at_most_24_hours(directory: DirectoryStore, pki: TestPki) -> None:
    """A_22340: a KIM version from the VZD is reused for at most 24 h."""
    clock = Clock()
    lookup = VzdLookup(InProcessDirectory(directory), ttl_enc_cert=10 * TTL_VERSION, clock=clock)
    address = "apotheke.sonne@fd2.kim.telematik-test"
    before = lookup.version(address)
    after = "1.0" if before != "1.0" else "1.5+"
    entry = directory.find_by_mail(address)
    assert entry is not None
    fad, addresses = next(iter(entry.fachdaten.items()))
    await directory.put_entry(
        replace(entry, fachdaten={fad: tuple(replace(a, version=after) for a in addresses)})
    )
    clock.now += TTL_VERSION - 1
    assert lookup.version(address) == before  # still the cached one
    clock.now += 2
    assert lookup.version(address) == after


async def test_cached_version_never_asks_the_directory(directory: DirectoryStore) -> None:
    """A_22340 with issue 13: the event loop's version read answers from the cache only (None
    before a lookup and once the 24 h are over), never with a directory query of its own."""
    clock = Clock()
    lookup = VzdLookup(InProcessDirectory(directory), clock=clock)
    address = "apotheke.sonne@fd2.kim.telematik-test"
    assert lookup.cached_version(address) is None
    assert lookup.queries == 0
    version = lookup.version(address)
    assert lookup.cached_version(address.upper()) == version
    clock.now += TTL_VERSION + 1
    assert lookup.cached_version(address) is None
    assert lookup.queries == 1


async def test_unknown_address_is_not_encryptable(directory: DirectoryStore, pki: TestPki) -> None:
    """KOM-LE-A_2023/2024-01: an address the VZD does not know gets code 4004."""
    found = VzdLookup(InProcessDirectory(directory)).lookup(
        "niemand@fd1.kim.telematik-test", pki.trust_store()
    )
    assert not found.usable
    assert found.code == "4004"
    assert "not in the directory" in found.reason


async def test_only_enc_certificates_are_used(
    directory: DirectoryStore,
    pki: TestPki,
    kim_cm_template: Path,
) -> None:
    """KOM-LE-A_2128: only C.HCI.ENC / C.HP.ENC; an OSIG certificate in the entry is left
    out and the reason names the rule."""
    address = "praxis.weber@fd1.kim.telematik-test"
    entry = directory.find_by_mail(address)
    assert entry is not None
    osig = _der(_participant(kim_cm_template, "praxis.weber")["export"]["osig_cert"][0])
    await directory.put_entry(replace(entry, certificates=(osig,)))
    found = VzdLookup(InProcessDirectory(directory)).lookup(address, pki.trust_store())
    assert not found.usable
    assert found.code == "4004"
    assert "KOM-LE-A_2128" in found.reason


async def test_certificates_of_two_telematik_ids_are_not_used(
    directory: DirectoryStore,
    pki: TestPki,
    kim_cm_template: Path,
) -> None:
    """KOM-LE-A_2178: certificates carrying different Telematik-IDs -> not sent to, 4005."""
    address = "praxis.weber@fd1.kim.telematik-test"
    entry = directory.find_by_mail(address)
    assert entry is not None
    other = _der(_participant(kim_cm_template, "apotheke.sonne")["export"]["enc_cert"][0])
    await directory.put_entry(replace(entry, certificates=(*entry.certificates, other)))
    found = VzdLookup(InProcessDirectory(directory)).lookup(address, pki.trust_store())
    assert not found.usable
    assert found.code == "4005"
    assert "KOM-LE-A_2178" in found.reason


async def test_revoked_certificate_is_not_used(
    directory: DirectoryStore,
    pki: TestPki,
    kim_cm_template: Path,
) -> None:
    """Cached certificates are checked at each use: a revocation takes effect at once, the
    recipient has then no valid encryption certificate (4004). When no cached certificate
    passes, the VZD is asked again at once (it may hold a renewed one, `card renew`), not only
    after TTL_ENC_CERT (KOM-LE-A_2026)."""
    lookup = VzdLookup(InProcessDirectory(directory))
    address = "praxis.weber@fd1.kim.telematik-test"
    assert lookup.lookup(address, pki.trust_store()).usable
    path = _participant(kim_cm_template, "praxis.weber")["export"]["enc_cert"][0]
    pki.revoke(x509.load_pem_x509_certificate(Path(path).read_bytes()))
    found = lookup.lookup(address, pki.trust_store())
    assert not found.usable
    assert "revoked" in found.reason
    assert lookup.queries == 2  # the cached entry, then once more: nothing renewed there


def test_rewrite_drops_recipients_from_to_and_cc_and_keeps_the_rest() -> None:
    """KOM-LE-A_2028: dropped recipients leave To/Cc; untouched fields keep their bytes; the
    default Dienstkennung is added (A_19488-02); From becomes the account (§1.4 step 3)."""
    header = parse_header_block(
        b"From: Praxis <praxis.weber@fd1.kim.telematik-test>\r\n"
        b"To: a@fd1.kim.telematik-test,\r\n b@fd2.kim.telematik-test\r\n"
        b"Cc: Niemand <niemand@fd1.kim.telematik-test>\r\n"
        b"Subject: =?utf-8?q?Befund_f=C3=BCr_Sie?=\r\n"
    )
    dropped = [Dropped("niemand@fd1.kim.telematik-test", "4004", "unknown")]
    dropped.append(Dropped("B@fd2.kim.telematik-test", "4005", "two ids"))
    new, _ = _rewrite_header(header, "praxis.weber@fd1.kim.telematik-test", dropped)
    assert new.get("To") == "a@fd1.kim.telematik-test"
    assert new.get("Cc") is None
    assert new.find("From") == header.find("From")
    assert new.find("Subject") == header.find("Subject")
    assert new.get("X-KIM-Dienstkennung") == DEFAULT_DIENSTKENNUNG


def test_rewrite_replaces_a_foreign_from() -> None:
    header = parse_header_block(b"From: Dr. W <weber@example.org>\r\nTo: a@b.kim.telematik\r\n")
    new, warnings = _rewrite_header(header, "praxis.weber@fd1.kim.telematik-test", [])
    assert new.get("From") == '"Dr. W" <praxis.weber@fd1.kim.telematik-test>'
    assert any("rewritten" in w for w in warnings)


def test_header_then_body_reads_and_seeks() -> None:
    body = io.BytesIO(b"OLD-HEADER\r\n\r\nline 1\r\nline 2\r\n")
    view = _HeaderThenBody(b"New: 1\r\n\r\n", body, 14)
    reader = io.BufferedReader(view)
    assert reader.read() == b"New: 1\r\n\r\nline 1\r\nline 2\r\n"
    reader.seek(0)
    assert reader.read(3) == b"New"
    assert view.size == len(b"New: 1\r\n\r\nline 1\r\nline 2\r\n")


def _multipart(*parts: bytes) -> bytes:
    out = b"".join(b"--XYZ\r\n" + p + b"\r\n" for p in parts)
    return out + b"--XYZ--\r\n"


def test_scan_finds_a_forwarded_kim_message() -> None:
    """KOM-LE-A_2029: the span of a message/rfc822 part holding a KIM message, exactly."""
    kim = b"From: x@y.kim.telematik\r\nX-KOM-LE-Version: 1.0\r\n\r\nQUJD\r\nREVG"
    body = _multipart(
        b"Content-Type: text/plain\r\n\r\nsee attached",
        b"Content-Type: message/rfc822\r\n\r\n" + kim,
    )
    spool = io.BytesIO(body)
    scan = _scan_parts(spool, 0, "XYZ")
    assert scan.forwarded is not None
    start, end = scan.forwarded
    assert body[start:end] == kim
    assert not scan.x_kas


def test_scan_ignores_a_plain_attached_mail_and_sees_x_kas() -> None:
    """A message/rfc822 part without X-KOM-LE-Version is just an attachment; a part with
    Content-Disposition x-kas is found (A_22341)."""
    body = _multipart(
        b"Content-Type: message/rfc822\r\n\r\nFrom: a@b\r\n\r\nhello",
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Disposition: x-kas\r\n\r\n{}",
    )
    scan = _scan_parts(io.BytesIO(body), 0, "XYZ")
    assert scan.forwarded is None
    assert scan.x_kas


def _forward_with_attachment(filler: bytes) -> tuple[bytes, bytes]:
    """A client mail body: a text part with ``filler``, a forwarded KIM message (whose body
    holds the boundary string, but not at a line start), then an x-kas part."""
    kim = b"From: x@y.kim.telematik\r\nX-KOM-LE-Version: 1.0\r\n\r\nQUJD --XYZ\r\n\r\nREVG"
    body = _multipart(
        b"Content-Type: text/plain\r\n\r\n" + filler,
        b"Content-Type: message/rfc822\r\n\r\n" + kim,
        b"Content-Type: text/plain\r\nContent-Disposition: x-kas\r\n\r\n{}",
    )
    return body, kim


@pytest.mark.parametrize("read_size", [1, 5, 7, 16, 64])
def test_scan_finds_delimiters_split_across_reads(
    read_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KOM-LE-A_2029, A_22341: the delimiter search reads in chunks; a delimiter line cut by a
    chunk edge anywhere is still found, and the forwarded span is exact."""
    import kim_appliance.clientmodul.send as send_module

    monkeypatch.setattr(send_module, "READ_SIZE", read_size)
    for filler_size in range(40):
        body, kim = _forward_with_attachment(b"A" * filler_size)
        scan = _scan_parts(io.BytesIO(body), 0, "XYZ")
        assert scan.forwarded is not None, (read_size, filler_size)
        start, end = scan.forwarded
        assert body[start:end] == kim, (read_size, filler_size)
        assert scan.x_kas, (read_size, filler_size)


@pytest.mark.parametrize("shift", [-7, -6, -3, -1, 0, 1, 2])
def test_scan_finds_a_delimiter_across_the_1_mib_read_edge(shift: int) -> None:
    """KOM-LE-A_2029: a 1 MiB attachment puts the next delimiter line across the edge of the
    first 1 MiB read (``shift`` bytes from it); the forwarded message behind it is found."""
    from kim_appliance.clientmodul.send import READ_SIZE

    head = b"--XYZ\r\nContent-Type: text/plain\r\n\r\n"
    filler_size = READ_SIZE + shift - len(head) - 2  # the CRLF before the delimiter
    line = b"QUJD" * 19 + b"\r\n"
    filler = (line * (filler_size // len(line) + 1))[:filler_size]
    body, kim = _forward_with_attachment(filler)
    assert body.index(b"\r\n--XYZ\r\nContent-Type: message") + 2 == READ_SIZE + shift
    scan = _scan_parts(io.BytesIO(body), 0, "XYZ")
    assert scan.forwarded is not None
    start, end = scan.forwarded
    assert body[start:end] == kim
    assert scan.x_kas


def test_scan_body_offset_and_line_ends() -> None:
    """The scan starts at the body offset; LF-only line ends are line ends too, and the line
    end before a delimiter (CR CR LF here) is not part of the forwarded message."""
    kim = b"From: x@y\nX-KOM-LE-Version: 1.0\n\nQUJD"
    body = (
        b"Subject: --XYZ\r\n\r\n--XYZ\nContent-Type: message/rfc822\n\n" + kim + b"\r\r\n--XYZ--\n"
    )
    offset = body.index(b"\r\n\r\n") + 4
    scan = _scan_parts(io.BytesIO(body), offset, "XYZ")
    assert scan.forwarded is not None
    start, end = scan.forwarded
    assert body[start:end] == kim
    assert not scan.x_kas


def test_version_headers_and_expires_have_the_formats_of_the_spec() -> None:
    """A_21388-01: the X-KIM-CMVersion, X-KIM-PTVersion and X-KIM-KONVersion the Clientmodul
    writes match the formats of the requirement (VendorID_maj.min.patch[-build], the product
    type version, the Konnektor's versions in angle brackets); A_22417: Expires is the send
    time plus dataTimeToLive days, as an RFC 5322 date."""
    import datetime as dt
    import email.utils
    import re

    from kim_appliance.clientmodul.context import ClientmodulContext
    from kim_appliance.clientmodul.send import _expires

    build = r"(-25[0-5]|-2[0-4][0-9]|-[0-1]?[0-9]?[0-9]){0,1}"
    version = r"[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2}"
    assert re.fullmatch(rf"[a-zA-Z0-9_]{{1,5}}_{version}{build}", ClientmodulContext.cm_version)
    assert re.fullmatch(rf"{version}{build}", ClientmodulContext.pt_version)
    assert re.fullmatch(r"(<[^<>\r\n]+>){5,6}", ClientmodulContext.kon_version)
    sent = dt.datetime(2022, 9, 9, 15, 48, 35, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    expires = _expires(sent, ClientmodulContext.data_ttl_days)
    assert expires == "Thu, 08 Dec 2022 15:48:35 +0200"  # the digest's example: 90 days
    assert email.utils.parsedate_to_datetime(expires) - sent == dt.timedelta(days=90)
