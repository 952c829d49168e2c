"""The errors of the emulated Konnektor, with gematik's error codes (digest §1.6, §1.8).

A real Konnektor answers a failed call with a SOAP fault whose ``GERROR:Error/Trace`` carries
``Code``, ``Severity``, ``ErrorType`` and ``ErrorText`` (tel/error/TelematikError.xsd). Every
refusal of this package is a :class:`KonnektorError` with exactly those four fields plus a
``detail`` (``Trace/Detail``) that says what was wrong in this call, so the SOAP layer maps an
error 1:1 onto a fault. Being unreachable is different: a real Konnektor that is down sends no
fault at all, so :class:`KonnektorUnreachableError` is a ``ConnectionError``, not a
``KonnektorError``. This module holds data and exception classes only; it must never decide
when an error happens.

Where the codes come from. Confirmed by gematik's own clients and public Konnektor clients
quoting gemSpec_Kon: 4000, 4004, 4005, 4006, 4010, 4011, 4014, 4021 (the call context,
TUC_KON_000), 4008 (card not inserted, also for an unknown card handle), 4085 (access
conditions not met: the SMC-B/HBA is not unlocked). Not confirmed anywhere in the reference
material and therefore an emulator choice (see :data:`UNCONFIRMED`): 4001 (internal error) and
4058 (call not allowed: wrong card type, or no key of the requested kind on the card).
KonnektorError deliberately is no ``ValueError``: the CMS code turns ValueErrors of a key
operation into decryption errors, and a card error must reach the caller unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from kim_appliance.errors import KimError


class Severity(enum.StrEnum):
    """``Trace/Severity`` values (gemSpec_OM)."""

    FATAL = "Fatal"
    ERROR = "Error"
    WARNING = "Warning"
    INFO = "Info"


class ErrorType(enum.StrEnum):
    """``Trace/ErrorType`` values (gemSpec_OM)."""

    TECHNICAL = "Technical"
    SECURITY = "Security"
    BUSINESS = "Business"
    INFRASTRUCTURE = "Infrastructure"


# --- the codes -------------------------------------------------------------------------------

SYNTAX_ERROR: Final = 4000
INTERNAL_ERROR: Final = 4001
INVALID_MANDANT: Final = 4004
INVALID_CLIENT_SYSTEM: Final = 4005
INVALID_WORKPLACE: Final = 4006
CARD_NOT_INSERTED: Final = 4008
CLIENT_SYSTEM_NOT_OF_MANDANT: Final = 4010
WORKPLACE_NOT_OF_MANDANT: Final = 4011
WORKPLACE_NOT_OF_CLIENT_SYSTEM: Final = 4014
CONTEXT_INCOMPLETE: Final = 4021
CALL_NOT_ALLOWED: Final = 4058
ACCESS_CONDITIONS_NOT_MET: Final = 4085

# VerifyDocument results that carry a code (Tab_Verm_Sig_Prüf, digest §1.6)
SIGNATURE_CONTENT_MANIPULATED: Final = 4115
NO_SIGNATURE: Final = 4253
WRONG_SIGNATURE_FORMAT: Final = 4112
CERTIFICATE_PATH_NOT_VALIDATABLE: Final = 4206
CERTIFICATE_STATUS_UNKNOWN: Final = 4264


@dataclass(frozen=True)
class ErrorSpec:
    text: str  # gematik's ErrorText (German, as a real Konnektor sends it)
    error_type: ErrorType
    severity: Severity


ERRORS: Final[dict[int, ErrorSpec]] = {
    SYNTAX_ERROR: ErrorSpec("Syntaxfehler", ErrorType.TECHNICAL, Severity.ERROR),
    INTERNAL_ERROR: ErrorSpec("Interner Fehler", ErrorType.TECHNICAL, Severity.ERROR),
    INVALID_MANDANT: ErrorSpec("Ungültige Mandanten-ID", ErrorType.SECURITY, Severity.ERROR),
    INVALID_CLIENT_SYSTEM: ErrorSpec(
        "Ungültige Clientsystem-ID", ErrorType.SECURITY, Severity.ERROR
    ),
    INVALID_WORKPLACE: ErrorSpec("Ungültige Arbeitsplatz-ID", ErrorType.SECURITY, Severity.ERROR),
    CARD_NOT_INSERTED: ErrorSpec(
        "Karte nicht als gesteckt identifiziert", ErrorType.TECHNICAL, Severity.ERROR
    ),
    CLIENT_SYSTEM_NOT_OF_MANDANT: ErrorSpec(
        "Clientsystem ist dem Mandanten nicht zugeordnet", ErrorType.SECURITY, Severity.ERROR
    ),
    WORKPLACE_NOT_OF_MANDANT: ErrorSpec(
        "Arbeitsplatz ist dem Mandanten nicht zugeordnet", ErrorType.SECURITY, Severity.ERROR
    ),
    WORKPLACE_NOT_OF_CLIENT_SYSTEM: ErrorSpec(
        "Für den Mandanten ist der Arbeitsplatz nicht dem Clientsystem zugeordnet",
        ErrorType.SECURITY,
        Severity.ERROR,
    ),
    CONTEXT_INCOMPLETE: ErrorSpec(
        "Es sind nicht alle Pflichtparameter Mandant-Id, ClientSystem-Id, Workplace-Id gefüllt",
        ErrorType.SECURITY,
        Severity.ERROR,
    ),
    CALL_NOT_ALLOWED: ErrorSpec("Aufruf nicht zulässig", ErrorType.SECURITY, Severity.ERROR),
    ACCESS_CONDITIONS_NOT_MET: ErrorSpec(
        "Zugriffsbedingungen nicht erfüllt", ErrorType.SECURITY, Severity.ERROR
    ),
}

#: Codes the emulator uses that no document at hand confirms (see the module docstring).
UNCONFIRMED: Final = frozenset({INTERNAL_ERROR, CALL_NOT_ALLOWED})


class KonnektorError(KimError):
    """A Konnektor call failed with a gematik error code.

    ``code``, ``message`` (the ErrorText), ``severity`` and ``error_type`` are what a SOAP fault
    carries in its Trace; ``detail`` says what was wrong in this call (field and reason).
    """

    def __init__(
        self,
        code: int,
        detail: str = "",
        *,
        message: str | None = None,
        severity: Severity | None = None,
        error_type: ErrorType | None = None,
    ) -> None:
        spec = ERRORS.get(code)
        self.code = code
        self.message = message or (spec.text if spec else f"Fehler {code}")
        self.severity = severity or (spec.severity if spec else Severity.ERROR)
        self.error_type = error_type or (spec.error_type if spec else ErrorType.TECHNICAL)
        self.detail = detail
        super().__init__(f"{code} {self.message}" + (f": {detail}" if detail else ""))


class ContextError(KonnektorError):
    """The call context (Mandant, ClientSystem, Workplace, User) is invalid (4004-4021)."""


class CardError(KonnektorError):
    """The card is missing, or cannot do what was asked (4008, 4058)."""


class AccessError(KonnektorError):
    """The card's PIN is not verified (or blocked, or still the transport PIN): 4085."""


class ParameterError(KonnektorError):
    """A parameter is malformed or not one of the allowed values: 4000."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(SYNTAX_ERROR, f"{field}: {reason}")
        self.field = field
        self.reason = reason


class DocumentFormatError(KonnektorError):
    """A document to decrypt is not a well-formed AuthEnvelopedData (4000; the Clientmodul
    reports X-KIM-DecryptionResult 02 / 4010)."""

    def __init__(self, detail: str) -> None:
        super().__init__(SYNTAX_ERROR, detail)


class KeyNotAvailableError(KonnektorError):
    """None of the card's keys is a recipient of the document (4058; the Clientmodul reports
    X-KIM-DecryptionResult 01 / 4009)."""

    def __init__(self, detail: str) -> None:
        super().__init__(CALL_NOT_ALLOWED, detail)


class DecryptionFailedError(KonnektorError):
    """The content key unwrapped, but the GCM tag did not verify (4000; the data is damaged)."""

    def __init__(self, detail: str) -> None:
        super().__init__(SYNTAX_ERROR, detail)


class KonnektorUnreachableError(KimError, ConnectionError):
    """The Konnektor does not answer (fault "Konnektor unreachable"). The Clientmodul reports
    X-KIM-DecryptionResult 03 / 4011 on receive and refuses the message on send."""

    def __init__(self, operation: str) -> None:
        super().__init__(
            f"Konnektor not reachable: {operation} got no answer (fault 'unreachable' is on)"
        )
        self.operation = operation
