"""Errors of the sans-IO SMTP cores.

The split follows h11: :class:`LocalProtocolError` means *we* misused a core (answered a
decision that was not pending, put a CR into a reply text, sent a body before the 354);
:class:`RemoteProtocolError` means the *peer* broke RFC 5321 (a reply nobody asked for, a reply
line over the limit). Problems of the SMTP client talking to our server are not exceptions:
the server core answers them with a reply. This module must never hold protocol logic.
"""

from __future__ import annotations

from kim_appliance.errors import KimError


class SmtpError(KimError):
    """Base class of the SMTP core errors."""


class LocalProtocolError(SmtpError):
    """The application used an SMTP core in a way the protocol does not allow."""


class RemoteProtocolError(SmtpError, ValueError):
    """The peer sent bytes that break the SMTP protocol; the connection should be closed."""
