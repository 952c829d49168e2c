"""The Verzeichnisdienst (VZD): participants' entries and ENC certificates, read over LDAPv3.

``entries`` is the entry model (digest §4.1), ``store`` keeps the entries (in the appliance's
store, with a snapshot for the readers) and offers the maintenance API of digest §4.2 to the
Account Manager, ``filters`` evaluates search filters, ``server`` serves LDAP and LDAPS,
``demo`` builds the demo participants' entries. This package must never write mail or touch
any other part of the store than its own (``store.directory``).
"""

from kim_appliance.directory.entries import BASE_DN, DirectoryEntry, KimAddress
from kim_appliance.directory.server import (
    SIZE_LIMIT,
    DirectoryAddresses,
    serve_directory,
)
from kim_appliance.directory.store import (
    DirectoryError,
    DirectoryStore,
    EntryNotFound,
    Fachdaten,
)

__all__ = [
    "BASE_DN",
    "SIZE_LIMIT",
    "DirectoryAddresses",
    "DirectoryEntry",
    "DirectoryError",
    "DirectoryStore",
    "EntryNotFound",
    "Fachdaten",
    "KimAddress",
    "serve_directory",
]
