"""The mail server's acceptance rules: pure decisions on addresses, headers and sizes.

Each check returns None when the mail may go on, or a :class:`Refusal` that the SMTP layer sends
as it is (code, enhanced status code of RFC 3463, and a text that names the field and the rule).
The rules come from digest §3.2 (sender integrity A_23421/A_23422, TI-only KOM-LE-A_2185,
deregistered accounts KOM-LE-A_2149, limits) and §2.10 (address syntax). This module decides; it
must never do I/O, look anything up itself (callers pass ``mailbox_exists``/``mailbox_active``),
or rewrite an address: addresses are compared case-insensitively and shown as given (§2.10).

Where the spec is silent (digest §7.1, gemSpec_FD_KOMLE not available) this module chooses, and
a real Fachdienst most likely behaves alike (Postfix/Exim policy rejections):

* A_23421 (MAIL FROM differs from the SMTP AUTH username) is refused at MAIL FROM with
  ``550 5.7.1`` (RFC 3463 "delivery not authorized"; Postfix's
  ``reject_sender_login_mismatch`` answers ``553 5.7.1``; 550 is the generic policy code and is
  what the FAQ's "SMTP-Fehler" most plausibly means).
* A_23422 (From/Sender/Reply-To) is checked on the header at the end of DATA and refused with
  ``550 5.7.1`` too (RFC 5321 §4.3.2 allows 550 after DATA). A header with more than one From or
  Sender field is refused as well (RFC 5322 §3.6 allows one): a second field would let a forged
  address through to the reader.
* Mail from outside the TI (KOM-LE-A_2185) and recipients outside the TI: ``550 5.7.1``.
  A domain that is neither served here nor relayed: ``550 5.1.2``. Unknown mailbox:
  ``550 5.1.1``; deregistered mailbox (KOM-LE-A_2149): ``550 5.2.1`` ("mailbox disabled").
* Size over ``maxMailSize``: ``552 5.3.4`` (RFC 1870 §6.1); quota exhausted: ``552 5.2.2``.
  The KIM size rule A_24022 is unknown beyond that.
* A quoted local part that needs no quoting (``"praxis.weber"@...``) is the same addr-spec as
  the unquoted one (RFC 5321 §4.1.2) and compares equal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from kim_appliance.cms.errors import CmsError
from kim_appliance.cms.recipient_emails import validate_kim_address
from kim_appliance.mail.headers import HeaderBlock

_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_SHOWN_MAX = 120


@dataclass(frozen=True)
class Refusal:
    """An SMTP refusal: ``Refusal(550, "5.7.1", "MAIL FROM <x> is not ...")``."""

    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        if not 400 <= self.code <= 599:
            raise ValueError(f"Refusal code {self.code}: must be 4xx or 5xx")
        if not self.enhanced.startswith(str(self.code)[0] + "."):
            raise ValueError(f"Refusal enhanced code {self.enhanced}: class must match {self.code}")

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


def _show(address: str) -> str:
    """An address fit for a one-line SMTP reply: printable ASCII, cut short."""
    shown = "".join(c if " " <= c <= "~" else "?" for c in address)
    return shown if len(shown) <= _SHOWN_MAX else shown[: _SHOWN_MAX - 3] + "..."


def _unquote_local(local: str) -> str:
    """``"praxis.weber"`` -> ``praxis.weber`` when the quotes are unnecessary; else as given."""
    if len(local) >= 2 and local[0] == local[-1] == '"':
        inner = re.sub(r"\\(.)", r"\1", local[1:-1])
        if _DOT_ATOM.fullmatch(inner):
            return inner
    return local


def _split(address: str) -> tuple[str, str]:
    local, _, domain = address.strip().removeprefix("<").removesuffix(">").rpartition("@")
    return _unquote_local(local), domain


def address_key(address: str) -> str:
    """The comparison key of an address: unnecessary quotes removed, lower-cased (§2.10).

    Only for comparing; never store or show the key in place of the address.
    """
    local, domain = _split(address)
    return f"{local}@{domain}".lower() if domain else address.strip().lower()


def same_address(a: str, b: str) -> bool:
    """True if ``a`` and ``b`` are the same KIM address (case-insensitive, digest §2.10)."""
    return address_key(a) == address_key(b)


def is_ti_address(address: str) -> bool:
    """True if ``address`` is a KIM address inside the TI (digest §2.10, KOM-LE-A_2185).

    Syntax per §2.10 (local part ``[A-Za-z0-9._-]{1,64}``, domain ``[a-z0-9.-]``, case-
    insensitive) and the domain ends ``.kim.telematik`` (PU) or ``.kim.telematik-test`` (RU/TU).
    """
    local, domain = _split(address)
    if not domain:
        return False
    try:
        validate_kim_address(f"{local}@{domain}")
    except CmsError:
        return False
    return True


def _refuse(text: str, enhanced: str = "5.7.1", code: int = 550) -> Refusal:
    return Refusal(code, enhanced, text)


def check_mail_from(mail_from: str, login: str) -> Refusal | None:
    """MAIL FROM of an authenticated client (Clientmodul) against its AUTH username.

    KOM-LE-A_2185: only TI addresses send. A_23421: MAIL FROM must equal the SMTP AUTH username
    (the KIM address, KOM-LE-A_2161), compared case-insensitively. The null path ``<>`` from an
    authenticated client is a mismatch. Refused with 550 5.7.1 (module docstring).
    """
    if mail_from and not is_ti_address(mail_from):
        return _refuse(
            f"MAIL FROM <{_show(mail_from)}> is not a KIM address: only mail from inside the TI "
            "is processed (KOM-LE-A_2185)"
        )
    if not mail_from or not same_address(mail_from, login):
        return _refuse(
            f"MAIL FROM <{_show(mail_from)}> is not the authenticated account "
            f"<{_show(login)}> (A_23421)"
        )
    return None


def check_relay_mail_from(mail_from: str) -> Refusal | None:
    """MAIL FROM of another Fachdienst (relay, no AUTH): a TI address or ``<>`` (a DSN).

    KOM-LE-A_2185: mail from outside the TI is refused with 550 5.7.1.
    """
    if mail_from == "" or is_ti_address(mail_from):
        return None
    return _refuse(
        f"MAIL FROM <{_show(mail_from)}> is not a KIM address: only mail from inside the TI "
        "is processed (KOM-LE-A_2185)"
    )


def check_rcpt(
    address: str,
    *,
    local_domains: Collection[str],
    relay_domains: Collection[str],
    mailbox_exists: Callable[[str], bool],
    mailbox_active: Callable[[str], bool],
) -> Refusal | None:
    """RCPT TO: a TI address in a domain served here (with an active mailbox) or relayed.

    ``mailbox_exists`` and ``mailbox_active`` get the address as given and must compare it
    case-insensitively; they are asked only for ``local_domains``. Order of the checks: outside
    the TI (550 5.7.1, KOM-LE-A_2185), unknown domain (550 5.1.2), unknown mailbox (550 5.1.1),
    deregistered (550 5.2.1, KOM-LE-A_2149).
    """
    if not is_ti_address(address):
        return _refuse(
            f"RCPT TO <{_show(address)}> is not a KIM address: only mail inside the TI is "
            "processed (KOM-LE-A_2185)"
        )
    domain = _split(address)[1].lower()
    if domain in {d.lower() for d in local_domains}:
        if not mailbox_exists(address):
            return _refuse(f"RCPT TO <{_show(address)}>: no such mailbox", "5.1.1")
        if not mailbox_active(address):
            return _refuse(
                f"RCPT TO <{_show(address)}>: the account is deregistered and receives no "
                "mail (KOM-LE-A_2149)",
                "5.2.1",
            )
        return None
    if domain in {d.lower() for d in relay_domains}:
        return None
    return _refuse(
        f"RCPT TO <{_show(address)}>: domain {_show(domain)} is not served here and has no "
        "known Fachdienst",
        "5.1.2",
    )


def _one_field(header: HeaderBlock, name: str) -> Refusal | None:
    count = len(header.find(name))
    if count > 1:
        return _refuse(
            f"header has {count} {name} fields, RFC 5322 §3.6 allows one (A_23422 sender integrity)"
        )
    return None


def check_header_senders(
    header: HeaderBlock, *, mail_from: str, rcpt_to: Sequence[str]
) -> Refusal | None:
    """A_23422 sender integrity of the (outer) header, checked at the end of DATA.

    * ``From`` holds at least one address; one address must equal MAIL FROM; of several, one
      must equal MAIL FROM;
    * ``Sender``, if present, is exactly one address equal to MAIL FROM;
    * every ``Reply-To`` address is a TI address (``.kim.telematik``/``.kim.telematik-test``).

    Exception (A_23422 (2)): exactly one RCPT TO, equal to MAIL FROM (mail to oneself). Mail
    with the null sender ``<>`` (DSNs and notices of other Fachdienste, digest §3.2) is not
    checked. Refusals are 550 5.7.1 and name the field.
    """
    if mail_from == "":
        return None
    if len(rcpt_to) == 1 and same_address(rcpt_to[0], mail_from):
        return None
    shown_from = _show(mail_from)

    refusal = _one_field(header, "From") or _one_field(header, "Sender")
    if refusal is not None:
        return refusal

    from_addresses = header.addresses("From")
    if not from_addresses:
        return _refuse(f"From holds no address; it must hold <{shown_from}> (A_23422)")
    if not any(same_address(a, mail_from) for a in from_addresses):
        if len(from_addresses) == 1:
            return _refuse(
                f"From <{_show(from_addresses[0])}> is not the sender <{shown_from}> of MAIL FROM "
                "(A_23422)"
            )
        return _refuse(
            f"From names {len(from_addresses)} addresses and none is the sender <{shown_from}> "
            "of MAIL FROM (A_23422)"
        )

    if header.find("Sender"):
        senders = header.addresses("Sender")
        if len(senders) != 1:
            return _refuse(
                f"Sender must hold exactly one address, <{shown_from}>; it holds "
                f"{len(senders)} (A_23422)"
            )
        if not same_address(senders[0], mail_from):
            return _refuse(
                f"Sender <{_show(senders[0])}> is not the sender <{shown_from}> of MAIL FROM "
                "(A_23422)"
            )

    for address in header.addresses("Reply-To"):
        if not is_ti_address(address):
            return _refuse(
                f"Reply-To <{_show(address)}> is not a KIM address ending .kim.telematik or "
                ".kim.telematik-test (A_23422)"
            )
    return None


def check_size(
    size: int, *, max_message_size: int, quota_remaining: int | None, mailbox: str | None = None
) -> Refusal | None:
    """A message (or the SIZE announced at MAIL FROM, RFC 1870) against the limits (§3.2).

    ``max_message_size`` is ``maxMailSize``; ``quota_remaining`` the recipient's remaining quota
    in bytes, None for unlimited (map AccountLimit's -1 to None; a negative value means the
    mailbox is already over quota). ``mailbox`` only names the mailbox in the refusal text.
    """
    if size > max_message_size:
        return _refuse(
            f"message size {size} bytes exceeds the maximum of {max_message_size} bytes "
            "(maxMailSize)",
            "5.3.4",
            552,
        )
    if quota_remaining is not None and size > quota_remaining:
        who = f"mailbox <{_show(mailbox)}>" if mailbox else "mailbox"
        left = max(quota_remaining, 0)
        return _refuse(
            f"{who} full: the message has {size} bytes, {left} bytes of quota remain",
            "5.2.2",
            552,
        )
    return None
