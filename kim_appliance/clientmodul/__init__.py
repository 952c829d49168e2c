"""The Clientmodul: the SMTP/POP3 proxy the practice software talks to (digest §1).

It reaches the Konnektor and the VZD only through its two ports (:mod:`.ports`): this
appliance's objects through the in-process adapters (:mod:`kim_appliance.adapters`), or any
Konnektor and VZD over SOAP and LDAP (:mod:`.network`). Nothing in this package imports the
Konnektor, the directory or the Fachdienst; it meets them on the wire or behind the ports.
"""
