"""Delivery status notifications (DSN): RFC 3464 ``multipart/report`` mails of the Fachdienst.

A sender asks for them with ``RCPT TO:<…> NOTIFY=SUCCESS,FAILURE[,DELAY]`` (RFC 3461); the
Fachdienst that serves the recipients sends them back (KOM-LE-A_2130/2147, digest §3.2):
every recipient it serves as ``Final-Recipient``, the receipt time as ``Arrival-Date``, and the
**outer** Message-ID as ``In-Reply-To``. Only ``RET=HDRS`` is allowed, so the third part is the
original header as ``text/rfc822-headers`` and never the body. DSNs carry no
``X-KOM-LE-Version`` and no Dienstkennung, are neither signed nor encrypted, and pass the
receiving Clientmodul unchanged (digest §1.6, §3.2).

Choices where the spec is silent (write them down, digest §7):

* Subject: ``Zustellbestaetigung`` when every recipient was delivered (gematik's sample);
  ``Unzustellbar: <original subject>`` when any recipient failed (what Exchange writes in a
  German locale; Postfix writes "Undelivered Mail Returned to Sender"), and ``Zustellung
  verzoegert: <original subject>`` for delays (Exchange: "Zustellung verzögert"). Failure wins
  over delay, delay over success, so a mixed report is titled by its worst news.
* ``From: Mail Delivery Subsystem <mds@DOMAIN>`` (sample), ``Message-ID: <uuid@DOMAIN>``,
  ``Auto-Submitted: auto-replied`` (RFC 3834), ``References`` = ``In-Reply-To``.
* The explanation part is German and English in plain ASCII (umlauts transliterated), so the
  whole report is 7bit. An original header with 8-bit bytes or overlong lines is sent
  quoted-printable.

This module only builds bytes; it must never include the original body, and never write a
value it was given into a header without checking that it cannot break the header (CR/LF).
"""

from __future__ import annotations

import email.header
import email.utils
import quopri
import re
import textwrap
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from kim_appliance.mail.errors import MailFormatError
from kim_appliance.mail.headers import parse_header_block

#: RFC 3464 §2.3.3 action values.
ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})

_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_MAILBOX = re.compile(r"[!-;=?-~]+")  # printable ASCII without whitespace, < and >
_HOST = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_MSG_ID = re.compile(r"<[!-;=?-~]+>")
_LINE_MAX = 78

_ACTION_TEXT = {
    "delivered": "zugestellt / delivered",
    "failed": "nicht zustellbar / could not be delivered",
    "delayed": "verzoegert, wird weiter versucht / delayed, still being retried",
    "relayed": "weitergeleitet, keine weitere Bestaetigung / relayed, no further report",
    "expanded": "an eine Verteilerliste uebergeben / expanded to a list",
}


@dataclass(frozen=True)
class DsnRecipient:
    """One recipient's block of the ``message/delivery-status`` part (RFC 3464 §2.3).

    ``original_recipient`` is the ORCPT address (xtext-decoded), of type rfc822 unless written
    ``type;address``. ``diagnostic`` is the SMTP reply (e.g. ``550 5.1.1 no such mailbox``);
    ``remote_mta`` the host that gave it.
    """

    final_recipient: str
    original_recipient: str | None
    action: str  # "delivered" | "failed" | "delayed" (RFC 3464 also has relayed, expanded)
    status: str  # "2.0.0", "5.1.1", "4.4.1" ... (RFC 3463)
    diagnostic: str | None = None
    remote_mta: str | None = None

    def __post_init__(self) -> None:
        _mailbox(self.final_recipient, "Final-Recipient")
        if self.original_recipient is not None:
            _typed_address(self.original_recipient, "Original-Recipient")
        if self.action not in ACTIONS:
            raise ValueError(f"DSN Action {self.action!r}: must be one of {sorted(ACTIONS)}")
        if not _STATUS.fullmatch(self.status):
            raise ValueError(f"DSN Status {self.status!r}: must be class.subject.detail, 2/4/5")
        expected = {"delivered": "2", "relayed": "2", "expanded": "2", "delayed": "4"}
        cls = self.status[0]
        if (self.action in expected and cls != expected[self.action]) or (
            self.action == "failed" and cls == "2"
        ):
            raise ValueError(
                f"DSN Status {self.status} does not fit Action {self.action} (RFC 3464 §2.3.4)"
            )
        if self.remote_mta is not None and not _HOST.fullmatch(self.remote_mta):
            raise ValueError(f"DSN Remote-MTA {self.remote_mta!r}: not a host name")


def _mailbox(address: str, field: str) -> str:
    if not _MAILBOX.fullmatch(address) or "@" not in address:
        raise ValueError(f"DSN {field} {address!r}: not an address local@domain")
    return address


def _typed_address(value: str, field: str) -> str:
    """``rfc822;addr`` from ``addr`` or an already typed ``type;addr``."""
    kind, sep, address = value.partition(";")
    if sep and re.fullmatch(r"[A-Za-z0-9-]+", kind.strip()):
        return f"{kind.strip()};{_mailbox(address.strip(), field)}"
    return f"rfc822;{_mailbox(value, field)}"


def _ascii_text(text: str, limit: int = 900) -> str:
    """One line of printable ASCII (anything else becomes ``?``), cut to ``limit``."""
    flat = " ".join(text.split())
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in flat)
    return cleaned[:limit]


def _field(name: str, value: str) -> bytes:
    """``Name: value`` folded at spaces to about 78 characters, CRLF (RFC 5322 §2.2.3)."""
    line = f"{name}: "
    lines: list[str] = []
    for word in value.split(" "):
        if len(line) + len(word) > _LINE_MAX and line.strip() and not line.endswith(": "):
            lines.append(line.rstrip(" "))
            line = " "
        line += word + " "
    lines.append(line.rstrip(" "))
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _date(when: datetime, field: str) -> str:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"DSN {field}: the datetime needs a time zone")
    return email.utils.format_datetime(when)


def _header_only(original: bytes) -> bytes:
    """The header block of ``original`` (cut at the first empty line), with CRLF line ends."""
    match = re.search(rb"\r?\n\r?\n", original)
    head = original[: match.start()] if match else original
    if head.startswith((b"\r\n", b"\n")):
        head = b""
    lines = [line.removesuffix(b"\r") for line in head.split(b"\n")]
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


def _original_subject(header: bytes) -> str | None:
    try:
        return parse_header_block(header).get("Subject")
    except MailFormatError:
        return None


def _subject(kind: str, original_subject: str | None) -> bytes:
    if kind == "success":
        return b"Subject: Zustellbestaetigung\r\n"
    prefix = "Unzustellbar" if kind == "failure" else "Zustellung verzoegert"
    text = prefix if not original_subject else f"{prefix}: {original_subject[:200]}"
    text = " ".join(text.split())
    charset = "us-ascii" if text.isascii() else "utf-8"
    encoded = email.header.Header(text, charset, header_name="Subject").encode(linesep="\r\n")
    return b"Subject: " + encoded.encode("ascii") + b"\r\n"


def _explanation(
    kind: str,
    reporting_mta: str,
    message_id: str | None,
    arrival: str,
    rcpts: Sequence[DsnRecipient],
) -> bytes:
    which = f" {message_id}" if message_id else ""
    german = {
        "success": "wurde zugestellt",
        "failure": "konnte nicht allen Empfaengern zugestellt werden",
        "delay": "ist noch nicht allen Empfaengern zugestellt",
    }[kind]
    english = {
        "success": "was delivered",
        "failure": "could not be delivered to every recipient",
        "delay": "has not yet reached every recipient",
    }[kind]
    paragraphs = [
        f"Dies ist eine automatisch erzeugte Nachricht des KIM-Fachdienstes {reporting_mta}. "
        f"Ihre Nachricht{which}, eingegangen am {arrival}, {german}.",
        f"This is an automatically generated message from the KIM Fachdienst {reporting_mta}. "
        f"Your message{which}, received {arrival}, {english}.",
    ]
    lines: list[str] = []
    for paragraph in paragraphs:
        lines += [*textwrap.wrap(paragraph, 76, break_long_words=False), ""]
    lines.append("Empfaenger / Recipients:")
    for rcpt in rcpts:
        lines += textwrap.wrap(
            f"<{rcpt.final_recipient}>: {_ACTION_TEXT[rcpt.action]} ({rcpt.status})",
            76,
            initial_indent="  ",
            subsequent_indent="    ",
            break_long_words=False,
        )
        if rcpt.diagnostic:
            lines += textwrap.wrap(
                _ascii_text(rcpt.diagnostic),
                76,
                initial_indent="    ",
                subsequent_indent="    ",
                break_long_words=False,
            )
    lines += [
        "",
        "Die Kopfzeilen Ihrer Nachricht sind angehaengt, der Inhalt nicht.",
        "The header of your message is attached, its content is not.",
    ]
    return "".join(line + "\r\n" for line in lines).encode("ascii")


def _delivery_status(
    reporting_mta: str, envid: str | None, arrival: str, rcpts: Sequence[DsnRecipient]
) -> bytes:
    out = b""
    if envid is not None:
        out += _field("Original-Envelope-Id", _ascii_text(envid, 200))
    out += _field("Reporting-MTA", f"dns; {reporting_mta}")
    out += _field("Arrival-Date", arrival)
    for rcpt in rcpts:
        out += b"\r\n"
        if rcpt.original_recipient is not None:
            out += _field(
                "Original-Recipient", _typed_address(rcpt.original_recipient, "Original-Recipient")
            )
        out += _field("Final-Recipient", f"rfc822;{rcpt.final_recipient}")
        out += _field("Action", rcpt.action)
        out += _field("Status", rcpt.status)
        if rcpt.remote_mta:
            out += _field("Remote-MTA", f"dns; {rcpt.remote_mta}")
        if rcpt.diagnostic:
            out += _field("Diagnostic-Code", f"smtp; {_ascii_text(rcpt.diagnostic)}")
    return out


def build_dsn(
    *,
    reporting_mta: str,
    dsn_from: str,
    to: str,
    original_header: bytes,
    original_message_id: str | None,
    envid: str | None,
    arrival: datetime,
    recipients: Sequence[DsnRecipient],
    now: datetime | None = None,
) -> bytes:
    """The complete DSN mail (CRLF, 7bit) for the recipients this server reports on.

    ``reporting_mta`` is this Fachdienst's host name, ``dsn_from`` its ``mds@DOMAIN`` address,
    ``to`` the original MAIL FROM (a DSN is never sent to the null sender, RFC 3461 §6.1).
    ``original_header`` is the header of the stored (outer) message; anything after its first
    empty line is cut off, so passing the whole message never leaks the body (RET=HDRS only,
    digest §3.2). ``original_message_id`` is the outer Message-ID (KOM-LE-A_2147); a malformed
    one is left out rather than written into the header. ``envid`` is the xtext-decoded ENVID.
    ``arrival`` is when the message arrived here (t2 of gematik's FAQ), ``now`` the DSN's Date
    (t3, default: the current time). Malformed inputs raise ValueError naming the field.
    """
    if not recipients:
        raise ValueError("DSN recipients: a report needs at least one recipient")
    if not to:
        raise ValueError("DSN To: no report goes to the null reverse-path <> (RFC 3461 §6.1)")
    _mailbox(to, "To")
    domain = _mailbox(dsn_from, "From").rpartition("@")[2]
    if not _HOST.fullmatch(reporting_mta):
        raise ValueError(f"DSN Reporting-MTA {reporting_mta!r}: not a host name")
    arrival_text = _date(arrival, "Arrival-Date")
    date_text = _date(now if now is not None else datetime.now(UTC), "Date")

    actions = {r.action for r in recipients}
    kind = "failure" if "failed" in actions else "delay" if "delayed" in actions else "success"

    message_id: str | None = None
    if original_message_id is not None:
        candidate = original_message_id.strip()
        if not candidate.startswith("<"):
            candidate = f"<{candidate}>"
        if _MSG_ID.fullmatch(candidate):
            message_id = candidate

    header = _header_only(original_header)
    boundary = f"=_kim-dsn-{uuid.uuid4().hex}"

    out = b"Date: " + date_text.encode("ascii") + b"\r\n"
    out += f"From: Mail Delivery Subsystem <{dsn_from}>\r\n".encode("ascii")
    out += f"To: <{to}>\r\n".encode("ascii")
    out += _subject(kind, _original_subject(header))
    out += f"Message-ID: <{uuid.uuid4()}@{domain}>\r\n".encode("ascii")
    if message_id is not None:
        out += _field("In-Reply-To", message_id)
        out += _field("References", message_id)
    out += b"Auto-Submitted: auto-replied\r\n"
    out += b"MIME-Version: 1.0\r\n"
    out += (
        b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
        b'\tboundary="' + boundary.encode("ascii") + b'"\r\n'
    )
    out += b"Content-Transfer-Encoding: 7bit\r\n"
    out += b"\r\n"
    out += b"This is a MIME-encapsulated message.\r\n"

    delimiter = b"\r\n--" + boundary.encode("ascii") + b"\r\n"
    out += delimiter
    out += b"Content-Type: text/plain; charset=us-ascii\r\n"
    out += b"Content-Transfer-Encoding: 7bit\r\n\r\n"
    out += _explanation(kind, reporting_mta, message_id, arrival_text, recipients)

    out += delimiter
    out += b"Content-Type: message/delivery-status\r\n"
    out += b"Content-Transfer-Encoding: 7bit\r\n\r\n"
    out += _delivery_status(reporting_mta, envid, arrival_text, recipients)

    out += delimiter
    out += b"Content-Type: text/rfc822-headers\r\n"
    if header.isascii() and all(len(line) <= 998 for line in header.split(b"\r\n")):
        out += b"Content-Transfer-Encoding: 7bit\r\n\r\n" + header
    else:
        encoded = quopri.encodestring(header.replace(b"\r\n", b"\n"))
        out += b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        out += encoded.replace(b"\n", b"\r\n")
        if not out.endswith(b"\r\n"):
            out += b"\r\n"
    out += b"\r\n--" + boundary.encode("ascii") + b"--\r\n"
    return out
