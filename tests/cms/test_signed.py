"""Tests of the KIM SignedData writer and reader (digest §2.5, §2.8).

Oracles: gematik's sample ``inputEmail.txt.02.signedcms``, ``openssl cms``, and a small
independent verifier below built from asn1crypto and cryptography only (it imports nothing of
the code under test).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import subprocess
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asn1crypto.cms
import asn1crypto.core
import asn1crypto.parser
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from kim_appliance.cms.errors import CmsError, CmsFormatError, SignatureError
from kim_appliance.cms.oids import (
    ID_CMS_ALGORITHM_PROTECTION,
    ID_CONTENT_TYPE,
    ID_MESSAGE_DIGEST,
    ID_RECIPIENT_EMAILS,
    ID_SIGNING_CERTIFICATE_V2,
    ID_SIGNING_TIME,
    RFC822_CONTENT_PREFIX,
)
from kim_appliance.cms.recipient_emails import RecipientEmail, encode_recipient_emails
from kim_appliance.cms.signed import (
    SIG_ECDSA_SHA256,
    SIG_RSASSA_PSS,
    SignatureReport,
    SignedDataReader,
    SignedDataWriter,
    read_signed_data,
)

if TYPE_CHECKING:
    from tests.conftest import Party

INNER_MAIL = (
    b"MIME-Version: 1.0\r\nFrom: <praxis.rsa@test1.kim.telematik-test>\r\n"
    b"To: <praxis.ecc@test1.kim.telematik-test>\r\nSubject: Befund\r\n"
    b"Message-ID: <0b1c4e5e-8d3e-4a0e-9f57-4f1c0f1b2a3c>\r\n"
    b"X-KIM-Dienstkennung: KIM-Mail;Default;V1.0\r\n\r\n" + b"Hallo,\r\nanbei der Befund.\r\n" * 40
)
CONTENT = RFC822_CONTENT_PREFIX + INNER_MAIL
SIGNING_TIME = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
SIGNED_DATA_OID = bytes(asn1crypto.core.ObjectIdentifier("1.2.840.113549.1.7.2").dump())
ATTR = "SignedData.signerInfos[0].signedAttrs"


# --- helpers -----------------------------------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _emails(*parties: Party) -> bytes:
    return encode_recipient_emails(
        [RecipientEmail.for_certificate(p.address, p.key.certificate) for p in parties]
    )


def _sign(signer: Party, content: bytes, emails: bytes) -> bytes:
    writer = SignedDataWriter(
        signer.key,
        content_length=len(content),
        content_digest=hashlib.sha256(content).digest(),
        recipient_emails=emails,
        signing_time=SIGNING_TIME,
    )
    der = writer.prefix() + content + writer.suffix()
    assert len(der) == writer.total_length
    return der


def _read(data: bytes, chunk: int | None = None) -> tuple[bytes, SignatureReport]:
    parts: list[bytes] = []
    reader = SignedDataReader(parts.append)
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        reader.feed(data[i : i + step])
    reader.feed_eof()
    report = reader.verify()
    return b"".join(parts), report


def _flip(data: bytes, index: int) -> bytes:
    flipped = bytearray(data)
    flipped[index] ^= 0x01
    return bytes(flipped)


def oracle_verify(der: bytes) -> bytes:
    """Independent verifier: asn1crypto parse + cryptography primitives; returns eContent."""
    info = asn1crypto.cms.ContentInfo.load(der, strict=True)
    assert info["content_type"].native == "signed_data"
    signed_data = info["content"]
    content = signed_data["encap_content_info"]["content"].native
    certificate = x509.load_der_x509_certificate(signed_data["certificates"][0].chosen.dump())
    signer_info = signed_data["signer_infos"][0]
    attrs = signer_info["signed_attrs"]
    digests = [a["values"][0].native for a in attrs if a["type"].dotted == ID_MESSAGE_DIGEST]
    assert digests == [hashlib.sha256(content).digest()]
    to_be_signed = b"\x31" + attrs.dump()[1:]
    signature = signer_info["signature"].native
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        assert signer_info["signature_algorithm"]["algorithm"].native == "rsassa_pss"
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        key.verify(signature, to_be_signed, pss, hashes.SHA256())
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert signer_info["signature_algorithm"]["algorithm"].dotted == "1.2.840.10045.4.3.2"
        key.verify(signature, to_be_signed, ec.ECDSA(hashes.SHA256()))
    return bytes(content)


@pytest.fixture(params=["rsa", "ecc"])
def signed(
    request: pytest.FixtureRequest, rsa_recipient: Party, ecc_recipient: Party
) -> tuple[Party, bytes, bytes]:
    """(signer, DER SignedData of CONTENT, the recipient-emails attribute)"""
    signer: Party = request.getfixturevalue(f"{request.param}_signer")
    emails = _emails(rsa_recipient, ecc_recipient)
    return signer, _sign(signer, CONTENT, emails), emails


def _parts(der: bytes) -> dict[str, bytes]:
    signed_data = asn1crypto.cms.ContentInfo.load(der)["content"]
    return {
        "version": signed_data["version"].dump(),
        "digest_algorithms": signed_data["digest_algorithms"].dump(),
        "encap": signed_data["encap_content_info"].dump(),
        "certificates": signed_data["certificates"].dump(),
        "crls": b"",
        "signer_infos": signed_data["signer_infos"].dump(),
    }


def _assemble(parts: dict[str, bytes]) -> bytes:
    body = b"".join(
        parts[k]
        for k in ("version", "digest_algorithms", "encap", "certificates", "crls", "signer_infos")
    )
    return _tlv(0x30, SIGNED_DATA_OID + _tlv(0xA0, _tlv(0x30, body)))


def _signer_info_fields(der: bytes) -> list[bytes]:
    signer_info = asn1crypto.cms.ContentInfo.load(der)["content"]["signer_infos"][0]
    contents = signer_info.contents
    fields = []
    pos = 0
    while pos < len(contents):
        n = asn1crypto.parser.peek(contents[pos:])
        fields.append(contents[pos : pos + n])
        pos += n
    return fields


# --- gematik's sample --------------------------------------------------------------------------


def test_gematik_sample_verifies_and_yields_the_rfc822_wrap(gematik_sample: Path) -> None:
    """digest §2.5, KOM-LE-A_2103/A_2121: .02's eContent is .01 (prefix + inner mail)."""
    wrap = (gematik_sample / "inputEmail.txt.01.rfc822wrap").read_bytes()
    assert wrap.startswith(RFC822_CONTENT_PREFIX)
    data = (gematik_sample / "inputEmail.txt.02.signedcms").read_bytes()
    content, report = read_signed_data(data)
    assert content == wrap
    assert report.signature_algorithm == SIG_RSASSA_PSS
    assert report.digest_algorithm == "sha256"
    assert report.signing_time == dt.datetime(2020, 12, 14, 7, 17, 5, tzinfo=dt.UTC)
    assert report.content_digest == hashlib.sha256(wrap).digest()
    assert "Asclepios" in report.signer_certificate.subject.rfc4514_string()
    # KOM-LE-A_2127: the signed recipient-emails equals the unprotected one in .04
    enveloped = asn1crypto.cms.ContentInfo.load(
        (gematik_sample / "inputEmail.txt.04.encryptedcms").read_bytes()
    )
    assert report.recipient_emails == enveloped["content"]["unauth_attrs"][0].dump()


def test_gematik_sample_with_time_check(gematik_sample: Path) -> None:
    """The signer certificate was valid when signed (2020) and has expired since (2023)."""
    data = (gematik_sample / "inputEmail.txt.02.signedcms").read_bytes()
    reader = SignedDataReader(lambda _: None)
    reader.feed(data)
    reader.feed_eof()
    reader.verify(at=dt.datetime(2020, 12, 14, 8, 0, tzinfo=dt.UTC))
    with pytest.raises(SignatureError) as info:
        reader.verify(at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    assert info.value.field == "SignedData.certificates[0]"
    assert "not valid" in info.value.reason


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_gematik_sample_chunked(gematik_sample: Path, chunk: int) -> None:
    data = (gematik_sample / "inputEmail.txt.02.signedcms").read_bytes()
    assert _read(data, chunk) == _read(data)


def test_gematik_sample_flipped_content_is_refused(gematik_sample: Path) -> None:
    data = (gematik_sample / "inputEmail.txt.02.signedcms").read_bytes()
    with pytest.raises(SignatureError) as info:
        read_signed_data(_flip(data, data.index(b"Saying Hello")))
    assert info.value.field == "SignedData.encapContentInfo.eContent"


# --- our writer, our reader, the oracles -------------------------------------------------------


def test_writer_output_verifies_with_our_reader(signed: tuple[Party, bytes, bytes]) -> None:
    """KOM-LE-A_2103/A_2121: the content is included; the report shows what was signed."""
    signer, der, emails = signed
    content, report = read_signed_data(der)
    assert content == CONTENT
    assert report.signer_certificate == signer.key.certificate
    assert report.recipient_emails == emails
    assert report.signing_time == SIGNING_TIME
    assert report.content_digest == hashlib.sha256(CONTENT).digest()
    expected = SIG_RSASSA_PSS if "rsa" in signer.address else SIG_ECDSA_SHA256
    assert report.signature_algorithm == expected


def test_writer_output_verifies_with_the_independent_oracle(
    signed: tuple[Party, bytes, bytes],
) -> None:
    _, der, _ = signed
    assert oracle_verify(der) == CONTENT


def test_writer_output_is_der(signed: tuple[Party, bytes, bytes]) -> None:
    """Definite lengths everywhere, primitive eContent; asn1crypto strict DER parse agrees."""
    _, der, _ = signed
    info = asn1crypto.cms.ContentInfo.load(der, strict=True)
    assert info.dump(force=True) == der  # re-encoding as DER changes nothing
    encap = info["content"]["encap_content_info"]
    assert encap["content"].method == 0  # primitive OCTET STRING, as in the sample


def _openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)


@pytest.mark.openssl
def test_openssl_verifies_and_outputs_the_content(
    signed: tuple[Party, bytes, bytes], tmp_path: Path
) -> None:
    """`openssl cms -verify` accepts our SignedData (digest §2.5), without and with the CA."""
    signer, der, _ = signed
    path = tmp_path / "signed.der"
    path.write_bytes(der)
    out = _openssl("cms", "-verify", "-binary", "-noverify", "-inform", "DER", "-in", str(path))
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == CONTENT
    ca = tmp_path / "ca.pem"
    ca.write_bytes(signer.ca_certificate.public_bytes(serialization.Encoding.PEM))
    args = ["cms", "-verify", "-binary", "-inform", "DER", "-in", str(path), "-CAfile", str(ca)]
    out = _openssl(*args, "-purpose", "any")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == CONTENT


@pytest.mark.openssl
def test_openssl_refuses_a_flipped_content(
    signed: tuple[Party, bytes, bytes], tmp_path: Path
) -> None:
    _, der, _ = signed
    path = tmp_path / "signed.der"
    path.write_bytes(_flip(der, der.index(b"Befund")))
    out = _openssl("cms", "-verify", "-binary", "-noverify", "-inform", "DER", "-in", str(path))
    assert out.returncode != 0


@pytest.mark.openssl
def test_openssl_print_shows_the_attributes(rsa_signer: Party, rsa_recipient: Party) -> None:
    der = _sign(rsa_signer, CONTENT, _emails(rsa_recipient))
    out = _openssl("cms", "-cmsout", "-print", "-inform", "DER", stdin=der)
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    for oid in (
        ID_CONTENT_TYPE,
        ID_SIGNING_TIME,
        ID_MESSAGE_DIGEST,
        ID_CMS_ALGORITHM_PROTECTION,
        ID_SIGNING_CERTIFICATE_V2,
        ID_RECIPIENT_EMAILS,
    ):
        assert f"({oid})" in text
    assert "rsassaPss (1.2.840.113549.1.1.10)" in text
    assert "crls:\n      <ABSENT>" in text
    assert "unsignedAttrs:\n          <ABSENT>" in text


# --- structure equals gematik's sample ---------------------------------------------------------


def _shape(der: bytes, depth: int) -> Any:
    """The tag tree of an encoding down to ``depth`` levels, ignoring all values."""
    class_, method, tag, _, contents, _ = asn1crypto.parser.parse(der)
    if method == 0 or depth == 0:
        return (class_, method, tag)
    children = []
    pos = 0
    while pos < len(contents):
        n = asn1crypto.parser.peek(contents[pos:])
        children.append(_shape(contents[pos : pos + n], depth - 1))
        pos += n
    return (class_, method, tag, children)


def _attributes(der: bytes) -> dict[str, bytes]:
    signer_info = asn1crypto.cms.ContentInfo.load(der)["content"]["signer_infos"][0]
    return {a["type"].dotted: a.dump() for a in signer_info["signed_attrs"]}


def test_structure_equals_the_gematik_sample(
    gematik_sample: Path, rsa_signer: Party, rsa_recipient: Party, other_rsa_recipient: Party
) -> None:
    """digest §2.5: same layout, attribute order and algorithm parameter bytes as SAMPLE (the
    sid an IssuerAndSerialNumber, KOM-LE-A_2124)."""
    sample = (gematik_sample / "inputEmail.txt.02.signedcms").read_bytes()
    ours = _sign(rsa_signer, CONTENT, _emails(rsa_recipient, other_rsa_recipient))
    # ContentInfo, SignedData and encapContentInfo layout (certificate contents aside)
    assert _shape(ours, 4) == _shape(sample, 4)
    sample_parts, our_parts = _parts(sample), _parts(ours)
    for key in ("version", "digest_algorithms"):
        assert our_parts[key] == sample_parts[key]
    # SignerInfo: version, sid, digestAlgorithm, [0] signedAttrs, signatureAlgorithm, signature
    sample_fields, our_fields = _signer_info_fields(sample), _signer_info_fields(ours)
    assert [f[0] for f in our_fields] == [f[0] for f in sample_fields]
    assert our_fields[0] == sample_fields[0]  # version 1
    assert our_fields[2] == sample_fields[2]  # sha256 with NULL
    assert our_fields[4] == sample_fields[4]  # rsassaPss parameter bytes exactly
    assert len(our_fields[5]) == len(sample_fields[5])  # RSA-2048 signature
    # signed attributes: same OIDs in the same order, same shapes, same constant values
    sample_attrs, our_attrs = _attributes(sample), _attributes(ours)
    assert list(our_attrs) == list(sample_attrs)
    assert list(our_attrs) == [
        ID_CONTENT_TYPE,
        ID_SIGNING_TIME,
        ID_MESSAGE_DIGEST,
        ID_CMS_ALGORITHM_PROTECTION,
        ID_SIGNING_CERTIFICATE_V2,
        ID_RECIPIENT_EMAILS,
    ]
    assert our_attrs[ID_CONTENT_TYPE] == sample_attrs[ID_CONTENT_TYPE]
    assert our_attrs[ID_CMS_ALGORITHM_PROTECTION] == sample_attrs[ID_CMS_ALGORITHM_PROTECTION]
    for oid in (ID_SIGNING_TIME, ID_MESSAGE_DIGEST):
        assert _shape(our_attrs[oid], 9) == _shape(sample_attrs[oid], 9)
    # signingCertificateV2 down to the issuer's [4] directoryName (hashAlgorithm omitted)
    assert _shape(our_attrs[ID_SIGNING_CERTIFICATE_V2], 8) == _shape(
        sample_attrs[ID_SIGNING_CERTIFICATE_V2], 8
    )
    assert _shape(our_attrs[ID_RECIPIENT_EMAILS], 4) == _shape(sample_attrs[ID_RECIPIENT_EMAILS], 4)


def test_ecc_signature_algorithm_has_no_parameters(ecc_signer: Party, ecc_recipient: Party) -> None:
    """digest §2.8: ecdsa-with-SHA256 (1.2.840.10045.4.3.2), parameters absent (RFC 5758)."""
    der = _sign(ecc_signer, CONTENT, _emails(ecc_recipient))
    fields = _signer_info_fields(der)
    assert fields[4] == bytes.fromhex("300a06082a8648ce3d040302")
    protection = _attributes(der)[ID_CMS_ALGORITHM_PROTECTION]
    assert protection.endswith(bytes.fromhex("a10a06082a8648ce3d040302"))


# --- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunked_feeding_gives_the_same_result(
    signed: tuple[Party, bytes, bytes], chunk: int
) -> None:
    _, der, _ = signed
    assert _read(der, chunk) == _read(der)


def _pattern_chunks(total: int, size: int) -> Iterator[bytes]:
    block = bytes(range(256)) * (size // 256)
    sent = 0
    while sent < total:
        piece = block[: min(size, total - sent)]
        sent += len(piece)
        yield piece


def test_five_megabytes_stream_through_with_bounded_memory(
    rsa_signer: Party, rsa_recipient: Party
) -> None:
    """Neither side holds the 5 MB eContent: Python allocations stay far below its size."""
    total, size = 5 * 1024 * 1024, 64 * 1024
    digest = hashlib.sha256()
    for piece in _pattern_chunks(total, size):
        digest.update(piece)
    writer = SignedDataWriter(
        rsa_signer.key,
        content_length=total,
        content_digest=digest.digest(),
        recipient_emails=_emails(rsa_recipient),
    )
    received = hashlib.sha256()
    count = 0

    def sink(data: bytes) -> None:
        nonlocal count
        received.update(data)
        count += len(data)

    reader = SignedDataReader(sink)
    tracemalloc.start()
    try:
        reader.feed(writer.prefix())
        for piece in _pattern_chunks(total, size):
            reader.feed(piece)
        reader.feed(writer.suffix())
        reader.feed_eof()
        report = reader.verify()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == total
    assert received.digest() == digest.digest() == report.content_digest
    assert peak < 1024 * 1024, f"peak {peak} bytes"


def _indefinite(tag: int, content: bytes) -> bytes:
    return bytes((tag, 0x80)) + content + b"\x00\x00"


def test_ber_with_indefinite_lengths_and_nested_constructed_econtent(
    signed: tuple[Party, bytes, bytes],
) -> None:
    """The reader accepts BER as gematik's .04 uses it: indefinite lengths, constructed and
    nested OCTET STRING segments for the eContent."""
    _, der, _ = signed
    parts = _parts(der)
    half = len(CONTENT) // 2
    segments = b"".join(_tlv(0x04, CONTENT[i : min(i + 100, half)]) for i in range(0, half, 100))
    nested = _indefinite(0x24, _tlv(0x04, CONTENT[half:-10]) + _tlv(0x04, b""))
    e_content = _indefinite(0x24, segments + nested + _tlv(0x04, CONTENT[-10:]))
    data_oid = bytes(asn1crypto.core.ObjectIdentifier("1.2.840.113549.1.7.1").dump())
    encap = _indefinite(0x30, data_oid + _indefinite(0xA0, e_content))
    body = parts["version"] + parts["digest_algorithms"] + encap
    body += parts["certificates"] + parts["signer_infos"]
    ber = _indefinite(0x30, SIGNED_DATA_OID + _indefinite(0xA0, _indefinite(0x30, body)))
    for chunk in (None, 5):
        content, report = _read(ber, chunk)
        assert content == CONTENT
        assert report.content_digest == hashlib.sha256(CONTENT).digest()


def test_trailing_line_break_is_accepted_other_trailing_data_is_not(
    signed: tuple[Party, bytes, bytes],
) -> None:
    _, der, _ = signed
    assert read_signed_data(der + b"\r\n")[0] == CONTENT
    with pytest.raises(CmsFormatError) as info:
        read_signed_data(der + b"\r\nX")
    assert "trailing" in info.value.reason


# --- tampering ---------------------------------------------------------------------------------

# where a flipped bit in the LAST byte of each signed attribute is reported: the attributes
# that can be checked against something name themselves; recipient-emails is only protected by
# the signature
FLIPPED_ATTRIBUTE_FIELD = {
    ID_CONTENT_TYPE: f"{ATTR}.contentType",
    ID_SIGNING_TIME: f"{ATTR}.signingTime",
    ID_MESSAGE_DIGEST: f"{ATTR}.messageDigest",
    ID_CMS_ALGORITHM_PROTECTION: f"{ATTR}.cmsAlgorithmProtection",
    ID_SIGNING_CERTIFICATE_V2: f"{ATTR}.signingCertificateV2",
    ID_RECIPIENT_EMAILS: "SignedData.signerInfos[0].signature",
}


@pytest.mark.parametrize("oid", list(FLIPPED_ATTRIBUTE_FIELD))
def test_flipped_bit_in_a_signed_attribute_is_refused_naming_it(
    signed: tuple[Party, bytes, bytes], oid: str
) -> None:
    _, der, _ = signed
    attribute = _attributes(der)[oid]
    position = der.index(attribute) + len(attribute) - 1
    with pytest.raises((SignatureError, CmsFormatError)) as info:
        read_signed_data(_flip(der, position))
    assert info.value.field == FLIPPED_ATTRIBUTE_FIELD[oid]  # type: ignore[union-attr]


def test_flipped_bit_in_the_econtent_is_refused_naming_it(
    signed: tuple[Party, bytes, bytes],
) -> None:
    _, der, _ = signed
    with pytest.raises(SignatureError) as info:
        read_signed_data(_flip(der, der.index(b"anbei der Befund")))
    assert info.value.field == "SignedData.encapContentInfo.eContent"


def test_flipped_bit_in_the_signature_is_refused_naming_it(
    signed: tuple[Party, bytes, bytes],
) -> None:
    _, der, _ = signed
    signature = _signer_info_fields(der)[5]
    position = der.index(signature) + len(signature) - 5
    with pytest.raises(SignatureError) as info:
        read_signed_data(_flip(der, position))
    assert info.value.field == "SignedData.signerInfos[0].signature"


def test_flipped_bit_in_the_certificate_is_refused_naming_it(
    signed: tuple[Party, bytes, bytes],
) -> None:
    """A changed certificate no longer matches signingCertificateV2 (RFC 5035)."""
    signer, der, _ = signed
    cert = signer.key.certificate.public_bytes(serialization.Encoding.DER)
    with pytest.raises(SignatureError) as info:
        read_signed_data(_flip(der, der.index(cert) + len(cert) - 1))  # in its signature value
    assert info.value.field == "SignedData.certificates[0]"
    key = signer.key.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises((SignatureError, CmsFormatError)) as info2:
        read_signed_data(_flip(der, der.index(cert) + cert.index(key) + len(key) - 3))
    assert "certificates[0]" in f"{info2.value.field} {info2.value.reason}"  # type: ignore[union-attr]


def test_truncated_input_is_refused(signed: tuple[Party, bytes, bytes]) -> None:
    _, der, _ = signed
    for cut in (0, 1, 30, der.index(b"anbei"), len(der) - 300, len(der) - 1):
        reader = SignedDataReader(lambda _: None)
        reader.feed(der[:cut])
        with pytest.raises(CmsFormatError):
            reader.feed_eof()


def test_verify_before_eof_is_refused(signed: tuple[Party, bytes, bytes]) -> None:
    _, der, _ = signed
    reader = SignedDataReader(lambda _: None)
    reader.feed(der)
    with pytest.raises(CmsError, match="feed_eof"):
        reader.verify()


def test_verify_at_checks_the_signer_certificate_validity(
    signed: tuple[Party, bytes, bytes],
) -> None:
    _, der, _ = signed
    reader = SignedDataReader(lambda _: None)
    reader.feed(der)
    reader.feed_eof()
    reader.verify(at=dt.datetime.now(dt.UTC))
    with pytest.raises(SignatureError) as info:
        reader.verify(at=dt.datetime.now(dt.UTC) + dt.timedelta(days=800))
    assert info.value.field == "SignedData.certificates[0]"


# --- profile violations built by hand ----------------------------------------------------------


def test_hand_assembly_reproduces_the_writer_output(signed: tuple[Party, bytes, bytes]) -> None:
    _, der, _ = signed
    assert _assemble(_parts(der)) == der


def _crl(signer: Party) -> bytes:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(signer.ca_certificate.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.DER)


def _violation(kind: str, signer: Party, der: bytes, other: Party) -> bytes:
    parts = _parts(der)
    signer_info = asn1crypto.cms.ContentInfo.load(der)["content"]["signer_infos"][0].dump()
    cert = signer.key.certificate.public_bytes(serialization.Encoding.DER)
    if kind == "two signers":
        parts["signer_infos"] = _tlv(0x31, signer_info + signer_info)
    elif kind == "extra certificate":
        ca = signer.ca_certificate.public_bytes(serialization.Encoding.DER)
        parts["certificates"] = _tlv(0xA0, cert + ca)
    elif kind == "no certificate":
        parts["certificates"] = b""
    elif kind == "crls present":
        parts["crls"] = _tlv(0xA1, _crl(signer))
    elif kind == "unsigned attribute":
        fields = _signer_info_fields(der)
        unsigned = _tlv(0xA1, _attributes(der)[ID_SIGNING_TIME])
        parts["signer_infos"] = _tlv(0x31, _tlv(0x30, b"".join(fields) + unsigned))
    elif kind == "sid names another certificate":
        parts["certificates"] = _tlv(
            0xA0, other.key.certificate.public_bytes(serialization.Encoding.DER)
        )
    elif kind == "detached content":
        data_oid = bytes(asn1crypto.core.ObjectIdentifier("1.2.840.113549.1.7.1").dump())
        parts["encap"] = _tlv(0x30, data_oid)
    elif kind == "sha1 digest algorithms":
        parts["digest_algorithms"] = _tlv(0x31, bytes.fromhex("300906052b0e03021a0500"))
    elif kind == "version 3":
        parts["version"] = bytes.fromhex("020103")
    elif kind == "recipient-emails missing":
        fields = _signer_info_fields(der)
        attrs = [a for oid, a in _attributes(der).items() if oid != ID_RECIPIENT_EMAILS]
        to_be_signed = _tlv(0x31, b"".join(attrs))
        signature = signer.key.sign_digest(hashlib.sha256(to_be_signed).digest())
        fields[3] = _tlv(0xA0, b"".join(attrs))
        fields[5] = _tlv(0x04, signature)
        parts["signer_infos"] = _tlv(0x31, _tlv(0x30, b"".join(fields)))
    else:
        raise AssertionError(kind)
    return _assemble(parts)


VIOLATIONS = {
    "two signers": ("SignedData.signerInfos", "KOM-LE-A_2123"),
    "extra certificate": ("SignedData.certificates", "KOM-LE-A_2122"),
    "no certificate": ("SignedData.certificates", "KOM-LE-A_2119"),
    "crls present": ("SignedData.crls", "KOM-LE-A_2118"),
    "unsigned attribute": ("SignedData.signerInfos[0].unsignedAttrs", "KOM-LE-A_2126"),
    "sid names another certificate": ("SignedData.signerInfos[0].sid", "KOM-LE-A_2125"),
    "detached content": ("SignedData.encapContentInfo.eContent", "KOM-LE-A_2121"),
    "sha1 digest algorithms": ("SignedData.digestAlgorithms", "sha256"),
    "version 3": ("SignedData.version", "requires 1"),
    "recipient-emails missing": (f"{ATTR}.recipient-emails", "KOM-LE-A_2127"),
}


@pytest.mark.parametrize("kind", list(VIOLATIONS))
def test_profile_violations_are_refused_naming_the_rule(
    signed: tuple[Party, bytes, bytes], other_rsa_recipient: Party, kind: str
) -> None:
    """digest §2.5: KOM-LE-A_2118/2119/2121/2122/2123/2125/2126/2127 and the algorithm profile."""
    signer, der, _ = signed
    bad = _violation(kind, signer, der, other_rsa_recipient)
    field, rule = VIOLATIONS[kind]
    with pytest.raises(CmsFormatError) as info:
        read_signed_data(bad)
    assert info.value.field == field
    assert rule in info.value.reason


def test_not_signed_data_is_refused_at_once(signed: tuple[Party, bytes, bytes]) -> None:
    _, der, _ = signed
    enveloped_oid = bytes(asn1crypto.core.ObjectIdentifier("1.2.840.113549.1.7.3").dump())
    bad = der.replace(SIGNED_DATA_OID, enveloped_oid, 1)
    reader = SignedDataReader(lambda _: None)
    with pytest.raises(CmsFormatError) as info:
        reader.feed(bad)  # refused while streaming, before any eContent reaches the sink
    assert info.value.field == "ContentInfo.contentType"


def test_pkcs1_signature_algorithm_is_refused(rsa_signer: Party, rsa_recipient: Party) -> None:
    """digest §2.8: RSA signatures are RSASSA-PSS; sha256WithRSAEncryption is not allowed."""
    der = _sign(rsa_signer, CONTENT, _emails(rsa_recipient))
    pkcs1 = bytes.fromhex("300d06092a864886f70d01010b0500")
    fields = _signer_info_fields(der)
    fields[4] = pkcs1
    parts = _parts(der)
    parts["signer_infos"] = _tlv(0x31, _tlv(0x30, b"".join(fields)))
    with pytest.raises(CmsFormatError) as info:
        read_signed_data(_assemble(parts))
    assert info.value.field == "SignedData.signerInfos[0].signatureAlgorithm"


# --- writer input checks -----------------------------------------------------------------------


def test_writer_refuses_bad_arguments(rsa_signer: Party, rsa_recipient: Party) -> None:
    emails = _emails(rsa_recipient)
    good: dict[str, Any] = {
        "content_length": 3,
        "content_digest": hashlib.sha256(b"abc").digest(),
        "recipient_emails": emails,
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({"content_digest": b"\x00" * 20}, "content_digest"),
        ({"content_length": -1}, "content_length"),
        ({"signing_time": dt.datetime(2025, 1, 1)}, "signing_time"),
        ({"signing_time": dt.datetime(2050, 1, 1, tzinfo=dt.UTC)}, "signing_time"),
        ({"recipient_emails": b"\x30\x00"}, "recipient-emails"),
    ]
    for change, field in cases:
        with pytest.raises(CmsError) as info:
            SignedDataWriter(rsa_signer.key, **{**good, **change})
        assert info.value.field.startswith(field), (change, info.value)


# --- issue 11: nothing but CmsError, whatever the SignedData holds -------------------------------

RSA_ENCRYPTION = bytes.fromhex("06092a864886f70d010101")
UNKNOWN_KEY_ALGORITHM = bytes.fromhex("06092a864886f70d01017f")  # 1.2.840.113549.1.1.127


def test_signer_certificate_with_an_unknown_key_algorithm_is_a_format_error(
    rsa_signer: Party, rsa_recipient: Party
) -> None:
    """Issue 11's poison message: cryptography raises UnsupportedAlgorithm for the signer's
    key; verify() raises CmsFormatError naming the certificate and the algorithm."""
    der = _sign(rsa_signer, CONTENT, _emails(rsa_recipient))
    assert der.count(RSA_ENCRYPTION) == 1
    poisoned = der.replace(RSA_ENCRYPTION, UNKNOWN_KEY_ALGORITHM)
    with pytest.raises(CmsFormatError) as info:
        read_signed_data(poisoned)
    assert info.value.field.startswith("SignedData.certificates[0]")
    assert "1.2.840.113549.1.1.127 is not supported" in info.value.reason


def test_every_change_of_the_certificates_and_signer_info_is_a_cms_error(
    signed: tuple[Party, bytes, bytes],
) -> None:
    """Issue 11: asn1crypto and cryptography parse the certificate and the SignerInfo lazily
    and raised ValueError, UnicodeDecodeError, AttributeError, InvalidVersion ... from deep
    inside verify(); every single-byte change of those structures is now a CmsError (or, where
    the byte does not matter, still verifies)."""
    _, der, _ = signed
    begin = der.rindex(b"anbei der Befund.")  # the end of the eContent: what follows it
    for index in range(begin, len(der), 11):
        for value in (0x00, 0x80, 0xFF):
            changed = der[:index] + bytes([value]) + der[index + 1 :]
            with contextlib.suppress(CmsError):
                read_signed_data(changed)


def test_digest_mismatch_is_found_without_a_full_verification(
    signed: tuple[Party, bytes, bytes],
) -> None:
    """The cheap first test of a CRLF-repair candidate (digest §2.10): a changed eContent is
    a digest mismatch; the original is not."""
    _, der, _ = signed
    for data, expected in ((der, False), (der.replace(b"anbei", b"Anbei", 1), True)):
        reader = SignedDataReader(lambda _: None)
        reader.feed(data)
        reader.feed_eof()
        assert reader.content_complete
        assert reader.digest_mismatch() is expected
