"""kim-appliance: the whole KIM system of the German Telematikinfrastruktur in one process.

A Fachdienst (mail server, Account Manager, KAS), the Clientmodul (the SMTP/POP3 proxy that
signs and encrypts for the practice software), a Konnektor with emulated SMC-B and HBA cards and
the directory (VZD), as tasks of one trio process. See README.md and docs/.
"""

__version__ = "0.1.0"
