"""Errors of the KIM CMS profile: every refusal names the field and what was wrong.

``CmsError`` is a ``ValueError``: bad input, never a crash. Subclasses let callers map a failure
to the KIM result codes (digest §1.6): a message that cannot be decrypted (DecryptionResult
01/02) versus one whose signature or profile check fails (IntegrityCheckResult 02-06).

Every reader of this package raises :class:`CmsError` and nothing else, whatever it is fed
(issue 11: an exception of another type blocked a mailbox). asn1crypto and cryptography parse
lazily and raise their own types from deep inside (``ValueError``, ``TypeError``,
``AttributeError``, ``UnicodeDecodeError``, ``InvalidVersion``, ``UnsupportedAlgorithm`` ...);
:func:`malformed_as_cms_error` turns them into :class:`CmsFormatError` at a reader's boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509 import InvalidVersion

from kim_appliance.errors import KimError

#: What the ASN.1 and X.509 libraries raise on input they cannot take (fuzzing found each of
#: these inside SignedDataReader.verify, issue 11).
PARSER_FAILURES: Final = (
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    OverflowError,
    RecursionError,
    UnicodeError,
    UnsupportedAlgorithm,
    InvalidSignature,
    InvalidVersion,
)
#: How much of a library's complaint goes into the error message.
_MAX_DETAIL: Final = 300


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


@contextlib.contextmanager
def malformed_as_cms_error(field: str) -> Iterator[None]:
    """Let :class:`CmsError` through; turn a library's :data:`PARSER_FAILURES` into a
    :class:`CmsFormatError` for ``field`` that says what the library found."""
    try:
        yield
    except CmsError:
        raise
    except PARSER_FAILURES as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:_MAX_DETAIL]
        raise CmsFormatError(field, f"malformed or unsupported ({detail})") from exc
