"""The Clientmodul username: routing data and Konnektor call context inside the SASL username.

The practice software (PVS) logs in to the Clientmodul with a username of ``#``-separated
fields (digest §1.2; CM-1.13 §3.3.2.2 and §3.4.2.2, KOM-LE-A_2010, KOM-LE-A_2032)::

    idx  SMTP                          POP3
    0    account (KIM address)         account (KIM address)
    1    <MTA host>:<port>             <POP3 host>:<port>        (optional since 1.5.4)
    2    MandantId                     MandantId
    3    ClientSystemId                ClientSystemId
    4    WorkplaceId                   WorkplaceId
    5    KonnektorId (optional)        UserId (optional; needed for an HBA mailbox)
    6    -                             KonnektorId (optional)

A skipped optional field before a used one holds the placeholder ``*`` (KOM-LE-A_21519-02 for
SMTP, KOM-LE-A_21518-02 for POP3). This module only parses; it never resolves a host, never
calls the Konnektor and never rewrites the account address (digest §2.10: addresses are compared
case-insensitively but kept as given). Errors name the field that is wrong and why.

Choices written down here (the spec leaves them open):

* index 1 may be ``*`` or empty when the PVS leaves the server out (1.5.4: DNS-SD finds it,
  KOM-LE-A_23541); the usernames without the field at all are not accepted, because their
  field count would clash with the optional trailing fields;
* the separator between host and port may be any character other than ``#`` that cannot occur
  in a host name (``:`` as in the spec, or ``;``, ``,``, ``/``, ``|``, ...: the ILF-PS allows
  other delimiters "in semantischer Abgrenzung"); an IPv6 host is written in brackets;
* the SMTP username has no UserId field in CM-1.13 and the ILF-PS (an HBA holder sends with the
  SMC-B of her practice, KOM-LE-A_2129); so for SMTP ``user_id`` is always None and a 7th field
  is refused (openkim parses SMTP usernames like POP3 ones; we follow the spec);
* the account domain may contain ``_`` (the spec's own example ``hrst_domain.kim.telematik``
  does, though digest §2.10 lists ``[a-z0-9.-]``) and must end ``.kim.telematik`` or
  ``.kim.telematik-test`` unless the caller passes ``require_kim_domain=False``;
* MandantId, ClientSystemId and WorkplaceId are mandatory; only where the Clientmodul is
  configured with a default for one (:class:`ContextDefaults`, ``[clientmodul] mandant_id``
  ...) may the username write ``*`` (or leave it empty) for it, and the default is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Final

from kim_appliance.clientmodul.ports import CallContext
from kim_appliance.errors import KimError

#: The placeholder of a skipped optional field (KOM-LE-A_21519-02, KOM-LE-A_21518-02).
PLACEHOLDER: Final = "*"
#: Refuse absurd usernames before splitting them (SASL allows far more; no PVS needs it).
MAX_USERNAME_LENGTH: Final = 1024
#: ConnectorContext.xsd ids are plain strings; we keep them to a sane length, printable.
MAX_ID_LENGTH: Final = 256

# digest §2.10: local part [A-Za-z0-9._-]{1,64}; domain (here also "_", see the module
# docstring) at most 189 characters, labels separated by dots.
_LOCAL_PART: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DOMAIN: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")
_MAX_DOMAIN: Final = 189
_KIM_SUFFIXES: Final = (".kim.telematik", ".kim.telematik-test")
# index 1: a host name / IPv4 address, or an IPv6 literal in brackets; then one separator
# character that cannot belong to the host; then the port digits.
_HOST_PORT: Final = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?P<sep>[^A-Za-z0-9._\[\]#-])(?P<port>.*)"
)
_HOST_NAME: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")
_PORT: Final = re.compile(r"[0-9]{1,5}")

_FIELD_NAMES_SMTP: Final = (
    "account",
    "host:port",
    "MandantId",
    "ClientSystemId",
    "WorkplaceId",
    "KonnektorId",
)
_FIELD_NAMES_POP3: Final = (
    "account",
    "host:port",
    "MandantId",
    "ClientSystemId",
    "WorkplaceId",
    "UserId",
    "KonnektorId",
)


class UsernameError(KimError, ValueError):
    """The Clientmodul username is incomplete or malformed (SMTP ``501 5.5.4``, POP3 ``-ERR``).

    ``field`` names the field that is wrong (``"account"``, ``"host:port"``, ``"MandantId"``,
    ... or ``"username"`` for the whole), ``reason`` says why.
    """

    def __init__(self, protocol: str, field: str, reason: str) -> None:
        super().__init__(f"{protocol} username: {field}: {reason}")
        self.protocol = protocol
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ContextDefaults:
    """The call context the Clientmodul uses where a username writes ``*`` for a mandatory
    context field (None: the field stays mandatory)."""

    mandant_id: str | None = None
    client_system_id: str | None = None
    workplace_id: str | None = None

    def default_for(self, field: str) -> str | None:
        return {
            "MandantId": self.mandant_id,
            "ClientSystemId": self.client_system_id,
            "WorkplaceId": self.workplace_id,
        }.get(field)


NO_DEFAULTS: Final = ContextDefaults()


@dataclass(frozen=True)
class CmLogin:
    """A parsed Clientmodul username (digest §1.2)."""

    #: the KIM address, exactly as given (index 0); also the Fachdienst username (A_2161)
    account: str
    #: the Fachdienst host and port of index 1; None when the PVS left it out (``*``/empty)
    host: str | None
    port: int | None
    mandant_id: str
    client_system_id: str
    workplace_id: str
    #: POP3 index 5, needed when the mailbox uses an HBA (ILF-PS); always None for SMTP
    user_id: str | None
    #: SMTP index 5, POP3 index 6: a key into the Clientmodul's Konnektor configuration
    konnektor_id: str | None

    def context(self) -> CallContext:
        """The Konnektor call context (CCTX:Context, digest §1.8) of this login."""
        return CallContext(
            mandant_id=self.mandant_id,
            client_system_id=self.client_system_id,
            workplace_id=self.workplace_id,
            user_id=self.user_id,
        )


def parse_smtp_username(
    username: str,
    *,
    require_kim_domain: bool = True,
    defaults: ContextDefaults = NO_DEFAULTS,
) -> CmLogin:
    """Parse an SMTP username ``account#host:port#Mandant#ClientSystem#Workplace[#KonnektorId]``.

    CM-1.13 §3.3.2.2, KOM-LE-A_2010, KOM-LE-A_21519-02. Raises :class:`UsernameError`.
    """
    login, optional = _parse("SMTP", username, _FIELD_NAMES_SMTP, require_kim_domain, defaults)
    return replace(login, konnektor_id=optional[0])


def parse_pop3_username(
    username: str,
    *,
    require_kim_domain: bool = True,
    defaults: ContextDefaults = NO_DEFAULTS,
) -> CmLogin:
    """Parse a POP3 username, fields
    ``account#host:port#Mandant#ClientSystem#Workplace[#UserId[#KonnektorId]]``.

    CM-1.13 §3.4.2.2, KOM-LE-A_2032, KOM-LE-A_21518-02. Raises :class:`UsernameError`.
    """
    login, optional = _parse("POP3", username, _FIELD_NAMES_POP3, require_kim_domain, defaults)
    return replace(login, user_id=optional[0], konnektor_id=optional[1])


def _split(protocol: str, username: str, names: tuple[str, ...]) -> list[str]:
    if not username:
        raise UsernameError(protocol, "username", "is empty")
    if len(username) > MAX_USERNAME_LENGTH:
        raise UsernameError(
            protocol, "username", f"is {len(username)} characters, at most {MAX_USERNAME_LENGTH}"
        )
    fields = username.split("#")
    layout = "#".join(names[:5]) + "".join(f"[#{n}]" for n in names[5:])
    if len(fields) < 5:
        missing = names[len(fields)]
        raise UsernameError(
            protocol,
            missing,
            f"missing: the username has {len(fields)} fields, needs at least 5 ({layout})",
        )
    if len(fields) > len(names):
        raise UsernameError(
            protocol,
            "username",
            f"has {len(fields)} fields, at most {len(names)} allowed ({layout})",
        )
    return fields


def _optional_fields(protocol: str, fields: list[str], names: tuple[str, ...]) -> list[str | None]:
    """Indexes 5.. as values or None; ``*`` (or a trailing empty field) means skipped."""
    values: list[str | None] = []
    for index in range(5, len(names)):
        raw = fields[index] if index < len(fields) else None
        if raw is None or raw == PLACEHOLDER:
            values.append(None)
            continue
        if raw == "":
            if index == len(fields) - 1:
                # a trailing "#" with nothing after it: treat like a skipped field
                values.append(None)
                continue
            raise UsernameError(
                protocol, names[index], f"is empty; write {PLACEHOLDER} to skip an optional field"
            )
        values.append(_check_id(protocol, names[index], raw))
    return values


def _parse(
    protocol: str,
    username: str,
    names: tuple[str, ...],
    require_kim_domain: bool,
    defaults: ContextDefaults,
) -> tuple[CmLogin, list[str | None]]:
    """The mandatory part (indexes 0-4) and the optional fields, checked in index order."""
    fields = _split(protocol, username, names)
    account = _check_account(protocol, fields[0], require_kim_domain)
    host, port = _parse_host_port(protocol, fields[1])
    mandant, client, workplace = (
        _check_mandatory(protocol, name, value, defaults.default_for(name))
        for name, value in zip(
            ("MandantId", "ClientSystemId", "WorkplaceId"), fields[2:5], strict=True
        )
    )
    login = CmLogin(
        account=account,
        host=host,
        port=port,
        mandant_id=mandant,
        client_system_id=client,
        workplace_id=workplace,
        user_id=None,
        konnektor_id=None,
    )
    return login, _optional_fields(protocol, fields, names)


def _check_account(protocol: str, account: str, require_kim_domain: bool) -> str:
    """The KIM address of index 0 (digest §2.10); returned unchanged."""
    if not account:
        raise UsernameError(protocol, "account", "is empty; it must be the KIM address")
    local, at, domain = account.rpartition("@")
    if not at or not local or not domain:
        raise UsernameError(
            protocol, "account", f"{_show(account)} is not a KIM address local@domain"
        )
    if not _LOCAL_PART.fullmatch(local):
        raise UsernameError(
            protocol,
            "account",
            f"local part of {_show(account)} must be 1..64 characters of [A-Za-z0-9._-]",
        )
    if len(domain) > _MAX_DOMAIN or not _DOMAIN.fullmatch(domain):
        raise UsernameError(
            protocol,
            "account",
            f"domain of {_show(account)} must be dot-separated labels of [a-z0-9_-], "
            f"at most {_MAX_DOMAIN} characters",
        )
    if require_kim_domain and not domain.lower().endswith(_KIM_SUFFIXES):
        raise UsernameError(
            protocol,
            "account",
            f"domain of {_show(account)} must end in .kim.telematik or .kim.telematik-test",
        )
    return account


def _parse_host_port(protocol: str, value: str) -> tuple[str | None, int | None]:
    """Index 1: ``host:port`` (or another separator), or ``*``/empty when left out."""
    if value in ("", PLACEHOLDER):
        return None, None  # 1.5.4: optional, found by DNS-SD (KOM-LE-A_23541)
    match = _HOST_PORT.fullmatch(value)
    if match is None:
        raise UsernameError(
            protocol,
            "host:port",
            f"{_show(value)} is not <host>:<port> (e.g. fd1.kim.telematik-test:465)",
        )
    host, port_text = match["host"], match["port"]
    if not host.startswith("[") and not _HOST_NAME.fullmatch(host):
        raise UsernameError(protocol, "host:port", f"host {_show(host)} is not a host name")
    if not _PORT.fullmatch(port_text):
        raise UsernameError(
            protocol, "host:port", f"port {_show(port_text)} is not a number 1..65535"
        )
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise UsernameError(protocol, "host:port", f"port {port} is outside 1..65535")
    return host.removeprefix("[").removesuffix("]"), port


def _check_mandatory(protocol: str, name: str, value: str, default: str | None) -> str:
    if value in ("", PLACEHOLDER) and default:
        return default  # the Clientmodul's configured call context (module docstring)
    if value == "":
        raise UsernameError(protocol, name, "is empty but mandatory")
    if value == PLACEHOLDER:
        raise UsernameError(
            protocol,
            name,
            f"is mandatory; the placeholder {PLACEHOLDER} is only for optional fields",
        )
    return _check_id(protocol, name, value)


def _check_id(protocol: str, name: str, value: str) -> str:
    if len(value) > MAX_ID_LENGTH:
        raise UsernameError(
            protocol, name, f"is {len(value)} characters long, at most {MAX_ID_LENGTH}"
        )
    # SASL usernames are UTF-8; an id may be any printable text without white space
    if not value.isprintable() or any(c.isspace() for c in value):
        raise UsernameError(
            protocol, name, f"{_show(value)} holds white space or a control character"
        )
    return value


def _show(value: str) -> str:
    """A value fit for a one-line error reply: printable ASCII, cut short, quoted."""
    shown = "".join(c if " " <= c <= "~" else "?" for c in value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return repr(shown)
