"""KIM SignedData: a streaming writer and a streaming, verifying reader (digest §2.5, §2.8).

The signed layer of a KIM message is a DER ``ContentInfo{signedData}`` with the eContent
included (KOM-LE-A_2103, A_2121): ``RFC822_CONTENT_PREFIX`` + the inner mail, up to 25 MB and
more. Both directions stream that content: the writer produces only the bytes before and after
it (definite lengths are known up front, because the caller hashed the content in a first
pass), the reader hands it to a sink as it arrives and hashes it with the native SHA-256. Only
the small structures (certificate, SignerInfo, attributes) are held in memory and handled by
asn1crypto. This module must never hold the eContent in memory, never touch a private key (it
signs through :class:`~kim_appliance.cms.keys.KeyOperations`), and never validate a certificate
path (that is ``kim_appliance.pki``'s job).

Profile (digest §2.5, as in gematik's sample ``inputEmail.txt.02.signedcms``): version 1,
digestAlgorithms {sha256 with NULL}, eContentType id-data, exactly one SignerInfo v1 whose sid
is the IssuerAndSerialNumber of the only certificate (KOM-LE-A_2119, A_2122..A_2125), no crls
(A_2118), no unsigned attributes (A_2126), signed attributes contentType, signingTime,
messageDigest, CMSAlgorithmProtection, signingCertificateV2, recipient-emails (A_2127).
Signature RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32) or ecdsa-with-SHA256 (digest §2.8).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import asn1crypto.algos
import asn1crypto.cms
import asn1crypto.core
import asn1crypto.x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from kim_appliance import _native
from kim_appliance.cms.errors import (
    PARSER_FAILURES,
    CmsError,
    CmsFormatError,
    SignatureError,
    malformed_as_cms_error,
)
from kim_appliance.cms.keys import KeyOperations
from kim_appliance.cms.oids import (
    ID_CMS_ALGORITHM_PROTECTION,
    ID_CONTENT_TYPE,
    ID_DATA,
    ID_ECDSA_WITH_SHA256,
    ID_MESSAGE_DIGEST,
    ID_RECIPIENT_EMAILS,
    ID_RSASSA_PSS,
    ID_SHA256,
    ID_SIGNED_DATA,
    ID_SIGNING_CERTIFICATE_V2,
    ID_SIGNING_TIME,
)
from kim_appliance.cms.recipient_emails import decode_recipient_emails
from kim_appliance.pki.untrusted import UntrustedCertificateError, check_untrusted_certificate

# Names used in SignatureReport
DIGEST_SHA256 = "sha256"
SIG_RSASSA_PSS = "rsassa_pss"
SIG_ECDSA_SHA256 = "ecdsa-with-SHA256"

# AlgorithmIdentifier encodings, byte for byte as in gematik's sample (digest §2.5, §2.8)
SHA256_ALGORITHM = bytes.fromhex("300d06096086480165030402010500")  # sha256, NULL params
RSASSA_PSS_ALGORITHM = bytes.fromhex(  # rsassaPss {[0] sha256, [1] mgf1(sha256), [2] 32}
    "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886"
    "f70d010108300d06096086480165030402010500a203020120"
)
ECDSA_SHA256_ALGORITHM = bytes.fromhex("300a06082a8648ce3d040302")  # no params (RFC 5758)

PSS_SALT_LENGTH = 32
_MAX_CAPTURE = 1 << 20  # certificates, SignerInfos: far below this; eContent is never captured

_U, _C = _native.CLASS_UNIVERSAL, _native.CLASS_CONTEXT
_SEQUENCE, _SET, _OCTET_STRING, _OID, _INTEGER = 16, 17, 4, 6, 2

#: messageDigest attribute type and the start of its value: SET { OCTET STRING (32 bytes) }
_MESSAGE_DIGEST_ATTRIBUTE = bytes.fromhex("06092a864886f70d01090431220420")

_SD = "SignedData"
_SI = "SignedData.signerInfos[0]"
_ATTR = "SignedData.signerInfos[0].signedAttrs"


def _tlv(tag_class: int, constructed: bool, number: int, content: bytes) -> bytes:
    return _native.ber_header(tag_class, constructed, number, len(content)) + content


def _seq(*parts: bytes) -> bytes:
    return _tlv(_U, True, _SEQUENCE, b"".join(parts))


def _oid(dotted: str) -> bytes:
    return bytes(asn1crypto.core.ObjectIdentifier(dotted).dump())


def _attribute(oid: str, value: bytes) -> bytes:
    return _seq(_oid(oid), _tlv(_U, True, _SET, value))


@functools.lru_cache(maxsize=256)
def _public_key(certificate: x509.Certificate) -> CertificatePublicKeyTypes:
    """``certificate.public_key()`` once per certificate (keyed by its DER): loading an EC key
    checks the point, which cost more than the verification itself (issue 7). A key of an
    algorithm cryptography does not know (issue 11's poison message) is a CmsFormatError."""
    try:
        return certificate.public_key()
    except UnsupportedAlgorithm as exc:
        try:
            oid = certificate.public_key_algorithm_oid.dotted_string
        except ValueError:
            oid = "?"
        raise CmsFormatError(
            "SignedData.certificates[0].subjectPublicKeyInfo",
            f"key algorithm {oid} is not supported: KIM signers use RSA or ECDSA keys "
            "(digest §2.8)",
        ) from exc


def _same_name(a: Any, b: Any) -> bool:
    """Two asn1crypto Names are equal: the same RDNSequence bytes (an explicit tag around one,
    as in GeneralName [4], does not matter), or equal as RFC 5280 §7.1 says."""
    return bool(a.chosen.contents == b.chosen.contents or a == b)


def _cert_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _signature_algorithm_for(certificate: x509.Certificate) -> bytes:
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return RSASSA_PSS_ALGORITHM
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ECDSA_SHA256_ALGORITHM
    raise CmsError("signer certificate", f"unsupported key type {type(key).__name__}")


class SignedDataWriter:
    """Writes a KIM SignedData around an eContent the caller streams itself.

    Usage: ``prefix()``, then exactly ``content_length`` bytes of eContent (whose SHA-256 is
    ``content_digest``), then ``suffix()``. The result is DER with definite lengths; the
    eContent is one primitive OCTET STRING, as in gematik's sample.

    Resource handling: the signature is made once, in the constructor, through ``signer`` (a
    card operation in the appliance); everything else is a few kilobytes of structure.
    """

    def __init__(
        self,
        signer: KeyOperations,
        *,
        content_length: int,
        content_digest: bytes,
        recipient_emails: bytes,
        signing_time: dt.datetime | None = None,
    ) -> None:
        if content_length < 0:
            raise CmsError("content_length", f"must not be negative, got {content_length}")
        if len(content_digest) != 32:
            raise CmsError(
                "content_digest", f"must be 32 bytes of SHA-256, got {len(content_digest)}"
            )
        # refuses anything but a well-formed recipient-emails Attribute (digest §2.7)
        decode_recipient_emails(recipient_emails)
        if signing_time is None:
            signing_time = dt.datetime.now(dt.UTC)
        if signing_time.tzinfo is None:
            raise CmsError("signing_time", "must be timezone-aware")
        signing_time = signing_time.astimezone(dt.UTC).replace(microsecond=0)
        if not 1950 <= signing_time.year < 2050:
            raise CmsError("signing_time", "must lie in 1950..2049 (UTCTime)")
        self._content_length = content_length

        certificate = signer.certificate
        cert_der = _cert_der(certificate)
        tbs = asn1crypto.x509.Certificate.load(cert_der)["tbs_certificate"]
        issuer_der = bytes(tbs["issuer"].dump())  # exactly the certificate's issuer bytes
        serial_der = bytes(tbs["serial_number"].dump())
        signature_algorithm = _signature_algorithm_for(certificate)

        # signingCertificateV2 (RFC 5035): ESSCertIDv2 with the default hashAlgorithm sha256
        # omitted (DER), certHash, issuerSerial {GeneralNames {[4] directoryName}, serial}
        issuer_serial = _seq(_seq(_tlv(_C, True, 4, issuer_der)), serial_der)
        ess_cert_id = _seq(
            _tlv(_U, False, _OCTET_STRING, hashlib.sha256(cert_der).digest()), issuer_serial
        )
        # CMSAlgorithmProtection (RFC 6211): digestAlgorithm, [1] IMPLICIT signatureAlgorithm
        sig_alg_implicit = _tlv(_C, True, 1, _algorithm_content(signature_algorithm))
        attributes = [
            _attribute(ID_CONTENT_TYPE, _oid(ID_DATA)),
            _attribute(ID_SIGNING_TIME, bytes(asn1crypto.core.UTCTime(signing_time).dump())),
            _attribute(ID_MESSAGE_DIGEST, _tlv(_U, False, _OCTET_STRING, content_digest)),
            _attribute(ID_CMS_ALGORITHM_PROTECTION, _seq(SHA256_ALGORITHM, sig_alg_implicit)),
            _attribute(ID_SIGNING_CERTIFICATE_V2, _seq(_seq(ess_cert_id))),
            recipient_emails,
        ]
        # DER SET OF order (X.690 §11.6). It is the order of gematik's sample, and verifiers
        # that re-encode the set (BouncyCastle) and those that hash it as sent (OpenSSL) agree.
        signed_attrs = b"".join(sorted(attributes))
        to_be_signed = _tlv(_U, True, _SET, signed_attrs)
        signature = signer.sign_digest(hashlib.sha256(to_be_signed).digest())

        signer_info = _seq(
            _tlv(_U, False, _INTEGER, b"\x01"),
            _seq(issuer_der, serial_der),  # sid: IssuerAndSerialNumber (KOM-LE-A_2124)
            SHA256_ALGORITHM,
            _tlv(_C, True, 0, signed_attrs),  # [0] IMPLICIT SignedAttributes
            signature_algorithm,
            _tlv(_U, False, _OCTET_STRING, signature),
        )
        self._suffix = _tlv(_C, True, 0, cert_der) + _tlv(_U, True, _SET, signer_info)

        e_content_header = _native.ber_header(_U, False, _OCTET_STRING, content_length)
        explicit_length = len(e_content_header) + content_length
        explicit_header = _native.ber_header(_C, True, 0, explicit_length)
        data_oid = _oid(ID_DATA)
        encap_length = len(data_oid) + len(explicit_header) + explicit_length
        encap_header = _native.ber_header(_U, True, _SEQUENCE, encap_length)
        head = (
            _tlv(_U, False, _INTEGER, b"\x01")  # version 1
            + _tlv(_U, True, _SET, SHA256_ALGORITHM)  # digestAlgorithms
        )
        signed_data_length = len(head) + len(encap_header) + encap_length + len(self._suffix)
        signed_data_header = _native.ber_header(_U, True, _SEQUENCE, signed_data_length)
        content_length_0 = len(signed_data_header) + signed_data_length
        content_header = _native.ber_header(_C, True, 0, content_length_0)
        signed_oid = _oid(ID_SIGNED_DATA)
        outer_length = len(signed_oid) + len(content_header) + content_length_0
        self._prefix = (
            _native.ber_header(_U, True, _SEQUENCE, outer_length)
            + signed_oid
            + content_header
            + signed_data_header
            + head
            + encap_header
            + data_oid
            + explicit_header
            + e_content_header
        )
        self._total = len(self._prefix) + content_length + len(self._suffix)

    def prefix(self) -> bytes:
        """ContentInfo ... encapContentInfo ... the eContent OCTET STRING header."""
        return self._prefix

    def suffix(self) -> bytes:
        """certificates [0] (exactly the signer certificate) and signerInfos."""
        return self._suffix

    @property
    def total_length(self) -> int:
        return self._total


def _algorithm_content(algorithm_identifier: bytes) -> bytes:
    """The content octets of a DER AlgorithmIdentifier (for re-tagging it IMPLICIT)."""
    header_length = 2 if algorithm_identifier[1] < 0x80 else 2 + (algorithm_identifier[1] & 0x7F)
    return algorithm_identifier[header_length:]


# --- Reader ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureReport:
    """What :meth:`SignedDataReader.verify` found; every check in it has passed."""

    signer_certificate: x509.Certificate
    digest_algorithm: str  # DIGEST_SHA256
    signature_algorithm: str  # SIG_RSASSA_PSS or SIG_ECDSA_SHA256
    signing_time: dt.datetime | None
    recipient_emails: bytes  # the signed attribute's DER Attribute (for the A_2127 compare)
    content_digest: bytes  # SHA-256 of the eContent as received


class _SetOfAny(asn1crypto.core.SetOf):  # type: ignore[misc]
    _child_spec = asn1crypto.core.Any


class _Attribute(asn1crypto.core.Sequence):  # type: ignore[misc]
    _fields = [("type", asn1crypto.core.ObjectIdentifier), ("values", _SetOfAny)]  # noqa: RUF012


class _Attributes(asn1crypto.core.SetOf):  # type: ignore[misc]
    _child_spec = _Attribute


# RFC 5035 structures, declared here because importing asn1crypto.tsp would register the
# attribute type in asn1crypto's global tables and change how every other caller parses it
class _IssuerSerial(asn1crypto.core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
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


_ATTRIBUTE_NAMES = {
    ID_CONTENT_TYPE: "contentType",
    ID_SIGNING_TIME: "signingTime",
    ID_MESSAGE_DIGEST: "messageDigest",
    ID_CMS_ALGORITHM_PROTECTION: "cmsAlgorithmProtection",
    ID_SIGNING_CERTIFICATE_V2: "signingCertificateV2",
    ID_RECIPIENT_EMAILS: "recipient-emails",
}

# Where each element sits: (parent role, child index or None for "any index", tag) -> role.
# The reader walks the BER events with this table and refuses anything not in it.
_STRUCTURE: dict[tuple[str, int | None, tuple[int, int]], str] = {
    ("", 0, (_U, _SEQUENCE)): "ContentInfo",
    ("ContentInfo", 0, (_U, _OID)): "ContentInfo.contentType",
    ("ContentInfo", 1, (_C, 0)): "ContentInfo.content",
    ("ContentInfo.content", 0, (_U, _SEQUENCE)): _SD,
    (_SD, 0, (_U, _INTEGER)): "SignedData.version",
    (_SD, 1, (_U, _SET)): "SignedData.digestAlgorithms",
    (_SD, 2, (_U, _SEQUENCE)): "SignedData.encapContentInfo",
    (_SD, None, (_C, 0)): "SignedData.certificates",
    (_SD, None, (_C, 1)): "SignedData.crls",
    (_SD, None, (_U, _SET)): "SignedData.signerInfos",
    ("SignedData.encapContentInfo", 0, (_U, _OID)): "SignedData.encapContentInfo.eContentType",
    ("SignedData.encapContentInfo", 1, (_C, 0)): "SignedData.encapContentInfo.[0]",
    (
        "SignedData.encapContentInfo.[0]",
        0,
        (_U, _OCTET_STRING),
    ): "SignedData.encapContentInfo.eContent",
}
_CAPTURED = {
    "SignedData.digestAlgorithms",
    "SignedData.certificates",
    "SignedData.crls",
    "SignedData.signerInfos",
}
_VALUES = {
    "ContentInfo.contentType",
    "SignedData.version",
    "SignedData.encapContentInfo.eContentType",
}
# the order of SignedData's optional parts after encapContentInfo (RFC 5652 §5.1)
_TAIL_ORDER = ["SignedData.certificates", "SignedData.crls", "SignedData.signerInfos"]
_CONSTRUCTED = {
    "ContentInfo",
    "ContentInfo.content",
    _SD,
    "SignedData.encapContentInfo",
    "SignedData.encapContentInfo.[0]",
}


class SignedDataReader:
    """Parses a SignedData (BER or DER) as it arrives and verifies it at the end.

    ``feed`` the encoding in pieces of any size; the eContent goes to ``content_sink`` as it
    arrives (definite or indefinite lengths, primitive or constructed OCTET STRING, nested to
    any depth). After ``feed_eof``, ``verify()`` checks the signature and the KIM profile.

    Error handling: a malformed encoding raises :class:`CmsFormatError` from ``feed`` or
    ``feed_eof`` with the field where it was found; ``verify`` raises :class:`CmsFormatError`
    for profile violations and :class:`SignatureError` when something does not verify. The
    sink may have received content before an error: the caller must not release it to anyone
    before ``verify`` returned.
    """

    def __init__(self, content_sink: Callable[[bytes], None]) -> None:
        self._sink = content_sink
        self._ber = _native.BerReader(max_capture=_MAX_CAPTURE)
        self._hash = _native.Sha256()
        self._content_seen = False
        self._content_done = False
        self._eof = False
        self._roles: list[str] = []  # role of each open element, outermost first
        self._children: list[int] = [0]  # children seen so far at each depth of the open path
        self._values: dict[str, bytes] = {}  # primitive values and captured structures by role
        self._digest: bytes | None = None

    # -- parsing --

    @property
    def content_complete(self) -> bool:
        """True once the whole eContent has gone to the sink (its end was read)."""
        return self._content_done

    def _where(self) -> str:
        return self._roles[-1] if self._roles else "ContentInfo"

    def feed(self, data: bytes) -> None:
        """Parse ``data``; eContent bytes go to the sink before this returns."""
        if self._eof:
            raise CmsFormatError("SignedData", "data fed after feed_eof")
        with malformed_as_cms_error(self._where()):
            try:
                self._ber.feed(data)
                self._drain()
            except _native.BerError as exc:
                raise CmsFormatError(self._where(), f"malformed BER: {exc}") from exc

    def feed_eof(self) -> None:
        """Mark the end of the input; a truncated encoding raises :class:`CmsFormatError`."""
        if self._eof:
            return
        self._eof = True
        with malformed_as_cms_error(self._where()):
            try:
                self._ber.feed_eof()
                self._drain()
            except _native.BerError as exc:
                raise CmsFormatError(self._where(), f"malformed or truncated BER: {exc}") from exc
        if not self._ber.done:
            raise CmsFormatError(self._where(), "input ends before the ContentInfo is complete")

    def _drain(self) -> None:
        ber = self._ber
        while (event := ber.next_event()) is not None:
            kind = event.kind
            if kind == _native.EVENT_DATA:
                chunk = event.value
                self._hash.update(chunk)
                self._sink(chunk)
            elif kind == _native.EVENT_START:
                self._start(event)
            elif kind == _native.EVENT_VALUE:
                self._values[self._roles[-1]] = event.value
            elif kind == _native.EVENT_RAW:
                self._values[self._roles.pop()] = event.value
                del self._children[-1]
            elif kind == _native.EVENT_END:
                role = self._roles.pop()
                del self._children[-1]
                if role == "SignedData.encapContentInfo.eContent":
                    self._content_done = True
                elif role == "ContentInfo.contentType":
                    self._check_content_type()
        if ber.done:
            # a MIME body may end in a line break after the DER; nothing else may follow
            trailing = ber.remaining()
            if trailing.strip(b"\r\n"):
                raise CmsFormatError(
                    "ContentInfo", f"{len(trailing)} bytes of trailing data after its end"
                )

    def _start(self, event: _native.BerEvent) -> None:
        depth = event.depth
        parent = self._roles[-1] if self._roles else ""
        index = self._children[depth]
        self._children[depth] += 1
        tag = (event.tag_class, event.tag_number)
        role = _STRUCTURE.get((parent, index, tag)) or (
            _STRUCTURE.get((parent, None, tag)) if parent == _SD and index >= 3 else None
        )
        if role is None:
            where = parent or "ContentInfo"
            raise CmsFormatError(
                where,
                f"unexpected element (class {event.tag_class}, tag {event.tag_number}) "
                f"as child {index} at offset {event.offset}",
            )
        if role in _TAIL_ORDER:
            seen = [r for r in _TAIL_ORDER if r in self._values]
            if role in seen or any(_TAIL_ORDER.index(r) > _TAIL_ORDER.index(role) for r in seen):
                raise CmsFormatError(role, "appears twice or out of order (RFC 5652 §5.1)")
        if role in _CONSTRUCTED and not event.constructed:
            raise CmsFormatError(role, "must be constructed")
        if role in _VALUES and event.constructed:
            raise CmsFormatError(role, "must be primitive")
        self._roles.append(role)
        self._children.append(0)
        if role in _CAPTURED:
            self._ber.capture()
        elif role == "SignedData.encapContentInfo.eContent":
            self._content_seen = True
            self._ber.flatten()

    def _check_content_type(self) -> None:
        content_type = _decode_oid(
            self._values["ContentInfo.contentType"], "ContentInfo.contentType"
        )
        if content_type != ID_SIGNED_DATA:
            raise CmsFormatError(
                "ContentInfo.contentType",
                f"is {content_type}, expected signedData {ID_SIGNED_DATA}",
            )

    # -- verification --

    def digest_mismatch(self) -> bool:
        """After ``feed_eof``: True when the signed messageDigest, found by a plain byte search
        in the SignerInfo, differs from the SHA-256 of the eContent; False when it matches or
        cannot be found that way (then only ``verify`` can tell). A cheap first test for the
        many candidates of a CRLF repair (digest §2.10), each of which would otherwise cost a
        full ``verify`` (issue 11: repairs of hostile entities took seconds)."""
        raw = self._values.get("SignedData.signerInfos")
        if not self._eof or raw is None or not self._content_done:
            return False
        found = raw.find(_MESSAGE_DIGEST_ATTRIBUTE)
        if found < 0 or raw.find(_MESSAGE_DIGEST_ATTRIBUTE, found + 1) >= 0:
            return False
        start = found + len(_MESSAGE_DIGEST_ATTRIBUTE)
        if self._digest is None:
            self._digest = self._hash.finalize()
        return raw[start : start + 32] != self._digest

    def verify(self, *, at: dt.datetime | None = None) -> SignatureReport:
        """Check signature and profile; with ``at``, also that the signer certificate was valid
        at that time (path validation and revocation are the caller's, via kim_appliance.pki).

        Raises :class:`CmsFormatError` or :class:`SignatureError` and nothing else: what
        asn1crypto or cryptography raise while the small structures are read lazily is a
        malformed SignedData (issue 11)."""
        with malformed_as_cms_error("SignedData"):
            return self._verify(at)

    def _verify(self, at: dt.datetime | None) -> SignatureReport:
        if not self._eof:
            raise CmsError("SignedDataReader", "verify() needs feed_eof() first")
        if not self._content_seen or not self._content_done:
            raise CmsFormatError(
                "SignedData.encapContentInfo.eContent",
                "absent: KIM signatures include the content (KOM-LE-A_2103, KOM-LE-A_2121)",
            )
        if self._digest is None:
            self._digest = self._hash.finalize()
        values = self._values
        version = int.from_bytes(values["SignedData.version"], "big", signed=True)
        if version != 1:
            raise CmsFormatError("SignedData.version", f"is {version}, the profile requires 1")
        e_content_type = _decode_oid(
            values["SignedData.encapContentInfo.eContentType"],
            "SignedData.encapContentInfo.eContentType",
        )
        if e_content_type != ID_DATA:
            raise CmsFormatError(
                "SignedData.encapContentInfo.eContentType", f"is {e_content_type}, expected id-data"
            )
        _check_digest_algorithms(values["SignedData.digestAlgorithms"])
        if "SignedData.crls" in values:
            raise CmsFormatError("SignedData.crls", "must be absent (KOM-LE-A_2118)")
        certificate, cert_der, cert_asn1 = _the_certificate(values.get("SignedData.certificates"))
        if "SignedData.signerInfos" not in values:
            raise CmsFormatError("SignedData.signerInfos", "missing")
        signer_info = _the_signer_info(values["SignedData.signerInfos"])
        return _verify_signer_info(
            signer_info, certificate, cert_der, cert_asn1, e_content_type, self._digest, at
        )


def _decode_oid(contents: bytes, field: str) -> str:
    try:
        return str(asn1crypto.core.ObjectIdentifier(contents=contents).dotted)
    except PARSER_FAILURES as exc:
        raise CmsFormatError(field, f"not an OBJECT IDENTIFIER: {exc}") from exc


def _retag_set(raw: bytes) -> bytes:
    """[0] IMPLICIT SET OF ... -> the universal SET OF (tag 0x31), same length and content."""
    return b"\x31" + raw[1:]


def _check_digest_algorithms(raw: bytes) -> None:
    field = "SignedData.digestAlgorithms"
    try:
        algorithms = asn1crypto.cms.DigestAlgorithms.load(raw, strict=True)
        names = [(a["algorithm"].dotted, a["parameters"].native) for a in algorithms]
    except PARSER_FAILURES as exc:
        raise CmsFormatError(field, f"malformed: {exc}") from exc
    if names != [(ID_SHA256, None)]:
        raise CmsFormatError(field, f"must be exactly {{sha256}} (digest §2.5), got {names}")


#: signer certificates already read completely (issue 13: a practice signs every message with
#: the same certificate; reading and checking it took about 0.2 ms of each message's CPU)
CHECKED_CERTIFICATES: Final = 256


@functools.lru_cache(maxsize=CHECKED_CERTIFICATES)
def _checked_certificate(cert_der: bytes) -> x509.Certificate:
    """``cert_der`` loaded and read completely (key, names, extensions: issue 11), remembered
    by its bytes; a certificate that fails raises every time (exceptions are not cached).
    Only the parsing is remembered: trust, validity and revocation are checked per message."""
    certificate = x509.load_der_x509_certificate(cert_der)
    _public_key(certificate)  # cryptography parses the key lazily; fail here, not later
    check_untrusted_certificate(certificate)  # so are names and extensions (issue 11)
    return certificate


def _the_certificate(
    raw: bytes | None,
) -> tuple[x509.Certificate, bytes, asn1crypto.x509.Certificate]:
    field = "SignedData.certificates"
    if raw is None:
        raise CmsFormatError(field, "missing: must hold the signer certificate (KOM-LE-A_2119)")
    try:
        choices = asn1crypto.cms.CertificateSet.load(_retag_set(raw), strict=True)
        count = len(choices)
    except PARSER_FAILURES as exc:
        raise CmsFormatError(field, f"malformed: {exc}") from exc
    if count != 1:
        raise CmsFormatError(
            field, f"holds {count} certificates, must hold exactly the signer's (KOM-LE-A_2122)"
        )
    try:
        choice = choices[0]
        if choice.name != "certificate":
            raise CmsFormatError(f"{field}[0]", f"is {choice.name}, must be an X.509 certificate")
        cert_asn1 = choice.chosen
        cert_der = bytes(cert_asn1.dump())
        certificate = _checked_certificate(cert_der)
        cert_asn1["tbs_certificate"]["issuer"].native  # noqa: B018 (force the parse)
    except CmsFormatError:
        raise
    except UntrustedCertificateError as exc:
        raise CmsFormatError(f"{field}[0]", str(exc)) from exc
    except PARSER_FAILURES as exc:
        raise CmsFormatError(f"{field}[0]", f"not a valid X.509 certificate: {exc}") from exc
    return certificate, cert_der, cert_asn1


def _the_signer_info(raw: bytes) -> asn1crypto.cms.SignerInfo:
    field = "SignedData.signerInfos"
    try:
        infos = asn1crypto.cms.SignerInfos.load(raw, strict=True)
        count = len(infos)
    except PARSER_FAILURES as exc:
        raise CmsFormatError(field, f"malformed: {exc}") from exc
    if count != 1:
        raise CmsFormatError(
            field, f"holds {count} SignerInfos, must hold exactly one (KOM-LE-A_2123)"
        )
    return infos[0]


def _verify_signer_info(
    signer_info: asn1crypto.cms.SignerInfo,
    certificate: x509.Certificate,
    cert_der: bytes,
    cert_asn1: asn1crypto.x509.Certificate,
    e_content_type: str,
    content_digest: bytes,
    at: dt.datetime | None,
) -> SignatureReport:
    try:
        version = signer_info["version"].native
        sid = signer_info["sid"]
        digest_algorithm = signer_info["digest_algorithm"]
        digest_native = digest_algorithm.native
        signature_algorithm = signer_info["signature_algorithm"]
        signature_native = signature_algorithm.native
        signed_attrs = signer_info["signed_attrs"]
        unsigned_attrs = signer_info["unsigned_attrs"]
        signature = bytes(signer_info["signature"].native)
    except PARSER_FAILURES as exc:
        raise CmsFormatError(_SI, f"malformed SignerInfo: {exc}") from exc
    if version != "v1":
        raise CmsFormatError(f"{_SI}.version", f"is {version}, the profile requires v1")
    tbs = cert_asn1["tbs_certificate"]
    if sid.name != "issuer_and_serial_number":
        raise CmsFormatError(f"{_SI}.sid", "must be issuerAndSerialNumber (KOM-LE-A_2124)")
    ias = sid.chosen
    if ias["serial_number"].native != tbs["serial_number"].native or not _same_name(
        ias["issuer"], tbs["issuer"]
    ):
        raise CmsFormatError(
            f"{_SI}.sid", "does not name the certificate in SignedData.certificates (KOM-LE-A_2125)"
        )
    if digest_algorithm["algorithm"].dotted != ID_SHA256:
        raise CmsFormatError(f"{_SI}.digestAlgorithm", f"is {digest_native}, expected sha256")
    signature_name = _check_signature_algorithm(signature_algorithm, certificate)
    if not isinstance(unsigned_attrs, asn1crypto.core.Void):
        raise CmsFormatError(f"{_SI}.unsignedAttrs", "must be absent (KOM-LE-A_2126)")
    if isinstance(signed_attrs, asn1crypto.core.Void):
        raise CmsFormatError(f"{_SI}.signedAttrs", "missing")
    if at is not None:
        at_utc = at.astimezone(dt.UTC)
        if not certificate.not_valid_before_utc <= at_utc <= certificate.not_valid_after_utc:
            raise SignatureError(
                "SignedData.certificates[0]",
                f"not valid at {at_utc.isoformat()} (valid "
                f"{certificate.not_valid_before_utc.isoformat()} .. "
                f"{certificate.not_valid_after_utc.isoformat()})",
            )

    to_be_signed = _retag_set(bytes(signed_attrs.dump()))
    attributes = _parse_signed_attributes(to_be_signed)

    # Checks that name the attribute at fault. They run before the signature check is
    # reported, so that the error names the place: if the signature fails as well, the named
    # attribute is the likely culprit; if the signature holds, the attributes are authentic
    # and a messageDigest mismatch means the eContent was altered.
    failures: list[tuple[str, str]] = []
    content_type = attributes.get(ID_CONTENT_TYPE)
    if content_type is None:
        raise CmsFormatError(f"{_ATTR}.contentType", "missing (RFC 5652 §5.3)")
    content_type_oid = _attribute_value(
        content_type, asn1crypto.core.ObjectIdentifier, "contentType"
    ).dotted
    if content_type_oid != e_content_type:
        failures.append(
            (f"{_ATTR}.contentType", f"is {content_type_oid}, eContentType is {e_content_type}")
        )
    message_digest = attributes.get(ID_MESSAGE_DIGEST)
    if message_digest is None:
        raise CmsFormatError(f"{_ATTR}.messageDigest", "missing (RFC 5652 §5.3)")
    signed_digest = bytes(
        _attribute_value(message_digest, asn1crypto.core.OctetString, "messageDigest").native
    )
    digest_mismatch = signed_digest != content_digest
    signing_time: dt.datetime | None = None
    if ID_SIGNING_TIME in attributes:
        time_value = _attribute_value(
            attributes[ID_SIGNING_TIME], asn1crypto.cms.Time, "signingTime"
        )
        signing_time = time_value.native
    if ID_CMS_ALGORITHM_PROTECTION in attributes:
        protection = _attribute_value(
            attributes[ID_CMS_ALGORITHM_PROTECTION],
            asn1crypto.cms.CMSAlgorithmProtection,
            "cmsAlgorithmProtection",
        )
        reason = _algorithm_protection_mismatch(protection, digest_native, signature_native)
        if reason:
            failures.append((f"{_ATTR}.cmsAlgorithmProtection", reason))
    if ID_SIGNING_CERTIFICATE_V2 in attributes:
        signing_certificate = _attribute_value(
            attributes[ID_SIGNING_CERTIFICATE_V2],
            _SigningCertificateV2,
            "signingCertificateV2",
        )
        reason = _signing_certificate_mismatch(signing_certificate, cert_der, tbs)
        if reason:
            failures.append((f"{_ATTR}.signingCertificateV2", reason))
    if ID_RECIPIENT_EMAILS not in attributes:
        raise CmsFormatError(
            f"{_ATTR}.recipient-emails", "missing (KOM-LE-A_2114-01, KOM-LE-A_2127)"
        )
    recipient_emails = bytes(attributes[ID_RECIPIENT_EMAILS].dump())
    try:
        decode_recipient_emails(recipient_emails)
    except CmsFormatError as exc:
        raise CmsFormatError(f"{_ATTR}.{exc.field}", exc.reason) from exc

    signature_ok = _signature_verifies(certificate, signature, to_be_signed, signature_name)
    if not signature_ok:
        if digest_mismatch:
            failures.insert(
                0, (f"{_ATTR}.messageDigest", "does not match the SHA-256 of the eContent")
            )
        if failures:
            field, reason = failures[0]
            raise SignatureError(field, f"{reason}; the signature does not verify either")
        raise SignatureError(
            f"{_SI}.signature",
            "does not verify over the signed attributes with the certificate's public key",
        )
    if digest_mismatch:
        raise SignatureError(
            "SignedData.encapContentInfo.eContent",
            "its SHA-256 does not match the signed messageDigest attribute (content altered)",
        )
    if failures:
        field, reason = failures[0]
        if field.endswith("signingCertificateV2"):
            # the attribute is authentic, so the certificate sent along is not the signed one
            raise SignatureError("SignedData.certificates[0]", f"is not the signer's: {reason}")
        raise SignatureError(field, reason)
    return SignatureReport(
        signer_certificate=certificate,
        digest_algorithm=DIGEST_SHA256,
        signature_algorithm=signature_name,
        signing_time=signing_time,
        recipient_emails=recipient_emails,
        content_digest=content_digest,
    )


def _check_signature_algorithm(
    algorithm: asn1crypto.algos.SignedDigestAlgorithm, certificate: x509.Certificate
) -> str:
    field = f"{_SI}.signatureAlgorithm"
    oid = algorithm["algorithm"].dotted
    key = _public_key(certificate)
    try:
        parameters = algorithm["parameters"].native
    except PARSER_FAILURES as exc:
        raise CmsFormatError(field, f"malformed parameters: {exc}") from exc
    if oid == ID_RSASSA_PSS:
        expected = {
            "hash_algorithm": {"algorithm": "sha256", "parameters": None},
            "mask_gen_algorithm": {
                "algorithm": "mgf1",
                "parameters": {"algorithm": "sha256", "parameters": None},
            },
            "salt_length": PSS_SALT_LENGTH,
            "trailer_field": "trailer_field_bc",
        }
        if parameters != expected:
            raise CmsFormatError(
                field,
                "rsassaPss parameters must be SHA-256, MGF1-SHA-256, salt 32 (digest §2.8), "
                f"got {parameters}",
            )
        if not isinstance(key, rsa.RSAPublicKey):
            raise CmsFormatError(field, "rsassaPss needs an RSA signer certificate")
        return SIG_RSASSA_PSS
    if oid == ID_ECDSA_WITH_SHA256:
        if parameters is not None:
            raise CmsFormatError(field, "ecdsa-with-SHA256 must have no parameters (RFC 5758)")
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CmsFormatError(field, "ecdsa-with-SHA256 needs an EC signer certificate")
        return SIG_ECDSA_SHA256
    raise CmsFormatError(
        field, f"{oid} is not allowed: rsassaPss or ecdsa-with-SHA256 (digest §2.8)"
    )


def _parse_signed_attributes(to_be_signed: bytes) -> dict[str, Any]:
    field = f"{_ATTR}"
    try:
        parsed = _Attributes.load(to_be_signed, strict=True)
        count = len(parsed)
    except PARSER_FAILURES as exc:
        raise CmsFormatError(field, f"malformed: {exc}") from exc
    attributes: dict[str, Any] = {}
    for i in range(count):
        try:
            attribute = parsed[i]
            oid = attribute["type"].dotted
            value_count = len(attribute["values"])
        except PARSER_FAILURES as exc:
            raise CmsFormatError(f"{field}[{i}]", f"malformed Attribute: {exc}") from exc
        name = _ATTRIBUTE_NAMES.get(oid, oid)
        if oid in attributes:
            raise CmsFormatError(f"{field}.{name}", "appears more than once")
        if value_count != 1 and oid != ID_RECIPIENT_EMAILS:  # that one is a SET of entries
            raise CmsFormatError(f"{field}.{name}", f"has {value_count} values, expected one")
        attributes[oid] = attribute
    return attributes


def _attribute_value(attribute: Any, spec: Any, name: str) -> Any:
    try:
        value = spec.load(bytes(attribute["values"][0].dump()), strict=True)
        value.native  # noqa: B018 (force the full parse)
    except PARSER_FAILURES as exc:
        raise CmsFormatError(f"{_ATTR}.{name}", f"malformed value: {exc}") from exc
    return value


def _algorithm_protection_mismatch(
    protection: Any, digest_native: Any, signature_native: Any
) -> str | None:
    if protection["digest_algorithm"].native != digest_native:
        return "digestAlgorithm differs from the SignerInfo's (RFC 6211)"
    if protection["mac_algorithm"].native is not None:
        return "macAlgorithm must be absent in SignedData (RFC 6211)"
    if protection["signature_algorithm"].native != signature_native:
        return "signatureAlgorithm differs from the SignerInfo's (RFC 6211)"
    return None


def _signing_certificate_mismatch(value: Any, cert_der: bytes, tbs: Any) -> str | None:
    certs = value["certs"]
    if len(certs) == 0:
        return "holds no ESSCertIDv2"
    first = certs[0]  # RFC 5035: the first one identifies the signer's certificate
    hash_name = first["hash_algorithm"]["algorithm"].native
    if hash_name not in ("sha256", "sha384", "sha512"):
        return f"hashAlgorithm {hash_name} is not supported"
    if bytes(first["cert_hash"].native) != hashlib.new(hash_name, cert_der).digest():
        return f"certHash is not the {hash_name} of certificates[0]"
    issuer_serial = first["issuer_serial"]
    if issuer_serial.native is not None:
        if issuer_serial["serial_number"].native != tbs["serial_number"].native:
            return "issuerSerial.serialNumber differs from certificates[0]"
        names = [n.chosen for n in issuer_serial["issuer"] if n.name == "directory_name"]
        if not any(_same_name(n, tbs["issuer"]) for n in names):
            return "issuerSerial.issuer differs from certificates[0]"
    return None


def _signature_verifies(
    certificate: x509.Certificate, signature: bytes, data: bytes, algorithm: str
) -> bool:
    key = _public_key(certificate)
    try:
        if algorithm == SIG_RSASSA_PSS and isinstance(key, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)
            key.verify(signature, data, pss, hashes.SHA256())
            return True
        if algorithm == SIG_ECDSA_SHA256 and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False


def read_signed_data(data: bytes) -> tuple[bytes, SignatureReport]:
    """Parse and verify a small SignedData held in memory; return (eContent, report)."""
    parts: list[bytes] = []
    reader = SignedDataReader(parts.append)
    reader.feed(data)
    reader.feed_eof()
    report = reader.verify()
    return b"".join(parts), report
