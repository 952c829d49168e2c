"""What the web console reads: :class:`ConsoleState` and the JSON views built from it.

The appliance hands the console its live objects (the Konnektor with its fault switches, the
appliance's :class:`~kim_appliance.store.Store` with the Fachdienst domains it serves, the
:class:`DirectoryStore`, the demo participants and the endpoints); :func:`status` turns them
into one JSON-ready dict for ``GET /api/status``, reading the store through its async interface.
This module must never change any state, never decrypt a message
and never show more of a stored message than its outer header fields Subject, From, Date,
Message-ID and X-KOM-LE-Version (a KIM message's content is encrypted, digest §2.2; the console
is no way around that).
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kim_appliance.directory import BASE_DN, DirectoryStore
from kim_appliance.directory.entries import DirectoryEntry
from kim_appliance.konnektor.cards import KeyPurpose
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.observe.observer import Observer
from kim_appliance.store import Account, Store, StoredMessage

#: how many of a mailbox's newest messages the console lists with their outer headers
NEWEST_PER_MAILBOX: Final = 5
#: the most of a stored message read to find its header (trace prefix + outer header)
MAX_HEADER_BYTES: Final = 64 * 1024
#: relay entries listed per Fachdienst (all are counted)
RELAY_LISTED: Final = 10
RELAY_COUNTED: Final = 100_000
#: the outer header fields the console shows; nothing else of a message leaves the store
SHOWN_HEADERS: Final = ("subject", "from", "to", "date", "message-id", "x-kom-le-version")


@dataclass
class ConsoleState:
    """The appliance's live objects the console shows. The console only reads them, except the
    Konnektor's fault switches (through ``konnektor.admin``).

    ``endpoints`` is the dict written to ``endpoints.json``; the appliance may fill it (and add
    the ``console`` entry) after the console has started, the console reads it per request.
    ``demo`` is the content of ``demo.json`` (participants with passwords and usernames).
    """

    #: None when the Konnektor runs in another process (``run --components``)
    konnektor: Konnektor | None
    #: the appliance's store (every Fachdienst's accounts, mailboxes and relay queue)
    store: Store
    #: the domains of the Fachdienste the console shows
    domains: Sequence[str]
    directory: DirectoryStore
    demo: Mapping[str, Any]
    endpoints: dict[str, Any] = field(default_factory=dict)
    #: the appliance's observer: its metrics registry for ``/metrics`` (issue 15)
    observer: Observer = field(default_factory=Observer)


async def status(state: ConsoleState, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Everything the console page shows, as one JSON-ready dict: the mailboxes and relay
    queues from the store, the rest (card states, certificates) built in a worker thread."""
    now = now or dt.datetime.now(dt.UTC)
    fachdienste = {
        domain: await _fachdienst(state.store, domain, now) for domain in sorted(state.domains)
    }
    return await trio.to_thread.run_sync(_status, state, now, fachdienste)


def _status(state: ConsoleState, now: dt.datetime, fachdienste: dict[str, Any]) -> dict[str, Any]:
    konnektor = state.konnektor
    faults = konnektor.admin.status() if konnektor is not None else {}
    cards = {card["iccsn"]: card for card in _cards(konnektor, faults)} if konnektor else {}
    return {
        "generated_at": now.isoformat(timespec="seconds"),
        "endpoints": state.endpoints,
        "mail_client": _mail_client(state.endpoints),
        "konnektor": _konnektor(konnektor, state.endpoints, faults) if konnektor else None,
        "participants": [_participant(p, cards) for p in state.demo.get("participants", [])],
        "cards": list(cards.values()),
        "trust_anchors": list(state.demo.get("trust_anchors", [])),
        "fachdienste": fachdienste,
        "directory": _directory(state.directory, state.endpoints),
    }


# --- endpoints and clients ---------------------------------------------------------------------


def split_address(address: str | None) -> dict[str, Any] | None:
    """``127.0.0.1:1465`` or ``[::1]:1465`` -> ``{"host": ..., "port": ...}``."""
    if not address:
        return None
    host, _, port = address.rpartition(":")
    try:
        return {"host": host.strip("[]"), "port": int(port)}
    except ValueError:
        return None


def _mail_client(endpoints: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a PVS mail client needs for the Clientmodul (digest §1.2 usernames)."""
    clientmodul = endpoints.get("clientmodul", {})
    return {
        "smtp": split_address(clientmodul.get("smtp")),
        "pop3": split_address(clientmodul.get("pop3")),
        "security": "SSL/TLS from the first byte (implicit TLS: SMTPS, POP3S)",
        "tls_ca": endpoints.get("tls_ca"),
        "username_format": "address#fachdienst-host:port#Mandant#ClientSystem#Workplace",
    }


def _konnektor(
    konnektor: Konnektor, endpoints: Mapping[str, Any], faults: Mapping[str, Any]
) -> dict[str, Any]:
    """connector.sds and the client-system contexts of the Infomodell (konnektor.json)."""
    contexts: list[dict[str, str]] = []
    infomodell = konnektor.infomodell
    for mandant in infomodell.mandanten.values():
        for workplace, client_systems in sorted(mandant.workplaces.items()):
            for client_system in sorted(client_systems):
                contexts.append(
                    {
                        "mandant": mandant.id,
                        "client_system": client_system,
                        "workplace": workplace,
                    }
                )
    return {
        "sds": endpoints.get("konnektor", {}).get("sds"),
        "contexts": contexts,
        "users": [
            {"user": u.id, "mandant": u.mandant, "cards": sorted(u.cards)}
            for u in infomodell.users.values()
        ],
        "unreachable": faults["unreachable"],
        "latency_ms": round(faults["latency"] * 1000),
        "revoked": faults["revoked"],
    }


def _cards(konnektor: Konnektor, faults: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each card's fault status plus its keys: purpose -> the algorithms it has."""
    by_iccsn = {card.iccsn: card for card in konnektor.cards}
    result: list[dict[str, Any]] = []
    for card_status in faults["cards"]:
        card = by_iccsn[card_status["iccsn"]]
        keys = {
            str(purpose): [str(c) for c in card.algorithms(purpose)]
            for purpose in KeyPurpose
            if card.algorithms(purpose)
        }
        result.append(
            {
                **card_status,
                "latency_ms": round(card_status["latency"] * 1000),
                "telematik_id": card.telematik_id,
                "keys": keys,
            }
        )
    return result


def _participant(p: Mapping[str, Any], cards: Mapping[str, Any]) -> dict[str, Any]:
    card = dict(p.get("card", {}))
    return {
        "address": p.get("address"),
        "display_name": p.get("display_name"),
        "telematik_id": p.get("telematik_id"),
        "fachdienst": p.get("fachdienst"),
        # the demo passwords are in demo.json for the developer; the console shows them so
        # that a mail client can be configured from this page (a test setup, not a real one)
        "password": p.get("password"),
        "smtp_username": p.get("smtp_username"),
        "pop3_username": p.get("pop3_username"),
        "card": {**card, "state": cards.get(card.get("iccsn", ""))},
    }


# --- mailboxes and relay queue -----------------------------------------------------------------


async def _fachdienst(store: Store, domain: str, now: dt.datetime) -> dict[str, Any]:
    mailboxes = [await _mailbox(store, account) for account in await _accounts(store, domain)]
    relays = await store.relay.pending(domain, limit=RELAY_COUNTED)
    return {
        "mailboxes": mailboxes,
        "relay_queue": {
            "length": len(relays),
            "due_now": sum(1 for r in relays if r.next_attempt <= now),
            "entries": [
                {
                    "id": r.id,
                    "to_domain": r.domain,
                    "sender": r.sender,
                    "recipients": [rcpt.address for rcpt in r.recipients],
                    "size": r.blob.size,
                    "attempts": r.attempts,
                    "next_attempt": r.next_attempt.isoformat(timespec="seconds"),
                    "gives_up": r.not_after.isoformat(timespec="seconds"),
                    "last_error": r.last_error,
                }
                for r in relays[:RELAY_LISTED]
            ],
        },
    }


async def _accounts(store: Store, domain: str) -> list[Account]:
    return sorted(await store.accounts.list(domain), key=lambda a: a.address.lower())


async def _mailbox(store: Store, account: Account) -> dict[str, Any]:
    messages = await store.mail.list(account.address)
    newest = sorted(messages, key=lambda m: (m.received_at, m.id), reverse=True)
    return {
        "address": account.address,
        "status": account.status,
        "messages": len(messages),
        "size": sum(m.size for m in messages),
        "newest": [await _message_summary(store, m) for m in newest[:NEWEST_PER_MAILBOX]],
    }


async def _message_summary(store: Store, message: StoredMessage) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "id": message.id,
        "uid": message.uid,
        "size": message.size,
        "received_at": message.received_at.isoformat(timespec="seconds"),
    }
    try:
        summary["headers"] = outer_headers(await read_header_block(store, message.id))
    except (LookupError, ValueError, OSError) as exc:
        # deleted meanwhile (POP3 DELE) or unreadable: say so instead of failing the page
        summary["headers"] = {}
        summary["error"] = f"header not readable: {exc}"
    return summary


async def read_header_block(store: Store, message_id: int) -> bytes:
    """The stored message's bytes up to the end of its header (at most MAX_HEADER_BYTES)."""
    data = b""
    async with store.mail.reader(message_id) as stream:
        while len(data) < MAX_HEADER_BYTES:
            chunk = await stream.read(8192)
            if not chunk:
                break
            data += chunk
            end = _header_end(data)
            if end is not None:
                return data[:end]
    return data[:MAX_HEADER_BYTES]


def _header_end(data: bytes) -> int | None:
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else None


def outer_headers(block: bytes) -> dict[str, str]:
    """The fields of SHOWN_HEADERS from a header block, RFC 2047 words decoded."""
    parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(block)
    result: dict[str, str] = {}
    for name in SHOWN_HEADERS:
        value = parsed.get(name)
        if value is not None:
            result[name] = " ".join(str(value).split())
    return result


# --- the VZD -----------------------------------------------------------------------------------


def _directory(directory: DirectoryStore, endpoints: Mapping[str, Any]) -> dict[str, Any]:
    listed = endpoints.get("directory", {})
    return {
        "ldap": listed.get("ldap"),
        "ldaps": listed.get("ldaps"),
        "base_dn": listed.get("base_dn", BASE_DN),
        "entries": [
            _entry(e) for e in sorted(directory.entries(), key=lambda e: e.display_name.lower())
        ],
    }


def _entry(entry: DirectoryEntry) -> dict[str, Any]:
    return {
        "dn": entry.dn,
        "telematik_id": entry.telematik_id,
        "display_name": entry.display_name,
        "entry_type": list(entry.entry_type),
        "active": entry.active,
        "mail": [a.mail for a in entry.published_addresses()],
        "kom_le_data": [a.kom_le_data() for a in entry.published_addresses()],
        "fachdaten": {
            fad: [a.to_json() for a in addresses]
            for fad, addresses in sorted(entry.fachdaten.items())
        },
        "certificates": [_certificate(der) for der in entry.certificates],
    }


def _certificate(der: bytes) -> dict[str, Any]:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        return {"error": f"not a DER certificate: {exc}"}
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:X}",
        "algorithm": _key_algorithm(cert),
        "not_after": cert.not_valid_after_utc.isoformat(timespec="seconds"),
    }


def _key_algorithm(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECC {key.curve.name}"
    return type(key).__name__
