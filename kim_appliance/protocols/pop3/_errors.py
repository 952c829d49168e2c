"""Errors of the sans-IO POP3 cores.

The split follows h11: :class:`LocalProtocolError` means *we* misused a core (answered an event
that was not pending, put a CR into a response text); :class:`RemoteProtocolError` means the
*peer* broke RFC 1939 (a reply nobody asked for, a line over the limit). This module must never
hold protocol logic.
"""

from __future__ import annotations

from kim_appliance.errors import KimError


class Pop3Error(KimError):
    """Base class of the POP3 core errors."""


class LocalProtocolError(Pop3Error):
    """The application used a POP3 core in a way the protocol does not allow."""


class RemoteProtocolError(Pop3Error, ValueError):
    """The peer sent bytes that break the POP3 protocol; the connection should be closed."""
