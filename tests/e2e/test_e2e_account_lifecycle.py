"""The account lifecycle end to end on a running ``kim-appliance run`` (issue 5 "Done when";
digest §3.2, §3.3, §4.1): registerAccount with a demo registration code and a JWT signed by the
SMC-B's AUT key through the Konnektor's ExternalAuthenticate, over the published HTTPS
listener; the address in the VZD (LDAP); mail over SMTPS/POP3S; setAccount; deregistration
stops sending and receiving while POP3 still works; revokeDeregistration restores it; an
absence note set through the REST API answers over SMTP; setTID via getOTP moves the address
to another card's directory entry.
"""

from __future__ import annotations

import base64
import poplib
import smtplib
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import ldap3
import pytest
from e2e_appliance import Appliance, Launcher, mail, pop3_fetch, smtp_send, split_hostport

from kim_appliance.konnektor.infomodell import Context
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.pki.jwt import build_jwt

FD1 = "fd1.kim.telematik-test"
CONTEXT = Context("Mandant1", "PVS1", "AP1")
PASSWORD = "Neues-Konto-Passwort-1!"
NEW_PASSWORD = "Zweites-Passwort-2025?"
AM = "/AccountMgmt/v2.4"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Card:
    """An SMC-B of the emulated Konnektor that signs Account Manager JWTs (digest §1.10)."""

    def __init__(self, konnektor: Konnektor, telematik_id: str) -> None:
        self.konnektor = konnektor
        info = next(
            c for c in konnektor.get_cards(CONTEXT, "SMC-B") if c.telematik_id == telematik_id
        )
        self.handle = info.card_handle
        self.telematik_id = telematik_id
        self.certificate = konnektor.read_card_certificate(CONTEXT, self.handle, "C.AUT", "RSA")

    def jwt(self, subject: str) -> dict[str, str]:
        token = build_jwt(
            certificate=self.certificate,
            # ExternalAuthenticate: the card signs the SHA-256 of the JWS signing input
            sign=lambda digest: self.konnektor.external_authenticate(
                CONTEXT, self.handle, digest, "RSASSA-PSS"
            ),
            subject=subject,
        )
        return {"Authorization": f"Bearer {token}"}


def _vzd_telematik_ids(app: Appliance, address: str) -> list[str]:
    """The telematikID of every VZD entry whose ``mail`` holds ``address`` (LDAP, §4.1)."""
    host, port = split_hostport(app.endpoints["directory"]["ldap"])
    with ldap3.Connection(ldap3.Server(host, port=port), auto_bind=True) as conn:
        conn.search(
            app.endpoints["directory"]["base_dn"],
            f"(mail={address})",
            attributes=["telematikID", "mail"],
        )
        return [str(e.telematikID) for e in conn.entries]


def _smtp_refusal(app: Appliance, sender: dict[str, Any], to: str) -> tuple[str, int, bytes]:
    """('mail'|'rcpt'|'ok', code, text) of MAIL FROM/RCPT TO for one message."""
    host, port = app.fd_of(sender, "smtp")
    with smtplib.SMTP_SSL(host, port, context=app.ssl_context(), timeout=30) as smtp:
        smtp.login(sender["address"], sender["password"])
        code, text = smtp.mail(sender["address"])
        if code != 250:
            return "mail", code, text
        code, text = smtp.rcpt(to)
        if code != 250:
            return "rcpt", code, text
        smtp.rset()
        return "ok", code, text


def _wait_for(app: Appliance, who: dict[str, Any], count: int, timeout: float = 60) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        got = pop3_fetch(app, who)
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.mark.slow
def test_account_lifecycle_end_to_end(data_dir: Path, launcher: Launcher) -> None:
    """KOM-LE-A_2149, KOM-LE-A_2150, KOM-LE-A_2187, KOM-LE-A_2223: register, publish in the
    VZD, receive and read mail, change the password, deregister (no sending, no receiving, POP3
    until deregDate), revoke, absence note over SMTP, setTID moves the address."""
    app = launcher.start(data_dir)
    demo = app.demo
    weber = app.participant("praxis.weber")
    klein = app.participant("zahnarzt.klein")
    code = next(c for c in demo["registration_codes"] if c["fachdienst"] == FD1)
    konnektor = Konnektor.from_data_dir(data_dir, persist_revocations=False)
    card = Card(konnektor, weber["telematik_id"])
    other_card = Card(konnektor, klein["telematik_id"])
    address = f"empfang.weber@{FD1}"
    account = {"address": address, "password": PASSWORD, "fachdienst": FD1}
    https = app.endpoints["fachdienste"][FD1]["https"]
    client = httpx.Client(
        base_url=https + AM, verify=ssl.create_default_context(cafile=app.endpoints["tls_ca"])
    )

    def call(method: str, path: str, card_: Card = card, **kw: Any) -> httpx.Response:
        headers = {**card_.jwt(address), **kw.pop("headers", {})}
        return client.request(method, path, headers=headers, timeout=60, **kw)

    def auth(password: str) -> dict[str, str]:
        return {"password": b64(password)}

    with client:
        # registerAccount: referenceID + iniPassword + the card-signed JWT (digest §3.3)
        response = call(
            "POST",
            "/account",
            headers={"iniPassword": b64(code["iniPassword"])},
            json={
                "referenceID": code["referenceID"],
                "username": address,
                "password": b64(PASSWORD),
                "kimVersion": "1.5+",
            },
        )
        assert response.status_code == 204, response.text
        assert _vzd_telematik_ids(app, address) == [card.telematik_id]
        got = call("GET", f"/account/{address}", headers=auth(PASSWORD)).json()
        assert got["regStat"] == "registered"
        assert got["referenceID"] == code["referenceID"]

        # mail to the new account over SMTPS, read over POP3S
        smtp_send(app, weber, [address], mail(weber["address"], address, "lc1@test", b"Hallo\r\n"))
        assert len(_wait_for(app, account, 1)) == 1

        # setAccount: a new password; the old one stops working for POP3
        response = call(
            "PUT",
            f"/account/{address}",
            headers=auth(PASSWORD),
            json={"password": b64(NEW_PASSWORD)},
        )
        assert response.status_code == 204, response.text
        with pytest.raises(poplib.error_proto):
            pop3_fetch(app, account)
        account["password"] = NEW_PASSWORD
        assert len(pop3_fetch(app, account)) == 1

        # deregisterAccount: no sending, no receiving, POP3 until deregDate (KOM-LE-A_2149/2150)
        assert call("DELETE", f"/account/{address}", headers=auth(NEW_PASSWORD)).status_code == 204
        got = call("GET", f"/account/{address}", headers=auth(NEW_PASSWORD)).json()
        assert got["regStat"] == "deregistered"
        assert got["deregDate"] > time.time()
        assert _vzd_telematik_ids(app, address) == []
        where, code_, text = _smtp_refusal(app, account, weber["address"])
        assert (where, code_) == ("mail", 550)
        assert text.startswith(b"5.7.1 ")
        assert b"deregistered" in text
        where, code_, text = _smtp_refusal(app, weber, address)
        assert (where, code_) == ("rcpt", 550)
        assert text.startswith(b"5.2.1 ")
        assert len(pop3_fetch(app, account)) == 1  # still readable before deregDate

        # revokeDeregistration restores sending, receiving and the VZD entry
        response = call(
            "PUT", f"/account/{address}/revokeDeregistration", headers=auth(NEW_PASSWORD)
        )
        assert response.status_code == 204, response.text
        assert _vzd_telematik_ids(app, address) == [card.telematik_id]
        assert _smtp_refusal(app, account, weber["address"])[0] == "ok"
        assert _smtp_refusal(app, weber, address)[0] == "ok"

        # an absence note set through the REST API answers the sender over SMTP (KOM-LE-A_2223)
        note = {
            "active": True,
            "startDate": "2020-01-01T00:00:00Z",
            "endDate": "2099-01-01T00:00:00Z",
            "message": "Die Praxis ist bis Montag geschlossen.",
        }
        response = call(
            "PUT", f"/account/{address}/outofoffice", headers=auth(NEW_PASSWORD), json=note
        )
        assert response.status_code == 204, response.text
        pop3_fetch(app, weber, delete=True)
        smtp_send(app, weber, [address], mail(weber["address"], address, "lc2@test", b"Bitte\r\n"))
        replies = [m for m in _wait_for(app, weber, 1) if b"Auto-Submitted: auto-replied" in m]
        assert len(replies) == 1
        assert b"geschlossen" in replies[0]

        # setTID: an OTP from the account, then the JWT of the new card moves the address
        response = call("GET", f"/account/{address}/OTP", headers=auth(NEW_PASSWORD))
        assert response.status_code == 200, response.text
        otp = response.json()["otp"]
        response = call(
            "PUT",
            f"/account/{address}/telematikID",
            card_=other_card,
            headers={**auth(NEW_PASSWORD), "otp": otp},
        )
        assert response.status_code == 204, response.text
        assert _vzd_telematik_ids(app, address) == [other_card.telematik_id]
