"""Parsing of SMTP command arguments: paths, ESMTP parameters, xtext, numbers, SASL responses.

Every function takes text the server has already cut into a command line and either returns
values or raises :class:`CommandError` carrying the exact reply to send (code, enhanced code,
and a text that names the field and the reason). Sources: RFC 5321 §4.1.2 (path syntax) and
§4.5.3.1 (size limits), RFC 1870 (SIZE), RFC 6152 (BODY), RFC 3461 (RET, ENVID, NOTIFY, ORCPT,
xtext), RFC 4954/4616 (AUTH, PLAIN). This module must never keep state or decide policy (which
sender is allowed, how big is too big): that is the server's and the application's job.
"""

from __future__ import annotations

import base64
import binascii
import re

from ._events import MailFrom, OriginalRecipient, RcptTo
from ._replies import Reply

# RFC 5321 §4.5.3.1.1-3
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
# RFC 3461 §4.4: ENVID at most 100 characters; §4.2: ORCPT at most 500.
MAX_ENVID = 100
MAX_ORCPT = 500
# Bound for decimal arguments (SIZE): 20 digits hold any 64-bit value.
MAX_DIGITS = 20
MAX_NUMBER = 2**63 - 1
# RFC 4616 §2 asks for at least 255 octets per SASL PLAIN field; the Clientmodul's usernames
# (addr#host:port#Mandant#Client#Workplace[#User], digest §1.2) may be up to 1024 characters.
MAX_SASL_FIELD = 1024

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_STRING = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
_QUOTED_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_SUB_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_DOMAIN = rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*"
_ADDRESS_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_PATH_RE = re.compile(
    rf"<(?:@{_DOMAIN}(?:,@{_DOMAIN})*:)?"  # source route: accepted and ignored (RFC 5321 §4.1.2)
    rf"(?P<local>{_DOT_STRING}|{_QUOTED_STRING})@(?P<domain>{_DOMAIN}|{_ADDRESS_LITERAL})>"
)
_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_VALUE_RE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")
_XTEXT_RE = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-Fa-f]{2})*")
_ADDR_TYPE_RE = re.compile(rf"[{_ATEXT}]+")
_SASL_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHOWN_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class CommandError(Exception):
    """A command the server must refuse; ``reply`` is what to send."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def syntax_error(text: str, enhanced: str = "5.5.4") -> CommandError:
    return CommandError(Reply(501, enhanced, text))


def shown(text: str, limit: int = 40) -> str:
    """Peer text as it may appear in a reply: at most ``limit`` characters, control characters
    (which would break the reply line or forge one, RFC 5321 §4.2) as ``\\xNN``."""
    cut = text[:limit]
    return _SHOWN_CONTROL_RE.sub(lambda m: f"\\x{ord(m.group(0)):02x}", cut)


def split_command(line: str) -> tuple[str, str]:
    """The verb (upper case) and the argument text of a command line."""
    verb, _, argument = line.partition(" ")
    return verb.upper(), argument.strip(" ")


def parse_number(text: str, field: str) -> int:
    """A decimal number of at most :data:`MAX_DIGITS` digits, no sign, no spaces."""
    if not text or not text.isascii() or not text.isdigit():
        raise syntax_error(f"{field}={shown(text)}: not a decimal number")
    if len(text) > MAX_DIGITS or int(text) > MAX_NUMBER:
        raise syntax_error(f"{field}={shown(text, 24)}: number too large")
    return int(text)


def xtext_decode(text: str, field: str) -> str:
    """Decode RFC 3461 §4 xtext (``+XX`` hex escapes); the result must be UTF-8."""
    if not _XTEXT_RE.fullmatch(text):
        raise syntax_error(f"{field}: not valid xtext (RFC 3461 §4)")
    raw = re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise syntax_error(f"{field}: xtext does not decode to UTF-8") from None


def xtext_encode(text: str) -> str:
    """Encode text as RFC 3461 xtext: "+", "=" and octets outside 33..126 become ``+XX``."""
    return "".join(
        chr(octet) if 33 <= octet <= 126 and octet not in (0x2B, 0x3D) else f"+{octet:02X}"
        for octet in text.encode("utf-8")
    )


def parse_path(text: str, *, role: str, null_ok: bool) -> tuple[str, str]:
    """Parse ``<local@domain>`` at the start of ``text``; return the address and the rest.

    ``role`` is "sender" or "recipient" and chooses the enhanced code of a syntax error
    (5.1.7 bad sender address, 5.1.3 bad destination address; RFC 3463). The null path ``<>``
    gives "" when ``null_ok``; ``<postmaster>`` (any case) is allowed for recipients
    (RFC 5321 §4.5.1).
    """
    enhanced = "5.1.7" if role == "sender" else "5.1.3"
    if text.startswith("<>"):
        if not null_ok:
            raise syntax_error(f"{role} address <>: the null path is only allowed in MAIL")
        return "", text[2:]
    if role == "recipient" and text[:12].lower() == "<postmaster>":
        return text[1:11], text[12:]
    if not text.startswith("<"):
        raise syntax_error(f"{role} address: must be written <local@domain>", enhanced)
    match = _PATH_RE.match(text)
    if match is None:
        excerpt = shown(text.split(" ", 1)[0], 80)
        raise syntax_error(f"{role} address {excerpt}: bad syntax (RFC 5321 §4.1.2)", enhanced)
    local, domain = match.group("local"), match.group("domain")
    if len(local) > MAX_LOCAL_PART:
        raise syntax_error(f"{role} address: local part longer than {MAX_LOCAL_PART}", enhanced)
    if len(domain) > MAX_DOMAIN:
        raise syntax_error(f"{role} address: domain longer than {MAX_DOMAIN}", enhanced)
    if match.end() > MAX_PATH:
        raise syntax_error(f"{role} address: path longer than {MAX_PATH}", enhanced)
    return f"{local}@{domain}", text[match.end() :]


def parse_params(text: str) -> dict[str, str | None]:
    """ESMTP parameters ``KEY[=value]`` separated by spaces; keys upper-cased; a key repeated
    with a different value is refused."""
    params: dict[str, str | None] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _KEYWORD_RE.fullmatch(key):
            raise syntax_error(f"parameter {shown(item)}: bad keyword")
        if eq and not _VALUE_RE.fullmatch(value):
            raise syntax_error(f"parameter {key}: bad value")
        upper = key.upper()
        given = value if eq else None
        # smtplib sends its own "size=N" before a caller's "SIZE=N": a repeat with the same
        # value is harmless; a repeat that contradicts is refused.
        if upper in params and (params[upper] or "").upper() != (given or "").upper():
            raise syntax_error(f"parameter {upper}: given twice with different values")
        params[upper] = given
    return params


def _after_keyword(argument: str, keyword: str) -> str:
    if argument[: len(keyword)].upper() != keyword:
        raise syntax_error(f"expected {keyword}<address>")
    return argument[len(keyword) :].lstrip(" ")  # "FROM: <a>" is tolerated, like Postfix


def _split_rest(rest: str, role: str) -> dict[str, str | None]:
    if rest and not rest.startswith(" "):
        raise syntax_error(f"{role} address: text after the closing '>' must be parameters")
    return parse_params(rest)


def _need_value(key: str, value: str | None) -> str:
    if value is None:
        raise syntax_error(f"parameter {key}: needs a value")
    return value


def parse_mail(argument: str) -> MailFrom:
    """``FROM:<path> [SIZE=n] [BODY=7BIT|8BITMIME] [RET=FULL|HDRS] [ENVID=xtext] [AUTH=..]``."""
    address, rest = parse_path(_after_keyword(argument, "FROM:"), role="sender", null_ok=True)
    params = _split_rest(rest, "sender")
    size = body = ret = envid = None
    for key, value in params.items():
        if key == "SIZE":  # RFC 1870 §6
            size = parse_number(_need_value(key, value), "SIZE")
        elif key == "BODY":  # RFC 6152
            body = _need_value(key, value).upper()
            if body not in ("7BIT", "8BITMIME"):
                raise syntax_error(f"BODY={shown(value or '')}: must be 7BIT or 8BITMIME")
        elif key == "RET":  # RFC 3461 §4.3
            ret = _need_value(key, value).upper()
            if ret not in ("FULL", "HDRS"):
                raise syntax_error(f"RET={shown(value or '')}: must be FULL or HDRS")
        elif key == "ENVID":  # RFC 3461 §4.4
            envid = xtext_decode(_need_value(key, value), "ENVID")
            if len(envid) > MAX_ENVID:
                raise syntax_error(f"ENVID: longer than {MAX_ENVID} characters")
        elif key == "AUTH":  # RFC 4954 §5: accepted, checked for syntax, not trusted
            xtext_decode(_need_value(key, value), "AUTH")
        else:
            raise CommandError(Reply(555, "5.5.4", f"MAIL parameter {key}: not supported"))
    return MailFrom(address=address, size=size, body=body, ret=ret, envid=envid)


def parse_rcpt(argument: str) -> RcptTo:
    """``TO:<path> [NOTIFY=NEVER|SUCCESS,FAILURE,DELAY] [ORCPT=addr-type;xtext]``."""
    address, rest = parse_path(_after_keyword(argument, "TO:"), role="recipient", null_ok=False)
    params = _split_rest(rest, "recipient")
    notify: frozenset[str] | None = None
    orcpt: OriginalRecipient | None = None
    for key, value in params.items():
        if key == "NOTIFY":  # RFC 3461 §4.1
            items = _need_value(key, value).upper().split(",")
            notify = frozenset(items)
            if len(notify) != len(items) or not notify <= {"NEVER", "SUCCESS", "FAILURE", "DELAY"}:
                raise syntax_error(
                    f"NOTIFY={shown(value or '')}: must be NEVER or SUCCESS,FAILURE,DELAY"
                )
            if "NEVER" in notify and len(notify) > 1:
                raise syntax_error(f"NOTIFY={shown(value or '')}: NEVER must stand alone")
        elif key == "ORCPT":  # RFC 3461 §4.2
            addr_type, semicolon, encoded = _need_value(key, value).partition(";")
            if not semicolon or not _ADDR_TYPE_RE.fullmatch(addr_type) or not encoded:
                raise syntax_error(f"ORCPT={shown(value or '')}: must be addr-type;xtext")
            if len(value or "") > MAX_ORCPT:
                raise syntax_error(f"ORCPT: longer than {MAX_ORCPT} characters")
            orcpt = OriginalRecipient(addr_type.lower(), xtext_decode(encoded, "ORCPT"))
        else:
            raise CommandError(Reply(555, "5.5.4", f"RCPT parameter {key}: not supported"))
    return RcptTo(address=address, notify=notify, orcpt=orcpt)


def parse_auth(argument: str) -> tuple[str, str | None]:
    """``mechanism [initial-response]`` (RFC 4954 §4); the mechanism upper-cased."""
    parts = argument.split()
    if not 1 <= len(parts) <= 2 or not _KEYWORD_RE.fullmatch(parts[0]):
        raise syntax_error("AUTH: expected AUTH mechanism [initial-response]")
    return parts[0].upper(), parts[1] if len(parts) == 2 else None


def decode_sasl(text: str) -> bytes:
    """A base64 SASL response; ``=`` is the empty response (RFC 4954 §4)."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise CommandError(Reply(501, "5.5.2", "AUTH: response is not valid base64")) from None


def _utf8(raw: bytes, field: str) -> str:
    """A SASL field as text: UTF-8 without control characters (RFC 4616 §2 and SASLprep,
    RFC 4013 §2.3, prohibit them; they must never reach a reply text or a log line), at most
    :data:`MAX_SASL_FIELD` octets."""
    if len(raw) > MAX_SASL_FIELD:
        raise CommandError(
            Reply(501, "5.5.2", f"AUTH: {field} longer than {MAX_SASL_FIELD} octets")
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(Reply(501, "5.5.2", f"AUTH: {field} is not UTF-8")) from None
    if _SASL_CONTROL_RE.search(text):
        raise CommandError(Reply(501, "5.5.2", f"AUTH: {field} contains a control character"))
    return text


def parse_plain(raw: bytes) -> tuple[str, str, str]:
    """``authzid NUL authcid NUL passwd`` (RFC 4616 §2) -> (authzid, username, password)."""
    parts = raw.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise CommandError(
            Reply(501, "5.5.2", "AUTH PLAIN: expected authzid NUL username NUL password")
        )
    return _utf8(parts[0], "authzid"), _utf8(parts[1], "username"), _utf8(parts[2], "password")


def decode_login_field(raw: bytes, field: str) -> str:
    """One AUTH LOGIN answer (username or password) as text."""
    return _utf8(raw, field)
