"""Trace header fields a mail server prepends on arrival: ``Return-Path`` and ``Received``.

RFC 5321 §4.4: every SMTP server that accepts a message prepends one ``Received`` field; the
server that makes the final delivery also prepends ``Return-Path`` with the reverse-path of
MAIL FROM. The Fachdienst adds both on arrival and the receiving Clientmodul carries them over
(digest §2.2). This module only formats these fields (folded, CRLF line ends, ASCII). It must
never include a password or the authenticated identity, and never copies a value the client
chose (HELO name, addresses) into the header without checking its syntax: a CR or LF in such a
value would inject header fields.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
from datetime import datetime

#: RFC 3848 protocol types (``with`` clause) a KIM mail server uses.
PROTOCOLS = frozenset({"SMTP", "ESMTP", "ESMTPA", "ESMTPS", "ESMTPSA", "LMTP"})

_DOMAIN = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_ADDRESS_LITERAL = re.compile(r"\[(?:IPv6:[0-9A-Fa-f:.]+|[0-9.]+)\]")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")
# what may appear in a Received path: printable ASCII without <, > and whitespace
_PATH_CHARS = re.compile(r"[!-;=?-~]*")
_COMMENT_UNSAFE = re.compile(r"[^ -'*-\[\]-~]")  # no controls, parentheses or backslash


def _address_literal(ip: str) -> str:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3)."""
    try:
        parsed = ipaddress.ip_address(ip.strip().strip("[]").removeprefix("IPv6:"))
    except ValueError:
        raise ValueError(f"Received from_ip {ip!r}: not an IP address") from None
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return f"[{parsed.ipv4_mapped}]"
        return f"[IPv6:{parsed.compressed}]"
    return f"[{parsed}]"


def _path(address: str, field: str, *, null_ok: bool) -> str:
    """``<address>``; refuses whitespace, controls, angle brackets and non-ASCII."""
    if not _PATH_CHARS.fullmatch(address) or (not address and not null_ok):
        raise ValueError(f"{field} {address!r}: not a mailbox fit for a trace header")
    return f"<{address}>"


def return_path_header(mail_from: str) -> bytes:
    """``Return-Path: <mail_from>`` (``<>`` for the null reverse-path), RFC 5321 §4.4."""
    path = _path(mail_from, "Return-Path", null_ok=True)
    return f"Return-Path: {path}\r\n".encode("ascii")


def received_header(
    *,
    from_host: str,
    from_ip: str,
    by_host: str,
    protocol: str,
    recipient: str,
    queue_id: str,
    when: datetime,
    tls: str | None,
) -> bytes:
    """One ``Received`` field in the RFC 5321 §4.4 form, folded one clause per line::

        Received: from cm.praxis.example ([192.0.2.10])
        \t(using TLSv1.3 TLS_AES_256_GCM_SHA384)
        \tby mail.fd1.kim.telematik-test (kim-appliance) with ESMTPSA id 4F2A9C
        \tfor <praxis.weber@fd1.kim.telematik-test>; Tue, 02 Jan 2024 10:00:00 +0000

    ``from_host`` is the HELO/EHLO name the client gave; if it is neither a domain nor an
    address literal it is written as ``unknown`` (the address literal always follows).
    ``by_host`` (ours), ``queue_id`` (an atom), ``recipient`` (one address; RFC 5321 §7.6: never
    the whole list) and ``protocol`` (RFC 3848, e.g. ESMTPSA / ESMTPS) are checked and raise
    ValueError when malformed. ``when`` must carry a time zone. ``tls`` (protocol and cipher) is
    written as a comment with unsafe characters removed.
    """
    valid_helo = _DOMAIN.fullmatch(from_host) or _ADDRESS_LITERAL.fullmatch(from_host)
    helo = from_host if valid_helo else "unknown"
    if not _DOMAIN.fullmatch(by_host):
        raise ValueError(f"Received by_host {by_host!r}: not a domain name")
    if protocol not in PROTOCOLS:
        raise ValueError(f"Received protocol {protocol!r}: must be one of {sorted(PROTOCOLS)}")
    if not _ATOM.fullmatch(queue_id):
        raise ValueError(f"Received queue_id {queue_id!r}: must be an atom of 1..64 characters")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("Received date: the datetime needs a time zone")
    lines = [f"Received: from {helo} ({_address_literal(from_ip)})"]
    if tls:
        comment = _COMMENT_UNSAFE.sub("", tls).strip()[:200]
        if comment:
            lines.append(f"\t(using {comment})")
    lines.append(f"\tby {by_host} (kim-appliance) with {protocol} id {queue_id}")
    lines.append(
        f"\tfor {_path(recipient, 'Received recipient', null_ok=False)}; "
        f"{email.utils.format_datetime(when)}"
    )
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def trace_prefix(
    *,
    mail_from: str,
    from_host: str,
    from_ip: str,
    by_host: str,
    protocol: str,
    recipient: str,
    queue_id: str,
    when: datetime,
    tls: str | None,
) -> bytes:
    """``Return-Path`` then ``Received``: what the final-delivery server prepends to a message.

    A server that only relays prepends :func:`received_header` alone (RFC 5321 §4.4).
    """
    return return_path_header(mail_from) + received_header(
        from_host=from_host,
        from_ip=from_ip,
        by_host=by_host,
        protocol=protocol,
        recipient=recipient,
        queue_id=queue_id,
        when=when,
        tls=tls,
    )
