"""Sealing and opening KIM messages end to end (digest §2.1, §2.2, §2.5-§2.7)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from parties import Party

from kim_appliance.mail.headers import parse_header_block, read_header_block
from kim_appliance.mail.seal import Certified, seal
from kim_appliance.mail.unseal import open_message

#: what a message whose signature verifies gets without trust anchors: the signer was not
#: checked (INCONCLUSIVE, 07), never VALID (issue 15); the parties here are no gematik profile
UNCHECKED = ["07"]

INNER = (
    b"MIME-Version: 1.0\r\n"
    b"From: Praxis RSA <praxis.rsa@test1.kim.telematik-test>\r\n"
    b"To: praxis.ecc@test1.kim.telematik-test, apotheke.rsa@test1.kim.telematik-test\r\n"
    b"Subject: Befund\r\n"
    b"Date: Sat, 28 Nov 2026 10:00:00 +0100\r\n"
    b"Message-ID: <5b0e3c52-0a53-4c3b-8f0a-0b7f7f5b8f10@kim>\r\n"
    b"X-KIM-Dienstkennung: KIM-Mail;Default;V1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Guten Tag,\r\n.leading dot and a bare\nLF and a bare\rCR stay as they are.\r\n"
)


def _seal(signer: Party, sender: Party, recipients: list[Party], inner: bytes = INNER) -> bytes:
    out = io.BytesIO()
    seal(
        io.BytesIO(inner),
        out,
        signer=signer.key,
        sender=[Certified(sender.address, sender.key.certificate)],
        recipients=[Certified(r.address, r.key.certificate) for r in recipients],
    )
    return out.getvalue()


@pytest.fixture(scope="module")
def sealed(
    rsa_signer: Party, rsa_recipient: Party, ecc_recipient: Party, other_rsa_recipient: Party
) -> bytes:
    return _seal(rsa_signer, rsa_recipient, [ecc_recipient, other_rsa_recipient])


def test_every_recipient_and_the_sender_can_open_it(
    sealed: bytes, rsa_recipient: Party, ecc_recipient: Party, other_rsa_recipient: Party
) -> None:
    """KOM-LE-A_2095, KOM-LE-A_2096, KOM-LE-A_2111-01, KOM-LE-A_2108, KOM-LE-A_2112, KOM-LE-A_2019:
    signed then encrypted (RSA-OAEP and ECDH recipients, AES-256-GCM content) for each recipient
    and the sender, and the inner mail comes back byte for byte."""
    for party in (rsa_recipient, ecc_recipient, other_rsa_recipient):
        out = io.BytesIO()
        report = open_message(io.BytesIO(sealed), out, keys=[party.key])
        assert report.decryption_result == "00", report.lines()
        assert report.integrity_results == UNCHECKED, report.lines()
        assert report.exit_code == 3
        assert out.getvalue() == INNER  # byte for byte: bare CR/LF and dots untouched
        assert len(report.recipient_infos) == 3


def test_outer_mail_is_shaped_like_gematiks_sample(sealed: bytes) -> None:
    """KOM-LE-A_2098-03, KOM-LE-A_2101-01, KOM-LE-A_2102, KOM-LE-A_2104, KOM-LE-A_2193: outer
    header, base64 76-column body, and an AuthEnvelopedData ContentInfo in BER with indefinite
    lengths."""
    header, body = read_header_block(io.BytesIO(sealed))
    inner = parse_header_block(INNER.split(b"\r\n\r\n")[0])
    assert header.get("Subject") == "KOM-LE-Nachricht"
    assert header.get("Message-ID") == inner.get("Message-ID")
    assert header.get("X-KIM-Dienstkennung") == "KIM-Mail;Default;V1.0"
    lines = body.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) == 76 for line in lines[:-2])
    assert 0 < len(lines[-2]) <= 76
    der = base64.b64decode(body)
    assert der[:4] == bytes.fromhex("3080060b")  # SEQUENCE, indefinite length, OID
    info = asn1_cms.ContentInfo.load(der)
    assert info["content_type"].dotted == "1.2.840.113549.1.9.16.1.23"


def test_tampered_ciphertext_releases_nothing(sealed: bytes, ecc_recipient: Party) -> None:
    """A flipped bit in the body: not decrypted (DecryptionResult 02), nothing written."""
    header_end = sealed.index(b"\r\n\r\n") + 4
    der = bytearray(base64.b64decode(sealed[header_end:]))
    der[len(der) // 2] ^= 0x01
    body = base64.encodebytes(bytes(der)).replace(b"\n", b"\r\n")
    out = io.BytesIO()
    report = open_message(io.BytesIO(sealed[:header_end] + body), out, keys=[ecc_recipient.key])
    assert report.exit_code == 2
    assert report.decryption_result == "02"
    assert out.getvalue() == b""


def test_changed_outer_recipient_header_is_reported(sealed: bytes, ecc_recipient: Party) -> None:
    """IntegrityCheckResult 08: outer To differs from the signed inner To."""
    forged = sealed.replace(
        b"To: praxis.ecc@test1.kim.telematik-test, apotheke.rsa@test1.kim.telematik-test",
        b"To: praxis.ecc@test1.kim.telematik-test",
        1,
    )
    assert forged != sealed
    report = open_message(io.BytesIO(forged), io.BytesIO(), keys=[ecc_recipient.key])
    assert report.exit_code == 3
    assert report.integrity_results == [*UNCHECKED, "08"]
    assert any("To differs" in p for p in report.problems)


def test_a_stranger_cannot_open_it(
    rsa_signer: Party, ecc_recipient: Party, rsa_recipient: Party, other_rsa_recipient: Party
) -> None:
    """KOM-LE-A_2045 and DecryptionResult 01: no RecipientInfo for the key's certificate."""
    sealed = _seal(rsa_signer, rsa_recipient, [ecc_recipient])
    out = io.BytesIO()
    report = open_message(io.BytesIO(sealed), out, keys=[other_rsa_recipient.key])
    assert report.exit_code == 2
    assert report.decryption_result == "01"
    assert out.getvalue() == b""


def test_missing_message_id_and_date_are_added_inside_and_out(
    ecc_signer: Party, ecc_recipient: Party, rsa_recipient: Party
) -> None:
    """KOM-LE-A_2101-01: the outer Message-ID equals the inner one, also when the CM set it."""
    inner = (
        b"From: praxis.ecc@test1.kim.telematik-test\r\n"
        b"To: praxis.rsa@test1.kim.telematik-test\r\n\r\nHallo\r\n"
    )
    sealed = _seal(ecc_signer, ecc_recipient, [rsa_recipient], inner)
    out = io.BytesIO()
    report = open_message(io.BytesIO(sealed), out, keys=[rsa_recipient.key])
    assert report.integrity_results == UNCHECKED, report.lines()
    opened, _ = read_header_block(io.BytesIO(out.getvalue()))
    outer, _ = read_header_block(io.BytesIO(sealed))
    assert opened.get("Message-ID")
    assert opened.get("Message-ID") == outer.get("Message-ID")
    assert opened.get("Date") == outer.get("Date")
    assert out.getvalue().endswith(inner)
    assert report.signature_algorithm is not None
    assert "ecdsa" in report.signature_algorithm.lower()


def test_gematik_sample_opens_with_both_test_keys(gematik_sample: Path) -> None:
    """digest §2.6/§2.10: gematik's outer mail decrypts with recipient A's and B's test key; its
    signed entity was damaged by CRLF canonicalisation and is repaired before verifying."""
    from kim_appliance.cms.keys import SoftwareKey

    expected = (gematik_sample / "inputEmail.txt.01.rfc822wrap").read_bytes()
    for who, stem in (("A", "hci-enc-2-kim-bsp"), ("B", "hci-enc-3-kim-bsp")):
        key = SoftwareKey.from_files(
            gematik_sample / who / f"{stem}.prv.pem", gematik_sample / who / f"{stem}.pem"
        )
        out = io.BytesIO()
        with (gematik_sample / "inputEmail.txt.05.encryptedwrap").open("rb") as outer:
            report = open_message(outer, out, keys=[key])
        assert report.decryption_result == "00", report.lines()
        assert report.repaired_crlf
        assert report.integrity_results == UNCHECKED, report.lines()
        assert expected == b"Content-Type: message/rfc822\r\n\r\n" + out.getvalue()


@pytest.mark.parametrize("body_mib", [0, 3], ids=["in-memory", "spooled-to-disk"])
def test_econtent_spool_small_and_large(
    tmp_path: Path, rsa_signer: Party, rsa_recipient: Party, ecc_recipient: Party, body_mib: int
) -> None:
    """KOM-LE-A_2019: the inner mail comes back byte for byte whether its eContent stays in
    memory (small) or the spool moves to a file past 1 MiB; no file is left in the spool
    directory afterwards."""
    body = b"".join(b"%07d Befundzeile\r\n" % i for i in range(body_mib * 1024 * 1024 // 20))
    inner = INNER + body
    sealed = _seal(rsa_signer, rsa_recipient, [ecc_recipient], inner)
    out = io.BytesIO()
    report = open_message(
        io.BytesIO(sealed), out, keys=[ecc_recipient.key], spool_dir=str(tmp_path)
    )
    assert report.integrity_results == UNCHECKED, report.lines()
    assert out.getvalue() == inner
    assert list(tmp_path.iterdir()) == []


def _reencrypted(sealed: bytes, opener: Party, recipients: list[Party], change: bytes) -> bytes:
    """``sealed`` decrypted with ``opener``'s key, its signed entity changed by ``change`` (a
    ``old=>new`` byte replacement), and encrypted again for ``recipients``."""
    from kim_appliance.cms.enveloped import (
        AuthEnvelopedReader,
        AuthEnvelopedWriter,
        EncryptionRecipient,
        find_recipient,
    )

    header, _, body = sealed.partition(b"\r\n\r\n")
    reader = AuthEnvelopedReader()
    reader.feed(base64.b64decode(body))
    reader.feed_eof()
    assert reader.recipient_infos is not None
    assert reader.recipient_emails is not None
    info, key = find_recipient(reader.recipient_infos, [opener.key])
    reader.set_content_key(info.unwrap(key))
    with reader.finish() as plaintext:
        entity = bytes(plaintext.read())
    old, new = change.split(b"=>")
    assert entity.count(old) == 1
    writer = AuthEnvelopedWriter(
        [EncryptionRecipient(r.address, r.key.certificate) for r in recipients],
        unauth_recipient_emails=reader.recipient_emails,
    )
    der = writer.header() + writer.update(entity.replace(old, new)) + writer.finalize()
    return header + b"\r\n\r\n" + base64.encodebytes(der).replace(b"\n", b"\r\n")


def test_signer_key_of_an_unknown_algorithm_is_04_and_the_mail_still_comes_out(
    sealed: bytes, ecc_recipient: Party, other_rsa_recipient: Party
) -> None:
    """Issue 11's poison message: decrypts, but the signer certificate's key algorithm is one
    nobody knows (verify raised UnsupportedAlgorithm). IntegrityCheckResult 04 (wrong signature
    format, digest §1.6), exit 3, and the decrypted inner mail is written all the same, for the
    Clientmodul's integrity error mail (A_23165)."""
    rsa_encryption, unknown = "06092a864886f70d010101", "06092a864886f70d01017f"
    poisoned = _reencrypted(
        sealed, ecc_recipient, [ecc_recipient, other_rsa_recipient],
        bytes.fromhex(rsa_encryption) + b"=>" + bytes.fromhex(unknown),
    )  # fmt: skip
    out = io.BytesIO()
    report = open_message(io.BytesIO(poisoned), out, keys=[ecc_recipient.key])
    assert report.exit_code == 3
    assert report.integrity_results == ["04"]
    assert any("1.2.840.113549.1.1.127 is not supported" in p for p in report.problems)
    assert out.getvalue() == INNER
