"""The Clientmodul's SOAP Konnektor adapter against this appliance's Konnektor over HTTPS (real
sockets, TLS with the test PKI): discovery through connector.sds, every operation the
Clientmodul uses, and the same results and gematik codes as the in-process adapter of the same
Konnektor (digest §1.8)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from cryptography import x509
from network_support import Served, serve_soap, soap_client, tls_pair

from kim_appliance.clientmodul.network.konnektor import (
    MAX_DOCUMENT_SIZE,
    SoapDecryptor,
    SoapSigner,
)
from kim_appliance.clientmodul.ports import (
    CallContext,
    CardType,
    KonnektorFault,
    KonnektorPort,
    KonnektorUnreachable,
)
from kim_appliance.clientmodul.versions import account_manager_jwt
from kim_appliance.cms.keys import SoftwareKey
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.mail.seal import Certified, seal
from kim_appliance.mail.unseal import open_message
from kim_appliance.pki import CertProfile, PathValidationError, Purpose, TestPki
from kim_appliance.pki.jwt import verify_jwt
from kim_appliance.testing import Participant

T = TypeVar("T")
CONTEXT = CallContext("Mandant1", "PVS1", "AP1")
WEBER, KLEIN, MEYER = "praxis.weber", "zahnarzt.klein", "dr.meyer"


async def call(function: Callable[..., T], *args: Any) -> T:
    """A port method from a worker thread, as the Clientmodul's pipelines call it."""
    return await trio.to_thread.run_sync(partial(function, *args))


def people(data_dir: Path) -> dict[str, Participant]:
    import json

    demo = json.loads((data_dir / "demo.json").read_text())
    return {p["address"].split("@")[0]: Participant.from_demo(p) for p in demo["participants"]}


async def both(served: Served, method: str, *args: Any) -> tuple[Any, Any]:
    """The same port call on the SOAP and the in-process adapter."""
    ports: tuple[KonnektorPort, KonnektorPort] = (served.soap, served.local)
    soap, local = [await call(getattr(port, method), *args) for port in ports]
    return soap, local


async def test_cards_and_certificates_are_the_in_process_ones(
    served: Served, data_dir: Path
) -> None:
    """KOM-LE-A_2076, KOM-LE-A_2052, KOM-LE-A_2060: GetCards and ReadCardCertificate over SOAP
    (the endpoints from connector.sds) give the cards and certificates the in-process
    adapter gives (GetCards reports no Telematik-ID over SOAP; the Clientmodul reads it from the
    certificates). connector.sds is fetched once."""
    soap_cards, local_cards = await both(served, "get_cards", CONTEXT, CardType.SMC_B)
    assert [(c.handle, c.iccsn, c.card_type) for c in soap_cards] == [
        (c.handle, c.iccsn, c.card_type) for c in local_cards
    ]
    assert all(c.telematik_id is None for c in soap_cards)
    weber = people(data_dir)[WEBER]
    (card,) = [c for c in soap_cards if c.iccsn == weber.iccsn]
    soap_cert, local_cert = await both(served, "read_card_certificate", CONTEXT, card.handle,
                                       "C.ENC", "RSA")  # fmt: skip
    assert soap_cert == local_cert
    assert served.soap.directory_fetches == 1


async def test_a_missing_key_and_a_pulled_card_have_the_in_process_codes(
    served: Served, data_dir: Path
) -> None:
    """Digest §1.6: the gematik codes come through unchanged: 4058 for a key the card does not
    have, 4008 for a card that was pulled, 4004 for an unknown Mandant (a context refusal)."""
    klein = people(data_dir)[KLEIN]
    cards = await call(served.soap.get_cards, CONTEXT, CardType.SMC_B)
    weber_card = next(c for c in cards if c.iccsn == people(data_dir)[WEBER].iccsn)
    for port in (served.soap, served.local):
        with pytest.raises(KonnektorFault) as missing:
            # Weber's card has RSA keys only
            await call(port.read_card_certificate, CONTEXT, weber_card.handle, "C.ENC", "ECC")
        assert missing.value.code == 4058
        with pytest.raises(KonnektorFault) as refused:
            await call(port.get_cards, CallContext("MandantX", "PVS1", "AP1"))
        assert refused.value.code == 4004
        assert refused.value.context_refused
    served.konnektor.admin.remove_card(klein.iccsn)
    klein_handle = next(c.handle for c in cards if c.iccsn == klein.iccsn)
    for port in (served.soap, served.local):
        with pytest.raises(KonnektorFault) as pulled:
            await call(port.read_card_certificate, CONTEXT, klein_handle, "C.ENC", "RSA")
        assert pulled.value.code == 4008


async def test_sign_document_makes_the_kim_signature(served: Served, data_dir: Path) -> None:
    """KOM-LE-A_2190, KOM-LE-A_2177, KOM-LE-A_2020 (digest §1.8): the whole inner mail goes to
    SignDocument (GetPinStatus and
    GetJobNumber before it); the KIM message sealed with it opens with the recipient's key and
    verifies, signed with the SMC-B's ECC C.HCI.OSIG (RSA_ECC picks ECC where the card has it)."""
    p = people(data_dir)
    sender, recipient = p[KLEIN], p[WEBER]
    cards = await call(served.soap.get_cards, CONTEXT, CardType.SMC_B)
    handle = next(c.handle for c in cards if c.iccsn == sender.iccsn)
    signer = await call(served.soap.signer, CONTEXT, handle, "RSA_ECC")
    assert isinstance(signer, SoapSigner)
    inner = (
        f"From: {sender.address}\r\nTo: {recipient.address}\r\nSubject: Befund\r\n\r\nHallo\r\n"
    ).encode()

    def sealed() -> bytes:
        out = io.BytesIO()
        seal(
            io.BytesIO(inner), out, signer=signer,
            sender=[Certified(sender.address, _cert(c)) for c in sender.enc_certs],
            recipients=[Certified(recipient.address, _cert(c)) for c in recipient.enc_certs],
        )  # fmt: skip
        return out.getvalue()

    message = await trio.to_thread.run_sync(sealed)
    keys = [SoftwareKey.from_files(k, c) for k, c in zip(recipient.enc_keys, recipient.enc_certs,
                                                          strict=True)]  # fmt: skip
    out = io.BytesIO()
    report = open_message(io.BytesIO(message), out, keys=keys, trust=served.local.trust)
    assert report.verified, report.lines()
    assert "ecdsa" in (report.signature_algorithm or "").lower()
    assert out.getvalue().endswith(b"Hallo\r\n")
    assert served.soap.calls["GetPinStatus"] == 1
    assert served.soap.calls["GetJobNumber"] == served.soap.calls["SignDocument"] == 1


async def test_pin_not_verified_refuses_before_anything_is_signed(
    served: Served, data_dir: Path
) -> None:
    """KOM-LE-A_2058: the SMC-B must be unlocked: 4085 from GetPinStatus over SOAP, as the
    in-process signing
    key fails early; no SignDocument is sent."""
    weber = people(data_dir)[WEBER]
    served.konnektor.admin.set_pin_status(weber.iccsn, "VERIFIABLE")
    cards = await call(served.soap.get_cards, CONTEXT, CardType.SMC_B)
    handle = next(c.handle for c in cards if c.iccsn == weber.iccsn)
    for port in (served.soap, served.local):
        with pytest.raises(KonnektorFault) as caught:
            await call(port.signer, CONTEXT, handle, "RSA_ECC")
        assert caught.value.code == 4085
    assert served.soap.calls["SignDocument"] == 0


async def test_decrypt_document_for_the_fetching_account(served: Served, data_dir: Path) -> None:
    """KOM-LE-A_2042, KOM-LE-A_2177: DecryptDocument with PrivateKeyOnCard C.ENC decrypts a KIM
    message sealed for the card's
    certificate; the verification result is the in-process one."""
    p = people(data_dir)
    sender, recipient = p[WEBER], p[MEYER]
    message = _sealed(sender, recipient)
    context = CallContext("Mandant1", "PVS1", "AP1", "dr.meyer")  # an HBA needs its holder
    cards = await call(served.soap.get_cards, context, CardType.HBA)
    handle = next(c.handle for c in cards if c.iccsn == recipient.iccsn)
    certificates = [_cert(c) for c in recipient.enc_certs]
    decryption = await call(served.soap.decryption, context, handle, certificates)
    assert isinstance(decryption, SoapDecryptor)
    assert decryption.crypt == "RSA_ECC"  # Meyer's HBA has both

    def opened() -> Any:
        out = io.BytesIO()
        return open_message(io.BytesIO(message), out, keys=decryption, trust=served.local.trust)

    report = await trio.to_thread.run_sync(opened)
    assert report.verified, report.lines()
    assert served.soap.calls["DecryptDocument"] == 1


async def test_decrypt_document_failures_map_to_decryption_results(
    served: Served, data_dir: Path
) -> None:
    """KOM-LE-A_2046, KOM-LE-A_2047, KOM-LE-A_2062: a tampered ciphertext (the Konnektor
    answers 4000) is DecryptionResult 02; a message not
    for the card (4058) is 01; a pulled card raises KonnektorFault 4008 (01 in the pipeline)."""
    p = people(data_dir)
    sender, recipient, other = p[WEBER], p[KLEIN], p[MEYER]
    cards = await call(served.soap.get_cards, CONTEXT, CardType.SMC_B)
    handle = next(c.handle for c in cards if c.iccsn == recipient.iccsn)
    decryption = await call(
        served.soap.decryption, CONTEXT, handle, [_cert(c) for c in recipient.enc_certs]
    )
    message = _sealed(sender, recipient)
    head, _, body = message.partition(b"\r\n\r\n")
    der = bytearray(base64.b64decode(body))
    der[len(der) // 2] ^= 1
    tampered = head + b"\r\n\r\n" + base64.encodebytes(bytes(der)).replace(b"\n", b"\r\n")

    def result(data: bytes) -> str:
        return open_message(io.BytesIO(data), io.BytesIO(), keys=decryption).decryption_result

    assert await trio.to_thread.run_sync(result, tampered) == "02"
    assert await trio.to_thread.run_sync(result, _sealed(sender, other)) == "01"
    served.konnektor.admin.remove_card(recipient.iccsn)
    with pytest.raises(KonnektorFault) as pulled:
        await trio.to_thread.run_sync(result, message)
    assert pulled.value.code == 4008


async def test_a_document_above_the_konnektor_limit_is_not_sent(served: Served) -> None:
    """Digest §1.8: just under 25 MiB per operation; a larger document is refused here (4000,
    saying why) without sending it."""
    with pytest.raises(KonnektorFault) as caught:
        await call(served.soap.sign_document, CONTEXT, "h", "RSA", b"x" * (MAX_DOCUMENT_SIZE + 1),
                   b"")  # fmt: skip
    assert caught.value.code == 4000
    assert "KAS" in caught.value.detail
    assert served.soap.calls["SignDocument"] == served.soap.calls["GetJobNumber"] == 0


async def test_verify_certificate_valid_and_revoked(
    served: Served, data_dir: Path, pki: TestPki
) -> None:
    """KOM-LE-A_2022, KOM-LE-A_2048: VerifyCertificate as the Clientmodul's certificate check:
    VALID passes; after the
    revocation both adapters refuse with reason ``revoked``; the profile is checked too."""
    klein = people(data_dir)[KLEIN]
    enc = _cert(klein.enc_certs[0])
    soap_check = served.soap.certificate_validator(CONTEXT)
    local_check = served.local.certificate_validator(CONTEXT)
    for check in (soap_check, local_check):
        await call(partial(check.validate, enc, purpose=Purpose.ENCRYPTION,
                           profile=CertProfile.C_HCI_ENC))  # fmt: skip
        with pytest.raises(PathValidationError) as wrong:
            await call(partial(check.validate, enc, purpose=Purpose.SIGNATURE,
                               profile=CertProfile.C_HCI_OSIG))  # fmt: skip
        assert wrong.value.reason in ("wrong-profile", "wrong-key-usage")
    pki.revoke(enc)
    for check in (soap_check, local_check):
        with pytest.raises(PathValidationError) as revoked:
            await call(partial(check.validate, enc, purpose=Purpose.ENCRYPTION,
                               profile=CertProfile.C_HCI_ENC))  # fmt: skip
        assert revoked.value.reason == "revoked"
    assert served.soap.calls["VerifyCertificate"] == 2


async def test_external_authenticate_signs_the_account_manager_jwt(
    served: Served, data_dir: Path, pki: TestPki
) -> None:
    """KOM-LE-A_2187 (digest §1.10): the Account Manager JWT signed by ExternalAuthenticate over
    SOAP verifies against the test PKI, for an RSA and a brainpool card."""
    p = people(data_dir)
    cards = await call(served.soap.get_cards, CONTEXT, CardType.SMC_B)
    for local in (WEBER, "apotheke.sonne"):
        handle = next(c.handle for c in cards if c.iccsn == p[local].iccsn)
        token = await call(account_manager_jwt, served.soap, CONTEXT, handle, p[local].address)
        verified = verify_jwt(token, trust=pki.trust_store())
        assert verified.claims["sub"] == p[local].address
    assert served.soap.calls["ExternalAuthenticate"] == 2


async def test_connector_sds_is_cached_and_fetched_again_after_an_outage(served: Served) -> None:
    """KOM-LE-A_2076/2077: connector.sds once for many calls; a call that finds the Konnektor
    unreachable asks for the directory again before it gives up (KonnektorUnreachable); when
    the Konnektor answers again, calls work."""
    for _ in range(3):
        await call(served.soap.get_cards, CONTEXT)
    assert served.soap.directory_fetches == 1
    served.konnektor.admin.set_unreachable(True)
    with pytest.raises(KonnektorUnreachable, match="Konnektor not reachable"):
        await call(served.soap.get_cards, CONTEXT)
    assert served.soap.directory_fetches == 2
    served.konnektor.admin.set_unreachable(False)
    assert await call(served.soap.get_cards, CONTEXT)
    assert served.soap.calls["GetCards"] == 5


async def test_connections_are_kept_and_replaced_when_the_konnektor_restarts(
    konnektor: Konnektor, data_dir: Path, tls_ca: Path
) -> None:
    """Calls reuse the kept HTTPS connection; after the Konnektor restarts on the same port the
    kept connection is dead, and the next call goes over a new one without an error."""
    async with trio.open_nursery() as outer:
        first = trio.CancelScope()

        async def run(scope: trio.CancelScope, port: int, task_status: Any) -> None:
            with scope:
                await serve_soap(konnektor, data_dir, port=port, task_status=task_status)

        address = await outer.start(run, first, 0)
        soap = soap_client(address, tls_ca, data_dir)
        for _ in range(5):
            await call(soap.get_cards, CONTEXT)
        assert soap.connections_opened <= 2  # connector.sds and the calls: kept
        opened = soap.connections_opened
        first.cancel()
        await trio.sleep(0.1)
        await outer.start(run, trio.CancelScope(), address.port)
        assert await call(soap.get_cards, CONTEXT)
        assert soap.connections_opened == opened + 1
        await soap.aclose()
        outer.cancel_scope.cancel()


async def test_the_konnektors_certificate_is_checked(served: Served, data_dir: Path) -> None:
    """KOM-LE-A_2070: TLS with the Konnektor's CA only; another CA (the test PKI's encryption
    CA certificate is no TLS CA) fails the handshake and nothing is sent."""
    other_ca = data_dir / "other-ca.pem"
    other_ca.write_bytes(Path(people(data_dir)[WEBER].enc_certs[0]).read_bytes())
    soap = soap_client(served.address, other_ca, data_dir)
    with pytest.raises(KonnektorUnreachable, match="TLS handshake failed"):
        await call(soap.get_cards, CONTEXT)


async def test_client_certificate_when_the_konnektor_requires_one(
    konnektor: Konnektor, data_dir: Path, tls_ca: Path
) -> None:
    """KOM-LE-A_2071 (TLS_AUTH_KONNEKTOR certificate): a Konnektor that requires client
    certificates (ClientAutMandatory) serves the Clientmodul presenting its C.CM.TLS-CS; without
    one the handshake fails."""
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            partial(serve_soap, konnektor, data_dir, require_client_cert=True)
        )
        with_cert = soap_client(address, tls_ca, data_dir, client_cert=True)
        directory = await with_cert.service_directory()
        assert directory.client_auth_mandatory
        assert await call(with_cert.get_cards, CONTEXT)
        without = soap_client(address, tls_ca, data_dir)
        with pytest.raises(KonnektorUnreachable):
            await call(without.get_cards, CONTEXT)
        await with_cert.aclose()
        nursery.cancel_scope.cancel()


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def _sealed(sender: Participant, recipient: Participant) -> bytes:
    """A KIM message signed with the sender's exported key, for the recipient and the sender."""
    out = io.BytesIO()
    signer = SoftwareKey.from_files(sender.osig_keys[0], sender.osig_certs[0])
    inner = f"From: {sender.address}\r\nTo: {recipient.address}\r\nSubject: x\r\n\r\nHallo\r\n"
    seal(
        io.BytesIO(inner.encode()), out, signer=signer,
        sender=[Certified(sender.address, _cert(c)) for c in sender.enc_certs],
        recipients=[Certified(recipient.address, _cert(c)) for c in recipient.enc_certs],
    )  # fmt: skip
    return out.getvalue()


async def _basic_auth_konnektor(
    konnektor: Konnektor,
    data_dir: Path,
    seen: list[str],
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A Konnektor that wants HTTP Basic (TLS_AUTH_KONNEKTOR basic, KOM-LE-A_2072): the
    appliance's own SOAP dispatcher behind a check of the Authorization header (401 without)."""
    import h11

    from kim_appliance.konnektor.soap.directory import connector_sds
    from kim_appliance.konnektor.soap.handlers import SoapDispatcher
    from kim_appliance.pki.tls import server_context

    chain, key = tls_pair(data_dir, "konnektor")
    context = server_context(chain, key)
    dispatcher = SoapDispatcher(konnektor)
    expected = "Basic " + base64.b64encode(b"praxis:geheim").decode()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def serve(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True)
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await tls.receive_some(65536))
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert request is not None
        authorization = dict(request.headers).get(b"authorization", b"").decode()
        seen.append(authorization)
        status, answer = 401, b"unauthorized"
        if authorization == expected:
            if request.method == b"GET":
                status, answer = 200, connector_sds(f"https://127.0.0.1:{port}", tls=True,
                                                    client_auth=False)  # fmt: skip
            else:
                service = request.target.decode().rsplit("/", 1)[-1]
                reply = await trio.to_thread.run_sync(dispatcher.handle, service, body)
                status, answer = reply.status, reply.body
        headers = [("Content-Type", "text/xml; charset=utf-8"), ("Connection", "close"),
                   ("Content-Length", str(len(answer)))]  # fmt: skip
        data = conn.send(h11.Response(status_code=status, headers=headers))
        data += conn.send(h11.Data(data=answer)) + conn.send(h11.EndOfMessage())
        await tls.send_all(data)
        await tls.aclose()

    task_status.started(port)
    await trio.serve_listeners(serve, listeners)


async def test_basic_auth_is_sent_on_every_request(
    konnektor: Konnektor, data_dir: Path, tls_ca: Path
) -> None:
    """KOM-LE-A_2072 (TLS_AUTH_KONNEKTOR basic): the Authorization header goes with
    connector.sds and every SOAP request; wrong credentials are refused (401) and reported as
    a Konnektor the Clientmodul cannot use, saying what to check."""
    from kim_appliance.clientmodul.network import KonnektorSettings, SoapKonnektor
    from kim_appliance.pki.tls import client_context

    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_basic_auth_konnektor, konnektor, data_dir, seen)
        url = f"https://127.0.0.1:{port}/connector.sds"
        good = SoapKonnektor(KonnektorSettings(url, client_context(tls_ca),
                                               basic_auth=("praxis", "geheim")))  # fmt: skip
        assert await call(good.get_cards, CONTEXT)
        assert len(seen) == 2  # connector.sds and GetCards
        assert len(set(seen)) == 1
        bad = SoapKonnektor(KonnektorSettings(url, client_context(tls_ca),
                                              basic_auth=("praxis", "falsch")))  # fmt: skip
        with pytest.raises(KonnektorUnreachable, match="HTTP 401"):
            await call(bad.get_cards, CONTEXT)
        nursery.cancel_scope.cancel()


async def test_the_key_choice_over_soap_keeps_to_the_accounts_telematik_id(
    served: Served, data_dir: Path
) -> None:
    """KOM-LE-A_2044/A_2045 over SOAP, where GetCards reports no Telematik-ID: the card is
    matched by the Admission of its ENC certificate, so a forged recipient-emails pairing
    Klein's address with Weber's certificate gives no key (01/4009); Klein's own entries do."""
    from kim_appliance.clientmodul.keys import DecryptionKeyFinder, KeySelectionError
    from kim_appliance.cms.recipient_emails import RecipientEmail

    p = people(data_dir)
    klein, weber = p[KLEIN], p[WEBER]
    finder = DecryptionKeyFinder(served.soap)
    forged = [RecipientEmail.for_certificate(klein.address, _cert(c)) for c in weber.enc_certs]
    with pytest.raises(KeySelectionError) as caught:
        await call(partial(finder.decryption_for, CONTEXT, klein.address, forged,
                           telematik_id=klein.telematik_id))  # fmt: skip
    assert (caught.value.decryption_result, caught.value.error_code) == ("01", "4009")
    own = [RecipientEmail.for_certificate(klein.address, _cert(c)) for c in klein.enc_certs]
    decryption = await call(partial(finder.decryption_for, CONTEXT, klein.address, own,
                                    telematik_id=klein.telematik_id))  # fmt: skip
    assert isinstance(decryption, SoapDecryptor)
    assert decryption.crypt == "RSA_ECC"  # Klein's card has both keys
    served.konnektor.admin.set_unreachable(True)
    finder.forget()
    with pytest.raises(KeySelectionError) as unreachable:
        await call(partial(finder.decryption_for, CONTEXT, klein.address, own))
    assert (unreachable.value.decryption_result, unreachable.value.error_code) == ("03", "4011")
