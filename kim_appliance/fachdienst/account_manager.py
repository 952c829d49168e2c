"""The Account Manager REST API (``I_AccountManager_Service`` v2.4, digest §3.3) as routes.

:func:`account_manager_routes` returns the routes of ``/AccountMgmt/v2.4`` for one Fachdienst:
registerAccount, get/setAccount, deregisterAccount, revokeDeregistration, getOTP, setTID,
createCert and get/updateOutOfOffice, each with the headers, status codes and error body
(``{"message", "traceId"}``, CommonSchemas) of gematik's AccountManager.yaml. Every operation
needs a bearer JWT (KOM-LE-A_2187, digest §1.10) checked by the ``verify_jwt`` callable; account
operations also need the account password (base64 ``password`` header). The lifecycle effects
on the VZD go through the §4.2 maintenance API of :class:`DirectoryStore` with the Fachdienst's
domain as FAD. Blocking work (scrypt, store, key generation) runs in worker threads.
This module must never answer 500 for bad input, never log or echo a password, and never
change an account field the YAML marks read-only.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    NoEncryption,
    pkcs12,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from kim_appliance.directory.entries import KimAddress
from kim_appliance.directory.store import DirectoryError, DirectoryStore
from kim_appliance.fachdienst.account_lifecycle import AccountManagerState, OtpCheck
from kim_appliance.fachdienst.accounts import AuthOutcome, client_of_request
from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.pki.profiles import Algorithm, CertProfile
from kim_appliance.pki.testpki import TestPki
from kim_appliance.protocols.jsonbody import JsonBodyError, load_json_body
from kim_appliance.store.base import (
    KIM_VERSIONS,
    MAX_DATA_TTL_DAYS,
    MIN_DATA_TTL_DAYS,
    Account,
    AccountExists,
    OutOfOffice,
    RegistrationCodeUsed,
)
from kim_appliance.store.passwords import hash_password
from kim_appliance.web.errors import ApiError, JsonUtf8Response, error_response

BASE_PATH = "/AccountMgmt/v2.4"
#: digest §3.3 Account.maxMailSize (read-only, minimum = maximum)
MAX_MAIL_SIZE = 734003200
#: digest §3.2: the password policy ServiceInformation publishes (420 when not met)
PASSWORD_POLICY = re.compile(
    r"^(?=.*[0-9])(?=.*[a-z])(?=.*[A-Z])(?=.*[*.!@#$%^&(){}\[\]:;'<>,?/~_+\-=|\\]).{12,256}$"
)
#: CommonSchemas Password/Username maxLength
MAX_HEADER_CHARS = 256
MAX_BODY_BYTES = 64 * 1024
MAX_OOO_MESSAGE = 2048
#: KIM version for a registration without ``kimVersion``: large mails need explicit consent
#: (``1.5+``, A_23505), so the default is plain 1.5
DEFAULT_KIM_VERSION = "1.5"
#: deregDate = deregistration + this; revocable "for at least 30 days" (digest §3.2)
DEREGISTRATION_GRACE = dt.timedelta(days=30)
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}$")


class JwtVerifier(Protocol):
    """Verifies a compact JWS (signature, certificate path, lifetime) and returns its claims.

    Raises any exception when the token is not acceptable. The claims used here: ``sub`` (the
    KIM address the call is for) and ``telematikID`` (of the signing AUT certificate)."""

    def __call__(self, token: str) -> Mapping[str, Any]: ...


def _rfc3339(value: dt.datetime) -> str:
    # isoformat, not strftime("%Y"): glibc writes the year 140 as "140", which is no RFC 3339
    # date-time (found by the stateful contract run)
    utc = value.astimezone(dt.UTC).replace(tzinfo=None, microsecond=0)
    return utc.isoformat() + "Z"


# --- request parsing ----------------------------------------------------------------------


def _b64_header(request: Request, name: str) -> str:
    """A required base64 header decoded as UTF-8 (digest §3.3: at most 256 characters)."""
    raw = request.headers.get(name)
    if raw is None:
        raise ApiError(400, f"header {name}: missing")
    return _b64_text(raw, f"header {name}")


def _b64_text(raw: str, what: str) -> str:
    if len(raw) > MAX_HEADER_CHARS:
        raise ApiError(400, f"{what}: longer than {MAX_HEADER_CHARS} characters")
    try:
        text = base64.b64decode(raw.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{what}: not base64 of UTF-8 text") from None
    if not text:
        raise ApiError(400, f"{what}: empty")
    return text


async def _json_object(request: Request, *, required: bool) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(400, f"request body: larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        if required:
            raise ApiError(400, "request body: missing (a JSON object is required)")
        return {}
    try:
        value = load_json_body(body, max_bytes=MAX_BODY_BYTES)
    except JsonBodyError as exc:
        raise ApiError(400, f"request body: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ApiError(400, "request body: must be a JSON object")
    return value


def _field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``body[name]`` if present and not null, checked against the JSON type ``kind``."""
    if name not in body:
        return None
    value = body[name]
    if value is None:  # no field of gematik's schemas is nullable
        raise ApiError(400, f"{name}: null is not allowed")
    if isinstance(value, bool) and kind is not bool:
        raise ApiError(400, f"{name}: wrong type (boolean)")
    if not isinstance(value, kind):
        raise ApiError(400, f"{name}: wrong type ({type(value).__name__})")
    return value


def _username(value: str, what: str) -> str:
    if len(value) > MAX_HEADER_CHARS or not _EMAIL.match(value):
        raise ApiError(400, f"{what}: {value[:80]!r} is not a mail address of ≤256 characters")
    return value


def _kim_version(body: Mapping[str, Any]) -> str | None:
    version: str | None = _field(body, "kimVersion", str)
    if version is None:
        return None
    if len(version) > 4:
        raise ApiError(400, f"kimVersion: {version[:16]!r} is longer than 4 characters")
    if version not in KIM_VERSIONS:
        raise ApiError(
            422, f"kimVersion: {version!r} is not supported; use one of {sorted(KIM_VERSIONS)}"
        )
    return version


def _ttl(body: Mapping[str, Any]) -> int | None:
    ttl = _field(body, "dataTimeToLive", int)
    if ttl is not None and not MIN_DATA_TTL_DAYS <= ttl <= MAX_DATA_TTL_DAYS:
        raise ApiError(
            400, f"dataTimeToLive: {ttl} is outside {MIN_DATA_TTL_DAYS}..{MAX_DATA_TTL_DAYS} days"
        )
    return int(ttl) if ttl is not None else None


def _new_password(body: Mapping[str, Any]) -> str | None:
    raw = _field(body, "password", str)
    if raw is None:
        return None
    password = _b64_text(raw, "password")
    if not PASSWORD_POLICY.match(password):
        raise ApiError(
            420,
            "password: does not comply with the password policy (12-256 characters with a "
            "digit, a lower-case and an upper-case letter and a special character)",
        )
    return password


def _date_time(body: Mapping[str, Any], name: str) -> dt.datetime | None:
    raw = _field(body, name, str)
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise ApiError(400, f"{name}: {raw[:40]!r} is not an RFC 3339 date-time") from None
    if value.tzinfo is None:
        raise ApiError(400, f"{name}: {raw[:40]!r} has no time zone offset (RFC 3339)")
    return value.astimezone(dt.UTC)


# --- the operations -----------------------------------------------------------------------


Handler = Callable[[Request], Awaitable[Response]]


class _AccountManager:
    def __init__(
        self,
        fd: Fachdienst,
        directory: DirectoryStore,
        pki: TestPki,
        verify_jwt: JwtVerifier,
        state: AccountManagerState,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.fd = fd
        self.directory = directory
        self.pki = pki
        self.verify_jwt = verify_jwt
        self.state = state
        self.clock = clock

    # -- common checks --

    def _claims(self, request: Request) -> Mapping[str, Any]:
        """KOM-LE-A_2187: a bearer JWT on every operation (401 when missing or invalid)."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Authorization: a bearer JWT is required (KOM-LE-A_2187)")
        try:
            claims = self.verify_jwt(token.strip())
        except Exception as exc:  # whatever the verifier refuses is an authentication failure
            raise ApiError(401, f"Authorization: JWT not accepted: {exc}") from None
        return claims

    async def _account(
        self, request: Request, *, own_card: bool = True
    ) -> tuple[Account, Mapping[str, Any]]:
        """JWT (sub = the account), the account (404), the card (401) and the password (401).

        The JWT must be signed by the card that owns the account: its ``telematikID`` (which
        the verifier has matched to the signing AUT certificate) must be the account's
        Telematik-ID. The Account Manager checks the JWT for "Gültigkeit und Zugehörigkeit zur
        KIM-Mail-Adresse (Account)" (api-kim docs/Authentisierung.adoc), and AccountManager.yaml
        answers a JWT that does not match with 401 (registerAccount: "the referenceID does not
        match the signature's AUT certificate"). Without this, any card of the TI plus a leaked
        password would manage another practice's account. The check comes before the password
        check: a stranger's card neither learns whether a password is right nor counts towards
        the owner's lockout (KOM-LE-A_2167). ``own_card=False`` only for setTID, whose JWT comes
        from the new card by design (the OTP proves the old one)."""
        claims = self._claims(request)  # 401 before any 400: no token, no answer
        username = _username(request.path_params["username"], "username")
        sub = claims.get("sub")
        if not isinstance(sub, str) or sub.lower() != username.lower():
            raise ApiError(401, f"JWT: sub {sub!r} is not the account {username}")
        password = _b64_header(request, "password")
        account = await self.fd.local_account(username)
        if account is None:
            raise ApiError(404, f"account {username}: no such account at {self.fd.domain}")
        if own_card and claims.get("telematikID") != account.telematik_id:
            raise ApiError(
                401,
                f"JWT: signed by the card of telematikID {claims.get('telematikID')!r}, not by "
                f"the card that owns {username}; sign with that practice's own SMC-B or HBA",
            )
        result = await self.fd.auth.authenticate(
            username, password, client=client_of_request(request)
        )
        if result.outcome is not AuthOutcome.OK:
            raise ApiError(401, result.text)
        return account, claims

    def _ours(self, username: str) -> bool:
        return username.rpartition("@")[2].lower() == self.fd.domain.lower()

    def _vzd_entry_writable(self, telematik_id: str) -> None:
        try:
            entry = self.directory.get(telematik_id)
        except DirectoryError as exc:
            raise ApiError(502, f"VZD: {exc.message}") from None
        if not entry.active:
            raise ApiError(423, f"VZD entry of {telematik_id} is inactive (locked)")

    async def _vzd_set(self, account: Account, *, published: bool = True) -> None:
        """Write ``mail`` + komLeData/kimData for the account (hidden with noVzdMailEntry)."""
        self._vzd_entry_writable(account.telematik_id)
        address = KimAddress(
            account.address,
            account.kim_version,
            no_vzd_mail_entry=account.no_vzd_mail_entry or not published,
        )
        try:
            await self.directory.set_address(account.telematik_id, self.fd.domain, address)
        except DirectoryError as exc:
            raise ApiError(502, f"VZD: {exc.message}") from None

    async def _vzd_remove(self, telematik_id: str, address: str) -> None:
        try:
            await self.directory.remove_address(telematik_id, self.fd.domain, address)
        except DirectoryError as exc:
            if exc.status != 404:  # already gone is fine
                raise ApiError(502, f"VZD: {exc.message}") from None

    # -- registerAccount --

    async def register(self, request: Request) -> Response:
        claims = self._claims(request)
        ini_password = _b64_header(request, "iniPassword")
        body = await _json_object(request, required=True)
        reference_id = _field(body, "referenceID", str)
        if reference_id is None or len(reference_id) > 256:
            raise ApiError(400, "referenceID: missing or longer than 256 characters")
        raw_username = _field(body, "username", str)
        if raw_username is None:
            raise ApiError(400, "username: missing")
        username = _username(raw_username, "username")
        version = _kim_version(body) or DEFAULT_KIM_VERSION
        ttl = _ttl(body) or self.fd.config.data_ttl_days
        no_vzd = bool(_field(body, "noVzdMailEntry", bool))
        password = _new_password(body)
        if password is None:
            raise ApiError(400, "password: missing (the initial password must be replaced)")
        code = await self.state.check_code(reference_id, ini_password)
        if code is None:
            raise ApiError(401, "referenceID/iniPassword: unknown, used or wrong")
        telematik_id = claims.get("telematikID")
        if not isinstance(telematik_id, str) or not telematik_id:
            raise ApiError(401, "JWT: no telematikID of the signing card")
        if code.telematik_id is not None and code.telematik_id != telematik_id:
            raise ApiError(401, f"referenceID: not issued for telematikID {telematik_id}")
        sub = claims.get("sub")
        if isinstance(sub, str) and sub.lower() != username.lower():
            raise ApiError(401, f"JWT: sub {sub!r} is not the account {username}")
        if not self._ours(username):
            raise ApiError(420, f"username: {username} is not an address of {self.fd.domain}")
        if await self.fd.store.accounts.get(username) is not None:
            raise ApiError(409, f"username: {username} is already taken")
        retired_for = await self.fd.store.accounts.retired_telematik_id(username)
        if retired_for is not None and retired_for != telematik_id:
            # A_19464-02: a deleted address is never given out again, except to the same
            # Telematik-ID (digest §3.2)
            raise ApiError(409, f"username: {username} was used before and is not available")
        if self.directory.find_by_mail(username) is not None:
            raise ApiError(409, f"username: {username} is already in the VZD")
        self._vzd_entry_writable(telematik_id)
        display_name = self.directory.get(telematik_id).display_name
        password_hash = await run_in_threadpool(hash_password, password)
        account = Account(
            address=username,
            password_hash=password_hash,
            telematik_id=telematik_id,
            display_name=display_name,
            data_ttl_days=ttl,
            kim_version=version,
            no_vzd_mail_entry=no_vzd,
        )
        await self._vzd_set(account)
        try:
            # the account and the code's use in one transaction: two registrations with one
            # code cannot both succeed
            await self.fd.store.accounts.create(account, reference_id=reference_id)
        except AccountExists:
            await self._vzd_remove(telematik_id, username)
            raise ApiError(409, f"username: {username} is already taken") from None
        except RegistrationCodeUsed:
            await self._vzd_remove(telematik_id, username)
            raise ApiError(401, "referenceID/iniPassword: unknown, used or wrong") from None
        return Response(status_code=204)

    # -- get/setAccount, deregisterAccount, revokeDeregistration --

    async def get_account(self, request: Request) -> Response:
        account, _ = await self._account(request)
        code = await self.state.code_of(account.address)
        body: dict[str, Any] = {
            "username": account.address,
            "kimVersion": account.kim_version,
            "regStat": "deregistered" if account.status == "deregistered" else "registered",
            "dataTimeToLive": account.data_ttl_days,
            "maxMailSize": MAX_MAIL_SIZE,
            "noVzdMailEntry": account.no_vzd_mail_entry,
        }
        if code is not None:
            body["referenceID"] = code.reference_id
        if account.dereg_date is not None:
            body["deregDate"] = int(account.dereg_date.timestamp())
        return JsonUtf8Response(body)

    async def set_account(self, request: Request) -> Response:
        account, _ = await self._account(request)
        body = await _json_object(request, required=False)
        # only the writable fields (digest §3.3); referenceID, username, regStat, deregDate and
        # maxMailSize are ignored as the YAML says they cannot be changed here
        for name, kind in (
            ("referenceID", str),
            ("username", str),
            ("regStat", str),
            ("deregDate", int),
            ("maxMailSize", int),
        ):
            _field(body, name, kind)  # read-only here, but a wrong type is still a 400
        changes: dict[str, object] = {}
        version = _kim_version(body)
        if version is not None:
            changes["kim_version"] = version
        ttl = _ttl(body)
        if ttl is not None:
            changes["data_ttl_days"] = ttl
        no_vzd = _field(body, "noVzdMailEntry", bool)
        if no_vzd is not None:
            changes["no_vzd_mail_entry"] = no_vzd
        password = _new_password(body)
        if password is not None:
            changes["password_hash"] = await run_in_threadpool(hash_password, password)
        if not changes:
            return Response(status_code=204)
        if ("kim_version" in changes or "no_vzd_mail_entry" in changes) and (
            account.status != "deregistered"
        ):
            new_vzd = Account(**{**_account_kwargs(account), **changes})
            await self._vzd_set(new_vzd)
        await self.fd.store.accounts.update(account.address, **changes)
        return Response(status_code=204)

    async def deregister(self, request: Request) -> Response:
        account, _ = await self._account(request)
        if account.status == "deregistered":
            return Response(status_code=204)  # idempotent: the first deregDate stays
        # KOM-LE-A_2149/2150: no sending or receiving from now on, POP3 until deregDate; the
        # address leaves the VZD so that nobody encrypts for it any more
        await self._vzd_remove(account.telematik_id, account.address)
        dereg_date = self.clock() + DEREGISTRATION_GRACE
        await self.fd.store.accounts.update(
            account.address, status="deregistered", dereg_date=dereg_date
        )
        return Response(status_code=204)

    async def revoke(self, request: Request) -> Response:
        account, _ = await self._account(request)
        if account.status != "deregistered":
            raise ApiError(403, f"account {account.address}: not deregistered")
        restored = await self.fd.store.accounts.update(
            account.address, status="active", dereg_date=None
        )
        try:
            await self._vzd_set(restored)
        except ApiError:
            await self.fd.store.accounts.update(
                account.address, status="deregistered", dereg_date=account.dereg_date
            )
            raise
        return Response(status_code=204)

    # -- getOTP / setTID --

    async def get_otp(self, request: Request) -> Response:
        account, _ = await self._account(request)
        otp = await self.state.new_otp(account.address, self.clock())
        encoded = base64.b64encode(otp.encode("ascii")).decode("ascii")
        return JsonUtf8Response({"otp": encoded})

    async def set_tid(self, request: Request) -> Response:
        account, claims = await self._account(request, own_card=False)
        otp = _b64_header(request, "otp")
        new_tid = claims.get("telematikID")
        if not isinstance(new_tid, str) or not new_tid:
            raise ApiError(401, "JWT: no telematikID of the new card")
        outcome = await self.state.check_otp(account.address, otp, self.clock())
        if outcome == OtpCheck.INVALID:
            raise ApiError(403, "otp: not valid for this account (call getOTP first)")
        if outcome == OtpCheck.EXPIRED:
            raise ApiError(408, "otp: expired (valid for one week); call getOTP again")
        if new_tid == account.telematik_id:
            return Response(status_code=204)
        self._vzd_entry_writable(new_tid)
        moved = Account(**{**_account_kwargs(account), "telematik_id": new_tid})
        if account.status != "deregistered":
            # the VZD holds an address once: take it out of the old entry, then into the new
            # one, and put it back where it was if that fails
            await self._vzd_remove(account.telematik_id, account.address)
            try:
                await self._vzd_set(moved)
            except ApiError:
                await self._vzd_set(account)
                raise
        await self.fd.store.accounts.update(account.address, telematik_id=new_tid)
        return Response(status_code=204)

    # -- createCert --

    async def create_cert(self, request: Request) -> Response:
        account, _ = await self._account(request)
        body = await _json_object(request, required=True)
        common_name = _field(body, "commonName", str)
        if not common_name or len(common_name) > 61:
            raise ApiError(400, "commonName: missing, empty or longer than 61 characters")
        raw_password = _field(body, "certPassword", str)
        cert_password = _b64_text(raw_password, "certPassword") if raw_password else None

        def make() -> bytes:
            issued = self.pki.issue(
                CertProfile.C_CM_TLS_CS,
                Algorithm.RSA,
                common_name=f"{common_name}#CM",
                telematik_id=account.telematik_id,
            )
            ca = self.pki.issuer_of(issued.certificate)
            chain = [ca.certificate] if ca is not None else None
            encryption = (
                BestAvailableEncryption(cert_password.encode("utf-8"))
                if cert_password
                else NoEncryption()
            )
            return pkcs12.serialize_key_and_certificates(
                f"{common_name}#CM".encode(),
                issued.private_key,
                issued.certificate,
                chain,
                encryption,
            )

        try:
            p12 = await run_in_threadpool(make)
        except ValueError as exc:
            raise ApiError(400, f"commonName: cannot be used in a certificate: {exc}") from None
        return JsonUtf8Response({"file": base64.b64encode(p12).decode("ascii")})

    # -- get/updateOutOfOffice --

    async def get_ooo(self, request: Request) -> Response:
        account, _ = await self._account(request)
        note = account.out_of_office
        if note.start is None and note.message is None:
            return JsonUtf8Response({"active": False})  # digest §3.3
        body: dict[str, Any] = {"active": note.active}
        if note.start is not None:
            body["startDate"] = _rfc3339(note.start)
        if note.end is not None:
            body["endDate"] = _rfc3339(note.end)
        if note.message is not None:
            body["message"] = note.message
        return JsonUtf8Response(body)

    async def update_ooo(self, request: Request) -> Response:
        account, _ = await self._account(request)
        body = await _json_object(request, required=True)
        active = _field(body, "active", bool)
        start = _date_time(body, "startDate")
        end = _date_time(body, "endDate")
        message = _field(body, "message", str)
        if message is not None and len(message) > MAX_OOO_MESSAGE:
            raise ApiError(400, f"message: longer than {MAX_OOO_MESSAGE} characters")
        # digest §3.3 rules: a missing active means false; the first call carries every field;
        # active=true needs every field; active=false alone keeps the other fields
        active = bool(active)
        old = account.out_of_office
        first = old.start is None and old.message is None
        complete = start is not None and end is not None and message is not None
        if (first or active) and not complete:
            missing = [
                n
                for n, v in (("startDate", start), ("endDate", end), ("message", message))
                if v is None
            ]
            why = "the first call" if first else "active=true"
            raise ApiError(400, f"{', '.join(missing)}: missing ({why} needs every field)")
        start = start or old.start
        end = end or old.end
        message = message if message is not None else old.message
        if start is not None and end is not None and end < start:
            raise ApiError(400, "endDate: before startDate")
        note = OutOfOffice(active=active, start=start, end=end, message=message)
        await self.fd.store.accounts.update(account.address, out_of_office=note)
        return Response(status_code=204)


def _account_kwargs(account: Account) -> dict[str, Any]:
    return {f: getattr(account, f) for f in Account.__dataclass_fields__}


def _endpoint(handler: Handler) -> Handler:
    """Turn :class:`ApiError` into the Error body; anything else is a bug (500 upstream)."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message)

    return run


def _by_method(handlers: Mapping[str, Handler]) -> Handler:
    async def dispatch(request: Request) -> Response:
        return await handlers[request.method](request)

    return dispatch


def account_manager_routes(
    fd: Fachdienst,
    *,
    directory: DirectoryStore,
    pki: TestPki,
    verify_jwt: JwtVerifier,
    state: AccountManagerState | None = None,
    clock: Callable[[], dt.datetime] | None = None,
) -> list[BaseRoute]:
    """The routes of ``/AccountMgmt/v2.4`` (digest §3.3) for ``fd``.

    ``state`` holds the registration codes and OTPs (default: those of ``fd``'s domain in its
    store). ``clock`` defaults to the Fachdienst's. The Fachdienst learns ``directory`` here if
    it has none yet (the retention purge removes purged addresses from it).
    """
    if fd.directory is None:
        fd.directory = directory
    am = _AccountManager(
        fd,
        directory,
        pki,
        verify_jwt,
        state or AccountManagerState(fd.store, fd.domain),
        clock or fd.clock,
    )
    account = "/account/{username}"
    table: dict[str, dict[str, Handler]] = {
        "/account": {"POST": am.register},
        account: {"GET": am.get_account, "PUT": am.set_account, "DELETE": am.deregister},
        f"{account}/revokeDeregistration": {"PUT": am.revoke},
        f"{account}/OTP": {"GET": am.get_otp},
        f"{account}/telematikID": {"PUT": am.set_tid},
        f"{account}/cert": {"POST": am.create_cert},
        f"{account}/outofoffice": {"GET": am.get_ooo, "PUT": am.update_ooo},
    }
    # one Route per path, so that a 405 lists every method of the path in Allow
    routes: list[BaseRoute] = [
        Route(path, _endpoint(_by_method(handlers)), methods=list(handlers))
        for path, handlers in table.items()
    ]
    return [Mount(BASE_PATH, routes=routes)]
