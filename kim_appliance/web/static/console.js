// kim-appliance console: fetches /api/status and renders it; the fault switches POST JSON to
// /api/faults; the message trace searches /api/traces and shows /api/trace (issue 15).
// Plain JavaScript, no libraries, nothing loaded from elsewhere.
// Every value from the appliance (mail subjects, names) is untrusted text: it is only ever put
// into the page with textContent (the `el` helper), never as HTML.
"use strict";

const REFRESH_MS = 3000;
let timer = null;
let busy = false;

// --- small DOM helpers -----------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))));
}

function code(text) {
  return el("code", {}, text === null || text === undefined ? "–" : text);
}

function copyable(text) {
  if (text === null || text === undefined || text === "") return code(null);
  const button = el("button", { type: "button", class: "copy", title: "copy" }, "copy");
  button.addEventListener("click", () => copy(String(text), button));
  return el("span", {}, code(text), button);
}

function copy(text, button) {
  const done = () => {
    button.textContent = "copied";
    setTimeout(() => { button.textContent = "copy"; }, 1200);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text, done));
  } else {
    fallbackCopy(text, done);
  }
}

function fallbackCopy(text, done) {
  const area = el("textarea", { readonly: true });
  area.value = text;
  document.body.append(area);
  area.select();
  try { document.execCommand("copy"); done(); } finally { area.remove(); }
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function state(ok, okText, badText) {
  return el("span", { class: ok ? "ok" : "bad" }, ok ? okText : badText);
}

function show(message, kind) {
  const box = document.getElementById("message");
  box.textContent = message;
  box.className = kind === "info" ? "message info" : "message";
  box.hidden = !message;
}

function fill(id, ...content) {
  const target = document.getElementById(id);
  target.classList.remove("loading");
  // replaceChildren would turn null into the text "null": leave the absent parts out
  target.replaceChildren(...content.filter((part) => part !== null && part !== undefined));
}

// --- talking to the console API --------------------------------------------------------------

async function load() {
  if (busy) return;
  busy = true;
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    render(body);
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    show(`Cannot read the appliance's status: ${error.message}. Is kim-appliance still running?`);
  } finally {
    busy = false;
  }
}

async function switchFaults(request, description) {
  try {
    const response = await fetch("/api/faults", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    show(`${description}: done`, "info");
  } catch (error) {
    show(`${description} failed: ${error.message}`);
  }
  await load();
}

// --- the sections ----------------------------------------------------------------------------

function render(s) {
  renderEndpoints(s);
  renderMailClient(s);
  renderKonnektor(s);
  renderCards(s);
  renderMailboxes(s);
  renderDirectory(s);
}

function renderEndpoints(s) {
  const e = s.endpoints || {};
  const rows = [];
  const add = (name, value) => rows.push([name, copyable(value)]);
  add("TLS CA (trust this PEM)", e.tls_ca);
  for (const [k, v] of Object.entries(e.clientmodul || {})) add(`Clientmodul ${k.toUpperCase()}S`, v);
  for (const [domain, fd] of Object.entries(e.fachdienste || {})) {
    for (const [k, v] of Object.entries(fd)) add(`Fachdienst ${domain} ${k}`, v);
  }
  for (const [k, v] of Object.entries(e.konnektor || {})) add(`Konnektor ${k}`, v);
  for (const [k, v] of Object.entries(e.directory || {})) add(`VZD ${k}`, v);
  if (e.console) add("console", e.console);
  fill("endpoints-body", rows.length ? table(["service", "address"], rows)
    : el("p", { class: "muted" }, "The appliance has not listed its endpoints yet."));
}

function renderMailClient(s) {
  const m = s.mail_client || {};
  const server = (x) => (x ? [copyable(x.host), " port ", copyable(x.port)] : code(null));
  const general = table(["setting", "value"], [
    ["SMTP server (outgoing)", server(m.smtp)],
    ["POP3 server (incoming)", server(m.pop3)],
    ["connection security", m.security],
    ["CA certificate file", copyable(m.tls_ca)],
    ["username format", code(m.username_format)],
  ]);
  const rows = (s.participants || []).map((p) => [
    el("div", {}, el("strong", {}, p.display_name), el("br"), code(p.address),
      el("div", { class: "muted" }, `${p.fachdienst} · ${p.card.type} ${p.card.keys}`)),
    copyable(p.smtp_username),
    copyable(p.pop3_username),
    copyable(p.password),
  ]);
  fill("mail-client-body", general,
    el("h3", {}, "Demo participants (from demo.json)"),
    table(["participant", "SMTP username", "POP3 username", "password"], rows));
}

function renderKonnektor(s) {
  const k = s.konnektor || {};
  const unreachable = el("input", { type: "checkbox", id: "unreachable", checked: k.unreachable });
  unreachable.addEventListener("change", () =>
    switchFaults({ unreachable: unreachable.checked },
      unreachable.checked ? "Konnektor unreachable" : "Konnektor reachable"));
  const latency = el("input", { type: "number", min: 0, step: 50, value: k.latency_ms, id: "latency" });
  const setLatency = el("button", { type: "button" }, "set");
  setLatency.addEventListener("click", () =>
    switchFaults({ latency_ms: Number(latency.value) }, `latency ${latency.value} ms for every card`));
  const clear = el("button", { type: "button" }, "Clear faults");
  clear.addEventListener("click", () =>
    switchFaults({ clear: true },
      "Clear faults (reachable, no latency, every card inserted with its PIN verified)"));
  const switches = el("div", { class: "switches" },
    el("label", {}, unreachable, " unreachable (SOAP services and connector.sds go silent)"),
    el("label", {}, "latency per card key operation ", latency, " ms "), setLatency,
    clear);
  const contexts = (k.contexts || []).map((c) => [code(c.mandant), code(c.client_system), code(c.workplace)]);
  const users = (k.users || []).map((u) => [code(u.user), code(u.mandant), u.cards.join(", ")]);
  const revoked = (k.revoked || []).map((r) => [code(r.iccsn), r.purpose, r.crypt, code(r.serial)]);
  fill("konnektor-body",
    el("p", {}, "connector.sds: ", copyable(k.sds), " — status: ",
      state(!k.unreachable, "reachable", "UNREACHABLE")),
    switches,
    el("h3", {}, "Client-system contexts (konnektor.json)"),
    table(["MandantId", "ClientSystemId", "WorkplaceId"], contexts),
    users.length ? el("div", {}, el("h3", {}, "Users (an HBA is visible with its UserId)"),
      table(["UserId", "Mandant", "cards"], users)) : null,
    revoked.length ? el("div", {}, el("h3", {}, "Revoked certificates"),
      table(["ICCSN", "purpose", "crypt", "serial"], revoked)) : null);
}

function cardActions(card) {
  const actions = el("div", { class: "switches" });
  const add = (label, request, description, danger) => {
    const button = el("button", { type: "button", class: danger ? "danger" : null }, label);
    button.addEventListener("click", () => {
      if (danger && !window.confirm(`${description}? This cannot be undone.`)) return;
      switchFaults(request, description);
    });
    actions.append(button);
  };
  if (card.inserted) add("Remove card", { card_removed: card.iccsn }, `remove ${card.iccsn}`);
  else add("Insert card", { card_inserted: card.iccsn }, `insert ${card.iccsn}`);
  for (const [pinType, pin] of Object.entries(card.pins)) {
    const which = { iccsn: card.iccsn, pin_type: pinType };
    if (pin.status === "BLOCKED") {
      // as with the PUK: the PIN becomes VERIFIABLE, then it is verified like any other
      add(`Unblock ${pinType} (PUK)`, { unblock_pin: which }, `unblock ${pinType} of ${card.iccsn}`);
    } else {
      if (pin.status === "VERIFIABLE" && card.inserted) {
        add(`Verify ${pinType}`, { verify_pin: which }, `verify ${pinType} of ${card.iccsn}`);
      }
      add(`Block ${pinType}`, { pin_status: { ...which, status: "BLOCKED" } },
        `block ${pinType} of ${card.iccsn}`);
    }
  }
  const select = el("select", {});
  for (const [purpose, crypts] of Object.entries(card.keys)) {
    for (const crypt of crypts) select.append(el("option", { value: `${purpose}/${crypt}` }, `${purpose} ${crypt}`));
  }
  const revoke = el("button", { type: "button", class: "danger" }, "Revoke");
  revoke.addEventListener("click", () => {
    const [purpose, crypt] = select.value.split("/");
    const description = `revoke the ${purpose} ${crypt} certificate of ${card.iccsn}`;
    if (window.confirm(`${description}? This cannot be undone.`)) {
      switchFaults({ revoke: { iccsn: card.iccsn, purpose, crypt } }, description);
    }
  });
  actions.append(el("span", {}, select, " ", revoke));
  return actions;
}

function renderCards(s) {
  const rows = (s.cards || []).map((c) => [
    el("div", {}, el("strong", {}, c.holder), el("br"), code(c.iccsn),
      el("div", { class: "muted" }, `${c.type} · ${c.telematik_id || ""}`)),
    el("ul", { class: "plain" }, Object.entries(c.keys).map(([p, cr]) => el("li", {}, `${p}: ${cr.join(" + ")}`))),
    el("div", {}, state(c.inserted, "inserted", "removed"),
      c.card_handle ? el("div", { class: "muted mono" }, c.card_handle) : null),
    el("ul", { class: "plain" }, Object.entries(c.pins).map(([t, p]) =>
      el("li", {}, `${t}: `, el("span", { class: p.status === "BLOCKED" ? "bad" : "ok" }, p.status),
        ` (${p.left_tries} tries left)`))),
    c.latency_ms ? el("span", { class: "warn" }, `${c.latency_ms} ms`) : "none",
    cardActions(c),
  ]);
  fill("cards-body", table(["card", "keys", "state", "PINs", "latency", "switch"], rows));
}

function renderMailboxes(s) {
  const parts = [];
  for (const [domain, fd] of Object.entries(s.fachdienste || {})) {
    parts.push(el("h3", {}, domain));
    const rows = fd.mailboxes.map((m) => [
      el("div", {}, code(m.address), m.status !== "active" ? el("span", { class: "warn" }, ` ${m.status}`) : null),
      String(m.messages),
      bytes(m.size),
      m.newest.length ? el("ul", { class: "plain" }, m.newest.map((n) => el("li", {},
        el("strong", {}, n.headers.subject || "(no subject)"), " from ", code(n.headers.from || "?"),
        el("span", { class: "muted" }, ` · ${n.headers.date || n.received_at} · ${bytes(n.size)}`),
        n.error ? el("span", { class: "bad" }, ` ${n.error}`) : null))) : el("span", { class: "muted" }, "empty"),
    ]);
    parts.push(table(["mailbox", "messages", "size", "newest (outer headers)"], rows));
    const q = fd.relay_queue;
    parts.push(el("p", {}, "Relay queue to other Fachdienste: ",
      el("strong", {}, String(q.length)), ` waiting (${q.due_now} due now)`));
    if (q.entries.length) {
      parts.push(table(["to", "from", "recipients", "size", "attempts", "next attempt", "last error"],
        q.entries.map((r) => [r.to_domain, code(r.sender), r.recipients.join(", "), bytes(r.size),
          String(r.attempts), r.next_attempt, r.last_error || "–"])));
    }
  }
  fill("mailboxes-body", ...parts);
}

function renderDirectory(s) {
  const d = s.directory || {};
  const rows = (d.entries || []).map((e) => [
    el("div", {}, el("strong", {}, e.display_name), el("br"), code(e.telematik_id),
      e.active ? null : el("span", { class: "warn" }, " inactive")),
    el("ul", { class: "plain" }, e.kom_le_data.map((m) => el("li", {}, code(m)))),
    el("ul", { class: "plain" }, e.certificates.map((c) => el("li", {},
      c.error ? c.error : `${c.algorithm}, serial ${c.serial}, valid until ${c.not_after}`))),
    el("span", { class: "mono muted" }, e.dn),
  ]);
  fill("directory-body",
    el("p", {}, "LDAP ", copyable(d.ldap), " · LDAPS ", copyable(d.ldaps), " · base DN ", copyable(d.base_dn)),
    table(["entry", "komLeData", "userCertificate;binary", "DN"], rows));
}

// --- the message trace -----------------------------------------------------------------------

function when(iso) {
  return iso ? iso.slice(0, 23).replace("T", " ") : "–";
}

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json();
  return { ok: response.ok, status: response.status, body };
}

async function searchTraces(event) {
  if (event) event.preventDefault();
  const query = (document.getElementById("trace-query").value || "").trim();
  if (!query) return;
  fill("trace-hops");
  try {
    const { ok, status, body } = await getJson(`/api/traces?q=${encodeURIComponent(query)}`);
    if (!ok) throw new Error(body.error || `HTTP ${status}`);
    const messages = body.messages || [];
    if (messages.length === 0) {
      fill("trace-results", el("p", { class: "muted" }, `Nothing traced for ${query}.`));
      return;
    }
    fill("trace-results", table(
      ["last hop", "stage", "Message-ID", "from", "to", "hops"],
      messages.map((m) => [
        when(m.last),
        el("span", { class: m.stage === "refused" || m.stage === "bounced" || m.stage === "error-mail" ? "bad" : "" },
          m.result ? `${m.stage} ${m.result}` : m.stage),
        el("button", { type: "button", class: "trace-open", onclick: () => showTrace(m.message_id) }, m.message_id),
        code(m.sender),
        m.recipients.join(", ") || "–",
        String(m.hops),
      ])));
    if (messages.length === 1) await showTrace(messages[0].message_id);
  } catch (error) {
    show(`Trace search failed: ${error.message}`);
  }
}

async function showTrace(messageId) {
  try {
    const { ok, status, body } = await getJson(`/api/trace?id=${encodeURIComponent(messageId)}`);
    if (!ok) throw new Error(body.error || `HTTP ${status}`);
    const rows = body.events.map((e) => {
      const details = Object.entries(e.facts).map(([k, v]) => `${k}=${v}`);
      if (e.detail) details.push(e.detail);
      return [
        when(e.at),
        e.node,
        e.component,
        el("strong", {}, e.stage),
        e.result || "–",
        `${e.sender || "<>"} → ${e.recipients.join(", ") || "–"}`,
        e.size === null ? "–" : bytes(e.size),
        details.join("; ") || "–",
      ];
    });
    fill("trace-hops",
      el("h3", {}, `Hops of ${body.message_id}`, body.message_ids.length > 1
        ? ` (also ${body.message_ids.slice(1).join(", ")})` : ""),
      table(["time (UTC)", "node", "component", "stage", "result", "from → to", "size", "details"], rows));
  } catch (error) {
    show(`Trace of ${messageId} failed: ${error.message}`);
  }
}

// --- start -----------------------------------------------------------------------------------

function autoLoad() {
  // a refresh rebuilds the sections: not while the user is typing a latency or picking a key
  const active = document.activeElement;
  if (active && (active.tagName === "SELECT" || active.type === "number")) return;
  load();
}

function schedule() {
  clearInterval(timer);
  timer = document.getElementById("auto-refresh").checked ? setInterval(autoLoad, REFRESH_MS) : null;
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("refresh-now").addEventListener("click", load);
  document.getElementById("auto-refresh").addEventListener("change", schedule);
  document.getElementById("trace-search").addEventListener("submit", searchTraces);
  load();
  schedule();
});
