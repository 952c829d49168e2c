"""The ``kim-appliance`` command line (the contract in DESIGN.md).

``init`` creates a data dir with the demo setup (``--store URL``: its state in PostgreSQL);
``store copy`` moves an embedded store into PostgreSQL; ``message seal`` and ``message open``
make and read KIM messages offline, for users debugging their messages and for outside tests.
Exit codes
of ``message open``: 0 decrypted and verified, 2 cannot decrypt, 3 signature or header check
failed; any usage or input error exits 1 with a message on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kim_appliance.errors import KimError
from kim_appliance.store.base import StoreError

if TYPE_CHECKING:
    from kim_appliance.mail.seal import Certified

DEFAULT_DATA_DIR = Path("kim-data")
STORE_HELP = (
    "where the state is kept: postgresql://USER[:PASSWORD]@HOST:PORT/DB, or sqlite for the "
    "embedded store in the data dir (default: [store] url of config.toml, else embedded)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kim-appliance",
        description="A complete KIM system (Fachdienst, Clientmodul, Konnektor, VZD) on one box.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="initialise a data dir with the demo setup")
    init.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    init.add_argument("--store", metavar="URL", help=STORE_HELP)

    run = commands.add_parser(
        "run",
        help="run the appliance (initialises an empty or missing data dir first)",
        description="Start every component; DATA_DIR/endpoints.json lists the bound addresses "
        "once all listeners are up. Stop with Ctrl-C or SIGTERM.",
    )
    run.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    run.add_argument(
        "--ephemeral-ports", action="store_true", help="bind every listener to a free port"
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    run.add_argument("--store", metavar="URL", help=STORE_HELP)

    store = commands.add_parser("store", help="move the appliance's stored state")
    store_verbs = store.add_subparsers(dest="store_action", required=True, metavar="ACTION")
    copy = store_verbs.add_parser(
        "copy",
        help="copy the embedded store of a data dir into PostgreSQL (appliance stopped)",
        description="Copies accounts, tombstones, lockouts, mailboxes with their bodies, the "
        "relay queue, KAS uploads, registration codes, the directory and the reply ledger of "
        "DATA_DIR's embedded store into the PostgreSQL store at URL, then verifies counts per "
        "table and the SHA-256 of every body. Exit 0 only when verified.",
    )
    copy.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    copy.add_argument(
        "--to", required=True, metavar="URL", help="postgresql://USER[:PW]@HOST:PORT/DB"
    )
    copy.add_argument(
        "--force", action="store_true", help="empty a target store that holds data first"
    )

    fault = commands.add_parser(
        "fault",
        help="switch Konnektor faults of a running appliance on or off",
        description="Talks to the running appliance's Konnektor admin API (endpoints.json). "
        "Without options it prints the current fault status.",
    )
    fault.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    fault.add_argument("--card-removed", metavar="ICCSN", help="pull a card out")
    fault.add_argument("--card-inserted", metavar="ICCSN", help="put a card back")
    fault.add_argument("--pin-blocked", metavar="ICCSN", help="block a card's PIN")
    fault.add_argument(
        "--revoke",
        metavar="ICCSN:PURPOSE:CRYPT",
        help="revoke a card certificate, e.g. 80276883110000100001:ENC:RSA",
    )
    fault.add_argument(
        "--unreachable", choices=["on", "off"], help="the Konnektor stops/starts answering"
    )
    fault.add_argument("--latency-ms", type=int, help="latency of every card key operation")
    fault.add_argument("--clear", action="store_true", help="switch every fault off")

    account = commands.add_parser(
        "account",
        help="manage the mailboxes of a running appliance",
        description="Talks to the running appliance's Fachdienst admin API (endpoints.json, "
        "DATA_DIR/admin-token). The Fachdienst is chosen by the address's domain.",
    )
    account.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    actions = account.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list the mailboxes of every Fachdienst")
    listing.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    add = actions.add_parser("add", help="add a mailbox")
    add.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    add.add_argument("address")
    add.add_argument("--password", required=True)
    add.add_argument("--display-name")
    add.add_argument("--telematik-id")
    password = actions.add_parser("password", help="set a mailbox's password (unlocks it)")
    password.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    password.add_argument("address")
    password.add_argument("--password", required=True)
    dereg = actions.add_parser("deregister", help="deregister: no sending or receiving")
    dereg.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    dereg.add_argument("address")
    dereg.add_argument("--pop3-days", type=int, default=30, help="POP3 keeps working this long")
    ooo = actions.add_parser("out-of-office", help="switch an absence note on or off")
    ooo.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    ooo.add_argument("address")
    ooo.add_argument("--message")
    ooo.add_argument("--until", help="ISO 8601 date or date-time (default: a year)")
    switch = ooo.add_mutually_exclusive_group(required=True)
    switch.add_argument("--on", dest="active", action="store_true")
    switch.add_argument("--off", dest="active", action="store_false")

    card = commands.add_parser(
        "card",
        help="put your own keys on an emulated card (appliance stopped)",
        description="Offline, before `run`: the Konnektor reads konnektor.json at start, so an "
        "imported card survives restarts and private keys never go over the network.",
    )
    card.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    card_verbs = card.add_subparsers(dest="card_action", required=True, metavar="ACTION")
    card_import = card_verbs.add_parser(
        "import",
        help="add a card with PEM key/certificate pairs (purpose from the certificate)",
    )
    card_import.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    card_import.add_argument("--iccsn", required=True, help="20 digits, unique in the Konnektor")
    card_import.add_argument(
        "--key", type=Path, action="append", required=True, help="PEM private key (repeatable)"
    )
    card_import.add_argument(
        "--cert", type=Path, action="append", required=True, help="its PEM certificate"
    )
    card_import.add_argument("--type", choices=["SMC-B", "HBA"], help="default: from the certs")
    card_import.add_argument("--holder", help="card holder name (default: the certificate CN)")
    card_import.add_argument(
        "--telematik-id", help="default: registrationNumber of the Admission extension"
    )
    card_import.add_argument("--mandant", help="default: the first Mandant of konnektor.json")
    card_import.add_argument("--user-id", help="an HBA's holder (the POP3 username's UserId)")

    message = commands.add_parser("message", help="seal or open a KIM message offline")
    verbs = message.add_subparsers(dest="verb", required=True, metavar="VERB")
    seal = verbs.add_parser(
        "seal",
        help="sign and encrypt an inner mail (stdin) into a KIM message (stdout)",
        description="Sign with the SMC-B OSIG key, encrypt for every --to certificate and the "
        "sender's own, and write the outer KIM mail (digest §2).",
    )
    seal.add_argument("--signer-key", type=Path, required=True, help="PEM PKCS#8 OSIG key")
    seal.add_argument("--signer-cert", type=Path, required=True, help="PEM C.HCI.OSIG cert")
    seal.add_argument(
        "--from",
        dest="sender",
        action="append",
        required=True,
        metavar="ADDR=ENC.pem",
        help="the sender's address and encryption certificate (repeat for RSA and ECC)",
    )
    seal.add_argument(
        "--to",
        dest="recipients",
        action="append",
        required=True,
        metavar="ADDR=ENC.pem",
        help="a recipient and one of its encryption certificates (repeatable)",
    )
    opener = verbs.add_parser(
        "open",
        help="decrypt and verify a KIM message (stdin) into the inner mail (stdout)",
        description="Exit 0: decrypted and verified; 2: cannot decrypt; 3: signature, "
        "certificate or header check failed. A report goes to stderr.",
    )
    opener.add_argument("--key", type=Path, action="append", required=True, help="PEM ENC key")
    opener.add_argument("--cert", type=Path, action="append", required=True, help="PEM ENC cert")
    opener.add_argument(
        "--trust",
        type=Path,
        action="append",
        default=[],
        help="PEM of a trust anchor, intermediate CA or CRL (repeatable)",
    )
    return parser


#: the umask of ``init`` and ``run``: whatever the appliance creates in the data dir (stores,
#: keys, demo.json with passwords, spools) is for this user only (issue 11)
PRIVATE_UMASK = 0o077


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("init", "run"):
            from kim_appliance.store import check_url

            check_url(args.store)  # before anything is written to the data dir
            os.umask(PRIVATE_UMASK)
            from kim_appliance.demo import secure_data_dir

            secure_data_dir(args.data_dir)
        if args.command == "init":
            return _init(args.data_dir, args.store)
        if args.command == "store":
            return _store_copy(args)
        if args.command == "run":
            return _run(args)
        if args.command == "fault":
            return _fault(args)
        if args.command == "account":
            return _account(args)
        if args.command == "card":
            return _card(args)
        if args.verb == "seal":
            return _seal(args)
        return _open(args)
    except (KimError, StoreError, OSError) as exc:
        print(f"kim-appliance: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        # trio wraps a startup error of `run` (bad config, data dir in use) in a group: show
        # the user the reason, not a traceback
        errors = _leaves(group)
        if not all(isinstance(e, KimError | StoreError | OSError) for e in errors):
            raise
        for error in errors:
            print(f"kim-appliance: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C before the signal handler of `run` is installed (during start-up)
        print("kim-appliance: interrupted", file=sys.stderr)
        return 130


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _init(data_dir: Path, store_url: str | None) -> int:
    import json

    import trio

    from kim_appliance import demo
    from kim_appliance.appliance import prepare_data_dir

    if demo.is_initialised(data_dir) and store_url is None:
        print(f"{data_dir} is already initialised ({data_dir / 'demo.json'})", file=sys.stderr)
        return 0
    # with --store the demo's state goes into that store even for a data dir made before
    where = trio.run(prepare_data_dir, data_dir, store_url)
    result = json.loads((data_dir / "demo.json").read_text(encoding="utf-8"))
    for p in result["participants"]:
        print(f"{p['address']:40} {p['card']['type']:5} {p['card']['keys']:8} {p['display_name']}")
    print(f"demo setup written to {data_dir / 'demo.json'}; state in the {where}")
    return 0


def _store_copy(args: argparse.Namespace) -> int:
    """``store copy``: the embedded store of a stopped appliance into PostgreSQL, verified."""
    import trio

    from kim_appliance.store.copy import copy_store

    report = trio.run(lambda: copy_store(args.data_dir, args.to, force=args.force, out=sys.stdout))
    return 0 if report.verified else 1


def _run(args: argparse.Namespace) -> int:
    import logging
    import signal

    import trio

    from kim_appliance.appliance import run_appliance
    from kim_appliance.logs import configure

    # one line per event: control characters from clients are escaped (kim_appliance.logs)
    configure(args.log_level, stream=sys.stderr)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            await nursery.start(
                lambda task_status: run_appliance(
                    args.data_dir,
                    ephemeral_ports=args.ephemeral_ports,
                    store_url=args.store,
                    task_status=task_status,
                )
            )

    async def _stop_on_signal(scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                logging.getLogger("kim_appliance").info(
                    "%s received, shutting down", signal.Signals(signum).name
                )
                scope.cancel()
                return

    trio.run(main)
    return 0


def _fault(args: argparse.Namespace) -> int:
    """POST the requested switches to the Konnektor admin API, print the resulting status."""
    import json

    endpoints, token = _running(args.data_dir)
    request: dict[str, object] = {}
    if args.clear:
        request["clear"] = True
    for key in ("card_removed", "card_inserted", "pin_blocked"):
        if getattr(args, key):
            request[key] = getattr(args, key)
    if args.revoke:
        parts = args.revoke.split(":")
        if len(parts) != 3:
            raise KimError(f"--revoke {args.revoke!r}: expected ICCSN:PURPOSE:CRYPT")
        request["revoke"] = dict(zip(("iccsn", "purpose", "crypt"), parts, strict=True))
    if args.unreachable:
        request["unreachable"] = args.unreachable == "on"
    if args.latency_ms is not None:
        request["latency_ms"] = args.latency_ms
    from kim_appliance.konnektor.admin_client import switch_faults

    print(json.dumps(switch_faults(endpoints, request or None, token=token), indent=2))
    return 0


def _account(args: argparse.Namespace) -> int:
    """Call the Fachdienst admin API (kim_appliance/fachdienst/admin_api.py); print the JSON."""
    import json
    import urllib.parse

    endpoints, token = _running(args.data_dir)
    fachdienste: dict[str, dict[str, str]] = endpoints["fachdienste"]
    if args.action == "list":
        for domain, urls in fachdienste.items():
            reply = _admin_call(endpoints, token, urls["https"], "GET", "/accounts")
            for entry in reply["accounts"]:
                note = " (absent)" if entry["out_of_office"]["active"] else ""
                print(f"{entry['address']:40} {entry['status']:13} {domain}{note}")
        return 0
    domain = args.address.rpartition("@")[2].lower()
    if domain not in fachdienste:
        raise KimError(f"{args.address}: no Fachdienst of this appliance serves {domain}")
    base = fachdienste[domain]["https"]
    path = f"/accounts/{urllib.parse.quote(args.address)}"
    if args.action == "add":
        body: dict[str, object] = {"address": args.address, "password": args.password}
        if args.display_name:
            body["display_name"] = args.display_name
        if args.telematik_id:
            body["telematik_id"] = args.telematik_id
        reply = _admin_call(endpoints, token, base, "POST", "/accounts", body)
    elif args.action == "password":
        reply = _admin_call(endpoints, token, base, "PUT", f"{path}/password",
                            {"password": args.password})  # fmt: skip
    elif args.action == "deregister":
        reply = _admin_call(endpoints, token, base, "POST", f"{path}/deregister",
                            {"pop3_days": args.pop3_days})  # fmt: skip
    else:
        body = {"active": args.active}
        if args.active:
            if not args.message:
                raise KimError("out-of-office --on needs --message")
            body["message"] = args.message
            if args.until:
                body["until"] = args.until
        reply = _admin_call(endpoints, token, base, "PUT", f"{path}/outofoffice", body)
    print(json.dumps(reply, indent=2, ensure_ascii=False) if reply else "ok")
    return 0


def _card(args: argparse.Namespace) -> int:
    """``card import``: refuse while an appliance runs on the data dir, then edit its Konnektor."""
    from kim_appliance.konnektor.card_import import import_card
    from kim_appliance.konnektor.cards import CardType

    data_dir: Path = args.data_dir
    if _appliance_running(data_dir):
        raise KimError(
            f"{data_dir}: an appliance is running on it; stop it first (the Konnektor reads "
            "konnektor.json at start), import, then start it again"
        )
    if len(args.key) != len(args.cert):
        raise KimError("give one --cert for every --key, in the same order")
    result = import_card(
        data_dir,
        iccsn=args.iccsn,
        pairs=list(zip(args.key, args.cert, strict=True)),
        holder=args.holder,
        telematik_id=args.telematik_id,
        card_type=CardType(args.type) if args.type else None,
        mandant=args.mandant,
        user_id=args.user_id,
    )
    spec = result.card
    seen_by = f"user {result.user_id}" if result.user_id else "every workplace"
    print(f"{spec.card_type} {spec.iccsn} ({spec.holder}), Telematik-ID {spec.telematik_id}")
    for key in result.keys:
        serial = f"{key.certificate.serial_number:X}"
        print(f"  {key.purpose}/{key.crypt}: {key.certificate.issuer.rfc4514_string()} {serial}")
    print(f"visible to {seen_by} of Mandant {result.mandant}; PIN VERIFIED")
    return 0


def _appliance_running(data_dir: Path) -> bool:
    """True while an appliance runs on ``data_dir``: its store is in use (the embedded store
    admits one process at a time)."""
    import trio

    from kim_appliance.store import StoreInUse, open_store

    async def probe() -> bool:
        try:
            async with open_store(None, data_dir):
                return False
        except StoreInUse:
            return True

    if not (data_dir / "konnektor.json").exists():
        return False  # not initialised: nothing runs there (import_card says what is missing)
    return trio.run(probe)


def _running(data_dir: Path) -> tuple[dict[str, Any], str]:
    import json

    endpoints_file = data_dir / "endpoints.json"
    if not endpoints_file.exists():
        raise KimError(f"{endpoints_file} not found: is `kim-appliance run` running there?")
    token_file = data_dir / "admin-token"
    if not token_file.exists():
        raise KimError(f"{token_file} not found: is {data_dir} an appliance data dir?")
    endpoints: dict[str, Any] = json.loads(endpoints_file.read_text(encoding="utf-8"))
    return endpoints, token_file.read_text(encoding="ascii").strip()


def _admin_call(
    endpoints: dict[str, Any],
    token: str,
    base: str,
    method: str,
    path: str,
    body: dict[str, object] | None = None,
) -> Any:
    import json
    import ssl
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{base}/admin/v1{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=endpoints["tls_ca"])
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["message"]
        raise KimError(f"{exc.code}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise KimError(f"cannot reach {base}: {exc.reason}") from exc
    return json.loads(raw) if raw else None


def _certified(specs: Sequence[str], option: str) -> list[Certified]:
    from cryptography import x509

    from kim_appliance.mail.seal import Certified

    result: list[Certified] = []
    for spec in specs:
        address, sep, path = spec.partition("=")
        if not sep or not address or not path:
            raise KimError(f"{option} {spec!r}: expected ADDR=ENC.pem")
        try:
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except ValueError as exc:
            raise KimError(f"{option} {spec!r}: {path} holds no PEM certificate ({exc})") from exc
        result.append(Certified(address, cert))
    return result


def _seal(args: argparse.Namespace) -> int:
    from kim_appliance.cms.keys import SoftwareKey
    from kim_appliance.mail.seal import seal

    signer = SoftwareKey.from_files(args.signer_key, args.signer_cert)
    sender = _certified(args.sender, "--from")
    recipients = _certified(args.recipients, "--to")
    report = seal(
        sys.stdin.buffer,
        sys.stdout.buffer,
        signer=signer,
        sender=sender,
        recipients=recipients,
        extra_headers=(("X-KIM-CMVersion", _cm_version()),),
    )
    sys.stdout.buffer.flush()
    for r in report.recipients:
        print(f"encrypted for: {r.address} ({r.algorithm})", file=sys.stderr)
    for name in report.added_headers:
        print(f"added to the inner mail: {name}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"sealed {report.message_id}: {report.outer_size} bytes", file=sys.stderr)
    return 0


def _open(args: argparse.Namespace) -> int:
    from kim_appliance.cms.keys import SoftwareKey
    from kim_appliance.mail.unseal import open_message
    from kim_appliance.pki import TrustStore

    if len(args.key) != len(args.cert):
        raise KimError("give one --cert for every --key, in the same order")
    keys = [SoftwareKey.from_files(k, c) for k, c in zip(args.key, args.cert, strict=True)]
    trust = TrustStore.from_pem_files(args.trust) if args.trust else None
    report = open_message(sys.stdin.buffer, sys.stdout.buffer, keys=keys, trust=trust)
    sys.stdout.buffer.flush()
    for line in report.lines():
        print(line, file=sys.stderr)
    return report.exit_code


def _cm_version() -> str:
    """X-KIM-CMVersion: ``<VendorID>_<maj>.<min>.<patch>`` (digest §2.2); vendor ID KIMAP."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("kim-appliance")
    except PackageNotFoundError:
        v = "0.0.0"
    return "KIMAP_" + ".".join(v.split(".")[:3])


if __name__ == "__main__":
    sys.exit(main())
