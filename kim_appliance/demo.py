"""The demo setup of a fresh data dir: test PKI, demo participants with their cards, demo.json.

``kim-appliance init`` (and ``run`` on an empty data dir) calls :func:`initialise`. It writes the
test PKI (``pki/``), one directory per participant under ``cards/`` with the certificates and
PKCS#8 keys of its emulated card (SMC-B or HBA), and ``demo.json`` as the contract in DESIGN.md
describes. The keys are test keys of emulated cards, exported on purpose so that interop tools
can check messages. The data dir is 0700 and ``demo.json`` (it holds the passwords) 0600;
:func:`secure_data_dir` narrows a data dir made before that (issue 11). This module writes files
only; it never starts a component.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kim_appliance.errors import ConfigError
from kim_appliance.pki import Algorithm, CertProfile, TestPki
from kim_appliance.pki import oids as pki_oids

#: progress of ``kim-appliance init`` (the keys take seconds)
log = logging.getLogger("kim_appliance.demo")
#: The Fachdienst domains of the demo setup (digest §2.10: RU/TU domains end .kim.telematik-test).
DOMAINS = ("fd1.kim.telematik-test", "fd2.kim.telematik-test")
#: The Konnektor call context every demo username carries (digest §1.2).
MANDANT, CLIENT_SYSTEM, WORKPLACE = "Mandant1", "PVS1", "AP1"
#: the data dir and the files in it that hold secrets or state (issue 11): passwords, the
#: administrators' token, the Konnektor's card state, the directory
DIR_MODE, FILE_MODE = 0o700, 0o600
PRIVATE_FILES = ("demo.json", "admin-token", "konnektor.json", "directory.json")


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
        "registration_codes": _registration_codes(data_dir),
    }
    write_json_atomically(data_dir / "demo.json", demo)
    return demo


def _registration_codes(data_dir: Path) -> list[dict[str, str]]:
    """Unused registration codes for registerAccount (referenceID + iniPassword, digest §3.3),
    two per Fachdienst, so a tester can register a new account through the Account Manager."""
    from kim_appliance.fachdienst.account_lifecycle import AccountManagerState

    codes = []
    for domain in DOMAINS:
        state = AccountManagerState.open(data_dir / "fachdienst" / domain)
        for n in (1, 2):
            reference_id = f"REG-{domain.split('.')[0].upper()}-{n:04d}"
            ini_password = secrets.token_urlsafe(12)
            state.add_code(reference_id, ini_password)
            codes.append(
                {"fachdienst": domain, "referenceID": reference_id, "iniPassword": ini_password}
            )
    return codes


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
