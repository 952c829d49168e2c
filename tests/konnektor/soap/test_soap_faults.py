"""Faults over SOAP: gematik error codes in GERROR:Error (bad context, unknown card handle,
blocked PIN, removed card), faults switched through the HTTP admin API (issue 4, item 4), an
unreachable Konnektor that does not answer at all, a slow card the caller can measure, and the
switches that repair a card (issue 15: verify_pin, unblock_pin, renew)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
import zeep.exceptions
from conftest import RunningKonnektor, ZeepClient, serving
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from konnektor_helpers import CONTEXT, SONNE, WEBER, handle
from soap_helpers import ADMIN_HEADERS, CTX, trace

from kim_appliance.konnektor import Konnektor
from kim_appliance.pki.tls import server_context


@pytest.mark.parametrize(
    ("context", "code"),
    [
        ({**CTX, "MandantId": "NoSuchMandant"}, 4004),
        ({**CTX, "ClientSystemId": "NoSuchPVS"}, 4005),
        ({**CTX, "WorkplaceId": "NoSuchAP"}, 4006),
        ({**CTX, "WorkplaceId": ""}, 4021),
    ],
)
def test_bad_context_is_a_fault_with_the_gematik_code(
    soap: RunningKonnektor, context: dict[str, str], code: int
) -> None:
    """TUC_KON_000: an unknown Mandant/ClientSystem/Workplace (4004/4005/4006) or an empty one
    (4021) is a SOAP fault whose GERROR:Error/Trace carries the code and what was wrong."""
    with pytest.raises(zeep.exceptions.Fault) as info:
        soap.service("EventService").GetCards(Context=context)
    found = trace(info.value)
    assert found["Code"] == str(code)
    assert found["ErrorType"] == "Security"
    assert found["Severity"] == "Error"
    assert found["CompType"] == "KON"
    assert found["ErrorText"]
    assert str(code) in info.value.message


def test_unknown_card_handle_is_4008(soap: RunningKonnektor) -> None:
    with pytest.raises(zeep.exceptions.Fault) as info:
        soap.service("CardService").GetPinStatus(Context=CTX, CardHandle="nope", PinTyp="PIN.SMC")
    found = trace(info.value)
    assert found["Code"] == "4008"
    assert "nope" in found["Detail"]


def test_pin_blocked_through_the_admin_api(soap: RunningKonnektor) -> None:
    """POST /admin/faults pin_blocked: PinStatus BLOCKED, VerifyPin WASBLOCKED, and the card's
    keys refuse with 4085 (access conditions not met)."""
    card_handle = handle(soap.konnektor, WEBER)
    status = soap.admin(pin_blocked=WEBER)
    weber = next(c for c in status["cards"] if c["iccsn"] == WEBER)
    assert weber["pins"]["PIN.SMC"]["status"] == "BLOCKED"
    cards = soap.service("CardService")
    assert cards.GetPinStatus(Context=CTX, CardHandle=card_handle, PinTyp="PIN.SMC").PinStatus == (
        "BLOCKED"
    )
    assert cards.VerifyPin(Context=CTX, CardHandle=card_handle, PinTyp="PIN.SMC").PinResult == (
        "WASBLOCKED"
    )
    with pytest.raises(zeep.exceptions.Fault) as info:
        soap.service("AuthSignatureService").ExternalAuthenticate(
            CardHandle=card_handle,
            Context=CTX,
            BinaryString={"Base64Data": {"_value_1": bytes(32)}},
        )
    assert trace(info.value)["Code"] == "4085"


def test_card_removed_through_the_admin_api(soap: RunningKonnektor) -> None:
    """card_removed: GetCards no longer lists the card, its handle gives 4008; card_inserted
    brings it back under a new handle."""
    old_handle = handle(soap.konnektor, WEBER)
    soap.admin(card_removed=WEBER)
    events = soap.service("EventService")
    assert WEBER not in {c.Iccsn for c in events.GetCards(Context=CTX).Cards.Card}
    with pytest.raises(zeep.exceptions.Fault) as info:
        soap.service("CertificateService").ReadCardCertificate(
            CardHandle=old_handle, Context=CTX, CertRefList={"CertRef": ["C.ENC"]}
        )
    assert trace(info.value)["Code"] == "4008"
    soap.admin(card_inserted=WEBER)
    back = next(c for c in events.GetCards(Context=CTX).Cards.Card if c.Iccsn == WEBER)
    assert back.CardHandle != old_handle


def test_unreachable_konnektor_does_not_answer(soap: RunningKonnektor) -> None:
    """unreachable: SOAP calls and connector.sds get no answer at all (a connection error, not
    an HTTP status or SOAP fault); the admin API stays reachable and switches it off."""
    events = soap.service("EventService")
    soap.admin(unreachable=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        events.GetCards(Context=CTX)
    fresh = requests.Session()
    fresh.trust_env = False
    with pytest.raises(requests.exceptions.ConnectionError):
        fresh.get(soap.url("/connector.sds"), verify=str(soap.ca), timeout=10)
    assert (
        soap.http.get(soap.url("/admin/faults"), headers=ADMIN_HEADERS, timeout=10).json()[
            "unreachable"
        ]
        is True
    )
    soap.admin(unreachable=False)
    assert events.GetCards(Context=CTX).Status.Result == "OK"


def test_slow_card_latency_is_observable(soap: RunningKonnektor) -> None:
    """latency_ms: every private-key operation of the card takes that long (load tests of
    practice software need to see 100-300 ms per RSA operation); reading a certificate needs
    no key and stays fast."""
    card_handle = handle(soap.konnektor, WEBER)
    auth = soap.service("AuthSignatureService")

    def sign() -> float:
        start = time.monotonic()
        auth.ExternalAuthenticate(
            CardHandle=card_handle,
            Context=CTX,
            BinaryString={"Base64Data": {"_value_1": bytes(32)}},
        )
        return time.monotonic() - start

    fast = sign()
    status = soap.admin(latency_ms={"iccsn": WEBER, "ms": 300})
    assert next(c for c in status["cards"] if c["iccsn"] == WEBER)["latency"] == 0.3
    slow = sign()
    assert slow >= 0.3
    assert slow > fast
    start = time.monotonic()
    soap.service("CertificateService").ReadCardCertificate(
        CardHandle=card_handle, Context=CTX, CertRefList={"CertRef": ["C.ENC"]}
    )
    assert time.monotonic() - start < 0.3
    soap.admin(clear=True)
    assert sign() < 0.3


def test_admin_api_refuses_bad_requests(soap: RunningKonnektor) -> None:
    """Errors say which field was wrong and why (HTTP 400), and nothing is switched."""
    cases = [
        ({"card_removed": "99999999999999999999"}, "card_removed"),
        ({"latency_ms": -5}, "latency_ms"),
        ({"unreachable": "yes"}, "unreachable"),
        ({"revoke": {"iccsn": WEBER}}, "revoke.purpose"),
        ({"revoke": {"iccsn": WEBER, "purpose": "X", "crypt": "RSA"}}, "revoke.purpose"),
        ({"typo": True}, "typo"),
    ]
    for body, field in cases:
        response = soap.http.post(
            soap.url("/admin/faults"), json=body, headers=ADMIN_HEADERS, timeout=10
        )
        assert response.status_code == 400, body
        assert response.json()["error"].startswith(field), response.json()
    bad_json = soap.http.post(
        soap.url("/admin/faults"),
        data=b"{",
        headers={**ADMIN_HEADERS, "Content-Type": "application/json"},
        timeout=10,
    )
    assert bad_json.status_code == 400
    assert (
        soap.http.get(soap.url("/admin/faults"), headers=ADMIN_HEADERS, timeout=10).json()[
            "unreachable"
        ]
        is False
    )


def test_revoke_through_the_admin_api(
    own_data_dir: Path,
    tls_files: tuple[Path, Path, Path],
    zeep_clients: dict[str, ZeepClient],
) -> None:
    """revoke: the card's certificate goes on the test PKI's CRL, and VerifyCertificate over
    SOAP answers INVALID with CERT_REVOKED (a Konnektor of its own data dir: the CRL changes)."""
    konnektor = Konnektor.from_data_dir(own_data_dir)
    cert = konnektor.read_card_certificate(CONTEXT, handle(konnektor, WEBER), "C.ENC")
    der = cert.public_bytes(serialization.Encoding.DER)
    chain, key, ca = tls_files
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca)
    certificates = zeep_clients["CertificateService"]
    with serving(konnektor, server_context(chain, key)) as address:
        service = certificates.client.create_service(
            certificates.binding, f"{address.base_url}/ws/CertificateService"
        )
        before = service.VerifyCertificate(Context=CTX, X509Certificate=der)
        assert before.VerificationStatus.VerificationResult == "VALID"
        response = session.post(
            f"{address.base_url}/admin/faults",
            json={"revoke": {"iccsn": WEBER, "purpose": "C.ENC", "crypt": "RSA"}},
            headers=ADMIN_HEADERS,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.json()["revoked"][0]["serial"] == f"{cert.serial_number:X}"
        after = service.VerifyCertificate(Context=CTX, X509Certificate=der)
    assert after.VerificationStatus.VerificationResult == "INVALID"
    assert after.VerificationStatus.Error.Trace[0].ErrorText == "CERT_REVOKED"


def test_pin_switches_through_the_admin_api_bring_a_card_back(soap: RunningKonnektor) -> None:
    """issue 15: after pin_blocked, unblock_pin and verify_pin (one request, in that order)
    make VerifyPin-free use of the card possible again; a card put back needs verify_pin
    (PinStatus VERIFIABLE until then), and the switches take a list and a PIN type."""
    soap.admin(pin_blocked=WEBER)
    status = soap.admin(unblock_pin=WEBER, verify_pin={"iccsn": WEBER, "pin_type": "PIN.SMC"})
    weber = next(c for c in status["cards"] if c["iccsn"] == WEBER)
    assert weber["pins"]["PIN.SMC"] == {"status": "VERIFIED", "left_tries": 3}
    soap.admin(card_removed=[WEBER, SONNE], card_inserted=[WEBER, SONNE])
    cards = soap.service("CardService")
    for iccsn in (WEBER, SONNE):
        pin = cards.GetPinStatus(
            Context=CTX, CardHandle=handle(soap.konnektor, iccsn), PinTyp="PIN.SMC"
        )
        assert pin.PinStatus == "VERIFIABLE"
    soap.admin(verify_pin=[WEBER, SONNE])
    for iccsn in (WEBER, SONNE):
        pin = cards.GetPinStatus(
            Context=CTX, CardHandle=handle(soap.konnektor, iccsn), PinTyp="PIN.SMC"
        )
        assert pin.PinStatus == "VERIFIED"
    soap.admin(card_removed=WEBER)
    refused = soap.http.post(
        soap.url("/admin/faults"), json={"verify_pin": WEBER}, headers=ADMIN_HEADERS, timeout=10
    )
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("verify_pin: card 80276883110000100001")
    assert "insert it first" in refused.json()["error"]


def test_renew_through_the_admin_api_answers_the_new_certificate(
    own_data_dir: Path, tls_files: tuple[Path, Path, Path]
) -> None:
    """renew: the answer carries the new certificate (PEM) and its serial; an ENC certificate
    without a VZD publisher is refused with a 400 that says so, and nothing changes."""
    konnektor = Konnektor.from_data_dir(own_data_dir)
    chain, key, ca = tls_files
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca)
    with serving(konnektor, server_context(chain, key)) as address:
        url = f"{address.base_url}/admin/faults"
        renewed = session.post(
            url,
            json={"renew": {"iccsn": WEBER, "purpose": "OSIG", "crypt": "RSA"}},
            headers=ADMIN_HEADERS,
            timeout=30,
        )
        assert renewed.status_code == 200, renewed.text
        answer = renewed.json()["renewed"]
        cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
        assert answer["serial"] == f"{cert.serial_number:X}" != answer["old_serial"]
        assert answer["published"] is False
        card_cert = konnektor.read_card_certificate(CONTEXT, handle(konnektor, WEBER), "C.SIG")
        assert card_cert == cert
        refused = session.post(
            url,
            json={"renew": {"iccsn": WEBER, "purpose": "C.ENC", "crypt": "RSA"}},
            headers=ADMIN_HEADERS,
            timeout=30,
        )
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("renew: publishing the new ENC certificate")
