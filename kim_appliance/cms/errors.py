"""Errors of the KIM CMS profile: every refusal names the field and what was wrong.

``CmsError`` is a ``ValueError``: bad input, never a crash. Subclasses let callers map a failure
to the KIM result codes (digest §1.6): a message that cannot be decrypted (DecryptionResult
01/02) versus one whose signature or profile check fails (IntegrityCheckResult 02-06).
"""

from __future__ import annotations

from kim_appliance.errors import KimError


class CmsError(KimError, ValueError):
    """A CMS structure violates the KIM profile or is malformed.

    ``field`` names the structure (e.g. ``"AuthEnvelopedData.recipientInfos[1].rid"``) and
    ``reason`` says what was wrong with it.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class CmsFormatError(CmsError):
    """The encoding is malformed or does not follow the profile (DecryptionResult 02, 4010)."""


class NoMatchingRecipientError(CmsError):
    """None of the RecipientInfos belongs to the given key (DecryptionResult 01, 4009)."""


class DecryptionError(CmsError):
    """The content key could not be unwrapped, or the GCM tag did not verify."""


class SignatureError(CmsError):
    """The SignedData signature, its digest or a signed attribute does not verify (code 02/4115)."""
