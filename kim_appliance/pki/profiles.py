"""gematik certificate profiles: which key usage, policies, roles and CA each certificate type has.

One :class:`ProfileSpec` per :class:`CertProfile` is the single place that says what a
C.HCI.ENC, C.FD.TLS-S, ... looks like (digest §2.9, §1.9; modelled on gematik's test
certificates in SMIME-Profil.zip). The authority builds certificates from these specs and the
validator checks against them. This module holds data and lookups only; it must never create
keys or sign anything.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from kim_appliance.pki import oids


class Algorithm(enum.Enum):
    """Key algorithm of a certificate: RSA-2048, or ECC on brainpoolP256r1 (digest §2.8)."""

    RSA = "RSA"
    ECC = "ECC"


class CaKind(enum.Enum):
    """Which issuing CA of the TI signs a profile: SMC-B, HBA, or components (KOMP)."""

    SMCB = "SMCB"
    HBA = "HBA"
    KOMP = "KOMP"


class CertProfile(enum.Enum):
    """The certificate types the appliance issues; values are gematik's names (digest §2.9)."""

    C_HCI_ENC = "C.HCI.ENC"
    C_HCI_OSIG = "C.HCI.OSIG"
    C_HCI_AUT = "C.HCI.AUT"
    C_HP_ENC = "C.HP.ENC"
    C_HP_AUT = "C.HP.AUT"
    C_HP_QES = "C.HP.QES"
    C_FD_TLS_S = "C.FD.TLS-S"
    C_FD_TLS_C = "C.FD.TLS-C"  # a Fachdienst as TLS client: relay to another Fachdienst, VZD
    C_CM_TLS_CS = "C.CM.TLS-CS"
    C_ZD_TLS_S = "C.ZD.TLS-S"
    C_AK_AUT = "C.AK.AUT"

    @property
    def spec(self) -> ProfileSpec:
        return PROFILE_SPECS[self]


# KeyUsage flag names as cryptography's x509.KeyUsage takes them
DIGITAL_SIGNATURE = "digital_signature"
NON_REPUDIATION = "content_commitment"
KEY_ENCIPHERMENT = "key_encipherment"
DATA_ENCIPHERMENT = "data_encipherment"
KEY_AGREEMENT = "key_agreement"


@dataclass(frozen=True)
class ProfileSpec:
    """What certificates of one profile carry.

    ``type_oid`` goes into certificatePolicies with ``policy_oid``. ``default_role`` is the
    professionOID of the Admission when the caller names none: the institution or profession
    for card certificates, the technical role (Tab_PKI_406) for component certificates.
    """

    profile: CertProfile
    type_oid: str
    policy_oid: str
    ca_kind: CaKind
    key_usage_rsa: frozenset[str]
    key_usage_ecc: frozenset[str]
    extended_key_usage: tuple[x509.ObjectIdentifier, ...]
    default_role: str

    def key_usage(self, algorithm: Algorithm) -> frozenset[str]:
        return self.key_usage_rsa if algorithm is Algorithm.RSA else self.key_usage_ecc

    @property
    def is_card(self) -> bool:
        """True for SMC-B and HBA certificates (holder is an institution or a person)."""
        return self.ca_kind is not CaKind.KOMP


_SERVER = (ExtendedKeyUsageOID.SERVER_AUTH,)
_SERVER_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
_CLIENT = (ExtendedKeyUsageOID.CLIENT_AUTH,)
_ENC_RSA = frozenset({KEY_ENCIPHERMENT, DATA_ENCIPHERMENT})  # as gematik's C.HCI.ENC samples
_ENC_ECC = frozenset({KEY_AGREEMENT})
_SIG = frozenset({NON_REPUDIATION})
_AUT_RSA = frozenset({DIGITAL_SIGNATURE, KEY_ENCIPHERMENT})
_AUT_ECC = frozenset({DIGITAL_SIGNATURE})
# gemSpec_PKI checks TLS server certificates with KeyUsage digitalSignature and EKU
# id-kp-serverAuth (TUC_PKI_018 parameters, e.g. A_17236 for C.FD.TLS-S).
_TLS = frozenset({DIGITAL_SIGNATURE})

PROFILE_SPECS: dict[CertProfile, ProfileSpec] = {
    spec.profile: spec
    for spec in (
        ProfileSpec(
            CertProfile.C_HCI_ENC, oids.OID_HCI_ENC, oids.OID_POLICY_GEM_OR_CP, CaKind.SMCB,
            _ENC_RSA, _ENC_ECC, (), oids.PROFESSION_PRAXIS_ARZT,
        ),
        ProfileSpec(
            CertProfile.C_HCI_OSIG, oids.OID_HCI_OSIG, oids.OID_POLICY_GEM_OR_CP, CaKind.SMCB,
            _SIG, _SIG, (), oids.PROFESSION_PRAXIS_ARZT,
        ),
        ProfileSpec(
            CertProfile.C_HCI_AUT, oids.OID_HCI_AUT, oids.OID_POLICY_GEM_OR_CP, CaKind.SMCB,
            _AUT_RSA, _AUT_ECC, (), oids.PROFESSION_PRAXIS_ARZT,
        ),
        # HBA certificates carry oid_policy_hba_cp, the policy of HPC QES/SIG/AUT/ENC
        # (gemSpec_OID Tab_PKI_404), not oid_policy_gem_or_cp.
        ProfileSpec(
            CertProfile.C_HP_ENC, oids.OID_HP_ENC, oids.OID_POLICY_HBA_CP, CaKind.HBA,
            _ENC_RSA, _ENC_ECC, (), oids.PROFESSION_ARZT,
        ),
        ProfileSpec(
            CertProfile.C_HP_AUT, oids.OID_HP_AUT, oids.OID_POLICY_HBA_CP, CaKind.HBA,
            _AUT_RSA, _AUT_ECC, (), oids.PROFESSION_ARZT,
        ),
        ProfileSpec(
            CertProfile.C_HP_QES, oids.OID_HP_QES, oids.OID_POLICY_HBA_CP, CaKind.HBA,
            _SIG, _SIG, (), oids.PROFESSION_ARZT,
        ),
        ProfileSpec(
            CertProfile.C_FD_TLS_S, oids.OID_FD_TLS_S, oids.OID_POLICY_GEM_OR_CP, CaKind.KOMP,
            _TLS, _TLS, _SERVER, oids.OID_ROLE_KOMLE_FD,
        ),
        ProfileSpec(
            CertProfile.C_FD_TLS_C, oids.OID_FD_TLS_C, oids.OID_POLICY_GEM_OR_CP, CaKind.KOMP,
            _TLS, _TLS, _CLIENT, oids.OID_ROLE_KOMLE_FD,
        ),
        ProfileSpec(
            CertProfile.C_CM_TLS_CS, oids.OID_CM_TLS_CS, oids.OID_POLICY_GEM_OR_CP, CaKind.KOMP,
            _TLS, _TLS, _SERVER_CLIENT, oids.OID_ROLE_CM,
        ),
        ProfileSpec(
            CertProfile.C_ZD_TLS_S, oids.OID_ZD_TLS_S, oids.OID_POLICY_GEM_OR_CP, CaKind.KOMP,
            _TLS, _TLS, _SERVER, oids.OID_ROLE_VZD,
        ),
        ProfileSpec(
            CertProfile.C_AK_AUT, oids.OID_AK_AUT, oids.OID_POLICY_GEM_OR_CP, CaKind.KOMP,
            _AUT_RSA, _AUT_ECC, _SERVER_CLIENT, oids.OID_ROLE_AK,
        ),
    )
}  # fmt: skip

_BY_TYPE_OID = {spec.type_oid: spec.profile for spec in PROFILE_SPECS.values()}


def policy_oids_of(certificate: x509.Certificate) -> tuple[str, ...]:
    """The dotted policy OIDs of ``certificate`` (empty if it has no certificatePolicies)."""
    try:
        policies = certificate.extensions.get_extension_for_class(x509.CertificatePolicies)
    except x509.ExtensionNotFound:
        return ()
    return tuple(p.policy_identifier.dotted_string for p in policies.value)


def profile_of(certificate: x509.Certificate) -> CertProfile | None:
    """The profile named by a certificate type OID among the policies, or ``None``."""
    for oid in policy_oids_of(certificate):
        if oid in _BY_TYPE_OID:
            return _BY_TYPE_OID[oid]
    return None
