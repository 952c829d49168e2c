"""The Fachdienst's absence-note auto-reply (KOM-LE-A_2223, A_2277, A_2278; RFC 3834).

While a participant's absence note is active, the Fachdienst answers a sender with an unsigned,
unencrypted mail (it reaches the receiving Clientmodul without ``X-KOM-LE-Version`` and passes
through to the PVS). Its layout is not published (digest §7.1); we follow RFC 3834: the note's
text, ``Auto-Submitted: auto-replied``, In-Reply-To/References to the message answered, and the
Dienstkennung ``KIM-Mail;Abwesend;V1.0`` (digest §2.4). :func:`wants_auto_reply` says whether a
message may be answered at all (never automatic mail, delivery reports, mailing lists or the
null sender). This module builds bytes only.
"""

from __future__ import annotations

import email.utils
import uuid
from datetime import datetime
from email.header import Header

from kim_appliance.mail.headers import HeaderBlock

DIENSTKENNUNG = "KIM-Mail;Abwesend;V1.0"


def wants_auto_reply(header: HeaderBlock, *, mail_from: str) -> bool:
    """RFC 3834 §2: no reply to the null sender, to auto-submitted mail, to delivery reports, or
    to list and bulk mail."""
    if not mail_from:
        return False
    auto = (header.get("Auto-Submitted") or "no").strip().lower()
    if auto != "no":
        return False
    if (header.get("Precedence") or "").strip().lower() in ("bulk", "list", "junk"):
        return False
    if header.get("List-Id") is not None or header.get("List-Unsubscribe") is not None:
        return False
    content_type = (header.get("Content-Type") or "").lower()
    return "report-type=delivery-status" not in content_type.replace(" ", "")


def build_auto_reply(
    *,
    absent: str,
    display_name: str,
    to: str,
    message: str,
    in_reply_to: str | None,
    domain: str,
    now: datetime | None = None,
) -> bytes:
    """The auto-reply from ``absent`` to ``to`` carrying the note's ``message`` (UTF-8)."""
    now = now or datetime.now().astimezone()
    name = (
        str(Header(display_name, "utf-8").encode()) if not display_name.isascii() else display_name
    )
    subject = str(Header("Abwesenheitsnotiz", "utf-8").encode())
    lines = [
        f"From: {email.utils.formataddr((name, absent))}",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {email.utils.format_datetime(now)}",
        f"Message-ID: <{uuid.uuid4()}@{domain}>",
        "Auto-Submitted: auto-replied",
        f"X-KIM-Dienstkennung: {DIENSTKENNUNG}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    if in_reply_to:
        lines += [f"In-Reply-To: {in_reply_to}", f"References: {in_reply_to}"]
    body = message.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    text = "\r\n".join(lines) + "\r\n\r\n" + "\r\n".join(body) + "\r\n"
    return text.encode("utf-8")
