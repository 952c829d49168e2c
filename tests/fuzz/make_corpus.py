"""Write the seed files of the fixed fuzz corpus: ``python -m tests.fuzz.make_corpus``.

Seeds are realistic inputs of each parser (whole SMTP and POP3 dialogues, LDAP requests built
with ldap3's own encoders, KIM messages sealed with the committed fuzz keys, gematik's sample,
SOAP requests written by zeep from gematik's WSDLs, JWTs) written as ``seed-*`` files, and the
reproductions of issue 11 as ``crash-*`` files. The crashers and slow inputs the fuzzer found
are copied in by hand (``crash-fuzzed-*``, ``slow-fuzzed-*``) and never rewritten here. Seeds
that depend on key material are made with the keys in ``corpus/_keys`` (the JWT trust anchors
and time go to ``corpus/_keys/jwt``), so rewriting them keeps what they exercise, if not
every byte.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from typing import Any

from ldap3.operation.bind import bind_operation
from ldap3.operation.search import search_operation
from ldap3.protocol import rfc4511 as asn
from ldap3.utils.asn1 import encode as ldap3_encode

from .target import CORPUS

#: first byte of a dialogue seed: how the harness splits the rest (see targets_protocols)
WHOLE, BYTEWISE, SEVEN = b"\x00", b"\x01", b"\x07"


def _plain(authzid: str, user: str, password: str) -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def smtp_server_seeds() -> dict[str, bytes]:
    user = "praxis.weber@fd1.kim.telematik-test"
    full = (
        b"EHLO pvs.example\r\n"
        b"AUTH PLAIN " + _plain("", user, "secret") + b"\r\n"
        b"MAIL FROM:<" + user.encode() + b"> SIZE=120 BODY=8BITMIME RET=HDRS ENVID=QQ+2B1\r\n"
        b"RCPT TO:<arzt@fd2.kim.telematik-test> NOTIFY=SUCCESS,FAILURE "
        b"ORCPT=rfc822;arzt+40fd2.kim.telematik-test\r\n"
        b"RCPT TO:<xunknown@fd2.kim.telematik-test>\r\n"
        b"DATA\r\n"
        b"From: <" + user.encode() + b">\r\nSubject: Arztbrief\r\n\r\n..dot-stuffed\r\n"
        b"bare\nlf and bare\rcr\r\n.\r\n"
        b"RSET\r\nNOOP\r\nVRFY x\r\nHELP\r\nQUIT\r\n"
    )
    login = (
        b"EHLO [127.0.0.1]\r\nAUTH LOGIN\r\n" + base64.b64encode(user.encode()) + b"\r\n"
        + base64.b64encode(b"wrong") + b"\r\nAUTH LOGIN " + base64.b64encode(user.encode())
        + b"\r\n*\r\nAUTH PLAIN\r\n" + _plain(user, user, "secret") + b"\r\nQUIT\r\n"
    )  # fmt: skip
    return {
        "seed-full-session": WHOLE + full,
        "seed-full-session-bytewise": BYTEWISE + full,
        "seed-auth-login": SEVEN + login,
        "seed-pipelined": WHOLE
        + b"HELO x\r\nAUTH PLAIN " + _plain("", user, "secret") + b"\r\nMAIL FROM:<>\r\n"
        b"RCPT TO:<postmaster>\r\nDATA\r\n.\r\nQUIT\r\n",
        "seed-errors": WHOLE
        + b"MAIL FROM:<a@b>\r\nEHLO\r\nSTARTTLS\r\nBDAT 1\r\nXYZZY\r\n"
        b"EHLO x\r\nDATA\r\nRCPT TO:<a@b>\r\n" + b"A" * 600 + b"\r\nQUIT\r\n",
        # issue 11: "MAIL FROM:<me> X\0=1" was 421 internal error (a NUL quoted in the reply)
        "crash-mail-param-nul": WHOLE
        + b"EHLO x\r\nAUTH PLAIN " + _plain("", user, "secret") + b"\r\n"
        b"MAIL FROM:<me@x> X\0=1\r\nMAIL FROM:<me\0@x>\r\nMAIL FROM:<me@x> SIZE=1\x01\r\nQUIT\r\n",
        # a long username quoted in the 535 reply
        "crash-auth-long-username": WHOLE
        + b"EHLO x\r\nAUTH PLAIN " + _plain("", "u" * 450 + "@x", "wrong") + b"\r\nQUIT\r\n",
    }  # fmt: skip


def smtp_client_seeds() -> dict[str, bytes]:
    replies = (
        b"220 fd1.kim.telematik-test ESMTP ready\r\n"
        b"250-fd1.kim.telematik-test\r\n250-PIPELINING\r\n250-SIZE 734003200\r\n"
        b"250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 AUTH PLAIN LOGIN\r\n"
        b"235 2.7.0 authentication successful\r\n250 2.1.0 sender ok\r\n"
        b"250 2.1.5 recipient ok\r\n354 end data with <CR><LF>.<CR><LF>\r\n"
        b"250 2.0.0 queued\r\n221 2.0.0 closing connection\r\n"
    )
    refusal = (
        b"220 x ESMTP\r\n250-x\r\n250 AUTH=LOGIN\r\n535 5.7.8 no\r\n"
        b"530 5.7.0 authentication required\r\n503 5.5.1 need MAIL\r\n554 no\r\n421 bye\r\n"
    )
    return {
        "seed-session": WHOLE + replies,
        "seed-session-bytewise": BYTEWISE + replies,
        "seed-refusals": SEVEN + refusal,
        "seed-challenge": WHOLE + b"220 x\r\n250-x\r\n250 AUTH PLAIN\r\n334 \r\n501 5.0.0 no\r\n",
    }


def pop3_server_seeds() -> dict[str, bytes]:
    user = "praxis.weber@fd1.kim.telematik-test"
    session = (
        b"CAPA\r\nUSER " + user.encode() + b"\r\nPASS wrong password\r\n"
        b"AUTH PLAIN " + _plain("", user, "secret") + b"\r\n"
        b"STAT\r\nLIST\r\nLIST 2\r\nLIST 9\r\nUIDL\r\nUIDL 1\r\nTOP 1 0\r\nRETR 2\r\n"
        b"DELE 1\r\nRSET\r\nNOOP\r\nQUIT\r\n"
    )
    return {
        "seed-session": WHOLE + session,
        "seed-session-bytewise": BYTEWISE + session,
        "seed-sasl-continuation": SEVEN
        + b"AUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n" + _plain(user, user, "secret") + b"\r\n"
        b"APOP " + user.encode() + b" 0123456789abcdef0123456789ABCDEF\r\nSTAT\r\nQUIT\r\n",
        "seed-errors": WHOLE
        + b"STAT\r\nRETR\r\nRETR 99999999999\r\nTOP 1\r\nFOO\r\n\r\n" + b"B" * 300
        + b"\r\nAUTH CRAM-MD5\r\nPASS x\r\nQUIT\r\n",
        # issue 11: CR/LF, NUL and a 450-character username inside AUTH PLAIN credentials
        # were "-ERR internal error" (and a forged log line)
        "crash-auth-plain-crlf": WHOLE
        + b"AUTH PLAIN " + _plain("", "evil\r\n+OK forged", "x") + b"\r\n"
        b"AUTH PLAIN " + _plain("", "nul\0user", "x") + b"\r\nQUIT\r\n",
        "crash-auth-plain-long-username": WHOLE
        + b"AUTH PLAIN\r\n" + _plain("", "u" * 450 + "@fd1.kim.telematik-test", "x")
        + b"\r\nAUTH PLAIN\r\n" + _plain("", "v" * 3000, "x") + b"\r\nQUIT\r\n",
    }  # fmt: skip


def pop3_client_seeds() -> dict[str, bytes]:
    answers = (
        b"+OK fd1.kim.telematik-test POP3 server ready <1.2@fd1>\r\n"
        b"+OK capability list follows\r\nUSER\r\nSASL PLAIN\r\nTOP\r\n.\r\n"
        b"+ \r\n+OK logged in\r\n+OK 2 120\r\n+OK 2 messages\r\n1 60\r\n2 60\r\n.\r\n"
        b"+OK 1 uid-1\r\n+OK 60 octets\r\nSubject: x\r\n\r\n..dot\r\nbody\r\n.\r\n"
        b"+OK\r\nSubject: y\r\n\r\n.\r\n+OK message 1 deleted\r\n+OK bye\r\n"
    )
    return {
        "seed-session": WHOLE + answers,
        "seed-session-bytewise": BYTEWISE + answers,
        "seed-errors": SEVEN
        + b"+OK hi\r\n-ERR [SYS/TEMP] busy\r\n-ERR [AUTH] wrong\r\n-ERR\r\n-ERR [IN-USE]\r\n",
    }


def _ldap_pdu(message_id: int, name: str, op: Any) -> bytes:
    message = asn.LDAPMessage()
    message["messageID"] = asn.MessageID(message_id)
    message["protocolOp"] = asn.ProtocolOp().setComponentByName(name, op)
    data: bytes = ldap3_encode(message)
    return data


def _search(message_id: int, text: str, attributes: list[str]) -> bytes:
    op = search_operation("dc=data,dc=vzd", text, 2, 0, attributes, 10, 0, False, False, False)
    return _ldap_pdu(message_id, "searchRequest", op)


def ldap_seeds() -> dict[str, bytes]:
    bind = _ldap_pdu(1, "bindRequest", bind_operation(3, "SIMPLE", "cn=admin", "secret"))
    anonymous = _ldap_pdu(2, "bindRequest", bind_operation(3, "ANONYMOUS", "", None))
    searches = [
        _search(3, "(mail=praxis.weber@fd1.kim.telematik-test)", ["*"]),
        _search(4, "(&(objectClass=*)(|(cn=Dr*Weber)(sn~=meyer))(!(ou>=a)))", ["cn", "mail"]),
        _search(5, "(&(telematikID=1-*-8831*)(userCertificate;binary=*)(sn<=z))", ["1.1"]),
        _search(6, "(cn:caseExactMatch:=Weber)", ["+"]),
    ]
    unbind = _ldap_pdu(7, "unbindRequest", asn.UnbindRequest(""))
    start_tls = asn.ExtendedRequest()
    start_tls["requestName"] = asn.RequestName("1.3.6.1.4.1.1466.20037")
    seeds = {
        "seed-bind": bind,
        "seed-anonymous-bind": anonymous,
        "seed-unbind": unbind,
        # issue 11: an OCTET STRING with an 8-octet length was an OverflowError in pyasn1
        "crash-octet-string-8-octet-length": bytes.fromhex(
            "3013020101630e0488ffffffffffffffff00000000"
        ),
    }
    for index, search in enumerate(searches):
        seeds[f"seed-search-{index}"] = search
    # issue 14: the paged results control (RFC 2696), critical, with a cookie; StartTLS
    seeds["seed-search-paged"] = _paged_search(8, b"cookie-of-the-last-page")
    seeds["seed-starttls"] = _ldap_pdu(9, "extendedReq", start_tls)
    return seeds


def _paged_search(message_id: int, cookie: bytes) -> bytes:
    from ldap3.protocol.rfc2696 import paged_search_control

    op = search_operation("dc=data,dc=vzd", "(mail=*)", 2, 0, ["mail"], 0, 0, False, False, False)
    message = asn.LDAPMessage()
    message["messageID"] = asn.MessageID(message_id)
    message["protocolOp"] = asn.ProtocolOp().setComponentByName("searchRequest", op)
    controls = asn.Controls()
    controls.setComponentByPosition(0, paged_search_control(True, 10, cookie))
    message["controls"] = controls
    data: bytes = ldap3_encode(message)
    return data


def ldap_server_seeds() -> dict[str, bytes]:
    seeds = ldap_seeds()
    session = seeds["seed-bind"] + b"".join(v for k, v in seeds.items() if "search" in k)
    return {
        **{k: WHOLE + v for k, v in seeds.items()},
        "seed-session": WHOLE + session + seeds["seed-unbind"],
        "seed-session-bytewise": SEVEN + session,
    }


# --- KIM messages -------------------------------------------------------------------------------

INNER_MAILS = {
    "text": b"From: Arzt Fuzz <arzt.fuzz@fd2.kim.telematik-test>\r\n"
    b"To: <praxis.fuzz@fd1.kim.telematik-test>\r\nSubject: Arztbrief\r\n"
    b"Date: Mon, 1 Dec 2025 10:00:00 +0000\r\nMessage-ID: <fuzz-1@fd2.kim.telematik-test>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"Sehr geehrte Kollegin,\r\nanbei der Befund.\r\n.\r\n",
    "quoted-printable": b"From: <arzt.fuzz@fd2.kim.telematik-test>\r\n"
    b"To: <praxis.fuzz@fd1.kim.telematik-test>\r\nSubject: =?utf-8?q?Befund_f=C3=BCr?=\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe,=\r\n Dr. M.\r\n",
    "html": b"From: <arzt.fuzz@fd2.kim.telematik-test>\r\nTo: <praxis.fuzz@fd1.kim.telematik-test>"
    b"\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><body><p>Befund</p></body></html>\r\n",
    "multipart": b"From: <arzt.fuzz@fd2.kim.telematik-test>\r\n"
    b'To: <praxis.fuzz@fd1.kim.telematik-test>, "Dr. X" <x@fd1.kim.telematik-test>\r\n'
    b"Cc: (Kopie) <cc@fd1.kim.telematik-test>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\npreamble\r\n--b1\r\n'
    b"Content-Type: text/plain\r\n\r\nText\r\n--b1\r\n"
    b"Content-Type: application/pdf; name=befund.pdf\r\nContent-Transfer-Encoding: base64\r\n"
    b"\r\nJVBERi0xLjQK\r\n--b1--\r\nepilogue\r\n",
    "eau": b"From: <arzt.fuzz@fd2.kim.telematik-test>\r\nTo: <praxis.fuzz@fd1.kim.telematik-test>"
    b"\r\nX-KIM-Dienstkennung: eAU-Arbeitgeber;Einsenden;V1.0\r\nContent-Type: application/xml"
    b"\r\n\r\n<eau/>\r\n",
}


def _sealed(inner: bytes, signer: Any) -> bytes:
    """A KIM message for the fuzz recipient (RSA and ECC certificates), signed by ``signer``."""
    import datetime as dt
    import io

    from kim_appliance.mail.seal import Certified, seal

    from .world import ADDRESS, SENDER, keys

    world = keys()
    out = io.BytesIO()
    seal(
        io.BytesIO(inner), out, signer=signer,
        sender=[Certified(SENDER, world.sign_rsa.certificate)],
        recipients=[Certified(ADDRESS, world.enc_rsa.certificate),
                    Certified(ADDRESS, world.enc_ecc.certificate)],
        signing_time=dt.datetime(2025, 12, 1, 10, 0, tzinfo=dt.UTC),
    )  # fmt: skip
    return out.getvalue()


def _split_outer(outer: bytes) -> tuple[bytes, bytes]:
    """(header with its blank line, the DER of the base64 body)."""
    head, _, body = outer.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", base64.b64decode(body)


def _decrypt(der: bytes) -> bytes:
    """The signed entity inside an AuthEnvelopedData for the fuzz recipient."""
    from kim_appliance.cms.enveloped import AuthEnvelopedReader, find_recipient

    from .world import keys

    reader = AuthEnvelopedReader()
    reader.feed(der)
    reader.feed_eof()
    assert reader.recipient_infos is not None
    info, key = find_recipient(reader.recipient_infos, [keys().enc_rsa])
    reader.set_content_key(info.unwrap(key))
    with reader.finish() as plaintext:
        return bytes(plaintext.read())


def _entity_der(entity: bytes) -> bytes:
    return entity.partition(b"\r\n\r\n")[2]


def _unknown_key_algorithm(signed_der: bytes) -> bytes:
    """The SignedData with its signer certificate's key algorithm replaced by an OID nobody
    knows (1.2.840.113549.1.1.127): issue 11's poison message, UnsupportedAlgorithm in verify."""
    rsa_encryption = bytes.fromhex("06092a864886f70d010101")
    assert signed_der.count(rsa_encryption) == 1, "one RSA SubjectPublicKeyInfo expected"
    return signed_der.replace(rsa_encryption, bytes.fromhex("06092a864886f70d01017f"))


def _encrypt_entity(entity: bytes) -> bytes:
    """An outer mail carrying ``entity`` (a signed entity) encrypted for the fuzz recipient."""
    from kim_appliance.cms.enveloped import AuthEnvelopedWriter, EncryptionRecipient
    from kim_appliance.cms.recipient_emails import RecipientEmail, encode_recipient_emails
    from kim_appliance.mail.headers import parse_header_block
    from kim_appliance.mail.outer import build_outer_header

    from .world import ADDRESS, keys

    certificate = keys().enc_rsa.certificate
    emails = encode_recipient_emails([RecipientEmail.for_certificate(ADDRESS, certificate)])
    writer = AuthEnvelopedWriter(
        [EncryptionRecipient(ADDRESS, certificate)], unauth_recipient_emails=emails
    )
    der = writer.header() + writer.update(entity) + writer.finalize()
    inner = parse_header_block(INNER_MAILS["text"].partition(b"\r\n\r\n")[0] + b"\r\n")
    return build_outer_header(inner) + base64.encodebytes(der).replace(b"\n", b"\r\n")


def kim_messages() -> dict[str, bytes]:
    """name -> outer mail, sealed with the committed fuzz keys, plus the poison message."""
    from .world import keys

    world = keys()
    messages = {
        f"{kind}-{signer}": _sealed(inner, getattr(world, f"sign_{signer}"))
        for kind, inner in INNER_MAILS.items()
        for signer in ("rsa", "ecc")
        if signer == "rsa" or kind == "text"
    }
    entity = _decrypt(_split_outer(messages["text-rsa"])[1])
    head, _, signed = entity.partition(b"\r\n\r\n")
    messages["poison-unknown-key-algorithm"] = _encrypt_entity(
        head + b"\r\n\r\n" + _unknown_key_algorithm(signed)
    )
    return messages


def _gematik() -> dict[str, bytes]:
    from .world import gematik_files

    return gematik_files()


def mime_unseal_seeds() -> dict[str, bytes]:
    seeds = {}
    for name, outer in kim_messages().items():
        head, der = _split_outer(outer)
        prefix = "crash" if name.startswith("poison") else "seed"
        seeds[f"{prefix}-{name}-binary"] = b"\x01" + head + der
        if name in ("text-rsa", "poison-unknown-key-algorithm"):
            seeds[f"{prefix}-{name}-base64"] = b"\x00" + outer
    seeds["seed-gematik-base64"] = b"\x00" + _gematik()["inputEmail.txt.05.encryptedwrap"]
    return seeds


def cms_enveloped_seeds() -> dict[str, bytes]:
    seeds = {f"seed-{n}": _split_outer(m)[1] for n, m in kim_messages().items() if "rsa" in n}
    seeds["seed-gematik"] = _gematik()["inputEmail.txt.04.encryptedcms"]
    return seeds


def cms_signed_seeds() -> dict[str, bytes]:
    seeds = {}
    for name, outer in kim_messages().items():
        der = _entity_der(_decrypt(_split_outer(outer)[1]))
        prefix = "crash" if name.startswith("poison") else "seed"
        if name.startswith(("text", "poison")):
            seeds[f"{prefix}-{name}"] = der
    seeds["seed-gematik"] = _gematik()["inputEmail.txt.02.signedcms"]
    return seeds


def cms_repair_seeds() -> dict[str, bytes]:
    signed = cms_signed_seeds()
    canonical = signed["seed-text-rsa"].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return {
        "seed-gematik-damaged": _entity_der(_gematik()["inputEmail.txt.03.signedwrap"]),
        "seed-canonicalised": canonical,
        "seed-intact": signed["seed-text-ecc"],
    }


def recipient_emails_seeds() -> dict[str, bytes]:
    from kim_appliance.cms.recipient_emails import RecipientEmail, encode_recipient_emails

    from .world import ADDRESS, SENDER, keys

    world = keys()
    entries = [
        RecipientEmail.for_certificate(ADDRESS, world.enc_rsa.certificate),
        RecipientEmail.for_certificate(ADDRESS, world.enc_ecc.certificate),
        RecipientEmail.for_certificate(SENDER, world.sign_rsa.certificate),
    ]
    return {
        "seed-three": encode_recipient_emails(entries),
        "seed-one": encode_recipient_emails(entries[:1]),
    }


def mail_seeds() -> dict[str, bytes]:
    seeds = {f"seed-inner-{k}": v for k, v in INNER_MAILS.items()}
    seeds["seed-outer"] = kim_messages()["text-rsa"][:4000]
    seeds["seed-gematik-inner"] = _gematik()["inputEmail.txt"]
    return seeds


# --- services -------------------------------------------------------------------------------------


def json_body_seeds() -> dict[str, bytes]:
    return {
        "seed-account": b'{"mail": "praxis@fd1.kim.telematik-test", "displayName": "Praxis",'
        b' "telematikID": "1-123", "password": "s3cr3t\\u00e4", "maxMailSize": 734003200}',
        "seed-faults": b'{"card_removed": ["80276883110000100001"], "latency_ms": 1.5,'
        b' "unreachable": false, "clear": null}',
        "seed-nested": b'{"a": [1, -2.5e3, {"b": [true, false, null, "x\\"y"]}]}',
        # issue 11: the Konnektor's /admin/faults died on JSON nested 100,000 deep
        "crash-deep-nesting": b"[" * 8000 + b"]" * 8000,
        "crash-non-finite": b'{"latency_ms": 1e999, "x": NaN, "y": -Infinity}',
        "crash-huge-integer": b'{"n": ' + b"9" * 5000 + b"}",
    }


def _jwt_world() -> dict[str, bytes]:
    """Tokens of two demo cards' AUT keys; the trust anchors and the time go to _keys/jwt."""
    import datetime as dt
    import json

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

    from kim_appliance.pki import TestPki
    from kim_appliance.pki.jwt import build_jwt

    from .targets_services import JWT_WORLD
    from .world import demo_world

    world = demo_world()
    pki = TestPki.load(world.data_dir / "pki")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    JWT_WORLD.mkdir(parents=True, exist_ok=True)
    for old in JWT_WORLD.glob("*.pem"):
        old.unlink()
    for index, cert in enumerate([*(r.certificate for r in pki.roots),
                                  *(c.certificate for c in pki.intermediates)]):  # fmt: skip
        (JWT_WORLD / f"ca-{index}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (JWT_WORLD / "world.json").write_text(json.dumps({"now": now.isoformat()}) + "\n")
    tokens = {}
    for card, kind in (("praxis.weber", "rsa"), ("apotheke.sonne", "ecc")):
        directory = world.data_dir / "cards" / card
        key = serialization.load_pem_private_key(
            (directory / f"aut-{kind}.key.pem").read_bytes(), None
        )
        from cryptography import x509

        cert = x509.load_pem_x509_certificate((directory / f"aut-{kind}.cert.pem").read_bytes())

        def sign(digest: bytes, key: object = key) -> bytes:
            if isinstance(key, rsa.RSAPrivateKey):
                pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
                return key.sign(digest, pss, Prehashed(hashes.SHA256()))
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        token = build_jwt(certificate=cert, sign=sign, subject=f"{card}@fd.kim.telematik-test",
                          now=now)  # fmt: skip
        tokens[f"seed-{card}-{kind}"] = token.encode("ascii")
    return tokens


def jwt_seeds() -> dict[str, bytes]:
    tokens = _jwt_world()
    header = base64.urlsafe_b64encode(b'{"alg":"PS256","x5c":["AAAA"]}').rstrip(b"=")
    deep = base64.urlsafe_b64encode(b"[" * 5000).rstrip(b"=")
    return {
        **tokens,
        "seed-bad-certificate": header + b".e30.AAAA",
        "seed-deep-json": deep + b".e30.AAAA",
    }


def soap_envelope_seeds() -> dict[str, bytes]:
    soap = soap_seeds()
    return {name: data[1:] for name, data in soap.items()}


def _zeep_requests() -> dict[str, bytes]:
    """Requests of every served operation, written by zeep from gematik's WSDLs (the way a
    PVS's SOAP stack writes them), with card handles as placeholders."""
    import hashlib

    import zeep
    from cryptography.hazmat.primitives import serialization
    from lxml import etree

    from kim_appliance.cms.recipient_emails import RecipientEmail, encode_recipient_emails
    from kim_appliance.konnektor.soap.services import SERVICES, SERVICES_BY_NAME

    from .targets_services import HANDLE_PLACEHOLDERS, _dispatcher

    dispatcher, replacements = _dispatcher()
    konnektor = dispatcher.konnektor  # type: ignore[attr-defined]
    handle = {HANDLE_PLACEHOLDERS[p]: h.decode() for p, h in replacements.items()}
    weber, sonne = "80276883110000100001", "80276883110000100002"
    ctx = {"MandantId": "Mandant1", "ClientSystemId": "PVS1", "WorkplaceId": "AP1"}
    from kim_appliance.konnektor import Context

    context = Context("Mandant1", "PVS1", "AP1", "dr.meyer")
    enc = konnektor.read_card_certificate(context, handle[weber], "C.ENC", "RSA")
    emails = encode_recipient_emails(
        [RecipientEmail.for_certificate("praxis.weber@fd1.kim.telematik-test", enc)]
    )
    holder = etree.Element("CMSAttribute")
    holder.text = base64.b64encode(emails).decode("ascii")
    prop = {"Identifier": "RecipientEmailsAttribute", "Value": {"_value_1": [holder]}}
    document = b"Content-Type: message/rfc822\r\n\r\nFrom: a@b\r\nSubject: eAU\r\n\r\nHallo\r\n"
    calls: dict[str, tuple[str, str, dict[str, object]]] = {
        "get-cards": ("EventService", "GetCards", {"Context": ctx, "CardType": "SMC-B"}),
        "get-card-terminals": ("EventService", "GetCardTerminals", {"Context": ctx}),
        "get-pin-status": ("CardService", "GetPinStatus",
                           {"Context": ctx, "CardHandle": handle[weber], "PinTyp": "PIN.SMC"}),
        "verify-pin": ("CardService", "VerifyPin",
                       {"Context": ctx, "CardHandle": handle[weber], "PinTyp": "PIN.SMC"}),
        "read-card-certificate": ("CertificateService", "ReadCardCertificate", {
            "CardHandle": handle[sonne], "Context": ctx,
            "CertRefList": {"CertRef": ["C.ENC", "C.AUT"]}, "Crypt": "ECC"}),
        "verify-certificate": ("CertificateService", "VerifyCertificate", {
            "Context": ctx, "X509Certificate": enc.public_bytes(serialization.Encoding.DER)}),
        "get-job-number": ("SignatureService", "GetJobNumber", {"Context": ctx}),
        "sign-document": ("SignatureService", "SignDocument", {
            "CardHandle": handle[weber], "Crypt": "RSA", "Context": ctx, "TvMode": "NONE",
            "JobNumber": "ABC-123", "SignRequest": [{
                "RequestID": "SignRequestNo_001",
                "OptionalInputs": {
                    "SignatureType": "urn:ietf:rfc:5652",
                    "Properties": {"SignedProperties": {"Property": [prop]}},
                    "IncludeEContent": True,
                },
                "Document": {"Base64Data": {"_value_1": document, "MimeType": "text/plain"}},
                "IncludeRevocationInfo": False,
            }]}),
        "verify-document": ("SignatureService", "VerifyDocument", {
            "Context": ctx, "TvMode": "NONE",
            "OptionalInputs": {"ReturnVerificationReport": {"IncludeVerifier": False}},
            "SignatureObject": {"Base64Signature": {
                "_value_1": cms_signed_seeds()["seed-text-rsa"], "Type": "urn:ietf:rfc:5652"}},
            "IncludeRevocationInfo": False}),
        "encrypt-document": ("EncryptionService", "EncryptDocument", {
            "Context": ctx,
            "RecipientKeys": {"Certificate": [enc.public_bytes(serialization.Encoding.DER)]},
            "Document": {"Base64Data": {"_value_1": document, "MimeType": "message/rfc822"}},
            "OptionalInputs": {"EncryptionType": "urn:ietf:rfc:5652",
                               "UnprotectedProperties": {"Property": [prop]}}}),
        "decrypt-document": ("EncryptionService", "DecryptDocument", {
            "Context": ctx,
            "PrivateKeyOnCard": {"CardHandle": handle[weber], "KeyReference": "C.ENC",
                                 "Crypt": "RSA"},
            "Document": {"Base64Data": {"_value_1": b"0\x80\x06\x0b*\x86H\x86\xf7\r"}}}),
        "external-authenticate": ("AuthSignatureService", "ExternalAuthenticate", {
            "CardHandle": handle[sonne], "Context": ctx,
            "OptionalInputs": {"SignatureType": "urn:bsi:tr:03111:ecdsa"},
            "BinaryString": {"Base64Data": {"_value_1": hashlib.sha256(b"x").digest()}}}),
    }  # fmt: skip
    requests = {}
    for name, (service, operation, arguments) in calls.items():
        spec = SERVICES_BY_NAME[service]
        settings = zeep.Settings(forbid_entities=False, strict=True)  # gematik WSDLs use them
        client = zeep.Client(wsdl=str(spec.wsdl_path), settings=settings)
        proxy = client.create_service(f"{{{spec.wsdl_namespace}}}{spec.name}Binding", "http://x")
        envelope = client.create_message(proxy, operation, **arguments)
        body = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
        for iccsn_handle_placeholder, iccsn in HANDLE_PLACEHOLDERS.items():
            body = body.replace(handle[iccsn].encode(), iccsn_handle_placeholder)
        requests[name] = bytes([[s.name for s in SERVICES].index(service)]) + body
    return requests


def soap_seeds() -> dict[str, bytes]:
    from kim_appliance.konnektor.soap.services import SERVICES

    seeds = {f"seed-{name}": data for name, data in _zeep_requests().items()}
    first = bytes([0])
    envelope = b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
    seeds["seed-xxe"] = first + (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        + envelope
        + b"<x>&e;</x></s:Body></s:Envelope>"
    )
    seeds["seed-soap12"] = first + (
        b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body/></e:Envelope>'
    )
    seeds["seed-deep"] = (
        first + envelope + b"<a>" * 3000 + b"</a>" * 3000 + b"</s:Body></s:Envelope>"
    )
    seeds["seed-unknown-operation"] = (
        bytes([len(SERVICES) - 1])
        + envelope
        + (b'<x:Nothing xmlns:x="urn:x"/></s:Body></s:Envelope>')
    )
    return seeds


def konnektor_answer_seeds() -> dict[str, bytes]:
    """The demo Konnektor's answers to the Clientmodul's own requests (its SOAP client's
    messages), one per operation, and a fault; the first byte chooses the operation."""
    from kim_appliance.clientmodul.network import konnektor_messages as messages
    from kim_appliance.clientmodul.ports import CallContext, CardType
    from kim_appliance.cms.recipient_emails import RecipientEmail, encode_recipient_emails
    from kim_appliance.konnektor import Context

    from .targets_services import ANSWERS, _dispatcher

    dispatcher, _ = _dispatcher()
    konnektor = dispatcher.konnektor  # type: ignore[attr-defined]
    context = CallContext("Mandant1", "PVS1", "AP1", "dr.meyer")
    handle = {
        info.iccsn: info.card_handle
        for info in konnektor.get_cards(Context("Mandant1", "PVS1", "AP1", "dr.meyer"))
    }
    klein = handle["80276883110000100003"]
    plain = Context("Mandant1", "PVS1", "AP1")
    enc = konnektor.read_card_certificate(plain, klein, "C.ENC", "RSA")
    emails = encode_recipient_emails(
        [RecipientEmail.for_certificate("zahnarzt.klein@fd1.kim.telematik-test", enc)]
    )
    document = b"Content-Type: message/rfc822\r\n\r\nFrom: a\r\n\r\nHallo\r\n"
    signed = konnektor.sign_document(plain, klein, document, emails)
    encrypted = konnektor.encrypt_document(plain, [enc], signed, emails)
    requests = {
        "GetCardsResponse": ("EventService", messages.get_cards(context, CardType.SMC_B), None),
        "GetPinStatusResponse": (
            "CardService", messages.get_pin_status(context, klein, "PIN.SMC"), None,
        ),
        "ReadCardCertificateResponse": (
            "CertificateService", messages.read_card_certificate(context, klein, "C.ENC", "RSA"),
            None,
        ),
        "VerifyCertificateResponse": (
            "CertificateService", messages.verify_certificate(context, enc, None), None,
        ),
        "GetJobNumberResponse": ("SignatureService", messages.get_job_number(context), None),
        "SignDocumentResponse": (
            "SignatureService",
            messages.sign_document(context, klein, "RSA_ECC", "KIM-001", emails), document,
        ),
        "DecryptDocumentResponse": (
            "EncryptionService", messages.decrypt_document(context, klein, "RSA"), encrypted,
        ),
        "ExternalAuthenticateResponse": (
            "AuthSignatureService",
            messages.external_authenticate(context, klein, b"\x01" * 32, "RSASSA-PSS"), None,
        ),
    }  # fmt: skip
    names = [name for _, name, _, _ in ANSWERS]
    seeds: dict[str, bytes] = {}
    for name, (service, request, payload) in requests.items():
        body = messages.joined(messages.envelope(request, payload))
        reply = dispatcher.handle(service, body)  # type: ignore[attr-defined]
        assert reply.status == 200, (name, reply.body[:500])
        seeds[f"seed-{name}"] = bytes([names.index(name) + len(names) * 16]) + reply.body
    fault = dispatcher.handle(  # type: ignore[attr-defined]
        "EventService",
        messages.joined(messages.envelope(messages.get_cards(CallContext("X", "Y", "Z"), None))),
    )
    seeds["seed-fault-4004"] = bytes([0]) + fault.body
    return seeds


def connector_sds_seeds() -> dict[str, bytes]:
    from kim_appliance.konnektor.soap.directory import connector_sds

    return {
        "seed-tls": connector_sds("https://127.0.0.1:4443", tls=True, client_auth=True),
        "seed-plain": connector_sds("http://localhost:80", tls=False, client_auth=False),
    }


SEEDS: dict[str, Callable[[], dict[str, bytes]]] = {
    "smtp_server": smtp_server_seeds,
    "smtp_client": smtp_client_seeds,
    "pop3_server": pop3_server_seeds,
    "pop3_client": pop3_client_seeds,
    "ldap_ber": ldap_seeds,
    "ldap_server": ldap_server_seeds,
    "cms_signed": cms_signed_seeds,
    "cms_enveloped": cms_enveloped_seeds,
    "cms_repair": cms_repair_seeds,
    "recipient_emails": recipient_emails_seeds,
    "mime_unseal": mime_unseal_seeds,
    "mime_headers": mail_seeds,
    "mime_notes": mail_seeds,
    "errormail": mail_seeds,
    "dsn": mail_seeds,
    "json_body": json_body_seeds,
    "jwt": jwt_seeds,
    "soap_envelope": soap_envelope_seeds,
    "soap": soap_seeds,
    "konnektor_answers": konnektor_answer_seeds,
    "connector_sds": connector_sds_seeds,
}


def write(names: Iterable[str] | None = None) -> None:
    for name in names or SEEDS:
        directory = CORPUS / name
        directory.mkdir(parents=True, exist_ok=True)
        for file_name, data in SEEDS[name]().items():
            (directory / file_name).write_bytes(data)
            print(f"{directory.name}/{file_name}: {len(data)} bytes")


if __name__ == "__main__":
    import sys

    write(sys.argv[1:] or None)
