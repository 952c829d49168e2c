"""The demo setup of a fresh data dir: test PKI, demo participants with their cards, demo.json,
and the demo's initial state in the store.

``kim-appliance init`` (and ``run`` on an empty data dir) calls :func:`initialise`. It writes the
test PKI (``pki/``), one directory per participant under ``cards/`` with the certificates and
PKCS#8 keys of its emulated card (SMC-B or HBA), the Konnektor's ``konnektor.json`` for those
cards, and ``demo.json`` as the contract in DESIGN.md describes. The keys are test keys of
emulated cards, exported on purpose so that interop tools can check messages. :func:`populate`
then writes the initial state through the store, once: the participants' mailboxes, their VZD
entries and the Account Manager's registration codes; no component reads ``demo.json`` at run
time. The data dir is 0700 and ``demo.json`` (it holds the passwords) 0600;
:func:`secure_data_dir` narrows a data dir made before that (issue 11). This module never starts
a component.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from kim_appliance.directory.demo import entries_from_demo
from kim_appliance.directory.store import DirectoryStore
from kim_appliance.errors import ConfigError
from kim_appliance.konnektor.cards import (
    PIN_CH,
    PIN_SMC,
    CardKeySpec,
    CardSpec,
    CardType,
    Crypt,
    KeyPurpose,
    PinSpec,
    PinStatus,
)
from kim_appliance.konnektor.infomodell import (
    DEMO_PIN,
    DEMO_PUK,
    FILE_NAME,
    Infomodell,
    KonnektorConfig,
    Mandant,
    User,
)
from kim_appliance.pki import Algorithm, CertProfile, TestPki
from kim_appliance.pki import oids as pki_oids
from kim_appliance.store import (
    Account,
    RegistrationCode,
    RegistrationCodeUsed,
    Store,
    hash_password,
)
from kim_appliance.store.legacy import DEMO_FACT

#: progress of ``kim-appliance init`` (the keys take seconds)
log = logging.getLogger("kim_appliance.demo")
#: The Fachdienst domains of the demo setup (digest §2.10: RU/TU domains end .kim.telematik-test).
DOMAINS = ("fd1.kim.telematik-test", "fd2.kim.telematik-test")
#: The Konnektor call context every demo username carries (digest §1.2).
MANDANT, CLIENT_SYSTEM, WORKPLACE = "Mandant1", "PVS1", "AP1"
#: the data dir and the files in it that hold secrets or state (issue 11): passwords, the
#: administrators' token, the Konnektor's card state (the store makes its own files private)
DIR_MODE, FILE_MODE = 0o700, 0o600
PRIVATE_FILES = ("demo.json", "admin-token", "konnektor.json")


@dataclass(frozen=True)
class DemoParticipant:
    local_part: str
    domain: str
    display_name: str
    card_type: str  # "SMC-B" or "HBA"
    keys: tuple[Algorithm, ...]
    telematik_id: str
    profession_oid: str
    iccsn: str
    #: an HBA holder signs KIM messages with the SMC-B of her practice (KOM-LE-A_2129)
    practice_name: str | None = None

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain}"


PARTICIPANTS = (
    DemoParticipant(
        "praxis.weber",
        DOMAINS[0],
        "Hausarztpraxis Dr. Weber",
        "SMC-B",
        (Algorithm.RSA,),
        "1-SMC-B-Testkarte-883110000100001",
        pki_oids.PROFESSION_PRAXIS_ARZT,
        "80276883110000100001",
    ),
    DemoParticipant(
        "apotheke.sonne",
        DOMAINS[1],
        "Sonnen-Apotheke",
        "SMC-B",
        (Algorithm.ECC,),
        "3-SMC-B-Testkarte-883110000100002",
        pki_oids.PROFESSION_OEFFENTLICHE_APOTHEKE,
        "80276883110000100002",
    ),
    DemoParticipant(
        "zahnarzt.klein",
        DOMAINS[0],
        "Zahnarztpraxis Klein",
        "SMC-B",
        (Algorithm.RSA, Algorithm.ECC),
        "2-SMC-B-Testkarte-883110000100003",
        pki_oids.PROFESSION_ZAHNARZTPRAXIS,
        "80276883110000100003",
    ),
    DemoParticipant(
        "dr.meyer",
        DOMAINS[1],
        "Dr. Anna Meyer",
        "HBA",
        (Algorithm.RSA, Algorithm.ECC),
        "1-HBA-Testkarte-883110000100004",
        pki_oids.PROFESSION_ARZT,
        "80276883110000100004",
        practice_name="Praxis Dr. Meyer",
    ),
)


def is_initialised(data_dir: Path) -> bool:
    return (data_dir / "demo.json").is_file()


def initialise(data_dir: Path) -> dict[str, Any]:
    """Create the demo setup in ``data_dir`` (which must be empty or missing); return demo.json.

    Raises ConfigError when ``data_dir`` already holds something else.
    """
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ConfigError(
            f"data dir {data_dir} is not empty; initialise an empty or missing directory"
        )
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(data_dir, DIR_MODE)
    pki = TestPki.generate()
    pki.save(data_dir / "pki")
    entries = [issue_participant(pki, p, data_dir / "cards" / p.local_part) for p in PARTICIPANTS]
    anchors_dir = data_dir / "pki" / "trust"
    anchors_dir.mkdir(parents=True, exist_ok=True)
    trust_paths: list[str] = []
    for ca in [*pki.roots, *pki.intermediates]:
        path = anchors_dir / f"{_file_stem(ca.issued.certificate)}.pem"
        path.write_bytes(ca.issued.cert_pem())
        trust_paths.append(str(path.resolve()))
    demo = {
        "participants": entries,
        "trust_anchors": trust_paths,
        "registration_codes": _registration_codes(),
    }
    write_json_atomically(data_dir / "demo.json", demo)
    konnektor_config(data_dir, entries).save(data_dir / FILE_NAME)
    return demo


def _registration_codes() -> list[dict[str, str]]:
    """Unused registration codes for registerAccount (referenceID + iniPassword, digest §3.3),
    two per Fachdienst, so a tester can register a new account through the Account Manager
    (:func:`populate` stores them hashed)."""
    codes = []
    for domain in DOMAINS:
        for n in (1, 2):
            reference_id = f"REG-{domain.split('.')[0].upper()}-{n:04d}"
            ini_password = secrets.token_urlsafe(12)
            codes.append(
                {"fachdienst": domain, "referenceID": reference_id, "iniPassword": ini_password}
            )
    return codes


def load_demo(data_dir: Path) -> dict[str, Any]:
    """``demo.json`` of ``data_dir``; ConfigError naming the file when it is unreadable."""
    path = data_dir / "demo.json"
    try:
        demo: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the demo participants: {exc}") from exc
    return demo


async def populate(store: Store, data_dir: Path) -> bool:
    """Write the demo's initial state through ``store``, once per store: the participants'
    mailboxes (passwords hashed, KOM-LE-A_2164), their VZD entries and the registration codes
    of demo.json. Whatever exists already is kept (a data dir imported from an earlier
    version). Returns False if the store had the demo state already."""
    if await store.meta.get(DEMO_FACT) is not None:
        return False
    demo = await trio.to_thread.run_sync(load_demo, data_dir)
    for p in demo["participants"]:
        if await store.accounts.get(p["address"]) is None:
            password_hash = await trio.to_thread.run_sync(hash_password, p["password"])
            await store.accounts.create(
                Account(
                    address=p["address"],
                    password_hash=password_hash,
                    telematik_id=p["telematik_id"],
                    display_name=p["display_name"],
                )
            )
    directory = await DirectoryStore.open(store.directory)
    await directory.populate(await trio.to_thread.run_sync(entries_from_demo, data_dir))
    for c in demo.get("registration_codes", []):
        hashed = await trio.to_thread.run_sync(hash_password, c["iniPassword"])
        # a code used for a registration already stays used
        with contextlib.suppress(RegistrationCodeUsed):
            await store.registrations.put_code(
                RegistrationCode(c["fachdienst"], c["referenceID"], hashed)
            )
    await store.meta.put_if_absent(DEMO_FACT, "demo.json")
    return True


def issue_participant(pki: TestPki, p: DemoParticipant, card_dir: Path) -> dict[str, Any]:
    log.info("demo: keys and certificates of the %s of %s (%s)", p.card_type, p.address,
             "+".join(a.value for a in p.keys))  # fmt: skip
    card_dir.mkdir(parents=True, exist_ok=True)
    export: dict[str, list[str]] = {"enc_cert": [], "enc_key": [], "osig_cert": [], "osig_key": []}
    others: tuple[CertProfile, ...]
    if p.card_type == "SMC-B":
        enc, sig = CertProfile.C_HCI_ENC, CertProfile.C_HCI_OSIG
        others = (CertProfile.C_HCI_AUT,)
        sig_holder = p.display_name
    else:
        enc, sig = CertProfile.C_HP_ENC, CertProfile.C_HCI_OSIG
        others = (CertProfile.C_HP_AUT, CertProfile.C_HP_QES)
        sig_holder = p.practice_name or p.display_name
    for algorithm in p.keys:
        suffix = algorithm.value.lower()
        common = {"telematik_id": p.telematik_id, "profession_oid": p.profession_oid}
        issued = {
            "enc": pki.issue(enc, algorithm, common_name=f"{p.display_name} TEST-ONLY", **common),
            "osig": pki.issue(
                sig,
                algorithm,
                common_name=f"{sig_holder} TEST-ONLY",
                telematik_id=p.telematik_id if p.card_type == "SMC-B" else None,
                profession_oid=p.profession_oid if p.card_type == "SMC-B" else None,
            ),
        }
        for profile in others:
            name = profile.value.split(".")[-1].lower()
            issued[name] = pki.issue(
                profile, algorithm, common_name=f"{p.display_name} TEST-ONLY", **common
            )
        for name, item in issued.items():
            cert_path = card_dir / f"{name}-{suffix}.cert.pem"
            key_path = card_dir / f"{name}-{suffix}.key.pem"
            cert_path.write_bytes(item.cert_pem())
            key_path.write_bytes(item.key_pem())
            os.chmod(key_path, 0o600)
            if name in ("enc", "osig"):
                export[f"{name}_cert"].append(str(cert_path.resolve()))
                export[f"{name}_key"].append(str(key_path.resolve()))
    smtp_host = f"{p.domain}:465"
    pop3_host = f"{p.domain}:995"
    context = f"{MANDANT}#{CLIENT_SYSTEM}#{WORKPLACE}"
    # digest §1.2: POP3 index 5 is the UserId, needed when the mailbox uses an HBA
    user_id = f"#{p.local_part}" if p.card_type == "HBA" else ""
    return {
        "address": p.address,
        "password": secrets.token_urlsafe(12),
        "telematik_id": p.telematik_id,
        "display_name": p.display_name,
        "fachdienst": p.domain,
        "card": {
            "type": p.card_type,
            "iccsn": p.iccsn,
            "keys": "+".join(a.value for a in p.keys),
        },
        "smtp_username": f"{p.address}#{smtp_host}#{context}",
        "pop3_username": f"{p.address}#{pop3_host}#{context}{user_id}",
        "export": export,
    }


def _file_stem(certificate: Any) -> str:
    from cryptography.x509.oid import NameOID

    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else f"ca-{certificate.serial_number:x}"
    return "".join(c if c.isalnum() or c in "-." else "_" for c in cn)


def write_json_atomically(path: Path, data: object) -> None:
    """Write ``data`` as JSON to ``path`` (0600) through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def secure_data_dir(data_dir: Path) -> None:
    """Make the data dir 0700 and its secret files (PRIVATE_FILES) 0600, if they exist and are
    wider: a data dir made before issue 11 had 0755 and 0644. The stores narrow their own files
    when they open; keys were always written 0600."""
    if not data_dir.is_dir():
        return
    if os.stat(data_dir).st_mode & 0o077:
        os.chmod(data_dir, DIR_MODE)
    for name in PRIVATE_FILES:
        path = data_dir / name
        if path.is_file() and os.stat(path).st_mode & 0o077:
            os.chmod(path, FILE_MODE)


# --- the Konnektor's cards ----------------------------------------------------------------

_PURPOSE_OF_FILE = {
    "enc": KeyPurpose.ENC,
    "osig": KeyPurpose.OSIG,
    "aut": KeyPurpose.AUT,
    "qes": KeyPurpose.QES,
}


def _keys_in(card_dir: Path, data_dir: Path, names: Sequence[str]) -> tuple[CardKeySpec, ...]:
    """The ``<name>-<rsa|ecc>.cert.pem`` / ``.key.pem`` pairs demo.py wrote into ``card_dir``."""
    keys: list[CardKeySpec] = []
    for name in names:
        for crypt in Crypt:
            cert = card_dir / f"{name}-{crypt.value.lower()}.cert.pem"
            key = card_dir / f"{name}-{crypt.value.lower()}.key.pem"
            if cert.is_file() and key.is_file():
                keys.append(
                    CardKeySpec(
                        _PURPOSE_OF_FILE[name],
                        crypt,
                        str(cert.relative_to(data_dir)),
                        str(key.relative_to(data_dir)),
                    )
                )
    return tuple(keys)


def _practice_iccsn(hba_iccsn: str) -> str:
    """An ICCSN for the SMC-B of an HBA holder's practice, derived from the HBA's."""
    return hba_iccsn[:-3] + "9" + hba_iccsn[-2:]


def konnektor_config(data_dir: Path, participants: Sequence[dict[str, Any]]) -> KonnektorConfig:
    """The Konnektor of the demo setup (``konnektor.json``), from the participants of demo.json
    and the card files in ``cards/<local part>/``.

    Mandant1/PVS1/AP1 (demo.MANDANT, CLIENT_SYSTEM, WORKPLACE) sees every SMC-B; each HBA is
    visible only with its holder's UserId (the mailbox local part, which the demo POP3
    username carries as index 5, digest §1.2). An HBA holder signs KIM messages with the SMC-B
    of her practice (KOM-LE-A_2129): demo.py writes that C.HCI.OSIG into the HBA's directory,
    and the Konnektor holds it on a separate SMC-B card named after the practice. Every PIN is
    VERIFIED at start (the practice unlocked its cards in the morning); the PIN is
    :data:`DEMO_PIN`, the PUK :data:`DEMO_PUK`.
    """
    cards: list[CardSpec] = []
    mandant = Mandant(MANDANT, {CLIENT_SYSTEM}, {WORKPLACE: {CLIENT_SYSTEM}}, set())
    users: list[User] = []
    for p in participants:
        local = str(p["address"]).split("@", 1)[0]
        card_dir = data_dir / "cards" / local
        card_type = CardType(p["card"]["type"])
        iccsn = str(p["card"]["iccsn"])
        if card_type is CardType.SMC_B:
            pins = (PinSpec(PIN_SMC, DEMO_PIN, PinStatus.VERIFIED, DEMO_PUK),)
            keys = _keys_in(card_dir, data_dir, ("enc", "osig", "aut"))
            holder, telematik_id = str(p["display_name"]), p["telematik_id"]
            cards.append(CardSpec(iccsn, card_type, holder, telematik_id, keys, pins))
            mandant.cards.add(iccsn)
            continue
        pins = (PinSpec(PIN_CH, DEMO_PIN, PinStatus.VERIFIED, DEMO_PUK),)
        keys = _keys_in(card_dir, data_dir, ("enc", "aut", "qes"))
        cards.append(CardSpec(iccsn, card_type, p["display_name"], p["telematik_id"], keys, pins))
        users.append(User(local, mandant.id, {iccsn}))
        practice_keys = _keys_in(card_dir, data_dir, ("osig",))
        if practice_keys:
            practice_iccsn = _practice_iccsn(iccsn)
            holder = _practice_name(local) or f"Praxis {p['display_name']}"
            smcb_pins = (PinSpec(PIN_SMC, DEMO_PIN, PinStatus.VERIFIED, DEMO_PUK),)
            cards.append(
                CardSpec(practice_iccsn, CardType.SMC_B, holder, None, practice_keys, smcb_pins)
            )
            mandant.cards.add(practice_iccsn)
    return KonnektorConfig(Infomodell([mandant], users), cards)


def _practice_name(local_part: str) -> str | None:
    for participant in PARTICIPANTS:
        if participant.local_part == local_part:
            return participant.practice_name
    return None
