"""Object identifiers of the TI PKI that the KIM certificates carry (digest §2.9, gemSpec_OID).

Certificate type OIDs (Tab_PKI_405) sit in certificatePolicies next to a policy OID
(Tab_PKI_404); technical-role OIDs (Tab_PKI_406), institution OIDs (Tab_PKI_403) and profession
OIDs (Tab_PKI_402) sit in the Admission extension. Only constants live here; this module must
never import anything of the appliance.
"""

from __future__ import annotations

from typing import Final

# Certificate types, Tab_PKI_405 (digest §2.9)
OID_HP_QES: Final = "1.2.276.0.76.4.72"  # oid_hba_qes
OID_HP_ENC: Final = "1.2.276.0.76.4.74"  # oid_hba_enc
OID_HP_AUT: Final = "1.2.276.0.76.4.75"  # oid_hba_aut
OID_HCI_ENC: Final = "1.2.276.0.76.4.76"  # oid_smc_b_enc
OID_HCI_AUT: Final = "1.2.276.0.76.4.77"  # oid_smc_b_aut
OID_HCI_OSIG: Final = "1.2.276.0.76.4.78"  # oid_smc_b_osig
OID_AK_AUT: Final = "1.2.276.0.76.4.79"  # oid_ak_aut (C.AK.AUT, Konnektor)
OID_FD_TLS_C: Final = "1.2.276.0.76.4.168"  # oid_fd_tls_c
OID_FD_TLS_S: Final = "1.2.276.0.76.4.169"  # oid_fd_tls_s
OID_ZD_TLS_S: Final = "1.2.276.0.76.4.157"  # oid_zd_tls_s
OID_CM_TLS_CS: Final = "1.2.276.0.76.4.175"  # oid_cm_tls_c (C.CM.TLS-CS)

# Certificate policies, Tab_PKI_404
OID_POLICY_GEM_OR_CP: Final = "1.2.276.0.76.4.163"  # oid_policy_gem_or_cp (SMC-B, components)
OID_POLICY_HBA_CP: Final = "1.2.276.0.76.4.145"  # oid_policy_hba_cp (HBA: QES, SIG, AUT, ENC)

# Technical roles, Tab_PKI_406 (digest §1.9, §2.9)
OID_ROLE_VZD: Final = "1.2.276.0.76.4.171"  # oid_vzd_ti, in C.ZD.TLS-S
OID_ROLE_KOMLE_FD: Final = "1.2.276.0.76.4.172"  # oid_komle, in C.FD.TLS-S / C.FD.TLS-C
OID_ROLE_CM: Final = "1.2.276.0.76.4.174"  # oid_cmfd (Clientmodul), in C.CM.TLS-CS
# The Konnektor's role is oid_ak "Anwendungskonnektor" (Tab_PKI_406, allowed in C.AK.AUT).
# 1.2.276.0.76.4.47 is oid_kuj_psychotherapeut (a profession, Tab_PKI_402), not a role.
OID_ROLE_AK: Final = "1.2.276.0.76.4.103"
OID_ROLE_KONNEKTOR: Final = OID_ROLE_AK

# The ISIS-MTT / Common PKI Admission extension (digest §2.9)
OID_ADMISSION: Final = "1.3.36.8.3.3"

# Institutions (SMC-B), Tab_PKI_403
PROFESSION_PRAXIS_ARZT: Final = "1.2.276.0.76.4.50"  # Betriebsstätte Arzt
PROFESSION_ZAHNARZTPRAXIS: Final = "1.2.276.0.76.4.51"
PROFESSION_PRAXIS_PSYCHOTHERAPEUT: Final = "1.2.276.0.76.4.52"
PROFESSION_KRANKENHAUS: Final = "1.2.276.0.76.4.53"
PROFESSION_OEFFENTLICHE_APOTHEKE: Final = "1.2.276.0.76.4.54"
PROFESSION_KOSTENTRAEGER: Final = "1.2.276.0.76.4.59"
# Professions (HBA), Tab_PKI_402
PROFESSION_ARZT: Final = "1.2.276.0.76.4.30"
PROFESSION_ZAHNARZT: Final = "1.2.276.0.76.4.31"
PROFESSION_APOTHEKER: Final = "1.2.276.0.76.4.32"

#: gemSpec_OID's wording for the OIDs above, used as professionItem text by default.
PROFESSION_TEXTS: Final[dict[str, str]] = {
    PROFESSION_PRAXIS_ARZT: "Betriebsstätte Arzt",
    PROFESSION_ZAHNARZTPRAXIS: "Zahnarztpraxis",
    PROFESSION_PRAXIS_PSYCHOTHERAPEUT: "Betriebsstätte Psychotherapeut",
    PROFESSION_KRANKENHAUS: "Krankenhaus",
    PROFESSION_OEFFENTLICHE_APOTHEKE: "Öffentliche Apotheke",
    PROFESSION_KOSTENTRAEGER: "Betriebsstätte Kostenträger",
    PROFESSION_ARZT: "Ärztin/Arzt",
    PROFESSION_ZAHNARZT: "Zahnärztin/Zahnarzt",
    PROFESSION_APOTHEKER: "Apotheker/-in",
    OID_ROLE_VZD: "Verzeichnisdienst-TI",
    OID_ROLE_KOMLE_FD: "KOM-LE Fachdienst",
    OID_ROLE_CM: "Clientmodul",
    OID_ROLE_AK: "Anwendungskonnektor",
}
