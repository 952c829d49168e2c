"""The web console of a running ``kim-appliance run`` (DESIGN.md contract: endpoints.json
``console``): it shows the appliance's own mailboxes and its switches act on the appliance's
own Konnektor, which the Clientmodul uses."""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from e2e_appliance import Appliance, Launcher, cm_send, mail, restore_card, split_hostport


def _get(url: str) -> tuple[int, bytes, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read(), response.headers.get("Content-Type", "")


def _post_faults(app: Appliance, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        app.endpoints["console"] + "api/faults",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


@pytest.fixture
def app(launcher: Launcher, data_dir: Path) -> Appliance:
    return launcher.start(data_dir)


@pytest.mark.slow
def test_console_shows_the_running_appliance_and_switches_its_faults(app: Appliance) -> None:
    """The console URL of endpoints.json serves the page on the loopback address; its status
    lists the Clientmodul settings and the mailbox a message just went to (outer headers only,
    digest §2.2); removing a card there makes the Clientmodul refuse to send with 451
    (KOM-LE-A_2021), and putting it back lets the next message through."""
    console = app.endpoints["console"]
    host, _ = split_hostport(console.removeprefix("http://").rstrip("/"))
    assert host == "127.0.0.1"
    status, page, content_type = _get(console)
    assert status == 200
    assert content_type.startswith("text/html")
    assert b"console.js" in page

    weber, klein = app.participant("praxis.weber"), app.participant("zahnarzt.klein")
    cm_send(
        app,
        weber,
        [klein["address"]],
        mail(weber["address"], klein["address"], "c1@x", b"Hallo\r\n"),
    )
    _, raw, _ = _get(console + "api/status")
    state = json.loads(raw)
    assert state["mail_client"]["smtp"] == dict(
        zip(("host", "port"), split_hostport(app.endpoints["clientmodul"]["smtp"]), strict=True)
    )
    boxes = {box["address"]: box for fd in state["fachdienste"].values() for box in fd["mailboxes"]}
    # both on fd1: delivered before the 250 came back
    seen = [m["headers"] for m in boxes[klein["address"]]["newest"]]
    assert [h.get("subject") for h in seen] == ["KOM-LE-Nachricht"], seen
    assert b"Hallo" not in raw  # the content is encrypted and never shown

    iccsn = weber["card"]["iccsn"]
    _post_faults(app, {"card_removed": iccsn})
    with pytest.raises(smtplib.SMTPDataError) as refused:
        cm_send(
            app,
            weber,
            [klein["address"]],
            mail(weber["address"], klein["address"], "c2@x", b"x\r\n"),
        )
    assert refused.value.smtp_code == 451
    restore_card(app, iccsn)
    cm_send(
        app, weber, [klein["address"]], mail(weber["address"], klein["address"], "c3@x", b"y\r\n")
    )


@pytest.mark.slow
def test_console_refuses_a_foreign_host_header(app: Appliance) -> None:
    """A page of another site cannot reach the console through DNS rebinding: a request whose
    Host is not the console's own address is refused with 403 and a reason."""
    request = urllib.request.Request(
        app.endpoints["console"] + "api/status", headers={"Host": "evil.example:80"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403
    assert b"Host" in refused.value.read()
