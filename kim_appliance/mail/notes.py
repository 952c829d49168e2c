"""The receive side's last step: the decrypted inner mail as the PVS gets it, with status and notes.

Digest §1.5 receive pipeline steps 6-7. :func:`write_delivered_mail` streams the decrypted inner
mail to ``out`` and on the way

* puts the outer mail's ``Return-Path`` (KOM-LE-A_21236) and ``Received`` fields (KOM-LE-A_20628)
  at the top of the header, as the Fachdienst wrote them;
* drops what a sender must not be able to forge in the inner header: its own ``Return-Path`` and
  any ``X-KIM-DecryptionResult`` / ``X-KIM-IntegrityCheckResult`` / ``X-KIM-Fehlermeldung``
  (only the Clientmodul sets those, digest §2.3);
* adds ``X-KIM-DecryptionResult: 00`` and one ``X-KIM-IntegrityCheckResult`` per ID
  (KOM-LE-A_2047-01, FAQ "Umgang mit den Fehlercodes": one header per value);
* appends the notes "Die Nachricht wurde entschlüsselt." (KOM-LE-A_2179-01, FAQ) and the
  signature note per ID (KOM-LE-A_2050, Tab_Verm_Sig_Prüf, digest §1.6) to the text part.

How the notes reach the text part, by the shape of the mail (the choice the spec leaves open;
written down in docs/decisions.md by the coordinator):

* ``text/plain`` (or no Content-Type) in 7bit/8bit/binary: the note is appended to the body in
  the part's charset. A us-ascii (or unlabelled) body is relabelled ``charset=utf-8`` (ASCII is
  a subset of it) and 7bit becomes 8bit. In quoted-printable the note is appended
  quoted-printable-encoded in the part's charset. Both keep the mail single-part.
* ``text/html`` in 7bit/8bit/binary/quoted-printable: an ``<hr><p>…</p>`` paragraph goes in
  before the last ``</body>`` (else at the end). It is pure ASCII with character references,
  so it fits any ASCII-compatible charset and needs no re-encoding.
* ``multipart/mixed``: a ``text/plain; charset=utf-8`` quoted-printable note part goes in before
  the closing boundary.
* everything else (a base64 or otherwise encoded single part, a charset the note cannot be
  written in, ``multipart/alternative``/``related``/``signed`` where an extra part would be
  shown as the preferred alternative or break the structure, a non-text single part, a
  multipart without boundary): the mail becomes ``multipart/mixed`` with the original body,
  its ``Content-*`` fields moved along, as the first part and the note part as the second. The
  body bytes are never decoded or re-encoded.

The transformation streams: memory stays bounded whatever the size of the mail (it holds at most
one read chunk plus a 64 KiB tail for ``</body>``). This module never decrypts, verifies or
decides a result; it writes what it is told. It must never pass a sender's own status header
through.
"""

from __future__ import annotations

import codecs
import quopri
import re
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from typing import BinaryIO, Final

from kim_appliance.mail.headers import (
    HeaderBlock,
    HeaderField,
    parse_content_type,
    read_header_block,
)

READ_SIZE: Final = 1024 * 1024
#: How far from the end of an HTML body we look for ``</body>``.
HTML_TAIL: Final = 64 * 1024

#: X-KIM-DecryptionResult notes (Tab_Fehlertext_Entschl, KOM-LE-A_2047-01; 00 from the FAQ).
DECRYPTION_NOTES: Final[dict[str, str]] = {
    "00": "Die Nachricht wurde entschlüsselt.",
    "01": "Die Nachricht konnte nicht entschlüsselt werden: der Schlüssel ist nicht verfügbar "
    "(die Karte ist nicht gesteckt oder wurde nicht gefunden).",
    "02": "Die Nachricht konnte nicht entschlüsselt werden: sie ist als KIM-Nachricht "
    "gekennzeichnet, entspricht aber nicht dem KIM-Format.",
    "03": "Die Nachricht konnte nicht entschlüsselt werden: der Konnektor ist nicht erreichbar.",
}

#: X-KIM-IntegrityCheckResult notes (Tab_Verm_Sig_Prüf, KOM-LE-A_2050; digest §1.6). The text of
#: 01 is the spec's; 08 is the api-kim FAQ example's; the others say what the table says.
INTEGRITY_NOTES: Final[dict[str, str]] = {
    "01": "Die Signatur wurde erfolgreich geprüft.",
    "02": "Die Signatur der Nachricht wurde geprüft. Die Integrität der Nachricht wurde "
    "verletzt: der Inhalt wurde nach dem Signieren verändert.",
    "03": "Die Nachricht enthält keine digitale Signatur.",
    "04": "Die digitale Signatur konnte wegen eines falschen Formats nicht geprüft werden.",
    "05": "Der Zertifizierungspfad des Signaturzertifikats konnte nicht validiert werden.",
    "06": "Bei der Prüfung der Signatur ist ein unerwarteter Fehler aufgetreten.",
    "07": "Die digitale Signatur ist mathematisch korrekt, der Status des "
    "Signaturzertifikats konnte aber nicht geprüft werden.",
    "08": "Die Signatur der Nachricht wurde geprüft. Die Prüfung hat ergeben, dass die "
    "Nachricht nach dem Verschlüsseln manipuliert wurde.\n"
    "Möglicherweise wurde die verschlüsselte Nachricht auch an einen nicht "
    "empfangsberechtigten Personenkreis versendet.",
    "09": "Die Signatur der Nachricht wurde geprüft. Die Prüfung hat ergeben, dass die "
    "Empfängerangaben (recipient-emails) der Nachricht manipuliert wurden, möglicherweise um "
    "einem anderen Nutzer das Entschlüsseln zu ermöglichen.",
}

#: Headers only the Clientmodul sets on the receive side (digest §2.3): never passed through.
CM_STATUS_HEADERS: Final = (
    "X-KIM-DecryptionResult",
    "X-KIM-IntegrityCheckResult",
    "X-KIM-Fehlermeldung",
)
#: The fields of a MIME entity that describe its body (moved along when wrapping; RFC 2045).
_CONTENT_FIELDS: Final = (
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "content-id",
    "content-description",
    "content-language",
    "content-location",
    "content-md5",
)
_RESULT_ID: Final = re.compile(r"0[0-9]|X[0-9A-Za-z]{1,8}")
_SEPARATOR: Final = "-" * 45
_BODY_CLOSE: Final = re.compile(rb"</body\s*>", re.IGNORECASE)


def decryption_note(result: str) -> str:
    """The note for an ``X-KIM-DecryptionResult`` ID (vendor IDs ``X…`` get a generic text)."""
    _check_id(result, "X-KIM-DecryptionResult")
    if result in DECRYPTION_NOTES:
        return DECRYPTION_NOTES[result]
    return f"Ergebnis der Entschlüsselung: {result} (herstellerspezifisch)."


def integrity_note(result: str) -> str:
    """The note for an ``X-KIM-IntegrityCheckResult`` ID as the FAQ example writes it:
    ``[Integritätsprüfung] [ID 08] …``; 01 is the plain success note."""
    _check_id(result, "X-KIM-IntegrityCheckResult")
    if result == "01":
        return INTEGRITY_NOTES["01"]
    text = INTEGRITY_NOTES.get(result, "Herstellerspezifisches Ergebnis der Signaturprüfung.")
    return f"[Integritätsprüfung] [ID {result}] {text}"


def notes_text(decryption_result: str, integrity_results: Sequence[str]) -> str:
    """All notes, one per line (LF), the decryption note first (digest §1.5 step 7)."""
    lines = [decryption_note(decryption_result)]
    lines += [integrity_note(r) for r in integrity_results]
    return "\n".join(lines) + "\n"


def _check_id(value: str, field: str) -> None:
    if not _RESULT_ID.fullmatch(value):
        raise ValueError(f"{field} {value!r}: an ID is two digits or a vendor ID X…")


class _Out:
    """``out`` with a byte count and the last two bytes written."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.count = 0
        self.tail = b""

    def write(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self.count += len(data)
            self.tail = (self.tail + data[-2:])[-2:]

    def ensure_line_end(self) -> None:
        if self.count and not self.tail.endswith(b"\n"):
            self.write(b"\r\n")


def _chunks(first: bytes, inner: BinaryIO) -> Iterator[bytes]:
    if first:
        yield first
    while chunk := inner.read(READ_SIZE):
        yield chunk


def _field(name: str, value: str) -> HeaderField:
    return HeaderField(name, b" " + value.encode("utf-8"))


def write_delivered_mail(
    out: BinaryIO,
    inner: BinaryIO,
    *,
    outer_header: HeaderBlock,
    decryption_result: str,
    integrity_results: Sequence[str],
) -> int:
    """Write the inner mail read from ``inner`` (positioned at its start) to ``out`` as the PVS
    receives it, with transport headers, status headers and notes; return the bytes written.

    ``decryption_result`` is ``00`` (or a vendor ``X…`` ID): only a decrypted mail gets here.
    ``integrity_results`` holds at least one ID (``01`` … ``09`` or ``X…``), one header each.
    Raises ValueError for a bad ID and :class:`MailFormatError` for an inner mail without a
    readable header.
    """
    _check_id(decryption_result, "X-KIM-DecryptionResult")
    if decryption_result != "00" and not decryption_result.startswith("X"):
        raise ValueError(
            f"X-KIM-DecryptionResult {decryption_result!r}: a delivered mail was decrypted (00); "
            "use an error mail (kim_appliance.mail.errormail) for 01-03"
        )
    if not integrity_results:
        raise ValueError("X-KIM-IntegrityCheckResult: at least one ID is needed")
    for result in integrity_results:
        _check_id(result, "X-KIM-IntegrityCheckResult")

    header, first = read_header_block(inner)
    notes = notes_text(decryption_result, integrity_results)
    writer = _Out(out)

    status = [_field("X-KIM-DecryptionResult", decryption_result)]
    status += [_field("X-KIM-IntegrityCheckResult", r) for r in integrity_results]
    # KOM-LE-A_21236 / A_20628: the outer transport fields at the top, newest first as written
    transport = [*outer_header.find("Return-Path"), *outer_header.find("Received")]
    dropped = {"return-path", *(h.lower() for h in CM_STATUS_HEADERS)}
    kept = [f for f in header if f.name.lower() not in dropped]

    content_type = header.get("Content-Type")
    mime_type, params = parse_content_type(content_type or "text/plain")
    cte = (header.get("Content-Transfer-Encoding") or "7bit").strip().lower()
    chunks = _chunks(first, inner)

    if mime_type == "text/plain" and cte in ("7bit", "8bit", "binary", "quoted-printable"):
        charset = (params.get("charset") or "us-ascii").lower()
        relabel = charset in ("us-ascii", "ascii", "us_ascii", "ansi_x3.4-1968")
        note_bytes = _encode_note(notes, "utf-8" if relabel else charset)
        if note_bytes is not None:
            fields = kept
            if relabel or cte == "7bit":
                fields = _relabel_text(kept, params, relabel=relabel, cte=cte)
            writer.write(HeaderBlock((*transport, *fields, *status)).encode() + b"\r\n")
            for chunk in chunks:
                writer.write(chunk)
            writer.ensure_line_end()
            note = (b"\n" + _SEPARATOR.encode() + b"\n").replace(b"\n", b"\r\n")
            if cte == "quoted-printable":
                writer.write(note + _qp(note_bytes))
            else:
                wrapped = _encode_note(_wrap_lines(notes), "utf-8" if relabel else charset)
                assert wrapped is not None  # same characters as note_bytes
                writer.write(note + wrapped.replace(b"\n", b"\r\n"))
            return writer.count
    if mime_type == "text/html" and cte in ("7bit", "8bit", "binary", "quoted-printable"):
        charset = (params.get("charset") or "us-ascii").lower()
        if _ascii_compatible(charset):
            writer.write(HeaderBlock((*transport, *kept, *status)).encode() + b"\r\n")
            _write_html(writer, chunks, _html_note(notes))
            return writer.count
    boundary = params.get("boundary")
    if mime_type == "multipart/mixed" and boundary:
        writer.write(HeaderBlock((*transport, *kept, *status)).encode() + b"\r\n")
        _write_multipart(writer, chunks, boundary.encode("utf-8"), _note_part(notes))
        return writer.count

    # wrap: the original body with its Content-* fields becomes the first part
    wrapper = f"=_kim-note-{uuid.uuid4().hex}"
    moved = [f for f in kept if f.name.lower() in _CONTENT_FIELDS]
    top = [f for f in kept if f.name.lower() not in _CONTENT_FIELDS]
    if not any(f.name.lower() == "mime-version" for f in top):
        top.append(_field("MIME-Version", "1.0"))
    top.append(_field("Content-Type", f'multipart/mixed;\r\n\tboundary="{wrapper}"'))
    if cte in ("8bit", "binary"):
        top.append(_field("Content-Transfer-Encoding", cte))
    writer.write(HeaderBlock((*transport, *top, *status)).encode() + b"\r\n")
    writer.write(b"This is a multi-part message in MIME format.\r\n")
    writer.write(f"\r\n--{wrapper}\r\n".encode())
    writer.write(HeaderBlock(tuple(moved)).encode() + b"\r\n")
    for chunk in chunks:
        writer.write(chunk)
    writer.write(f"\r\n--{wrapper}\r\n".encode() + _note_part(notes))
    writer.write(f"\r\n--{wrapper}--\r\n".encode())
    return writer.count


def _encode_note(notes: str, charset: str) -> bytes | None:
    """The notes in ``charset`` (LF line ends), or None when that cannot be done safely."""
    if not _ascii_compatible(charset):
        return None
    try:
        return notes.encode(charset)
    except (UnicodeError, LookupError, ValueError):
        return None


def _wrap_lines(text: str, width: int = 76) -> str:
    """``text`` with every line wrapped at spaces to ``width`` characters (RFC 5322 §2.1.1)."""
    lines: list[str] = []
    for line in text.rstrip("\n").split("\n"):
        lines += textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False) or [""]
    return "\n".join(lines) + "\n"


def _ascii_compatible(charset: str) -> bool:
    """Whether ``charset`` (as the sender wrote it) names a text encoding that writes ASCII as
    ASCII. Anything else the sender may write there (a NUL, ``base64``, ``rot13``, a name
    Python does not know) is simply not compatible: the note then goes into a new part."""
    try:
        codec = codecs.lookup(charset)
    except (LookupError, ValueError):  # ValueError: "embedded null character" (issue 11)
        return False
    if not getattr(codec, "_is_text_encoding", True):  # bytes-to-bytes codecs (base64, zlib)
        return False
    try:
        return codec.encode("\r\n-<>/ Az09")[0] == b"\r\n-<>/ Az09"
    except (UnicodeError, ValueError, TypeError):
        return False


def _relabel_text(
    fields: list[HeaderField], params: dict[str, str], *, relabel: bool, cte: str
) -> list[HeaderField]:
    """A text/plain header whose body now holds the UTF-8 note: charset utf-8 (when it was
    us-ascii or unlabelled) and 8bit instead of 7bit. Other parameters are kept."""
    result: list[HeaderField] = []
    has_type = has_cte = False
    new_params = dict(params)
    if relabel:
        new_params["charset"] = "utf-8"
    rest = "".join(
        f'; {k}="{v}"' if _needs_quotes(v) else f"; {k}={v}" for k, v in new_params.items()
    )
    content_type = _field("Content-Type", "text/plain" + rest)
    new_cte = "8bit" if cte == "7bit" else cte
    for f in fields:
        name = f.name.lower()
        if name == "content-type":
            if not has_type:
                result.append(content_type)
            has_type = True
        elif name == "content-transfer-encoding":
            if not has_cte:
                result.append(_field("Content-Transfer-Encoding", new_cte))
            has_cte = True
        else:
            result.append(f)
    if not any(f.name.lower() == "mime-version" for f in result):
        result.append(_field("MIME-Version", "1.0"))
    if not has_type:
        result.append(content_type)
    if not has_cte:
        result.append(_field("Content-Transfer-Encoding", new_cte))
    return result


def _needs_quotes(value: str) -> bool:
    return not value or bool(re.search(r'[\s()<>@,;:\\"/\[\]?=]', value))


def _qp(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045 §6.7) with CRLF line ends; ``data`` has LF line ends."""
    return quopri.encodestring(data).replace(b"\n", b"\r\n")


def _note_part(notes: str) -> bytes:
    """A complete MIME body part (header, empty line, body) holding the notes."""
    return (
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"Content-Disposition: inline\r\n"
        b"Content-Description: KIM-Vermerk des Clientmoduls\r\n"
        b"\r\n" + _qp(notes.encode("utf-8"))
    )


def _html_note(notes: str) -> bytes:
    """An ASCII-only HTML paragraph (character references for everything else) whose lines are
    short enough for quoted-printable and contain no ``=``."""
    lines: list[str] = []
    for note in notes.strip("\n").split("\n"):
        escaped = note.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        escaped = escaped.encode("ascii", "xmlcharrefreplace").decode("ascii")
        escaped = re.sub(r"&#(\d+);", lambda m: _named_ref(int(m[1])), escaped)
        lines += textwrap.wrap(escaped, 70, break_long_words=False, break_on_hyphens=False)
        lines[-1] += "<br>"
    lines[-1] = lines[-1].removesuffix("<br>")
    body = "\r\n".join(lines)
    return f"\r\n<hr>\r\n<p>{body}</p>\r\n".encode("ascii")


_NAMED = {
    228: "auml",
    246: "ouml",
    252: "uuml",
    196: "Auml",
    214: "Ouml",
    220: "Uuml",
    223: "szlig",
}


def _named_ref(code: int) -> str:
    name = _NAMED.get(code)
    return f"&{name};" if name else f"&#{code};"


def _write_html(writer: _Out, chunks: Iterator[bytes], note: bytes) -> None:
    """Copy the HTML body, inserting ``note`` before the last ``</body>`` within the tail."""
    held = b""
    for chunk in chunks:
        held += chunk
        if len(held) > 2 * HTML_TAIL:
            writer.write(held[:-HTML_TAIL])
            held = held[-HTML_TAIL:]
    matches = list(_BODY_CLOSE.finditer(held))
    if matches:
        at = matches[-1].start()
        writer.write(held[:at])
        writer.write(note)
        writer.write(held[at:])
        return
    writer.write(held)
    writer.ensure_line_end()
    writer.write(note)


def _write_multipart(writer: _Out, chunks: Iterator[bytes], boundary: bytes, part: bytes) -> None:
    """Copy a multipart body, inserting ``part`` before its closing delimiter (RFC 2046 §5.1.1).

    The close delimiter is ``--boundary--`` at the start of a line (the body's start counts).
    A body that never closes gets the part and a closing delimiter at its end.
    """
    close = b"\n--" + boundary + b"--"
    held = b"\n"  # the body starts at a line start: a virtual newline, never written
    skip = 1  # bytes at the head of ``held`` that are not the mail's (the virtual newline)
    for chunk in chunks:
        held += chunk
        at = held.find(close)
        if at >= 0:
            # the line end before "--boundary--" belongs to the delimiter; ours replaces it
            line_end = at - 1 if at > 0 and held[at - 1] == 0x0D else at
            writer.write(held[skip : max(line_end, skip)])
            writer.write(b"\r\n--" + boundary + b"\r\n" + part + b"\r\n")
            writer.write(held[at + 1 :])
            for rest in chunks:
                writer.write(rest)
            return
        if len(held) > len(close):
            flush = len(held) - len(close)
            writer.write(held[skip:flush])
            held, skip = held[flush:], 0
    writer.write(held[skip:])
    writer.ensure_line_end()
    writer.write(b"--" + boundary + b"\r\n" + part + b"\r\n--" + boundary + b"--\r\n")
