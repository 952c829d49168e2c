"""The VZD's entries in memory, persisted as ``directory.json``, with the §4.2 maintenance API.

:class:`DirectoryStore` is what the LDAP server reads and what the Account Manager writes
through the in-process form of ``I_Directory_Application_Maintenance`` (digest §4.2): add, get,
modify (always the whole list), delete and search the KIM Fachdaten of one FAD (the Fachdienst
that maintains them) under one Telematik-ID, plus ``set_address``/``remove_address`` that do
the read-change-write for a single address. Errors carry the REST ``Error`` body's shape
(``message`` plus ``attributeName``/``attributeError`` pairs) and its HTTP status. Every method
is thread-safe; every change is written atomically (temp file, fsync, rename) before it returns.
This module must never talk LDAP or HTTP, and never decide whether a caller is authorised.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import json
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509

from kim_appliance.directory.entries import (
    ADDRESS_PATTERN,
    DEFAULT_VERSION,
    VERSION_PATTERN,
    DirectoryEntry,
    KimAddress,
)
from kim_appliance.errors import KimError

DIRECTORY_FILE = "directory.json"
FORMAT = "kim-appliance-vzd/1"


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


class DirectoryStore:
    """The entries of the VZD. ``path=None`` keeps them in memory only (tests)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._entries: dict[str, DirectoryEntry] = {}  # uid -> entry
        if path is not None and path.exists():
            self._load(path)

    @classmethod
    def open(cls, data_dir: Path) -> DirectoryStore:
        """The store persisted in ``data_dir/directory.json`` (created on first change)."""
        return cls(data_dir / DIRECTORY_FILE)

    # --- reading ------------------------------------------------------------------------

    def entries(self) -> list[DirectoryEntry]:
        """A snapshot of every entry (entries are immutable; changes replace them)."""
        with self._lock:
            return list(self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, telematik_id: str) -> DirectoryEntry:
        """The entry of ``telematik_id``; raises :class:`EntryNotFound` (404)."""
        with self._lock:
            entry = self._by_telematik_id(telematik_id)
            if entry is None:
                raise EntryNotFound(telematik_id)
            return entry

    def find_by_mail(self, address: str) -> DirectoryEntry | None:
        """The entry publishing ``address`` (case-insensitive), as a CM lookup ``(mail=...)``
        would find it (digest §4.1)."""
        wanted = address.casefold()
        with self._lock:
            for entry in self._entries.values():
                if any(a.mail.casefold() == wanted for a in entry.published_addresses()):
                    return entry
        return None

    # --- base data (the authority's side, used by the demo setup) -----------------------

    def put_entry(self, entry: DirectoryEntry) -> DirectoryEntry:
        """Create or replace the entry of ``entry.telematik_id`` (keeping its uid if it
        exists); stamps changeDateTime."""
        with self._lock:
            existing = self._by_telematik_id(entry.telematik_id)
            if existing is not None:
                entry = replace(entry, uid=existing.uid)
                del self._entries[existing.uid]
            stored = entry.touched()
            self._entries[stored.uid] = stored
            self._save()
            return stored

    def remove_entry(self, telematik_id: str) -> None:
        with self._lock:
            entry = self.get(telematik_id)
            del self._entries[entry.uid]
            self._save()

    # --- I_Directory_Application_Maintenance (digest §4.2) -------------------------------

    def add_fachdaten(
        self, telematik_id: str, fad: str, addresses: Sequence[KimAddress]
    ) -> Fachdaten:
        """add_Directory_FA-Attributes: add ``addresses`` to ``fad``'s Fachdaten (201). An
        address already in the directory is refused (400), as is going over maxKOMLEadr."""
        with self._lock:
            entry = self.get(telematik_id)
            current = entry.fachdaten.get(fad, ())
            return self._write(entry, fad, (*current, *addresses))

    def get_fachdaten(self, telematik_id: str, fad: str) -> Fachdaten:
        """get_Directory_FA-Attributes (200 ``FAD1``); 404 if ``fad`` has none here."""
        with self._lock:
            entry = self.get(telematik_id)
            if fad not in entry.fachdaten:
                raise DirectoryError(
                    404, f"no KOM-LE Fachdaten of {fad!r} in the entry of {telematik_id!r}"
                )
            return Fachdaten(entry.dn, telematik_id, fad, entry.fachdaten[fad])

    def modify_fachdaten(
        self, telematik_id: str, fad: str, addresses: Sequence[KimAddress]
    ) -> Fachdaten:
        """modify_Directory_FA-Attributes: replace ``fad``'s **whole** list (digest §4.2:
        read, change, write back). An empty list leaves ``fad`` with no addresses."""
        with self._lock:
            entry = self.get(telematik_id)
            if fad not in entry.fachdaten:
                raise DirectoryError(
                    404, f"no KOM-LE Fachdaten of {fad!r} in the entry of {telematik_id!r}"
                )
            return self._write(entry, fad, tuple(addresses))

    def delete_fachdaten(self, telematik_id: str, fad: str) -> None:
        """delete_Directory_FA-Attributes: remove all of ``fad``'s Fachdaten from the entry."""
        with self._lock:
            entry = self.get(telematik_id)
            if fad not in entry.fachdaten:
                raise DirectoryError(
                    404, f"no KOM-LE Fachdaten of {fad!r} in the entry of {telematik_id!r}"
                )
            fachdaten = {k: v for k, v in entry.fachdaten.items() if k != fad}
            self._replace(replace(entry, fachdaten=fachdaten))

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
        with self._lock:
            for entry in self._entries.values():
                for fad, addresses in sorted(entry.fachdaten.items()):
                    published = [a for a in addresses if not a.no_vzd_mail_entry]
                    if all(
                        _wildcard_match(pattern, [render(a) for a in published])
                        for pattern, render in criteria
                        if pattern is not None
                    ):
                        found.append(Fachdaten(entry.dn, entry.telematik_id, fad, addresses))
        return found

    def set_address(self, telematik_id: str, fad: str, address: KimAddress) -> Fachdaten:
        """Add ``address`` to ``fad``'s Fachdaten or replace the one with the same mail
        (version, appTags, noVzdMailEntry), keeping the others (read, change, write back)."""
        with self._lock:
            entry = self.get(telematik_id)
            current = entry.fachdaten.get(fad, ())
            wanted = address.mail.casefold()
            kept = tuple(a for a in current if a.mail.casefold() != wanted)
            if len(kept) == len(current):
                return self._write(entry, fad, (*current, address))
            merged = tuple(address if a.mail.casefold() == wanted else a for a in current)
            return self._write(entry, fad, merged)

    def remove_address(self, telematik_id: str, fad: str, mail: str) -> Fachdaten:
        """Remove ``mail`` from ``fad``'s Fachdaten; 404 if it is not there."""
        with self._lock:
            entry = self.get(telematik_id)
            current = entry.fachdaten.get(fad, ())
            kept = tuple(a for a in current if a.mail.casefold() != mail.casefold())
            if len(kept) == len(current):
                raise DirectoryError(
                    404,
                    f"{mail} is not among the KOM-LE Fachdaten of {fad!r} in {telematik_id!r}",
                    [("mail", "nicht vorhanden")],
                )
            return self._write(entry, fad, kept)

    # --- demo setup ---------------------------------------------------------------------

    def populate_from_demo(self, data_dir: Path) -> list[DirectoryEntry]:
        """Entries for the demo participants of ``data_dir/demo.json`` (see
        :func:`kim_appliance.directory.demo.entries_from_demo`); existing ones are replaced."""
        from kim_appliance.directory.demo import entries_from_demo

        return [self.put_entry(e) for e in entries_from_demo(data_dir)]

    # --- internals ----------------------------------------------------------------------

    def _by_telematik_id(self, telematik_id: str) -> DirectoryEntry | None:
        for entry in self._entries.values():
            if entry.telematik_id == telematik_id:
                return entry
        return None

    def _write(
        self, entry: DirectoryEntry, fad: str, addresses: tuple[KimAddress, ...]
    ) -> Fachdaten:
        addresses = self._validated(entry, fad, addresses)
        fachdaten = dict(entry.fachdaten)
        fachdaten[fad] = addresses
        self._replace(replace(entry, fachdaten=fachdaten))
        return Fachdaten(entry.dn, entry.telematik_id, fad, addresses)

    def _replace(self, entry: DirectoryEntry) -> None:
        self._entries[entry.uid] = entry.touched()
        self._save()

    def _validated(
        self, entry: DirectoryEntry, fad: str, addresses: tuple[KimAddress, ...]
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
        for other in self._entries.values():
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

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            for item in data["entries"]:
                entry = DirectoryEntry.from_json(item)
                self._entries[entry.uid] = entry
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KimError(f"directory file {path} is unreadable: {exc}") from exc

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"format": FORMAT, "entries": [e.to_json() for e in self._entries.values()]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


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
