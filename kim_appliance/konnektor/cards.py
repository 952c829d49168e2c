"""The emulated cards: SMC-B and HBA with keys, certificates, PINs and card handles.

A :class:`Card` is what the Konnektor sees in a card terminal slot: ICCSN, card type, holder,
Telematik-ID, a card handle while inserted, its PINs (PIN.SMC on an SMC-B, PIN.CH on an HBA;
three tries, then BLOCKED), and its keys per purpose (ENC, OSIG, AUT, QES) and algorithm (RSA
RSA-2048, ECC brainpoolP256r1; digest §2.8, §2.9). A :class:`CardKey` is one private key of a
card behind :class:`~kim_appliance.cms.keys.KeyOperations`: it unwraps content keys and signs
digests, and before every operation checks what a real card checks (inserted, same handle,
PIN verified), then waits out the slow-card latency.

Access rules (gemSpec_SMC-B/HBA object systems, as a Konnektor surfaces them): every private
key of an SMC-B needs PIN.SMC verified (the "unlocked SMC-B" of KIM, digest §1.8); PrK.HP.ENC
and PrK.HP.AUT of an HBA need PIN.CH; PrK.HP.QES needs PIN.QES, which this emulation does not
offer (QES is no KIM operation). A missing security state is error 4085. Removing a card
invalidates its handle (4008) and drops the PINs' verified state, as on a real card; inserting
it again gives a new handle. A card's private keys never leave it: there is no accessor for
them. They exist on disk only as the explicit test export of the demo (demo.json); a renewal
(:meth:`Card.renew`, a new key pair for one slot) overwrites that export, so it stays the
card's key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from kim_appliance.cms.errors import CmsError
from kim_appliance.cms.keys import OAEP_SHA256, PSS_SHA256_SALT32
from kim_appliance.konnektor.errors import (
    ACCESS_CONDITIONS_NOT_MET,
    CALL_NOT_ALLOWED,
    CARD_NOT_INSERTED,
    AccessError,
    CardError,
    KonnektorUnreachableError,
    ParameterError,
)
from kim_appliance.konnektor.faults import FaultState
from kim_appliance.pki.authority import Issued


class CardType(enum.StrEnum):
    """CardTypeType of CardServiceCommon.xsd, the two a KIM participant uses."""

    SMC_B = "SMC-B"
    HBA = "HBA"


class KeyPurpose(enum.StrEnum):
    """What a card key is for (digest §2.9): C.HCI.ENC/C.HP.ENC, C.HCI.OSIG, C.*.AUT, C.HP.QES."""

    ENC = "ENC"
    OSIG = "OSIG"
    AUT = "AUT"
    QES = "QES"


class Crypt(enum.StrEnum):
    """The ``Crypt`` parameter: RSA-2048 or ECC brainpoolP256r1 keys."""

    RSA = "RSA"
    ECC = "ECC"


class PinStatus(enum.StrEnum):
    """PinStatusEnum of CardService.xsd (plus DISABLED: no PIN check at all)."""

    VERIFIED = "VERIFIED"
    VERIFIABLE = "VERIFIABLE"
    TRANSPORT_PIN = "TRANSPORT_PIN"
    EMPTY_PIN = "EMPTY_PIN"
    BLOCKED = "BLOCKED"
    DISABLED = "DISABLED"


class PinResult(enum.StrEnum):
    """PinResultEnum of CardServiceCommon.xsd: the answer to VerifyPin/ChangePin/UnblockPin."""

    OK = "OK"
    REJECTED = "REJECTED"
    WASBLOCKED = "WASBLOCKED"
    NOWBLOCKED = "NOWBLOCKED"
    TRANSPORT_PIN = "TRANSPORT_PIN"
    ERROR = "ERROR"


PIN_SMC: Final = "PIN.SMC"
PIN_CH: Final = "PIN.CH"
#: Retry counter of a fresh or successfully verified PIN.
MAX_PIN_TRIES: Final = 3
#: The ``CertRef`` values of ReadCardCertificate (CertificateServiceCommon.xsd) per purpose.
CERT_REFS: Final[dict[str, KeyPurpose]] = {
    "C.ENC": KeyPurpose.ENC,
    "C.SIG": KeyPurpose.OSIG,
    "C.AUT": KeyPurpose.AUT,
    "C.QES": KeyPurpose.QES,
}
_ICCSN = re.compile(r"[0-9]{20}")  # IccsnType: exactly 20 digits


def parse_crypt(value: str, field: str = "Crypt") -> Crypt:
    try:
        return Crypt(value)
    except ValueError:
        raise ParameterError(field, f"{value!r} is not RSA or ECC") from None


def parse_purpose(value: str, field: str = "CertRef") -> KeyPurpose:
    """A KeyPurpose from ``ENC``/``OSIG``/... or a CertRef ``C.ENC``/``C.SIG``/..."""
    if value in CERT_REFS:
        return CERT_REFS[value]
    try:
        return KeyPurpose(value)
    except ValueError:
        allowed = ", ".join([*CERT_REFS, *KeyPurpose])
        raise ParameterError(field, f"{value!r} is not one of {allowed}") from None


class Pin:
    """One PIN of a card with its retry counter.

    Transitions (gemSpec_COS PIN objects as the CardService reports them):

    ================  =================  =====================================================
    status            VerifyPin           result
    ================  =================  =====================================================
    VERIFIABLE/       right PIN          OK, VERIFIED, counter back to 3
    VERIFIED          wrong PIN          REJECTED, counter - 1, VERIFIABLE; at 0 NOWBLOCKED
    BLOCKED           any                WASBLOCKED (only UnblockPin with the PUK helps)
    TRANSPORT_PIN     any                TRANSPORT_PIN (ChangePin with the transport PIN first)
    DISABLED          any                OK (no PIN check configured)
    EMPTY_PIN         any                ERROR (no PIN set yet)
    ================  =================  =====================================================
    """

    def __init__(
        self,
        pin_type: str,
        secret: str,
        *,
        status: PinStatus = PinStatus.VERIFIABLE,
        puk: str | None = None,
        lock: threading.RLock | None = None,
    ) -> None:
        self.pin_type = pin_type
        self._secret = secret
        self._puk = puk
        self.status = status
        self.left_tries = 0 if status is PinStatus.BLOCKED else MAX_PIN_TRIES
        self._lock = lock or threading.RLock()
        #: what konnektor.json configured: :meth:`restore` goes back to it
        self._first = (secret, status)

    @property
    def usable(self) -> bool:
        """True when the keys guarded by this PIN may be used."""
        return self.status in (PinStatus.VERIFIED, PinStatus.DISABLED)

    def verify(self, entered: str | None = None) -> tuple[PinResult, int]:
        """VerifyPin. ``entered=None`` is a user typing the right PIN at the terminal."""
        with self._lock:
            if self.status is PinStatus.BLOCKED:
                return PinResult.WASBLOCKED, 0
            if self.status is PinStatus.TRANSPORT_PIN:
                return PinResult.TRANSPORT_PIN, self.left_tries
            if self.status is PinStatus.DISABLED:
                return PinResult.OK, self.left_tries
            if self.status is PinStatus.EMPTY_PIN:
                return PinResult.ERROR, self.left_tries
            return self._check(self._secret if entered is None else entered, self._secret)

    def change(self, old: str, new: str) -> tuple[PinResult, int]:
        """ChangePin: from the transport PIN (or the current PIN) to ``new``."""
        with self._lock:
            if self.status is PinStatus.BLOCKED:
                return PinResult.WASBLOCKED, 0
            if self.status in (PinStatus.DISABLED, PinStatus.EMPTY_PIN):
                return PinResult.ERROR, self.left_tries
            result, left = self._check(old, self._secret)
            if result is PinResult.OK:
                self._secret = new
            return result, left

    def unblock(self, puk: str, new: str | None = None) -> tuple[PinResult, int]:
        """UnblockPin with the PUK: back to VERIFIABLE with three tries."""
        with self._lock:
            if self._puk is None or puk != self._puk:
                return PinResult.REJECTED, self.left_tries
            if new is not None:
                self._secret = new
            self.status = PinStatus.VERIFIABLE
            self.left_tries = MAX_PIN_TRIES
            return PinResult.OK, self.left_tries

    def _check(self, entered: str, expected: str) -> tuple[PinResult, int]:
        if entered == expected:
            self.status = PinStatus.VERIFIED
            self.left_tries = MAX_PIN_TRIES
            return PinResult.OK, self.left_tries
        self.left_tries -= 1
        if self.left_tries <= 0:
            self.left_tries = 0
            self.status = PinStatus.BLOCKED
            return PinResult.NOWBLOCKED, 0
        self.status = PinStatus.VERIFIABLE
        return PinResult.REJECTED, self.left_tries

    def block(self) -> None:
        with self._lock:
            self.status = PinStatus.BLOCKED
            self.left_tries = 0

    def force(self, status: PinStatus) -> None:
        with self._lock:
            self.status = status
            self.left_tries = 0 if status is PinStatus.BLOCKED else MAX_PIN_TRIES

    def reset_retry_counter(self) -> None:
        """What UnblockPin with the card's PUK does (RESET RETRY COUNTER): a BLOCKED PIN
        becomes VERIFIABLE, and the retry counter is full again; any other state stays (a
        VERIFIED PIN stays verified). The fault switch ``unblock_pin``."""
        with self._lock:
            if self.status is PinStatus.BLOCKED:
                self.status = PinStatus.VERIFIABLE
            self.left_tries = MAX_PIN_TRIES

    def restore(self) -> None:
        """Back to the PIN and state konnektor.json configured, with a full retry counter (the
        fault switch ``clear``: for the demo and imported cards, VERIFIED)."""
        with self._lock:
            self._secret, status = self._first
            self.force(status)

    def reset_security_state(self) -> None:
        """The card was pulled: a verified PIN must be verified again."""
        with self._lock:
            if self.status is PinStatus.VERIFIED:
                self.status = PinStatus.VERIFIABLE


# --- persisted description of a card -----------------------------------------------------------


@dataclass(frozen=True)
class CardKeySpec:
    """Where one key of a card lives: PEM files, relative to the data dir (or absolute)."""

    purpose: KeyPurpose
    crypt: Crypt
    cert: str
    key: str


@dataclass(frozen=True)
class PinSpec:
    pin_type: str
    pin: str
    status: PinStatus = PinStatus.VERIFIABLE
    puk: str | None = None


@dataclass(frozen=True)
class CardSpec:
    """A card as ``konnektor.json`` describes it (see :mod:`kim_appliance.konnektor.infomodell`)."""

    iccsn: str
    card_type: CardType
    holder: str
    telematik_id: str | None
    keys: tuple[CardKeySpec, ...]
    pins: tuple[PinSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "iccsn": self.iccsn,
            "type": str(self.card_type),
            "holder": self.holder,
            "telematik_id": self.telematik_id,
            "keys": [
                {"purpose": str(k.purpose), "crypt": str(k.crypt), "cert": k.cert, "key": k.key}
                for k in self.keys
            ],
            "pins": [
                {"type": p.pin_type, "pin": p.pin, "status": str(p.status), "puk": p.puk}
                for p in self.pins
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "card") -> CardSpec:
        try:
            iccsn = str(data["iccsn"])
            if not _ICCSN.fullmatch(iccsn):
                raise ValueError(f"iccsn {iccsn!r} must be 20 digits")
            card_type = CardType(data["type"])
            keys = tuple(
                CardKeySpec(KeyPurpose(k["purpose"]), Crypt(k["crypt"]), str(k["cert"]), k["key"])
                for k in data["keys"]
            )
            pins = tuple(
                PinSpec(
                    str(p["type"]),
                    str(p["pin"]),
                    PinStatus(p.get("status", "VERIFIABLE")),
                    p.get("puk"),
                )
                for p in data["pins"]
            )
            return cls(iccsn, card_type, str(data["holder"]), data.get("telematik_id"), keys, pins)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: invalid card description: {exc!r}") from exc


@dataclass(frozen=True)
class _KeyPair:
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


def _load_pair(base: Path, spec: CardKeySpec, where: str) -> _KeyPair:
    cert_path, key_path = base / spec.cert, base / spec.key
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        # our own test keys: skip the slow RSA consistency check (it is the same check on every
        # start, and the public key is compared with the certificate just below)
        key = serialization.load_pem_private_key(
            key_path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where}: cannot load {cert_path} / {key_path}: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{where}: {key_path}: unsupported key type {type(key).__name__}")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(der, spki):
        raise ValueError(f"{where}: {key_path} does not belong to {cert_path}")
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    if is_rsa != (spec.crypt is Crypt.RSA):
        raise ValueError(f"{where}: {key_path} is not a {spec.crypt} key")
    return _KeyPair(key, certificate)


def _write_file(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``path`` through a temporary file and a rename (mode 0600 when ``private``)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# --- the card ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardInfo:
    """What GetCards reports about one card (CardInfoType of CardService.xsd)."""

    card_handle: str
    card_type: CardType
    iccsn: str
    card_holder_name: str
    telematik_id: str | None
    insert_time: dt.datetime
    ct_id: str
    slot_id: int


class Card:
    """One emulated card. Thread-safe: PIN changes and key operations take the card's lock."""

    def __init__(
        self,
        spec: CardSpec,
        base: Path,
        faults: FaultState,
        *,
        slot_id: int = 1,
        ct_id: str = "CT1",
    ) -> None:
        self.spec = spec
        self.iccsn = spec.iccsn
        self.card_type = spec.card_type
        self.holder = spec.holder
        self.telematik_id = spec.telematik_id
        self.slot_id = slot_id
        self.ct_id = ct_id
        #: the directory the key and certificate paths of ``spec`` are relative to
        self.base = base
        self.lock = threading.RLock()
        self._faults = faults
        where = f"card {spec.iccsn} ({spec.holder})"
        self._keys: dict[tuple[KeyPurpose, Crypt], _KeyPair] = {}
        for key_spec in spec.keys:
            self._keys[(key_spec.purpose, key_spec.crypt)] = _load_pair(base, key_spec, where)
        self.pins: dict[str, Pin] = {
            p.pin_type: Pin(p.pin_type, p.pin, status=p.status, puk=p.puk, lock=self.lock)
            for p in spec.pins
        }
        self._handle: str | None = None
        self.insert_time = dt.datetime.now(dt.UTC)
        self.insert()

    def __repr__(self) -> str:
        return f"<Card {self.card_type} {self.iccsn} {self.holder!r} handle={self._handle}>"

    # -- presence -------------------------------------------------------------------------

    @property
    def inserted(self) -> bool:
        return self._handle is not None

    @property
    def card_handle(self) -> str | None:
        """The handle while inserted (a new one after every insertion), else None."""
        return self._handle

    def insert(self) -> str:
        with self.lock:
            if self._handle is None:
                self._handle = str(uuid.uuid4())
                self.insert_time = dt.datetime.now(dt.UTC)
            return self._handle

    def remove(self) -> None:
        with self.lock:
            self._handle = None
            for pin in self.pins.values():
                pin.reset_security_state()

    def restore(self) -> None:
        """The card's first state: inserted (a removed card gets a new handle; an inserted one
        keeps its handle), every PIN as konnektor.json configured it, retry counters full."""
        with self.lock:
            self.insert()
            for pin in self.pins.values():
                pin.restore()

    def check_present(self, card_handle: str) -> None:
        """4008 unless this card is inserted under ``card_handle``."""
        if self._handle != card_handle:
            raise CardError(
                CARD_NOT_INSERTED,
                f"card {self.iccsn} ({self.holder}) with handle {card_handle} is not inserted",
            )

    def info(self) -> CardInfo:
        handle = self._handle
        if handle is None:
            raise CardError(CARD_NOT_INSERTED, f"card {self.iccsn} is not inserted")
        return CardInfo(
            handle,
            self.card_type,
            self.iccsn,
            self.holder,
            self.telematik_id,
            self.insert_time,
            self.ct_id,
            self.slot_id,
        )

    # -- PINs -----------------------------------------------------------------------------

    @property
    def main_pin_type(self) -> str:
        return PIN_SMC if self.card_type is CardType.SMC_B else PIN_CH

    def pin(self, pin_type: str) -> Pin:
        pin = self.pins.get(pin_type)
        if pin is None:
            have = ", ".join(self.pins) or "none"
            raise ParameterError(
                "PinTyp", f"{pin_type!r} is not a PIN of the {self.card_type} {self.iccsn} ({have})"
            )
        return pin

    def pin_for(self, purpose: KeyPurpose) -> Pin:
        """The PIN whose verified state the key of ``purpose`` needs."""
        if self.card_type is CardType.HBA and purpose is KeyPurpose.QES:
            raise CardError(
                CALL_NOT_ALLOWED, "PrK.HP.QES needs PIN.QES, which this emulation does not offer"
            )
        return self.pin(self.main_pin_type)

    def check_access(self, purpose: KeyPurpose) -> None:
        """4085 unless the PIN guarding the key of ``purpose`` is verified (or disabled)."""
        pin = self.pin_for(purpose)
        if not pin.usable:
            raise AccessError(
                ACCESS_CONDITIONS_NOT_MET,
                f"{pin.pin_type} of card {self.iccsn} ({self.holder}) is {pin.status}: "
                f"the {purpose} key needs it VERIFIED (VerifyPin first)",
            )

    # -- keys and certificates ------------------------------------------------------------

    def algorithms(self, purpose: KeyPurpose) -> list[Crypt]:
        return [crypt for crypt in Crypt if (purpose, crypt) in self._keys]

    def key_slots(self) -> list[tuple[KeyPurpose, Crypt]]:
        """The (purpose, algorithm) of every key on the card."""
        with self.lock:
            return list(self._keys)

    def certificate(self, purpose: KeyPurpose, crypt: Crypt) -> x509.Certificate:
        return self._pair(purpose, crypt).certificate

    def renew(
        self,
        purpose: KeyPurpose,
        crypt: Crypt,
        issue: Callable[[x509.Certificate], Issued],
    ) -> tuple[x509.Certificate, x509.Certificate]:
        """Replace the key of ``purpose``/``crypt`` with a new key pair from ``issue`` (given
        the old certificate, it returns a new key with its certificate: the test PKI's
        ``renew``). The pair is written over the card's key and certificate files first
        (atomically, the key 0600), so the renewal survives a restart, then the card uses it.
        Returns (old certificate, new certificate).

        Keys handed out before (:meth:`key`) keep the old key, as a CardKey of a card that
        was replaced would; every operation asks for its key anew.
        """
        with self.lock:
            old = self._pair(purpose, crypt)
            issued = issue(old.certificate)
            new_key = issued.private_key
            if isinstance(new_key, rsa.RSAPrivateKey) != (crypt is Crypt.RSA):
                raise ValueError(f"renew: the new key of {purpose}/{crypt} is not a {crypt} key")
            spec = next(k for k in self.spec.keys if (k.purpose, k.crypt) == (purpose, crypt))
            _write_file(self.base / spec.key, issued.key_pem(), private=True)
            _write_file(self.base / spec.cert, issued.cert_pem())
            self._keys[(purpose, crypt)] = _KeyPair(new_key, issued.certificate)
            return old.certificate, issued.certificate

    def key(self, purpose: KeyPurpose, crypt: Crypt, card_handle: str) -> CardKey:
        """The key of ``purpose``/``crypt`` for use under ``card_handle`` (checked at each use)."""
        self.check_present(card_handle)
        pair = self._pair(purpose, crypt)
        return CardKey(self, card_handle, purpose, crypt, pair, self._faults)

    def _pair(self, purpose: KeyPurpose, crypt: Crypt) -> _KeyPair:
        pair = self._keys.get((purpose, crypt))
        if pair is None:
            have = ", ".join(f"{p}/{c}" for p, c in self._keys) or "none"
            raise CardError(
                CALL_NOT_ALLOWED,
                f"card {self.iccsn} ({self.holder}) has no {purpose} key for {crypt} "
                f"(it has {have})",
            )
        return pair


class CardKey:
    """One private key of a card, implementing :class:`~kim_appliance.cms.keys.KeyOperations`.

    Every operation first checks: the Konnektor is reachable, the card is still inserted under
    the handle this key was handed out for (4008), the PIN is verified (4085); then it waits out
    the slow-card latency and computes, all under the card's lock.

    Error handling: card conditions raise KonnektorError/KonnektorUnreachableError; using the
    key for the wrong algorithm raises CmsError (as SoftwareKey does), for the wrong purpose
    CardError 4058.
    """

    def __init__(
        self,
        card: Card,
        card_handle: str,
        purpose: KeyPurpose,
        crypt: Crypt,
        pair: _KeyPair,
        faults: FaultState,
    ) -> None:
        self.card = card
        self.card_handle = card_handle
        self.purpose = purpose
        self.crypt = crypt
        self._private_key = pair.private_key
        self._certificate = pair.certificate
        self._faults = faults

    def __repr__(self) -> str:
        return f"<CardKey {self.purpose}/{self.crypt} of {self.card.iccsn}>"

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @contextlib.contextmanager
    def _operation(self, name: str, purposes: Sequence[KeyPurpose]) -> Iterator[None]:
        if self._faults.unreachable:
            raise KonnektorUnreachableError(name)
        if self.purpose not in purposes:
            raise CardError(
                CALL_NOT_ALLOWED,
                f"{name} is not allowed with the {self.purpose} key of card {self.card.iccsn}",
            )
        with self.card.lock:
            self.card.check_present(self.card_handle)
            self.card.check_access(self.purpose)
            latency = self._faults.latency_for(self.card.iccsn)
            if latency > 0:
                time.sleep(latency)  # the slow card; callers run card ops in worker threads
            yield

    def decrypt_key_transport(self, encrypted_key: bytes) -> bytes:
        with self._operation("key transport unwrap", (KeyPurpose.ENC,)):
            if not isinstance(self._private_key, rsa.RSAPrivateKey):
                raise CmsError("KeyTransRecipientInfo", "key transport needs an RSA key")
            try:
                return self._private_key.decrypt(encrypted_key, OAEP_SHA256)
            except ValueError as exc:
                raise CmsError(
                    "KeyTransRecipientInfo.encryptedKey", "RSA-OAEP unwrap failed on the card"
                ) from exc

    def agree_key(self, originator_public_key: ec.EllipticCurvePublicKey) -> bytes:
        with self._operation("key agreement", (KeyPurpose.ENC,)):
            if not isinstance(self._private_key, ec.EllipticCurvePrivateKey):
                raise CmsError("KeyAgreeRecipientInfo", "key agreement needs an EC key")
            return self._private_key.exchange(ec.ECDH(), originator_public_key)

    def sign_digest(self, digest: bytes) -> bytes:
        """RSASSA-PSS (SHA-256, salt 32) or ECDSA (DER Ecdsa-Sig-Value) over a SHA-256 digest."""
        purposes = (KeyPurpose.OSIG, KeyPurpose.AUT, KeyPurpose.QES)
        with self._operation("signature", purposes):
            if len(digest) != 32:
                raise ParameterError("digest", f"must be 32 bytes of SHA-256, got {len(digest)}")
            if isinstance(self._private_key, rsa.RSAPrivateKey):
                return self._private_key.sign(digest, PSS_SHA256_SALT32, Prehashed(hashes.SHA256()))
            return self._private_key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))

    def authenticate(self, digest: bytes, scheme: str) -> bytes:
        """ExternalAuthenticate with the AUT key over a SHA-256 ``digest``.

        ``scheme``: ``RSASSA-PSS`` or ``RSASSA-PKCS1-v1_5`` (SignatureSchemes of
        SignatureService.xsd) for RSA keys; ``ECDSA`` for ECC keys, answered in the plain
        ``r || s`` format of BSI TR-03111 (64 bytes) as a card delivers it.
        """
        with self._operation("ExternalAuthenticate", (KeyPurpose.AUT,)):
            if len(digest) != 32:
                raise ParameterError(
                    "BinaryString", f"must be a 32-byte SHA-256 hash, got {len(digest)} bytes"
                )
            key = self._private_key
            if scheme == "ECDSA":
                if not isinstance(key, ec.EllipticCurvePrivateKey):
                    raise ParameterError("SignatureType", "ECDSA needs the card's ECC AUT key")
                r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
                size = (key.curve.key_size + 7) // 8
                return r.to_bytes(size, "big") + s.to_bytes(size, "big")
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ParameterError("SignatureSchemes", f"{scheme} needs the card's RSA AUT key")
            if scheme == "RSASSA-PSS":
                return key.sign(digest, PSS_SHA256_SALT32, Prehashed(hashes.SHA256()))
            if scheme == "RSASSA-PKCS1-v1_5":
                return key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
            raise ParameterError(
                "SignatureSchemes", f"{scheme!r} is not RSASSA-PSS, RSASSA-PKCS1-v1_5 or ECDSA"
            )


class CardSet:
    """The cards in the Konnektor's terminals, found by handle or ICCSN."""

    def __init__(self, cards: Sequence[Card]) -> None:
        iccsns = [c.iccsn for c in cards]
        duplicates = {i for i in iccsns if iccsns.count(i) > 1}
        if duplicates:
            raise ValueError(f"cards: ICCSN {sorted(duplicates)} appears more than once")
        self._cards = list(cards)

    def __iter__(self) -> Iterator[Card]:
        return iter(self._cards)

    def __len__(self) -> int:
        return len(self._cards)

    def by_iccsn(self, iccsn: str) -> Card:
        for card in self._cards:
            if card.iccsn == iccsn:
                return card
        raise ValueError(f"no card with ICCSN {iccsn} in the Konnektor")

    def by_handle(self, card_handle: str) -> Card:
        """The card inserted under ``card_handle``; 4008 if there is none (removed or unknown),
        as a real Konnektor answers ("Karte mit Handle ... nicht vorhanden")."""
        for card in self._cards:
            if card.card_handle is not None and card.card_handle == card_handle:
                return card
        raise CardError(CARD_NOT_INSERTED, f"no card with handle {card_handle!r} is inserted")

    @classmethod
    def load(cls, specs: Sequence[CardSpec], base: Path, faults: FaultState) -> CardSet:
        return cls([Card(spec, base, faults, slot_id=i + 1) for i, spec in enumerate(specs)])
