"""The ``kim-appliance`` command line (the contract in DESIGN.md).

``init`` creates a data dir with the demo setup (``--store URL``: its state in PostgreSQL) and
``run`` runs the appliance; ``store copy`` moves an embedded store into PostgreSQL; ``fault``,
``account``, ``trace`` and ``card renew`` talk to a running appliance through its admin APIs; ``card
import`` edits a stopped one; ``message seal`` and ``message open`` make and read KIM messages
offline, for users debugging their messages and for outside tests.

Exit codes: 0 done; 1 the command could not be carried out (the message on stderr says why:
a file missing, no appliance running, a refusal of the appliance); 64 (EX_USAGE of sysexits.h)
the command line itself is wrong, with the usage of the (sub)command that was given; 130
interrupted. ``message open`` adds its results: 2 cannot decrypt, 3 the signature, the signer's
certificate or the header comparison failed, or the signer could not be checked. A reader of
stdout that goes away (``| head``) ends the command quietly. This module parses, calls and
prints; it must never decide a protocol question itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from kim_appliance.errors import KimError
from kim_appliance.store import EMBEDDED
from kim_appliance.store.base import StoreError

if TYPE_CHECKING:
    from kim_appliance.mail.seal import Certified
    from kim_appliance.pki import TrustStore

DEFAULT_DATA_DIR = Path("kim-data")
#: sysexits.h EX_USAGE: the command was used incorrectly (DESIGN.md: every command's usage
#: errors; never 2 or 3, which ``message open`` uses for its results)
EX_USAGE: Final = 64
#: the exit status after the reader of stdout went away: 128 + SIGPIPE, as a shell reports a
#: tool ended by the signal
EXIT_CLOSED_PIPE: Final = 141
#: the PIN state of a card that is ready for KIM (the demo and imported cards start so)
_READY_PINS: Final = ("VERIFIED", "DISABLED")


class UsageError(KimError):
    """The command line is wrong in a way the parser cannot see (an option's value has the
    wrong form): exit 64 with the message."""


class _HelpFormatter(argparse.HelpFormatter):
    """Help that names every option's default (the ones that have a meaningful one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or not action.option_strings
            or default in (None, False, [], argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with the exit status of the contract (64) and errors reported by the
    subcommand that was given, with its own usage (argparse reports a subcommand's unknown
    options with the top-level usage)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kim-appliance")
    except PackageNotFoundError:
        return "0.0.0"


def _data_dir(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """``--data-dir``; on an action below a command (``account list``) it may also follow the
    action, and the command's default stays."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        default=argparse.SUPPRESS if inherited else DEFAULT_DATA_DIR,
        help="the appliance's data dir" + (f" (default: {DEFAULT_DATA_DIR})" if inherited else ""),
    )


STORE_HELP = (
    "where the state is kept: postgresql://USER[:PASSWORD]@HOST:PORT/DB, or sqlite for the "
    "embedded store in the data dir (default: [store] url of config.toml, else embedded)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kim-appliance",
        description="A complete KIM system (Fachdienst, Clientmodul, Konnektor, VZD) on one box.",
        epilog="Exit status: 0 done, 1 failed (stderr says why), 64 wrong command line; "
        "`message open` also 2 and 3.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_init(commands)
    _add_run(commands)
    _add_store(commands)
    _add_fault(commands)
    _add_account(commands)
    _add_trace(commands)
    _add_card(commands)
    _add_message(commands)
    return parser


#: what ``add_subparsers`` returns (a class of argparse, generic in typeshed)
Commands = argparse._SubParsersAction


def _add_init(commands: Commands[_Parser]) -> argparse.ArgumentParser:
    init = commands.add_parser(
        "init",
        help="initialise a data dir with the demo setup",
        description="Create the test PKI, the demo participants with their cards, the "
        "Konnektor's konnektor.json, the VZD entries and config.toml in DIR (missing or "
        "empty); the participants go to DIR/demo.json. `run` does this by itself on first "
        "start.",
    )
    _data_dir(init)
    init.add_argument("--store", metavar="URL", help=STORE_HELP)
    return init


def _add_run(commands: Commands[_Parser]) -> argparse.ArgumentParser:
    run = commands.add_parser(
        "run",
        help="run the appliance (initialises an empty or missing data dir first)",
        description="Start every component; DIR/endpoints.json lists the bound addresses "
        "once all listeners are up. Stop with Ctrl-C or SIGTERM.",
    )
    _data_dir(run)
    run.add_argument(
        "--ephemeral-ports",
        action="store_true",
        help="bind every listener to a free port (read them from DIR/endpoints.json)",
    )
    run.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING"],
        help="what goes to stderr",
    )
    run.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text: one line per event; json: one JSON object per line (time, level, logger, "
        "message and the event's fields)",
    )
    run.add_argument("--store", metavar="URL", help=STORE_HELP)
    run.add_argument(
        "--node",
        metavar="NAME",
        help="run as node NAME of several sharing one PostgreSQL store (--store or [store] "
        "url): writes DIR/endpoints-NAME.json; refused while another live process uses NAME "
        "(default: this machine's name; the embedded store admits no --node)",
    )
    run.add_argument(
        "--components",
        type=_components,
        default=None,
        metavar="LIST",
        help="run only these, comma-separated: fachdienst,clientmodul,konnektor,directory,"
        "console (default: all); e.g. konnektor,directory here and clientmodul elsewhere with "
        "[clientmodul] konnektor/directory pointing here",
    )
    return run


def _add_store(commands: Commands[_Parser]) -> argparse.ArgumentParser:
    store = commands.add_parser("store", help="move the appliance's stored state")
    store_verbs = store.add_subparsers(dest="store_action", required=True, metavar="ACTION")
    copy = store_verbs.add_parser(
        "copy",
        help="copy the embedded store of a data dir into PostgreSQL (appliance stopped)",
        description="Copies accounts, tombstones, lockouts, mailboxes with their bodies, the "
        "relay queue, KAS uploads, registration codes, the directory and the reply ledger of "
        "DIR's embedded store into the PostgreSQL store at URL, then verifies counts per "
        "table and the SHA-256 of every body. Exit 0 only when verified.",
    )
    _data_dir(copy)
    copy.add_argument(
        "--to", required=True, metavar="URL", help="postgresql://USER[:PW]@HOST:PORT/DB"
    )
    copy.add_argument(
        "--force", action="store_true", help="empty a target store that holds data first"
    )
    return store


def _add_fault(commands: Commands[_Parser]) -> argparse.ArgumentParser:
    fault = commands.add_parser(
        "fault",
        help="switch Konnektor faults of a running appliance on or off",
        description="Talks to the running appliance's Konnektor admin API (DIR/endpoints.json, "
        "DIR/admin-token) and prints what is switched on afterwards; without options it only "
        "prints that. Switches given together are applied in the order listed here; the card "
        "switches repeat.",
    )
    _data_dir(fault)
    fault.add_argument(
        "--clear",
        action="store_true",
        help="first switch every fault off: every card inserted with its PINs VERIFIED, no "
        "latency, reachable (revocations stay: renew the certificate with `card renew`)",
    )
    fault.add_argument(
        "--card-removed",
        action="append",
        metavar="ICCSN",
        help="pull a card out (4008 on its next use)",
    )
    fault.add_argument(
        "--card-inserted",
        action="append",
        metavar="ICCSN",
        help="put a card back (new card handle; its PIN is VERIFIABLE until --verify-pin)",
    )
    fault.add_argument(
        "--pin-blocked",
        action="append",
        metavar="ICCSN",
        help="block a card's PIN (PinStatus BLOCKED, 4085)",
    )
    fault.add_argument(
        "--unblock-pin",
        action="append",
        metavar="ICCSN",
        help="unblock a card's PIN as with the PUK (BLOCKED becomes VERIFIABLE)",
    )
    fault.add_argument(
        "--verify-pin",
        action="append",
        metavar="ICCSN",
        help="the user types the card's PIN (VERIFIABLE becomes VERIFIED: the card works again)",
    )
    fault.add_argument(
        "--revoke",
        action="append",
        metavar="ICCSN:PURPOSE:CRYPT",
        help="revoke a card certificate in the test PKI, e.g. 80276883110000100001:ENC:RSA "
        "(cannot be undone; `card renew` replaces it)",
    )
    fault.add_argument(
        "--latency-ms",
        type=int,
        metavar="MS",
        help="latency of every card key operation, 0 to 60000 (0 switches it off)",
    )
    fault.add_argument(
        "--unreachable",
        choices=["on", "off"],
        help="the Konnektor stops (on) or starts (off) answering",
    )
    fault.add_argument(
        "--json",
        action="store_true",
        help="print the Konnektor's whole fault state as JSON instead of the summary",
    )
    return fault


def _add_account(commands: Commands[_Parser]) -> argparse.ArgumentParser:
    account = commands.add_parser(
        "account",
        help="manage the mailboxes of a running appliance",
        description="Talks to the running appliance's Fachdienst admin API (DIR/endpoints.json, "
        "DIR/admin-token). The Fachdienst is chosen by the address's domain.",
    )
    _data_dir(account)
    actions = account.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list the mailboxes of every Fachdienst")
    _data_dir(listing, inherited=True)
    add = actions.add_parser("add", help="add a mailbox")
    _data_dir(add, inherited=True)
    add.add_argument("address", help="the new KIM address, e.g. praxis.neu@fd1.kim.telematik-test")
    add.add_argument("--password", required=True, help="its password")
    add.add_argument("--display-name", help="the name shown to others (default: none)")
    add.add_argument("--telematik-id", help="the Telematik-ID of its owner (default: none)")
    password = actions.add_parser("password", help="set a mailbox's password (unlocks it)")
    _data_dir(password, inherited=True)
    password.add_argument("address", help="the KIM address")
    password.add_argument("--password", required=True, help="the new password")
    dereg = actions.add_parser("deregister", help="deregister: no sending or receiving")
    _data_dir(dereg, inherited=True)
    dereg.add_argument("address", help="the KIM address")
    dereg.add_argument(
        "--pop3-days", type=int, default=30, help="days POP3 keeps working for the owner"
    )
    ooo = actions.add_parser("out-of-office", help="switch an absence note on or off")
    _data_dir(ooo, inherited=True)
    ooo.add_argument("address", help="the KIM address")
    ooo.add_argument("--message", help="the note's text (needed with --on)")
    ooo.add_argument("--until", help="ISO 8601 date or date-time (default: a year from now)")
    switch = ooo.add_mutually_exclusive_group(required=True)
    switch.add_argument("--on", dest="active", action="store_true", help="switch it on")
    switch.add_argument("--off", dest="active", action="store_false", help="switch it off")
    return account


def _add_trace(commands: Commands[_Parser]) -> argparse.ArgumentParser:
    trace = commands.add_parser(
        "trace",
        help="show what happened to a message, hop by hop",
        description="Asks the running appliance's admin API (DIR/endpoints.json, DIR/admin-token) "
        "for the trace of MESSAGE-ID: the Message-ID the practice software gave or the KIM "
        "message's own (angle brackets optional). One line per hop, oldest first: time, node, "
        "component, stage, result code, addresses, size and details (metadata only, never "
        "content). With --sender/--recipient instead: the messages of that address, newest "
        "first. Exit 1 when nothing is known.",
    )
    _data_dir(trace)
    trace.add_argument("message_id", nargs="?", metavar="MESSAGE-ID", help="the message's id")
    trace.add_argument("--sender", metavar="ADDR", help="list the messages ADDR sent")
    trace.add_argument("--recipient", metavar="ADDR", help="list the messages ADDR received")
    trace.add_argument("--json", action="store_true", help="print the admin API's JSON")
    return trace


def _add_card(commands: Commands[_Parser]) -> argparse.ArgumentParser:
    card = commands.add_parser(
        "card",
        help="put your own keys on an emulated card, or renew a card's certificate",
        description="`import` works offline, before `run`: the Konnektor reads konnektor.json "
        "at start, so an imported card survives restarts and private keys never go over the "
        "network. `renew` works on the running appliance: the new certificate goes into its VZD.",
    )
    _data_dir(card)
    card_verbs = card.add_subparsers(dest="card_action", required=True, metavar="ACTION")
    card_import = card_verbs.add_parser(
        "import",
        help="add a card with PEM key/certificate pairs (appliance stopped)",
        description="The purpose of each key (ENC, OSIG, AUT, QES) and the card type come "
        "from its certificate's policies (digest §2.9).",
    )
    _data_dir(card_import, inherited=True)
    card_import.add_argument("--iccsn", required=True, help="20 digits, unique in the Konnektor")
    card_import.add_argument(
        "--key",
        type=Path,
        action="append",
        required=True,
        help="PEM private key, unencrypted (repeatable, one per --cert)",
    )
    card_import.add_argument(
        "--cert",
        type=Path,
        action="append",
        required=True,
        help="the PEM certificate of the --key at the same position (repeatable)",
    )
    card_import.add_argument(
        "--type", choices=["SMC-B", "HBA"], help="the card type (default: from the certificates)"
    )
    card_import.add_argument("--holder", help="card holder name (default: the certificate CN)")
    card_import.add_argument(
        "--telematik-id",
        help="the card's Telematik-ID (default: registrationNumber of the Admission extension)",
    )
    card_import.add_argument(
        "--mandant", help="the Mandant that sees the card (default: the first of konnektor.json)"
    )
    card_import.add_argument(
        "--user-id", help="an HBA's holder, the POP3 username's UserId (needed for an HBA)"
    )
    renew = card_verbs.add_parser(
        "renew",
        help="a new key and certificate for one key of a card (running appliance)",
        description="Issues a new key pair and certificate (same subject and profile) from the "
        "test PKI, puts it on the card and into its key files (demo.json's export): the way out "
        "of `fault --revoke`. A new ENC certificate must also go into the VZD, so senders find "
        "it: the Konnektor refuses an ENC renewal it cannot publish there, and changes nothing.",
    )
    _data_dir(renew, inherited=True)
    renew.add_argument(
        "slot",
        metavar="ICCSN:PURPOSE:CRYPT",
        help="the key: ICCSN, ENC/OSIG/AUT/QES, RSA/ECC; e.g. 80276883110000100001:ENC:RSA",
    )
    return card


def _add_message(commands: Commands[_Parser]) -> argparse.ArgumentParser:
    message = commands.add_parser("message", help="seal or open a KIM message offline")
    verbs = message.add_subparsers(dest="verb", required=True, metavar="VERB")
    seal = verbs.add_parser(
        "seal",
        help="sign and encrypt an inner mail (stdin) into a KIM message (stdout)",
        description="Sign with the SMC-B OSIG key, encrypt for every --to certificate and the "
        "sender's own, and write the outer KIM mail (digest §2).",
    )
    seal.add_argument(
        "--signer-key", type=Path, required=True, help="the sender's PEM PKCS#8 OSIG key"
    )
    seal.add_argument(
        "--signer-cert", type=Path, required=True, help="its PEM C.HCI.OSIG certificate"
    )
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
        description="Exit 0: decrypted and verified; 2: cannot decrypt; 3: the signature, "
        "the signer's certificate or the header comparison failed, or the signer could not be "
        "checked (IntegrityCheckResult 07: no trust anchors). A report goes to stderr.",
    )
    opener.add_argument(
        "--key",
        type=Path,
        action="append",
        required=True,
        help="a PEM ENC key of the recipient (repeatable, one per --cert)",
    )
    opener.add_argument(
        "--cert",
        type=Path,
        action="append",
        required=True,
        help="the PEM certificate of the --key at the same position (repeatable)",
    )
    opener.add_argument(
        "--trust",
        type=Path,
        nargs="+",
        action="append",
        metavar="PEM",
        help="PEM files (or directories of them) with trust anchors, intermediate CAs and "
        "CRLs; several after one --trust, and repeatable (default: those of --data-dir)",
    )
    opener.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        default=DEFAULT_DATA_DIR,
        help="without --trust, check the signer against DIR/pki (the test PKI's anchors and "
        "CRLs) when it exists",
    )
    return message


#: the umask of ``init`` and ``run``: whatever the appliance creates in the data dir (stores,
#: keys, demo.json with passwords, spools) is for this user only (issue 11)
PRIVATE_UMASK = 0o077


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = _dispatch(args)
        # a reader that went away must be seen here, not at interpreter exit
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # `kim-appliance account list | head`: end quietly, as a Unix tool ended by SIGPIPE
        # does; stdout goes to /dev/null so the interpreter's final flush fails no more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_CLOSED_PIPE
    except UsageError as exc:
        _usage_of(parser, args).print_usage(sys.stderr)
        print(f"kim-appliance: error: {exc}", file=sys.stderr)
        return EX_USAGE
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


def _components(text: str) -> frozenset[str]:
    """``--components``: argparse's type, so that a wrong name is a usage error."""
    from kim_appliance.appliance import parse_components

    try:
        return parse_components(text)
    except KimError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _dispatch(args: argparse.Namespace) -> int:
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
    if args.command == "trace":
        return _trace(args)
    if args.command == "card":
        return _card(args)
    if args.verb == "seal":
        return _seal(args)
    return _open(args)


def _usage_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the subcommand ``args`` came from (its usage goes with a UsageError)."""
    current = parser
    for name in ("command", "action", "card_action", "store_action", "verb"):
        chosen = getattr(args, name, None)
        actions = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if chosen is None or not actions:
            continue
        current = actions[0].choices.get(chosen, current)
    return current


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
    from kim_appliance.logs import configure

    # the test PKI takes seconds: its progress lines (kim_appliance.pki, .demo) go to stderr
    configure("INFO", stream=sys.stderr)
    # with --store the demo's state goes into that store even for a data dir made before
    where = trio.run(prepare_data_dir, data_dir, store_url)
    result = json.loads((data_dir / "demo.json").read_text(encoding="utf-8"))
    for p in result["participants"]:
        print(f"{p['address']:40} {p['card']['type']:5} {p['card']['keys']:8} {p['display_name']}")
    print(f"demo setup written to {data_dir / 'demo.json'}; state in the {where}")
    if store_url is not None and store_url.strip().lower() not in EMBEDDED:
        # a later `run` (every node) without --store must open this store, not an empty
        # embedded one (docs/decisions.md)
        from kim_appliance.config import CONFIG_FILE, set_store_url

        config = data_dir / CONFIG_FILE
        done = set_store_url(data_dir, store_url)
        if done == "written":
            print(f"{config}: [store] url set; `run` uses this store without --store")
        elif done == "kept":
            print(
                f"{config} names another store in [store] url, which stays: `run` uses that "
                "one unless given --store",
                file=sys.stderr,
            )
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

    from kim_appliance.appliance import COMPONENTS, run_appliance
    from kim_appliance.logs import configure
    from kim_appliance.serving.interpreter import freeze_startup_heap, tune_interpreter
    from kim_appliance.serving.memory import bound_malloc

    # one line per event: control characters from clients are escaped (kim_appliance.logs)
    configure(args.log_level, stream=sys.stderr, log_format=args.log_format)
    # before any worker thread exists: at most MALLOC_ARENAS heaps (issue 13, item 4)
    bound_malloc()
    # GIL switch interval, collector threshold, no OS thread renaming per job (issue 13)
    tune_interpreter()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            await nursery.start(
                lambda task_status: run_appliance(
                    args.data_dir,
                    ephemeral_ports=args.ephemeral_ports,
                    components=args.components or COMPONENTS,
                    store_url=args.store,
                    node=args.node,
                    task_status=task_status,
                )
            )
            freeze_startup_heap()  # started: what is alive now stays alive

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
    """POST the requested switches to the Konnektor admin API (GET the state when there are
    none), print what is switched on (or the whole state with ``--json``)."""
    import json

    request: dict[str, object] = {}
    if args.clear:
        request["clear"] = True
    for key in ("card_removed", "card_inserted", "pin_blocked", "unblock_pin", "verify_pin"):
        if getattr(args, key):
            request[key] = getattr(args, key)  # a list of ICCSNs (the option repeats)
    if args.revoke:
        request["revoke"] = [_key_slot(slot, "--revoke") for slot in args.revoke]
    if args.latency_ms is not None:
        request["latency_ms"] = args.latency_ms
    if args.unreachable:
        request["unreachable"] = args.unreachable == "on"
    endpoints, token = _running(args.data_dir, "konnektor")
    from kim_appliance.konnektor.admin_client import switch_faults

    status = switch_faults(endpoints, request or None, token=token)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print("\n".join(fault_summary(status)))
    return 0


def fault_summary(status: dict[str, Any]) -> list[str]:
    """What is switched on, one line each, from the admin API's state (and a hint how to
    switch it off); one line when nothing is."""
    on: list[str] = []
    if status.get("unreachable"):
        on.append("Konnektor unreachable: its SOAP services and connector.sds do not answer "
                  "(--unreachable off)")  # fmt: skip
    if status.get("latency"):
        on.append(f"every card: {_ms(status['latency'])} per key operation (--latency-ms 0)")
    ready = 0
    revoked_on = {revoked["iccsn"] for revoked in status.get("revoked", [])}
    for card in status.get("cards", []):
        problems: list[str] = []
        if not card["inserted"]:
            problems.append(f"removed (--card-inserted {card['iccsn']})")
        for name, pin in card["pins"].items():
            if pin["status"] == "BLOCKED":
                problems.append(f"{name} BLOCKED (--unblock-pin {card['iccsn']})")
            elif pin["status"] == "VERIFIABLE" and card["inserted"]:
                tries = f", {pin['left_tries']} tries left" if pin["left_tries"] < 3 else ""
                problems.append(f"{name} not verified{tries} (--verify-pin {card['iccsn']})")
            elif pin["status"] not in _READY_PINS and card["inserted"]:
                problems.append(f"{name} {pin['status']}")
        if card["latency"] != status.get("latency"):
            problems.append(f"{_ms(card['latency'])} per key operation")
        if problems:
            on.append(f"card {card['iccsn']} ({card['holder']}): {'; '.join(problems)}")
        elif card["iccsn"] not in revoked_on:
            ready += 1
    for revoked in status.get("revoked", []):
        slot = f"{revoked['iccsn']}:{revoked['purpose']}:{revoked['crypt']}"
        on.append(
            f"card {revoked['iccsn']} ({revoked['holder']}): {revoked['purpose']} "
            f"{revoked['crypt']} certificate (serial {revoked['serial']}) revoked "
            f"(kim-appliance card renew {slot})"
        )
    total = len(status.get("cards", []))
    if not on:
        return [f"no faults switched on: {total} cards inserted with verified PINs, "
                "Konnektor reachable, no latency, no revoked card certificate"]  # fmt: skip
    footer = f"{ready} of {total} cards ready"
    if len(on) > len(status.get("revoked", [])):
        footer += "; `kim-appliance fault --clear` switches every fault but revocations off"
    return ["faults switched on:", *(f"  {line}" for line in on), f"({footer})"]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g} ms"


def _key_slot(value: str, option: str) -> dict[str, str]:
    """``ICCSN:PURPOSE:CRYPT`` as the admin API's ``{"iccsn", "purpose", "crypt"}``."""
    parts = value.split(":")
    if len(parts) != 3 or not all(parts):
        raise UsageError(
            f"{option} {value!r}: expected ICCSN:PURPOSE:CRYPT, e.g. 80276883110000100001:ENC:RSA"
        )
    iccsn, purpose, crypt = parts
    return {"iccsn": iccsn, "purpose": purpose.upper(), "crypt": crypt.upper()}


def _account(args: argparse.Namespace) -> int:
    """Call the Fachdienst admin API (kim_appliance/fachdienst/admin_api.py); print the JSON."""
    import json
    import urllib.parse

    endpoints, token = _running(args.data_dir)
    fachdienste: dict[str, dict[str, str]] = endpoints["fachdienste"]
    if args.action == "list":
        print(f"{'ADDRESS':40} {'STATUS':13} FACHDIENST")
        for domain, urls in fachdienste.items():
            reply = _admin_call(endpoints, token, urls["https"], "GET", "/accounts")
            for entry in reply["accounts"]:
                note = " (out of office)" if entry["out_of_office"]["active"] else ""
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


def _trace(args: argparse.Namespace) -> int:
    """``trace``: the admin API's ``/traces`` of the first Fachdienst (the store holds every
    trace), printed one hop per line or as JSON."""
    import json
    import urllib.parse

    if bool(args.message_id) == bool(args.sender or args.recipient):
        raise UsageError("give a MESSAGE-ID, or --sender and/or --recipient (not both kinds)")
    endpoints, token = _running(args.data_dir)
    fachdienste: dict[str, dict[str, str]] = endpoints.get("fachdienste", {})
    if not fachdienste:
        raise KimError("no Fachdienst runs in this appliance (run --components): no traces here")
    base = next(iter(fachdienste.values()))["https"]
    if args.message_id:
        query = {"message_id": args.message_id}
    else:
        query = {k: v for k, v in (("sender", args.sender), ("recipient", args.recipient)) if v}
    try:
        reply = _admin_call(
            endpoints, token, base, "GET", "/traces?" + urllib.parse.urlencode(query)
        )
    except KimError as exc:
        if str(exc).startswith("404"):
            raise KimError(
                f"nothing is known of the message {args.message_id}: no hop recorded under "
                "this Message-ID (traces are kept with the mail's retention)"
            ) from None
        raise
    if args.json:
        print(json.dumps(reply, indent=2, ensure_ascii=False))
        return 0
    if args.message_id:
        print(
            f"message {reply['message_id']}"
            + "".join(f" = {other}" for other in reply["message_ids"][1:])
        )
        for event in reply["events"]:
            print(trace_line(event))
        return 0
    if not reply["messages"]:
        who = " and ".join(f"{k} {v}" for k, v in query.items())
        raise KimError(f"no message traced with {who}")
    for m in reply["messages"]:
        print(
            f"{m['last'][:19].replace('T', ' ')}  {m['stage']:10} {m['message_id']}  "
            f"{m['sender'] or '-'} -> {', '.join(m['recipients']) or '-'} ({m['hops']} hops)"
        )
    return 0


def trace_line(event: dict[str, Any]) -> str:
    """One hop of a trace as the CLI prints it: time (UTC), node, component, stage, result,
    then sender -> recipients, size, facts and detail."""
    when = event["at"][:23].replace("T", " ")
    parts = []
    if event["sender"] or event["recipients"]:
        parts.append(f"{event['sender'] or '<>'} -> {', '.join(event['recipients']) or '-'}")
    if event["size"] is not None:
        parts.append(f"{event['size']} bytes")
    parts += [f"{k}={v}" for k, v in sorted(event["facts"].items())]
    if event["detail"]:
        parts.append(event["detail"])
    result = event["result"] or "-"
    return (
        f"{when}  {event['node']}  {event['component']:34} {event['stage']:10} {result:>5}  "
        + "; ".join(parts)
    )


def _card(args: argparse.Namespace) -> int:
    """``card import``: refuse while an appliance runs on the data dir, then edit its Konnektor.
    ``card renew``: through the running appliance's Konnektor admin API."""
    if args.card_action == "renew":
        return _card_renew(args)
    from kim_appliance.konnektor.card_import import import_card
    from kim_appliance.konnektor.cards import CardType

    data_dir: Path = args.data_dir
    if len(args.key) != len(args.cert):
        raise UsageError("give one --cert for every --key, in the same order")
    running = _appliance_running(data_dir)
    if running:
        them = "them" if running.startswith("nodes ") else "it"
        raise KimError(
            f"{data_dir}: {running} running on it; stop {them} first (the Konnektor reads "
            "konnektor.json at start), import, then start again"
        )
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


def _card_renew(args: argparse.Namespace) -> int:
    """A new key pair and certificate for one card key, by the running appliance: its Konnektor
    issues and uses it, and its VZD publishes a new ENC certificate."""
    slot = _key_slot(args.slot, "ICCSN:PURPOSE:CRYPT")
    data_dir: Path = args.data_dir
    try:
        endpoints, token = _running(data_dir, "konnektor")
    except KimError:
        raise KimError(
            f"{data_dir / 'endpoints.json'} not found: `card renew` works on the running "
            "appliance (publishing the new certificate in the VZD needs it); start "
            f"`kim-appliance run --data-dir {data_dir}` first"
        ) from None
    from kim_appliance.konnektor.admin_client import switch_faults

    renewed = switch_faults(endpoints, {"renew": slot}, token=token)["renewed"]
    print(
        f"card {renewed['iccsn']}: new {renewed['purpose']} {renewed['crypt']} key and "
        f"certificate, serial {renewed['serial']} (was {renewed['old_serial']}), valid until "
        f"{renewed['not_after'][:10]}"
    )
    if renewed["published"]:
        print(f"published in the VZD for Telematik-ID {renewed['telematik_id']}")
    print("the card's key files (demo.json's export) hold the new key and certificate")
    return 0


def _appliance_running(data_dir: Path) -> str | None:
    """What runs on ``data_dir``, or None: with the embedded store, a process holding it (it
    admits one at a time); with a PostgreSQL store (``[store] url``), the live nodes that
    share it (they share the data dir too: several nodes, one konnektor.json)."""
    import trio

    from kim_appliance import config as config_module
    from kim_appliance.cluster import is_embedded, live_nodes
    from kim_appliance.store import StoreInUse, open_store

    if not (data_dir / "konnektor.json").exists():
        return None  # not initialised: nothing runs there (import_card says what is missing)
    config = config_module.load(data_dir)
    url = config.store.url

    async def probe() -> str | None:
        try:
            async with open_store(url, data_dir) as store:
                if is_embedded(url):
                    return None
                nodes = await live_nodes(store, config.cluster)
        except StoreInUse:
            return "an appliance"
        if not nodes:
            return None
        return f"node{'s' if len(nodes) > 1 else ''} {', '.join(n.name for n in nodes)}"

    return trio.run(probe)


def _running(data_dir: Path, need: str = "fachdienste") -> tuple[dict[str, Any], str]:
    """The endpoints of the appliance running on ``data_dir`` and the admin token:
    ``endpoints.json``, or with several nodes (``run --node NAME``) the ``endpoints-NAME.json``
    of a node of this machine that runs and has the ``need`` section (``fachdienste`` for the
    account API: any node's serves every mailbox; ``konnektor`` for faults: each node has its
    own Konnektor, the first by name is used)."""
    import json

    from kim_appliance.cluster import pid_running

    endpoints_file = data_dir / "endpoints.json"
    if not endpoints_file.exists():
        for candidate in sorted(data_dir.glob("endpoints-*.json")):
            try:
                found = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # being replaced, or not ours
            if isinstance(found.get("pid"), int) and pid_running(found["pid"]) and need in found:
                endpoints_file = candidate
                break
        else:
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
            raise UsageError(f"{option} {spec!r}: expected ADDR=ENC.pem")
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

    if len(args.key) != len(args.cert):
        raise UsageError("give one --cert for every --key, in the same order")
    keys = [SoftwareKey.from_files(k, c) for k, c in zip(args.key, args.cert, strict=True)]
    trust, source = _trust_for_open(args)
    report = open_message(sys.stdin.buffer, sys.stdout.buffer, keys=keys, trust=trust)
    sys.stdout.buffer.flush()
    print(f"trust: {source}", file=sys.stderr)
    for line in report.lines():
        print(line, file=sys.stderr)
    return report.exit_code


def _trust_for_open(args: argparse.Namespace) -> tuple[TrustStore | None, str]:
    """The trust store ``message open`` checks the signer against, and where it came from:
    the ``--trust`` files; else the test PKI of ``--data-dir`` (its anchors, CAs and CRLs)
    when there is one; else none, and the signer is reported as not checked (07)."""
    from kim_appliance.pki import TrustStore

    if args.trust:
        paths: list[Path] = []
        for group in args.trust:
            for path in group:
                paths.extend(sorted(path.glob("*.pem")) if path.is_dir() else [path])
        if not paths:
            raise KimError("--trust: the directories given hold no .pem file")
        store = TrustStore.from_pem_files(paths)
        return store, f"{len(paths)} PEM file(s) given with --trust"
    pki_dir: Path = args.data_dir / "pki"
    anchors = sorted((pki_dir / "trust").glob("*.pem"))
    if anchors:
        crls = sorted(pki_dir.glob("*.crl.pem"))
        store = TrustStore.from_pem_files([*anchors, *crls])
        return store, (
            f"the test PKI of {args.data_dir} ({len(anchors)} CA certificates, {len(crls)} "
            "CRLs); --trust names others"
        )
    return None, (
        f"none: no --trust given and no test PKI in {pki_dir}; the signer's certificate is "
        "NOT checked"
    )


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
