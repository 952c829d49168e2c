"""A poison message in the mailbox (issue 11): correctly encrypted for the recipient's card, but
its signer certificate has a key algorithm nobody knows. Before issue 11 the signature check
raised ``UnsupportedAlgorithm`` and the Clientmodul answered STAT, LIST and RETR with ``-ERR
internal error`` on every fetch, for every message of the mailbox. Now the message arrives as
the integrity error mail of digest §1.7 with the decrypted original attached, and the other
messages as usual.
"""

from __future__ import annotations

import base64
import io
import poplib
from email import message_from_bytes, policy
from email.message import EmailMessage
from functools import partial

import pytest
import trio
from cm_support import Kim
from cryptography import x509
from fd_support import make_message

from kim_appliance.cms.enveloped import (
    AuthEnvelopedReader,
    AuthEnvelopedWriter,
    EncryptionRecipient,
    find_recipient,
)
from kim_appliance.cms.keys import SoftwareKey
from kim_appliance.mail.seal import Certified, seal

#: runs in both modes: in-process, and SOAP/LDAPS to the appliance's own listeners
both_modes = pytest.mark.usefixtures("cm_mode")

WEBER, KLEIN = "praxis.weber", "zahnarzt.klein"
#: rsaEncryption in the signer certificate's SubjectPublicKeyInfo, and an OID under the same
#: arc that no library knows (1.2.840.113549.1.1.127)
RSA_ENCRYPTION = bytes.fromhex("06092a864886f70d010101")
UNKNOWN_KEY_ALGORITHM = bytes.fromhex("06092a864886f70d01017f")


def _certified(cm: Kim, local: str) -> list[Certified]:
    p = cm.participant(local)
    return [
        Certified(p.address, x509.load_pem_x509_certificate(c.read_bytes())) for c in p.enc_certs
    ]


def sealed(cm: Kim, sender: str, recipient: str, subject: str) -> bytes:
    """A KIM message from ``sender`` (RSA OSIG key) to ``recipient``."""
    s, r = cm.participant(sender), cm.participant(recipient)
    signer = SoftwareKey.from_files(s.osig_keys[0], s.osig_certs[0])
    inner = make_message(s.address, r.address, subject=subject, body="anbei der Befund.\n")
    out = io.BytesIO()
    seal(io.BytesIO(inner), out, signer=signer, sender=_certified(cm, sender),
         recipients=_certified(cm, recipient))  # fmt: skip
    return out.getvalue()


def poison(cm: Kim, sender: str, recipient: str) -> bytes:
    """``sealed``, opened with the recipient's key, the signer certificate's key algorithm
    replaced by :data:`UNKNOWN_KEY_ALGORITHM`, and encrypted again for the same certificates
    with the same recipient-emails: a message that decrypts, but whose signature nobody can
    check."""
    outer = sealed(cm, sender, recipient, "Vergiftet")
    header, _, body = outer.partition(b"\r\n\r\n")
    reader = AuthEnvelopedReader()
    reader.feed(base64.b64decode(body))
    reader.feed_eof()
    assert reader.recipient_infos is not None
    info, key = find_recipient(reader.recipient_infos, cm.keys(recipient))
    reader.set_content_key(info.unwrap(key))
    with reader.finish() as plaintext:
        entity = bytes(plaintext.read())
    assert entity.count(RSA_ENCRYPTION) == 1, "one RSA SubjectPublicKeyInfo: the signer's"
    entity = entity.replace(RSA_ENCRYPTION, UNKNOWN_KEY_ALGORITHM)
    assert reader.recipient_emails is not None
    writer = AuthEnvelopedWriter(
        [EncryptionRecipient(c.address, c.certificate)
         for c in (*_certified(cm, recipient), *_certified(cm, sender))],
        unauth_recipient_emails=reader.recipient_emails,
    )  # fmt: skip
    der = writer.header() + writer.update(entity) + writer.finalize()
    return header + b"\r\n\r\n" + base64.encodebytes(der).replace(b"\n", b"\r\n")


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def attached_message(message: EmailMessage) -> bytes:
    for part in message.walk():
        if part.get_content_type() == "message/rfc822":
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) else payload
            return bytes(inner.as_bytes(policy=policy.default.clone(linesep="\r\n")))
    raise AssertionError("the error mail has no message/rfc822 part")


@both_modes
async def test_poison_message_arrives_as_error_mail_and_blocks_nothing(cm: Kim) -> None:
    """Issue 11, A_23165, digest §1.6/§1.7: between two good messages, one whose signer
    certificate has an unknown key algorithm. Through the Clientmodul with poplib, STAT, LIST
    and RETR work; the poison arrives as the integrity error mail (DecryptionResult 00,
    IntegrityCheckResult 04 wrong signature format, 4112) with the decrypted original
    attached; the good ones arrive decrypted and verified (01)."""
    first = await trio.to_thread.run_sync(partial(sealed, cm, WEBER, KLEIN, "Erster Befund"))
    bad = await trio.to_thread.run_sync(partial(poison, cm, WEBER, KLEIN))
    last = await trio.to_thread.run_sync(partial(sealed, cm, WEBER, KLEIN, "Letzter Befund"))
    for data in (first, bad, last):
        await trio.to_thread.run_sync(cm.fd_submit, WEBER, KLEIN, data)

    def fetch() -> tuple[tuple[int, int], list[bytes], list[bytes], bytes]:
        pop = cm.pop3_login(KLEIN)
        try:
            stat = pop.stat()
            _, listing, _ = pop.list()
            mails = [b"\r\n".join(pop.retr(n)[1]) + b"\r\n" for n in (1, 2, 3)]
            return stat, listing, mails, pop.quit()
        except poplib.error_proto:
            pop.close()
            raise

    (count, total), listing, mails, bye = await trio.to_thread.run_sync(fetch)
    assert count == 3
    sizes = [int(line.split()[1]) for line in listing]
    assert sizes == [len(m) for m in mails]
    assert total == sum(sizes)
    assert bye.startswith(b"+OK")
    good_first, error, good_last = (parsed(m) for m in mails)
    for good, subject in ((good_first, "Erster Befund"), (good_last, "Letzter Befund")):
        assert good["Subject"] == subject
        assert good["X-KIM-DecryptionResult"] == "00"
        assert good.get_all("X-KIM-IntegrityCheckResult") == ["01"]
    assert error["X-KIM-DecryptionResult"] == "00"
    assert error.get_all("X-KIM-IntegrityCheckResult") == ["04"]
    assert "4112" in (error.get_all("X-KIM-Fehlermeldung") or [])
    assert error.get_content_type() == "multipart/mixed"
    original = attached_message(error)
    assert b"Subject: Vergiftet" in original
    assert b"anbei der Befund." in original
