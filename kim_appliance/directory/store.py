"""The VZD's entries over the appliance's store, with the §4.2 maintenance API.

:class:`DirectoryStore` is what the LDAP server and the Clientmodul read and what the Account
Manager writes through the in-process form of ``I_Directory_Application_Maintenance`` (digest
§4.2): add, get, modify (always the whole list), delete and search the KIM Fachdaten of one FAD
(the Fachdienst that maintains them) under one Telematik-ID, plus ``set_address``/
``remove_address`` that do the read-change-write for a single address. The entries live in the
store (``store.directory``: one row per entry, a change counter); this object keeps a snapshot
in memory for the readers (LDAP searches, the Clientmodul's lookups run in worker threads and
read it without a store call) and :meth:`refresh` reloads it when the counter moved, so that
every reader sees a change made on another node (the LDAP server refreshes before each search,
:meth:`watch` polls for the rest). A change is validated against the snapshot and written with
the version it was validated against; if another writer came first, the snapshot is reloaded and
the change validated again. Errors carry the REST ``Error`` body's shape (``message`` plus
``attributeName``/``attributeError`` pairs) and its HTTP status. This module must never talk
LDAP or HTTP, and never decide whether a caller is authorised.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import trio
from cryptography import x509

from kim_appliance.directory.entries import (
    ADDRESS_PATTERN,
    DEFAULT_VERSION,
    VERSION_PATTERN,
    DirectoryEntry,
    KimAddress,
)
from kim_appliance.errors import KimError
from kim_appliance.store import DirectoryConflict, DirectoryRow, DirectorySnapshot
from kim_appliance.store.base import Directory

T = TypeVar("T")

#: a change that keeps losing against other writers gives up after this many attempts
MAX_ATTEMPTS = 8
#: how often :meth:`DirectoryStore.watch` looks at the change counter
WATCH_SECONDS = 1.0


class DirectoryError(KimError):
    """A maintenance request the VZD refuses (digest §4.2 ``Error``). ``status`` is the HTTP
    status the REST interface would answer (400, 404, 409)."""

    def __init__(self, status: int, message: str, errors: Sequence[tuple[str, str]] = ()) -> None:
        self.status = status
        self.message = message
        self.errors = list(errors)
        detail = "; ".join(f"{name}: {error}" for name, error in self.errors)
        super().__init__(f"{message} ({detail})" if detail else message)

    def to_json(self) -> dict[str, Any]:
        """The REST ``Error`` body: ``{message, errors: [{attributeName, attributeError}]}``."""
        return {
            "message": self.message,
            "errors": [{"attributeName": n, "attributeError": e} for n, e in self.errors],
        }


class EntryNotFound(DirectoryError):
    def __init__(self, telematik_id: str) -> None:
        super().__init__(404, f"no directory entry with telematikID {telematik_id!r}")


@dataclass(frozen=True)
class Fachdaten:
    """``FAD1`` of digest §4.2: the KIM Fachdaten one FAD maintains in one entry."""

    dn: str
    telematik_id: str
    fad: str
    addresses: tuple[KimAddress, ...]

    def to_json(self) -> dict[str, Any]:
        published = [a for a in self.addresses if not a.no_vzd_mail_entry]
        return {
            "dn": {"uid": self.dn.split(",", 1)[0].removeprefix("uid="), "dn": self.dn},
            "mail": [a.mail for a in published],
            "komLeData": [{"mail": a.mail, "version": a.version} for a in published],
            "kimData": [
                {"mail": a.mail, "version": a.version, "appTags": list(a.app_tags)}
                for a in published
            ],
        }


@dataclass(frozen=True)
class _View:
    """The entries as of one directory version (immutable: replaced as a whole)."""

    version: int
    entries: dict[str, DirectoryEntry]  # uid -> entry

    def by_telematik_id(self, telematik_id: str) -> DirectoryEntry | None:
        for entry in self.entries.values():
            if entry.telematik_id == telematik_id:
                return entry
        return None


def _entries_of(snapshot: DirectorySnapshot) -> _View:
    try:
        entries = {row.uid: DirectoryEntry.from_json(json.loads(row.data)) for row in snapshot.rows}
    except (ValueError, KeyError, TypeError) as exc:
        raise KimError(f"directory: an entry in the store is unreadable: {exc}") from exc
    return _View(snapshot.version, entries)


class DirectoryStore:
    """The entries of the VZD in ``store`` (the store's ``directory`` part). Create it with
    :meth:`open`, which loads the first snapshot."""

    def __init__(self, store: Directory) -> None:
        self._store = store
        self._view = _View(-1, {})
        self._write_lock = trio.Lock()

    @classmethod
    async def open(cls, store: Directory) -> DirectoryStore:
        directory = cls(store)
        await directory.refresh()
        return directory

    @property
    def version(self) -> int:
        """The store's change number the snapshot is the state of."""
        return self._view.version

    async def refresh(self) -> bool:
        """Reload the snapshot if the directory changed (one store call when it did not);
        True if it was reloaded."""
        if await self._store.version() == self._view.version:
            return False
        await self._reload()
        return True

    async def _reload(self) -> None:
        snapshot = await self._store.snapshot()
        if snapshot.version != self._view.version:
            self._view = _entries_of(snapshot)

    async def watch(self, interval: float = WATCH_SECONDS) -> None:
        """Refresh every ``interval`` seconds until cancelled (changes of other nodes)."""
        while True:
            await trio.sleep(interval)
            await self.refresh()

    # --- reading (the snapshot: no store call, may run in a worker thread) -----------------

    def entries(self) -> list[DirectoryEntry]:
        """A snapshot of every entry (entries are immutable; changes replace them)."""
        return list(self._view.entries.values())

    def __len__(self) -> int:
        return len(self._view.entries)

    def get(self, telematik_id: str) -> DirectoryEntry:
        """The entry of ``telematik_id``; raises :class:`EntryNotFound` (404)."""
        entry = self._view.by_telematik_id(telematik_id)
        if entry is None:
            raise EntryNotFound(telematik_id)
        return entry

    def find_by_mail(self, address: str) -> DirectoryEntry | None:
        """The entry publishing ``address`` (case-insensitive), as a CM lookup ``(mail=...)``
        would find it (digest §4.1)."""
        wanted = address.casefold()
        for entry in self._view.entries.values():
            if any(a.mail.casefold() == wanted for a in entry.published_addresses()):
                return entry
        return None

    # --- writing ---------------------------------------------------------------------------

    async def _change(
        self, make: Callable[[_View], tuple[DirectoryEntry | None, str | None, T]]
    ) -> T:
        """Validate and write one change: ``make(view)`` returns the entry to store (or None),
        the uid to delete (or None) and the result; both go to the store with the version the
        view is of. A lost race reloads and validates again (``make`` runs again)."""
        async with self._write_lock:
            for _ in range(MAX_ATTEMPTS):
                view = self._view
                entry, gone, result = make(view)
                try:
                    version = view.version
                    if gone is not None:
                        version = await self._store.delete(gone, expected_version=version)
                    if entry is not None:
                        data = json.dumps(entry.to_json())
                        row = DirectoryRow(entry.uid, entry.telematik_id, data)
                        version = await self._store.put(row, expected_version=version)
                except DirectoryConflict:
                    await self._reload()
                    continue
                entries = dict(view.entries)
                if gone is not None:
                    entries.pop(gone, None)
                if entry is not None:
                    entries[entry.uid] = entry
                self._view = _View(version, entries)
                return result
        raise DirectoryError(
            409, f"the directory changed {MAX_ATTEMPTS} times during this change; try again"
        )

    # --- base data (the authority's side, used by the demo setup) -----------------------

    async def put_entry(self, entry: DirectoryEntry) -> DirectoryEntry:
        """Create or replace the entry of ``entry.telematik_id`` (keeping its uid if it
        exists); stamps changeDateTime."""

        def make(view: _View) -> tuple[DirectoryEntry, None, DirectoryEntry]:
            existing = view.by_telematik_id(entry.telematik_id)
            new = replace(entry, uid=existing.uid) if existing is not None else entry
            stored = new.touched()
            return stored, None, stored

        return await self._change(make)

    async def remove_entry(self, telematik_id: str) -> None:
        def make(view: _View) -> tuple[None, str, None]:
            entry = view.by_telematik_id(telematik_id)
            if entry is None:
                raise EntryNotFound(telematik_id)
            return None, entry.uid, None

        await self._change(make)

    # --- I_Directory_Application_Maintenance (digest §4.2) -------------------------------

    async def add_fachdaten(
        self, telematik_id: str, fad: str, addresses: Sequence[KimAddress]
    ) -> Fachdaten:
        """add_Directory_FA-Attributes: add ``addresses`` to ``fad``'s Fachdaten (201). An
        address already in the directory is refused (400), as is going over maxKOMLEadr."""

        def make(view: _View) -> tuple[DirectoryEntry, None, Fachdaten]:
            entry = _get(view, telematik_id)
            current = entry.fachdaten.get(fad, ())
            return _written(view, entry, fad, (*current, *addresses))

        return await self._change(make)

    def get_fachdaten(self, telematik_id: str, fad: str) -> Fachdaten:
        """get_Directory_FA-Attributes (200 ``FAD1``); 404 if ``fad`` has none here."""
        entry = self.get(telematik_id)
        if fad not in entry.fachdaten:
            raise DirectoryError(
                404, f"no KOM-LE Fachdaten of {fad!r} in the entry of {telematik_id!r}"
            )
        return Fachdaten(entry.dn, telematik_id, fad, entry.fachdaten[fad])

    async def modify_fachdaten(
        self, telematik_id: str, fad: str, addresses: Sequence[KimAddress]
    ) -> Fachdaten:
        """modify_Directory_FA-Attributes: replace ``fad``'s **whole** list (digest §4.2:
        read, change, write back). An empty list leaves ``fad`` with no addresses."""

        def make(view: _View) -> tuple[DirectoryEntry, None, Fachdaten]:
            entry = _get(view, telematik_id)
            if fad not in entry.fachdaten:
                raise DirectoryError(
                    404, f"no KOM-LE Fachdaten of {fad!r} in the entry of {telematik_id!r}"
                )
            return _written(view, entry, fad, tuple(addresses))

        return await self._change(make)

    async def delete_fachdaten(self, telematik_id: str, fad: str) -> None:
        """delete_Directory_FA-Attributes: remove all of ``fad``'s Fachdaten from the entry."""

        def make(view: _View) -> tuple[DirectoryEntry, None, None]:
            entry = _get(view, telematik_id)
            if fad not in entry.fachdaten:
                raise DirectoryError(
                    404, f"no KOM-LE Fachdaten of {fad!r} in the entry of {telematik_id!r}"
                )
            fachdaten = {k: v for k, v in entry.fachdaten.items() if k != fad}
            return replace(entry, fachdaten=fachdaten).touched(), None, None

        await self._change(make)

    def search_fachdaten(
        self,
        *,
        mail: str | None = None,
        kom_le_data: str | None = None,
        kim_data: str | None = None,
    ) -> list[Fachdaten]:
        """search_Directory_FA-Attributes: ``*`` wildcards, case-insensitive; ``""`` matches a
        FAD whose attribute is absent or empty (digest §4.2). Criteria left ``None`` match
        everything."""
        criteria: list[tuple[str | None, Callable[[KimAddress], str]]] = [
            (mail, lambda a: a.mail),
            (kom_le_data, KimAddress.kom_le_data),
            (kim_data, KimAddress.kim_data),
        ]
        found: list[Fachdaten] = []
        for entry in self._view.entries.values():
            for fad, addresses in sorted(entry.fachdaten.items()):
                published = [a for a in addresses if not a.no_vzd_mail_entry]
                if all(
                    _wildcard_match(pattern, [render(a) for a in published])
                    for pattern, render in criteria
                    if pattern is not None
                ):
                    found.append(Fachdaten(entry.dn, entry.telematik_id, fad, addresses))
        return found

    async def set_address(self, telematik_id: str, fad: str, address: KimAddress) -> Fachdaten:
        """Add ``address`` to ``fad``'s Fachdaten or replace the one with the same mail
        (version, appTags, noVzdMailEntry), keeping the others (read, change, write back)."""

        def make(view: _View) -> tuple[DirectoryEntry, None, Fachdaten]:
            entry = _get(view, telematik_id)
            current = entry.fachdaten.get(fad, ())
            wanted = address.mail.casefold()
            kept = tuple(a for a in current if a.mail.casefold() != wanted)
            if len(kept) == len(current):
                return _written(view, entry, fad, (*current, address))
            merged = tuple(address if a.mail.casefold() == wanted else a for a in current)
            return _written(view, entry, fad, merged)

        return await self._change(make)

    async def remove_address(self, telematik_id: str, fad: str, mail: str) -> Fachdaten:
        """Remove ``mail`` from ``fad``'s Fachdaten; 404 if it is not there."""

        def make(view: _View) -> tuple[DirectoryEntry, None, Fachdaten]:
            entry = _get(view, telematik_id)
            current = entry.fachdaten.get(fad, ())
            kept = tuple(a for a in current if a.mail.casefold() != mail.casefold())
            if len(kept) == len(current):
                raise DirectoryError(
                    404,
                    f"{mail} is not among the KOM-LE Fachdaten of {fad!r} in {telematik_id!r}",
                    [("mail", "nicht vorhanden")],
                )
            return _written(view, entry, fad, kept)

        return await self._change(make)

    # --- the demo setup -----------------------------------------------------------------

    async def populate(self, entries: Iterable[DirectoryEntry]) -> list[DirectoryEntry]:
        """Add the entries whose Telematik-ID is not in the directory yet (the demo setup;
        existing entries, maybe changed since, are kept). Returns those added."""
        added: list[DirectoryEntry] = []
        for entry in entries:
            if self._view.by_telematik_id(entry.telematik_id) is None:
                added.append(await self.put_entry(entry))
        return added


def _get(view: _View, telematik_id: str) -> DirectoryEntry:
    entry = view.by_telematik_id(telematik_id)
    if entry is None:
        raise EntryNotFound(telematik_id)
    return entry


def _written(
    view: _View, entry: DirectoryEntry, fad: str, addresses: tuple[KimAddress, ...]
) -> tuple[DirectoryEntry, None, Fachdaten]:
    addresses = _validated(view, entry, fad, addresses)
    fachdaten = dict(entry.fachdaten)
    fachdaten[fad] = addresses
    return (
        replace(entry, fachdaten=fachdaten).touched(),
        None,
        Fachdaten(entry.dn, entry.telematik_id, fad, addresses),
    )


def _validated(
    view: _View, entry: DirectoryEntry, fad: str, addresses: tuple[KimAddress, ...]
) -> tuple[KimAddress, ...]:
    """Check the §4.2 rules; the version defaults to 1.0 (digest §4.1)."""
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    result: list[KimAddress] = []
    for address in addresses:
        if not ADDRESS_PATTERN.match(address.mail):
            errors.append(("mail", f"Unzulässiger Wert: {address.mail!r} is no address"))
        folded = address.mail.casefold()
        if folded in seen:
            errors.append(("mail", f"{address.mail} appears twice"))
        seen.add(folded)
        version = address.version or DEFAULT_VERSION
        if not VERSION_PATTERN.match(version):
            errors.append(("version", f"Unzulässiger Wert: {version!r} for {address.mail}"))
        for tag in address.app_tags:
            if not tag or any(c in tag for c in ",|"):
                errors.append(("appTags", f"Unzulässiger Wert: {tag!r}"))
        result.append(replace(address, version=version))
    others = [a for k, v in entry.fachdaten.items() if k != fad for a in v]
    if len(others) + len(result) > entry.max_kom_le_adr:
        errors.append(
            (
                "mail",
                f"maxKOMLEadr wurde überschritten: {len(others) + len(result)} addresses, "
                f"at most {entry.max_kom_le_adr} allowed",
            )
        )
    for other in view.entries.values():
        for other_fad, other_addresses in other.fachdaten.items():
            if other.uid == entry.uid and other_fad == fad:
                continue
            for a in other_addresses:
                if a.mail.casefold() in seen:
                    errors.append(
                        ("mail", f"{a.mail} is already in the entry of {other.telematik_id}")
                    )
    if errors:
        raise DirectoryError(400, "KOM-LE Fachdaten refused", errors)
    return tuple(result)


def _wildcard_match(pattern: str, values: Iterable[str]) -> bool:
    values = list(values)
    if pattern == "":
        return not values or all(v == "" for v in values)
    # only * is a wildcard (digest §4.2); escape fnmatch's other metacharacters
    escaped = "".join("[" + c + "]" if c in "?[]" else c for c in pattern.casefold())
    return any(fnmatch.fnmatchcase(v.casefold(), escaped) for v in values)


def has_valid_certificate(entry: DirectoryEntry, now: dt.datetime | None = None) -> bool:
    """digest §4.1: "entries without a valid certificate cannot be found". Valid here means
    inside its validity period; revocation is the reader's business."""
    moment = now or dt.datetime.now(dt.UTC)
    for der in entry.certificates:
        period = _validity(der)
        if period is not None and period[0] <= moment <= period[1]:
            return True
    return False


@functools.lru_cache(maxsize=4096)
def _validity(der: bytes) -> tuple[dt.datetime, dt.datetime] | None:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    return cert.not_valid_before_utc, cert.not_valid_after_utc
