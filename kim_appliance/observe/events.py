"""What a message trace is made of: one :class:`TraceEvent` per hop, in a fixed vocabulary.

Issue 15 (message trace): every message gets a trace of what happened to it, hop by hop, each
hop with its time (UTC), the node and the component that recorded it. The ids of an event link
it to the others: the Message-ID the practice software gave, the KIM message's own Message-ID
(normally the same, KOM-LE-A_2101-01, unless the PVS gave none), and two keys the appliance
makes itself (:func:`relay_key` of a relay queue entry, :func:`stored_key` of a stored copy),
so that the relay worker and the POP3 server, which see neither Message-ID, still add their
hops to the right trace. Either id finds the whole trace (``store.traces.trace``).

Outer metadata only: addresses, sizes, result codes, key types, KAS or direct, a short detail.
This module, and every caller, must never put a subject, a body or any other content into an
event; it holds plain data and no I/O, so the store, the Clientmodul and the Fachdienst may all
import it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

#: the longest detail text an event keeps (a reason, a reply line); longer ones are cut
MAX_DETAIL: Final = 300
#: the longest id kept (a Message-ID is at most 998 octets per RFC 5322 line limits; ours are
#: far shorter); a longer one is cut, still unique enough to find the trace
MAX_ID: Final = 250


class Stage(enum.StrEnum):
    """What happened at a hop (the trace's fixed vocabulary)."""

    #: the Clientmodul took a mail from the PVS, or a Fachdienst took a message over SMTP
    ACCEPTED = "accepted"
    #: the Clientmodul dropped a recipient (no valid certificate, KIM version: its code)
    DROPPED = "dropped"
    #: the Clientmodul refused the mail: nothing was sent (the reply the PVS got)
    REFUSED = "refused"
    #: the Clientmodul signed and encrypted it (recipients, key types, KAS or direct, size)
    SEALED = "sealed"
    #: the Clientmodul offered it to the Fachdienst's MTA (the MTA's reply code)
    SUBMITTED = "submitted"
    #: a Fachdienst stored it in a mailbox
    STORED = "stored"
    #: a Fachdienst queued it for the Fachdienst of another domain
    QUEUED = "queued"
    #: the relay handed it to the other Fachdienst (its reply code)
    RELAYED = "relayed"
    #: a relay attempt failed for now; it is tried again
    DEFERRED = "deferred"
    #: the relay gave up on recipients; the sender gets a failure report
    BOUNCED = "bounced"
    #: a delivery report (RFC 3464) about the message was written
    DSN = "dsn"
    #: a Fachdienst sent it to a POP3 client (RETR), or the Clientmodul passed it through
    FETCHED = "fetched"
    #: the Clientmodul decrypted and verified it (DecryptionResult, IntegrityCheckResult)
    OPENED = "opened"
    #: the Clientmodul delivered an error mail instead (or a report to the sender)
    ERROR_MAIL = "error-mail"


#: the component names of the trace
CLIENTMODUL: Final = "clientmodul"
FACHDIENST: Final = "fachdienst"


@dataclass(frozen=True)
class TraceEvent:
    """One hop of a message (see the module docstring).

    ``message_ids``: the ids naming the message at this hop, the most telling first (the KIM
    Message-ID where known); :func:`message_key` normal form. ``component``: ``clientmodul``
    or ``fachdienst DOMAIN``. ``result``: the code the hop ended with (an SMTP reply code, a
    DecryptionResult, an X-KIM-Fehlermeldung code). ``facts``: short named values (``keys``,
    ``transport``, ``integrity``, ...). ``expires_at``: when the store forgets the event (the
    mail's retention, dataTimeToLive). ``duration``: seconds the hop took (for the latency
    histograms; not stored).
    """

    at: datetime
    node: str
    component: str
    stage: Stage
    message_ids: tuple[str, ...]
    expires_at: datetime
    sender: str | None = None
    recipients: tuple[str, ...] = ()
    result: str | None = None
    size: int | None = None
    facts: Mapping[str, str] = field(default_factory=dict)
    detail: str = ""
    duration: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.at.tzinfo is None or self.expires_at.tzinfo is None:
            raise ValueError("trace event: times must be aware datetimes (UTC)")
        if len(self.detail) > MAX_DETAIL:
            object.__setattr__(self, "detail", self.detail[: MAX_DETAIL - 1] + "…")

    def to_json(self) -> dict[str, object]:
        """The event as the admin API and the console serve it."""
        return {
            "at": self.at.isoformat(),
            "node": self.node,
            "component": self.component,
            "stage": str(self.stage),
            "message_ids": list(self.message_ids),
            "sender": self.sender,
            "recipients": list(self.recipients),
            "result": self.result,
            "size": self.size,
            "facts": dict(self.facts),
            "detail": self.detail,
        }


def message_key(message_id: str) -> str:
    """The normal form of a Message-ID as a trace key: whitespace and folding removed, in angle
    brackets (``abc@host`` and ``<abc@host>`` find the same trace), at most :data:`MAX_ID`."""
    value = "".join(message_id.split())
    if not value.startswith("<"):
        value = f"<{value}>"
    return value[:MAX_ID]


def relay_key(relay_id: str) -> str:
    """The key of a relay queue entry (its 32-hex relay id; the ``KIM-Relay-ID`` field's
    ``<hex@domain>`` form is accepted too), shared by the sending and the receiving side."""
    return "relay:" + relay_id.strip("<>").partition("@")[0].lower()


def stored_key(message_id: int) -> str:
    """The key of a message stored in a mailbox (the store's message id)."""
    return f"stored:{message_id}"


def is_message_id(key: str) -> bool:
    """True for a Message-ID key, False for the keys the appliance makes (relay, stored)."""
    return key.startswith("<")
