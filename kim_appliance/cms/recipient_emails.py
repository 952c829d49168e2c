"""The KIM ``recipient-emails`` attribute (digest §2.7, OID 1.2.276.0.76.4.173).

A KIM message names, for every RecipientInfo, the KIM address of the certificate it was
encrypted for (KOM-LE-A_2114-01 … A_2117, A_2115-02): the receiving Clientmodul uses it to pick
its key, and compares the signed copy with the unprotected one (KOM-LE-A_2127). This module
encodes and decodes that attribute, nothing else. It must never rewrite an address (addresses
are compared case-insensitively but kept as given, digest §2.10), and never re-encode an issuer
name: the issuer bytes are exactly those of the certificate.

```asn1
RecipientEmails ::= SET SIZE (1..MAX) OF RecipientEmail
RecipientEmail  ::= SEQUENCE { emailAddress IA5String, rid RecipientIdentifier }
                    -- rid MUST be the issuerAndSerialNumber choice (KOM-LE-A_2117)
```
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import asn1crypto.cms
import asn1crypto.core
import asn1crypto.x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kim_appliance.cms.errors import PARSER_FAILURES, CmsError, CmsFormatError
from kim_appliance.cms.oids import ID_RECIPIENT_EMAILS

# digest §2.10: local part [A-Za-z0-9._-]{1,64}; domain [a-z0-9.-]{..189}, ending in the
# production (.kim.telematik) or test (.kim.telematik-test) KIM domain.
_LOCAL_PART = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KIM_DOMAIN = re.compile(r"[a-z0-9.-]{1,189}")
_KIM_SUFFIXES = (".kim.telematik", ".kim.telematik-test")
_FIELD = "recipient-emails"


class _RecipientEmailAsn1(asn1crypto.core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012 (asn1crypto's declaration style)
        ("email_address", asn1crypto.core.IA5String),
        ("rid", asn1crypto.cms.RecipientIdentifier),
    ]


class _RecipientEmailsValues(asn1crypto.core.SetOf):  # type: ignore[misc]
    _child_spec = _RecipientEmailAsn1


class _AttributeAsn1(asn1crypto.core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("type", asn1crypto.core.ObjectIdentifier),
        ("values", _RecipientEmailsValues),
    ]


def validate_kim_address(address: str, *, field: str = _FIELD, kim_domain: bool = True) -> None:
    """Refuse an address that is not a KIM address (digest §2.10).

    The domain is checked case-insensitively; the address itself is never changed. With
    ``kim_domain=False`` only the syntax is checked, not the ``.kim.telematik[-test]`` suffix
    (for foreign data such as gematik's sample, which uses ``@komle.de``).
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise CmsError(field, f"{address!r} is not an address of the form local@domain")
    if not _LOCAL_PART.fullmatch(local):
        raise CmsError(
            field, f"local part of {address!r} must be 1..64 characters of [A-Za-z0-9._-]"
        )
    lowered = domain.lower()
    if not _KIM_DOMAIN.fullmatch(lowered):
        raise CmsError(field, f"domain of {address!r} must be 1..189 characters of [a-z0-9.-]")
    if kim_domain and not lowered.endswith(_KIM_SUFFIXES):
        raise CmsError(
            field, f"domain of {address!r} must end in .kim.telematik or .kim.telematik-test"
        )


def read_name(name: asn1crypto.x509.Name) -> None:
    """Parse an asn1crypto Name completely, as every later use would (``native`` for reports,
    ``human_friendly`` for messages, the RFC 4518 string preparation of RFC 5280 §7.1 name
    comparison): asn1crypto parses lazily, so a malformed or unpreparable name raises a
    ValueError (or worse) only when it is first compared. Raises what asn1crypto raises, here
    rather than later (issue 11)."""
    name.native  # noqa: B018
    name.human_friendly  # noqa: B018
    for rdn in name.chosen:
        for type_and_value in rdn:
            type_and_value.prepped_value  # noqa: B018


@functools.lru_cache(maxsize=512)
def _issuer_and_serial(certificate: x509.Certificate) -> tuple[asn1crypto.x509.Name, int]:
    # once per certificate (keyed by its DER); the Name is shared, callers only read it
    # asn1crypto keeps the parsed bytes, so issuer.dump() is the certificate's issuer DER as is
    der = certificate.public_bytes(serialization.Encoding.DER)
    tbs = asn1crypto.x509.Certificate.load(der)["tbs_certificate"]
    return tbs["issuer"], int(tbs["serial_number"].native)


@dataclass(frozen=True)
class RecipientEmail:
    """One entry: the KIM address of the holder of the ENC certificate ``issuer``/``serial``."""

    address: str
    issuer: asn1crypto.x509.Name  # of the recipient's ENC certificate, bytes as in that cert
    serial: int

    @classmethod
    def for_certificate(cls, address: str, certificate: x509.Certificate) -> RecipientEmail:
        """The entry for ``certificate`` (KOM-LE-A_2115-02); ``address`` must be a KIM address."""
        validate_kim_address(address)
        issuer, serial = _issuer_and_serial(certificate)
        return cls(address, issuer, serial)

    def matches(self, certificate: x509.Certificate) -> bool:
        """True if this entry names ``certificate`` (same issuer and serial number)."""
        issuer, serial = _issuer_and_serial(certificate)
        if serial != self.serial:
            return False
        # byte equality first; else RFC 5280 name matching (asn1crypto normalises the strings;
        # a name it cannot normalise is not the same name)
        if issuer.dump() == self.issuer.dump():
            return True
        try:
            return bool(issuer == self.issuer)
        except PARSER_FAILURES:
            return False

    def __hash__(self) -> int:
        return hash((self.address, self.issuer.dump(), self.serial))


def _der_tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def encode_recipient_emails(entries: Sequence[RecipientEmail], *, kim_domain: bool = True) -> bytes:
    """The DER ``Attribute { 1.2.276.0.76.4.173, SET { RecipientEmail ... } }`` (digest §2.7).

    Every address is validated (digest §2.10; ``kim_domain=False`` skips only the domain suffix
    rule). The SET is sorted as DER requires, which is also the order in gematik's sample. The
    result is what goes into SignedData's signed attributes and AuthEnvelopedData's unauthAttrs
    (KOM-LE-A_2114-01, A_2127) and into the Konnektor's ``<CMSAttribute>``.
    """
    if not entries:
        raise CmsError(_FIELD, "needs at least one RecipientEmail (SET SIZE (1..MAX))")
    encoded: list[bytes] = []
    for i, entry in enumerate(entries):
        field = f"{_FIELD}[{i}].emailAddress"
        validate_kim_address(entry.address, field=field, kim_domain=kim_domain)
        rid = asn1crypto.cms.IssuerAndSerialNumber(
            {"issuer": entry.issuer, "serial_number": entry.serial}
        )
        body = asn1crypto.core.IA5String(entry.address).dump() + rid.dump()
        encoded.append(_der_tlv(0x30, body))
    values = _der_tlv(0x31, b"".join(sorted(encoded)))
    oid = asn1crypto.core.ObjectIdentifier(ID_RECIPIENT_EMAILS).dump()
    return _der_tlv(0x30, oid + values)


def decode_recipient_emails(attribute_der: bytes) -> list[RecipientEmail]:
    """Parse a DER ``recipient-emails`` Attribute; any deviation is a :class:`CmsFormatError`.

    Entries come back in encoding order. Addresses must be syntactically valid but are not
    required to be in a KIM domain (that is policy for the caller, e.g. the A_2127 compare).
    A message's attribute is decoded up to four times (signing, key choice, verification, the
    A_2127 compare), so the entries of recently seen encodings are remembered (issue 7); the
    entries are frozen and shared, the list is new for every call.
    """
    return list(_decode(bytes(attribute_der)))


@functools.lru_cache(maxsize=256)
def _decode(attribute_der: bytes) -> tuple[RecipientEmail, ...]:
    try:
        attribute = _AttributeAsn1.load(attribute_der, strict=True)
        oid = attribute["type"].dotted
        values = attribute["values"]
        count = len(values)
    except PARSER_FAILURES as exc:
        raise CmsFormatError(_FIELD, f"not a DER Attribute: {exc}") from exc
    if oid != ID_RECIPIENT_EMAILS:
        raise CmsFormatError(f"{_FIELD}.attrType", f"is {oid}, expected {ID_RECIPIENT_EMAILS}")
    if count == 0:
        raise CmsFormatError(f"{_FIELD}.attrValues", "is empty (SET SIZE (1..MAX))")
    result: list[RecipientEmail] = []
    for i in range(count):
        field = f"{_FIELD}[{i}]"
        try:
            entry = values[i]
            address = entry["email_address"].native
            rid = entry["rid"]
            if rid.name != "issuer_and_serial_number":
                raise CmsFormatError(
                    f"{field}.rid", "must be issuerAndSerialNumber (KOM-LE-A_2117)"
                )
            ias = rid.chosen
            issuer = ias["issuer"]
            read_name(issuer)  # bad contents fail here, not in a later comparison
            serial = int(ias["serial_number"].native)
        except CmsFormatError:
            raise
        except PARSER_FAILURES as exc:
            raise CmsFormatError(field, f"malformed RecipientEmail: {exc}") from exc
        if not isinstance(address, str):
            raise CmsFormatError(f"{field}.emailAddress", "missing")
        try:
            validate_kim_address(address, field=f"{field}.emailAddress", kim_domain=False)
        except CmsError as exc:
            raise CmsFormatError(exc.field, exc.reason) from exc
        result.append(RecipientEmail(address, issuer, serial))
    return tuple(result)
