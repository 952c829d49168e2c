"""The administrators' account API of a Fachdienst, behind ``kim-appliance account``.

Mounted at ``/admin/v1`` on each Fachdienst's HTTPS listener. Not a gematik interface: it is how
an operator of this appliance lists and adds mailboxes, sets passwords, deregisters and sets
absence notes without registration codes and card-signed JWTs, and follows a message through
the appliance (``GET /traces``, behind ``kim-appliance trace``). Every request carries
``Authorization: Bearer <token>`` with the token from ``DATA_DIR/admin-token`` (created with
mode 0600 at init): whoever may read the data dir may administer the appliance. Passwords are
stored hashed only (KOM-LE-A_2164); replies never contain them.
"""

from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import replace
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.fachdienst.rules import is_ti_address
from kim_appliance.observe.views import MAX_MESSAGES, find_messages, message_trace
from kim_appliance.protocols.jsonbody import JsonBodyError, load_json_body
from kim_appliance.store import Account, AccountExists, OutOfOffice
from kim_appliance.store.passwords import hash_password
from kim_appliance.web.errors import ApiError, JsonUtf8Response

MAX_BODY = 64 * 1024


def admin_routes(fd: Fachdienst, *, token: str) -> list[BaseRoute]:
    async def authorise(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, "admin token missing or wrong (see DATA_DIR/admin-token)")

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        try:
            data = load_json_body(raw or b"{}", max_bytes=MAX_BODY)
        except JsonBodyError as exc:
            raise ApiError(400, f"body is not acceptable JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "body must be a JSON object")
        return data

    def text(data: dict[str, Any], key: str, *, required: bool = True) -> str | None:
        value = data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise ApiError(400, f"{key}: a non-empty string is required")
        return value

    async def account_of(request: Request) -> Account:
        address = request.path_params["address"]
        account = await fd.local_account(address)
        if account is None:
            raise ApiError(404, f"no mailbox {address} at {fd.domain}")
        return account

    async def list_accounts(request: Request) -> Response:
        await authorise(request)
        accounts = await fd.store.accounts.list(fd.domain)
        return JsonUtf8Response({"accounts": [_public(a) for a in accounts]})

    async def add_account(request: Request) -> Response:
        await authorise(request)
        data = await body(request)
        address = text(data, "address") or ""
        password = text(data, "password") or ""
        if not is_ti_address(address) or address.rpartition("@")[2].lower() != fd.domain:
            raise ApiError(400, f"address: {address} is not a KIM address of {fd.domain}")
        account = Account(
            address=address,
            password_hash=await trio.to_thread.run_sync(hash_password, password),
            telematik_id=text(data, "telematik_id", required=False) or "",
            display_name=text(data, "display_name", required=False) or address,
        )
        try:
            await fd.store.accounts.create(account)
        except AccountExists:
            raise ApiError(409, f"mailbox {address} exists already") from None
        fd.log.info("admin: mailbox %s added", address)
        return JsonUtf8Response(_public(account), status_code=201)

    async def set_password(request: Request) -> Response:
        await authorise(request)
        account = await account_of(request)
        password = text(await body(request), "password") or ""
        hashed = await trio.to_thread.run_sync(hash_password, password)
        await fd.store.accounts.update(account.address, password_hash=hashed)
        # a new password unlocks the account for every client (KOM-LE-A_2168)
        await fd.store.logins.clear(account.address)
        fd.log.info("admin: password of %s set", account.address)
        return Response(status_code=204)

    async def deregister(request: Request) -> Response:
        await authorise(request)
        account = await account_of(request)
        data = await body(request)
        days = data.get("pop3_days", 30)
        if not isinstance(days, int) or not 0 <= days <= 365:
            raise ApiError(400, "pop3_days: an integer 0..365 is required")
        until = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
        updated = await fd.store.accounts.update(
            account.address, status="deregistered", dereg_date=until
        )
        fd.log.info("admin: mailbox %s deregistered", account.address)
        return JsonUtf8Response(_public(updated))

    async def out_of_office(request: Request) -> Response:
        await authorise(request)
        account = await account_of(request)
        data = await body(request)
        active = data.get("active")
        if not isinstance(active, bool):
            raise ApiError(400, "active: true or false is required")
        if not active:
            note = replace(account.out_of_office, active=False)
        else:
            message = text(data, "message") or ""
            now = dt.datetime.now(dt.UTC)
            until_text = text(data, "until", required=False)
            try:
                until = (
                    dt.datetime.fromisoformat(until_text)
                    if until_text
                    else now + dt.timedelta(days=365)
                )
            except ValueError:
                raise ApiError(400, f"until: {until_text!r} is not an ISO 8601 date") from None
            if until.tzinfo is None:
                until = until.replace(tzinfo=dt.UTC)
            if until <= now:
                raise ApiError(400, "until: lies in the past")
            try:
                note = OutOfOffice(active=True, start=now, end=until, message=message)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
        updated = await fd.store.accounts.update(account.address, out_of_office=note)
        return JsonUtf8Response(_public(updated))

    async def traces(request: Request) -> Response:
        """The message trace (issue 15): ``?message_id=`` one message hop by hop, or
        ``?sender=``/``?recipient=`` the messages of an address, newest first. Every
        Fachdienst serves every trace: the store holds them all."""
        await authorise(request)
        params = request.query_params
        # what this process recorded a moment ago is in the store before it is read
        await fd.observer.flush()
        message_id = params.get("message_id")
        if message_id:
            trace = await message_trace(fd.store, message_id)
            if trace is None:
                raise ApiError(404, f"no trace of the message {message_id[:200]!r}")
            return JsonUtf8Response(trace)
        sender, recipient = params.get("sender"), params.get("recipient")
        if not sender and not recipient:
            raise ApiError(400, "give message_id, sender or recipient")
        try:
            limit = int(params.get("limit", MAX_MESSAGES))
        except ValueError:
            raise ApiError(400, "limit: an integer is required") from None
        messages = await find_messages(
            fd.store, sender=sender or None, recipient=recipient or None,
            limit=max(1, min(limit, MAX_MESSAGES)),
        )  # fmt: skip
        return JsonUtf8Response({"messages": messages})

    return [
        Mount(
            "/admin/v1",
            routes=[
                Route("/accounts", list_accounts, methods=["GET"]),
                Route("/accounts", add_account, methods=["POST"]),
                Route("/accounts/{address}/password", set_password, methods=["PUT"]),
                Route("/accounts/{address}/deregister", deregister, methods=["POST"]),
                Route("/accounts/{address}/outofoffice", out_of_office, methods=["PUT"]),
                Route("/traces", traces, methods=["GET"]),
            ],
        )
    ]


def _public(account: Account) -> dict[str, Any]:
    note = account.out_of_office
    return {
        "address": account.address,
        "display_name": account.display_name,
        "telematik_id": account.telematik_id,
        "status": account.status,
        "dereg_date": account.dereg_date.isoformat() if account.dereg_date else None,
        "quota_bytes": account.quota_bytes,
        "out_of_office": {
            "active": note.active,
            "until": note.end.isoformat() if note.end else None,
            "message": note.message,
        },
    }
