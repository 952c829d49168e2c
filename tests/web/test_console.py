"""The web console: its page and files, the status it shows, the fault switches, and the guard
against requests a browser was tricked into sending (DNS rebinding, cross-site POSTs).

The console runs over real HTTP on port 0 (``serve_console``) over the appliance's own objects
(the Konnektor, the Fachdienst stores, the VZD store of a demo data dir), driven by httpx; its
script runs on node over a minimal DOM, and in headless Chromium (tests/web/chromium.py).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from chromium import Browser, chromium_path
from fd_support import store_bytes
from prometheus_client.parser import text_string_to_metric_families

from kim_appliance import demo as demo_setup
from kim_appliance.directory import DirectoryStore
from kim_appliance.directory.demo import entries_from_demo
from kim_appliance.konnektor.cards import PinStatus
from kim_appliance.konnektor.errors import KonnektorUnreachableError
from kim_appliance.konnektor.infomodell import Context
from kim_appliance.konnektor.operations import Konnektor
from kim_appliance.observe import Stage, TraceEvent, message_key, relay_key
from kim_appliance.store import Account, RelayRecipient, Store, open_store
from kim_appliance.web.console import STATIC_DIR, ConsoleState, serve_console

SECRET = "Befund-Inhalt-NICHT-ANZEIGEN-4711"
CONTEXT = Context("Mandant1", "PVS1", "AP1")


@dataclass
class Console:
    url: str
    host: str
    port: int
    client: httpx.AsyncClient
    state: ConsoleState
    data_dir: Path

    def participant(self, local: str) -> dict[str, Any]:
        return next(
            p for p in self.state.demo["participants"] if p["address"].startswith(local + "@")
        )

    async def switch(self, request: dict[str, Any]) -> httpx.Response:
        return await self.client.post("/api/faults", json=request)

    async def status(self) -> dict[str, Any]:
        response = await self.client.get("/api/status")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo data dir (test PKI, cards, konnektor.json), made once."""
    data_dir = tmp_path_factory.mktemp("console") / "kim-data"
    demo_setup.initialise(data_dir)
    return data_dir


def _endpoints(data_dir: Path) -> dict[str, Any]:
    """An endpoints dict shaped as the contract's endpoints.json."""
    return {
        "tls_ca": str(data_dir / "pki" / "tls-ca.pem"),
        "clientmodul": {"smtp": "127.0.0.1:1465", "pop3": "127.0.0.1:1995"},
        "fachdienste": {
            "fd1.kim.telematik-test": {
                "smtp": "127.0.0.1:2465",
                "pop3": "127.0.0.1:2995",
                "https": "https://127.0.0.1:2443",
            }
        },
        "konnektor": {"sds": "https://127.0.0.1:4443/connector.sds"},
        "directory": {"ldap": "127.0.0.1:3389", "base_dn": "dc=data,dc=vzd"},
    }


@pytest.fixture(scope="module")
def shared_konnektor(template: Path) -> Konnektor:
    """One Konnektor for the module (loading the cards takes a while); ``state`` resets it."""
    return Konnektor.from_data_dir(template, persist_revocations=False)


def _reset(konnektor: Konnektor) -> None:
    konnektor.admin.clear()
    for card in konnektor.cards:
        for spec in card.spec.pins:
            card.pin(spec.pin_type).force(PinStatus(spec.status))


async def _state(data_dir: Path, konnektor: Konnektor, store: Store) -> ConsoleState:
    """The console's view of a demo data dir, with a fresh store in ``data_dir``: the demo
    participants' accounts and VZD entries."""
    demo = json.loads((data_dir / "demo.json").read_text(encoding="utf-8"))
    for p in demo["participants"]:
        await store.accounts.create(
            Account(p["address"], "not-a-login-test", p["telematik_id"], p["display_name"])
        )
    directory = await DirectoryStore.open(store.directory)
    await directory.populate(entries_from_demo(data_dir))
    return ConsoleState(
        konnektor=konnektor,
        store=store,
        domains=sorted({p["fachdienst"] for p in demo["participants"]}),
        directory=directory,
        demo=demo,
        endpoints=_endpoints(data_dir),
    )


@pytest.fixture
async def state(
    tmp_path: Path, template: Path, shared_konnektor: Konnektor
) -> AsyncIterator[ConsoleState]:
    data_dir = tmp_path / "kim-data"
    shutil.copytree(template, data_dir)
    _reset(shared_konnektor)
    async with open_store(None, data_dir) as store:
        yield await _state(data_dir, shared_konnektor, store)
    _reset(shared_konnektor)


@pytest.fixture
async def console(state: ConsoleState, tmp_path: Path) -> AsyncIterator[Console]:
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(partial(serve_console, state, bind="127.0.0.1", port=0))
        url = f"http://{host}:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            yield Console(url, host, port, client, state, tmp_path / "kim-data")
        nursery.cancel_scope.cancel()


async def _deliver(store: Store, mailbox: str, message: bytes) -> None:
    await store_bytes(store, mailbox, message, prefix=b"Return-Path: <x@y>\r\n")


def _kim_message(sender: str, recipient: str, subject: str = "KOM-LE-Nachricht") -> bytes:
    return (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject}\r\n"
        "Date: Tue, 03 Mar 2026 10:15:00 +0100\r\nMessage-ID: <abc@fd1.kim.telematik-test>\r\n"
        "X-KOM-LE-Version: 1.5\r\n"
        "Content-Type: application/pkcs7-mime; smime-type=authenveloped-data\r\n"
        f"\r\n{SECRET}\r\n"
    ).encode()


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.references.append(value)


# --- the page ----------------------------------------------------------------------------------


async def test_page_references_only_files_the_console_serves(console: Console) -> None:
    """The page works offline: every src/href is a file of this console (or an anchor), none
    points to another host, and every referenced file is served."""
    page = await console.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    parser = _References()
    parser.feed(page.text)
    files = [r for r in parser.references if not r.startswith("#")]
    assert files, "the page references no script or style sheet"
    for reference in files:
        assert reference.startswith("/"), reference
        assert not reference.startswith("//"), reference
        response = await console.client.get(reference)
        assert response.status_code == 200, f"{reference}: {response.status_code}"
    for name in ("console.js", "console.css"):
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        assert "http://" not in text, f"{name} loads from elsewhere"
        assert "https://" not in text, f"{name} loads from elsewhere"


async def test_only_the_shipped_files_are_served(console: Console) -> None:
    for path in ("/static/nothing.js", "/static/..%2Fconsole%2Fapp.py", "/pki/tls-ca.pem"):
        response = await console.client.get(path)
        assert response.status_code == 404, path
        assert "error" in response.json()


def test_console_js_parses_and_never_inserts_html() -> None:
    """Mail subjects and names are untrusted: the script only uses textContent-style DOM calls,
    never innerHTML/outerHTML/insertAdjacentHTML/document.write/eval."""
    script = (STATIC_DIR / "console.js").read_text(encoding="utf-8")
    for dangerous in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert dangerous not in script, dangerous
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: syntax check skipped")
    result = subprocess.run(
        [node, "--check", str(STATIC_DIR / "console.js")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# --- what the status shows ---------------------------------------------------------------------


async def test_status_shows_mail_client_settings_and_participants(console: Console) -> None:
    status = await console.status()
    assert status["endpoints"] == console.state.endpoints
    client = status["mail_client"]
    assert client["smtp"] == {"host": "127.0.0.1", "port": 1465}
    assert client["pop3"] == {"host": "127.0.0.1", "port": 1995}
    assert client["tls_ca"].endswith("tls-ca.pem")
    weber = next(p for p in status["participants"] if p["address"].startswith("praxis.weber@"))
    expected = console.participant("praxis.weber")
    assert weber["smtp_username"] == expected["smtp_username"]
    assert weber["pop3_username"] == expected["pop3_username"]
    assert weber["password"] == expected["password"]
    card = weber["card"]["state"]
    assert card["iccsn"] == expected["card"]["iccsn"]
    assert card["inserted"] is True
    assert card["pins"]["PIN.SMC"]["status"] == "VERIFIED"
    assert card["keys"]["ENC"] == ["RSA"]
    # the brainpool-only and the HBA participant show their key types too
    sonne = next(c for c in status["cards"] if c["holder"] == "Sonnen-Apotheke")
    assert sonne["keys"]["ENC"] == ["ECC"]
    hba = next(c for c in status["cards"] if c["type"] == "HBA")
    assert "PIN.CH" in hba["pins"]


async def test_status_shows_konnektor_contexts_and_sds(console: Console) -> None:
    konnektor = (await console.status())["konnektor"]
    assert konnektor["sds"] == "https://127.0.0.1:4443/connector.sds"
    assert {"mandant": "Mandant1", "client_system": "PVS1", "workplace": "AP1"} in konnektor[
        "contexts"
    ]
    assert konnektor["unreachable"] is False


async def test_endpoints_added_after_start_are_shown(console: Console) -> None:
    """The appliance adds the console's own URL once it is bound; the next status has it."""
    console.state.endpoints["console"] = console.url + "/"
    assert (await console.status())["endpoints"]["console"] == console.url + "/"


async def test_mailboxes_show_outer_headers_but_never_the_content(console: Console) -> None:
    """Message count, size and the newest messages' Subject/From/Date (the outer mail of
    digest §2.2); the encrypted body never appears in the console's answer."""
    weber = console.participant("praxis.weber")["address"]
    sender = console.participant("zahnarzt.klein")["address"]
    store = console.state.store
    await _deliver(store, weber, _kim_message(sender, weber))
    await _deliver(store, weber, _kim_message(sender, weber, "=?utf-8?q?Arztbrief_M=C3=BCller?="))
    response = await console.client.get("/api/status")
    assert SECRET not in response.text
    mailboxes = response.json()["fachdienste"]["fd1.kim.telematik-test"]["mailboxes"]
    box = next(m for m in mailboxes if m["address"] == weber)
    assert box["messages"] == 2
    assert box["size"] == sum(m.size for m in await store.mail.list(weber))
    subjects = {n["headers"]["subject"] for n in box["newest"]}
    assert subjects == {"KOM-LE-Nachricht", "Arztbrief Müller"}
    newest = box["newest"][0]
    assert newest["headers"]["from"] == sender
    assert newest["headers"]["date"] == "Tue, 03 Mar 2026 10:15:00 +0100"
    assert newest["headers"]["x-kom-le-version"] == "1.5"
    assert set(newest["headers"]) <= {
        "subject",
        "from",
        "to",
        "date",
        "message-id",
        "x-kom-le-version",
    }
    empty = next(m for m in mailboxes if m["address"] != weber)
    assert empty["messages"] == 0
    assert empty["newest"] == []


async def test_relay_queue_length_per_fachdienst(console: Console) -> None:
    store = console.state.store
    now = dt.datetime.now(dt.UTC)
    sonne = console.participant("apotheke.sonne")["address"]
    for _ in range(3):
        async with store.blobs.writer() as writer:
            await writer.write(b"Subject: KOM-LE-Nachricht\r\n\r\nx\r\n")
            await store.relay.enqueue(
                await writer.commit(),
                sender=console.participant("praxis.weber")["address"],
                recipients=[RelayRecipient(sonne)],
                envid=None,
                ret=None,
                source_domain="fd1.kim.telematik-test",
                domain="fd2.kim.telematik-test",
                not_after=now + dt.timedelta(days=2),
                now=now,
            )
    fachdienste = (await console.status())["fachdienste"]
    queue = fachdienste["fd1.kim.telematik-test"]["relay_queue"]
    assert queue["length"] == 3
    assert queue["entries"][0]["to_domain"] == "fd2.kim.telematik-test"
    assert queue["entries"][0]["recipients"] == [sonne]
    assert fachdienste["fd2.kim.telematik-test"]["relay_queue"]["length"] == 0


async def test_directory_entries_with_certificates(console: Console) -> None:
    """The VZD entries (digest §4.1): addresses as komLeData and the ENC certificates."""
    directory = (await console.status())["directory"]
    assert directory["base_dn"] == "dc=data,dc=vzd"
    entry = next(
        e for e in directory["entries"] if "apotheke.sonne@fd2.kim.telematik-test" in e["mail"]
    )
    assert entry["dn"].endswith(",dc=data,dc=vzd")
    assert entry["certificates"], "no certificate listed"
    assert all(c["algorithm"] == "ECC brainpoolP256r1" for c in entry["certificates"])
    both = next(e for e in directory["entries"] if any("zahnarzt.klein" in m for m in e["mail"]))
    assert {c["algorithm"] for c in both["certificates"]} == {"RSA-2048", "ECC brainpoolP256r1"}


# --- the fault switches ------------------------------------------------------------------------


async def test_fault_switches_change_what_the_konnektor_does(console: Console) -> None:
    konnektor = console.state.konnektor
    iccsn = console.participant("praxis.weber")["card"]["iccsn"]
    visible = {c.iccsn for c in konnektor.get_cards(CONTEXT)}
    assert iccsn in visible

    response = await console.switch({"card_removed": iccsn})
    assert response.status_code == 200, response.text
    assert iccsn not in {c.iccsn for c in konnektor.get_cards(CONTEXT)}
    card = next(c for c in (await console.status())["cards"] if c["iccsn"] == iccsn)
    assert card["inserted"] is False

    await console.switch({"pin_status": {"iccsn": iccsn, "status": "BLOCKED"}})
    await console.switch({"latency_ms": {"iccsn": iccsn, "ms": 250}})
    card = next(c for c in (await console.status())["cards"] if c["iccsn"] == iccsn)
    assert card["pins"]["PIN.SMC"]["status"] == "BLOCKED"
    assert card["latency_ms"] == 250

    await console.switch({"unreachable": True})
    with pytest.raises(KonnektorUnreachableError):
        konnektor.get_cards(CONTEXT)
    assert (await console.status())["konnektor"]["unreachable"] is True

    response = await console.switch({"clear": True})
    assert response.status_code == 200
    assert iccsn in {c.iccsn for c in konnektor.get_cards(CONTEXT)}
    card = next(c for c in (await console.status())["cards"] if c["iccsn"] == iccsn)
    assert card["inserted"] is True
    assert card["latency_ms"] == 0
    # "clear" returns the card to its first state: the PIN VERIFIED again (issue 15)
    assert card["pins"]["PIN.SMC"] == {"status": "VERIFIED", "left_tries": 3}


async def test_revoking_a_card_certificate_is_listed(console: Console, template: Path) -> None:
    # a revocation cannot be undone: this test gets a Konnektor of its own
    console.state.konnektor = Konnektor.from_data_dir(template, persist_revocations=False)
    iccsn = console.participant("apotheke.sonne")["card"]["iccsn"]
    response = await console.switch({"revoke": {"iccsn": iccsn, "purpose": "ENC", "crypt": "ECC"}})
    assert response.status_code == 200, response.text
    revoked = (await console.status())["konnektor"]["revoked"]
    assert [(r["iccsn"], r["purpose"], r["crypt"]) for r in revoked] == [(iccsn, "ENC", "ECC")]


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"card_removed": "80276883119999999999"}, "card_removed"),
        ({"card_remove": "80276883110000100001"}, "card_remove"),
        ({"latency_ms": -5}, "latency_ms"),
        ({"unreachable": "yes"}, "unreachable"),
    ],
)
async def test_bad_switch_requests_name_the_field(
    console: Console, request_body: dict[str, Any], field: str
) -> None:
    response = await console.switch(request_body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{field}: ")


async def test_bad_json_is_refused(console: Console) -> None:
    response = await console.client.post(
        "/api/faults", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("body: ")


# --- the guard ---------------------------------------------------------------------------------


def _weber_removed(console: Console) -> bool:
    iccsn = console.participant("praxis.weber")["card"]["iccsn"]
    return not console.state.konnektor.cards.by_iccsn(iccsn).inserted


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_post_without_json_content_type_is_refused(
    console: Console, content_type: str | None
) -> None:
    """What an HTML form or a "simple" cross-site fetch can send is refused with 415."""
    iccsn = console.participant("praxis.weber")["card"]["iccsn"]
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await console.client.post(
        "/api/faults", content=json.dumps({"card_removed": iccsn}).encode(), headers=headers
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]
    assert not _weber_removed(console)


@pytest.mark.parametrize("path", ["/", "/api/status", "/static/console.js"])
async def test_foreign_host_header_is_refused(console: Console, path: str) -> None:
    """DNS rebinding: a page of evil.example resolving to 127.0.0.1 gets nothing back."""
    response = await console.client.get(path, headers={"Host": f"evil.example:{console.port}"})
    assert response.status_code == 403
    assert "Host" in response.json()["error"]
    assert "password" not in response.text


async def test_foreign_host_cannot_switch_faults(console: Console) -> None:
    iccsn = console.participant("praxis.weber")["card"]["iccsn"]
    response = await console.client.post(
        "/api/faults",
        json={"card_removed": iccsn},
        headers={"Host": f"rebind.example:{console.port}"},
    )
    assert response.status_code == 403
    assert not _weber_removed(console)


async def test_localhost_host_header_is_accepted(console: Console) -> None:
    response = await console.client.get(
        "/api/status", headers={"Host": f"localhost:{console.port}"}
    )
    assert response.status_code == 200
    wrong_port = await console.client.get(
        "/api/status", headers={"Host": f"localhost:{console.port + 1}"}
    )
    assert wrong_port.status_code == 403


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}],
)
async def test_cross_site_post_is_refused(console: Console, headers: dict[str, str]) -> None:
    iccsn = console.participant("praxis.weber")["card"]["iccsn"]
    response = await console.client.post(
        "/api/faults", json={"card_removed": iccsn}, headers=headers
    )
    assert response.status_code == 403
    assert not _weber_removed(console)


async def test_same_origin_post_from_the_page_is_accepted(console: Console) -> None:
    """What the console's own page sends (Origin and Sec-Fetch-Site of a same-origin fetch)."""
    iccsn = console.participant("praxis.weber")["card"]["iccsn"]
    response = await console.client.post(
        "/api/faults",
        json={"card_removed": iccsn},
        headers={"Origin": console.url, "Sec-Fetch-Site": "same-origin"},
    )
    assert response.status_code == 200, response.text
    assert _weber_removed(console)


async def test_no_cors_headers_and_no_preflight(console: Console) -> None:
    preflight = await console.client.options(
        "/api/faults",
        headers={
            "Origin": "http://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code in (403, 405)
    get = await console.client.get("/api/status", headers={"Origin": "http://evil.example"})
    for response in (preflight, get):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]
    assert get.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in get.headers["content-security-policy"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_other_methods_are_refused(console: Console, method: str) -> None:
    iccsn = console.participant("praxis.weber")["card"]["iccsn"]
    response = await console.client.request(method, "/api/faults", json={"card_removed": iccsn})
    assert response.status_code == 405
    assert not _weber_removed(console)


async def test_get_never_switches_anything(console: Console) -> None:
    iccsn = console.participant("praxis.weber")["card"]["iccsn"]
    response = await console.client.get("/api/faults", params={"card_removed": iccsn})
    assert response.status_code == 200
    assert not _weber_removed(console)
    assert response.json()["unreachable"] is False


# --- the listener ------------------------------------------------------------------------------


async def test_taken_port_raises_before_started(state: ConsoleState) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # a plain OSError (not wrapped in an exception group), so the appliance can name
        # the configured port in its error message
        with pytest.raises(OSError, match="in use") as raised:
            await serve_console(state, bind="127.0.0.1", port=port)
        assert raised.value.errno == errno.EADDRINUSE


async def test_extra_allowed_host_is_accepted(state: ConsoleState) -> None:
    """A console bound beyond loopback can be reached by a configured host name, and only by
    that one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                serve_console,
                state,
                bind="127.0.0.1",
                port=port,
                allowed_hosts=[f"kim-box.example:{port}"],
            )
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            named = await client.get("/api/status", headers={"Host": f"kim-box.example:{port}"})
            other = await client.get("/api/status", headers={"Host": f"other.example:{port}"})
        nursery.cancel_scope.cancel()
    assert named.status_code == 200
    assert other.status_code == 403


# A minimal DOM for node: enough for console.js to render a status into element trees whose
# text can be read back. It records every element created, so a test sees what tags the
# script makes from the data.
_DOM_SHIM = r"""
const fs = require("fs");
const vm = require("vm");
const status = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const created = [];
class FakeNode {
  constructor() { this.children = []; this.listeners = {}; }
  // as in a browser, anything that is not a node becomes text (null becomes "null")
  append(...c) { this.children.push(...c.map(toNode)); }
  replaceChildren(...c) { this.children = c.map(toNode); }
  addEventListener(type, f) { (this.listeners[type] ||= []).push(f); }
  get textContent() { return this.children.map((c) => c.textContent).join(""); }
  set textContent(v) { this.children = [new FakeText(String(v))]; }
  remove() {}
  select() {}
}
const toNode = (x) => (x instanceof FakeNode ? x : new FakeText(String(x)));
class FakeText extends FakeNode {
  constructor(t) { super(); this.text = t; }
  get textContent() { return this.text; }
}
class FakeElement extends FakeNode {
  constructor(tag) {
    super(); this.tagName = tag.toUpperCase(); this.attributes = {}; this.className = "";
    this.hidden = false; this.classList = { remove() {} }; created.push(this.tagName);
  }
  setAttribute(k, v) { this.attributes[k] = v; }
}
const ids = {};
globalThis.Node = FakeNode;
globalThis.document = {
  createElement: (t) => new FakeElement(t),
  createTextNode: (t) => new FakeText(t),
  getElementById: (id) => (ids[id] ||= new FakeElement("div")),
  addEventListener: (type, f) => { if (type === "DOMContentLoaded") globalThis.start = f; },
  body: new FakeElement("body"),
  activeElement: null,
};
globalThis.window = { isSecureContext: true, confirm: () => true };
globalThis.navigator = {};
const posted = [];
globalThis.fetch = async (url, options) => {
  if (options && options.method === "POST") posted.push({ url, body: JSON.parse(options.body) });
  return { ok: true, status: 200, json: async () => status };
};
globalThis.setInterval = () => 1;
globalThis.clearInterval = () => {};
globalThis.setTimeout = () => 1;
vm.runInThisContext(fs.readFileSync(process.argv[3], "utf8"));
const buttons = [];
const walk = (node) => {
  if (node.tagName === "BUTTON") buttons.push(node);
  for (const child of node.children) walk(child);
};
(async () => {
  globalThis.start();
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  const text = {};
  for (const [id, node] of Object.entries(ids)) text[id] = node.textContent;
  // argv[4], if given: the label of a button to click (as a user would), then wait again
  const label = process.argv[4];
  if (label) {
    for (const node of Object.values(ids)) walk(node);
    const button = buttons.find((b) => b.textContent === label);
    if (!button) throw new Error(`no button ${label}`);
    for (const listener of button.listeners.click || []) listener();
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  }
  console.log(JSON.stringify({ text, created: [...new Set(created)].sort(), posted }));
})();
"""


async def test_page_renders_the_status_as_text(console: Console, tmp_path: Path) -> None:
    """The script renders a real status into every section (run by node on a minimal DOM),
    and a hostile mail subject stays text: no element is made from it."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    weber = console.participant("praxis.weber")["address"]
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    await _deliver(console.state.store, weber, _kim_message(weber, weber, hostile))
    await console.switch({"card_removed": console.participant("apotheke.sonne")["card"]["iccsn"]})
    (tmp_path / "status.json").write_text(json.dumps(await console.status()), encoding="utf-8")
    (tmp_path / "shim.js").write_text(_DOM_SHIM, encoding="utf-8")
    result = await trio.run_process(
        [node, tmp_path / "shim.js", tmp_path / "status.json", STATIC_DIR / "console.js"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    rendered = json.loads(result.stdout)
    text = rendered["text"]
    assert "Cannot read" not in text.get("message", ""), text["message"]
    for section, shown in text.items():
        assert "undefined" not in shown, section
        assert "null" not in shown, section
        assert "[object" not in shown, section
    assert hostile in text["mailboxes-body"]
    assert "SCRIPT" not in rendered["created"]
    assert "IMG" not in rendered["created"]
    assert console.participant("praxis.weber")["smtp_username"] in text["mail-client-body"]
    assert "80276883110000100002" in text["cards-body"]
    assert "removed" in text["cards-body"]
    assert "Mandant1" in text["konnektor-body"]
    assert "dc=data,dc=vzd" in text["directory-body"]
    assert "https://127.0.0.1:4443/connector.sds" in text["endpoints-body"]


async def _render(console: Console, tmp_path: Path, click: str | None = None) -> dict[str, Any]:
    """console.js run by node on the minimal DOM over the console's real status; ``click``
    names a button to press afterwards. What it showed and what it POSTed."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    (tmp_path / "status.json").write_text(json.dumps(await console.status()), encoding="utf-8")
    (tmp_path / "shim.js").write_text(_DOM_SHIM, encoding="utf-8")
    command = [node, tmp_path / "shim.js", tmp_path / "status.json", STATIC_DIR / "console.js"]
    result = await trio.run_process(
        [*command, *([click] if click else [])],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    rendered: dict[str, Any] = json.loads(result.stdout)
    return rendered


async def test_a_card_put_back_gets_a_verify_pin_button(console: Console, tmp_path: Path) -> None:
    """issue 15: a card put back has its PIN VERIFIABLE; the page offers "Verify PIN.SMC",
    which POSTs the verify_pin switch, and the switch makes the PIN VERIFIED."""
    iccsn = console.participant("praxis.weber")["card"]["iccsn"]
    await console.switch({"card_removed": iccsn})
    await console.switch({"card_inserted": iccsn})
    rendered = await _render(console, tmp_path, click="Verify PIN.SMC")
    assert "VERIFIABLE" in rendered["text"]["cards-body"]
    request = {"verify_pin": {"iccsn": iccsn, "pin_type": "PIN.SMC"}}
    assert rendered["posted"] == [{"url": "/api/faults", "body": request}]
    response = await console.switch(request)
    assert response.status_code == 200, response.text
    card = next(c for c in response.json()["cards"] if c["iccsn"] == iccsn)
    assert card["pins"]["PIN.SMC"] == {"status": "VERIFIED", "left_tries": 3}
    after = await _render(console, tmp_path)
    assert "Verify PIN" not in json.dumps(after["text"])


async def test_a_blocked_pin_is_unblocked_as_with_the_puk(console: Console, tmp_path: Path) -> None:
    """The page's unblock button sends unblock_pin (BLOCKED -> VERIFIABLE, as with the PUK),
    not a forced VERIFIED; the next render offers "Verify PIN.SMC"."""
    iccsn = console.participant("apotheke.sonne")["card"]["iccsn"]
    await console.switch({"pin_blocked": iccsn})
    rendered = await _render(console, tmp_path, click="Unblock PIN.SMC (PUK)")
    request = {"unblock_pin": {"iccsn": iccsn, "pin_type": "PIN.SMC"}}
    assert rendered["posted"] == [{"url": "/api/faults", "body": request}]
    await console.switch(request)
    again = await _render(console, tmp_path, click="Verify PIN.SMC")
    assert again["posted"][0]["body"] == {"verify_pin": {"iccsn": iccsn, "pin_type": "PIN.SMC"}}


async def test_the_icon_is_served_where_a_browser_asks(console: Console) -> None:
    """issue 15: no 404 for the icon in the browser's log: the page names /static/favicon.svg
    and /favicon.ico answers with the same picture."""
    page = (await console.client.get("/")).text
    assert '<link rel="icon" href="/static/favicon.svg"' in page
    named = await console.client.get("/static/favicon.svg")
    default = await console.client.get("/favicon.ico")
    for response in (named, default):
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/svg+xml"
        assert response.content.startswith(b"<svg ")
    assert named.content == default.content


async def test_the_console_logs_its_address_once(
    state: ConsoleState, caplog: pytest.LogCaptureFixture
) -> None:
    """issue 15: one startup line with the console's URL."""
    with caplog.at_level(logging.INFO, logger="kim_appliance.web.console"):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(
                partial(serve_console, state, bind="127.0.0.1", port=0)
            )
            nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "kim_appliance.web.console"]
    assert lines == [f"console: http://{host}:{port}/"]


def _click_verify_pin_in_chromium(url: str) -> tuple[str, list[str]]:
    """Open the console in headless Chromium, press the first "Verify PIN.SMC" button as a
    user would; the message the page shows, and every problem the browser logged."""
    executable = chromium_path()
    assert executable is not None
    with Browser(executable) as browser:
        browser.open(url)
        buttons = "[...document.querySelectorAll('button')]"
        browser.wait_until(f"{buttons}.some((b) => b.textContent === 'Verify PIN.SMC')")
        browser.evaluate(f"{buttons}.find((b) => b.textContent === 'Verify PIN.SMC').click()")
        shown = browser.wait_until(
            "(() => { const m = document.getElementById('message');"
            " return !m.hidden && m.textContent; })()"
        )
        browser.settle(0.5)
        return str(shown), [f"{p.kind}: {p.text}" for p in browser.problems]


async def test_verify_pin_in_headless_chromium_without_a_browser_error(console: Console) -> None:
    """issue 15, in a real browser: the page loads without any 4xx, failed load or console
    error (the icon included: it was a 404 before), and its "Verify PIN.SMC" button makes a
    card that was put back usable again."""
    if chromium_path() is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    iccsn = console.participant("praxis.weber")["card"]["iccsn"]
    await console.switch({"card_removed": iccsn})
    await console.switch({"card_inserted": iccsn})
    shown, problems = await trio.to_thread.run_sync(_click_verify_pin_in_chromium, console.url)
    assert shown == f"verify PIN.SMC of {iccsn}: done"
    assert problems == []
    card = next(c for c in (await console.status())["cards"] if c["iccsn"] == iccsn)
    assert card["pins"]["PIN.SMC"] == {"status": "VERIFIED", "left_tries": 3}


# --- the message trace and /metrics (issue 15) -------------------------------------------------

TRACED_ID = "<trace-console-1@praxis.example>"
HOSTILE = "<img src=x onerror=alert(1)>"


async def _trace_two_messages(console: Console) -> tuple[str, str]:
    """Two traced messages in the store (as the appliance's observer writes them): one from
    praxis.weber with five hops, one to praxis.weber; the first's detail is hostile text."""
    weber = console.participant("praxis.weber")["address"]
    other = next(p["address"] for p in console.state.demo["participants"] if p["address"] != weber)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    keep = dt.timedelta(days=90)
    relay = relay_key("ab" * 16)

    def hop(n: int, component: str, stage: Stage, ids: tuple[str, ...], **kw: Any) -> TraceEvent:
        at = start + dt.timedelta(seconds=n)
        return TraceEvent(at, "local", component, stage, ids, at + keep, **kw)

    first = message_key(TRACED_ID)
    await console.state.store.traces.add([
        hop(0, "clientmodul", Stage.ACCEPTED, (first,), sender=weber, recipients=(other,),
            size=1200),
        hop(1, "clientmodul", Stage.SEALED, (first,), sender=weber, recipients=(other,),
            size=6900, facts={"keys": "RSA-2048", "transport": "direct"}, detail=HOSTILE),
        hop(2, "fachdienst fd1.kim.telematik-test", Stage.QUEUED, (first, relay), sender=weber,
            recipients=(other,)),
        hop(3, "clientmodul", Stage.SUBMITTED, (first,), sender=weber, recipients=(other,),
            result="250"),
        hop(4, "fachdienst fd1.kim.telematik-test", Stage.RELAYED, (relay,), sender=weber,
            recipients=(other,), result="250"),
        hop(9, "clientmodul", Stage.OPENED, (message_key("<back@x>"),), sender=other,
            recipients=(weber,), result="00"),
    ])  # fmt: skip
    return weber, other


async def test_trace_api_finds_messages_by_address_and_id(console: Console) -> None:
    """Search by sender or recipient lists each message once, newest first; its Message-ID
    (with or without brackets) gives every hop, the relay's included; unknown ids are 404."""
    weber, other = await _trace_two_messages(console)
    listed = (await console.client.get("/api/traces", params={"q": weber.upper()})).json()
    assert [m["message_id"] for m in listed["messages"]] == ["<back@x>", TRACED_ID]
    first = listed["messages"][1]
    assert (first["sender"], first["recipients"], first["hops"]) == (weber, [other], 5)
    assert (first["stage"], first["result"]) == ("relayed", "250")
    trace = (await console.client.get("/api/trace", params={"id": TRACED_ID.strip("<>")})).json()
    assert [e["stage"] for e in trace["events"]] == [
        "accepted", "sealed", "queued", "submitted", "relayed",
    ]  # fmt: skip
    missing = await console.client.get("/api/trace", params={"id": "nope@x"})
    assert missing.status_code == 404
    assert "no trace of the message" in missing.json()["error"]
    assert (await console.client.get("/api/traces", params={"q": "nobody@x"})).json() == {
        "messages": []
    }


async def test_metrics_in_prometheus_text_format(console: Console) -> None:
    """/metrics on the console's listener: the appliance's families in its own registry, the
    relay queue read from the store at the scrape."""
    await _deliver_to_relay_queue(console.state.store)
    reply = await console.client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    for name in ("kim_messages", "kim_stage_duration_seconds", "kim_sessions",
                 "kim_auth_failures", "kim_auth_lockouts", "kim_kas_bytes",
                 "kim_relay_queue_entries", "kim_relay_queue_oldest_seconds"):  # fmt: skip
        assert name in families, name
    queued = {s.labels["domain"]: s.value for s in families["kim_relay_queue_entries"].samples}
    assert queued["fd1.kim.telematik-test"] == 1
    assert "python_gc" not in reply.text  # not the library's global registry


async def _deliver_to_relay_queue(store: Store) -> None:
    async with store.blobs.writer() as writer:
        await writer.write(b"Subject: x\r\n\r\nx\r\n")
        blob = await writer.commit()
        now = dt.datetime.now(dt.UTC)
        await store.relay.enqueue(
            blob, sender="praxis.weber@fd1.kim.telematik-test",
            recipients=[RelayRecipient("apotheke.sonne@fd2.kim.telematik-test")], envid=None,
            ret=None, source_domain="fd1.kim.telematik-test", domain="fd2.kim.telematik-test",
            not_after=now + dt.timedelta(days=1), now=now - dt.timedelta(seconds=30),
        )  # fmt: skip


def _follow_a_message_in_chromium(url: str, query: str) -> tuple[str, str, list[str], int]:
    """Open the console in headless Chromium, type ``query`` into the trace search as a user
    would, press Search, click the older message; the list's text, the hops' text, every
    problem the browser logged, and how many <img> elements the page holds."""
    executable = chromium_path()
    assert executable is not None
    with Browser(executable) as browser:
        browser.open(url)
        browser.wait_until("document.getElementById('trace-search') !== null")
        browser.evaluate(f"document.getElementById('trace-query').value = {json.dumps(query)}")
        browser.evaluate("document.querySelector('#trace-search button[type=submit]').click()")
        browser.wait_until("document.querySelectorAll('#trace-results tbody tr').length === 2")
        listed = str(browser.evaluate("document.getElementById('trace-results').innerText"))
        browser.evaluate(
            "[...document.querySelectorAll('button.trace-open')]"
            f".find((b) => b.textContent === {json.dumps(TRACED_ID)}).click()"
        )
        browser.wait_until("document.querySelectorAll('#trace-hops tbody tr').length === 5")
        hops = str(browser.evaluate("document.getElementById('trace-hops').innerText"))
        images = int(browser.evaluate("document.querySelectorAll('img').length"))
        browser.settle(0.5)
        return listed, hops, [f"{p.kind}: {p.text}" for p in browser.problems], images


async def test_a_message_is_followed_in_headless_chromium(console: Console) -> None:
    """issue 15, in a real browser: search by the sender's address lists both messages newest
    first; clicking one shows its hops oldest first with their result codes; a hostile detail
    stays text; no 4xx, failed load or console error."""
    if chromium_path() is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    weber, other = await _trace_two_messages(console)
    listed, hops, problems, images = await trio.to_thread.run_sync(
        _follow_a_message_in_chromium, console.url, weber
    )
    assert listed.index("<back@x>") < listed.index(TRACED_ID)  # newest first
    assert "relayed 250" in listed
    lines = [line for line in hops.splitlines() if line.strip()]
    assert lines[0] == f"Hops of {TRACED_ID}"
    stages = ["accepted", "sealed", "queued", "submitted", "relayed"]
    rows = [line for line in lines if any(f"\t{s}\t" in line for s in stages)]
    assert [next(s for s in stages if f"\t{s}\t" in r) for r in rows] == stages
    assert "keys=RSA-2048; transport=direct" in hops
    assert HOSTILE in hops  # shown as text ...
    assert images == 0  # ... never made into an element
    assert f"{weber} → {other}" in hops
    assert problems == []
