"""The VZD of this process behind the Clientmodul's directory port.

A lookup reads the :class:`~kim_appliance.directory.DirectoryStore`'s entries directly, with
the result a ``(mail=...)`` search over LDAP gives (digest §4.1): the entry's Telematik-ID, its
certificates, and the address's version from its Fachdaten (``1.0`` when none is published).
The only store call is ``DirectoryStore.find_by_mail`` (kept to one, so this adapter follows
the store's changes easily). This module must never write to the directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kim_appliance.clientmodul.ports import DirectoryRecord
from kim_appliance.directory.entries import DEFAULT_VERSION
from kim_appliance.directory.store import DirectoryStore


class InProcessDirectory:
    """:class:`~kim_appliance.clientmodul.ports.DirectoryPort` over a DirectoryStore."""

    def __init__(self, store: DirectoryStore) -> None:
        self.store = store

    def find_by_mail(self, addresses: Sequence[str]) -> Mapping[str, DirectoryRecord]:
        found: dict[str, DirectoryRecord] = {}
        for address in addresses:
            key = address.casefold()
            if key in found:
                continue
            entry = self.store.find_by_mail(address)
            if entry is None:
                continue
            version = next(
                (a.version for a in entry.published_addresses() if a.mail.casefold() == key),
                DEFAULT_VERSION,
            )
            found[key] = DirectoryRecord(address, entry.telematik_id, entry.certificates, version)
        return found
