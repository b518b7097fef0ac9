// The cfgpush dashboard: tenants, connections, convergence, the server's health, and the live
// events of one tenant. Plain DOM and the browser client; no framework, no build step.
//
// The admin token is typed into the page and kept in memory (or, when asked, in this tab's
// sessionStorage); it travels only in Authorization headers, never in a URL.
import { CfgPush } from "./cfgpush.js";

const TOKEN_KEY = "cfgpush:dashboard:admin_token";
const MAX_EVENTS = 200;
const TENANTS_EVERY = 2000;
const HEALTH_EVERY = 5000;

const $ = (selector) => document.querySelector(selector);
let adminToken = readStoredToken();
let watched = null;
let push = null;
let tenants = new Map();
let tenantsTimer = null;
let healthTimer = null;

function readStoredToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; }
}

function authHeaders() {
  return adminToken ? { Authorization: `Bearer ${adminToken}` } : {};
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "class") node.className = value;
    else node[key] = value;
  }
  for (const child of children) node.append(child); // text is text: never parsed as HTML
  return node;
}

async function getJson(path, headers = {}) {
  const response = await fetch(path, { headers: { Accept: "application/json", ...headers }, cache: "no-store" });
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  return { status: response.status, body };
}

// -- health ------------------------------------------------------------------------------------

async function refreshHealth() {
  clearTimeout(healthTimer);
  const pill = $("#health");
  try {
    const live = await getJson("/healthz");
    const ready = await getJson("/readyz");
    if (live.status !== 200) {
      pill.dataset.state = "bad";
      pill.textContent = `health: ${live.status}`;
    } else if (ready.status === 200) {
      pill.dataset.state = "ok";
      pill.textContent = "healthy · ready";
    } else {
      pill.dataset.state = "warn";
      pill.textContent = `healthy · not ready: ${(ready.body?.reasons || [ready.status]).join("; ")}`;
    }
  } catch {
    pill.dataset.state = "bad";
    pill.textContent = "server unreachable";
  }
  healthTimer = setTimeout(refreshHealth, HEALTH_EVERY);
}

// -- tenants -----------------------------------------------------------------------------------

async function refreshTenants() {
  clearTimeout(tenantsTimer);
  tenantsTimer = null;
  const note = $("#tenants-note");
  if (!adminToken) {
    note.textContent = "Enter the admin token to list tenants and convergence; any tenant can still be watched by name.";
    renderTenants([]);
  } else {
    try {
      const { status, body } = await getJson("/api/v1/tenants", authHeaders());
      if (status === 200) {
        note.textContent = "";
        renderTenants(body.tenants);
        $("#total").textContent = `${body.connections} connection${body.connections === 1 ? "" : "s"}`;
      } else {
        note.textContent = status === 401 ? "The admin token was not accepted."
          : status === 403 ? (body?.error || "Forbidden.")
            : `The tenant list failed: ${status} ${body?.error || ""}`;
        renderTenants([]);
      }
    } catch {
      note.textContent = "The server cannot be reached.";
    }
  }
  renderConvergence();
  tenantsTimer = setTimeout(refreshTenants, TENANTS_EVERY);
}

function renderTenants(list) {
  tenants = new Map(list.map((t) => [t.tenant_id, t]));
  const rows = list.map((t) => {
    const converged = t.last_event_id === null || t.converged === t.clients;
    const row = el("tr", { dataset: { tenant: t.tenant_id }, class: t.tenant_id === watched ? "selected" : "" },
      el("td", { class: "tenant" }, t.tenant_id),
      el("td", { class: "clients" }, String(t.clients)),
      el("td", { class: "ws" }, String(t.connections_by_transport.ws || 0)),
      el("td", { class: "sse" }, String(t.connections_by_transport.sse || 0)),
      el("td", { class: "newest", title: t.last_event_id || "" }, t.last_event_id || "—"),
      el("td", { class: "converged", dataset: { state: converged ? "converged" : "behind" } },
        `${t.converged}/${t.clients}`));
    row.addEventListener("click", () => watch(t.tenant_id));
    return row;
  });
  $("#tenants tbody").replaceChildren(...rows);
  if (!list.length) $("#total").textContent = "";
}

function renderConvergence() {
  const pill = $("#convergence");
  const t = watched && tenants.get(watched);
  if (!watched) {
    pill.textContent = "";
    pill.dataset.state = "unknown";
  } else if (!t) {
    pill.dataset.state = "unknown";
    pill.textContent = adminToken ? "convergence: unknown tenant" : "convergence: needs the admin token";
  } else if (t.last_event_id === null) {
    pill.dataset.state = "converged";
    pill.textContent = `no event yet · ${t.clients} client${t.clients === 1 ? "" : "s"}`;
  } else {
    pill.dataset.state = t.converged === t.clients ? "converged" : "behind";
    pill.textContent = `${t.converged} of ${t.clients} client${t.clients === 1 ? "" : "s"} on ${t.last_event_id}`;
  }
}

// -- the live stream ---------------------------------------------------------------------------

function watch(tenantId) {
  if (push) push.close();
  watched = tenantId;
  $("#watched").textContent = tenantId;
  $("#events").replaceChildren();
  for (const row of document.querySelectorAll("#tenants tbody tr")) {
    row.classList.toggle("selected", row.dataset.tenant === tenantId);
  }
  // Server-Sent Events read with fetch(), so the admin token goes in a header; the observer
  // header keeps this page out of the tenant's convergence.
  push = new CfgPush(location.origin, {
    tenantId,
    transport: "sse",
    headers: { ...authHeaders(), "X-CfgPush-Observer": "dashboard" },
    onChange: (event) => { addEvent(event); refreshTenantsSoon(); },
    onResync: (resync) => { addResync(resync); refreshTenantsSoon(); },
    onStatus: showStreamStatus,
  });
  renderConvergence();
}

function refreshTenantsSoon() {
  if (adminToken && tenantsTimer !== null) {
    clearTimeout(tenantsTimer);
    tenantsTimer = setTimeout(refreshTenants, 150);
  }
}

function showStreamStatus(status) {
  const pill = $("#stream-status");
  pill.dataset.state = status.state;
  const texts = {
    connecting: "connecting…",
    open: `live (${status.transport})`,
    reconnecting: `reconnecting in ${((status.delay || 0) / 1000).toFixed(1)} s`,
    closed: "stopped",
    failed: `refused: ${status.reason || status.status || "error"}`,
  };
  pill.textContent = texts[status.state] || status.state;
}

function clock(timestamp) {
  const when = timestamp ? new Date(timestamp) : new Date();
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(when.getHours())}:${pad(when.getMinutes())}:${pad(when.getSeconds())}.${pad(when.getMilliseconds(), 3)}`;
}

function diffNode(diff) {
  const node = el("div", { class: "diff" });
  for (const [kind, sign] of [["added", "+"], ["removed", "−"], ["changed", "~"]]) {
    for (const pointer of diff[kind] || []) {
      node.append(el("span", { class: kind }, `${sign}${pointer}`), " ");
    }
  }
  if (!node.childElementCount) node.append("no key changed");
  return node;
}

function prepend(item) {
  const list = $("#events");
  list.prepend(item);
  while (list.childElementCount > MAX_EVENTS) list.lastElementChild.remove();
}

function addEvent(event) {
  const path = event.path ?? "";
  const item = el("li", { class: "event", dataset: { eventId: event.event_id, path, changeType: event.change_type } },
    el("time", { class: "time", dateTime: event.timestamp || "" }, clock(event.timestamp)),
    el("span", { class: "type", dataset: { type: event.change_type } }, event.change_type),
    el("span", { class: "path" }, path || "(no path)"));
  if (event.meta?.old_path) item.append(el("span", { class: "diff" }, `from ${event.meta.old_path}`));
  if (event.diff) item.append(diffNode(event.diff));
  item.append(el("span", { class: "id" }, event.event_id));
  prepend(item);
}

function addResync(resync) {
  const files = resync.manifest ? Object.keys(resync.manifest).length : null;
  prepend(el("li", { class: "event resync", dataset: { eventId: resync.last_event_id || "", changeType: "resync" } },
    el("time", { class: "time" }, clock()),
    el("span", { class: "type", dataset: { type: "resync" } }, "resync"),
    el("span", { class: "path" }, resync.reason + (files === null ? "" : ` · ${files} files`)),
    el("span", { class: "id" }, resync.last_event_id || "")));
}

// -- wiring ------------------------------------------------------------------------------------

function useToken(token, remember) {
  adminToken = token;
  try {
    if (remember && token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage denied: memory only */ }
  $("#token").value = "";
  $("#token").placeholder = token ? "token set" : "--admin-token";
  if (watched) watch(watched); // the stream's headers carry the token
  refreshTenants();
}

$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault(); // never a GET with the token in the query
  useToken($("#token").value.trim(), $("#remember").checked);
});
$("#forget").addEventListener("click", () => useToken("", false));
$("#watch-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const tenantId = $("#tenant-input").value.trim();
  if (tenantId) watch(tenantId);
});
if (adminToken) {
  $("#token").placeholder = "token set";
  $("#remember").checked = true;
}

const wanted = new URLSearchParams(location.search).get("tenant");
if (wanted) watch(wanted);
refreshHealth();
refreshTenants();
document.body.dataset.ready = "1";
