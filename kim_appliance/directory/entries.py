"""The VZD entry model: one entry per Telematik-ID with base data, certificates and KIM Fachdaten.

An entry holds everything digest §4.1 lists for one Telematik-ID (TIP1-A_5569): base data
(names, address, professionOID, entryType, ...), the ENC certificates (``userCertificate;binary``,
RSA and ECC side by side) and, per Fachdienst (FAD, the provider that maintains them), the KIM
addresses with their version and application tags. :meth:`DirectoryEntry.ldap_attributes`
renders the entry the way the LDAP interface shows it; ``to_json``/``from_json`` are the
persisted form. This module must never do I/O or decide who may change an entry.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

#: The directory's base DN (digest §4.1); every entry sits directly below it.
BASE_DN = "dc=data,dc=vzd"
#: digest §4.1: "a missing komLeData/kimData for an address means 1.0"; the VZD fills it in.
DEFAULT_VERSION = "1.0"
#: The objectClass values of the real RU LDIF (digest §4.1).
OBJECT_CLASSES = ("top", "vzd-komleview")
#: KIM versions: "1.0", "1.5", "1.5+" (large mails, digest §4.1), and patch levels like "1.5.2".
VERSION_PATTERN = re.compile(r"^[0-9]+\.[0-9]+(\.[0-9]+)?\+?$")
ADDRESS_PATTERN = re.compile(r"^[^@\s,|]+@[^@\s,|]+\.[^@\s,|]+$")


@dataclass(frozen=True)
class KimAddress:
    """One KIM address of an entry with its Fachdaten (digest §4.1, §4.2 ``komLeData`` element).

    ``version`` is the KIM version of the Clientmodul behind the address (``1.5+`` accepts large
    mails); ``app_tags`` are kimData application tags such as ``eEB;V1.0``;
    ``no_vzd_mail_entry`` keeps the address out of the published ``mail``/``komLeData``/
    ``kimData`` (Basis-Consumer, A_24039)."""

    mail: str
    version: str = DEFAULT_VERSION
    app_tags: tuple[str, ...] = ()
    no_vzd_mail_entry: bool = False

    def kom_le_data(self) -> str:
        """``<version>,<mail>``: version first, as every example and openkim use (digest §4.1)."""
        return f"{self.version},{self.mail}"

    def kim_data(self) -> str:
        """``<mail>,<version>[,<appTag1>|<appTag2>...]`` (digest §4.1)."""
        text = f"{self.mail},{self.version}"
        return text + ("," + "|".join(self.app_tags) if self.app_tags else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "mail": self.mail,
            "version": self.version,
            "appTags": list(self.app_tags),
            "noVzdMailEntry": self.no_vzd_mail_entry,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KimAddress:
        return cls(
            mail=str(data["mail"]),
            version=str(data.get("version") or DEFAULT_VERSION),
            app_tags=tuple(str(t) for t in data.get("appTags", ())),
            no_vzd_mail_entry=bool(data.get("noVzdMailEntry", False)),
        )


@dataclass(frozen=True)
class DirectoryEntry:
    """One VZD entry (digest §4.1 Tab_VZD_Datenbeschreibung). ``fachdaten`` maps the FAD (the
    Fachdienst domain that maintains them) to its KIM addresses."""

    uid: str
    telematik_id: str
    display_name: str
    certificates: tuple[bytes, ...] = ()
    fachdaten: dict[str, tuple[KimAddress, ...]] = field(default_factory=dict)
    given_name: str | None = None
    sn: str | None = None
    title: str | None = None
    organization: str | None = None
    other_name: str | None = None
    street: str | None = None
    postal_code: str | None = None
    locality: str | None = None
    state: str | None = None
    country_code: str | None = "DE"
    specialization: tuple[str, ...] = ()
    domain_id: tuple[str, ...] = ()
    holder: tuple[str, ...] = ()
    profession_oid: tuple[str, ...] = ()
    entry_type: tuple[str, ...] = ()
    lanr: str | None = None
    provided_by: str | None = None
    personal_entry: bool = False
    data_from_authority: bool = True
    active: bool = True
    max_kom_le_adr: int = 10
    change_date_time: str = ""

    @property
    def dn(self) -> str:
        return f"uid={self.uid},{BASE_DN}"

    @staticmethod
    def new_uid() -> str:
        return str(uuid.uuid4())

    def addresses(self) -> list[KimAddress]:
        """Every KIM address of every FAD, in FAD order."""
        return [a for fad in sorted(self.fachdaten) for a in self.fachdaten[fad]]

    def published_addresses(self) -> list[KimAddress]:
        return [a for a in self.addresses() if not a.no_vzd_mail_entry]

    def touched(self, now: dt.datetime | None = None) -> DirectoryEntry:
        """A copy with ``changeDateTime`` set to ``now`` (RFC 3339, digest §4.1)."""
        return replace(self, change_date_time=rfc3339(now or dt.datetime.now(dt.UTC)))

    def ldap_attributes(self) -> dict[str, list[bytes]]:
        """The entry as the LDAP interface shows it: attribute names in their LDAP spelling
        (``street``, ``l``, ``st`` as digest §4.1 says they are returned), every value as bytes,
        absent attributes left out. Certificates are DER under ``userCertificate``; the
        ``;binary`` option is the server's business."""
        published = self.published_addresses()

        def text(*values: str | None) -> list[bytes]:
            return [v.encode("utf-8") for v in values if v]

        attributes = {
            "objectClass": text(*OBJECT_CLASSES),
            "uid": text(self.uid),
            "telematikID": text(self.telematik_id),
            "displayName": text(self.display_name),
            "cn": text(self.display_name),
            "givenName": text(self.given_name),
            "sn": text(self.sn),
            "title": text(self.title),
            "organization": text(self.organization),
            "otherName": text(self.other_name),
            "street": text(self.street),
            "postalCode": text(self.postal_code),
            "l": text(self.locality),
            "st": text(self.state),
            "countryCode": text(self.country_code),
            "specialization": text(*self.specialization),
            "domainID": text(*self.domain_id),
            "holder": text(*self.holder),
            "professionOID": text(*self.profession_oid),
            "entryType": text(*self.entry_type),
            "lanr": text(self.lanr),
            "providedBy": text(self.provided_by),
            "personalEntry": text(_bool(self.personal_entry)),
            "dataFromAuthority": text(_bool(self.data_from_authority)),
            "active": text(_bool(self.active)),
            "maxKOMLEadr": text(str(self.max_kom_le_adr)),
            "changeDateTime": text(self.change_date_time),
            "mail": text(*(a.mail for a in published)),
            "komLeData": text(*(a.kom_le_data() for a in published)),
            "kimData": text(*(a.kim_data() for a in published)),
            "userCertificate": list(self.certificates),
        }
        return {name: values for name, values in attributes.items() if values}

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "telematikID": self.telematik_id,
            "displayName": self.display_name,
            "certificates": [c.hex() for c in self.certificates],
            "fachdaten": {
                fad: [a.to_json() for a in addresses] for fad, addresses in self.fachdaten.items()
            },
            "givenName": self.given_name,
            "sn": self.sn,
            "title": self.title,
            "organization": self.organization,
            "otherName": self.other_name,
            "street": self.street,
            "postalCode": self.postal_code,
            "localityName": self.locality,
            "stateOrProvinceName": self.state,
            "countryCode": self.country_code,
            "specialization": list(self.specialization),
            "domainID": list(self.domain_id),
            "holder": list(self.holder),
            "professionOID": list(self.profession_oid),
            "entryType": list(self.entry_type),
            "lanr": self.lanr,
            "providedBy": self.provided_by,
            "personalEntry": self.personal_entry,
            "dataFromAuthority": self.data_from_authority,
            "active": self.active,
            "maxKOMLEadr": self.max_kom_le_adr,
            "changeDateTime": self.change_date_time,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DirectoryEntry:
        def strings(key: str) -> tuple[str, ...]:
            return tuple(str(v) for v in data.get(key) or ())

        return cls(
            uid=str(data["uid"]),
            telematik_id=str(data["telematikID"]),
            display_name=str(data["displayName"]),
            certificates=tuple(bytes.fromhex(c) for c in data.get("certificates", ())),
            fachdaten={
                str(fad): tuple(KimAddress.from_json(a) for a in addresses)
                for fad, addresses in (data.get("fachdaten") or {}).items()
            },
            given_name=data.get("givenName"),
            sn=data.get("sn"),
            title=data.get("title"),
            organization=data.get("organization"),
            other_name=data.get("otherName"),
            street=data.get("street"),
            postal_code=data.get("postalCode"),
            locality=data.get("localityName"),
            state=data.get("stateOrProvinceName"),
            country_code=data.get("countryCode"),
            specialization=strings("specialization"),
            domain_id=strings("domainID"),
            holder=strings("holder"),
            profession_oid=strings("professionOID"),
            entry_type=strings("entryType"),
            lanr=data.get("lanr"),
            provided_by=data.get("providedBy"),
            personal_entry=bool(data.get("personalEntry", False)),
            data_from_authority=bool(data.get("dataFromAuthority", True)),
            active=bool(data.get("active", True)),
            max_kom_le_adr=int(data.get("maxKOMLEadr", 10)),
            change_date_time=str(data.get("changeDateTime") or ""),
        )


def _bool(value: bool) -> str:
    return "TRUE" if value else "FALSE"  # LDAP Boolean syntax (RFC 4517 §3.3.3)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
