"""The test PKI with gematik certificate profiles, and certificate path validation.

Issues C.HCI.*, C.HP.*, TLS and Konnektor certificates in gematik's layout (digest §2.9) from a
test PKI of its own (RSA-2048 and brainpoolP256r1 roots), and validates paths to trust anchors
with CRL revocation. This package knows nothing of mail, CMS or the appliance's components.
"""

from kim_appliance.pki.admission import Admission, admission_of
from kim_appliance.pki.authority import CertificateAuthority, Issued, RevokedEntry
from kim_appliance.pki.profiles import (
    PROFILE_SPECS,
    Algorithm,
    CaKind,
    CertProfile,
    ProfileSpec,
    profile_of,
)
from kim_appliance.pki.testpki import TestPki
from kim_appliance.pki.validate import (
    PathValidationError,
    Purpose,
    TrustStore,
    ValidatedPath,
    describe,
)

__all__ = [
    "PROFILE_SPECS",
    "Admission",
    "Algorithm",
    "CaKind",
    "CertProfile",
    "CertificateAuthority",
    "Issued",
    "PathValidationError",
    "ProfileSpec",
    "Purpose",
    "RevokedEntry",
    "TestPki",
    "TrustStore",
    "ValidatedPath",
    "admission_of",
    "describe",
    "profile_of",
]
