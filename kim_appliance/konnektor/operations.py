"""The Konnektor facade: the card operations of digest §1.8, in-process, one method per SOAP
operation.

Each method of :class:`Konnektor` corresponds to one operation of gematik's WSDLs (EventService
GetCards; CardService GetPinStatus, VerifyPin, ChangePin, UnblockPin; CertificateService
ReadCardCertificate, VerifyCertificate; SignatureService SignDocument, VerifyDocument;
EncryptionService EncryptDocument, DecryptDocument; AuthSignatureService ExternalAuthenticate)
and takes the same parameters, so a SOAP handler only translates XML. Every call first passes
the fault layer ("unreachable") and the Infomodell check of its context, then finds the card
by handle (4008 when it is not inserted or not visible to the context).

The Clientmodul does not send 25 MB through ``sign_document``/``decrypt_document``: it asks for
the card's keys (:meth:`Konnektor.signing_key`, :meth:`Konnektor.decryption_keys`) and streams
the message through :mod:`kim_appliance.mail.seal`/``unseal`` itself, so the card only signs a
hash and unwraps a content key (issue 4, item 2). The document operations enforce the
Konnektor's limit of just under 25 MiB (digest §1.8).

All methods are blocking (a slow card sleeps); call them from trio with
``trio.to_thread.run_sync``. This module must never hand out a private key, and never accept a
call whose context the Infomodell refuses.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import asn1crypto.cms
from cryptography import x509

from kim_appliance.cms.enveloped import (
    AuthEnvelopedReader,
    AuthEnvelopedWriter,
    EncryptionRecipient,
    find_recipient,
)
from kim_appliance.cms.errors import (
    CmsError,
    CmsFormatError,
    DecryptionError,
    NoMatchingRecipientError,
    SignatureError,
)
from kim_appliance.cms.generic import CadesSignedDataWriter, CmsSignatureReport, ParsedSignedData
from kim_appliance.cms.oids import ID_SIGNED_DATA
from kim_appliance.cms.recipient_emails import decode_recipient_emails
from kim_appliance.cms.signed import SignatureReport, SignedDataWriter, read_signed_data
from kim_appliance.konnektor import errors
from kim_appliance.konnektor.cards import (
    Card,
    CardInfo,
    CardKey,
    CardSet,
    CardType,
    Crypt,
    KeyPurpose,
    PinResult,
    PinStatus,
    parse_crypt,
    parse_purpose,
)
from kim_appliance.konnektor.errors import (
    CardError,
    DecryptionFailedError,
    DocumentFormatError,
    KeyNotAvailableError,
    KonnektorUnreachableError,
    ParameterError,
)
from kim_appliance.konnektor.faults import FaultAdmin, FaultState
from kim_appliance.konnektor.infomodell import Context, Infomodell, KonnektorConfig, load
from kim_appliance.pki import (
    CertProfile,
    PathValidationError,
    Purpose,
    TestPki,
    TrustStore,
    admission_of,
    profile_of,
)

#: "just under 25 MiB per operation" (Krypt-2.23 prose, digest §1.8)
MAX_DOCUMENT_SIZE: Final = 25 * 1024 * 1024 - 1024
#: ``Crypt`` of SignDocument: RSA, ECC, or RSA_ECC (ECC when the card has it, digest §2.8)
RSA_ECC: Final = "RSA_ECC"


class HighLevelResult(enum.StrEnum):
    """VerificationResult/HighLevelResult of VerifyDocument and VerifyCertificate."""

    VALID = "VALID"
    INCONCLUSIVE = "INCONCLUSIVE"
    INVALID = "INVALID"


@dataclass(frozen=True)
class PinStatusResult:
    """GetPinStatusResponse: PinStatus and LeftTries."""

    status: PinStatus
    left_tries: int


@dataclass(frozen=True)
class PinResponse:
    """PinResponseType: PinResult and LeftTries."""

    result: PinResult
    left_tries: int


#: X-KIM-IntegrityCheckResult per VerifyDocument outcome (Tab_Verm_Sig_Prüf, digest §1.6)
_INTEGRITY_IDS: Final[dict[int | None, str]] = {
    None: "01",
    errors.SIGNATURE_CONTENT_MANIPULATED: "02",
    errors.NO_SIGNATURE: "03",
    errors.WRONG_SIGNATURE_FORMAT: "04",
    errors.CERTIFICATE_PATH_NOT_VALIDATABLE: "05",
    errors.CERTIFICATE_STATUS_UNKNOWN: "07",
}


@dataclass(frozen=True)
class DocumentVerification:
    """VerifyDocument's answer: the high-level result, the code of Tab_Verm_Sig_Prüf (None
    when VALID), what was wrong, and what could be read."""

    result: HighLevelResult
    code: int | None
    detail: str = ""
    content: bytes | None = field(default=None, repr=False)
    #: SignatureReport for a KIM signature, CmsSignatureReport for a generic one
    report: SignatureReport | CmsSignatureReport | None = field(default=None, repr=False)

    @property
    def integrity_check_result(self) -> str:
        """The X-KIM-IntegrityCheckResult ID (01..07) for this outcome (digest §1.6)."""
        return _INTEGRITY_IDS.get(self.code, "06")


@dataclass(frozen=True)
class CertificateVerification:
    """VerifyCertificate's answer: VerificationResult, the reason as the XSD names it
    (CERT_REVOKED, CERT_EXPIRED, BUILD_CHAIN_FAILED, ...; None when VALID), a detail and the
    RoleList (professionOIDs of the Admission)."""

    result: HighLevelResult
    reason: str | None
    detail: str
    roles: tuple[str, ...] = ()


_REASONS: Final = {
    "expired": "CERT_EXPIRED",
    "not-yet-valid": "CERT_EXPIRED",
    "untrusted-issuer": "BUILD_CHAIN_FAILED",
    "ca-constraint": "BUILD_CHAIN_FAILED",
    "bad-signature": "CERT_SIG_ERROR",
    "wrong-key-usage": "POLICY_ERROR",
    "wrong-profile": "POLICY_ERROR",
    "revoked": "CERT_REVOKED",
    "malformed": "CERT_BAD_FORMAT",
}
_PURPOSES: Final = {
    CertProfile.C_HCI_ENC: Purpose.ENCRYPTION,
    CertProfile.C_HP_ENC: Purpose.ENCRYPTION,
    CertProfile.C_HCI_OSIG: Purpose.SIGNATURE,
    CertProfile.C_HP_QES: Purpose.SIGNATURE,
    CertProfile.C_FD_TLS_S: Purpose.TLS_SERVER,
    CertProfile.C_ZD_TLS_S: Purpose.TLS_SERVER,
    CertProfile.C_FD_TLS_C: Purpose.TLS_CLIENT,
}
_ENC_PROFILES: Final = (CertProfile.C_HCI_ENC, CertProfile.C_HP_ENC)


def _revocation_unchecked(warnings: Sequence[str]) -> str | None:
    for warning in warnings:
        if "not checked" in warning:
            return warning
    return None


class Konnektor:
    """The emulated Konnektor: cards, Infomodell, trust store and the fault switches."""

    def __init__(
        self,
        config: KonnektorConfig,
        data_dir: Path,
        *,
        trust: TrustStore,
        pki: TestPki | None = None,
        pki_dir: Path | None = None,
        faults: FaultState | None = None,
    ) -> None:
        self.faults = faults or FaultState()
        self.infomodell: Infomodell = config.infomodell
        self.cards = CardSet.load(config.cards, data_dir, self.faults)
        self.trust = trust
        # the revocations the status lists are read from the CRLs this Konnektor validates
        # against, so they are the truth also after a restart (issue 15)
        self.admin = FaultAdmin(
            self.faults, self.cards, pki=pki, pki_dir=pki_dir, crls=trust.current_crls
        )

    @classmethod
    def from_data_dir(
        cls, data_dir: Path, *, persist_revocations: bool = True, pki: TestPki | None = None
    ) -> Konnektor:
        """The Konnektor of an initialised data dir: ``konnektor.json``, the test PKI in ``pki/``
        (trust anchors, CRLs, CA keys for revoking).

        Pass the process's loaded ``pki`` when other components validate against it: a
        certificate revoked through the fault switches is then seen by all of them at once."""
        config = load(data_dir)
        pki_dir = data_dir / "pki"
        if pki is not None or (pki_dir / "index.json").is_file():
            pki = pki or TestPki.load(pki_dir)
            return cls(
                config,
                data_dir,
                trust=pki.trust_store(),
                pki=pki,
                pki_dir=pki_dir if persist_revocations else None,
            )
        # no CA keys: trust the anchors the PKI left in pki/trust (kim_appliance.demo)
        trust = TrustStore.from_pem_files(sorted((pki_dir / "trust").glob("*.pem")))
        return cls(config, data_dir, trust=trust)

    # -- the common prologue ----------------------------------------------------------------

    def _enter(self, operation: str, context: Context) -> None:
        if self.faults.unreachable:
            raise KonnektorUnreachableError(operation)
        self.infomodell.check(context)

    def _card(self, operation: str, context: Context, card_handle: str) -> Card:
        self._enter(operation, context)
        visible = self.infomodell.visible_iccsns(context)
        card = self.cards.by_handle(card_handle)
        if card.iccsn not in visible:
            hint = " (an HBA needs its holder's UserId)" if card.card_type is CardType.HBA else ""
            raise CardError(
                errors.CARD_NOT_INSERTED,
                f"card handle {card_handle} is not visible to Mandant {context.mandant_id!r}, "
                f"workplace {context.workplace_id!r}{hint}",
            )
        return card

    @staticmethod
    def _document(document: bytes, field: str) -> None:
        if len(document) > MAX_DOCUMENT_SIZE:
            raise ParameterError(
                field,
                f"{len(document)} bytes exceed the Konnektor limit of {MAX_DOCUMENT_SIZE} bytes "
                "(digest §1.8; larger KIM messages go through the KAS)",
            )

    # -- EventService / CardService ---------------------------------------------------------

    def get_cards(self, context: Context, card_type: str | None = None) -> list[CardInfo]:
        """EventService GetCards: the inserted cards visible to ``context``."""
        self._enter("GetCards", context)
        wanted: CardType | None = None
        if card_type is not None:
            try:
                wanted = CardType(card_type)
            except ValueError:
                raise ParameterError("CardType", f"{card_type!r} is not SMC-B or HBA") from None
        visible = self.infomodell.visible_iccsns(context)
        return [
            card.info()
            for card in self.cards
            if card.inserted
            and card.iccsn in visible
            and (wanted is None or card.card_type is wanted)
        ]

    def get_pin_status(self, context: Context, card_handle: str, pin_type: str) -> PinStatusResult:
        """CardService GetPinStatus (PinTyp PIN.SMC or PIN.CH)."""
        pin = self._card("GetPinStatus", context, card_handle).pin(pin_type)
        return PinStatusResult(pin.status, pin.left_tries)

    def verify_pin(
        self, context: Context, card_handle: str, pin_type: str, pin: str | None = None
    ) -> PinResponse:
        """CardService VerifyPin. A real user types the PIN at the terminal; ``pin`` is what
        she types (None: the right one)."""
        result, left = self._card("VerifyPin", context, card_handle).pin(pin_type).verify(pin)
        return PinResponse(result, left)

    def change_pin(
        self, context: Context, card_handle: str, pin_type: str, old_pin: str, new_pin: str
    ) -> PinResponse:
        """CardService ChangePin: also how a card leaves the TRANSPORT_PIN state."""
        card = self._card("ChangePin", context, card_handle)
        result, left = card.pin(pin_type).change(old_pin, new_pin)
        return PinResponse(result, left)

    def unblock_pin(
        self,
        context: Context,
        card_handle: str,
        pin_type: str,
        puk: str,
        new_pin: str | None = None,
    ) -> PinResponse:
        """CardService UnblockPin with the PUK."""
        card = self._card("UnblockPin", context, card_handle)
        result, left = card.pin(pin_type).unblock(puk, new_pin)
        return PinResponse(result, left)

    # -- CertificateService -------------------------------------------------------------------

    def read_card_certificate(
        self, context: Context, card_handle: str, purpose: str, crypt: str = "RSA"
    ) -> x509.Certificate:
        """CertificateService ReadCardCertificate for one CertRef (C.ENC, C.SIG, C.AUT, C.QES,
        or ENC/OSIG/AUT/QES). Certificates are public: no PIN needed."""
        card = self._card("ReadCardCertificate", context, card_handle)
        return card.certificate(parse_purpose(purpose), parse_crypt(crypt))

    def verify_certificate(
        self, context: Context, certificate: x509.Certificate, at: dt.datetime | None = None
    ) -> CertificateVerification:
        """CertificateService VerifyCertificate: path to the TI trust anchors, validity,
        revocation (CRL of the test PKI), key usage for what the certificate's profile is for.
        INCONCLUSIVE with NO_REVOCATION_CHECK when a CRL is missing."""
        self._enter("VerifyCertificate", context)
        profile = profile_of(certificate)
        purpose = _PURPOSES.get(profile) if profile else None
        if purpose is None:
            purpose = _purpose_from_key_usage(certificate)
        admission = admission_of(certificate)
        roles = admission.profession_oids if admission else ()
        try:
            path = self.trust.validate(certificate, purpose=purpose, at=at)
        except PathValidationError as exc:
            reason = _REASONS.get(exc.reason, "CERT_BAD_FORMAT")
            if exc.reason == "malformed" and "critical extension" in str(exc):
                reason = "UNKNOWN_CRITICAL_EXTENSIONS"
            return CertificateVerification(HighLevelResult.INVALID, reason, str(exc), roles)
        unchecked = _revocation_unchecked(path.warnings)
        if unchecked:
            return CertificateVerification(
                HighLevelResult.INCONCLUSIVE, "NO_REVOCATION_CHECK", unchecked, roles
            )
        return CertificateVerification(HighLevelResult.VALID, None, "", roles)

    # -- SignatureService -----------------------------------------------------------------------

    def signing_key(self, context: Context, card_handle: str, crypt: str = RSA_ECC) -> CardKey:
        """The SMC-B's C.HCI.OSIG key for streaming signatures (KOM-LE-A_2129: never an HBA).

        ``crypt`` RSA, ECC, or RSA_ECC (the ECC key when the card has one, digest §2.8). Fails
        early with 4085 when the SMC-B is not unlocked.
        """
        card = self._card("SignDocument", context, card_handle)
        if card.card_type is not CardType.SMC_B:
            raise CardError(
                errors.CALL_NOT_ALLOWED,
                f"card {card.iccsn} is an {card.card_type}: KIM messages are signed with the "
                "SMC-B's C.HCI.OSIG (KOM-LE-A_2129)",
            )
        if crypt == RSA_ECC:
            available = card.algorithms(KeyPurpose.OSIG)
            chosen = Crypt.ECC if Crypt.ECC in available else Crypt.RSA
        else:
            chosen = parse_crypt(crypt)
        key = card.key(KeyPurpose.OSIG, chosen, card_handle)
        card.check_access(KeyPurpose.OSIG)
        return key

    def document_signing_key(
        self, context: Context, card_handle: str, crypt: str = RSA_ECC
    ) -> CardKey:
        """The key SignDocument uses for a document outside KIM (TUC_KON_160, TIP1-A_4653):
        an SMC-B's C.HCI.OSIG (nonQES), an HBA's C.HP.QES.

        ``crypt`` as for :meth:`signing_key`. The HBA's QES key needs PIN.QES, which the
        cards module does not emulate: it refuses with 4058 and says so.
        """
        card = self._card("SignDocument", context, card_handle)
        purpose = KeyPurpose.OSIG if card.card_type is CardType.SMC_B else KeyPurpose.QES
        if crypt == RSA_ECC:
            chosen = Crypt.ECC if Crypt.ECC in card.algorithms(purpose) else Crypt.RSA
        else:
            chosen = parse_crypt(crypt)
        key = card.key(purpose, chosen, card_handle)
        card.check_access(purpose)
        return key

    def sign_document(
        self,
        context: Context,
        card_handle: str,
        document: bytes,
        recipient_emails: bytes | None,
        crypt: str = RSA_ECC,
        *,
        include_content: bool = True,
        signing_time: dt.datetime | None = None,
    ) -> bytes:
        """SignatureService SignDocument: a DER CMS SignedData of ``document``.

        With ``recipient_emails`` (the DER Attribute a KIM request carries base64-encoded in
        ``CMSAttribute``) it is a KIM signature (KOM-LE-A_2190): the SMC-B's C.HCI.OSIG, the
        eContent included, the recipient-emails signed attribute (digest §2.5, §2.7).

        Without, it is the generic CAdES-BES signature a Konnektor makes for any document
        (eAU, prescriptions, PDFs; TUC_KON_160): contentType, signingTime, messageDigest and
        signingCertificateV2 signed, enveloping or (``include_content=False``) detached, with
        the key of :meth:`document_signing_key`.
        """
        self._document(document, "Document")
        if recipient_emails is None:
            key = self.document_signing_key(context, card_handle, crypt)
            writer: CadesSignedDataWriter | SignedDataWriter = CadesSignedDataWriter(
                key,
                content_length=len(document),
                content_digest=hashlib.sha256(document).digest(),
                detached=not include_content,
                signing_time=signing_time,
            )
            content = document if include_content else b""
            return writer.prefix() + content + writer.suffix()
        if not include_content:
            raise ParameterError(
                "IncludeEContent",
                "detached signatures are not supported: KIM includes the eContent (KOM-LE-A_2190)",
            )
        key = self.signing_key(context, card_handle, crypt)
        try:
            writer = SignedDataWriter(
                key,
                content_length=len(document),
                content_digest=hashlib.sha256(document).digest(),
                recipient_emails=recipient_emails,
                signing_time=signing_time,
            )
        except CmsError as exc:
            raise ParameterError(exc.field, exc.reason) from exc
        return writer.prefix() + document + writer.suffix()

    def verify_document(
        self,
        context: Context,
        signature: bytes,
        *,
        document: bytes | None = None,
        at: dt.datetime | None = None,
    ) -> DocumentVerification:
        """SignatureService VerifyDocument (nonQES, CMS; TUC_KON_161): enveloping signatures,
        and detached ones with the signed ``document``.

        A SignedData that signs the KIM recipient-emails attribute and includes its content is
        checked against the KIM profile (digest §2.5) with the signer as C.HCI.OSIG
        (KOM-LE-A_2129); any other SignedData as the generic CAdES signature it is, with a
        signer certificate fit for signatures (nonRepudiation) under the TI trust anchors.
        Both with revocation. Codes per Tab_Verm_Sig_Prüf (digest §1.6): 4115 content
        manipulated, 4253 no signature, 4112 wrong format, 4206 path not validatable,
        INCONCLUSIVE 4264 when the certificate status is unknown.

        A detached signature without ``document`` is a ParameterError (4000): there is nothing
        to verify it against.
        """
        self._enter("VerifyDocument", context)
        if not _is_signed_data(signature):
            return DocumentVerification(
                HighLevelResult.INVALID,
                errors.NO_SIGNATURE,
                "the document is not a CMS SignedData (no signature found)",
            )
        if document is not None:
            self._document(document, "Document")
        try:
            parsed: ParsedSignedData | None = ParsedSignedData.load(signature)
        except CmsError as exc:
            if document is not None:
                return DocumentVerification(
                    HighLevelResult.INVALID, errors.WRONG_SIGNATURE_FORMAT, str(exc)
                )
            parsed = None  # the KIM reader says what is wrong, as it always did
        if parsed is None or (parsed.has_recipient_emails and not parsed.detached):
            verification = self._verify_kim(signature, at)
            if document is not None and verification.content not in (None, document):
                return DocumentVerification(
                    HighLevelResult.INVALID,
                    errors.SIGNATURE_CONTENT_MANIPULATED,
                    "the signed content differs from the document given with the signature",
                    verification.content,
                    verification.report,
                )
            return verification
        if parsed.detached and document is None:
            raise ParameterError(
                "Document",
                "the signature is detached (no eContent): send the signed document along "
                "with it (SIG:Document)",
            )
        return self._verify_generic(parsed, document, at)

    def _verify_kim(self, signature: bytes, at: dt.datetime | None) -> DocumentVerification:
        try:
            content, report = read_signed_data(signature)
        except SignatureError as exc:
            return DocumentVerification(
                HighLevelResult.INVALID, errors.SIGNATURE_CONTENT_MANIPULATED, str(exc)
            )
        except (CmsError, ValueError) as exc:
            return DocumentVerification(
                HighLevelResult.INVALID, errors.WRONG_SIGNATURE_FORMAT, str(exc)
            )
        try:
            path = self.trust.validate(
                report.signer_certificate,
                purpose=Purpose.SIGNATURE,
                profile=CertProfile.C_HCI_OSIG,
                at=at,
            )
        except PathValidationError as exc:
            return DocumentVerification(
                HighLevelResult.INVALID,
                errors.CERTIFICATE_PATH_NOT_VALIDATABLE,
                f"signer certificate: {exc}",
                content,
                report,
            )
        return self._revocation_result(path.warnings, content, report)

    def _verify_generic(
        self, parsed: ParsedSignedData, document: bytes | None, at: dt.datetime | None
    ) -> DocumentVerification:
        try:
            content, report = parsed.verify(document)
        except SignatureError as exc:
            return DocumentVerification(
                HighLevelResult.INVALID, errors.SIGNATURE_CONTENT_MANIPULATED, str(exc)
            )
        except CmsFormatError as exc:
            return DocumentVerification(
                HighLevelResult.INVALID, errors.WRONG_SIGNATURE_FORMAT, str(exc)
            )
        except CmsError as exc:  # e.g. the signer certificate is not in the SignedData
            return DocumentVerification(
                HighLevelResult.INVALID, errors.CERTIFICATE_PATH_NOT_VALIDATABLE, str(exc)
            )
        warnings: list[str] = []
        for i, signer in enumerate(report.signers):
            others = [c for c in report.certificates if c != signer.certificate]
            try:
                path = self.trust.validate(
                    signer.certificate,
                    purpose=Purpose.SIGNATURE,
                    at=at,
                    extra_intermediates=others,
                )
            except PathValidationError as exc:
                return DocumentVerification(
                    HighLevelResult.INVALID,
                    errors.CERTIFICATE_PATH_NOT_VALIDATABLE,
                    f"signer certificate of SignerInfo {i}: {exc}",
                    content,
                    report,
                )
            warnings.extend(path.warnings)
        return self._revocation_result(warnings, content, report)

    @staticmethod
    def _revocation_result(
        warnings: Sequence[str],
        content: bytes,
        report: SignatureReport | CmsSignatureReport,
    ) -> DocumentVerification:
        unchecked = _revocation_unchecked(warnings)
        if unchecked:
            return DocumentVerification(
                HighLevelResult.INCONCLUSIVE,
                errors.CERTIFICATE_STATUS_UNKNOWN,
                f"signature verifies, certificate status unknown: {unchecked}",
                content,
                report,
            )
        return DocumentVerification(HighLevelResult.VALID, None, "", content, report)

    # -- EncryptionService ---------------------------------------------------------------------

    def encrypt_document(
        self,
        context: Context,
        certificates: Sequence[x509.Certificate],
        document: bytes,
        recipient_emails: bytes | None,
    ) -> bytes:
        """EncryptionService EncryptDocument: AuthEnvelopedData (AES-256-GCM; RSA-OAEP KTRI,
        brainpoolP256r1 KARI) for every certificate in RecipientKeys. Only C.HCI.ENC and
        C.HP.ENC certificates are accepted (KOM-LE-A_2128; the TI's encryption certificates).

        With ``recipient_emails`` it is a KIM message (KOM-LE-A_2191): the attribute goes into
        unauthAttrs and must name every certificate (digest §2.6). Without, it is the hybrid
        encryption a Konnektor does for any document (TUC_KON_070, TIP1-A_4621): the same
        AuthEnvelopedData without unauthAttrs, which any CMS implementation (OpenSSL 3 too)
        reads.
        """
        self._enter("EncryptDocument", context)
        self._document(document, "Document")
        if not certificates:
            raise ParameterError("RecipientKeys", "at least one certificate is needed")
        for i, certificate in enumerate(certificates):
            profile = profile_of(certificate)
            if profile not in _ENC_PROFILES:
                kind = profile.value if profile else "no gematik certificate type"
                rule = "KIM encrypts" if recipient_emails is not None else "the Konnektor encrypts"
                raise ParameterError(
                    f"RecipientKeys.Certificate[{i}]",
                    f"is {kind}: {rule} to C.HCI.ENC or C.HP.ENC only (KOM-LE-A_2128)",
                )
        if recipient_emails is None:
            # the address of an EncryptionRecipient only names it in error messages
            recipients = [
                EncryptionRecipient(f"RecipientKeys.Certificate[{i}]", certificate)
                for i, certificate in enumerate(certificates)
            ]
        else:
            recipients = self._kim_recipients(certificates, recipient_emails)
        try:
            writer = AuthEnvelopedWriter(recipients, unauth_recipient_emails=recipient_emails)
        except CmsError as exc:
            raise ParameterError(exc.field, exc.reason) from exc
        return writer.header() + writer.update(document) + writer.finalize()

    @staticmethod
    def _kim_recipients(
        certificates: Sequence[x509.Certificate], recipient_emails: bytes
    ) -> list[EncryptionRecipient]:
        """Every certificate with its address from recipient-emails (KOM-LE-A_2115-02)."""
        try:
            entries = decode_recipient_emails(recipient_emails)
        except CmsError as exc:
            raise ParameterError(f"UnprotectedProperties.{exc.field}", exc.reason) from exc
        recipients: list[EncryptionRecipient] = []
        for i, certificate in enumerate(certificates):
            address = next((e.address for e in entries if e.matches(certificate)), None)
            if address is None:
                raise ParameterError(
                    f"RecipientKeys.Certificate[{i}]",
                    f"serial {certificate.serial_number:X} has no entry in recipient-emails "
                    "(KOM-LE-A_2115-02)",
                )
            recipients.append(EncryptionRecipient(address, certificate))
        return recipients

    def decryption_keys(self, context: Context, card_handle: str) -> list[CardKey]:
        """The card's ENC keys (RSA and/or ECC) for streaming decryption: each unwraps content
        keys on the card (checked against presence, PIN and faults at every use)."""
        card = self._card("DecryptDocument", context, card_handle)
        keys = [card.key(KeyPurpose.ENC, c, card_handle) for c in card.algorithms(KeyPurpose.ENC)]
        if not keys:
            raise CardError(errors.CALL_NOT_ALLOWED, f"card {card.iccsn} has no ENC key")
        return keys

    def decrypt_document(self, context: Context, card_handle: str, document: bytes) -> bytes:
        """EncryptionService DecryptDocument with the card's C.ENC keys (PrivateKeyOnCard):
        KIM messages and generic documents alike (an AuthEnvelopedData with or without the
        recipient-emails unauthAttrs, ours or any other sender's; TUC_KON_071)."""
        self._document(document, "Document")
        keys = self.decryption_keys(context, card_handle)
        reader = AuthEnvelopedReader()
        try:
            reader.feed(document)
            reader.feed_eof()
            infos = reader.recipient_infos
            if infos is None:  # pragma: no cover - feed_eof raises first
                raise DocumentFormatError("AuthEnvelopedData.recipientInfos: missing")
            info, key = find_recipient(infos, keys)
            reader.set_content_key(info.unwrap(key))
            plaintext = reader.finish()
        except NoMatchingRecipientError as exc:
            raise KeyNotAvailableError(str(exc)) from exc
        except DecryptionError as exc:
            raise DecryptionFailedError(str(exc)) from exc
        except (CmsError, ValueError) as exc:
            raise DocumentFormatError(str(exc)) from exc
        with plaintext:
            return plaintext.read()

    # -- AuthSignatureService --------------------------------------------------------------------

    def external_authenticate(
        self,
        context: Context,
        card_handle: str,
        digest: bytes,
        signature_scheme: str = "RSASSA-PSS",
    ) -> bytes:
        """AuthSignatureService ExternalAuthenticate: sign a SHA-256 hash (e.g. of the JWT for
        the Account Manager) with the card's AUT key: RSASSA-PSS / RSASSA-PKCS1-v1_5 with the
        RSA key, ECDSA (plain r||s) with the ECC key."""
        card = self._card("ExternalAuthenticate", context, card_handle)
        crypt = Crypt.ECC if signature_scheme == "ECDSA" else Crypt.RSA
        return card.key(KeyPurpose.AUT, crypt, card_handle).authenticate(digest, signature_scheme)


def _is_signed_data(data: bytes) -> bool:
    """True when ``data`` starts like a ContentInfo of type signedData (else: no signature)."""
    if not data:
        return False
    try:
        info = asn1crypto.cms.ContentInfo.load(data)
        return bool(info["content_type"].dotted == ID_SIGNED_DATA)
    except (ValueError, TypeError, KeyError):
        return True  # not even a ContentInfo header: a damaged signature, "wrong format"


def _purpose_from_key_usage(certificate: x509.Certificate) -> Purpose:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return Purpose.AUTHENTICATION
    if usage.digital_signature:
        return Purpose.AUTHENTICATION
    if usage.content_commitment:
        return Purpose.SIGNATURE
    return Purpose.ENCRYPTION
