"""The SMTP server session as data: states, which command is allowed where, where it leads.

Rules (everything that changes the session state lives in these tables; ``_server.py`` only
looks them up and this file knows nothing about bytes):

* A session is in exactly one :class:`State`. ``TRANSITIONS[state][verb]`` is where a command
  leads when it succeeds. A verb known to SMTP but missing from the row of the current state is
  out of sequence: 503 5.5.1 (RFC 5321 §4.1.4: MAIL before EHLO, RCPT before MAIL, DATA before
  an accepted RCPT, MAIL inside a transaction).
* Decision verbs (``ACCEPTING_CODES``) move the state only when the application answers with an
  accepting code; any 4xx/5xx leaves the state as it was. ``END-OF-DATA`` (the CRLF.CRLF) ends
  the transaction whatever the answer.
* The core answers the other verbs itself and moves at once.
* Authentication is a flag beside the state: with ``require_auth``, MAIL/RCPT/DATA after
  EHLO without it get 530 5.7.0 (digest §1.3, §3.2); AUTH is refused with 503 5.5.1 once
  authenticated and inside a transaction (RFC 4954 §4). RSET and EHLO keep the flag.
* Verbs in ``NOT_IMPLEMENTED`` are answered 502 5.5.1; anything else is unknown: 500 5.5.2.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    GREETED = "greeted"  # connected, no HELO/EHLO yet
    READY = "ready"  # HELO/EHLO done, no mail transaction
    MAIL = "mail"  # MAIL FROM accepted, no recipient yet
    RCPT = "rcpt"  # at least one RCPT TO accepted
    DATA = "data"  # reading the message body
    CLOSED = "closed"


G, R, M, T, D, C = (State.GREETED, State.READY, State.MAIL, State.RCPT, State.DATA, State.CLOSED)

# Verbs that work in every state but DATA and leave it unchanged.
_ANYTIME = ("NOOP", "VRFY", "HELP")


def _row(state: State, **moves: State) -> dict[str, State]:
    row = dict.fromkeys(_ANYTIME, state)
    row.update({"QUIT": C, "RSET": R if state is not G else G})
    row.update(moves)
    return row


TRANSITIONS: dict[State, dict[str, State]] = {
    G: _row(G, EHLO=R, HELO=R),
    R: _row(R, EHLO=R, HELO=R, AUTH=R, MAIL=M),
    M: _row(M, EHLO=R, HELO=R, RCPT=T),
    T: _row(T, EHLO=R, HELO=R, RCPT=T, DATA=D),
    D: {"END-OF-DATA": R},
    C: {},
}

# Reply codes with which the application accepts a decision event; the move in TRANSITIONS
# happens only on these. Any 4xx/5xx is a refusal.
ACCEPTING_CODES: dict[str, frozenset[int]] = {
    "AUTH": frozenset({235}),
    "MAIL": frozenset({250}),
    "RCPT": frozenset({250, 251}),
    "DATA": frozenset({354}),
    "END-OF-DATA": frozenset({250}),
}

# Moves that happen whatever the application answers.
AFTER_ANY_REPLY: dict[str, State] = {"END-OF-DATA": R}

NEEDS_AUTH = frozenset({"MAIL", "RCPT", "DATA"})

NOT_IMPLEMENTED = frozenset(
    {"EXPN", "TURN", "ETRN", "ATRN", "BDAT", "STARTTLS", "SEND", "SOML", "SAML"}
)

KNOWN_VERBS = frozenset(verb for row in TRANSITIONS.values() for verb in row) - {"END-OF-DATA"}
