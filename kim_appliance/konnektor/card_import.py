"""Put foreign keys on an emulated card: a tester's own SMC-B/HBA test keys, or gematik's
sample recipient keys, become a card of the appliance's Konnektor.

:func:`import_card` reads PEM key/certificate pairs, works out what each key is for from its
certificate (the certificate-policy OIDs of gemSpec_OID, digest §2.9: C.HCI.ENC/AUT/OSIG on an
SMC-B, C.HP.ENC/AUT/QES on an HBA; key usage when no such policy is present) and which
algorithm it is (RSA, or ECC on brainpoolP256r1, digest §2.8), copies the pairs into
``DATA/cards/imported/<ICCSN>/`` and adds the card to ``konnektor.json``: an SMC-B becomes
visible to every workplace of its Mandant, an HBA to its holder's UserId (digest §1.2, §1.8).
The card's PIN is VERIFIED with the demo PIN and PUK, like the demo cards.

This is an offline step on a stopped appliance: the Konnektor reads ``konnektor.json`` at start,
so an imported card survives restarts, and private keys never travel over a network API.
The caller (``kim-appliance card import``) makes sure no appliance runs on the data dir. This
module must never touch a running Konnektor, and never write a key anywhere but into the card
directory of the data dir (mode 0600).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

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
    KonnektorConfig,
    User,
    load,
)
from kim_appliance.pki.admission import admission_of

IMPORT_DIR: Final = Path("cards") / "imported"
_ICCSN: Final = re.compile(r"[0-9]{20}")

#: certificate-policy OIDs of the card certificates (gemSpec_OID; digest §2.9)
_POLICY_ROLES: Final[dict[str, tuple[KeyPurpose, CardType]]] = {
    "1.2.276.0.76.4.76": (KeyPurpose.ENC, CardType.SMC_B),  # C.HCI.ENC
    "1.2.276.0.76.4.77": (KeyPurpose.AUT, CardType.SMC_B),  # C.HCI.AUT
    "1.2.276.0.76.4.78": (KeyPurpose.OSIG, CardType.SMC_B),  # C.HCI.OSIG
    "1.2.276.0.76.4.74": (KeyPurpose.ENC, CardType.HBA),  # C.HP.ENC
    "1.2.276.0.76.4.75": (KeyPurpose.AUT, CardType.HBA),  # C.HP.AUT
    "1.2.276.0.76.4.72": (KeyPurpose.QES, CardType.HBA),  # C.HP.QES
}


class CardImportError(ConfigError):
    """The import was refused; the message names the file or option and the reason."""


@dataclass(frozen=True)
class ImportedKey:
    """One key pair as it went onto the card."""

    purpose: KeyPurpose
    crypt: Crypt
    certificate: x509.Certificate
    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class ImportResult:
    card: CardSpec
    keys: tuple[ImportedKey, ...]
    #: the Mandant whose workplaces see the card (SMC-B) or of the HBA holder
    mandant: str
    #: the UserId that makes an HBA visible; None for an SMC-B
    user_id: str | None


def classify(certificate: x509.Certificate) -> tuple[KeyPurpose, CardType | None]:
    """What a card certificate's key is for, and on which card type, from its policy OIDs
    (digest §2.9); without one of those, from key usage (keyEncipherment/keyAgreement: ENC,
    nonRepudiation: OSIG, digitalSignature: AUT) with the card type left open."""
    try:
        policies = certificate.extensions.get_extension_for_class(x509.CertificatePolicies).value
        for policy in policies:
            role = _POLICY_ROLES.get(policy.policy_identifier.dotted_string)
            if role is not None:
                return role
    except x509.ExtensionNotFound:
        pass
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise ValueError(
            "neither a card certificate policy (C.HCI.*/C.HP.*, digest §2.9) nor key usage "
            "says what the key is for"
        ) from None
    if usage.key_encipherment or usage.key_agreement:
        return KeyPurpose.ENC, None
    if usage.content_commitment:
        return KeyPurpose.OSIG, None
    if usage.digital_signature:
        return KeyPurpose.AUT, None
    raise ValueError("its key usage allows neither encryption nor signatures")


def _read_pair(
    key_file: Path, cert_file: Path
) -> tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, x509.Certificate, Crypt]:
    try:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except OSError as exc:
        raise CardImportError(f"--cert {cert_file}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise CardImportError(f"--cert {cert_file}: no PEM certificate: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        raise CardImportError(f"--key {key_file}: cannot read: {exc.strerror or exc}") from exc
    except TypeError as exc:
        raise CardImportError(
            f"--key {key_file}: the key is password-protected; export it unencrypted "
            "(openssl pkcs8 -topk8 -nocrypt)"
        ) from exc
    except ValueError as exc:
        raise CardImportError(f"--key {key_file}: no PEM private key: {exc}") from exc
    if isinstance(key, rsa.RSAPrivateKey):
        crypt = Crypt.RSA
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.BrainpoolP256R1):
            raise CardImportError(
                f"--key {key_file}: curve {key.curve.name}; the emulated cards hold "
                "brainpoolP256r1 keys (digest §2.8)"
            )
        crypt = Crypt.ECC
    else:
        raise CardImportError(
            f"--key {key_file}: {type(key).__name__} keys do not go on a card (RSA or ECC only)"
        )
    spki, der = serialization.PublicFormat.SubjectPublicKeyInfo, serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(der, spki):
        raise CardImportError(f"--key {key_file} does not belong to --cert {cert_file}")
    return key, certificate, crypt


def import_card(
    data_dir: Path,
    *,
    iccsn: str,
    pairs: Sequence[tuple[Path, Path]],
    holder: str | None = None,
    telematik_id: str | None = None,
    card_type: CardType | None = None,
    mandant: str | None = None,
    user_id: str | None = None,
) -> ImportResult:
    """Add a card with the (key, certificate) ``pairs`` to the Konnektor of ``data_dir``.

    ``holder`` defaults to the CN of the first certificate, ``telematik_id`` to the
    registrationNumber of its Admission extension, ``card_type`` to what the certificate
    policies say (SMC-B when they say nothing), ``mandant`` to the first Mandant of
    ``konnektor.json``. An HBA needs ``user_id`` (its holder's UserId, digest §1.2).

    Error handling: everything refused is a :class:`CardImportError` naming the option and the
    reason; nothing is written until every pair has been checked.
    """
    if not _ICCSN.fullmatch(iccsn):
        raise CardImportError(f"--iccsn {iccsn!r}: an ICCSN is 20 digits")
    if not pairs:
        raise CardImportError("give at least one --key/--cert pair")
    if not (data_dir / FILE_NAME).is_file():
        raise CardImportError(f"{data_dir}: not an initialised data dir (kim-appliance init)")
    config = load(data_dir)
    if any(c.iccsn == iccsn for c in config.cards):
        raise CardImportError(f"--iccsn {iccsn}: the Konnektor already has a card with it")

    loaded: list[
        tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, x509.Certificate, Crypt, KeyPurpose]
    ] = []
    types: set[CardType] = set()
    for key_file, cert_file in pairs:
        key, certificate, crypt = _read_pair(key_file, cert_file)
        try:
            purpose, kind = classify(certificate)
        except ValueError as exc:
            raise CardImportError(f"--cert {cert_file}: {exc}") from None
        if any(p == purpose and c == crypt for _, _, c, p in loaded):
            raise CardImportError(
                f"--cert {cert_file}: a card holds one {purpose} key per algorithm, and this is "
                f"the second {purpose}/{crypt}"
            )
        if kind is not None:
            types.add(kind)
        loaded.append((key, certificate, crypt, purpose))
    if len(types) > 1:
        raise CardImportError("the certificates are of SMC-B and of HBA: one card is either")
    inferred = types.pop() if types else None
    if card_type is None:
        card_type = inferred or CardType.SMC_B
    elif inferred is not None and inferred is not card_type:
        raise CardImportError(f"--type {card_type}: the certificates are {inferred} certificates")
    if card_type is CardType.HBA and not user_id:
        raise CardImportError(
            "--user-id: an HBA is visible only with its holder's UserId (digest §1.2); give one"
        )
    if card_type is CardType.SMC_B and user_id:
        raise CardImportError("--user-id: only an HBA belongs to a user; an SMC-B to a Mandant")
    first = loaded[0][1]
    if holder is None:
        names = first.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        holder = str(names[0].value) if names else f"Karte {iccsn}"
    if telematik_id is None:
        for _, certificate, _, _ in loaded:
            admission = admission_of(certificate)
            if admission is not None and admission.telematik_id:
                telematik_id = admission.telematik_id
                break
    mandanten = config.infomodell.mandanten
    mandant_id = mandant or next(iter(mandanten), None)
    if mandant_id is None or mandant_id not in mandanten:
        known = ", ".join(mandanten) or "none"
        raise CardImportError(f"--mandant {mandant_id!r}: unknown (konnektor.json has {known})")
    existing_user = config.infomodell.users.get(user_id) if user_id else None
    if existing_user is not None and existing_user.mandant != mandant_id:
        raise CardImportError(
            f"--user-id {user_id}: belongs to Mandant {existing_user.mandant!r}, not {mandant_id!r}"
        )

    card_dir = data_dir / IMPORT_DIR / iccsn
    card_dir.mkdir(parents=True, exist_ok=True)
    imported: list[ImportedKey] = []
    for key, certificate, crypt, purpose in loaded:
        stem = f"{purpose.value.lower()}-{crypt.value.lower()}"
        cert_path, key_path = card_dir / f"{stem}.cert.pem", card_dir / f"{stem}.key.pem"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        imported.append(ImportedKey(purpose, crypt, certificate, cert_path, key_path))
    pin_type = PIN_SMC if card_type is CardType.SMC_B else PIN_CH
    spec = CardSpec(
        iccsn,
        card_type,
        holder,
        telematik_id,
        tuple(
            CardKeySpec(
                k.purpose,
                k.crypt,
                str(k.cert_path.relative_to(data_dir)),
                str(k.key_path.relative_to(data_dir)),
            )
            for k in imported
        ),
        (PinSpec(pin_type, DEMO_PIN, PinStatus.VERIFIED, DEMO_PUK),),
    )
    _add(config, spec, mandant_id, user_id)
    config.save(data_dir / FILE_NAME)
    return ImportResult(spec, tuple(imported), mandant_id, user_id)


def _add(config: KonnektorConfig, spec: CardSpec, mandant_id: str, user_id: str | None) -> None:
    config.cards.append(spec)
    infomodell = config.infomodell
    if user_id is None:
        infomodell.mandanten[mandant_id].cards.add(spec.iccsn)
        return
    user = infomodell.users.get(user_id)
    if user is None:
        infomodell.users[user_id] = User(user_id, mandant_id, {spec.iccsn})
    else:  # same Mandant: checked before anything was written
        user.cards.add(spec.iccsn)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)
