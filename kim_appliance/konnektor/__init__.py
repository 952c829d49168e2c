"""The Konnektor emulation: SMC-B and HBA cards, the Infomodell, the card operations, faults.

In-process API for the Clientmodul and for the SOAP services (digest §1.8): :class:`Konnektor`
with one method per SOAP operation, :class:`Context` for the call context, the cards and keys
of :mod:`.cards`, the error codes of :mod:`.errors`, the fault switches of :mod:`.faults`. This
package knows nothing of SOAP, HTTP or mail transport.
"""

from kim_appliance.konnektor.cards import (
    PIN_CH,
    PIN_SMC,
    Card,
    CardInfo,
    CardKey,
    CardSet,
    CardType,
    Crypt,
    KeyPurpose,
    PinResult,
    PinStatus,
)
from kim_appliance.konnektor.errors import (
    AccessError,
    CardError,
    ContextError,
    KonnektorError,
    KonnektorUnreachableError,
    ParameterError,
)
from kim_appliance.konnektor.faults import FaultAdmin, FaultState
from kim_appliance.konnektor.infomodell import Context, Infomodell, KonnektorConfig
from kim_appliance.konnektor.operations import (
    CertificateVerification,
    DocumentVerification,
    HighLevelResult,
    Konnektor,
    PinResponse,
    PinStatusResult,
)

__all__ = [
    "PIN_CH",
    "PIN_SMC",
    "AccessError",
    "Card",
    "CardError",
    "CardInfo",
    "CardKey",
    "CardSet",
    "CardType",
    "CertificateVerification",
    "Context",
    "ContextError",
    "Crypt",
    "DocumentVerification",
    "FaultAdmin",
    "FaultState",
    "HighLevelResult",
    "Infomodell",
    "KeyPurpose",
    "Konnektor",
    "KonnektorConfig",
    "KonnektorError",
    "KonnektorUnreachableError",
    "ParameterError",
    "PinResponse",
    "PinResult",
    "PinStatus",
    "PinStatusResult",
]
