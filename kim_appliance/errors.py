"""The appliance's exception hierarchy: one base class, one subclass per area.

Every error a user sees says what failed, why, and where possible what to do. Parse errors are
``ValueError`` subclasses so that generic callers can treat them as bad input.
"""

from __future__ import annotations


class KimError(Exception):
    """Base class of every error raised by kim_appliance."""


class ConfigError(KimError, ValueError):
    """The configuration or the data dir is invalid."""
