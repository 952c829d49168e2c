"""gematik's S/MIME sample (SMIME-Profil.zip) on an emulated card, fetched through the
Clientmodul (issue 6 item 7; DESIGN.md: "gematik's sample must decrypt here with its test keys").

The sample's recipients are ``musterempfaenger@komle.de`` and ``mustersender@komle.de``, which
no Fachdienst of the appliance can serve (a KIM domain ends ``.kim.telematik(-test)``, digest
§2.10). So: the recipient keys A and B go onto two new SMC-Bs with ``kim-appliance card import``
(offline, before ``run``), a mailbox ``mu@fd1.kim.telematik-test`` is added with ``kim-appliance
account add`` (25 characters, as long as ``musterempfaenger@komle.de``), and the sample's outer
mail is put into it through the Fachdienst SMTP (mail to oneself, A_23422 (2)):

* unchanged: recipient-emails names no certificate for ``mu@…``, so the Clientmodul must not
  decrypt (KOM-LE-A_2043): DecryptionResult 01 with the sample attached unchanged;
* with the unprotected recipient-emails entry of musterempfaenger rewritten to ``mu@…`` (same
  length; the one part of an AuthEnvelopedData that nothing authenticates): the card's key
  (recipient B) unwraps the content key, the plaintext is gematik's inner mail byte for byte,
  and the integrity check reports 05 (the signer chains to gematik's GEM.SMCB-CA24, which is
  not one of the appliance's trust anchors and whose certificate the zip does not even hold,
  and the certificates expired in 2024) and 09 (signed and unprotected recipient-emails differ).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from e2e_appliance import Appliance, cli, cm_wait, private_appliance, smtp_send

ACCOUNT = "mu@fd1.kim.telematik-test"
SAMPLE_RECIPIENT = "musterempfaenger@komle.de"
PASSWORD = "Muster-Empfang-2025!"
CARDS = {"A": ("80276001011699901001", "hci-enc-2-kim-bsp"), "B": ("80276001011699901002",
                                                               "hci-enc-3-kim-bsp")}  # fmt: skip


@pytest.fixture(scope="module")
def sample_app(
    template_dir: Path, tmp_path_factory: pytest.TempPathFactory, gematik_sample: Path
) -> Iterator[Appliance]:
    """An appliance with the sample's recipient keys on two SMC-Bs and the mailbox ``mu@…``."""
    root = tmp_path_factory.mktemp("gematik-sample")
    launcher, app = private_appliance(template_dir, root)
    try:
        code, _ = app.stop()
        assert code == 0, app.stderr()
        for who, (iccsn, stem) in CARDS.items():
            folder = gematik_sample / who
            done = cli(
                "card", "import", "--data-dir", str(app.data_dir), "--iccsn", iccsn,
                "--key", str(folder / f"{stem}.prv.pem"), "--cert", str(folder / f"{stem}.pem"),
                cwd=root,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        restarted = launcher.start(app.data_dir)
        done = cli(
            "account", "add", "--data-dir", str(app.data_dir), "--password", PASSWORD,
            "--display-name", "Steffi Musterempfaenger", ACCOUNT, cwd=root,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield restarted
    finally:
        launcher.close()


def _mailbox(app: Appliance) -> dict[str, Any]:
    fd1 = "fd1.kim.telematik-test"
    return {
        "address": ACCOUNT,
        "password": PASSWORD,
        "fachdienst": fd1,
        "pop3_username": f"{ACCOUNT}#{fd1}:995#Mandant1#PVS1#AP1",
    }


def _sample_outer(gematik_sample: Path) -> tuple[bytes, bytes]:
    """The sample's outer mail (CRLF) as header block and DER body."""
    raw = (gematik_sample / "inputEmail.txt.05.encryptedwrap").read_bytes()
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, base64.b64decode(body)


def _outer(head: bytes, der: bytes) -> bytes:
    return head + b"\r\n\r\n" + base64.encodebytes(der).replace(b"\n", b"\r\n")


def _attached(raw: bytes) -> bytes:
    """The bytes of the error mail's message/rfc822 part, without the Fachdienst's
    Return-Path/Received on top (cut here: no reparsing, which could refold headers)."""
    boundary = BytesParser(policy=default).parsebytes(raw).get_boundary()
    assert boundary is not None
    start = raw.index(b"Content-Type: message/rfc822\r\n")
    start = raw.index(b"\r\n\r\n", start) + 4
    end = raw.index(b"\r\n--" + boundary.encode(), start)
    lines = raw[start:end].split(b"\r\n")
    while lines[0].startswith((b"Return-Path:", b"Received:", b" ", b"\t")):
        lines.pop(0)
    return b"\r\n".join(lines).rstrip(b"\r\n")


def test_sample_unchanged_is_not_decrypted_for_another_address(
    sample_app: Appliance, gematik_sample: Path
) -> None:
    """KOM-LE-A_2043, KOM-LE-A_2046, KOM-LE-A_2047-01: the sample names only komle.de
    addresses in recipient-emails; fetched as mu@… it is not decrypted even though a card in
    the Konnektor holds the key (DecryptionResult 01, 4009), and the sample is attached."""
    head, der = _sample_outer(gematik_sample)
    mailbox = _mailbox(sample_app)
    smtp_send(sample_app, mailbox, [ACCOUNT], _outer(head, der))
    got = cm_wait(sample_app, mailbox, 1)
    error_mail = BytesParser(policy=default).parsebytes(got[0])
    assert error_mail["X-KIM-DecryptionResult"] == "01"
    assert error_mail["X-KIM-Fehlermeldung"] == "4009"
    assert _attached(got[0]) == _outer(head, der).rstrip(b"\r\n")
    assert b"This is a message just to say hello." not in got[0]


def test_sample_decrypts_with_its_recipient_key_on_an_emulated_card(
    sample_app: Appliance, gematik_sample: Path
) -> None:
    """KOM-LE-A_2044, KOM-LE-A_2048-01, A_23165 (digest §2.6, §2.10): with recipient-emails
    pointing musterempfaenger's certificate (recipient B, serial 9F52A80078E4) at mu@…, the
    Clientmodul unwraps the content key on the imported card and decrypts gematik's sample;
    the decrypted inner mail equals the sample's plaintext byte for byte
    (inputEmail.txt.01.rfc822wrap without its ``Content-Type: message/rfc822`` line).
    Integrity: 05 (gematik's CA is not a trust anchor here) and 09 (recipient-emails differ),
    so it comes as the integrity error mail with the decrypted original (DecryptionResult 00)."""
    head, der = _sample_outer(gematik_sample)
    assert der.count(SAMPLE_RECIPIENT.encode()) == 1
    assert len(SAMPLE_RECIPIENT) == len(ACCOUNT)
    mailbox = _mailbox(sample_app)
    smtp_send(sample_app, mailbox, [ACCOUNT], _outer(head, der.replace(
        SAMPLE_RECIPIENT.encode(), ACCOUNT.encode())))  # fmt: skip
    got = cm_wait(sample_app, mailbox, 1)
    error_mail = BytesParser(policy=default).parsebytes(got[0])
    assert error_mail["X-KIM-DecryptionResult"] == "00", got[0][:3000]
    assert sorted(error_mail.get_all("X-KIM-IntegrityCheckResult", [])) == ["05", "09"]
    wrapped = (gematik_sample / "inputEmail.txt.01.rfc822wrap").read_bytes()
    prefix = b"Content-Type: message/rfc822\r\n\r\n"
    assert wrapped.startswith(prefix)
    plaintext = wrapped[len(prefix) :]
    assert _attached(got[0]) == plaintext.rstrip(b"\r\n")
