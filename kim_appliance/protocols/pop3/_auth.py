"""Credentials on the POP3 wire: SASL PLAIN (RFC 4616 in POP3 per RFC 5034) and APOP (RFC 1939 §7).

APOP is required of the Fachdienst by KOM-LE-A_2151: the server greets with a unique timestamp
``<...>`` and the client logs in with ``APOP name md5hex(timestamp + secret)``. This module only
encodes and checks; it must never see a password store or decide whether a login is allowed.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import secrets

from ._parse import CommandError

# RFC 1939 §7: the timestamp has the syntax of a msg-id (RFC 822): "<" local "@" domain ">".
APOP_TIMESTAMP = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+>")
_APOP_DIGEST = re.compile(r"[0-9a-fA-F]{32}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# RFC 4616 §2 asks for at least 255 octets per field; the Clientmodul's usernames
# (addr#host:port#Mandant#Client#Workplace[#User], digest §1.2) may be up to 1024 characters.
MAX_PLAIN_FIELD = 1024


def make_apop_timestamp(hostname: str) -> str:
    """A fresh, unguessable APOP timestamp for one greeting, e.g. ``<5f1c...@fd.example>``."""
    return f"<{secrets.token_hex(12)}@{hostname}>"


def apop_digest(timestamp: str, secret: str) -> str:
    """The lower-case hex MD5 of ``timestamp`` followed by ``secret`` (RFC 1939 §7)."""
    return hashlib.md5((timestamp + secret).encode("utf-8"), usedforsecurity=False).hexdigest()


def check_apop(timestamp: str, secret: str, digest: str) -> bool:
    """Whether ``digest`` (from an APOP AuthAttempt) proves knowledge of ``secret``."""
    return hmac.compare_digest(apop_digest(timestamp, secret), digest.lower())


def parse_apop_digest(text: str) -> str:
    """The digest argument of APOP, lower-cased; raise :class:`CommandError` if not 32 hex."""
    if not _APOP_DIGEST.match(text):
        raise CommandError("APOP digest must be 32 hexadecimal characters")
    return text.lower()


def encode_plain(username: str, password: str, authzid: str = "") -> str:
    """The base64 SASL PLAIN response ``authzid NUL authcid NUL passwd`` (RFC 4616 §2)."""
    raw = "\0".join((authzid, username, password)).encode("utf-8")
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def decode_plain(text: str) -> tuple[str, str]:
    """Username and password from a base64 SASL PLAIN response; :class:`CommandError` if bad.

    An authorization identity is accepted only when empty or equal to the username: a KIM
    account acts only for itself (digest §3.2: the username is the plain KIM address).
    """
    try:
        raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise CommandError("AUTH PLAIN response is not valid base64") from None
    parts = raw.split(b"\0")
    if len(parts) != 3:
        raise CommandError("AUTH PLAIN response must be authzid NUL authcid NUL password")
    for name, part in zip(("authorization identity", "username", "password"), parts, strict=True):
        if len(part) > MAX_PLAIN_FIELD:
            raise CommandError(f"AUTH PLAIN {name} is longer than {MAX_PLAIN_FIELD} octets")
    try:
        authzid, username, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise CommandError("AUTH PLAIN credentials are not valid UTF-8") from None
    if any(_CONTROL.search(field) for field in (authzid, username, password)):
        # RFC 4616 §2 / SASLprep (RFC 4013 §2.3) prohibit them; a CR or LF in a username
        # would break the response line that names it, or forge a log line
        raise CommandError("AUTH PLAIN credentials must not contain control characters")
    if not username or not password:
        raise CommandError("AUTH PLAIN username and password must not be empty")
    if authzid and authzid != username:
        raise CommandError("AUTH PLAIN authorization identity must equal the username")
    return username, password
