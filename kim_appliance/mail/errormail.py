"""Mails the Clientmodul writes itself: receive-side error mails and the send-side sender report.

**Receive side** (digest §1.7, KOM-LE-A_2046, A_2047-01, A_21391-02, A_23165, A_19370, A_23512).
When the Clientmodul cannot hand the PVS a decrypted and verified mail, the RETR result is an
error mail of one shape: ``multipart/mixed`` with a ``text/plain`` explanation and the received
message as a ``message/rfc822`` part; ``Date``, ``From``, ``Sender``, ``Reply-To``, ``To``, ``Cc``
copied from the received mail; a fixed Subject per case; ``X-KIM-Fehlermeldung`` and the result
headers. :func:`write_error_mail` is that shape; one function per case fills it in.

**Send side** (digest §1.4 step 6, KOM-LE-A_2024-01, A_2192-01, A_19356): every recipient the
Clientmodul drops (no valid encryption certificate, 4004; certificates of more than one
Telematik-ID, 4005; not ``1.5+`` for a large mail, 4001) is reported to the sender in one
unsigned, unencrypted DSN-style mail (:func:`write_sender_report`, RFC 3464 shape). It carries no
``X-KOM-LE-Version``, so the receiving Clientmodul passes it through (A_21390).

Choices where the spec is silent (for docs/decisions.md):

* Subject of the integrity-failure mail (A_23165; the FAQ example has none):
  ``Sicherheitsverletzung beim Empfang einer KIM-Nachricht``. Subject of the sender report:
  ``Die Nachricht wurde nicht an alle Empfänger versendet``.
* Every error mail gets a new ``Message-ID`` (the FAQ example does too), ``Auto-Submitted:
  auto-generated`` (RFC 3834), and the outer ``Return-Path``/``Received`` at the top like a
  delivered mail (A_21236, A_20628).
* ``X-KIM-Fehlermeldung`` accompanies the result headers: DecryptionResult 01/02/03 with
  4009/4010/4011; IntegrityCheckResult 02/03/04/05/07 with the Konnektor codes
  4115/4253/4112/4206/4264 and 08/09 with 4014/4015 (digest §1.6).
* The explanation part is UTF-8, quoted-printable (as in the FAQ example). The
  ``message/rfc822`` part is 7bit when the original is pure ASCII and 8bit otherwise (RFC 2046
  §5.2.1 allows no base64 there); its line ends are made CRLF, nothing else is changed.

Streaming: the original (up to 35 MB and more) is copied in chunks from a binary file object to
``out``; nothing holds it whole. This module never decrypts, verifies or decides which case
applies, and never writes a caller's value into a header without refusing CR and LF in it.
"""

from __future__ import annotations

import email.header
import email.utils
import quopri
import re
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO, Final

from kim_appliance.mail.headers import HeaderBlock, HeaderField
from kim_appliance.mail.notes import decryption_note, notes_text

READ_SIZE: Final = 1024 * 1024

# Subjects of digest §1.7 (CM-1.13 / A_2046, A_21391-02, A_19370, A_23512)
SUBJECT_NOT_DECRYPTED: Final = "Die Nachricht konnte nicht entschlüsselt werden"
SUBJECT_VERSION: Final = "Die KIM-Version der empfangenen Nachricht wird nicht unterstützt"
SUBJECT_KAS_DOWNLOAD: Final = (
    "Mindestens ein Anhang der Nachricht konnte nicht heruntergeladen werden"
)
SUBJECT_ACCOUNT_SETTINGS: Final = (
    "Die Nachricht entspricht nicht den festgelegten Account-Einstellungen"
)
#: Our choice: A_23165 names none.
SUBJECT_INTEGRITY: Final = "Sicherheitsverletzung beim Empfang einer KIM-Nachricht"
#: Our choice: KOM-LE-A_2024-01 names none.
SUBJECT_SENDER_REPORT: Final = "Die Nachricht wurde nicht an alle Empfänger versendet"

#: The fixed warning of an integrity failure (api-kim FAQ on A_23165), paragraphs as in its
#: example. The text is normative ("MUSS"), its grammar slip included.
INTEGRITY_WARNING: Final = (
    "Beim Empfang dieser KIM-Nachricht wurde eine Sicherheitsverletzung erkannt. Dies kann eine "
    "technisches Ursache haben oder auf eine missbräuchliche Nutzung des KIM-Dienstes "
    "hinweisen. Zu Ihrem Schutz wurde der Inhalt dieser Nachricht durch diesen Text "
    "ausgetauscht. Bitte kontaktieren Sie den Absender und/oder Ihren Administrator.\n\n"
    "Die entschlüsselte Nachricht wurde in diese Fehlernachricht eingebettet und kann, "
    "abhängig vom verwendeten E-Mail-Client, in eigener Verantwortung eingesehen bzw. "
    "verarbeitet werden."
)

#: X-KIM-Fehlermeldung codes (A_20650-03, Tab_Fehlercodes_KOMLE-Clientmodule; digest §1.6).
FEHLERMELDUNG_TEXTS: Final[dict[str, str]] = {
    "4001": "Empfänger entfernt: seine KIM-Version unterstützt die Nachricht nicht.",
    "4002": "Der Anhang konnte nicht zum KOM-LE-Attachment-Service (KAS) übertragen werden.",
    "4003": "Für den Absender gibt es keine eindeutige Telematik-ID mit "
    "Verschlüsselungszertifikat.",
    "4004": "Die Nachricht ist nicht für alle Empfänger verschlüsselbar: für den Empfänger "
    "gibt es kein gültiges Verschlüsselungszertifikat.",
    "4005": "Die Verschlüsselungszertifikate des Empfängers gehören zu verschiedenen "
    "Telematik-IDs.",
    "4006": "Ein Anhang konnte nicht vom KOM-LE-Attachment-Service (KAS) geladen werden.",
    "4007": "Beim Entschlüsseln eines Anhangs ist ein Fehler aufgetreten.",
    "4008": "Dieses Clientmodul unterstützt die KIM-Version der Nachricht nicht.",
    "4009": "Die Nachricht konnte nicht entschlüsselt werden: kein Schlüssel verfügbar.",
    "4010": "Die Nachricht konnte nicht entschlüsselt werden: falsches Format.",
    "4011": "Der Konnektor steht für die Entschlüsselung nicht zur Verfügung.",
    "4012": "Die Prüfsumme der Anhangsdaten stimmt nicht.",
    "4013": "Der KOM-LE-Attachment-Service verweigert den Abruf wegen zu häufiger Zugriffe.",
    "4014": "Die Nachricht wurde nach dem Verschlüsseln manipuliert.",
    "4015": "Das Attribut recipient-emails der Nachricht wurde manipuliert.",
    "4016": "Die Erneuerung der PKCS#12-Datei ist fehlgeschlagen.",
    "4017": "Die KIM-Version des Clientmoduls ist kleiner als die im Verzeichnisdienst "
    "eingetragene.",
    "4112": "Die Signatur konnte wegen eines falschen Formats nicht geprüft werden.",
    "4115": "Die Integrität der Nachricht wurde verletzt.",
    "4206": "Der Zertifizierungspfad des Signaturzertifikats ist nicht validierbar.",
    "4253": "Die Nachricht trägt keine Signatur.",
    "4264": "Der Status des Signaturzertifikats konnte nicht geprüft werden.",
}

#: X-KIM-DecryptionResult -> X-KIM-Fehlermeldung (digest §1.7 table, KOM-LE-A_2046)
DECRYPTION_CODES: Final[dict[str, str]] = {"01": "4009", "02": "4010", "03": "4011"}
#: X-KIM-IntegrityCheckResult -> X-KIM-Fehlermeldung (digest §1.6 Tab_Verm_Sig_Prüf)
INTEGRITY_CODES: Final[dict[str, str]] = {
    "02": "4115",
    "03": "4253",
    "04": "4112",
    "05": "4206",
    "07": "4264",
    "08": "4014",
    "09": "4015",
}

#: Fields copied from the received mail into the error mail (digest §1.7).
COPIED_FIELDS: Final = ("Date", "From", "Sender", "Reply-To", "To", "Cc")
_TRANSPORT_FIELDS: Final = ("Return-Path", "Received")
_HEADER_NAME: Final = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_HEADER_VALUE: Final = re.compile(r"[^\r\n\x00]*")
_CODE: Final = re.compile(r"[0-9]{4}|X[0-9A-Za-z]{1,8}")
_STATUS: Final = re.compile(r"5\.[0-9]{1,3}\.[0-9]{1,3}")
_MAILBOX: Final = re.compile(r"[!-;=?-~]+@[!-;=?-~]+")  # printable, no space, < or >
_MSG_ID: Final = re.compile(r"<[!-;=?-~]+>")
_FALLBACK_DOMAIN: Final = "kim-clientmodul.invalid"


class _Counter:
    """``out`` with a byte count."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.count = 0

    def write(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self.count += len(data)


# -- the common shape ---------------------------------------------------------------------------


def write_error_mail(
    out: BinaryIO,
    *,
    original_header: HeaderBlock,
    original: BinaryIO | bytes,
    subject: str,
    text: str,
    kim_headers: Sequence[tuple[str, str]],
    now: datetime | None = None,
) -> int:
    """Write a Clientmodul error mail (digest §1.7) to ``out``; return the bytes written.

    ``original_header`` is the header of the received mail (the outer one): its Date, From,
    Sender, Reply-To, To and Cc are copied as written, its Return-Path and Received go on top.
    ``original`` (bytes, or a binary file read from its position to the end) becomes the
    ``message/rfc822`` part. ``text`` (LF or CRLF lines) is the explanation; ``kim_headers`` the
    ``X-KIM-*`` fields, in order. ``now`` is the Date when the received mail has none.
    Raises ValueError for a header name or value that could break the header.
    """
    for name, value in kim_headers:
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise ValueError(f"error mail header {name!r}: name or value holds CR, LF or NUL")
    writer = _Counter(out)
    boundary = f"=_kim-error-{uuid.uuid4().hex}"
    fields: list[HeaderField] = []
    for name in _TRANSPORT_FIELDS:
        fields += original_header.find(name)
    if not original_header.find("Date"):
        fields.append(_field("Date", _date(now)))
    for name in COPIED_FIELDS:
        fields += original_header.find(name)
    fields.append(HeaderField("Subject", b" " + _encoded_words(subject, "Subject")))
    fields.append(_field("Message-ID", _new_message_id(original_header)))
    fields.append(_field("Auto-Submitted", "auto-generated"))
    fields += [_field(name, value) for name, value in kim_headers]
    fields.append(_field("MIME-Version", "1.0"))
    fields.append(_field("Content-Type", f'multipart/mixed;\r\n\tboundary="{boundary}"'))
    writer.write(HeaderBlock(tuple(fields)).encode() + b"\r\n")
    writer.write(b"This is a multi-part message in MIME format.\r\n")
    writer.write(f"\r\n--{boundary}\r\n".encode())
    writer.write(_text_part(text))
    writer.write(f"\r\n--{boundary}\r\n".encode())
    _write_rfc822_part(writer, original)
    writer.write(f"\r\n--{boundary}--\r\n".encode())
    return writer.count


# -- one function per case ------------------------------------------------------------------


def write_decryption_error_mail(
    out: BinaryIO,
    *,
    original_header: HeaderBlock,
    original: BinaryIO | bytes,
    decryption_result: str,
    detail: str | None = None,
    now: datetime | None = None,
) -> int:
    """The mail for a KIM message that could not be decrypted (KOM-LE-A_2046, A_2047-01).

    ``decryption_result`` is 01 (key not available), 02 (wrong format), 03 (Konnektor not
    reachable) or a vendor ``X…`` ID; ``original`` is the still-encrypted received mail.
    ``detail`` (e.g. the Konnektor's error) is added to the explanation.
    """
    if decryption_result == "00":
        raise ValueError("X-KIM-DecryptionResult '00': a decrypted mail is no decryption error")
    note = decryption_note(decryption_result)
    headers = [("X-KIM-DecryptionResult", decryption_result)]
    code = DECRYPTION_CODES.get(decryption_result)
    lines = [note]
    if code is not None:
        headers.append(("X-KIM-Fehlermeldung", code))
        lines.append(f"[Fehlercode {code}] {FEHLERMELDUNG_TEXTS[code]}")
    if detail:
        lines += ["", f"Einzelheiten: {_one_line(detail)}"]
    lines += [
        "",
        "Die verschlüsselte Nachricht ist unverändert angehängt. Sie können sie später erneut "
        "entschlüsseln lassen, indem Sie sie als Anhang an Ihre eigene KIM-Adresse "
        "weiterleiten.",
    ]
    return write_error_mail(
        out,
        original_header=original_header,
        original=original,
        subject=SUBJECT_NOT_DECRYPTED,
        text="\n".join(lines),
        kim_headers=headers,
        now=now,
    )


def write_version_error_mail(
    out: BinaryIO,
    *,
    original_header: HeaderBlock,
    original: BinaryIO | bytes,
    version: str,
    supported: Sequence[str] = ("1.0", "1.5"),
    now: datetime | None = None,
) -> int:
    """The mail for an unsupported ``X-KOM-LE-Version`` (A_21391-02, code 4008)."""
    text = (
        f"{SUBJECT_VERSION}.\n\n"
        f"Die Nachricht verlangt die KIM-Version {_one_line(version)!r} (X-KOM-LE-Version); "
        f"dieses Clientmodul unterstützt {', '.join(supported)}.\n"
        f"[Fehlercode 4008] {FEHLERMELDUNG_TEXTS['4008']}\n\n"
        "Die empfangene Nachricht ist unverändert angehängt."
    )
    return write_error_mail(
        out,
        original_header=original_header,
        original=original,
        subject=SUBJECT_VERSION,
        text=text,
        kim_headers=[("X-KIM-Fehlermeldung", "4008")],
        now=now,
    )


def write_integrity_error_mail(
    out: BinaryIO,
    *,
    original_header: HeaderBlock,
    decrypted: BinaryIO | bytes,
    integrity_results: Sequence[str],
    extra_codes: Sequence[str] = (),
    now: datetime | None = None,
) -> int:
    """The mail for a decrypted message whose integrity check failed (A_23165, api-kim FAQ).

    ``original_header`` is the received (outer) header, ``decrypted`` the decrypted inner mail,
    embedded as ``message/rfc822``. The text is the FAQ's fixed warning followed by the notes of
    each ID; the headers are ``X-KIM-DecryptionResult: 00``, one ``X-KIM-IntegrityCheckResult``
    per ID and the matching ``X-KIM-Fehlermeldung`` codes (plus ``extra_codes``, e.g. the
    Konnektor's code behind an 06).
    """
    if not integrity_results:
        raise ValueError("X-KIM-IntegrityCheckResult: at least one ID is needed")
    headers = [("X-KIM-DecryptionResult", "00")]
    headers += [("X-KIM-IntegrityCheckResult", r) for r in integrity_results]
    codes: list[str] = []
    for code in [*(INTEGRITY_CODES.get(r) for r in integrity_results), *extra_codes]:
        if code is not None and code not in codes:
            if not _CODE.fullmatch(code):
                raise ValueError(f"X-KIM-Fehlermeldung {code!r}: four digits or a vendor X… code")
            codes.append(code)
    headers += [("X-KIM-Fehlermeldung", code) for code in codes]
    text = (
        INTEGRITY_WARNING + "\n\nErgänzende Informationen:\n" + notes_text("00", integrity_results)
    )
    return write_error_mail(
        out,
        original_header=original_header,
        original=decrypted,
        subject=SUBJECT_INTEGRITY,
        text=text,
        kim_headers=headers,
        now=now,
    )


def write_kas_download_error_mail(
    out: BinaryIO,
    *,
    original_header: HeaderBlock,
    original: BinaryIO | bytes,
    code: str = "4006",
    detail: str | None = None,
    now: datetime | None = None,
) -> int:
    """The mail for a KAS attachment that could not be fetched (A_19370): 4006 download failed,
    4013 refused for too many accesses (429), 4007 not decryptable, 4012 hash mismatch."""
    if code not in ("4006", "4007", "4012", "4013"):
        raise ValueError(f"X-KIM-Fehlermeldung {code!r}: a KAS error is 4006, 4007, 4012 or 4013")
    lines = [f"{SUBJECT_KAS_DOWNLOAD}.", "", f"[Fehlercode {code}] {FEHLERMELDUNG_TEXTS[code]}"]
    if detail:
        lines += ["", f"Einzelheiten: {_one_line(detail)}"]
    lines += ["", "Die empfangene Nachricht ist angehängt."]
    return write_error_mail(
        out,
        original_header=original_header,
        original=original,
        subject=SUBJECT_KAS_DOWNLOAD,
        text="\n".join(lines),
        kim_headers=[("X-KIM-Fehlermeldung", code)],
        now=now,
    )


def write_account_settings_error_mail(
    out: BinaryIO,
    *,
    original_header: HeaderBlock,
    original: BinaryIO | bytes,
    now: datetime | None = None,
) -> int:
    """The mail for a large (KAS) mail to an account that does not accept them (A_23512);
    ``original`` is the encrypted received mail."""
    text = (
        f"{SUBJECT_ACCOUNT_SETTINGS}.\n\n"
        "Die Nachricht wurde über den KOM-LE-Attachment-Service (KAS) versendet; Ihr KIM-Konto "
        "ist nicht für den Empfang solcher großen Nachrichten (KIM-Version 1.5) eingerichtet.\n\n"
        "Die verschlüsselte Nachricht ist unverändert angehängt."
    )
    return write_error_mail(
        out,
        original_header=original_header,
        original=original,
        subject=SUBJECT_ACCOUNT_SETTINGS,
        text=text,
        kim_headers=[],
        now=now,
    )


# -- send side: the report on dropped recipients ----------------------------------------------


@dataclass(frozen=True)
class DroppedRecipient:
    """A recipient the Clientmodul did not send to, and why (digest §1.4 step 6).

    ``code`` is the X-KIM-Fehlermeldung code: 4004 no valid encryption certificate, 4005
    certificates of more than one Telematik-ID (KOM-LE-A_2178), 4001 not ``1.5+`` for a large
    mail (A_19356). ``status`` overrides the RFC 3463 status of the report.
    """

    address: str
    code: str
    reason: str | None = None
    status: str | None = None

    def __post_init__(self) -> None:
        if not _MAILBOX.fullmatch(self.address):
            raise ValueError(f"dropped recipient {self.address!r}: not an address local@domain")
        if not _CODE.fullmatch(self.code):
            raise ValueError(f"dropped recipient code {self.code!r}: four digits or X…")
        if self.status is not None and not _STATUS.fullmatch(self.status):
            raise ValueError(f"dropped recipient status {self.status!r}: must be 5.x.y")

    @property
    def rfc3463_status(self) -> str:
        if self.status is not None:
            return self.status
        return {"4001": "5.3.4", "4004": "5.1.0", "4005": "5.1.0"}.get(self.code, "5.0.0")


def write_sender_report(
    out: BinaryIO,
    *,
    sender: str,
    original_header: HeaderBlock,
    dropped: Sequence[DroppedRecipient],
    reporting_host: str,
    now: datetime | None = None,
) -> int:
    """The one report to ``sender`` listing every dropped recipient (KOM-LE-A_2024-01,
    A_2192-01, A_19356); return the bytes written.

    A ``multipart/report; report-type=delivery-status`` mail (RFC 3464), neither signed nor
    encrypted: explanation, one ``message/delivery-status`` block per recipient
    (``Action: failed``, ``Diagnostic-Code: X-KIM; <code> <text>``) and the client mail's header
    as ``text/rfc822-headers`` (never its body). From and To are the sender's own address (the
    Fachdienst accepts a mail to oneself whatever its From, A_23421/A_23422), so the caller
    sends it through the same upstream session with ``MAIL FROM``/``RCPT TO`` = ``sender``.
    """
    if not dropped:
        raise ValueError("sender report: no dropped recipient to report")
    if not _MAILBOX.fullmatch(sender):
        raise ValueError(f"sender report To {sender!r}: not an address local@domain")
    if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", reporting_host):
        raise ValueError(f"sender report Reporting-MTA {reporting_host!r}: not a host name")
    writer = _Counter(out)
    when = _date(now)
    boundary = f"=_kim-report-{uuid.uuid4().hex}"
    domain = sender.rpartition("@")[2]
    codes = list(dict.fromkeys(d.code for d in dropped))
    fields = [
        _field("Date", when),
        _field("From", f"KIM-Clientmodul <{sender}>"),
        _field("To", f"<{sender}>"),
        HeaderField("Subject", b" " + _encoded_words(SUBJECT_SENDER_REPORT, "Subject")),
        _field("Message-ID", f"<{uuid.uuid4()}@{domain}>"),
    ]
    original_id = (original_header.get("Message-ID") or "").strip()
    if _MSG_ID.fullmatch(original_id):
        fields += [_field("In-Reply-To", original_id), _field("References", original_id)]
    fields += [_field("Auto-Submitted", "auto-generated")]
    fields += [_field("X-KIM-Fehlermeldung", code) for code in codes]
    fields += [
        _field("MIME-Version", "1.0"),
        _field(
            "Content-Type",
            f'multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        ),
    ]
    writer.write(HeaderBlock(tuple(fields)).encode() + b"\r\n")
    writer.write(b"This is a MIME-encapsulated message.\r\n")

    subject = original_header.get("Subject")
    lines = [
        "Ihre Nachricht"
        + (f" {original_id}" if _MSG_ID.fullmatch(original_id) else "")
        + (f" mit dem Betreff {_one_line(subject)!r}" if subject else "")
        + " wurde vom KIM-Clientmodul nicht an alle Empfänger versendet. An diese Empfänger "
        "ging sie nicht:",
        "",
    ]
    for d in dropped:
        text = FEHLERMELDUNG_TEXTS.get(d.code, "Herstellerspezifischer Fehler.")
        lines.append(f"<{d.address}>: [Fehlercode {d.code}] {text}")
        if d.reason:
            lines.append(f"    {_one_line(d.reason)}")
    lines += ["", "Die Kopfzeilen Ihrer Nachricht sind angehängt, der Inhalt nicht."]
    writer.write(f"\r\n--{boundary}\r\n".encode())
    writer.write(_text_part("\n".join(lines)))

    status = f"Reporting-MTA: dns; {reporting_host}\r\nArrival-Date: {when}\r\n"
    for d in dropped:
        diagnostic = _ascii(f"{d.code} {FEHLERMELDUNG_TEXTS.get(d.code, '')}".strip())
        if d.reason:
            diagnostic += " - " + _ascii(d.reason)
        status += (
            f"\r\nFinal-Recipient: rfc822;{d.address}\r\nAction: failed\r\n"
            f"Status: {d.rfc3463_status}\r\n"
        )
        status += "Diagnostic-Code: X-KIM; " + "\r\n ".join(
            textwrap.wrap(diagnostic, 70, break_long_words=False)
        )
        status += "\r\n"
    writer.write(f"\r\n--{boundary}\r\n".encode())
    writer.write(b"Content-Type: message/delivery-status\r\n\r\n" + status.encode("ascii"))

    header = HeaderBlock(original_header.fields).encode()
    writer.write(f"\r\n--{boundary}\r\n".encode())
    if header.isascii():
        writer.write(b"Content-Type: text/rfc822-headers\r\n\r\n" + header)
    else:
        writer.write(
            b"Content-Type: text/rfc822-headers\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            + quopri.encodestring(header.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
        )
    writer.write(f"\r\n--{boundary}--\r\n".encode())
    return writer.count


# -- helpers -----------------------------------------------------------------------------------


def _field(name: str, value: str) -> HeaderField:
    return HeaderField(name, b" " + value.encode("utf-8"))


def _date(now: datetime | None) -> str:
    when = now if now is not None else datetime.now(UTC)
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("error mail Date: the datetime needs a time zone")
    return email.utils.format_datetime(when)


def _encoded_words(text: str, name: str) -> bytes:
    """``text`` as a header value, RFC 2047 encoded words when it is not ASCII, folded."""
    text = " ".join(text.split())
    charset = "us-ascii" if text.isascii() else "utf-8"
    encoded = email.header.Header(text, charset, header_name=name).encode(linesep="\r\n")
    return encoded.encode("ascii")


def _new_message_id(original_header: HeaderBlock) -> str:
    addresses = original_header.addresses("To")
    domain = addresses[0].rpartition("@")[2] if addresses else ""
    if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", domain):
        domain = _FALLBACK_DOMAIN
    return f"<{uuid.uuid4()}@{domain}>"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:900]


_TRANSLITERATION: Final = str.maketrans(
    {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss"}
)


def _ascii(text: str) -> str:
    """One line of printable ASCII for a delivery-status field: umlauts transliterated."""
    flat = " ".join(text.translate(_TRANSLITERATION).split())
    return "".join(c if " " <= c <= "~" else "?" for c in flat)[:900]


def _text_part(text: str) -> bytes:
    """A text/plain UTF-8 part; quoted-printable soft breaks keep its lines short (as in the
    api-kim FAQ example), the text's own lines stay as they are."""
    body = text.replace("\r\n", "\n").rstrip("\n") + "\n"
    encoded = quopri.encodestring(body.encode("utf-8"))
    return (
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"Content-Disposition: inline\r\n"
        b"\r\n" + encoded.replace(b"\n", b"\r\n")
    )


def _chunks(original: BinaryIO | bytes) -> Iterator[bytes]:
    if isinstance(original, bytes | bytearray | memoryview):
        data = bytes(original)
        for start in range(0, len(data), READ_SIZE):
            yield data[start : start + READ_SIZE]
        return
    while chunk := original.read(READ_SIZE):
        yield chunk


def _is_ascii(original: BinaryIO | bytes) -> bool | None:
    """True/False for bytes and seekable files (read once, then rewound); None if unknown."""
    if isinstance(original, bytes | bytearray | memoryview):
        return bytes(original).isascii()
    try:
        if not original.seekable():
            return None
        start = original.tell()
    except (AttributeError, OSError):
        return None
    try:
        while chunk := original.read(READ_SIZE):
            if not chunk.isascii():
                return False
        return True
    finally:
        original.seek(start)


def _crlf(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks with every bare LF made CRLF (a CR at a chunk's end waits for the next)."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        carry = b""
        if data.endswith(b"\r"):
            data, carry = data[:-1], b"\r"
        yield data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if carry:
        yield carry


def _write_rfc822_part(writer: _Counter, original: BinaryIO | bytes) -> None:
    ascii_only = _is_ascii(original)
    cte = "7bit" if ascii_only else "8bit"
    writer.write(
        b"Content-Type: message/rfc822\r\n"
        b"Content-Disposition: inline\r\n"
        b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n"
    )
    for chunk in _crlf(_chunks(original)):
        writer.write(chunk)
