"""Issue 15 (message trace): one message followed hop by hop with ``kim-appliance trace``, from
the practice software through the Clientmodul, the sender's Fachdienst, the relay, the
recipient's Fachdienst and the Clientmodul again, as a newcomer would follow it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from e2e_appliance import Appliance, Launcher, cli, cm_send, cm_wait, mail

MESSAGE_ID = "trace-e2e-1@praxis.example"
SUBJECT = "Befund Mueller vertraulich"
BODY = b"Geheimer Befundtext, der in keiner Spur stehen darf.\r\n"


def _pair(app: Appliance) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sender and a recipient at two different Fachdienste (the message must be relayed)."""
    people = app.demo["participants"]
    sender = people[0]
    recipient = next(p for p in people if p["fachdienst"] != sender["fachdienst"])
    return sender, recipient


def test_one_message_is_followed_through_every_hop(data_dir: Path, launcher: Launcher) -> None:
    """The PVS's Message-ID (with or without angle brackets) finds every hop, oldest first:
    Clientmodul accepted/sealed/submitted 250, the sender's Fachdienst accepted/queued/relayed,
    the recipient's Fachdienst accepted/stored/fetched, the Clientmodul opened with
    DecryptionResult 00 (KOM-LE-A_2101-01: the KIM message carries the PVS's Message-ID). The
    output holds metadata only: neither the subject nor the body appears."""
    app = launcher.start(data_dir)
    sender, recipient = _pair(app)
    refused = cm_send(
        app,
        sender,
        [recipient["address"]],
        mail(sender["address"], recipient["address"], MESSAGE_ID, BODY, subject=SUBJECT),
    )
    assert refused == {}
    assert len(cm_wait(app, recipient, 1)) == 1
    d = ["--data-dir", str(data_dir)]
    shown = cli("trace", *d, MESSAGE_ID, cwd=data_dir.parent)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"message <{MESSAGE_ID}>"
    fd_a = f"fachdienst {sender['fachdienst']}"
    fd_b = f"fachdienst {recipient['fachdienst']}"
    # the hops in the order they happened (newest last)
    expected = [
        ("clientmodul", "accepted"),
        ("clientmodul", "sealed"),
        (fd_a, "accepted"),
        (fd_a, "queued"),
        ("clientmodul", "submitted"),
        (fd_b, "accepted"),
        (fd_b, "stored"),
        (fd_a, "relayed"),  # when fd_b's 250 came back, after fd_b had stored it
        (fd_b, "fetched"),
        ("clientmodul", "opened"),
    ]
    trace = json.loads(cli("trace", *d, f"<{MESSAGE_ID}>", "--json", cwd=data_dir.parent).stdout)
    events = trace["events"]
    assert [(e["component"], e["stage"]) for e in events] == expected, shown.stdout
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    by_stage = {(e["component"], e["stage"]): e for e in events}
    submitted = by_stage[("clientmodul", "submitted")]
    assert submitted["result"] == "250"
    sealed = by_stage[("clientmodul", "sealed")]
    assert sealed["facts"]["transport"] == "direct"
    assert sealed["facts"]["keys"]  # the key types encrypted for
    assert sealed["recipients"] == [recipient["address"]]
    assert by_stage[(fd_a, "relayed")]["result"] == "250"
    opened = by_stage[("clientmodul", "opened")]
    assert opened["result"] == "00"  # X-KIM-DecryptionResult
    assert opened["sender"].lower() == sender["address"].lower()
    assert all(e["node"] == "local" for e in events)
    # the human output: one line per hop, with the codes a user looks for
    assert len(lines) == 1 + len(expected)
    assert " 250 " in lines[1 + expected.index(("clientmodul", "submitted"))]
    # metadata only
    for text in (shown.stdout, json.dumps(trace)):
        assert SUBJECT not in text
        assert "Geheimer Befundtext" not in text


def test_a_message_is_found_by_its_sender_and_an_unknown_id_is_an_error(
    data_dir: Path, launcher: Launcher
) -> None:
    app = launcher.start(data_dir)
    sender, recipient = _pair(app)
    to = recipient["address"]
    cm_send(app, sender, [to], mail(sender["address"], to, "trace-e2e-2@praxis.example", BODY))
    d = ["--data-dir", str(data_dir)]
    listed = cli("trace", *d, "--sender", sender["address"].upper(), cwd=data_dir.parent)
    assert listed.returncode == 0, listed.stderr
    assert "<trace-e2e-2@praxis.example>" in listed.stdout
    assert recipient["address"] in listed.stdout
    unknown = cli("trace", *d, "never-sent@praxis.example", cwd=data_dir.parent)
    assert unknown.returncode == 1
    assert "nothing is known of the message never-sent@praxis.example" in unknown.stderr
    usage = cli("trace", *d, cwd=data_dir.parent)
    assert usage.returncode == 64
    assert "MESSAGE-ID" in usage.stderr
