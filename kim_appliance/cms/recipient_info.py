"""RecipientInfos of the KIM AuthEnvelopedData: build, parse and unwrap the content key.

Two kinds exist in KIM (digest §2.6, §2.8, §7.3):

* KeyTransRecipientInfo v0 for RSA encryption certificates: rid IssuerAndSerialNumber
  (KOM-LE-A_2108/2109), RSAES-OAEP with SHA-256 and MGF1-SHA-256, byte for byte as in gematik's
  sample;
* KeyAgreeRecipientInfo v3 for brainpoolP256r1 certificates: ephemeral-static ECDH,
  dhSinglePass-stdDH-sha256kdf-scheme (RFC 5753) and id-aes256-wrap (RFC 3394). The Konnektor's
  exact choice is not published (digest §7.3); this is our documented choice, the one OpenSSL and
  BouncyCastle read.

These structures are small; they are parsed with asn1crypto and written as DER by hand (the
same bytes asn1crypto writes, tested; asn1crypto's encoder cost more than the RSA operation,
issue 7). A recipient certificate's public key and IssuerAndSerialNumber are made once per
certificate (loading a brainpool key checks the point). This module never sees a recipient's
private key: unwrapping goes through :class:`KeyOperations` (a card or a software key). It
must never touch the (large) content.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import asn1crypto.x509
from asn1crypto import algos, cms, core
from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from kim_appliance import _native
from kim_appliance.cms import oids
from kim_appliance.cms.errors import (
    PARSER_FAILURES,
    CmsError,
    CmsFormatError,
    DecryptionError,
    NoMatchingRecipientError,
)
from kim_appliance.cms.keys import OAEP_SHA256, KeyOperations
from kim_appliance.cms.recipient_emails import read_name

CONTENT_KEY_LENGTH: Final = 32  # AES-256-GCM (digest §2.8)

# keyEncryptionAlgorithm of every KTRI, exactly as in gematik's sample (digest §2.6):
# rsaesOaep { [0] sha256 NULL, [1] mgf1(sha256 NULL) }, default pSource.
RSAES_OAEP_SHA256_DER: Final = bytes.fromhex(
    "303c06092a864886f70d010107302fa00f300d06096086480165030402010500"
    "a11c301a06092a864886f70d010108300d06096086480165030402010500"
)
_OAEP_NAME: Final = "rsaes_oaep(sha256, mgf1-sha256)"

# RFC 5753 stdDH KDF schemes the reader accepts (what OpenSSL writes by default is sha1);
# the writer uses sha256 only (digest §7.3).
_STD_DH_KDF: Final[dict[str, tuple[str, hashes.HashAlgorithm]]] = {
    "1.3.133.16.840.63.0.2": ("dhSinglePass-stdDH-sha1kdf-scheme", hashes.SHA1()),
    "1.3.132.1.11.0": ("dhSinglePass-stdDH-sha224kdf-scheme", hashes.SHA224()),
    oids.ID_DH_SINGLE_PASS_STD_DH_SHA256_KDF: (
        "dhSinglePass-stdDH-sha256kdf-scheme",
        hashes.SHA256(),
    ),
    "1.3.132.1.11.2": ("dhSinglePass-stdDH-sha384kdf-scheme", hashes.SHA384()),
    "1.3.132.1.11.3": ("dhSinglePass-stdDH-sha512kdf-scheme", hashes.SHA512()),
}
_AES_WRAP: Final[dict[str, tuple[str, int]]] = {
    "2.16.840.1.101.3.4.1.5": ("id-aes128-wrap", 16),
    "2.16.840.1.101.3.4.1.25": ("id-aes192-wrap", 24),
    oids.ID_AES256_WRAP: ("id-aes256-wrap", 32),
}
_RI_KINDS: Final = {
    "kekri": "KEKRecipientInfo",
    "pwri": "PasswordRecipientInfo",
    "ori": "OtherRecipientInfo",
}


def shared_info(wrap_algorithm_der: bytes, key_bits: int, ukm: bytes | None) -> bytes:
    """DER ECC-CMS-SharedInfo (RFC 5753 §7.2), the SharedInfo input of the X9.63 KDF:
    SEQUENCE { keyInfo AlgorithmIdentifier (the wrap algorithm as written in the message),
    entityUInfo [0] EXPLICIT OCTET STRING OPTIONAL (the ukm), suppPubInfo [2] EXPLICIT
    OCTET STRING (the KEK length in bits, 4 bytes big-endian) }."""
    parts = [wrap_algorithm_der]
    if ukm is not None:
        parts.append(core.OctetString(ukm, explicit=0).dump())
    parts.append(core.OctetString(key_bits.to_bytes(4, "big"), explicit=2).dump())
    return bytes(core.Sequence(contents=b"".join(parts)).dump())


def _ias(certificate: x509.Certificate) -> cms.IssuerAndSerialNumber:
    cert = asn1crypto.x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    return cms.IssuerAndSerialNumber(
        {"issuer": cert["tbs_certificate"]["issuer"], "serial_number": certificate.serial_number}
    )


@functools.lru_cache(maxsize=512)
def _issuer_of(certificate: x509.Certificate) -> tuple[asn1crypto.x509.Name, bytes]:
    """The issuer of ``certificate`` as an asn1crypto Name and as DER (once per certificate;
    callers only compare it, never change it)."""
    der = certificate.issuer.public_bytes()
    return asn1crypto.x509.Name.load(der), der


# --- writing ---------------------------------------------------------------------------------

_U, _C = _native.CLASS_UNIVERSAL, _native.CLASS_CONTEXT
_PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | None


def _tlv(tag_class: int, constructed: bool, number: int, content: bytes) -> bytes:
    return _native.ber_header(tag_class, constructed, number, len(content)) + content


def _seq(*parts: bytes) -> bytes:
    return _tlv(_U, True, 16, b"".join(parts))


def _octets(data: bytes) -> bytes:
    return _tlv(_U, False, 4, data)


@functools.lru_cache(maxsize=512)
def _recipient(certificate: x509.Certificate) -> tuple[_PublicKey, bytes]:
    """(public key if RSA or EC, DER IssuerAndSerialNumber), once per certificate (the cache
    is keyed by the certificate's DER, so it cannot answer for another certificate)."""
    key = certificate.public_key()
    usable = key if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) else None
    return usable, bytes(_ias(certificate).dump(force=True))


def build_ktri(certificate: x509.Certificate, cek: bytes) -> bytes:
    """DER KeyTransRecipientInfo v0 for an RSA certificate (digest §2.6, KOM-LE-A_2108/2109)."""
    public_key, ias = _recipient(certificate)
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise CmsError("EncryptionRecipient.certificate", "key transport needs an RSA key")
    # SEQUENCE { version 0, rid IssuerAndSerialNumber, keyEncryptionAlgorithm, encryptedKey }
    return _seq(
        b"\x02\x01\x00", ias, RSAES_OAEP_SHA256_DER, _octets(public_key.encrypt(cek, OAEP_SHA256))
    )


def _aes256_wrap_der() -> bytes:
    """AlgorithmIdentifier{id-aes256-wrap} with absent parameters (RFC 3565 §2.3.2)."""
    oid = core.ObjectIdentifier(oids.ID_AES256_WRAP).dump()
    return bytes(core.Sequence(contents=oid).dump())


_WRAP_DER: Final = _aes256_wrap_der()
_KEK_SHARED_INFO: Final = shared_info(_WRAP_DER, 256, None)
# keyEncryptionAlgorithm { dhSinglePass-stdDH-sha256kdf-scheme, id-aes256-wrap }
_KARI_ALGORITHM_DER: Final = _seq(
    bytes(core.ObjectIdentifier(oids.ID_DH_SINGLE_PASS_STD_DH_SHA256_KDF).dump()), _WRAP_DER
)
# AlgorithmIdentifier { id-ecPublicKey } with absent parameters
_EC_PUBLIC_KEY_DER: Final = _seq(bytes(core.ObjectIdentifier("1.2.840.10045.2.1").dump()))


def build_kari(certificate: x509.Certificate, cek: bytes) -> bytes:
    """DER [1] KeyAgreeRecipientInfo v3 for a brainpoolP256r1 certificate (digest §7.3).

    A fresh ephemeral key per call; originatorKey with id-ecPublicKey and absent parameters
    (as OpenSSL writes it; RFC 5753 allows absent or NULL and both OpenSSL and BouncyCastle
    take the curve from the recipient's key); no ukm; dhSinglePass-stdDH-sha256kdf-scheme with
    id-aes256-wrap; rid issuerAndSerialNumber.
    """
    public_key, ias = _recipient(certificate)
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.BrainpoolP256R1
    ):
        raise CmsError("EncryptionRecipient.certificate", "key agreement needs brainpoolP256r1")
    ephemeral = ec.generate_private_key(ec.BrainpoolP256R1())
    z = ephemeral.exchange(ec.ECDH(), public_key)
    kek = X963KDF(algorithm=hashes.SHA256(), length=32, sharedinfo=_KEK_SHARED_INFO).derive(z)
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    # originator [0] EXPLICIT OriginatorIdentifierOrKey: originatorKey [1] IMPLICIT
    # OriginatorPublicKey { algorithm, publicKey BIT STRING }
    originator_key = _tlv(_C, True, 1, _EC_PUBLIC_KEY_DER + _tlv(_U, False, 3, b"\x00" + point))
    # recipientEncryptedKeys: SEQUENCE OF { rid IssuerAndSerialNumber, encryptedKey }
    encrypted_keys = _seq(_seq(ias, _octets(aes_key_wrap(kek, cek))))
    return _tlv(
        _C,
        True,
        1,  # RecipientInfo CHOICE: kari [1] IMPLICIT KeyAgreeRecipientInfo
        b"\x02\x01\x03" + _tlv(_C, True, 0, originator_key) + _KARI_ALGORITHM_DER + encrypted_keys,
    )


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipientInfo:
    """One recipient of an AuthEnvelopedData: who (issuer + serial) and how to unwrap the key.

    A KeyAgreeRecipientInfo with several RecipientEncryptedKeys yields one RecipientInfo per key.
    ``field`` is the dotted path used in error messages.
    """

    kind: Literal["ktri", "kari"]
    issuer: asn1crypto.x509.Name
    serial: int
    key_encryption_algorithm: str
    field: str
    encrypted_key: bytes = dataclasses.field(repr=False)
    # KARI only: the originator's ephemeral point, its curve (None: the recipient's), the KDF
    # hash, the wrap AlgorithmIdentifier as written, the KEK length and the ukm.
    originator_point: bytes | None = dataclasses.field(default=None, repr=False)
    originator_curve: str | None = dataclasses.field(default=None, repr=False)
    kdf_hash: hashes.HashAlgorithm | None = dataclasses.field(default=None, repr=False)
    wrap_algorithm_der: bytes | None = dataclasses.field(default=None, repr=False)
    kek_length: int = 0
    ukm: bytes | None = dataclasses.field(default=None, repr=False)

    @property
    def rid(self) -> str:
        """Human readable rid for reports and error messages."""
        return f"{self.issuer.human_friendly} / serial {self.serial:X}"

    def matches(self, certificate: x509.Certificate) -> bool:
        """True when the rid names ``certificate`` (issuer DN and serial number)."""
        if certificate.serial_number != self.serial:
            return False
        try:
            name, der = _issuer_of(certificate)
            # the same bytes are the same name; otherwise compare as RFC 5280 §7.1 says
            return bytes(self.issuer.dump()) == der or bool(name == self.issuer)
        except PARSER_FAILURES:
            return False

    def unwrap(self, key: KeyOperations) -> bytes:
        """The 32-byte content key, unwrapped with ``key``; DecryptionError on failure."""
        if self.kind == "ktri":
            try:
                cek = key.decrypt_key_transport(self.encrypted_key)
            except CmsError as exc:
                raise DecryptionError(f"{self.field}.encryptedKey", exc.reason) from exc
            except ValueError as exc:
                raise DecryptionError(
                    f"{self.field}.encryptedKey", f"RSA-OAEP unwrap failed: {exc}"
                ) from exc
        else:
            cek = self._unwrap_kari(key)
        if len(cek) != CONTENT_KEY_LENGTH:
            raise DecryptionError(
                f"{self.field}.encryptedKey",
                f"unwrapped content key has {len(cek)} bytes, AES-256-GCM needs 32",
            )
        return cek

    def _unwrap_kari(self, key: KeyOperations) -> bytes:
        assert self.originator_point is not None
        assert self.kdf_hash is not None
        assert self.wrap_algorithm_der is not None
        own = key.certificate.public_key()
        if not isinstance(own, ec.EllipticCurvePublicKey):
            raise DecryptionError(self.field, "key agreement needs an EC key")
        if self.originator_curve is not None and self.originator_curve != own.curve.name:
            raise DecryptionError(
                f"{self.field}.originator.originatorKey.algorithm",
                f"ephemeral key is on {self.originator_curve}, recipient key on {own.curve.name}",
            )
        where = f"{self.field}.originator.originatorKey.publicKey"
        try:
            ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(
                own.curve, self.originator_point
            )
        except ValueError as exc:
            raise DecryptionError(where, f"not a valid point on {own.curve.name}: {exc}") from exc
        try:
            z = key.agree_key(ephemeral)
        except CmsError as exc:
            raise DecryptionError(where, exc.reason) from exc
        except ValueError as exc:
            raise DecryptionError(where, f"ECDH failed: {exc}") from exc
        try:
            kek = X963KDF(
                algorithm=self.kdf_hash,
                length=self.kek_length,
                sharedinfo=shared_info(self.wrap_algorithm_der, self.kek_length * 8, self.ukm),
            ).derive(z)
            return aes_key_unwrap(kek, self.encrypted_key)
        except (InvalidUnwrap, InvalidKey, ValueError) as exc:
            raise DecryptionError(
                f"{self.field}.encryptedKey",
                "AES key unwrap failed (wrong key, altered ephemeral key or encryptedKey)",
            ) from exc


#: DER of issuer names that parsed fully before (a handful of CAs): not parsed again
_PARSED_NAMES: set[bytes] = set()


def _name_and_serial(ias: cms.IssuerAndSerialNumber) -> tuple[asn1crypto.x509.Name, int]:
    issuer = ias["issuer"]
    der = bytes(issuer.dump())
    if der not in _PARSED_NAMES:
        read_name(issuer)  # a full parse, so malformed names fail here and not in a report
        if len(_PARSED_NAMES) >= 1024:
            _PARSED_NAMES.clear()
        _PARSED_NAMES.add(der)
    return issuer, int(ias["serial_number"].native)


def _oaep_is_sha256(params: object) -> bool:
    if not isinstance(params, algos.RSAESOAEPParams):
        return False
    hash_alg = params["hash_algorithm"]
    mgf = params["mask_gen_algorithm"]
    if hash_alg["algorithm"].dotted != oids.ID_SHA256 or mgf["algorithm"].dotted != oids.ID_MGF1:
        return False
    mgf_hash = mgf["parameters"]
    if not isinstance(mgf_hash, algos.DigestAlgorithm) or mgf_hash["algorithm"].dotted != (
        oids.ID_SHA256
    ):
        return False
    for digest in (hash_alg, mgf_hash):  # parameters NULL or absent (RFC 4055 §2.1)
        if not isinstance(digest["parameters"], core.Null | core.Void):
            return False
    return bool(params["p_source_algorithm"]["parameters"].native == b"")


def _parse_ktri(ktri: cms.KeyTransRecipientInfo, where: str) -> RecipientInfo:
    if ktri["version"].native != "v0":
        raise CmsFormatError(
            f"{where}.version", f"is {ktri['version'].native}, KIM requires v0 (KOM-LE-A_2109)"
        )
    rid = ktri["rid"]
    if rid.name != "issuer_and_serial_number":
        raise CmsFormatError(f"{where}.rid", "must be issuerAndSerialNumber (KOM-LE-A_2109)")
    issuer, serial = _name_and_serial(rid.chosen)
    alg = ktri["key_encryption_algorithm"]
    dotted = alg["algorithm"].dotted
    # the exact bytes KIM writes (gematik's sample, ours) need no parameter walk
    exact = bytes(alg.dump()) == RSAES_OAEP_SHA256_DER
    if not exact and (dotted != oids.ID_RSAES_OAEP or not _oaep_is_sha256(alg["parameters"])):
        raise CmsFormatError(
            f"{where}.keyEncryptionAlgorithm",
            f"{alg['algorithm'].native} is not supported: KIM requires {_OAEP_NAME} (digest §2.8)",
        )
    return RecipientInfo(
        kind="ktri",
        issuer=issuer,
        serial=serial,
        key_encryption_algorithm=_OAEP_NAME,
        field=where,
        encrypted_key=bytes(ktri["encrypted_key"].native),
    )


def _parse_kari(kari: cms.KeyAgreeRecipientInfo, where: str) -> list[RecipientInfo]:
    if kari["version"].native != "v3":
        raise CmsFormatError(f"{where}.version", f"is {kari['version'].native}, must be v3")
    originator = kari["originator"]
    if originator.name != "originator_key":
        raise CmsFormatError(
            f"{where}.originator",
            f"is {originator.name}; only originatorKey (ephemeral-static ECDH) is supported",
        )
    okey = originator.chosen
    okey_alg = okey["algorithm"]
    if okey_alg["algorithm"].dotted != oids.ID_EC_PUBLIC_KEY:
        raise CmsFormatError(
            f"{where}.originator.originatorKey.algorithm",
            f"is {okey_alg['algorithm'].dotted}, must be id-ecPublicKey",
        )
    params = okey_alg["parameters"]
    curve: str | None = None
    if isinstance(params, asn1_keys.ECDomainParameters) and params.name == "named":
        named = params.chosen.dotted
        curve = {oids.ID_BRAINPOOL_P256R1: "brainpoolP256r1"}.get(named, named)
    elif not (
        isinstance(params, core.Void)
        or (isinstance(params, asn1_keys.ECDomainParameters) and params.name == "implicit_ca")
    ):
        raise CmsFormatError(
            f"{where}.originator.originatorKey.algorithm.parameters",
            "must be absent, NULL or a named curve",
        )
    point = okey["public_key"]
    if point.unused_bits:
        raise CmsFormatError(f"{where}.originator.originatorKey.publicKey", "unused bits set")
    ukm = kari["ukm"]
    ukm_bytes = None if isinstance(ukm, core.Void) else bytes(ukm.native)

    alg = kari["key_encryption_algorithm"]
    dotted = alg["algorithm"].dotted
    if dotted not in _STD_DH_KDF:
        raise CmsFormatError(
            f"{where}.keyEncryptionAlgorithm",
            f"{dotted} is not supported: expected a dhSinglePass-stdDH-sha*kdf-scheme (RFC 5753)",
        )
    kdf_name, kdf_hash = _STD_DH_KDF[dotted]
    wrap_any = alg["parameters"]
    if isinstance(wrap_any, core.Void):
        raise CmsFormatError(
            f"{where}.keyEncryptionAlgorithm.parameters", "key wrap algorithm missing"
        )
    wrap = wrap_any.parse(algos.AnyAlgorithmIdentifier)
    wrap_oid = wrap["algorithm"].dotted
    if wrap_oid not in _AES_WRAP:
        raise CmsFormatError(
            f"{where}.keyEncryptionAlgorithm.parameters",
            f"key wrap {wrap_oid} is not supported: expected id-aes128/192/256-wrap",
        )
    if not isinstance(wrap["parameters"], core.Void | core.Null):
        raise CmsFormatError(
            f"{where}.keyEncryptionAlgorithm.parameters", "AES key wrap takes no parameters"
        )
    wrap_name, kek_length = _AES_WRAP[wrap_oid]
    infos = []
    for j, rek in enumerate(kari["recipient_encrypted_keys"]):
        rek_where = f"{where}.recipientEncryptedKeys[{j}]"
        rid = rek["rid"]
        if rid.name != "issuer_and_serial_number":
            raise CmsFormatError(f"{rek_where}.rid", "must be issuerAndSerialNumber")
        issuer, serial = _name_and_serial(rid.chosen)
        infos.append(
            RecipientInfo(
                kind="kari",
                issuer=issuer,
                serial=serial,
                key_encryption_algorithm=f"{kdf_name}({wrap_name})",
                field=rek_where,
                encrypted_key=bytes(rek["encrypted_key"].native),
                originator_point=bytes(point.native),
                originator_curve=curve,
                kdf_hash=kdf_hash,
                wrap_algorithm_der=bytes(wrap.dump()),
                kek_length=kek_length,
                ukm=ukm_bytes,
            )
        )
    if not infos:
        raise CmsFormatError(f"{where}.recipientEncryptedKeys", "is empty")
    return infos


def parse_recipient_infos(der: bytes, where: str) -> list[RecipientInfo]:
    """Parse the encoding of the RecipientInfos SET (``where`` is its dotted path).

    Raises CmsFormatError naming the field for anything outside the profile: other recipient
    info kinds, other rids, other key-encryption algorithms, malformed encodings.
    """
    current = where
    try:
        infos_asn1 = cms.RecipientInfos.load(der, strict=True)
        result: list[RecipientInfo] = []
        for i, ri in enumerate(infos_asn1):
            current = f"{where}[{i}]"
            if ri.name == "ktri":
                result.append(_parse_ktri(ri.chosen, current))
            elif ri.name == "kari":
                result.extend(_parse_kari(ri.chosen, current))
            else:
                raise CmsFormatError(
                    current, f"{_RI_KINDS.get(ri.name, ri.name)} is not supported in KIM"
                )
    except CmsError:
        raise
    except PARSER_FAILURES as exc:
        raise CmsFormatError(current, f"malformed: {exc}") from exc
    if not result:
        raise CmsFormatError(where, "no RecipientInfo present")
    return result


def find_recipient(
    infos: Sequence[RecipientInfo], keys: Sequence[KeyOperations]
) -> tuple[RecipientInfo, KeyOperations]:
    """The first (RecipientInfo, key) pair whose rid names the key's certificate.

    Raises NoMatchingRecipientError listing the rids present when none matches.
    """
    for key in keys:
        for info in infos:
            if info.matches(key.certificate):
                return info, key
    present = "; ".join(f"{i.kind} {i.rid}" for i in infos) or "none"
    mine = "; ".join(
        f"{k.certificate.issuer.rfc4514_string()} / serial {k.certificate.serial_number:X}"
        for k in keys
    )
    raise NoMatchingRecipientError(
        "AuthEnvelopedData.recipientInfos",
        f"no RecipientInfo for the given key(s) [{mine}]; rids present: {present}",
    )
