"""AuthEnvelopedData writer and reader (kim_appliance.cms.enveloped), digest §2.6/§2.8/§7.3.

Independent oracle: ``oracle_decrypt`` below decrypts with asn1crypto and cryptography
primitives only; it imports nothing of the code under test.
"""

from __future__ import annotations

import random
from pathlib import Path

import asn1crypto.x509
import pytest
from asn1crypto import cms, core
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kim_appliance.cms.enveloped import (
    AuthEnvelopedReader,
    AuthEnvelopedWriter,
    EncryptionRecipient,
    find_recipient,
)
from kim_appliance.cms.errors import (
    CmsError,
    CmsFormatError,
    DecryptionError,
    NoMatchingRecipientError,
)
from kim_appliance.cms.keys import SoftwareKey

# --- helpers ---------------------------------------------------------------------------------


def recipient_emails_der(parties: list[tuple[str, SoftwareKey]]) -> bytes:
    """A recipient-emails Attribute (digest §2.7), built independently of the code under test."""
    entries = []
    for address, key in parties:
        cert = asn1crypto.x509.Certificate.load(
            key.certificate.public_bytes(serialization.Encoding.DER)
        )
        ias = cms.IssuerAndSerialNumber(
            {"issuer": cert.issuer, "serial_number": cert.serial_number}
        )
        entries.append(core.Sequence(contents=core.IA5String(address).dump() + ias.dump()).dump())
    values = core.SetOf(contents=b"".join(entries)).dump()
    return bytes(
        core.Sequence(contents=core.ObjectIdentifier("1.2.276.0.76.4.173").dump() + values).dump()
    )


def random_splits(data: bytes, rng: random.Random) -> list[bytes]:
    pieces, i = [], 0
    while i < len(data):
        n = rng.choice([1, 2, 7, 100, 1000, 4096, 70000])
        pieces.append(data[i : i + n])
        i += n
    return pieces


def seal(
    parties: list[tuple[str, SoftwareKey]],
    content: bytes,
    *,
    chunk_size: int = 65536,
    emails: bool = True,
    nonce: bytes | None = None,
    rng: random.Random | None = None,
) -> bytes:
    writer = AuthEnvelopedWriter(
        [EncryptionRecipient(a, k.certificate) for a, k in parties],
        unauth_recipient_emails=recipient_emails_der(parties) if emails else None,
        chunk_size=chunk_size,
        nonce=nonce,
    )
    out = [writer.header()]
    pieces = random_splits(content, rng) if rng else [content]
    out.extend(writer.update(p) for p in pieces)
    out.append(writer.finalize())
    return b"".join(out)


def open_with(
    der: bytes, key: SoftwareKey, *, rng: random.Random | None = None, early_key: bool = True
) -> tuple[bytes, AuthEnvelopedReader]:
    reader = AuthEnvelopedReader()
    for piece in random_splits(der, rng) if rng else [der]:
        reader.feed(piece)
        if early_key and reader.recipient_infos is not None and not hasattr(reader, "_k"):
            info, k = find_recipient(reader.recipient_infos, [key])
            reader.set_content_key(info.unwrap(k))
            reader._k = True  # type: ignore[attr-defined]
    reader.feed_eof()
    if not early_key or not hasattr(reader, "_k"):
        assert reader.recipient_infos is not None
        info, k = find_recipient(reader.recipient_infos, [key])
        reader.set_content_key(info.unwrap(k))
    with reader.finish() as plaintext:
        return plaintext.read(), reader


def oracle_decrypt(der: bytes, key: SoftwareKey) -> bytes:
    """Decrypt with asn1crypto + cryptography only (RFC 5083/5652/5753), for one key."""
    ci = cms.ContentInfo.load(der)
    assert ci["content_type"].dotted == "1.2.840.113549.1.9.16.1.23"
    aed = ci["content"]
    assert aed["version"].native == "v0"
    cert = asn1crypto.x509.Certificate.load(
        key.certificate.public_bytes(serialization.Encoding.DER)
    )
    cek = None
    for ri in aed["recipient_infos"]:
        if ri.name == "ktri":
            rid = ri.chosen["rid"].chosen
            if rid["issuer"] == cert.issuer and rid["serial_number"].native == cert.serial_number:
                assert isinstance(key.private_key, rsa.RSAPrivateKey)
                oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
                cek = key.private_key.decrypt(ri.chosen["encrypted_key"].native, oaep)
        elif ri.name == "kari":
            kari = ri.chosen
            assert kari["key_encryption_algorithm"]["algorithm"].dotted == "1.3.132.1.11.1"
            wrap_alg = kari["key_encryption_algorithm"]["parameters"].dump()
            assert wrap_alg == bytes.fromhex("300b060960864801650304012d")  # id-aes256-wrap
            for rek in kari["recipient_encrypted_keys"]:
                rid = rek["rid"].chosen
                if (
                    rid["issuer"] != cert.issuer
                    or rid["serial_number"].native != cert.serial_number
                ):
                    continue
                assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
                point = kari["originator"].chosen["public_key"].native
                ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(
                    ec.BrainpoolP256R1(), point
                )
                z = key.private_key.exchange(ec.ECDH(), ephemeral)
                body = wrap_alg + bytes.fromhex("a2060404") + (256).to_bytes(4, "big")
                shared_info = bytes([0x30, len(body)]) + body
                kek = X963KDF(hashes.SHA256(), 32, shared_info).derive(z)
                cek = aes_key_unwrap(kek, rek["encrypted_key"].native)
    assert cek is not None, "oracle: no RecipientInfo for this key"
    eci = aed["auth_encrypted_content_info"]
    assert eci["content_type"].dotted == "1.2.840.113549.1.7.1"
    assert eci["content_encryption_algorithm"]["algorithm"].dotted == "2.16.840.1.101.3.4.1.46"
    params = eci["content_encryption_algorithm"]["parameters"].dump()
    assert params[:4] == b"\x30\x11\x04\x0c", params.hex()  # GCMParameters{OCTET STRING(12),
    assert params[16:] == b"\x02\x01\x10", params.hex()  # aes-ICVlen 16}
    ciphertext = eci["encrypted_content"].native or b""
    return AESGCM(cek).decrypt(params[4:16], ciphertext + aed["mac"].native, None)


@pytest.fixture(scope="module")
def sample(gematik_sample: Path) -> dict[str, object]:
    def key(who: str, n: int) -> SoftwareKey:
        d = gematik_sample / who
        return SoftwareKey.from_files(
            d / f"hci-enc-{n}-kim-bsp.prv.pem", d / f"hci-enc-{n}-kim-bsp.pem"
        )

    return {
        "cms": (gematik_sample / "inputEmail.txt.04.encryptedcms").read_bytes(),
        "plain": (gematik_sample / "inputEmail.txt.03.signedwrap").read_bytes(),
        "A": key("A", 2),
        "B": key("B", 3),
    }


# --- gematik's sample ------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["A", "B"])
def test_gematik_sample_decrypts_with_each_recipient_key(
    sample: dict[str, object], who: str
) -> None:
    """digest §2.6: SAMPLE .04 decrypts with A's and with B's key to exactly .03.signedwrap;
    recipient_emails is the sample's unauthAttrs attribute (KOM-LE-A_2107, A_2114-01)."""
    der = sample["cms"]
    assert isinstance(der, bytes)
    key = sample[who]
    assert isinstance(key, SoftwareKey)
    plain, reader = open_with(der, key, rng=random.Random(7))
    assert plain == sample["plain"]
    # the [2] unauthAttrs at offset 4430 (4-byte header) holds one Attribute of 368-4 bytes
    assert reader.recipient_emails == der[4434:4802]
    infos = reader.recipient_infos
    assert infos is not None
    assert [i.kind for i in infos] == ["ktri", "ktri"]
    assert {i.serial for i in infos} == {0x9F52A80078E4, 0xFF22A88FFD24}
    assert infos[0].key_encryption_algorithm == "rsaes_oaep(sha256, mgf1-sha256)"


def _der_length(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def test_our_layout_mirrors_the_gematik_sample(
    sample: dict[str, object], party_sets: dict[str, list[tuple[str, SoftwareKey]]]
) -> None:
    """digest §2.6: the same BER framing as SAMPLE: indefinite lengths at the outer levels,
    version 0, the KTRI rsaesOaep parameter bytes, GCMParameters{nonce(12), 16}, 1000-byte
    primitive chunks in an indefinite [0], EOCs, mac OCTET STRING(16), [2] unauthAttrs."""
    ref = sample["cms"]
    assert isinstance(ref, bytes)
    parties = party_sets["rsa"]
    nonce = bytes(range(12))
    ours = seal(parties, b"x" * 2500, chunk_size=1000, nonce=nonce)
    assert ours[:23] == ref[:23]  # ContentInfo ... version 0, SET tag of recipientInfos
    assert ref[180:242] in ours  # keyEncryptionAlgorithm rsaesOaep{sha256, mgf1(sha256)}
    aeci = ref[978:1008] + nonce + ref[1020:1029]  # ... GCM params, [0] indef, chunk 1000
    assert aeci in ours
    emails = recipient_emails_der(parties)
    trailer = b"\xa2" + _der_length(len(emails)) + emails + b"\x00" * 6
    assert ours.endswith(trailer)
    before = ours[: -len(trailer)]
    assert before[-22:-16] == ref[4408:4414] == b"\x00\x00\x00\x00\x04\x10"
    assert b"\x04\x82\x01\xf4" in before  # the last, shorter chunk of 500


# --- round trips -----------------------------------------------------------------------------

SIZES = [0, 1, 15, 16, 17, 1024 * 1024]


@pytest.fixture(scope="module")
def party_sets(
    rsa_recipient: object, ecc_recipient: object, other_rsa_recipient: object
) -> dict[str, list[tuple[str, SoftwareKey]]]:
    def p(x: object) -> tuple[str, SoftwareKey]:
        return x.address, x.key  # type: ignore[attr-defined]

    return {
        "rsa": [p(rsa_recipient)],
        "ecc": [p(ecc_recipient)],
        "rsa+ecc+sender": [p(rsa_recipient), p(ecc_recipient), p(other_rsa_recipient)],
    }


@pytest.mark.parametrize("chunk_size", [1000, 65536])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("who", ["rsa", "ecc", "rsa+ecc+sender"])
def test_round_trip_ours_to_ours(
    party_sets: dict[str, list[tuple[str, SoftwareKey]]], who: str, size: int, chunk_size: int
) -> None:
    """Every recipient (KTRI and KARI) decrypts what we wrote, fed in random splits, with the
    key given before the content (inline) or after it (spooled ciphertext)."""
    rng = random.Random(f"{who}{size}{chunk_size}")
    content = rng.randbytes(size)
    parties = party_sets[who]
    der = seal(parties, content, chunk_size=chunk_size, rng=rng)
    for n, (_, key) in enumerate(parties):
        plain, reader = open_with(der, key, rng=rng, early_key=n % 2 == 0)
        assert plain == content
        assert reader.recipient_emails == recipient_emails_der(parties)


@pytest.mark.parametrize("who", ["rsa", "ecc", "rsa+ecc+sender"])
def test_independent_decoder_reads_ours(
    party_sets: dict[str, list[tuple[str, SoftwareKey]]], who: str
) -> None:
    """asn1crypto + cryptography alone (RSA-OAEP, ECDH + X9.63 KDF + AES key wrap, AES-GCM)
    decrypt our KTRI and KARI output."""
    content = random.Random(1).randbytes(5000)
    der = seal(party_sets[who], content, chunk_size=1000)
    for _, key in party_sets[who]:
        assert oracle_decrypt(der, key) == content


# --- tampering, truncation, wrong keys -------------------------------------------------------


def _read_all(reader: AuthEnvelopedReader, data: bytes) -> None:
    reader.feed(data)
    reader.feed_eof()


def _flip(der: bytes, offset: int) -> bytes:
    return der[:offset] + bytes([der[offset] ^ 0x01]) + der[offset + 1 :]


def _decrypt_expecting_error(der: bytes, key: SoftwareKey, *, inline: bool) -> CmsError:
    """Run the whole receive path; it must fail with a CmsError and release no plaintext."""
    reader = AuthEnvelopedReader()
    try:
        reader.feed(der[:-40] if inline else der)
        assert reader.recipient_infos is not None
        info, k = find_recipient(reader.recipient_infos, [key])
        reader.set_content_key(info.unwrap(k))
        if inline:
            reader.feed(der[-40:])
        reader.feed_eof()
        plaintext = reader.finish()
    except CmsError as exc:
        # afterwards the reader hands nothing out: dead (CmsError) or never given a key
        with pytest.raises((CmsError, RuntimeError)):
            reader.finish()
        return exc
    plaintext.close()
    pytest.fail("altered message decrypted")


@pytest.fixture(scope="module")
def two_kinds(
    party_sets: dict[str, list[tuple[str, SoftwareKey]]],
) -> tuple[bytes, bytes, list[tuple[str, SoftwareKey]]]:
    parties = party_sets["rsa+ecc+sender"][:2]
    nonce = bytes.fromhex("a1a2a3a4a5a6a7a8a9aaabac")
    return seal(parties, b"K" * 3000, chunk_size=1000, nonce=nonce), nonce, parties


@pytest.mark.parametrize("inline", [True, False])
@pytest.mark.parametrize("part", ["ciphertext", "tag", "nonce"])
def test_flipped_bit_in_content_fails_at_the_tag(
    two_kinds: tuple[bytes, bytes, list[tuple[str, SoftwareKey]]], part: str, inline: bool
) -> None:
    """RFC 5083 / digest §2.6: one flipped bit in ciphertext, tag or nonce makes finish() raise
    DecryptionError on the mac; no plaintext is released (inline and spooled decryption)."""
    der, nonce, parties = two_kinds
    offset = {
        "ciphertext": der.index(b"\x04\x82\x03\xe8") + 4 + 1234 % 1000,
        "tag": len(der) - len(recipient_emails_der(parties)) - 4 - 6 - 16 + 5,
        "nonce": der.index(nonce) + 3,
    }[part]
    if part == "tag":
        assert der[offset - 7 : offset - 5] == b"\x04\x10"  # inside the mac OCTET STRING
    for _, key in parties:
        error = _decrypt_expecting_error(_flip(der, offset), key, inline=inline)
        assert isinstance(error, DecryptionError)
        assert error.field == "AuthEnvelopedData.mac"
        assert "GCM tag does not verify" in error.reason


def test_flipped_bit_in_ktri_encrypted_key(
    two_kinds: tuple[bytes, bytes, list[tuple[str, SoftwareKey]]],
) -> None:
    """A changed KTRI encryptedKey fails at the RSA-OAEP unwrap, naming the field."""
    der, _, parties = two_kinds
    ktri = cms.ContentInfo.load(der)["content"]["recipient_infos"][0].chosen
    offset = der.index(ktri["encrypted_key"].native) + 100
    error = _decrypt_expecting_error(_flip(der, offset), parties[0][1], inline=False)
    assert isinstance(error, DecryptionError)
    assert error.field == "AuthEnvelopedData.recipientInfos[0].encryptedKey"


@pytest.mark.parametrize("part", ["encryptedKey", "ephemeral key"])
def test_flipped_bit_in_kari(
    two_kinds: tuple[bytes, bytes, list[tuple[str, SoftwareKey]]], part: str
) -> None:
    """A changed KARI encryptedKey or ephemeral public key fails at the unwrap, naming the
    KeyAgreeRecipientInfo field (digest §7.3)."""
    der, _, parties = two_kinds
    kari = cms.ContentInfo.load(der)["content"]["recipient_infos"][1].chosen
    if part == "encryptedKey":
        target = kari["recipient_encrypted_keys"][0]["encrypted_key"].native
    else:
        target = kari["originator"].chosen["public_key"].native
    offset = der.index(target) + 20
    error = _decrypt_expecting_error(_flip(der, offset), parties[1][1], inline=False)
    assert isinstance(error, DecryptionError)
    assert error.field.startswith("AuthEnvelopedData.recipientInfos[1]")
    expected = "encryptedKey" if part == "encryptedKey" else "originatorKey.publicKey"
    assert expected in error.field or "unwrap failed" in error.reason, error


def test_wrong_content_key_releases_nothing(
    two_kinds: tuple[bytes, bytes, list[tuple[str, SoftwareKey]]],
) -> None:
    der, _, _ = two_kinds
    reader = AuthEnvelopedReader()
    reader.feed(der)
    reader.feed_eof()
    reader.set_content_key(b"\x00" * 32)
    with pytest.raises(DecryptionError, match="GCM tag does not verify"):
        reader.finish()


def test_every_truncation_is_a_format_error(
    two_kinds: tuple[bytes, bytes, list[tuple[str, SoftwareKey]]],
) -> None:
    """Truncation anywhere (so at every structural boundary) -> CmsFormatError naming a field."""
    der, _, _ = two_kinds
    content_start = der.index(b"\x04\x82\x03\xe8") + 8
    content_end = len(der) - 700  # into the last chunk, then every byte of the trailer
    cuts = [
        *range(content_start),
        *range(content_start, content_end, 41),
        *range(content_end, len(der)),
    ]
    for cut in cuts:
        reader = AuthEnvelopedReader()
        with pytest.raises(CmsFormatError) as info:
            _read_all(reader, der[:cut])
        assert info.value.field.startswith(("ContentInfo", "AuthEnvelopedData")), cut


def test_key_matching_no_recipient_names_the_rids(
    two_kinds: tuple[bytes, bytes, list[tuple[str, SoftwareKey]]], other_rsa_recipient: object
) -> None:
    """KOM-LE-A_2109: the rids are IssuerAndSerialNumber; a foreign key gets
    NoMatchingRecipientError that lists the rids present."""
    der, _, parties = two_kinds
    reader = AuthEnvelopedReader()
    reader.feed(der)
    reader.feed_eof()
    assert reader.recipient_infos is not None
    with pytest.raises(NoMatchingRecipientError) as info:
        find_recipient(reader.recipient_infos, [other_rsa_recipient.key])  # type: ignore[attr-defined]
    for _, key in parties:
        assert f"serial {key.certificate.serial_number:X}" in str(info.value)
    assert "TEST-CA-RSA TEST-ONLY" in str(info.value)
    assert "TEST-CA-ECC" in str(info.value)


def _rewrite(der: bytes, old: bytes, new: bytes) -> bytes:
    assert der.count(old) == 1
    return der.replace(old, new)


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ("version", "AuthEnvelopedData.version", "must be 0"),
        ("icvlen", "contentEncryptionAlgorithm.parameters.aes-ICVlen", "must be 16"),
        ("aes128", "contentEncryptionAlgorithm.algorithm", "not supported"),
        ("content type", "ContentInfo.contentType", "expected id-ct-authEnvelopedData"),
    ],
)
def test_out_of_profile_fields_are_refused(
    two_kinds: tuple[bytes, bytes, list[tuple[str, SoftwareKey]]],
    change: str,
    field: str,
    reason: str,
) -> None:
    """digest §2.6: version 0, AES-256-GCM with a 16-byte ICV; anything else is refused."""
    der, nonce, _ = two_kinds
    altered = {
        "version": lambda d: _rewrite(d, b"\x30\x80\x02\x01\x00\x31", b"\x30\x80\x02\x01\x02\x31"),
        "icvlen": lambda d: _rewrite(d, nonce + b"\x02\x01\x10", nonce + b"\x02\x01\x0c"),
        "aes128": lambda d: _rewrite(  # id-aes256-GCM -> id-aes128-GCM (...1.4.1.6)
            d, bytes.fromhex("060960864801650304012e"), bytes.fromhex("0609608648016503040106")
        ),
        "content type": lambda d: d.replace(
            bytes.fromhex("060b2a864886f70d0109100117"),
            bytes.fromhex("060b2a864886f70d0109100102"),
            1,
        ),
    }[change](der)
    reader = AuthEnvelopedReader()
    with pytest.raises(CmsFormatError) as info:
        _read_all(reader, altered)
    assert info.value.field.endswith(field), info.value
    assert reason in info.value.reason


def _insert_after_aeci(der: bytes, element: bytes) -> bytes:
    """Insert an element after the authEncryptedContentInfo (before mac)."""
    i = der.index(b"\x00\x00\x00\x00\x04\x10") + 4
    return der[:i] + element + der[i:]


def test_auth_attrs_and_originator_info_are_refused(
    two_kinds: tuple[bytes, bytes, list[tuple[str, SoftwareKey]]],
) -> None:
    """KOM-LE-A_2106: no originatorInfo; authAttrs are not in the profile (digest §2.6)."""
    der, _, _ = two_kinds
    reader = AuthEnvelopedReader()
    with pytest.raises(CmsFormatError, match="not in the KIM profile") as info:
        reader.feed(_insert_after_aeci(der, bytes.fromhex("a10d300b06092a864886f70d010903")))
    assert info.value.field == "AuthEnvelopedData.authAttrs"
    with_originator = der.replace(b"\x02\x01\x00\x31", b"\x02\x01\x00\xa0\x00\x31", 1)
    reader = AuthEnvelopedReader()
    with pytest.raises(CmsFormatError, match="KOM-LE-A_2106"):
        reader.feed(with_originator)


# --- robustness ------------------------------------------------------------------------------


def _run_reader(data: bytes, key: SoftwareKey | None) -> None:
    reader = AuthEnvelopedReader()
    try:
        reader.feed(data)
        reader.feed_eof()
        if key is not None and reader.recipient_infos:
            info, k = find_recipient(reader.recipient_infos, [key])
            reader.set_content_key(info.unwrap(k))
            reader.finish().close()
    except CmsError:
        pass


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=400))
def test_random_bytes_only_raise_cms_errors(data: bytes) -> None:
    """Arbitrary input never raises anything but CmsError and never hangs."""
    _run_reader(data, None)
    _run_reader(
        b"\x30\x80\x06\x0b\x2a\x86\x48\x86\xf7\x0d\x01\x09\x10\x01\x17\xa0\x80" + data, None
    )


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=3),
)
def test_mutated_messages_only_raise_cms_errors(
    two_kinds: tuple[bytes, bytes, list[tuple[str, SoftwareKey]]],
    cut: int,
    flips: list[tuple[int, int]],
) -> None:
    """Truncated and bit-flipped real messages (KTRI + KARI) only ever raise CmsError."""
    der, _, parties = two_kinds
    data = bytearray(der[: cut % (len(der) + 1)])
    for pos, mask in flips:
        if data:
            data[pos % len(data)] ^= mask
    for _, key in parties:
        _run_reader(bytes(data), key)


def test_ephemeral_key_is_fresh_per_message(
    party_sets: dict[str, list[tuple[str, SoftwareKey]]],
) -> None:
    """digest §7.3: every KARI gets a fresh ephemeral brainpoolP256r1 key."""

    def point(der: bytes) -> bytes:
        kari = cms.ContentInfo.load(der)["content"]["recipient_infos"][0].chosen
        return bytes(kari["originator"].chosen["public_key"].native)

    first = seal(party_sets["ecc"], b"same")
    second = seal(party_sets["ecc"], b"same")
    assert point(first) != point(second)
    assert point(first)[0] == 0x04  # uncompressed point


def test_writer_refuses_unsupported_certificates_and_bad_attributes(
    party_sets: dict[str, list[tuple[str, SoftwareKey]]],
) -> None:
    """Only RSA and brainpoolP256r1 certificates (digest §2.8); unauthAttrs only a
    recipient-emails Attribute (KOM-LE-A_2107)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    p256 = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p256")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(p256.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(p256, hashes.SHA256())
    )
    with pytest.raises(CmsError, match="secp256r1 keys are not supported") as info:
        AuthEnvelopedWriter([EncryptionRecipient("x@y", cert)], unauth_recipient_emails=None)
    assert info.value.field == "recipients[0].certificate"
    address, key = party_sets["rsa"][0]
    with pytest.raises(CmsError, match="expected recipient-emails"):
        AuthEnvelopedWriter(
            [EncryptionRecipient(address, key.certificate)],
            unauth_recipient_emails=bytes.fromhex("300d06092a864886f70d0109033100"),
        )
