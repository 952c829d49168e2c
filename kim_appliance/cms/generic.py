"""CMS signatures outside the KIM profile: the Konnektor's generic CAdES SignDocument and
VerifyDocument (RFC 5652, RFC 5035; gemSpec_Kon TUC_KON_160/161, TIP1-A_4653/A_4654).

Practice software signs eAU, prescriptions and PDFs through the same Konnektor that signs KIM
messages. Those signatures carry no recipient-emails: the SignedData holds just the standard
signed attributes of a CAdES-BES signature (contentType, signingTime, messageDigest and the ESS
signingCertificateV2), and the content is either included (enveloping) or left out
(detached). :class:`CadesSignedDataWriter` writes that shape with a card key, in DER, around a
content the caller streams itself, like :class:`~kim_appliance.cms.signed.SignedDataWriter`
does for KIM; :class:`ParsedSignedData` reads any SignedData a third party may send (BER or
DER, several signers, IssuerAndSerialNumber or SubjectKeyIdentifier, RSASSA-PSS,
RSASSA-PKCS1-v1_5 and ECDSA with SHA-2, signed attributes present or absent) and verifies it
against the document.

Verification here is the mathematics and the structure only; whether the signer certificate is
trustworthy is ``kim_appliance.pki``'s job. The reader holds the whole SignedData in memory (a
Konnektor document is at most 25 MiB, digest §1.8); the writer never holds the content. This
module must never touch a private key (it signs through
:class:`~kim_appliance.cms.keys.KeyOperations`) and never decide the KIM profile: KIM
signatures go through :mod:`kim_appliance.cms.signed`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import asn1crypto.algos
import asn1crypto.cms
import asn1crypto.core
import asn1crypto.x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from kim_appliance import _native
from kim_appliance.cms.errors import CmsError, CmsFormatError, SignatureError
from kim_appliance.cms.keys import KeyOperations
from kim_appliance.cms.oids import (
    ID_CONTENT_TYPE,
    ID_DATA,
    ID_MESSAGE_DIGEST,
    ID_RECIPIENT_EMAILS,
    ID_SIGNED_DATA,
    ID_SIGNING_CERTIFICATE_V2,
    ID_SIGNING_TIME,
)
from kim_appliance.cms.signed import (
    ECDSA_SHA256_ALGORITHM,
    RSASSA_PSS_ALGORITHM,
    SHA256_ALGORITHM,
)

__all__ = [
    "CadesSignedDataWriter",
    "CmsSignatureReport",
    "ParsedSignedData",
    "SignerReport",
    "cades_sign",
]

#: ESS signingCertificate (RFC 2634, SHA-1 certHash): checked when a third party sends it
ID_SIGNING_CERTIFICATE: Final = "1.2.840.113549.1.9.16.2.12"
#: Digest algorithms a TI Konnektor accepts (gemSpec_Krypt: SHA-2 only; SHA-1 and MD5 refused)
ACCEPTED_DIGESTS: Final = frozenset({"sha224", "sha256", "sha384", "sha512"})
_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "sha1": hashes.SHA1,  # only for the certHash of an ESS signingCertificate (v1)
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_ATTRIBUTE_NAMES: Final = {
    ID_CONTENT_TYPE: "contentType",
    ID_MESSAGE_DIGEST: "messageDigest",
    ID_SIGNING_TIME: "signingTime",
    ID_SIGNING_CERTIFICATE_V2: "signingCertificateV2",
    ID_SIGNING_CERTIFICATE: "signingCertificate",
    ID_RECIPIENT_EMAILS: "recipient-emails",
    "1.2.840.113549.1.9.15": "smimeCapabilities",
    "1.2.840.113549.1.9.52": "cmsAlgorithmProtection",
}
#: UTCTime covers 1950..2049; later signing times are GeneralizedTime (RFC 5652 §11.3)
_UTC_TIME_END: Final = 2050

_U, _C = _native.CLASS_UNIVERSAL, _native.CLASS_CONTEXT
_SEQUENCE, _SET, _OCTET_STRING, _INTEGER = 16, 17, 4, 2


def _tlv(tag_class: int, constructed: bool, number: int, content: bytes) -> bytes:
    return _native.ber_header(tag_class, constructed, number, len(content)) + content


def _seq(*parts: bytes) -> bytes:
    return _tlv(_U, True, _SEQUENCE, b"".join(parts))


def _oid(dotted: str) -> bytes:
    return bytes(asn1crypto.core.ObjectIdentifier(dotted).dump())


def _attribute(oid: str, value: bytes) -> bytes:
    return _seq(_oid(oid), _tlv(_U, True, _SET, value))


def _time(when: dt.datetime) -> bytes:
    if when.year < _UTC_TIME_END:
        return bytes(asn1crypto.core.UTCTime(when).dump())
    return bytes(asn1crypto.core.GeneralizedTime(when).dump())


# --- writing ---------------------------------------------------------------------------------


class CadesSignedDataWriter:
    """Writes a CAdES-BES SignedData around a content the caller streams itself.

    Usage: ``prefix()``, then (enveloping only) exactly ``content_length`` bytes of content
    whose SHA-256 is ``content_digest``, then ``suffix()``. With ``detached=True`` the
    encapContentInfo carries no eContent and ``prefix() + suffix()`` is the whole signature.

    Shape: DER, SignedData v1, digestAlgorithms {sha256}, eContentType id-data, the signer
    certificate only, one SignerInfo v1 with sid IssuerAndSerialNumber, signed attributes
    contentType, signingTime, messageDigest and signingCertificateV2 (RFC 5035, the CAdES-BES
    signing-certificate reference) in DER SET OF order, RSASSA-PSS (SHA-256, MGF1-SHA-256, salt
    32) or ecdsa-with-SHA256 as the card signs, no unsigned attributes.

    Resource handling: the signature is made once, in the constructor, through ``signer`` (a
    card operation in the Konnektor); everything else is a few kilobytes of structure.
    """

    def __init__(
        self,
        signer: KeyOperations,
        *,
        content_length: int,
        content_digest: bytes,
        detached: bool = False,
        signing_time: dt.datetime | None = None,
    ) -> None:
        if content_length < 0:
            raise CmsError("content_length", f"must not be negative, got {content_length}")
        if len(content_digest) != 32:
            raise CmsError(
                "content_digest", f"must be 32 bytes of SHA-256, got {len(content_digest)}"
            )
        when = dt.datetime.now(dt.UTC) if signing_time is None else signing_time
        if when.tzinfo is None:
            raise CmsError("signing_time", "must be timezone-aware")
        when = when.astimezone(dt.UTC).replace(microsecond=0)
        self.detached = detached
        self._content_length = 0 if detached else content_length

        certificate = signer.certificate
        cert_der = certificate.public_bytes(serialization.Encoding.DER)
        tbs = asn1crypto.x509.Certificate.load(cert_der)["tbs_certificate"]
        issuer_der = bytes(tbs["issuer"].dump())
        serial_der = bytes(tbs["serial_number"].dump())
        key = certificate.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            signature_algorithm = RSASSA_PSS_ALGORITHM
        elif isinstance(key, ec.EllipticCurvePublicKey):
            signature_algorithm = ECDSA_SHA256_ALGORITHM
        else:
            raise CmsError("signer certificate", f"unsupported key type {type(key).__name__}")

        # ESSCertIDv2 with the default hashAlgorithm (sha256) omitted, as DER requires
        issuer_serial = _seq(_seq(_tlv(_C, True, 4, issuer_der)), serial_der)
        ess_cert_id = _seq(
            _tlv(_U, False, _OCTET_STRING, hashlib.sha256(cert_der).digest()), issuer_serial
        )
        attributes = [
            _attribute(ID_CONTENT_TYPE, _oid(ID_DATA)),
            _attribute(ID_SIGNING_TIME, _time(when)),
            _attribute(ID_MESSAGE_DIGEST, _tlv(_U, False, _OCTET_STRING, content_digest)),
            _attribute(ID_SIGNING_CERTIFICATE_V2, _seq(_seq(ess_cert_id))),
        ]
        signed_attrs = b"".join(sorted(attributes))  # DER SET OF order (X.690 §11.6)
        to_be_signed = _tlv(_U, True, _SET, signed_attrs)
        signature = signer.sign_digest(hashlib.sha256(to_be_signed).digest())
        signer_info = _seq(
            _tlv(_U, False, _INTEGER, b"\x01"),
            _seq(issuer_der, serial_der),
            SHA256_ALGORITHM,
            _tlv(_C, True, 0, signed_attrs),
            signature_algorithm,
            _tlv(_U, False, _OCTET_STRING, signature),
        )
        self._suffix = _tlv(_C, True, 0, cert_der) + _tlv(_U, True, _SET, signer_info)

        data_oid = _oid(ID_DATA)
        if detached:
            e_content_header = b""
            encap_header = _native.ber_header(_U, True, _SEQUENCE, len(data_oid))
            encap_length = len(data_oid)
        else:
            octets = _native.ber_header(_U, False, _OCTET_STRING, content_length)
            explicit = _native.ber_header(_C, True, 0, len(octets) + content_length)
            e_content_header = explicit + octets
            encap_length = len(data_oid) + len(e_content_header) + content_length
            encap_header = _native.ber_header(_U, True, _SEQUENCE, encap_length)
        head = _tlv(_U, False, _INTEGER, b"\x01") + _tlv(_U, True, _SET, SHA256_ALGORITHM)
        signed_data_length = len(head) + len(encap_header) + encap_length + len(self._suffix)
        signed_data_header = _native.ber_header(_U, True, _SEQUENCE, signed_data_length)
        content_length_0 = len(signed_data_header) + signed_data_length
        content_header = _native.ber_header(_C, True, 0, content_length_0)
        signed_oid = _oid(ID_SIGNED_DATA)
        outer_length = len(signed_oid) + len(content_header) + content_length_0
        self._prefix = b"".join(
            [
                _native.ber_header(_U, True, _SEQUENCE, outer_length),
                signed_oid,
                content_header,
                signed_data_header,
                head,
                encap_header,
                data_oid,
                e_content_header,
            ]
        )

    def prefix(self) -> bytes:
        """ContentInfo ... encapContentInfo (up to the eContent octets when enveloping)."""
        return self._prefix

    def suffix(self) -> bytes:
        """certificates [0] (the signer certificate) and signerInfos."""
        return self._suffix

    @property
    def total_length(self) -> int:
        return len(self._prefix) + self._content_length + len(self._suffix)


def cades_sign(
    signer: KeyOperations,
    document: bytes,
    *,
    detached: bool = False,
    signing_time: dt.datetime | None = None,
) -> bytes:
    """The DER CAdES-BES SignedData of ``document`` (in memory), enveloping or detached."""
    writer = CadesSignedDataWriter(
        signer,
        content_length=len(document),
        content_digest=hashlib.sha256(document).digest(),
        detached=detached,
        signing_time=signing_time,
    )
    return writer.prefix() + (b"" if detached else document) + writer.suffix()


# --- reading ---------------------------------------------------------------------------------


class _IssuerSerial(asn1crypto.core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012 (asn1crypto's declaration style)
        ("issuer", asn1crypto.x509.GeneralNames),
        ("serial_number", asn1crypto.core.Integer),
    ]


class _EssCertIdV2(asn1crypto.core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("hash_algorithm", asn1crypto.algos.DigestAlgorithm, {"default": {"algorithm": "sha256"}}),
        ("cert_hash", asn1crypto.core.OctetString),
        ("issuer_serial", _IssuerSerial, {"optional": True}),
    ]


class _EssCertIdsV2(asn1crypto.core.SequenceOf):  # type: ignore[misc]
    _child_spec = _EssCertIdV2


class _SigningCertificateV2(asn1crypto.core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("certs", _EssCertIdsV2),
        ("policies", asn1crypto.core.Any, {"optional": True}),
    ]


class _EssCertId(asn1crypto.core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("cert_hash", asn1crypto.core.OctetString),
        ("issuer_serial", _IssuerSerial, {"optional": True}),
    ]


class _EssCertIds(asn1crypto.core.SequenceOf):  # type: ignore[misc]
    _child_spec = _EssCertId


class _SigningCertificate(asn1crypto.core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("certs", _EssCertIds),
        ("policies", asn1crypto.core.Any, {"optional": True}),
    ]


class _AnyValues(asn1crypto.core.SetOf):  # type: ignore[misc]
    _child_spec = asn1crypto.core.Any


class _Attribute(asn1crypto.core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("type", asn1crypto.core.ObjectIdentifier),
        ("values", _AnyValues),
    ]


class _Attributes(asn1crypto.core.SetOf):  # type: ignore[misc]
    _child_spec = _Attribute


@dataclass(frozen=True)
class SignerReport:
    """One SignerInfo that verified: who signed, how, and when (as the signer claims)."""

    certificate: x509.Certificate
    digest_algorithm: str
    signature_algorithm: str
    signing_time: dt.datetime | None
    signed_attributes: tuple[str, ...]


@dataclass(frozen=True)
class CmsSignatureReport:
    """What :meth:`ParsedSignedData.verify` found; every check in it has passed."""

    signers: tuple[SignerReport, ...]
    detached: bool
    e_content_type: str
    #: every certificate the SignedData carries (intermediates for path validation)
    certificates: tuple[x509.Certificate, ...] = field(repr=False)

    @property
    def signer_certificate(self) -> x509.Certificate:
        return self.signers[0].certificate


def _load(spec: Any, raw: bytes, where: str) -> Any:
    try:
        value = spec.load(raw, strict=True)
        value.native  # noqa: B018 (force the full parse, so malformed values fail here)
    except (ValueError, TypeError, KeyError) as exc:
        raise CmsFormatError(where, f"malformed: {exc}") from exc
    return value


class ParsedSignedData:
    """A SignedData parsed for inspection and verification.

    :meth:`load` checks the outer structure (a ContentInfo of type signedData, nothing after
    it); :attr:`detached` and :attr:`has_recipient_emails` let the caller choose between the
    KIM profile and this generic verification; :meth:`verify` checks every SignerInfo against
    the content (the eContent, or the detached ``content`` given).

    Error handling: a malformed structure raises :class:`CmsFormatError` naming the field
    (VerifyDocument's "wrong signature format", 4112); a signature, digest or signed attribute
    that does not verify raises :class:`SignatureError` (4115).
    """

    def __init__(self, info: asn1crypto.cms.ContentInfo) -> None:
        # asn1crypto copies the contents of every level it parses: keep only the small
        # structures and the content, not the ContentInfo (a document may have 25 MiB)
        signed_data = info["content"]
        try:
            self._certificate_choices = signed_data["certificates"]
            encap = signed_data["encap_content_info"]
            self.e_content_type: str = encap["content_type"].dotted
            content = encap["content"]
            self._content: bytes | None = (
                None if isinstance(content, asn1crypto.core.Void) else _octets(content)
            )
            self._signer_infos = list(signed_data["signer_infos"])
            self._signed_attributes = [
                _signed_attributes(si, f"SignedData.signerInfos[{i}].signedAttrs")
                for i, si in enumerate(self._signer_infos)
            ]
        except CmsError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CmsFormatError("SignedData", f"malformed: {exc}") from exc
        if not self._signer_infos:
            raise CmsFormatError("SignedData.signerInfos", "is empty: no signature present")

    @classmethod
    def load(cls, data: bytes) -> ParsedSignedData:
        """Parse ``data`` as a ContentInfo{signedData}; CmsFormatError otherwise."""
        try:
            info = asn1crypto.cms.ContentInfo.load(data, strict=True)
            content_type = info["content_type"].dotted
        except (ValueError, TypeError, KeyError) as exc:
            raise CmsFormatError("ContentInfo", f"not a CMS ContentInfo: {exc}") from exc
        if content_type != ID_SIGNED_DATA:
            raise CmsFormatError(
                "ContentInfo.contentType", f"is {content_type}, expected signedData"
            )
        return cls(info)

    @property
    def detached(self) -> bool:
        """True when the encapContentInfo carries no eContent."""
        return self._content is None

    @property
    def content(self) -> bytes | None:
        """The eContent (None when detached)."""
        return self._content

    @property
    def has_recipient_emails(self) -> bool:
        """True when a SignerInfo signs the KIM recipient-emails attribute (digest §2.7)."""
        return any(ID_RECIPIENT_EMAILS in attrs for attrs in self._signed_attributes if attrs)

    def verify(self, content: bytes | None = None) -> tuple[bytes, CmsSignatureReport]:
        """Verify every SignerInfo; return the signed content and the report.

        ``content`` is the signed document: required for a detached signature, and when given
        for an enveloping one it must equal the eContent.
        """
        if self._content is None:
            if content is None:
                raise CmsError(
                    "SignedData.encapContentInfo.eContent",
                    "absent (detached signature): the signed document must be given",
                )
            signed_content = content
        else:
            if content is not None and content != self._content:
                raise SignatureError(
                    "SignedData.encapContentInfo.eContent",
                    "differs from the document given with the signature",
                )
            signed_content = self._content
        certificates = self._certificates()
        signers = tuple(
            self._verify_signer(i, si, attrs, signed_content, certificates)
            for i, (si, attrs) in enumerate(
                zip(self._signer_infos, self._signed_attributes, strict=True)
            )
        )
        report = CmsSignatureReport(
            signers=signers,
            detached=self._content is None,
            e_content_type=self.e_content_type,
            certificates=tuple(cert for cert, _ in certificates),
        )
        return signed_content, report

    def _certificates(self) -> list[tuple[x509.Certificate, asn1crypto.x509.Certificate]]:
        where = "SignedData.certificates"
        found = []
        try:
            choices = self._certificate_choices
            if isinstance(choices, asn1crypto.core.Void):
                return []
            for i, choice in enumerate(choices):
                if choice.name != "certificate":
                    continue  # attribute certificates and others cannot sign
                try:
                    cert = x509.load_der_x509_certificate(bytes(choice.chosen.dump()))
                except ValueError as exc:
                    raise CmsFormatError(
                        f"{where}[{i}]", f"not an X.509 certificate: {exc}"
                    ) from exc
                found.append((cert, choice.chosen))
        except CmsError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise CmsFormatError(where, f"malformed: {exc}") from exc
        return found

    def _verify_signer(
        self,
        index: int,
        signer_info: asn1crypto.cms.SignerInfo,
        attributes: dict[str, Any] | None,
        content: bytes,
        certificates: Sequence[tuple[x509.Certificate, asn1crypto.x509.Certificate]],
    ) -> SignerReport:
        where = f"SignedData.signerInfos[{index}]"
        try:
            sid = signer_info["sid"]
            digest_name = signer_info["digest_algorithm"]["algorithm"].native
            signature_algorithm = signer_info["signature_algorithm"]
            signature = bytes(signer_info["signature"].native)
        except (ValueError, TypeError, KeyError) as exc:
            raise CmsFormatError(where, f"malformed SignerInfo: {exc}") from exc
        if digest_name not in ACCEPTED_DIGESTS:
            raise CmsFormatError(
                f"{where}.digestAlgorithm",
                f"{digest_name} is not accepted: SHA-224/256/384/512 only (gemSpec_Krypt)",
            )
        certificate, cert_asn1 = _signer_certificate(sid, certificates, f"{where}.sid")
        verifier = _verifier(signature_algorithm, digest_name, certificate, where)
        signature_name = verifier.name

        signing_time: dt.datetime | None = None
        if attributes is None:
            if self.e_content_type != ID_DATA:
                raise CmsFormatError(
                    f"{where}.signedAttrs",
                    "missing: required when the eContentType is not id-data (RFC 5652 §5.3)",
                )
            signed_bytes = content
            names: tuple[str, ...] = ()
        else:
            attrs_where = f"{where}.signedAttrs"
            signed_bytes = b"\x31" + bytes(signer_info["signed_attrs"].dump())[1:]
            names = tuple(_ATTRIBUTE_NAMES.get(oid, oid) for oid in attributes)
            content_type = attributes.get(ID_CONTENT_TYPE)
            digest = attributes.get(ID_MESSAGE_DIGEST)
            if content_type is None or digest is None:
                missing = "contentType" if content_type is None else "messageDigest"
                raise CmsFormatError(f"{attrs_where}.{missing}", "missing (RFC 5652 §5.3)")
            signed_type = _value(
                content_type, asn1crypto.core.ObjectIdentifier, f"{attrs_where}.contentType"
            ).dotted
            if signed_type != self.e_content_type:
                raise SignatureError(
                    f"{attrs_where}.contentType",
                    f"is {signed_type}, the eContentType is {self.e_content_type}",
                )
            signed_digest = bytes(
                _value(digest, asn1crypto.core.OctetString, f"{attrs_where}.messageDigest").native
            )
            if ID_SIGNING_TIME in attributes:
                signing_time = _value(
                    attributes[ID_SIGNING_TIME],
                    asn1crypto.cms.Time,
                    f"{attrs_where}.signingTime",
                ).native
            if not verifier(signature, signed_bytes):
                raise SignatureError(
                    f"{where}.signature",
                    "does not verify over the signed attributes with the signer's public key",
                )
            if signed_digest != hashlib.new(digest_name, content).digest():
                raise SignatureError(
                    "SignedData.encapContentInfo.eContent"
                    if self._content is not None
                    else "detached content",
                    f"its {digest_name} does not match the signed messageDigest (content altered)",
                )
            _check_signing_certificate(attributes, certificate, cert_asn1, attrs_where)
            return SignerReport(certificate, digest_name, signature_name, signing_time, names)
        if not verifier(signature, signed_bytes):
            raise SignatureError(
                f"{where}.signature",
                "does not verify over the content with the signer's public key",
            )
        return SignerReport(certificate, digest_name, signature_name, signing_time, names)


def _octets(value: Any) -> bytes:
    """The bytes of an eContent OCTET STRING (primitive or constructed, any content type)."""
    if isinstance(value, asn1crypto.core.ParsableOctetString):
        return bytes(value.__bytes__())
    return bytes(value.native)


def _signed_attributes(signer_info: Any, where: str) -> dict[str, Any] | None:
    raw = signer_info["signed_attrs"]
    if isinstance(raw, asn1crypto.core.Void):
        return None
    attributes: dict[str, Any] = {}
    try:
        # values stay Any: only the attributes this module checks are parsed further
        parsed = _Attributes.load(b"\x31" + bytes(raw.dump())[1:], strict=True)
        for attribute in parsed:
            oid = attribute["type"].dotted
            name = _ATTRIBUTE_NAMES.get(oid, oid)
            if oid in attributes:
                raise CmsFormatError(f"{where}.{name}", "appears more than once (RFC 5652 §5.3)")
            if len(attribute["values"]) != 1 and oid != ID_RECIPIENT_EMAILS:
                raise CmsFormatError(f"{where}.{name}", "must have exactly one value")
            attributes[oid] = attribute
    except CmsError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise CmsFormatError(where, f"malformed: {exc}") from exc
    return attributes


def _value(attribute: Any, spec: Any, where: str) -> Any:
    return _load(spec, bytes(attribute["values"][0].dump()), where)


def _signer_certificate(
    sid: Any,
    certificates: Sequence[tuple[x509.Certificate, asn1crypto.x509.Certificate]],
    where: str,
) -> tuple[x509.Certificate, asn1crypto.x509.Certificate]:
    if sid.name == "issuer_and_serial_number":
        ias = sid.chosen
        serial = ias["serial_number"].native
        issuer = ias["issuer"]
        for cert, asn1 in certificates:
            tbs = asn1["tbs_certificate"]
            if tbs["serial_number"].native == serial and (
                tbs["issuer"].dump() == issuer.dump() or tbs["issuer"] == issuer
            ):
                return cert, asn1
        wanted = f"issuer {issuer.human_friendly}, serial {serial:X}"
    else:
        key_id = bytes(sid.chosen.native)
        for cert, asn1 in certificates:
            if asn1.key_identifier == key_id:
                return cert, asn1
        wanted = f"subjectKeyIdentifier {key_id.hex()}"
    raise CmsError(where, f"the signer certificate ({wanted}) is not in SignedData.certificates")


@dataclass(frozen=True)
class _Verifier:
    """How one SignerInfo's signature is checked: the public key, the scheme and its hash."""

    name: str
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    kind: str
    hash_name: str
    pss: padding.PSS | None = None

    def __call__(self, signature: bytes, data: bytes) -> bool:
        chosen = _HASHES[self.hash_name]()
        try:
            if isinstance(self.key, rsa.RSAPublicKey):
                pad = self.pss if self.pss is not None else padding.PKCS1v15()
                self.key.verify(signature, data, pad, chosen)
            else:
                self.key.verify(signature, data, ec.ECDSA(chosen))
        except (InvalidSignature, ValueError):
            return False
        return True


def _verifier(
    algorithm: Any, digest_name: str, certificate: x509.Certificate, where: str
) -> _Verifier:
    """The check for the SignerInfo's signatureAlgorithm with the signer's public key."""
    field_name = f"{where}.signatureAlgorithm"
    key = certificate.public_key()
    try:
        kind = algorithm.signature_algo
        oid = algorithm["algorithm"].dotted
    except (ValueError, TypeError, KeyError) as exc:
        raise CmsFormatError(field_name, f"not a signature algorithm: {exc}") from exc
    try:
        hash_name = algorithm.hash_algo  # sha256WithRSAEncryption, ecdsa-with-SHA256, ...
    except ValueError:
        hash_name = digest_name  # rsaEncryption, id-ecPublicKey: the digestAlgorithm's hash
    pss: padding.PSS | None = None
    if kind == "rsassa_pss":
        try:
            params = algorithm["parameters"]
            hash_name = params["hash_algorithm"]["algorithm"].native
            mgf = params["mask_gen_algorithm"]
            mgf_name = mgf["algorithm"].native
            mgf_hash = mgf["parameters"]["algorithm"].native
            salt = int(params["salt_length"].native)
        except (ValueError, TypeError, KeyError) as exc:
            raise CmsFormatError(field_name, f"malformed RSASSA-PSS parameters: {exc}") from exc
        if mgf_name != "mgf1" or mgf_hash not in ACCEPTED_DIGESTS:
            raise CmsFormatError(field_name, f"RSASSA-PSS mask {mgf_name}({mgf_hash}) refused")
        pss = padding.PSS(mgf=padding.MGF1(_HASHES[mgf_hash]()), salt_length=salt)
    if hash_name not in ACCEPTED_DIGESTS:
        raise CmsFormatError(field_name, f"{hash_name} is not accepted: SHA-2 only")
    if kind in ("rsassa_pss", "rsassa_pkcs1v15"):
        if not isinstance(key, rsa.RSAPublicKey):
            raise CmsFormatError(field_name, f"{oid} needs an RSA signer certificate")
        name = (
            f"RSASSA-PSS({hash_name}, salt {salt})"
            if pss is not None
            else f"RSASSA-PKCS1-v1_5({hash_name})"
        )
        return _Verifier(name, key, kind, hash_name, pss)
    if kind == "ecdsa":
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CmsFormatError(field_name, f"{oid} needs an EC signer certificate")
        return _Verifier(f"ECDSA({hash_name})", key, kind, hash_name)
    raise CmsFormatError(
        field_name, f"{oid} is not supported: RSASSA-PSS, RSASSA-PKCS1-v1_5 or ECDSA"
    )


def _check_signing_certificate(
    attributes: dict[str, Any],
    certificate: x509.Certificate,
    cert_asn1: asn1crypto.x509.Certificate,
    where: str,
) -> None:
    """The ESS signing-certificate reference (RFC 2634 / RFC 5035), when present, names the
    certificate that verified the signature: otherwise the certificate was swapped."""
    cert_der = certificate.public_bytes(serialization.Encoding.DER)
    for oid, spec, name in (
        (ID_SIGNING_CERTIFICATE_V2, _SigningCertificateV2, "signingCertificateV2"),
        (ID_SIGNING_CERTIFICATE, _SigningCertificate, "signingCertificate"),
    ):
        if oid not in attributes:
            continue
        value = _value(attributes[oid], spec, f"{where}.{name}")
        if len(value["certs"]) == 0:
            raise CmsFormatError(f"{where}.{name}", "holds no certificate reference")
        first = value["certs"][0]  # the first one identifies the signer's certificate
        hash_name = (
            "sha1" if oid == ID_SIGNING_CERTIFICATE else first["hash_algorithm"]["algorithm"].native
        )
        if hash_name not in _HASHES:
            raise CmsFormatError(f"{where}.{name}", f"hashAlgorithm {hash_name} is not supported")
        if bytes(first["cert_hash"].native) != hashlib.new(hash_name, cert_der).digest():
            raise SignatureError(
                f"{where}.{name}", f"certHash is not the {hash_name} of the signer certificate"
            )
        issuer_serial = first["issuer_serial"]
        if issuer_serial.native is not None:
            tbs = cert_asn1["tbs_certificate"]
            if issuer_serial["serial_number"].native != tbs["serial_number"].native:
                raise SignatureError(
                    f"{where}.{name}", "issuerSerial names another certificate's serial number"
                )
