"""AuthEnvelopedData of the KIM S/MIME profile (RFC 5083, digest §2.6/§2.8): stream writer and
stream reader.

The writer produces the exact shape of gematik's sample ``inputEmail.txt.04.encryptedcms``: BER
with indefinite lengths at the outer levels, version 0, no originatorInfo (KOM-LE-A_2106), one
RecipientInfo per certificate (KTRI for RSA, KARI for brainpoolP256r1; the sender is one of them,
KOM-LE-A_2111-01), AES-256-GCM with a 12-byte nonce and 16-byte tag, encryptedContent as a
constructed OCTET STRING of primitive chunks (KOM-LE-A_2112), no authAttrs (so the GCM AAD is
empty), the tag in ``mac``, and ``unauthAttrs`` carrying the caller's recipient-emails attribute
(KOM-LE-A_2107, A_2114-01).

The reader is a push parser: ``feed`` bytes as they arrive, learn the recipient infos as soon as
they are parsed, hand in the content key, and ``finish`` to verify the tag and receive the
plaintext. Decision (digest §2.6): authAttrs are not in the KIM profile and are refused, like
originatorInfo; a message without unauthAttrs is read (``recipient_emails`` is then None) and
the caller decides, because KOM-LE-A_2107 is a rule for the sender.

Every byte of the content goes through the native module (BER framing, AES-GCM); Python only
handles the small structures. This module must never hold a whole content in memory and must
never hand out plaintext whose GCM tag has not verified.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import IO, Final, TypeAlias

from asn1crypto import algos, cms, core
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kim_appliance import _native as native
from kim_appliance.cms import oids
from kim_appliance.cms.errors import PARSER_FAILURES, CmsError, CmsFormatError, DecryptionError
from kim_appliance.cms.recipient_info import (
    CONTENT_KEY_LENGTH,
    RecipientInfo,
    build_kari,
    build_ktri,
    find_recipient,
    parse_recipient_infos,
)

__all__ = [
    "AuthEnvelopedReader",
    "AuthEnvelopedWriter",
    "EncryptionRecipient",
    "RecipientInfo",
    "find_recipient",
]

NONCE_LENGTH: Final = 12  # 96-bit GCM nonce (digest §2.8)
TAG_LENGTH: Final = 16  # aes-ICVlen 16 (digest §2.6)
# Largest small structure the reader captures (recipientInfos, algorithm, unauthAttrs).
MAX_SMALL_STRUCTURE: Final = 1024 * 1024
_SPOOL_READ: Final = 1024 * 1024
#: ciphertext spooled before the content key is known stays in memory up to this size
_SPOOL_IN_MEMORY: Final = 1024 * 1024
_EOC: Final = b"\x00\x00"

_U = native.CLASS_UNIVERSAL
_C = native.CLASS_CONTEXT
_SEQUENCE, _SET, _OCTET_STRING, _INTEGER, _OID = 16, 17, 4, 2, 6


class _GcmParameters(core.Sequence):  # type: ignore[misc]
    """GCMParameters (RFC 5084 §3.2); aes-ICVlen defaults to 12."""

    _fields = [  # noqa: RUF012 (asn1crypto's declaration style)
        ("aes_nonce", core.OctetString),
        ("aes_icvlen", core.Integer, {"default": 12}),
    ]


def _oid_der(dotted: str) -> bytes:
    return bytes(core.ObjectIdentifier(dotted).dump())


def _content_encryption_algorithm(nonce: bytes) -> bytes:
    """DER AlgorithmIdentifier{id-aes256-GCM, GCMParameters{nonce, 16}} (digest §2.6)."""
    params = _GcmParameters({"aes_nonce": nonce, "aes_icvlen": TAG_LENGTH})
    # asn1crypto would omit a value equal to the DEFAULT (12); 16 is not, so it is written
    return bytes(core.Sequence(contents=_oid_der(oids.ID_AES256_GCM) + params.dump()).dump())


@dataclass(frozen=True)
class EncryptionRecipient:
    """A KIM address with one of its encryption certificates (C.HCI.ENC / C.HP.ENC).

    RSA certificates get a KeyTransRecipientInfo, brainpoolP256r1 certificates a
    KeyAgreeRecipientInfo; anything else is refused by the writer.
    """

    address: str
    certificate: x509.Certificate


def _recipient_info_der(index: int, recipient: EncryptionRecipient, cek: bytes) -> bytes:
    key = recipient.certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return build_ktri(recipient.certificate, cek)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.BrainpoolP256R1):
        return build_kari(recipient.certificate, cek)
    kind = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
    raise CmsError(
        f"recipients[{index}].certificate",
        f"{recipient.address}: {kind} keys are not supported; KIM encrypts to RSA and "
        "brainpoolP256r1 certificates (digest §2.8)",
    )


def _check_recipient_emails(der: bytes, field: str) -> None:
    try:
        attr = cms.CMSAttribute.load(der, strict=True)
        oid = attr["type"].dotted
        count = len(attr["values"])
    except PARSER_FAILURES as exc:
        raise CmsError(field, f"not a DER Attribute: {exc}") from exc
    if oid != oids.ID_RECIPIENT_EMAILS:
        raise CmsError(field, f"attribute type is {oid}, expected recipient-emails")
    if count == 0:
        raise CmsError(field, "recipient-emails holds no RecipientEmail")


class AuthEnvelopedWriter:
    """Streams one AuthEnvelopedData: ``header()``, then ``update()`` per piece of plaintext,
    then ``finalize()``; concatenated, the outputs are the BER ContentInfo.

    ``content_key`` and ``nonce`` are for tests (fresh random values otherwise). A nonce must
    never be reused with the same key. ``unauth_recipient_emails=None`` writes no unauthAttrs:
    only for interop tests with OpenSSL 3.0 (digest §2.10); KIM requires them (KOM-LE-A_2107).

    Resource handling: memory is bounded by ``chunk_size`` plus the piece passed to ``update``.
    """

    def __init__(
        self,
        recipients: Sequence[EncryptionRecipient],
        *,
        unauth_recipient_emails: bytes | None,
        chunk_size: int = 65536,
        content_key: bytes | None = None,
        nonce: bytes | None = None,
    ) -> None:
        if not recipients:
            raise CmsError("recipients", "at least one recipient is needed")
        if chunk_size < 1:
            raise CmsError("chunk_size", f"must be positive, got {chunk_size}")
        cek = os.urandom(CONTENT_KEY_LENGTH) if content_key is None else content_key
        if len(cek) != CONTENT_KEY_LENGTH:
            raise CmsError("content_key", f"must be 32 bytes for AES-256-GCM, got {len(cek)}")
        nonce = os.urandom(NONCE_LENGTH) if nonce is None else nonce
        if len(nonce) != NONCE_LENGTH:
            raise CmsError("nonce", f"must be 12 bytes, got {len(nonce)}")
        if unauth_recipient_emails is not None:
            _check_recipient_emails(unauth_recipient_emails, "unauth_recipient_emails")
        infos = b"".join(_recipient_info_der(i, r, cek) for i, r in enumerate(recipients))
        self._header = b"".join(
            [
                native.ber_header(_U, True, _SEQUENCE, None),  # ContentInfo
                _oid_der(oids.ID_CT_AUTH_ENVELOPED_DATA),
                native.ber_header(_C, True, 0, None),  # [0] content
                native.ber_header(_U, True, _SEQUENCE, None),  # AuthEnvelopedData
                b"\x02\x01\x00",  # version 0
                native.ber_header(_U, True, _SET, len(infos)),
                infos,
                native.ber_header(_U, True, _SEQUENCE, None),  # authEncryptedContentInfo
                _oid_der(oids.ID_DATA),
                _content_encryption_algorithm(nonce),
                native.ber_header(_C, True, 0, None),  # [0] IMPLICIT constructed OCTET STRING
            ]
        )
        self._trailer_attrs = b""
        if unauth_recipient_emails is not None:
            self._trailer_attrs = (
                native.ber_header(_C, True, 2, len(unauth_recipient_emails))
                + unauth_recipient_emails
            )
        self._encryptor = native.AesGcmEncryptor(cek, nonce)
        self._chunker = native.OctetStringChunker(chunk_size)
        self._state = "new"

    def header(self) -> bytes:
        """Everything up to the first content chunk."""
        if self._state != "new":
            raise RuntimeError("AuthEnvelopedWriter.header() may be called once, first")
        self._state = "content"
        return self._header

    def update(self, data: bytes) -> bytes:
        """Encrypt ``data``; return the complete OCTET STRING chunks available so far."""
        if self._state != "content":
            raise RuntimeError(
                "AuthEnvelopedWriter.update() needs header() first, not after finalize()"
            )
        return self._chunker.update(self._encryptor.update(data))

    def finalize(self) -> bytes:
        """The last chunk, the end-of-contents octets, mac, unauthAttrs and the closing EOCs."""
        if self._state != "content":
            raise RuntimeError("AuthEnvelopedWriter.finalize() needs header() first, and once")
        self._state = "done"
        tag = self._encryptor.finalize()
        return b"".join(
            [
                self._chunker.finalize(),
                _EOC,  # encryptedContent
                _EOC,  # authEncryptedContentInfo
                native.ber_header(_U, False, _OCTET_STRING, len(tag)),
                tag,  # mac
                self._trailer_attrs,
                _EOC,  # AuthEnvelopedData
                _EOC,  # [0]
                _EOC,  # ContentInfo
            ]
        )


_Events: TypeAlias = "Generator[None, native.BerEvent, None]"


def _describe(ev: native.BerEvent) -> str:
    if ev.kind == native.EVENT_END:
        return "the end of the enclosing element"
    names = {_SEQUENCE: "SEQUENCE", _SET: "SET", _OCTET_STRING: "OCTET STRING", _INTEGER: "INTEGER"}
    names[_OID] = "OBJECT IDENTIFIER"
    if ev.tag_class == _U and ev.tag_number in names:
        return names[ev.tag_number]
    cls = {_U: "UNIVERSAL ", _C: "", native.CLASS_APPLICATION: "APPLICATION "}.get(
        ev.tag_class, "PRIVATE "
    )
    return f"[{cls}{ev.tag_number}]{' constructed' if ev.constructed else ''}"


def _is_start(ev: native.BerEvent, tag_class: int, number: int) -> bool:
    return ev.kind == native.EVENT_START and ev.tag_class == tag_class and ev.tag_number == number


def _oid_name(content: bytes) -> str:
    try:
        return str(core.ObjectIdentifier(contents=content).dotted)
    except PARSER_FAILURES:
        return f"an unparseable OID ({content[:16].hex()})"


class AuthEnvelopedReader:
    """Push parser for one AuthEnvelopedData ContentInfo (BER or DER).

    ``feed`` bytes, then ``feed_eof``; ``recipient_infos`` is available as soon as those are
    parsed. ``set_content_key`` may come before the content arrives (it is then decrypted as it
    streams in) or after (the ciphertext is spooled to an anonymous temporary file and decrypted
    by ``finish``). ``finish`` verifies the GCM tag and only then hands out the plaintext.

    Error handling: every malformed or out-of-profile input raises CmsFormatError naming the
    field; a bad tag raises DecryptionError. After an error the reader is dead: every further
    call raises the same error, and its spool files are closed (they have no name on disk).
    Resource handling: memory is bounded by the size of the pieces fed plus the small structures
    (at most ``MAX_SMALL_STRUCTURE`` each).

    ``discard_content=True`` reads the structure only (recipient infos, nonce, tag, the
    unauthAttrs with recipient-emails) and drops the ciphertext unread: no spool, no decryption,
    and ``set_content_key``/``finish`` refuse to run. A Clientmodul uses it to learn whom a
    25 MB message is for before it asks a card for a key (digest §1.5 receive step 1).
    """

    def __init__(self, spool_dir: str | None = None, *, discard_content: bool = False) -> None:
        self._spool_dir = spool_dir
        self._discard_content = discard_content
        self._ber = native.BerReader(max_capture=MAX_SMALL_STRUCTURE)
        self._parser = self._grammar()
        next(self._parser)
        self._field = "ContentInfo"
        self._recipient_infos: list[RecipientInfo] | None = None
        self._nonce: bytes | None = None
        self._cek: bytes | None = None
        self._decryptor: native.AesGcmDecryptor | None = None
        self._spool: IO[bytes] | None = None
        self._mac: bytes | None = None
        self._recipient_emails: bytes | None = None
        self._complete = False
        self._eof = False
        self._finished = False
        self._error: CmsError | None = None

    # --- public API ----------------------------------------------------------------------

    @property
    def recipient_infos(self) -> list[RecipientInfo] | None:
        """All recipient infos (a KARI with several keys gives several); None until parsed."""
        return self._recipient_infos

    @property
    def recipient_emails(self) -> bytes | None:
        """The recipient-emails Attribute from unauthAttrs (its encoding as received), once the
        structure has been read; None if there is none."""
        return self._recipient_emails

    def feed(self, data: bytes) -> None:
        self._check_alive()
        if self._eof:
            raise RuntimeError("AuthEnvelopedReader.feed() after feed_eof()")
        with self._failing():
            if self._complete and data:
                raise CmsFormatError("ContentInfo", "trailing data after the end")
            self._ber.feed(data)
            self._pump()

    def feed_eof(self) -> None:
        self._check_alive()
        if self._eof:
            return
        self._eof = True
        with self._failing():
            self._ber.feed_eof()
            self._pump()
            if not self._complete:
                raise CmsFormatError(self._field, "truncated: the input ended inside this field")
            rest = self._ber.remaining()
            if rest:
                raise CmsFormatError("ContentInfo", f"{len(rest)} bytes of trailing data")

    def set_content_key(self, cek: bytes) -> None:
        """Hand in the unwrapped 32-byte content key (from ``RecipientInfo.unwrap``)."""
        self._check_alive()
        if self._discard_content:
            raise RuntimeError("AuthEnvelopedReader(discard_content=True) decrypts nothing")
        if self._cek is not None:
            raise RuntimeError("AuthEnvelopedReader.set_content_key() was already called")
        if len(cek) != CONTENT_KEY_LENGTH:
            raise DecryptionError("content key", f"must be 32 bytes, got {len(cek)}")
        self._cek = bytes(cek)
        with self._failing():
            self._start_decryptor()

    def finish(self) -> native.Plaintext:
        """Verify the GCM tag and return the plaintext; DecryptionError if it does not verify."""
        self._check_alive()
        if self._finished:
            raise RuntimeError("AuthEnvelopedReader.finish() was already called")
        if not self._eof:
            raise RuntimeError("AuthEnvelopedReader.finish() needs feed_eof() first")
        if self._cek is None or self._decryptor is None:
            raise RuntimeError("AuthEnvelopedReader.finish() needs set_content_key() first")
        self._finished = True
        assert self._mac is not None
        decryptor, self._decryptor = self._decryptor, None
        with self._failing():
            try:
                return decryptor.finalize(self._mac)
            except native.TagMismatchError as exc:
                raise DecryptionError(
                    "AuthEnvelopedData.mac",
                    "GCM tag does not verify: wrong content key, or the ciphertext, nonce or "
                    "tag was altered; no plaintext was released",
                ) from exc

    # --- internals -----------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._error is not None:
            raise self._error

    def _failing(self) -> _FailGuard:
        return _FailGuard(self)

    def _fail(self, error: CmsError) -> None:
        self._error = error
        self._decryptor = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _pump(self) -> None:
        while not self._complete:
            try:
                ev = self._ber.next_event()
            except native.NativeError as exc:
                raise CmsFormatError(self._field, f"malformed BER: {exc}") from exc
            if ev is None:
                return
            try:
                self._parser.send(ev)
            except StopIteration:
                self._complete = True

    def _content(self, data: bytes) -> None:
        if self._discard_content:
            return
        if self._decryptor is not None:
            self._decryptor.update(data)
        else:
            if self._spool is None:
                # in memory up to 1 MiB: a small message fed in one piece before its key is
                # known costs no file (the native decryptor spools the plaintext itself)
                self._spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115
                    max_size=_SPOOL_IN_MEMORY, dir=self._spool_dir
                )
            self._spool.write(data)

    def _start_decryptor(self) -> None:
        """Once both key and nonce are known: decrypt from here on, replaying any spool."""
        if self._cek is None or self._nonce is None or self._decryptor is not None:
            return
        self._decryptor = native.AesGcmDecryptor(self._cek, self._nonce, b"", self._spool_dir)
        if self._spool is not None:
            spool, self._spool = self._spool, None
            with spool:
                spool.seek(0)
                while piece := spool.read(_SPOOL_READ):
                    self._decryptor.update(piece)

    # The grammar, as one coroutine receiving BER events in order (RFC 5083 §2.1, digest §2.6).

    def _start(self, ev: native.BerEvent, field: str, tag_class: int, number: int) -> None:
        self._field = field
        if not _is_start(ev, tag_class, number):
            raise CmsFormatError(
                field, f"expected {_expected(tag_class, number)}, found {_describe(ev)}"
            )

    def _end(self, ev: native.BerEvent, field: str) -> None:
        if ev.kind != native.EVENT_END:
            raise CmsFormatError(field, f"unexpected {_describe(ev)} where the end was expected")

    def _primitive(
        self, ev: native.BerEvent, field: str, number: int
    ) -> Generator[None, native.BerEvent, bytes]:
        self._start(ev, field, _U, number)
        if ev.constructed:
            raise CmsFormatError(field, "must be primitive")
        ev = yield
        value = b""
        if ev.kind == native.EVENT_VALUE:
            value = ev.value
            ev = yield
        self._end(ev, field)
        return value

    def _captured(
        self, ev: native.BerEvent, field: str, tag_class: int, number: int
    ) -> Generator[None, native.BerEvent, bytes]:
        self._start(ev, field, tag_class, number)
        if not ev.constructed:
            raise CmsFormatError(field, "must be constructed")
        self._ber.capture()
        ev = yield
        if ev.kind != native.EVENT_RAW:
            raise CmsFormatError(field, "internal: capture yielded no RAW event")
        return ev.value

    def _grammar(self) -> _Events:
        ev = yield
        self._start(ev, "ContentInfo", _U, _SEQUENCE)
        ev = yield
        oid = yield from self._primitive(ev, "ContentInfo.contentType", _OID)
        if oid != _oid_der(oids.ID_CT_AUTH_ENVELOPED_DATA)[2:]:
            raise CmsFormatError(
                "ContentInfo.contentType",
                f"is {_oid_name(oid)}, expected id-ct-authEnvelopedData "
                f"{oids.ID_CT_AUTH_ENVELOPED_DATA}",
            )
        ev = yield
        self._start(ev, "ContentInfo.content", _C, 0)
        ev = yield
        self._start(ev, "AuthEnvelopedData", _U, _SEQUENCE)
        ev = yield
        version = yield from self._primitive(ev, "AuthEnvelopedData.version", _INTEGER)
        if version != b"\x00":
            raise CmsFormatError(
                "AuthEnvelopedData.version",
                f"is {int.from_bytes(version, 'big', signed=True) if version else 'empty'}, "
                "must be 0 (RFC 5083)",
            )
        ev = yield
        if _is_start(ev, _C, 0):
            raise CmsFormatError(
                "AuthEnvelopedData.originatorInfo", "not allowed in KIM (KOM-LE-A_2106)"
            )
        raw = yield from self._captured(ev, "AuthEnvelopedData.recipientInfos", _U, _SET)
        self._recipient_infos = parse_recipient_infos(raw, "AuthEnvelopedData.recipientInfos")

        aeci = "AuthEnvelopedData.authEncryptedContentInfo"
        ev = yield
        self._start(ev, aeci, _U, _SEQUENCE)
        ev = yield
        oid = yield from self._primitive(ev, f"{aeci}.contentType", _OID)
        if oid != _oid_der(oids.ID_DATA)[2:]:
            raise CmsFormatError(f"{aeci}.contentType", f"is {_oid_name(oid)}, expected id-data")
        ev = yield
        raw = yield from self._captured(ev, f"{aeci}.contentEncryptionAlgorithm", _U, _SEQUENCE)
        self._nonce = _parse_gcm(raw, f"{aeci}.contentEncryptionAlgorithm")
        self._start_decryptor()
        ev = yield
        if ev.kind == native.EVENT_END:
            raise CmsFormatError(f"{aeci}.encryptedContent", "missing (KOM-LE-A_2112)")
        self._start(ev, f"{aeci}.encryptedContent", _C, 0)
        self._ber.flatten()
        while (ev := (yield)).kind == native.EVENT_DATA:
            self._content(ev.value)
        self._end(ev, f"{aeci}.encryptedContent")
        self._field = aeci
        ev = yield
        self._end(ev, aeci)
        self._field = "AuthEnvelopedData.mac"

        ev = yield
        if _is_start(ev, _C, 1):
            raise CmsFormatError(
                "AuthEnvelopedData.authAttrs",
                "not in the KIM profile (digest §2.6: no authAttrs, the GCM AAD is empty)",
            )
        if ev.kind == native.EVENT_END:
            raise CmsFormatError("AuthEnvelopedData.mac", "missing")
        self._start(ev, "AuthEnvelopedData.mac", _U, _OCTET_STRING)
        self._ber.flatten()
        mac = b""
        while (ev := (yield)).kind == native.EVENT_DATA:
            mac += ev.value
            if len(mac) > TAG_LENGTH:
                break
        if len(mac) != TAG_LENGTH:
            raise CmsFormatError(
                "AuthEnvelopedData.mac",
                f"must be {TAG_LENGTH} bytes, got {len(mac)}{'+' if len(mac) > TAG_LENGTH else ''}",
            )
        self._end(ev, "AuthEnvelopedData.mac")
        self._mac = mac

        self._field = "AuthEnvelopedData"
        ev = yield
        if _is_start(ev, _C, 2):
            raw = yield from self._captured(ev, "AuthEnvelopedData.unauthAttrs", _C, 2)
            self._recipient_emails = _parse_unauth_attrs(raw, "AuthEnvelopedData.unauthAttrs")
            self._field = "AuthEnvelopedData"
            ev = yield
        self._end(ev, "AuthEnvelopedData")
        self._field = "ContentInfo.content"
        ev = yield
        self._end(ev, "ContentInfo.content")
        self._field = "ContentInfo"
        ev = yield
        self._end(ev, "ContentInfo")


class _FailGuard:
    """Context manager: a CmsError leaving it kills the reader (spool closed, error kept)."""

    def __init__(self, reader: AuthEnvelopedReader) -> None:
        self._reader = reader

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, CmsError):
            self._reader._fail(exc)


def _expected(tag_class: int, number: int) -> str:
    names = {
        _SEQUENCE: "SEQUENCE",
        _SET: "SET",
        _OCTET_STRING: "OCTET STRING",
        _INTEGER: "INTEGER",
        _OID: "OBJECT IDENTIFIER",
    }
    if tag_class == _U:
        return names.get(number, f"[UNIVERSAL {number}]")
    return f"[{number}]"


def _parse_gcm(raw: bytes, field: str) -> bytes:
    """The nonce from AlgorithmIdentifier{id-aes256-GCM, GCMParameters} (digest §2.6)."""
    try:
        alg = algos.AnyAlgorithmIdentifier.load(raw, strict=True)
        oid = alg["algorithm"].dotted
        if oid != oids.ID_AES256_GCM:
            raise CmsFormatError(
                f"{field}.algorithm",
                f"{oid} is not supported: KIM requires id-aes256-GCM {oids.ID_AES256_GCM}",
            )
        if isinstance(alg["parameters"], core.Void):
            raise CmsFormatError(f"{field}.parameters", "GCMParameters missing")
        params = alg["parameters"].parse(_GcmParameters)
        nonce = bytes(params["aes_nonce"].native)
        icvlen = int(params["aes_icvlen"].native)
    except CmsError:
        raise
    except PARSER_FAILURES as exc:
        raise CmsFormatError(field, f"malformed: {exc}") from exc
    if len(nonce) != NONCE_LENGTH:
        raise CmsFormatError(f"{field}.parameters.aes-nonce", f"must be 12 bytes, got {len(nonce)}")
    if icvlen != TAG_LENGTH:
        raise CmsFormatError(f"{field}.parameters.aes-ICVlen", f"must be 16, got {icvlen}")
    return nonce


def _parse_unauth_attrs(raw: bytes, field: str) -> bytes | None:
    """The recipient-emails Attribute's encoding from [2] IMPLICIT SET OF Attribute."""
    if raw[:1] != b"\xa2":
        raise CmsFormatError(field, "unexpected identifier octets")
    found: bytes | None = None
    try:
        attrs = cms.CMSAttributes.load(b"\x31" + raw[1:], strict=True)
        for i, attr in enumerate(attrs):
            if attr["type"].dotted != oids.ID_RECIPIENT_EMAILS:
                continue
            if found is not None:
                raise CmsFormatError(f"{field}[{i}]", "recipient-emails appears twice")
            if len(attr["values"]) == 0:
                raise CmsFormatError(f"{field}[{i}]", "recipient-emails holds no RecipientEmail")
            found = bytes(attr.dump())
    except CmsError:
        raise
    except PARSER_FAILURES as exc:
        raise CmsFormatError(field, f"malformed: {exc}") from exc
    return found
