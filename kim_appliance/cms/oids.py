"""Object identifiers of the KIM S/MIME profile (digest §2.5–2.9).

Only constants live here; this module must never import anything of the appliance.
"""

from __future__ import annotations

from typing import Final

# Content types (RFC 5652, RFC 5083)
ID_DATA: Final = "1.2.840.113549.1.7.1"
ID_SIGNED_DATA: Final = "1.2.840.113549.1.7.2"
ID_ENVELOPED_DATA: Final = "1.2.840.113549.1.7.3"
ID_CT_AUTH_ENVELOPED_DATA: Final = "1.2.840.113549.1.9.16.1.23"

# Signed attributes (digest §2.5)
ID_CONTENT_TYPE: Final = "1.2.840.113549.1.9.3"
ID_MESSAGE_DIGEST: Final = "1.2.840.113549.1.9.4"
ID_SIGNING_TIME: Final = "1.2.840.113549.1.9.5"
ID_CMS_ALGORITHM_PROTECTION: Final = "1.2.840.113549.1.9.52"
ID_SIGNING_CERTIFICATE_V2: Final = "1.2.840.113549.1.9.16.2.47"
# oid_komle-recipient-emails (digest §2.7, KOM-LE-A_2114-01)
ID_RECIPIENT_EMAILS: Final = "1.2.276.0.76.4.173"

# Algorithms (digest §2.8)
ID_SHA256: Final = "2.16.840.1.101.3.4.2.1"
ID_MGF1: Final = "1.2.840.113549.1.1.8"
ID_RSAES_OAEP: Final = "1.2.840.113549.1.1.7"
ID_RSASSA_PSS: Final = "1.2.840.113549.1.1.10"
ID_RSA_ENCRYPTION: Final = "1.2.840.113549.1.1.1"
ID_EC_PUBLIC_KEY: Final = "1.2.840.10045.2.1"
ID_ECDSA_WITH_SHA256: Final = "1.2.840.10045.4.3.2"
ID_BRAINPOOL_P256R1: Final = "1.3.36.3.3.2.8.1.1.7"
ID_AES256_GCM: Final = "2.16.840.1.101.3.4.1.46"
ID_AES256_WRAP: Final = "2.16.840.1.101.3.4.1.45"
# RFC 5753 / SEC 1: ephemeral-static ECDH with the X9.63 KDF over SHA-256 (digest §7.3: the
# Konnektor's exact choice is not published; this is the RFC 5753 scheme that BouncyCastle and
# OpenSSL use for ECDH recipients)
ID_DH_SINGLE_PASS_STD_DH_SHA256_KDF: Final = "1.3.132.1.11.1"

# The MIME wrapper of the signed entity (digest §2.1)
RFC822_CONTENT_PREFIX: Final = b"Content-Type: message/rfc822\r\n\r\n"
