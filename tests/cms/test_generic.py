"""Tests of the generic CAdES SignedData writer and reader (kim_appliance.cms.generic).

Oracles: ``openssl cms -sign`` makes signatures the reader must verify (PKCS#1 v1.5, PSS,
ECDSA with SHA-384, BER streaming, detached) and ``openssl cms -verify`` checks what the writer
makes; asn1crypto reads the structure independently.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import asn1crypto.cms
import pytest

from kim_appliance.cms.errors import CmsError, CmsFormatError, SignatureError
from kim_appliance.cms.generic import CadesSignedDataWriter, ParsedSignedData, cades_sign
from kim_appliance.cms.oids import (
    ID_CONTENT_TYPE,
    ID_MESSAGE_DIGEST,
    ID_SIGNING_CERTIFICATE_V2,
    ID_SIGNING_TIME,
)

if TYPE_CHECKING:
    from tests.conftest import Party

DOCUMENT = b"%PDF-1.4\r\n% eAU of a patient, not a mail\r\n" + bytes(range(256)) * 40
SIGNING_TIME = dt.datetime(2026, 3, 1, 8, 30, tzinfo=dt.UTC)

requires_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


def _signer_info(der: bytes) -> asn1crypto.cms.SignerInfo:
    info = asn1crypto.cms.ContentInfo.load(der)
    [signer] = info["content"]["signer_infos"]
    return signer


@pytest.mark.parametrize("which", ["rsa_signer", "ecc_signer"])
@pytest.mark.parametrize("detached", [False, True])
def test_writer_makes_a_cades_bes_signature_without_kim_attributes(
    request: pytest.FixtureRequest, which: str, detached: bool
) -> None:
    """TUC_KON_160 (TIP1-A_4653): exactly contentType, signingTime, messageDigest and
    signingCertificateV2 are signed; detached leaves the eContent out; the reader verifies."""
    party: Party = request.getfixturevalue(which)
    der = cades_sign(party.key, DOCUMENT, detached=detached, signing_time=SIGNING_TIME)
    info = asn1crypto.cms.ContentInfo.load(der, strict=True)
    encap = info["content"]["encap_content_info"]
    assert (encap["content"].native is None) is detached
    attributes = {a["type"].dotted: a for a in _signer_info(der)["signed_attrs"]}
    assert set(attributes) == {
        ID_CONTENT_TYPE,
        ID_SIGNING_TIME,
        ID_MESSAGE_DIGEST,
        ID_SIGNING_CERTIFICATE_V2,
    }
    assert attributes[ID_SIGNING_TIME]["values"][0].native == SIGNING_TIME
    assert attributes[ID_MESSAGE_DIGEST]["values"][0].native == hashlib.sha256(DOCUMENT).digest()
    parsed = ParsedSignedData.load(der)
    assert (parsed.detached, parsed.has_recipient_emails) == (detached, False)
    content, report = parsed.verify(DOCUMENT if detached else None)
    assert content == DOCUMENT
    assert report.signer_certificate == party.key.certificate
    assert report.signers[0].signing_time == SIGNING_TIME
    expected = "RSASSA-PSS(sha256, salt 32)" if which == "rsa_signer" else "ECDSA(sha256)"
    assert report.signers[0].signature_algorithm == expected


def test_writer_streams_the_content_between_prefix_and_suffix(rsa_signer: Party) -> None:
    """The writer never sees the content: prefix + content + suffix is the whole DER."""
    writer = CadesSignedDataWriter(
        rsa_signer.key,
        content_length=len(DOCUMENT),
        content_digest=hashlib.sha256(DOCUMENT).digest(),
    )
    der = writer.prefix() + DOCUMENT + writer.suffix()
    assert writer.total_length == len(der)
    assert ParsedSignedData.load(der).verify()[0] == DOCUMENT
    with pytest.raises(CmsError, match="content_digest"):
        CadesSignedDataWriter(rsa_signer.key, content_length=1, content_digest=b"short")
    with pytest.raises(CmsError, match="timezone"):
        cades_sign(rsa_signer.key, DOCUMENT, signing_time=dt.datetime(2026, 1, 1))


@pytest.mark.openssl
@requires_openssl
@pytest.mark.parametrize("which", ["rsa_signer", "ecc_signer"])
@pytest.mark.parametrize("detached", [False, True])
def test_openssl_verifies_what_the_writer_makes(
    request: pytest.FixtureRequest, tmp_path: Path, which: str, detached: bool
) -> None:
    """`openssl cms -verify` (signature only: -noverify) accepts both shapes, RSASSA-PSS and
    brainpoolP256r1 ECDSA, and gives back the document."""
    party: Party = request.getfixturevalue(which)
    signature = tmp_path / "signature.der"
    document = tmp_path / "document.pdf"
    signature.write_bytes(cades_sign(party.key, DOCUMENT, detached=detached))
    document.write_bytes(DOCUMENT)
    args = ["openssl", "cms", "-verify", "-binary", "-noverify", "-inform", "DER"]
    args += ["-in", str(signature), "-out", str(tmp_path / "out")]
    if detached:
        args += ["-content", str(document)]
    result = subprocess.run(args, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert b"Verification successful" in result.stderr
    assert (tmp_path / "out").read_bytes() == DOCUMENT


def _openssl_sign(tmp_path: Path, party: Party, *options: str) -> bytes:
    key_path, cert_path = party.write_pem(tmp_path)
    document = tmp_path / "document.pdf"
    document.write_bytes(DOCUMENT)
    args = ["openssl", "cms", "-sign", "-binary", "-outform", "DER", "-in", str(document)]
    args += ["-signer", str(cert_path), "-inkey", str(key_path), *options]
    result = subprocess.run(args, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


OPENSSL_VARIANTS = [
    ("rsa_signer", (), "RSASSA-PKCS1-v1_5(sha256)"),
    ("rsa_signer", ("-nodetach", "-stream", "-cades"), "RSASSA-PKCS1-v1_5(sha256)"),
    ("rsa_signer", ("-cades", "-keyopt", "rsa_padding_mode:pss"), "RSASSA-PSS(sha256, salt 222)"),
    ("ecc_signer", ("-nodetach",), "ECDSA(sha256)"),
    ("ecc_signer", ("-cades", "-md", "sha384"), "ECDSA(sha384)"),
]


@pytest.mark.openssl
@requires_openssl
@pytest.mark.parametrize(("which", "options", "algorithm"), OPENSSL_VARIANTS)
def test_reader_verifies_what_openssl_signs(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    which: str,
    options: tuple[str, ...],
    algorithm: str,
) -> None:
    """Signatures a third party makes (openssl: PKCS#1 v1.5, PSS with its own salt, ECDSA
    with SHA-384, BER with indefinite lengths, smimeCapabilities, ESS with -cades) verify;
    the same signature over an altered document does not."""
    party: Party = request.getfixturevalue(which)
    der = _openssl_sign(tmp_path, party, *options)
    parsed = ParsedSignedData.load(der)
    detached = "-nodetach" not in options
    assert parsed.detached is detached
    content, report = parsed.verify(DOCUMENT if detached else None)
    assert content == DOCUMENT
    assert report.signers[0].signature_algorithm == algorithm
    assert report.signer_certificate == party.key.certificate
    if "-cades" in options:
        assert "signingCertificateV2" in report.signers[0].signed_attributes
    if detached:
        with pytest.raises(SignatureError, match="messageDigest"):
            ParsedSignedData.load(der).verify(DOCUMENT + b" ")
    else:
        altered = der.replace(DOCUMENT[:64], b"X" + DOCUMENT[1:64], 1)
        assert altered != der
        with pytest.raises(SignatureError, match="messageDigest"):
            ParsedSignedData.load(altered).verify()


def test_reader_refusals_name_the_field(rsa_signer: Party, ecc_signer: Party) -> None:
    """Detached without the document; a document that differs from the eContent; a
    certificate set without the signer's certificate; not CMS at all."""
    detached = cades_sign(rsa_signer.key, DOCUMENT, detached=True)
    with pytest.raises(CmsError, match="detached"):
        ParsedSignedData.load(detached).verify()
    enveloping = cades_sign(rsa_signer.key, DOCUMENT)
    with pytest.raises(SignatureError, match="differs from the document"):
        ParsedSignedData.load(enveloping).verify(b"another document")
    with pytest.raises(CmsFormatError, match="ContentInfo"):
        ParsedSignedData.load(b"%PDF-1.4 not a signature")
    info = asn1crypto.cms.ContentInfo.load(enveloping)
    foreign = asn1crypto.cms.ContentInfo.load(cades_sign(ecc_signer.key, DOCUMENT))
    info["content"]["certificates"] = asn1crypto.cms.CertificateSet(
        [foreign["content"]["certificates"][0]]
    )
    with pytest.raises(CmsError, match=r"not in SignedData\.certificates"):
        ParsedSignedData.load(info.dump(force=True)).verify()


@pytest.mark.openssl
@requires_openssl
def test_reader_refuses_sha1_and_a_missing_certificate(rsa_signer: Party, tmp_path: Path) -> None:
    """SHA-1 is no longer accepted in the TI (gemSpec_Krypt); `-nocerts` leaves the verifier
    without the signer certificate."""
    sha1 = _openssl_sign(tmp_path, rsa_signer, "-nodetach", "-md", "sha1")
    with pytest.raises(CmsFormatError, match="sha1 is not accepted"):
        ParsedSignedData.load(sha1).verify()
    no_certs = _openssl_sign(tmp_path, rsa_signer, "-nodetach", "-nocerts")
    with pytest.raises(CmsError, match=r"not in SignedData\.certificates"):
        ParsedSignedData.load(no_certs).verify()
