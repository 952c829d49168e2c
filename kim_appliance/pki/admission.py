"""The Admission extension (1.3.36.8.3.3, ISIS-MTT / Common PKI) that carries the Telematik-ID.

gematik certificates of cards and services state who the holder is here: the Telematik-ID as
``registrationNumber`` and the institution, profession or technical role as professionOIDs with
their texts (digest §2.9). This module encodes and decodes that syntax with asn1crypto; it must
never decide whether a certificate is trusted.

```asn1
AdmissionSyntax ::= SEQUENCE { admissionAuthority GeneralName OPTIONAL,
                               contentsOfAdmissions SEQUENCE OF Admissions }
Admissions ::= SEQUENCE { admissionAuthority [0] EXPLICIT GeneralName OPTIONAL,
                          namingAuthority [1] EXPLICIT NamingAuthority OPTIONAL,
                          professionInfos SEQUENCE OF ProfessionInfo }
ProfessionInfo ::= SEQUENCE { namingAuthority [0] EXPLICIT NamingAuthority OPTIONAL,
                              professionItems SEQUENCE OF DirectoryString,
                              professionOIDs SEQUENCE OF OBJECT IDENTIFIER OPTIONAL,
                              registrationNumber PrintableString OPTIONAL,
                              addProfessionInfo OCTET STRING OPTIONAL }
```
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from asn1crypto import core
from asn1crypto import x509 as asn1_x509
from cryptography import x509

from kim_appliance.pki.oids import OID_ADMISSION

ADMISSION_OID = x509.ObjectIdentifier(OID_ADMISSION)

# X.680 PrintableString alphabet; Telematik-IDs must fit into it (registrationNumber).
_PRINTABLE = re.compile(r"^[A-Za-z0-9 '()+,\-./:=?]*$")


class NamingAuthority(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012 - asn1crypto's class-level schema
        ("naming_authority_id", core.ObjectIdentifier, {"optional": True}),
        ("naming_authority_url", core.IA5String, {"optional": True}),
        ("naming_authority_text", asn1_x509.DirectoryString, {"optional": True}),
    ]


class ProfessionItems(core.SequenceOf):  # type: ignore[misc]
    _child_spec = asn1_x509.DirectoryString


class ProfessionOids(core.SequenceOf):  # type: ignore[misc]
    _child_spec = core.ObjectIdentifier


class ProfessionInfo(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("naming_authority", NamingAuthority, {"explicit": 0, "optional": True}),
        ("profession_items", ProfessionItems),
        ("profession_oids", ProfessionOids, {"optional": True}),
        ("registration_number", core.PrintableString, {"optional": True}),
        ("add_profession_info", core.OctetString, {"optional": True}),
    ]


class ProfessionInfos(core.SequenceOf):  # type: ignore[misc]
    _child_spec = ProfessionInfo


class Admissions(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("admission_authority", asn1_x509.GeneralName, {"explicit": 0, "optional": True}),
        ("naming_authority", NamingAuthority, {"explicit": 1, "optional": True}),
        ("profession_infos", ProfessionInfos),
    ]


class ContentsOfAdmissions(core.SequenceOf):  # type: ignore[misc]
    _child_spec = Admissions


class AdmissionSyntax(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("admission_authority", asn1_x509.GeneralName, {"optional": True}),
        ("contents_of_admissions", ContentsOfAdmissions),
    ]


@dataclass(frozen=True)
class Admission:
    """What the Admission extension says about the holder (digest §2.9).

    ``telematik_id`` is the ``registrationNumber`` of the first ProfessionInfo that has one
    (e.g. ``3-SMC-B-Testkarte-883110000096954``); ``profession_oids`` and ``profession_texts``
    collect every professionOID and professionItem in order (institution, profession or
    technical role).
    """

    telematik_id: str | None
    profession_oids: tuple[str, ...]
    profession_texts: tuple[str, ...]

    def to_der(self) -> bytes:
        """DER of the AdmissionSyntax: one Admissions holding one ProfessionInfo, the layout of
        gematik's SMC-B test certificates (no admissionAuthority, UTF8String items)."""
        info: dict[str, Any] = {
            "profession_items": [
                asn1_x509.DirectoryString(name="utf8_string", value=text)
                for text in self.profession_texts
            ],
        }
        if self.profession_oids:
            info["profession_oids"] = list(self.profession_oids)
        if self.telematik_id is not None:
            if not self.telematik_id or not _PRINTABLE.match(self.telematik_id):
                raise ValueError(
                    f"Admission.registrationNumber: Telematik-ID {self.telematik_id!r} is empty "
                    "or has characters outside PrintableString"
                )
            info["registration_number"] = self.telematik_id
        syntax = AdmissionSyntax(
            {"contents_of_admissions": [{"profession_infos": [ProfessionInfo(info)]}]}
        )
        der: bytes = syntax.dump(force=True)
        return der

    def to_extension(self) -> x509.UnrecognizedExtension:
        """The extension value for ``CertificateBuilder.add_extension(..., critical=False)``."""
        return x509.UnrecognizedExtension(ADMISSION_OID, self.to_der())

    @classmethod
    def from_der(cls, der: bytes) -> Admission:
        """Decode an AdmissionSyntax; raises ``ValueError`` naming the field that is broken."""
        try:
            syntax = AdmissionSyntax.load(der, strict=True)
            telematik_id: str | None = None
            oids: list[str] = []
            texts: list[str] = []
            for admissions in syntax["contents_of_admissions"]:
                for info in admissions["profession_infos"]:
                    texts.extend(str(item.native) for item in info["profession_items"])
                    if info["profession_oids"].native is not None:
                        oids.extend(oid.dotted for oid in info["profession_oids"])
                    number = info["registration_number"].native
                    if telematik_id is None and number is not None:
                        telematik_id = str(number)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"Admission extension (1.3.36.8.3.3) is malformed: {exc}") from exc
        return cls(telematik_id, tuple(oids), tuple(texts))


@functools.lru_cache(maxsize=512)
def admission_of(certificate: x509.Certificate) -> Admission | None:
    """The decoded Admission extension of ``certificate``, or ``None`` if it has none.

    Remembered per certificate (keyed by its DER; the answer is frozen): the Clientmodul asks
    for every recipient of every message (issue 7)."""
    try:
        ext = certificate.extensions.get_extension_for_oid(ADMISSION_OID)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    # cryptography >= 44 parses the extension itself (x509.Admissions); older ones leave it
    # unrecognised. Either way the DER is decoded here, so both give the same answer.
    der = value.value if isinstance(value, x509.UnrecognizedExtension) else value.public_bytes()
    return Admission.from_der(der)
