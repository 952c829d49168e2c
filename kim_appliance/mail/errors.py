"""Errors of mail parsing and building. They say what was wrong and where."""

from __future__ import annotations

from kim_appliance.errors import KimError


class MailFormatError(KimError, ValueError):
    """A mail (inner or outer) is malformed or lacks what KIM requires of it."""
