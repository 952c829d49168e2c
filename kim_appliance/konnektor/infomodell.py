"""The Konnektor's Infomodell: which Mandant, ClientSystem, Workplace and User may see which card.

Every Konnektor call carries a context (ConnectorContext.xsd: MandantId, ClientSystemId,
WorkplaceId, optional UserId; digest §1.8). :meth:`Infomodell.check` applies the checks of
TUC_KON_000 with gematik's codes: 4021 a mandatory part is empty, 4004/4005/4006 an unknown
Mandant/ClientSystem/Workplace, 4010/4011 ClientSystem or Workplace not assigned to the Mandant,
4014 Workplace not assigned to the ClientSystem for that Mandant. A Mandant's SMC-Bs are visible
to all its workplaces; an HBA is visible only with the UserId of its holder.

The data dir keeps the Infomodell together with the card descriptions in ``konnektor.json``::

    {"format": "kim-appliance-konnektor/1",
     "mandanten": [{"id": "Mandant1", "client_systems": ["PVS1"],
                    "workplaces": {"AP1": ["PVS1"]}, "cards": ["<ICCSN of an SMC-B>", ...]}],
     "users": [{"id": "dr.meyer", "mandant": "Mandant1", "cards": ["<ICCSN of her HBA>"]}],
     "cards": [<CardSpec.to_json()>, ...]}

Key and certificate paths in it are relative to the data dir. ``kim-appliance init`` writes it
for the demo cards (:func:`kim_appliance.demo.konnektor_config`); the Konnektor reads nothing
else of the demo. This module never touches a key; it reads and writes that one JSON file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kim_appliance.errors import ConfigError
from kim_appliance.konnektor.cards import (
    CardSpec,
)
from kim_appliance.konnektor.errors import (
    CLIENT_SYSTEM_NOT_OF_MANDANT,
    CONTEXT_INCOMPLETE,
    INVALID_CLIENT_SYSTEM,
    INVALID_MANDANT,
    INVALID_WORKPLACE,
    WORKPLACE_NOT_OF_CLIENT_SYSTEM,
    WORKPLACE_NOT_OF_MANDANT,
    ContextError,
)

FORMAT: Final = "kim-appliance-konnektor/1"
FILE_NAME: Final = "konnektor.json"
#: PINs of the demo cards (what the user "types" at the terminal), PUK to unblock them.
DEMO_PIN: Final = "123456"
DEMO_PUK: Final = "12345678"


@dataclass(frozen=True)
class Context:
    """The call context of every Konnektor operation (CCTX:Context)."""

    mandant_id: str
    client_system_id: str
    workplace_id: str
    user_id: str | None = None


@dataclass
class Mandant:
    id: str
    client_systems: set[str] = field(default_factory=set)
    #: workplace id -> the client systems that may call from it
    workplaces: dict[str, set[str]] = field(default_factory=dict)
    #: ICCSNs of the cards (SMC-Bs) every workplace of this Mandant sees
    cards: set[str] = field(default_factory=set)


@dataclass
class User:
    """A card holder: with this UserId in the context her HBA becomes visible."""

    id: str
    mandant: str
    cards: set[str] = field(default_factory=set)


class Infomodell:
    """Mandanten, their client systems and workplaces, users, and who sees which card."""

    def __init__(self, mandanten: Sequence[Mandant], users: Sequence[User] = ()) -> None:
        self.mandanten = {m.id: m for m in mandanten}
        self.users = {u.id: u for u in users}
        for user in users:
            if user.mandant not in self.mandanten:
                raise ConfigError(f"user {user.id}: unknown Mandant {user.mandant!r}")

    def check(self, context: Context) -> Mandant:
        """TUC_KON_000 "Prüfe Zugriffsberechtigung" on the context; returns the Mandant."""
        missing = [
            name
            for name, value in (
                ("MandantId", context.mandant_id),
                ("ClientSystemId", context.client_system_id),
                ("WorkplaceId", context.workplace_id),
            )
            if not value
        ]
        if missing:
            raise ContextError(CONTEXT_INCOMPLETE, f"empty: {', '.join(missing)}")
        mandant = self.mandanten.get(context.mandant_id)
        if mandant is None:
            raise ContextError(INVALID_MANDANT, f"MandantId {context.mandant_id!r} is unknown")
        known_clients = set().union(*(m.client_systems for m in self.mandanten.values()))
        if context.client_system_id not in known_clients:
            raise ContextError(
                INVALID_CLIENT_SYSTEM, f"ClientSystemId {context.client_system_id!r} is unknown"
            )
        if context.client_system_id not in mandant.client_systems:
            raise ContextError(
                CLIENT_SYSTEM_NOT_OF_MANDANT,
                f"ClientSystemId {context.client_system_id!r} is not assigned to Mandant "
                f"{mandant.id!r}",
            )
        known_workplaces = set().union(*(set(m.workplaces) for m in self.mandanten.values()))
        if context.workplace_id not in known_workplaces:
            raise ContextError(
                INVALID_WORKPLACE, f"WorkplaceId {context.workplace_id!r} is unknown"
            )
        clients = mandant.workplaces.get(context.workplace_id)
        if clients is None:
            raise ContextError(
                WORKPLACE_NOT_OF_MANDANT,
                f"WorkplaceId {context.workplace_id!r} is not assigned to Mandant {mandant.id!r}",
            )
        if context.client_system_id not in clients:
            raise ContextError(
                WORKPLACE_NOT_OF_CLIENT_SYSTEM,
                f"WorkplaceId {context.workplace_id!r} is not assigned to ClientSystemId "
                f"{context.client_system_id!r} for Mandant {mandant.id!r}",
            )
        return mandant

    def visible_iccsns(self, context: Context) -> set[str]:
        """The cards the (checked) context may see: the Mandant's, plus the user's HBAs."""
        mandant = self.check(context)
        visible = set(mandant.cards)
        user = self.users.get(context.user_id) if context.user_id else None
        if user is not None and user.mandant == mandant.id:
            visible |= user.cards
        return visible

    def to_json(self) -> dict[str, Any]:
        return {
            "mandanten": [
                {
                    "id": m.id,
                    "client_systems": sorted(m.client_systems),
                    "workplaces": {w: sorted(c) for w, c in sorted(m.workplaces.items())},
                    "cards": sorted(m.cards),
                }
                for m in self.mandanten.values()
            ],
            "users": [
                {"id": u.id, "mandant": u.mandant, "cards": sorted(u.cards)}
                for u in self.users.values()
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Infomodell:
        try:
            mandanten = [
                Mandant(
                    str(m["id"]),
                    set(m.get("client_systems", [])),
                    {str(w): set(c) for w, c in m.get("workplaces", {}).items()},
                    set(m.get("cards", [])),
                )
                for m in data["mandanten"]
            ]
            users = [
                User(str(u["id"]), str(u["mandant"]), set(u.get("cards", [])))
                for u in data.get("users", [])
            ]
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"Infomodell: malformed: {exc!r}") from exc
        return cls(mandanten, users)


@dataclass
class KonnektorConfig:
    """The content of ``konnektor.json``: the Infomodell and the cards."""

    infomodell: Infomodell
    cards: list[CardSpec]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            **self.infomodell.to_json(),
            "cards": [c.to_json() for c in self.cards],
        }

    def save(self, path: Path) -> None:
        """Write atomically (temp file, then rename)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> KonnektorConfig:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read the Konnektor configuration: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ConfigError(f"{path}: format {found!r}, expected {FORMAT!r}")
        try:
            cards = [
                CardSpec.from_json(c, f"{path}: cards[{i}]") for i, c in enumerate(data["cards"])
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
        return cls(Infomodell.from_json(data), cards)


def load(data_dir: Path) -> KonnektorConfig:
    """``DATA/konnektor.json`` (written by ``kim-appliance init``, kim_appliance.demo);
    ConfigError naming the file when it is missing."""
    path = data_dir / FILE_NAME
    if not path.is_file():
        raise ConfigError(
            f"{path}: missing; the Konnektor's cards are described there (kim-appliance init "
            "writes it)"
        )
    return KonnektorConfig.load(path)
