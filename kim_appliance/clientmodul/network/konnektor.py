"""The Clientmodul's Konnektor port over SOAP: a practice's Konnektor, a simulator, or this
appliance's own, reached through its ``connector.sds`` (digest §1.8).

The first call fetches the service directory and caches it; a call that finds the Konnektor
unreachable fetches it again and tries once more (KOM-LE-A_2076); of each service the version
this Clientmodul speaks is used (KOM-LE-A_2077). Every operation is one SOAP request of
:mod:`.konnektor_messages`; what the port asks for maps onto the operations the way gematik's
Clientmodul specification prescribes:

* find the cards: EventService GetCards (the Telematik-ID is read from the cards' certificates
  by the Clientmodul, GetCards does not report it);
* sign a KIM message: CardService GetPinStatus (PIN.SMC must be VERIFIED: 4085 before anything
  is sent otherwise, as the in-process Konnektor fails early), SignatureService GetJobNumber
  and SignDocument of the whole rfc822-wrapped inner mail (KOM-LE-A_2190);
* decrypt a KIM message: EncryptionService DecryptDocument of the whole AuthEnvelopedData with
  PrivateKeyOnCard ``C.ENC`` and the key types of the account's certificates;
* check a certificate: CertificateService VerifyCertificate (INVALID raises PathValidationError
  with the reason the Konnektor names; VALID and INCONCLUSIVE pass, as a path whose revocation
  could not be checked passes the in-process trust store);
* read a certificate: ReadCardCertificate; the AUT signature: ExternalAuthenticate.

Documents go to the Konnektor whole: at most :data:`MAX_DOCUMENT_SIZE` per operation (just
under 25 MiB, digest §1.8; larger mails go through the KAS). The gematik error codes come back
as :class:`~kim_appliance.clientmodul.ports.KonnektorFault` with the same code as from the
in-process Konnektor, so the Clientmodul's answers (451, error mails 01/03, ...) are the same.

Threads: the port's methods block and must be called from a thread trio started
(``trio.to_thread.run_sync``, as the Clientmodul's pipelines run); the XML is built and parsed
there, and only the bytes go to the event loop (``trio.from_thread.run``), so a 25 MiB document
never stalls the loop. This module must never decide a Konnektor result itself.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree

from kim_appliance.clientmodul.network import konnektor_messages as messages
from kim_appliance.clientmodul.network.https import KonnektorHttps
from kim_appliance.clientmodul.network.konnektor_messages import Operation
from kim_appliance.clientmodul.network.sds import ServiceDirectory, parse_service_directory
from kim_appliance.clientmodul.ports import (
    ACCESS_CONDITIONS_NOT_MET,
    SYNTAX_ERROR,
    CallContext,
    Card,
    CardType,
    KonnektorFault,
    KonnektorUnreachable,
)
from kim_appliance.cms.errors import CmsFormatError, NoMatchingRecipientError
from kim_appliance.pki import CertProfile, PathValidationError, Purpose, profile_of
from kim_appliance.pki.validate import REASONS

#: "just under 25 MiB per operation" (Krypt-2.23 prose, digest §1.8), as the Konnektor counts
MAX_DOCUMENT_SIZE: Final = 25 * 1024 * 1024 - 1024
#: KONNEKTOR_TIMEOUT of Tab_Konf_Param (digest §1.9)
KONNEKTOR_TIMEOUT: Final = 60.0
PIN_SMC: Final = "PIN.SMC"
_SOAP_CONTENT_TYPE: Final = "text/xml; charset=utf-8"
#: VerifyCertificate's CheckCertificateDetail names -> the reasons of PathValidationError
_REASONS: Final = {
    "CERT_REVOKED": "revoked",
    "CERT_REVOKED_AFTER": "revoked",
    "CERT_EXPIRED": "expired",
    "BUILD_CHAIN_FAILED": "untrusted-issuer",
    "TSL_OUT_OF_DATE": "untrusted-issuer",
    "CERT_SIG_ERROR": "bad-signature",
    "POLICY_ERROR": "wrong-key-usage",
    "WRONG_ROLE": "wrong-profile",
    "QC_STATEMENT_ERROR": "wrong-profile",
    "CERT_BAD_FORMAT": "malformed",
    "UNKNOWN_CRITICAL_EXTENSIONS": "malformed",
}


@dataclass(frozen=True)
class KonnektorSettings:
    """How the Clientmodul reaches its Konnektor (``[clientmodul]`` in config.toml)."""

    #: ``https://HOST:PORT/connector.sds``
    sds_url: str
    #: verifies the Konnektor's certificate (and presents the client certificate, if any)
    ssl_context: ssl.SSLContext
    #: the context holds a client certificate (TLS_AUTH_KONNEKTOR certificate, KOM-LE-A_2071)
    client_certificate: bool = False
    #: HTTP Basic user and password (KOM-LE-A_2072), instead of or besides the certificate
    basic_auth: tuple[str, str] | None = None
    timeout: float = KONNEKTOR_TIMEOUT


class SoapKonnektor:
    """:class:`~kim_appliance.clientmodul.ports.KonnektorPort` over SOAP (module docstring)."""

    def __init__(self, settings: KonnektorSettings) -> None:
        self.settings = settings
        self._https = KonnektorHttps(
            settings.ssl_context, timeout=settings.timeout, basic_auth=settings.basic_auth
        )
        self._directory: ServiceDirectory | None = None
        self._directory_lock = trio.Lock()
        #: SOAP operations sent, by name (tests and the bench look at them)
        self.calls: Counter[str] = Counter()
        #: how often connector.sds was asked for (also when the Konnektor did not answer)
        self.directory_fetches = 0

    @property
    def connections_opened(self) -> int:
        return self._https.connections_opened

    async def aclose(self) -> None:
        await self._https.aclose()

    # --- the event loop's part: bytes over HTTPS -----------------------------------------------

    async def service_directory(self, *, refresh: bool = False) -> ServiceDirectory:
        """connector.sds, fetched once and again after a connection error (KOM-LE-A_2076)."""
        async with self._directory_lock:
            if self._directory is None or refresh:
                url = self.settings.sds_url
                self.directory_fetches += 1
                answer = await self._https.request("GET", url)
                if answer.status != 200:
                    raise KonnektorUnreachable(f"{url}: HTTP {answer.status}")
                directory = parse_service_directory(answer.body, url)
                if directory.client_auth_mandatory and not self.settings.client_certificate:
                    raise KonnektorUnreachable(
                        f"the Konnektor ({url}) requires a client certificate "
                        "(ClientAutMandatory); set [clientmodul] konnektor_client_cert and "
                        "konnektor_client_key"
                    )
                self._directory = directory
            return self._directory

    async def post(
        self, operation: Operation, body: list[bytes | messages.Base64Pieces]
    ) -> list[bytes]:
        """POST one SOAP request to the operation's endpoint; the answer's body (a response
        or a SOAP Fault). A connection error fetches connector.sds again and tries once more
        (KOM-LE-A_2076); then KonnektorUnreachable."""
        for attempt in (0, 1):
            directory = await self.service_directory(refresh=attempt == 1)
            url = directory.endpoint(operation.service, operation.wsdl_namespace)
            headers = [
                ("Content-Type", _SOAP_CONTENT_TYPE),
                ("SOAPAction", f'"{operation.soap_action}"'),
            ]
            try:
                answer = await self._https.request("POST", url, body=body, headers=headers)
            except KonnektorUnreachable:
                if attempt == 0:
                    continue
                raise
            if answer.status in (200, 500) and "xml" in answer.content_type.lower():
                return answer.chunks
            raise KonnektorUnreachable(_http_problem(url, answer.status))
        raise AssertionError("unreachable")  # pragma: no cover

    # --- the worker thread's part: XML ----------------------------------------------------------

    def _call(
        self,
        operation: Operation,
        request: etree._Element,
        *,
        document: bytes | bytearray | None = None,
        binary: tuple[str, ...] = (),
    ) -> messages.Response:
        """Send ``request`` (with ``document`` in its placeholder) and return the response
        (faults raised; ``binary``: see :func:`~.konnektor_messages.read_response`). Blocking."""
        name = etree.QName(request).localname
        self.calls[name] += 1
        body = messages.envelope(request, document)
        # RuntimeError when not called from a thread trio started (see the module docstring)
        answer = trio.from_thread.run(self.post, operation, body)
        del body
        expected = f"{{{etree.QName(request).namespace}}}{name}Response"
        return messages.read_response(answer, expected, binary=binary)

    # --- the port --------------------------------------------------------------------------

    def get_cards(self, context: CallContext, card_type: CardType | None = None) -> list[Card]:
        response = self._call(messages.GET_CARDS, messages.get_cards(context, card_type))
        return messages.cards(response.element)

    def read_card_certificate(
        self, context: CallContext, card_handle: str, purpose: str, crypt: str
    ) -> x509.Certificate:
        request = messages.read_card_certificate(context, card_handle, _cert_ref(purpose), crypt)
        return messages.certificate(self._call(messages.READ_CARD_CERTIFICATE, request).element)

    def signer(self, context: CallContext, card_handle: str, crypt: str) -> SoapSigner:
        request = messages.get_pin_status(context, card_handle, PIN_SMC)
        status, left = messages.pin_status(self._call(messages.GET_PIN_STATUS, request).element)
        if status != "VERIFIED":
            raise KonnektorFault(
                ACCESS_CONDITIONS_NOT_MET,
                "Zugriffsbedingungen nicht erfüllt",
                f"{PIN_SMC} of card {card_handle} is {status} ({left} tries left): the SMC-B "
                "must be unlocked at the card terminal before it signs",
            )
        return SoapSigner(self, context, card_handle, crypt)

    def decryption(
        self, context: CallContext, card_handle: str, certificates: Sequence[x509.Certificate]
    ) -> SoapDecryptor:
        return SoapDecryptor(self, context, card_handle, _crypt_of(certificates))

    def certificate_validator(self, context: CallContext) -> SoapCertificateCheck:
        return SoapCertificateCheck(self, context)

    def supports_ecc(self) -> bool:
        """A_17464 from connector.sds (the cached copy, fetched when there is none yet)."""
        directory = self._directory or trio.from_thread.run(self.service_directory)
        return directory.supports_ecc

    def verify_certificate(
        self, context: CallContext, certificate: x509.Certificate, at: dt.datetime | None = None
    ) -> messages.CertificateStatus:
        request = messages.verify_certificate(context, certificate, at)
        return messages.certificate_status(self._call(messages.VERIFY_CERTIFICATE, request).element)

    def external_authenticate(
        self, context: CallContext, card_handle: str, digest: bytes, scheme: str
    ) -> bytes:
        request = messages.external_authenticate(context, card_handle, digest, scheme)
        return messages.auth_signature(self._call(messages.EXTERNAL_AUTHENTICATE, request).element)

    def sign_document(
        self,
        context: CallContext,
        card_handle: str,
        crypt: str,
        document: bytes,
        recipient_emails: bytes,
    ) -> bytes:
        """GetJobNumber, then SignDocument of ``document`` (KOM-LE-A_2190)."""
        _check_size(document, "SignDocument")
        job = messages.job_number(
            self._call(messages.GET_JOB_NUMBER, messages.get_job_number(context)).element
        )
        request = messages.sign_document(context, card_handle, crypt, job, recipient_emails)
        response = self._call(
            messages.SIGN_DOCUMENT, request, document=document, binary=messages.SIGNATURE_BINARY
        )
        return messages.signature(response)

    def decrypt_document(
        self, context: CallContext, card_handle: str, crypt: str, document: bytes | bytearray
    ) -> bytes:
        _check_size(document, "DecryptDocument")
        request = messages.decrypt_document(context, card_handle, crypt)
        response = self._call(
            messages.DECRYPT_DOCUMENT, request, document=document, binary=messages.DOCUMENT_BINARY
        )
        return messages.document(response)


class SoapSigner:
    """SignDocument for one card (a :class:`~kim_appliance.mail.seal.DocumentSigner`)."""

    def __init__(
        self, konnektor: SoapKonnektor, context: CallContext, card_handle: str, crypt: str
    ) -> None:
        self.konnektor = konnektor
        self.context = context
        self.card_handle = card_handle
        self.crypt = crypt

    def sign_document(self, econtent: bytes, recipient_emails: bytes) -> bytes:
        return self.konnektor.sign_document(
            self.context, self.card_handle, self.crypt, econtent, recipient_emails
        )


class SoapDecryptor:
    """DecryptDocument for one card (a :class:`~kim_appliance.mail.unseal.DocumentDecryptor`).

    The Konnektor's refusals map onto the decryption results of in-process keys: a malformed
    document or a tag that does not verify (4000) is a CMS format error (02), a card with no
    key for any recipient (4058) no matching recipient (01); other faults propagate."""

    max_document_size = MAX_DOCUMENT_SIZE

    def __init__(
        self, konnektor: SoapKonnektor, context: CallContext, card_handle: str, crypt: str
    ) -> None:
        self.konnektor = konnektor
        self.context = context
        self.card_handle = card_handle
        self.crypt = crypt

    def decrypt_document(self, auth_enveloped_data: bytes | bytearray) -> bytes:
        try:
            return self.konnektor.decrypt_document(
                self.context, self.card_handle, self.crypt, auth_enveloped_data
            )
        except KonnektorFault as exc:
            if exc.code == SYNTAX_ERROR:
                raise CmsFormatError("AuthEnvelopedData", f"the Konnektor: {exc}") from exc
            if exc.code == 4058:
                raise NoMatchingRecipientError(
                    "AuthEnvelopedData", f"the Konnektor: {exc}"
                ) from exc
            raise


class SoapCertificateCheck:
    """VerifyCertificate as a :class:`~kim_appliance.pki.validate.CertificateValidator`.

    The profile (C.HCI.OSIG for a signer, C.HCI.ENC/C.HP.ENC for encryption) is checked here,
    from the certificate itself; the path, validity and revocation by the Konnektor, which
    derives the key usage from the profile."""

    def __init__(self, konnektor: SoapKonnektor, context: CallContext) -> None:
        self.konnektor = konnektor
        self.context = context

    def validate(
        self,
        certificate: x509.Certificate,
        *,
        purpose: Purpose,
        profile: CertProfile | None = None,
        at: dt.datetime | None = None,
    ) -> messages.CertificateStatus:
        if profile is not None and profile_of(certificate) is not profile:
            found = profile_of(certificate)
            kind = found.value if found else "no gematik certificate type"
            raise PathValidationError(
                "wrong-profile", certificate, f"is {kind}, not {profile.value}"
            )
        status = self.konnektor.verify_certificate(self.context, certificate, at)
        if status.result == "INVALID":
            reason = _REASONS.get(status.reason, "untrusted-issuer")
            assert reason in REASONS
            detail = status.detail or status.reason or "is INVALID"
            raise PathValidationError(
                reason, certificate, f"failed the Konnektor's VerifyCertificate: {detail}"
            )
        return status


def _cert_ref(purpose: str) -> str:
    """CertRefEnum (C.AUT, C.ENC, C.SIG, C.QES) for a purpose given as ``C.ENC`` or ``ENC``."""
    return purpose if purpose.startswith("C.") else f"C.{purpose}"


def _crypt_of(certificates: Sequence[x509.Certificate]) -> str:
    """PrivateKeyOnCard ``Crypt`` for the keys of ``certificates``: RSA, ECC or RSA_ECC."""
    kinds = set()
    for certificate in certificates:
        key = certificate.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            kinds.add("RSA")
        elif isinstance(key, ec.EllipticCurvePublicKey):
            kinds.add("ECC")
    if kinds == {"RSA"}:
        return "RSA"
    if kinds == {"ECC"}:
        return "ECC"
    return "RSA_ECC"


def _check_size(document: bytes | bytearray, operation: str) -> None:
    if len(document) > MAX_DOCUMENT_SIZE:
        raise KonnektorFault(
            SYNTAX_ERROR,
            "Syntaxfehler",
            f"{operation}: the document has {len(document)} bytes, the Konnektor takes at most "
            f"{MAX_DOCUMENT_SIZE} per operation (digest §1.8; larger mails go through the KAS)",
        )


def _http_problem(url: str, status: int) -> str:
    hints = {
        401: "the Konnektor refused the client authentication: check [clientmodul] "
        "konnektor_user/konnektor_password or the client certificate",
        403: "the Konnektor refused this client (its client-system configuration)",
        404: "no such endpoint: is connector.sds current?",
        413: "the request is larger than the Konnektor takes",
        503: "the Konnektor is busy",
    }
    return f"{url}: HTTP {status}" + (f" ({hints[status]})" if status in hints else "")
