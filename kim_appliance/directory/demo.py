"""Directory entries for the demo participants of a data dir (``demo.json`` + ENC certificates).

Each participant becomes one entry (TIP1-A_5569) whose Telematik-ID and professionOIDs come from
the Admission extension of its ENC certificates (digest §2.9), whose ``userCertificate`` holds
every ENC certificate of its card (RSA and ECC side by side, digest §4.1), and whose KIM
Fachdaten list its address under its Fachdienst as FAD with version ``1.5+`` (large mails
accepted). This module only reads files; it never writes the store itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kim_appliance.directory.entries import DirectoryEntry, KimAddress
from kim_appliance.errors import ConfigError
from kim_appliance.pki import admission_of

#: The KIM version the demo Clientmodul announces: 1.5 with large mails (digest §4.1).
DEMO_VERSION = "1.5+"
#: entryType per card type. Not confirmed (digest §4.1 only says 1-6): 1 for persons (HBA),
#: 2 for institutions (SMC-B), as in the VZD's "Berufsgruppe"/"Institution" split.
ENTRY_TYPES = {"HBA": "1", "SMC-B": "2"}
_DEMO_ADDRESSES = [
    ("Hauptstraße 1", "10115", "Berlin", "Berlin"),
    ("Marktplatz 7", "80331", "München", "Bayern"),
    ("Domstraße 12", "50668", "Köln", "Nordrhein-Westfalen"),
    ("Am Wall 3", "28195", "Bremen", "Bremen"),
]


def entries_from_demo(data_dir: Path) -> list[DirectoryEntry]:
    """One entry per participant of ``data_dir/demo.json``; raises ConfigError naming the
    participant and file when a certificate is missing or has no Telematik-ID."""
    demo_file = data_dir / "demo.json"
    try:
        demo = json.loads(demo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{demo_file}: cannot read the demo participants: {exc}") from exc
    return [_entry(p, i) for i, p in enumerate(demo.get("participants", []))]


def _entry(participant: dict[str, Any], index: int) -> DirectoryEntry:
    address = str(participant["address"])
    certificates: list[bytes] = []
    profession_oids: list[str] = []
    telematik_id = str(participant.get("telematik_id") or "")
    for pem_path in participant.get("export", {}).get("enc_cert", []):
        try:
            cert = x509.load_pem_x509_certificate(Path(pem_path).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{address}: ENC certificate {pem_path}: {exc}") from exc
        admission = admission_of(cert)
        if admission is None or not admission.telematik_id:
            raise ConfigError(
                f"{address}: ENC certificate {pem_path} has no Telematik-ID in its Admission"
            )
        telematik_id = admission.telematik_id
        for oid in admission.profession_oids:
            if oid not in profession_oids:
                profession_oids.append(oid)
        certificates.append(cert.public_bytes(serialization.Encoding.DER))
    if not telematik_id:
        raise ConfigError(f"{address}: neither demo.json nor a certificate gives a Telematik-ID")
    card_type = str(participant.get("card", {}).get("type", "SMC-B"))
    display_name = str(participant["display_name"])
    street, postal_code, locality, state = _DEMO_ADDRESSES[index % len(_DEMO_ADDRESSES)]
    person = _person(display_name) if card_type == "HBA" else {}
    return DirectoryEntry(
        uid=DirectoryEntry.new_uid(),
        telematik_id=telematik_id,
        display_name=display_name,
        certificates=tuple(certificates),
        fachdaten={str(participant["fachdienst"]): (KimAddress(address, DEMO_VERSION),)},
        organization=None if card_type == "HBA" else display_name,
        street=street,
        postal_code=postal_code,
        locality=locality,
        state=state,
        profession_oid=tuple(profession_oids),
        entry_type=(ENTRY_TYPES.get(card_type, "2"),),
        holder=("kim-appliance",),
        domain_id=(str(participant["fachdienst"]),),
        personal_entry=card_type == "HBA",
        **person,
    )


def _person(display_name: str) -> dict[str, Any]:
    """givenName/sn/title of an HBA holder's display name (``Dr. Anna Meyer``)."""
    words = display_name.split()
    titles = [w for w in words if w.endswith(".")]
    names = [w for w in words if not w.endswith(".")]
    return {
        "title": " ".join(titles) or None,
        "given_name": " ".join(names[:-1]) or None,
        "sn": names[-1] if names else None,
    }
