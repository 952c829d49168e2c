"""The KIM S/MIME profile (digest §2): SignedData, AuthEnvelopedData, recipient-emails.

Python owns the small ASN.1 structures (via asn1crypto); every byte of the content streams
through the native module. This package knows nothing of mail transport, cards or components.
"""
