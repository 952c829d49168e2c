"""The Clientmodul's TLS client identity from the Account Manager's PKCS#12 (clientmodul/pkcs12.py).

The PKCS#12 comes from this appliance's own Account Manager: createCert over HTTPS with a JWT
that the participant's SMC-B signs through the Konnektor's ExternalAuthenticate (digest §1.10),
as the Administrationsmodul fetches it. A second appliance's Clientmodul then uses it
(``[clientmodul] tls_pkcs12``) towards a scripted MTA that asks for a client certificate and
records the one it gets, and towards the real Fachdienst.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trio
from cm_support import (
    CERT_PASSWORD,
    COMMON_NAME,
    Kim,
    StartKim,
    create_cert,
    serve_certificate_recording_mta,
    with_upstream,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import NoEncryption, load_pem_private_key, pkcs12
from cryptography.x509.oid import NameOID

from kim_appliance.clientmodul.pkcs12 import Pkcs12Error, unpack_pkcs12


async def test_the_pkcs12_of_create_cert_unpacks_and_is_checked(start_kim: StartKim) -> None:
    """A_19513: the Clientmodul unpacks the PKCS#12 that createCert returns (A_18783: with its
    certPassword) into key, certificate (CN ``<commonName>#CM``, a C.CM.TLS-CS) and CA chain;
    a wrong password, a certificate of another profile and a certificate outside its validity
    (A_21381: checked before TLS uses it) are refused with a message that says so."""
    app = await start_kim()
    data = await trio.to_thread.run_sync(create_cert, app, "praxis.weber")
    identity = unpack_pkcs12(data, CERT_PASSWORD, source="createCert")
    (cn,) = identity.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn.value == f"{COMMON_NAME}#CM"
    assert identity.chain  # the issuing CA came along
    key = load_pem_private_key(identity.key_pem, None)
    assert key.public_key() == identity.certificate.public_key()
    with pytest.raises(Pkcs12Error, match="wrong password"):
        unpack_pkcs12(data, "falsch", source="createCert")
    later = identity.not_after + dt.timedelta(days=1)
    with pytest.raises(Pkcs12Error, match="not now"):
        unpack_pkcs12(data, CERT_PASSWORD, source="createCert", now=later)
    # a Fachdienst's TLS server certificate packed the same way is not a C.CM.TLS-CS
    tls = app.data_dir / "tls"
    domain = app.participant("praxis.weber").fachdienst
    server_cert = x509.load_pem_x509_certificates(
        (tls / f"{domain}.server.chain.pem").read_bytes()
    )[0]
    server_key = load_pem_private_key((tls / f"{domain}.server.key.pem").read_bytes(), None)
    other = pkcs12.serialize_key_and_certificates(
        b"fd",
        server_key,
        server_cert,
        None,
        NoEncryption(),  # type: ignore[arg-type]
    )
    with pytest.raises(Pkcs12Error, match=r"not a C\.CM\.TLS-CS"):
        unpack_pkcs12(other, "", source="fd.p12")


async def test_the_clientmodul_presents_the_certificate_of_its_pkcs12(
    start_kim: StartKim, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A_19513, KOM-LE-A_2301-02, KOM-LE-A_2182-01: with ``[clientmodul] tls_pkcs12`` (the file
    createCert returned, fetched through I_AccountManager_Service) and its certPassword, the
    Clientmodul authenticates towards the Fachdienst with that certificate: an MTA that asks for
    a client certificate gets ``praxis-weber-cm#CM``; and mail through the real Fachdienst
    (which checks client certificates against the TLS CA) goes out as before."""
    issuer = await start_kim()
    p12 = tmp_path / "clientmodul.p12"
    p12.write_bytes(await trio.to_thread.run_sync(create_cert, issuer, "praxis.weber"))
    app = await start_kim(
        config={"clientmodul": {"tls_pkcs12": str(p12), "tls_pkcs12_password": CERT_PASSWORD}}
    )
    p = app.participant("praxis.weber")
    port, presented = await serve_certificate_recording_mta(nursery, app)
    username = with_upstream(p.smtp_username, "127.0.0.1", port)
    assert await trio.to_thread.run_sync(Kim(app).login_code, "praxis.weber", username) == 235
    assert [cn for cn, _ in presented] == [f"{COMMON_NAME}#CM"]
    cm = Kim(app)
    to = cm.address("zahnarzt.klein")
    mail = f"From: {p.address}\r\nTo: {to}\r\nSubject: p12\r\n\r\nmit dem neuen Zertifikat\r\n"
    refused = await trio.to_thread.run_sync(cm.send, "praxis.weber", [to], mail.encode())
    assert refused == {}
