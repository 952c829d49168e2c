"""Account Manager REST API (digest §3.3, AccountManager.yaml v2.4): every documented status code.

The app under test is the Account Manager routes in a REST app on the appliance's real store (VZD
and mail store), served over loopback HTTP by a trio loop in a background thread
(fd_support.serve_in_thread); the JWT verifier is a stand-in that reads ``sub|telematikID``
tokens (the real verifier is tested with the JWT module).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Awaitable, Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import schemathesis
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from fd_support import TrioServed, _quick_hash, fachdienst_on, serve_in_thread
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance
from starlette.types import ASGIApp

from kim_appliance.config import FachdienstConfig
from kim_appliance.directory.entries import DirectoryEntry
from kim_appliance.directory.store import DirectoryStore
from kim_appliance.fachdienst.account_lifecycle import AccountManagerState
from kim_appliance.fachdienst.account_manager import account_manager_routes
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.pki.profiles import CertProfile, profile_of
from kim_appliance.pki.testpki import TestPki
from kim_appliance.store import Store
from kim_appliance.store.base import Account
from kim_appliance.web import OPENAPI_DIR
from kim_appliance.web.server import rest_app

T = TypeVar("T")

DOMAIN = "am.kim.telematik-test"
TID = "1-SMC-B-Testkarte-883110000111"
TID_NEW = "1-SMC-B-Testkarte-883110000222"
TID_LOCKED = "1-SMC-B-Testkarte-883110000333"
USER = f"praxis.weber@{DOMAIN}"
PASSWORD = "Geheim-Passwort-2024!"
NEW_PASSWORD = "Anderes-Passwort-2025?"
BASE = "/AccountMgmt/v2.4"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def fake_verify(token: str) -> Mapping[str, Any]:
    """Stand-in for the JWT module: ``sub|telematikID`` is a valid token, anything else not."""
    sub, sep, tid = token.partition("|")
    if not sep:
        raise ValueError("signature does not verify")
    return {"sub": sub, "telematikID": tid}


def jwt(sub: str = USER, tid: str = TID) -> dict[str, str]:
    return {"Authorization": f"Bearer {sub}|{tid}"}


def auth(password: str = PASSWORD, sub: str = USER, tid: str = TID) -> dict[str, str]:
    return {**jwt(sub, tid), "password": b64(password)}


@pytest.fixture(scope="session")
def pki() -> TestPki:
    return TestPki.generate()


class Env:
    """The Account Manager served in a trio thread; ``call`` runs store/VZD coroutines there."""

    def __init__(
        self,
        served: TrioServed,
        fd: Fachdienst,
        directory: DirectoryStore,
        state: AccountManagerState,
    ) -> None:
        self.client = httpx.Client(base_url=served.url, timeout=30)
        self.url = served.url
        self.served = served
        self.fd = fd
        self.directory = directory
        self.state = state
        self.now = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.served.call(fn, *args)

    def account(self, address: str = USER) -> Account:
        account = self.call(self.fd.store.accounts.get, address)
        assert account is not None
        return account


@pytest.fixture
def env(tmp_path: Path, pki: TestPki) -> Iterator[Env]:
    holder: dict[str, Any] = {}

    async def build(store: Store) -> ASGIApp:
        directory = await DirectoryStore.open(store.directory)
        for tid, active in ((TID, True), (TID_NEW, True), (TID_LOCKED, False)):
            await directory.put_entry(
                DirectoryEntry(
                    uid=tid, telematik_id=tid, display_name=f"Praxis {tid}", active=active
                )
            )
        fd = fachdienst_on(store, DOMAIN, config=FachdienstConfig(domains=()))
        state = AccountManagerState(store, DOMAIN)
        routes = account_manager_routes(
            fd,
            directory=directory,
            pki=pki,
            verify_jwt=fake_verify,
            state=state,
            clock=lambda: holder["env"].now,
        )
        holder.update(fd=fd, directory=directory, state=state)
        return rest_app(routes)

    with serve_in_thread(tmp_path / "kim-data", build) as served:
        e = Env(served, holder["fd"], holder["directory"], holder["state"])
        holder["env"] = e
        with e.client:
            yield e


def register(env: Env, *, address: str = USER, tid: str = TID, **body: Any) -> Any:
    if env.call(env.state.get_code, "REF-1") is None:
        env.call(partial(env.state.add_code, telematik_id=tid), "REF-1", "Start-Kennwort-1!")
    payload = {"referenceID": "REF-1", "username": address, "password": b64(PASSWORD), **body}
    return env.client.post(
        f"{BASE}/account",
        json=payload,
        headers={**jwt(address, tid), "iniPassword": b64("Start-Kennwort-1!")},
    )


@pytest.fixture
def registered(env: Env) -> Env:
    """An account made directly in the store (quick hash) and published in the VZD."""
    env.call(
        env.fd.store.accounts.create,
        Account(USER, _quick_hash(PASSWORD), TID, "Praxis Weber", kim_version="1.5+"),
    )
    from kim_appliance.directory.entries import KimAddress

    env.call(env.directory.set_address, TID, DOMAIN, KimAddress(USER, "1.5+"))
    return env


def assert_error(response: Any, status: int, needle: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message", "traceId"}
    assert needle.lower() in body["message"].lower()
    assert response.headers["content-type"].startswith("application/json")


# --- registerAccount ----------------------------------------------------------------------


def test_register_creates_account_and_vzd_entry(env: Env) -> None:
    """registerAccount 204: account with hashed password, mail+kimData in the VZD (digest §3.3,
    KOM-LE-A_2164; the registration interface, KOM-LE-A_2156/2157)."""
    r = register(env, kimVersion="1.5+", dataTimeToLive=30)
    assert r.status_code == 204, r.text
    account = env.account()
    assert PASSWORD not in account.password_hash
    assert (account.telematik_id, account.kim_version, account.data_ttl_days) == (TID, "1.5+", 30)
    entry = env.directory.find_by_mail(USER)
    assert entry is not None
    assert entry.telematik_id == TID
    # the password works, the initial password is used up
    assert env.call(partial(env.fd.auth.authenticate, client="127.0.0.1"), USER, PASSWORD).ok
    again = register(env, address=f"zweite@{DOMAIN}")
    assert_error(again, 401, "referenceID")


def test_register_no_vzd_mail_entry_keeps_address_out_of_vzd(env: Env) -> None:
    """noVzdMailEntry (Basis-Consumer): the account exists but the VZD does not publish it."""
    assert register(env, noVzdMailEntry=True).status_code == 204
    assert env.call(env.fd.store.accounts.get, USER) is not None
    assert env.directory.find_by_mail(USER) is None


def test_register_refusals(env: Env) -> None:
    """registerAccount 400/401/409/420/422/423 (AccountManager.yaml)."""
    env.call(partial(env.state.add_code, telematik_id=TID), "REF-1", "Start-Kennwort-1!")
    ini = {"iniPassword": b64("Start-Kennwort-1!")}
    ok = {"referenceID": "REF-1", "username": USER, "password": b64(PASSWORD)}
    post = env.client.post
    url = f"{BASE}/account"
    assert_error(post(url, json=ok, headers=ini), 401, "bearer")
    assert_error(post(url, json=ok, headers={**ini, "Authorization": "Bearer x"}), 401, "JWT")
    assert_error(post(url, json=ok, headers=jwt()), 400, "iniPassword")
    assert_error(post(url, json=ok, headers={**jwt(), "iniPassword": "%%%"}), 400, "base64")
    h = {**jwt(), **ini}
    assert_error(post(url, content=b"{not json", headers=h), 400, "JSON")
    assert_error(post(url, json=[1], headers=h), 400, "object")
    assert_error(post(url, json={**ok, "username": 5}, headers=h), 400, "username")
    assert_error(post(url, json={**ok, "dataTimeToLive": 5}, headers=h), 400, "dataTimeToLive")
    assert_error(post(url, json={**ok, "referenceID": "x" * 300}, headers=h), 400, "referenceID")
    wrong_ini = {**jwt(), "iniPassword": b64("falsch")}
    assert_error(post(url, json=ok, headers=wrong_ini), 401, "iniPassword")
    other_card = {**jwt(USER, TID_NEW), **ini}
    assert_error(post(url, json=ok, headers=other_card), 401, "telematikID")
    weak = {**ok, "password": b64("kurz")}
    assert_error(post(url, json=weak, headers=h), 420, "policy")
    foreign = {**ok, "username": "x@other.kim.telematik-test"}
    assert_error(
        post(url, json=foreign, headers={**jwt(foreign["username"]), **ini}), 420, "username"
    )
    assert_error(post(url, json={**ok, "kimVersion": "2.0"}, headers=h), 422, "kimVersion")
    env.call(partial(env.state.add_code, telematik_id=TID_LOCKED), "REF-L", "Start-Kennwort-1!")
    locked = {**ok, "referenceID": "REF-L"}
    assert_error(post(url, json=locked, headers={**jwt(USER, TID_LOCKED), **ini}), 423, "locked")
    assert env.call(env.fd.store.accounts.get, USER) is None  # "in all error cases, not created"


def test_register_taken_address_is_409(registered: Env) -> None:
    """registerAccount 409: the e-mail address is already taken."""
    assert_error(register(registered), 409, "taken")


# --- getAccount / setAccount --------------------------------------------------------------


def test_get_account(registered: Env) -> None:
    """getAccount 200 with the Account schema's fields; regStat registered, maxMailSize fixed."""
    r = registered.client.get(f"{BASE}/account/{USER}", headers=auth())
    assert r.status_code == 200
    body = r.json()
    assert body["username"] == USER
    assert body["regStat"] == "registered"
    assert body["maxMailSize"] == 734003200
    assert body["dataTimeToLive"] == 90
    assert "password" not in body


def test_account_auth_errors(registered: Env) -> None:
    """400 missing password header, 401 wrong password / wrong sub / no JWT, 404 unknown."""
    get = registered.client.get
    url = f"{BASE}/account/{USER}"
    assert_error(get(url, headers=jwt()), 400, "password")
    assert_error(get(url, headers=auth("Falsches-Passwort-1!")), 401, "authentication failed")
    assert_error(get(url, headers={"password": b64(PASSWORD)}), 401, "bearer")
    assert_error(get(url, headers=auth(sub=f"andere@{DOMAIN}")), 401, "sub")
    nobody = f"niemand@{DOMAIN}"
    assert_error(get(f"{BASE}/account/{nobody}", headers=auth(sub=nobody)), 404, "no such")
    assert_error(get(f"{BASE}/account/kein-mail", headers=auth(sub="kein-mail")), 400, "mail")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "", None),
        ("PUT", "", {"dataTimeToLive": 30}),
        ("DELETE", "", None),
        ("PUT", "/revokeDeregistration", None),
        ("GET", "/OTP", None),
        ("POST", "/cert", {"commonName": "praxis-weber-cm"}),
        ("GET", "/outofoffice", None),
        ("PUT", "/outofoffice", {"active": False}),
    ],
)
def test_a_valid_jwt_of_another_card_is_refused_even_with_the_right_password(
    registered: Env, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """The JWT must come from the card that owns the account (api-kim Authentisierung.adoc:
    the Account Manager checks the JWT's "Zugehörigkeit zur KIM-Mail-Adresse"; KOM-LE-A_2187):
    a valid JWT with the right sub, signed by another practice's card (telematikID TID_NEW),
    plus the right password is 401 on every account operation, changes nothing, and does not
    count towards the owner's lockout (KOM-LE-A_2167): the owner's card still gets in after
    more refusals than the lockout allows."""
    url = f"{BASE}/account/{USER}{path}"
    stranger = auth(tid=TID_NEW)
    for _ in range(4):  # the lockout starts at the third failure
        r = registered.client.request(method, url, headers=stranger, json=body)
        assert_error(r, 401, "telematikID")
        assert TID_NEW in r.json()["message"]
        assert "own" in r.json()["message"]
    account = registered.account()
    assert (account.status, account.data_ttl_days) == ("active", 90)
    r = registered.client.get(f"{BASE}/account/{USER}", headers=auth())
    assert r.status_code == 200, r.text
    assert r.json()["regStat"] == "registered"


def test_set_account_changes_only_writable_fields(registered: Env) -> None:
    """setAccount 204: kimVersion, dataTimeToLive, password change (KOM-LE-A_2165); regStat etc.
    are ignored; 420 weak password (KOM-LE-A_2163), 422 unknown kimVersion, 400 wrong type."""
    put = registered.client.put
    url = f"{BASE}/account/{USER}"
    body = {
        "kimVersion": "1.0",
        "dataTimeToLive": 20,
        "regStat": "deregistered",
        "maxMailSize": 1,
        "username": "other@x.de",
        "password": b64(NEW_PASSWORD),
    }
    assert put(url, json=body, headers=auth()).status_code == 204
    account = registered.account()
    assert (account.kim_version, account.data_ttl_days, account.status) == ("1.0", 20, "active")
    assert registered.call(
        partial(registered.fd.auth.authenticate, client="127.0.0.1"), USER, NEW_PASSWORD
    ).ok
    entry = registered.directory.find_by_mail(USER)
    assert entry is not None
    assert entry.fachdaten[DOMAIN][0].version == "1.0"
    h = auth(NEW_PASSWORD)
    assert_error(put(url, json={"password": b64("schwach")}, headers=h), 420, "policy")
    assert_error(put(url, json={"kimVersion": "9.9"}, headers=h), 422, "kimVersion")
    assert_error(put(url, json={"dataTimeToLive": "x"}, headers=h), 400, "dataTimeToLive")
    assert put(url, json={"noVzdMailEntry": True}, headers=h).status_code == 204
    assert registered.directory.find_by_mail(USER) is None


def test_a_third_party_can_neither_change_nor_delete_the_password(registered: Env) -> None:
    """KOM-LE-A_2166: setAccount with a new password and deregisterAccount need the account's
    own password and a JWT for the account: with a wrong password (401), with a token for
    another address (401) or without a token (401) nothing changes, and the holder's password
    keeps working."""
    c = registered.client
    url = f"{BASE}/account/{USER}"
    change = {"password": b64(NEW_PASSWORD)}
    attempts = [
        auth("Falsches-Passwort-1!"),
        auth(sub=f"andere@{DOMAIN}", tid=TID_NEW),
        {"password": b64(PASSWORD)},
    ]
    for headers in attempts:
        assert_error(c.put(url, json=change, headers=headers), 401, "")
        assert_error(c.delete(url, headers=headers), 401, "")
    account = registered.account()
    assert account.status == "active"
    authenticate = partial(registered.fd.auth.authenticate, client="127.0.0.1")
    assert registered.call(authenticate, USER, PASSWORD).ok
    assert not registered.call(authenticate, USER, NEW_PASSWORD).ok


def test_kim_version_1_5_plus_is_the_large_mail_consent(registered: Env) -> None:
    """A_23505 (the Account Manager's side): setAccount takes kimVersion "1.5+" (consent to
    large mails) as well as "1.5", stores it and publishes it in the account's VZD entry."""
    url = f"{BASE}/account/{USER}"
    for version in ("1.5", "1.5+"):
        assert (
            registered.client.put(url, json={"kimVersion": version}, headers=auth()).status_code
            == 204
        )
        assert registered.account().kim_version == version
        entry = registered.directory.find_by_mail(USER)
        assert entry is not None
        assert entry.fachdaten[DOMAIN][0].version == version


# --- deregisterAccount / revokeDeregistration ---------------------------------------------


def test_deregister_and_revoke(registered: Env) -> None:
    """deregisterAccount 204 sets regStat deregistered + deregDate and removes the address from
    the VZD (KOM-LE-A_2149/2150, KOM-LE-A_2156/2157); revokeDeregistration 204 undoes it, 403
    when not deregistered."""
    c = registered.client
    url = f"{BASE}/account/{USER}"
    assert_error(c.put(f"{url}/revokeDeregistration", headers=auth()), 403, "not deregistered")
    assert c.delete(url, headers=auth()).status_code == 204
    got = c.get(url, headers=auth()).json()
    assert got["regStat"] == "deregistered"
    assert got["deregDate"] == int((registered.now + dt.timedelta(days=30)).timestamp())
    assert registered.directory.find_by_mail(USER) is None
    assert registered.account().status == "deregistered"
    assert c.put(f"{url}/revokeDeregistration", headers=auth()).status_code == 204
    assert registered.account().status == "active"
    assert registered.directory.find_by_mail(USER) is not None
    assert_error(c.delete(f"{BASE}/account/x@{DOMAIN}", headers=auth(sub=f"x@{DOMAIN}")), 404, "")


def test_deregistered_account_is_refused_as_smtp_recipient(registered: Env) -> None:
    """KOM-LE-A_2149: after deregisterAccount the Fachdienst refuses mail for the account
    (550 5.2.1), with the same store check its SMTP session uses; revoking lifts it."""
    from kim_appliance.fachdienst import rules

    store = registered.fd.store

    def rcpt() -> rules.Refusal | None:
        account = registered.call(store.accounts.get, USER)
        return rules.check_rcpt(
            USER,
            local_domains={DOMAIN},
            relay_domains=(),
            mailbox_exists=lambda a: account is not None,
            mailbox_active=lambda a: getattr(account, "status", "") == "active",
        )

    assert rcpt() is None
    registered.client.delete(f"{BASE}/account/{USER}", headers=auth())
    refusal = rcpt()
    assert refusal is not None
    assert "deregistered" in str(refusal)
    registered.client.put(f"{BASE}/account/{USER}/revokeDeregistration", headers=auth())
    assert rcpt() is None


# --- getOTP / setTID ----------------------------------------------------------------------


def test_otp_and_set_tid_move_the_address(registered: Env) -> None:
    """getOTP 200 (a fresh OTP cancels the older one); setTID 204 moves the address to the new
    card's VZD entry (digest §3.3); 403 invalid OTP, 408 expired OTP, 400 missing otp."""
    c = registered.client
    url = f"{BASE}/account/{USER}"
    first = c.get(f"{url}/OTP", headers=auth()).json()["otp"]
    second = c.get(f"{url}/OTP", headers=auth()).json()["otp"]
    new_card = auth(tid=TID_NEW)
    assert_error(c.put(f"{url}/telematikID", headers=new_card), 400, "otp")
    assert_error(c.put(f"{url}/telematikID", headers={**new_card, "otp": first}), 403, "otp")
    registered.now += dt.timedelta(days=8)
    assert_error(c.put(f"{url}/telematikID", headers={**new_card, "otp": second}), 408, "expired")
    registered.now -= dt.timedelta(days=8)
    third = c.get(f"{url}/OTP", headers=auth()).json()["otp"]
    assert c.put(f"{url}/telematikID", headers={**new_card, "otp": third}).status_code == 204
    entry = registered.directory.find_by_mail(USER)
    assert entry is not None
    assert entry.telematik_id == TID_NEW
    assert registered.account().telematik_id == TID_NEW
    # one-time: the same OTP does not work twice
    assert_error(c.put(f"{url}/telematikID", headers={**new_card, "otp": third}), 403, "otp")


def test_set_tid_to_locked_entry_is_423(registered: Env) -> None:
    """setTID 423: the new card's VZD entry is inactive."""
    c = registered.client
    url = f"{BASE}/account/{USER}"
    otp = c.get(f"{url}/OTP", headers=auth()).json()["otp"]
    r = c.put(f"{url}/telematikID", headers={**auth(tid=TID_LOCKED), "otp": otp})
    assert_error(r, 423, "inactive")
    assert registered.account().telematik_id == TID


# --- VZD errors (502), internal errors (500), retired addresses ---------------------------


def test_vzd_refusal_is_502_and_nothing_changes(env: Env) -> None:
    """registerAccount 502: the VZD refuses the Fachdaten (maxKOMLEadr of the entry reached,
    digest §4.2 400 "maxKOMLEadr wurde überschritten"); no account is created and the
    registration code stays usable."""
    entry = env.directory.get(TID)
    from dataclasses import replace

    env.call(env.directory.put_entry, replace(entry, max_kom_le_adr=0))
    assert_error(register(env), 502, "VZD")
    assert env.call(env.fd.store.accounts.get, USER) is None
    code = env.call(env.state.get_code, "REF-1")
    assert code is not None
    assert code.used_by is None


def test_set_tid_to_a_card_without_vzd_entry_is_502(registered: Env) -> None:
    """setTID 502: the new card's Telematik-ID has no VZD entry (VZD 404 behind the Account
    Manager); the address stays where it was."""
    c = registered.client
    url = f"{BASE}/account/{USER}"
    otp = c.get(f"{url}/OTP", headers=auth()).json()["otp"]
    r = c.put(f"{url}/telematikID", headers={**auth(tid="1-unknown-card"), "otp": otp})
    assert_error(r, 502, "VZD")
    assert registered.account().telematik_id == TID
    entry = registered.directory.find_by_mail(USER)
    assert entry is not None
    assert entry.telematik_id == TID


def test_revoke_when_the_vzd_refuses_is_502_and_stays_deregistered(registered: Env) -> None:
    """revokeDeregistration 502: the address cannot go back into the VZD entry (it is full);
    the account stays deregistered with its deregDate (KOM-LE-A_2149)."""
    from dataclasses import replace

    c = registered.client
    url = f"{BASE}/account/{USER}"
    assert c.delete(url, headers=auth()).status_code == 204
    before = registered.account().dereg_date
    registered.call(
        registered.directory.put_entry, replace(registered.directory.get(TID), max_kom_le_adr=0)
    )
    assert_error(c.put(f"{url}/revokeDeregistration", headers=auth()), 502, "VZD")
    assert registered.account().status == "deregistered"
    assert registered.account().dereg_date == before


def test_unexpected_error_is_500_with_the_error_body(
    registered: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """500 (every operation documents it): an internal failure is answered with the
    CommonSchemas Error body and a traceId, never with a stack trace."""

    async def broken(address: str) -> None:
        raise RuntimeError("disk on fire /secret/path")

    monkeypatch.setattr(registered.fd.store.accounts, "get", broken)
    r = registered.client.get(f"{BASE}/account/{USER}", headers=auth())
    assert r.status_code == 500
    body = r.json()
    assert set(body) == {"message", "traceId"}
    assert "/secret/path" not in r.text


def test_purged_address_goes_back_only_to_its_telematik_id(env: Env) -> None:
    """A_19464-02 (digest §3.2): after the purge (KOM-LE-A_2155) the address is never given to
    another Telematik-ID (409), but the same one may register it again (204)."""
    store = env.fd.store
    env.call(store.accounts.create, Account(USER, _quick_hash(PASSWORD), TID, "Praxis Weber"))
    env.call(partial(store.accounts.purge, now=env.now), USER)
    env.call(partial(env.state.add_code, telematik_id=TID_NEW), "REF-2", "Start-Kennwort-1!")
    r = env.client.post(
        f"{BASE}/account",
        json={"referenceID": "REF-2", "username": USER, "password": b64(PASSWORD)},
        headers={**jwt(USER, TID_NEW), "iniPassword": b64("Start-Kennwort-1!")},
    )
    assert_error(r, 409, "not available")
    assert register(env).status_code == 204
    assert env.account().telematik_id == TID


# --- createCert ---------------------------------------------------------------------------


def test_create_cert_returns_pkcs12_with_cm_certificate(registered: Env) -> None:
    """createCert 200: a PKCS#12 with a C.CM.TLS-CS certificate, CN <commonName>#CM, protected
    with certPassword (A_19468-03); 400 without commonName or with a bad certPassword."""
    c = registered.client
    url = f"{BASE}/account/{USER}/cert"
    r = c.post(
        url, json={"commonName": "praxis-weber", "certPassword": b64("p12-pw")}, headers=auth()
    )
    assert r.status_code == 200, r.text
    p12 = base64.b64decode(r.json()["file"])
    with pytest.raises(ValueError, match=r"(?i)password|decrypt"):
        pkcs12.load_key_and_certificates(p12, None)
    key, cert, _chain = pkcs12.load_key_and_certificates(p12, b"p12-pw")
    assert key is not None
    assert cert is not None
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == "praxis-weber#CM"
    assert profile_of(cert) is CertProfile.C_CM_TLS_CS
    open_p12 = c.post(url, json={"commonName": "x"}, headers=auth())
    assert pkcs12.load_key_and_certificates(base64.b64decode(open_p12.json()["file"]), None)[1]
    assert_error(c.post(url, json={}, headers=auth()), 400, "commonName")
    bad = {"commonName": "x", "certPassword": "***"}
    assert_error(c.post(url, json=bad, headers=auth()), 400, "certPassword")


# --- get/updateOutOfOffice ----------------------------------------------------------------


def test_out_of_office_rules(registered: Env) -> None:
    """digest §3.3: getOutOfOffice before any call is {"active": false}; the first call needs
    every field; active=false alone keeps the fields; active=true needs every field; 400 on
    a message over 2048 characters, a bad date or end before start."""
    c = registered.client
    url = f"{BASE}/account/{USER}/outofoffice"
    assert c.get(url, headers=auth()).json() == {"active": False}
    assert_error(c.put(url, json={"active": False}, headers=auth()), 400, "first call")
    note = {
        "startDate": "2025-07-20T17:32:28Z",
        "endDate": "2025-07-28T17:32:28Z",
        "message": "Praxis geschlossen",
        "active": True,
    }
    assert c.put(url, json=note, headers=auth()).status_code == 204
    assert c.get(url, headers=auth()).json() == note
    assert registered.account().out_of_office.active
    assert c.put(url, json={"active": False}, headers=auth()).status_code == 204
    assert c.get(url, headers=auth()).json() == {**note, "active": False}
    assert_error(c.put(url, json={"active": True}, headers=auth()), 400, "active=true")
    # a missing "active" means false
    no_active = {k: v for k, v in note.items() if k != "active"}
    assert c.put(url, json=no_active, headers=auth()).status_code == 204
    assert c.get(url, headers=auth()).json()["active"] is False
    long = {**note, "message": "x" * 2049}
    assert_error(c.put(url, json=long, headers=auth()), 400, "2048")
    assert_error(c.put(url, json={**note, "startDate": "gestern"}, headers=auth()), 400, "RFC 3339")
    swapped = {**note, "startDate": note["endDate"], "endDate": note["startDate"]}
    assert_error(c.put(url, json=swapped, headers=auth()), 400, "before")
    assert_error(c.put(url, json={**note, "active": "yes"}, headers=auth()), 400, "active")


# --- schemathesis: stateless run against gematik's file -----------------------------------


ACCOUNT_MANAGER = schemathesis.openapi.from_path(OPENAPI_DIR / "AccountManager.yaml")
ACCOUNT_MANAGER.config.update(base_url="http://testserver" + BASE)


@ACCOUNT_MANAGER.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_account_manager_conforms(case, registered: Env) -> None:  # type: ignore[no-untyped-def]
    """Every generated request (with a valid JWT and password) gets a documented status code,
    content type and body schema; never a 500 (issue 5, AccountManager.yaml)."""
    headers = dict(case.headers or {})
    if case.meta is None or case.meta.generation.mode.name == "POSITIVE":
        # a schema-valid case gets a real account, JWT and password; a negative case keeps
        # whatever it broke (and gets the JWT only, so that the 4xx is about its defect)
        if "username" in case.path_parameters:
            case.path_parameters["username"] = USER
        if "password" in headers:
            headers["password"] = b64(PASSWORD)
    headers.update(jwt())
    response = case.call(base_url=registered.url + BASE, headers=headers)
    # schema-valid but semantically empty values (referenceID "", password "") get the
    # documented 400 "error in the input data": positive_data_acceptance does not apply
    case.validate_response(response, excluded_checks=[positive_data_acceptance, ignored_auth])
    assert response.status_code < 500, response.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.datetime(140, 7, 29, 18, 39, 33, tzinfo=dt.UTC), "0140-07-29T18:39:33Z"),
        (dt.datetime(2026, 11, 29, 4, 0, 0, 123456, tzinfo=dt.UTC), "2026-11-29T04:00:00Z"),
        (
            dt.datetime(2026, 1, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2025-12-31T23:00:00Z",
        ),
    ],
)
def test_dates_in_answers_are_rfc3339_date_times(value: dt.datetime, expected: str) -> None:
    """Dates the Account Manager answers with (startDate, endDate, deregDate) are RFC 3339
    date-times as AccountManager.yaml declares, in UTC, even for years below 1000 (a year the
    stateful contract run set through updateOutOfOffice came back as "140-07-29...")."""
    from kim_appliance.fachdienst.account_manager import _rfc3339

    assert _rfc3339(value) == expected


def test_register_with_deep_or_non_finite_json_is_400(env: Env) -> None:
    """Issue 11: a JSON body nested thousands deep (RecursionError in json.loads) or holding
    1e999 / NaN is 400 with the reason, and the API answers the next request."""
    env.call(partial(env.state.add_code, telematik_id=TID), "REF-1", "Start-Kennwort-1!")
    h = {**jwt(), "iniPassword": b64("Start-Kennwort-1!")}
    url = f"{BASE}/account"
    deep = b"[" * 30_000 + b"]" * 30_000
    assert_error(env.client.post(url, content=deep, headers=h), 400, "nested 30000 levels")
    assert_error(
        env.client.post(url, content=b'{"dataTimeToLive": 1e999}', headers=h), 400, "too large"
    )
    assert_error(env.client.post(url, content=b'{"x": NaN}', headers=h), 400, "NaN")
    r = register(env)
    assert r.status_code == 204, r.text
