"""The POP3 session state machine of RFC 1939 §3, as data.

Rules (everything that changes the session state lives here; this file knows nothing of bytes,
parsing or which side is asking):

* A session starts in AUTHORIZATION. Only ``CAPA``, ``USER``, ``PASS``, ``APOP``, ``AUTH`` and
  ``QUIT`` are allowed there (RFC 1939 §4, RFC 2449 §5, RFC 5034 §4).
* An :class:`AuthAttempt` answered ``+OK`` moves to TRANSACTION; answered ``-ERR`` it stays in
  AUTHORIZATION and the client may try again.
* In TRANSACTION the message commands and ``CAPA`` are allowed; ``USER``/``PASS``/``APOP``/
  ``AUTH`` are not.
* ``QUIT`` in TRANSACTION enters UPDATE as soon as it is handed to the application, which removes
  the messages marked deleted and answers (RFC 1939 §6); any answer then closes the session.
* ``QUIT`` in AUTHORIZATION closes without an UPDATE (the core answers it itself).
* Too many bad commands, or the peer's EOF, close the session from any state.
* In UPDATE and CLOSED no command is read.
"""

from __future__ import annotations

from enum import Enum

from ._errors import LocalProtocolError
from ._events import AuthAttempt, DecisionEvent, Quit


class State(Enum):
    """The states of a POP3 session (RFC 1939 §3)."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


# Which command keywords may be used in which state.
ALLOWED_COMMANDS: dict[State, frozenset[str]] = {
    State.AUTHORIZATION: frozenset({"CAPA", "USER", "PASS", "APOP", "AUTH", "QUIT"}),
    State.TRANSACTION: frozenset(
        {"CAPA", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP", "QUIT"}
    ),
    State.UPDATE: frozenset(),
    State.CLOSED: frozenset(),
}

# Every command keyword the server understands in some state (others are "unknown").
KNOWN_COMMANDS: frozenset[str] = ALLOWED_COMMANDS[State.AUTHORIZATION].union(
    ALLOWED_COMMANDS[State.TRANSACTION]
)

# A decision event handed to the application: state -> event type -> next state.
ON_EVENT: dict[State, dict[type[DecisionEvent], State]] = {
    State.TRANSACTION: {Quit: State.UPDATE},
}

# The application's answer: state -> (event type, answered +OK) -> next state.
ON_ANSWER: dict[State, dict[tuple[type[DecisionEvent], bool], State]] = {
    State.AUTHORIZATION: {(AuthAttempt, True): State.TRANSACTION},
    State.UPDATE: {(Quit, True): State.CLOSED, (Quit, False): State.CLOSED},
}


class SessionState:
    """The current state plus the transition rules above; nothing else."""

    def __init__(self) -> None:
        self.state = State.AUTHORIZATION

    def allows(self, keyword: str) -> bool:
        return keyword in ALLOWED_COMMANDS[self.state]

    def on_event(self, event: DecisionEvent) -> None:
        if self.state not in (State.AUTHORIZATION, State.TRANSACTION):
            raise LocalProtocolError(f"no command may be handed out in state {self.state.name}")
        self.state = ON_EVENT.get(self.state, {}).get(type(event), self.state)

    def on_answer(self, event: DecisionEvent, ok: bool) -> None:
        self.state = ON_ANSWER.get(self.state, {}).get((type(event), ok), self.state)

    def close(self) -> None:
        self.state = State.CLOSED
