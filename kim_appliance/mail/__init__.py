"""KIM mails: the outer mail of digest §2.2, the signed entity of §2.1, sealing and opening.

This package turns an inner RFC 5322 mail into a KIM message and back, streaming through the CMS
profile in :mod:`kim_appliance.cms`. It knows nothing of sockets, cards or components: callers
hand it binary file objects and key operations.
"""
