// The cfgpush dashboard: tenants, connections, convergence, the server's health, and the live
// events of one tenant. Plain DOM and the browser client; no framework, no build step.
//
// The tenant list is paged by the server (GET /api/v1/tenants?limit=&after=&prefix=): the page
// holds PAGE_SIZE rows whatever the number of tenants (10 000 or more), and the search box asks
// the server for the ids starting with what is typed. The watched tenant's own status (its
// convergence, the clients that could not apply the newest event and why, the files the
// validation gate refuses) comes from GET /api/v1/tenants/<id>, whichever page is shown.
//
// The admin token is typed into the page and kept in memory (or, when asked, in this tab's
// sessionStorage); it travels only in Authorization headers, never in a URL.
import { CfgPush } from "./cfgpush.js";

const TOKEN_KEY = "cfgpush:dashboard:admin_token";
const MAX_EVENTS = 200;
const TENANTS_EVERY = 2000;
const HEALTH_EVERY = 5000;
const PAGE_SIZE = 50;
const SEARCH_DELAY = 200; // ms after the last key before the list is asked for
const PREFIX_RE = /^[A-Za-z0-9._-]{1,64}$/;

const $ = (selector) => document.querySelector(selector);
let adminToken = readStoredToken();
let watched = null;
let push = null;
let watchedStatus = null; // GET /api/v1/tenants/<watched>, or null
let tenantsTimer = null;
let searchTimer = null;
// Paging: the `after` of the page shown (null: the first) and those of the pages before it.
let pageAfter = null;
let pagesBefore = [];
let nextAfter = null;
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

function listQuery() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const prefix = $("#search").value.trim();
  if (prefix) params.set("prefix", prefix);
  if ($("#with-clients").checked) params.set("with_clients", "1");
  if (pageAfter) params.set("after", pageAfter);
  return params;
}

let refreshes = 0; // the latest refreshTenants() call: an older one's answer is dropped

async function refreshTenants() {
  clearTimeout(tenantsTimer);
  tenantsTimer = null;
  const mine = ++refreshes;
  const note = $("#tenants-note");
  const prefix = $("#search").value.trim();
  if (!adminToken) {
    note.textContent = "Enter the admin token to list tenants and convergence; any tenant can still be watched by name.";
    renderTenants([]);
    renderPager(null);
    watchedStatus = null;
  } else if (prefix && !PREFIX_RE.test(prefix)) {
    note.textContent = "A tenant id has only A-Z a-z 0-9 . _ - (at most 64).";
    renderTenants([]);
    renderPager(null);
  } else {
    try {
      const { status, body } = await getJson(`/api/v1/tenants?${listQuery()}`, authHeaders());
      if (mine !== refreshes) return; // a newer search or page was asked for meanwhile
      if (status === 200) {
        note.textContent = body.total === 0 ? (prefix ? `No tenant id starts with “${prefix}”.` : "No tenant yet.") : "";
        renderTenants(body.tenants);
        renderPager(body);
        $("#total").textContent = `${body.total} tenant${body.total === 1 ? "" : "s"} · `
          + `${body.connections} connection${body.connections === 1 ? "" : "s"}`;
      } else {
        note.textContent = status === 401 ? "The admin token was not accepted."
          : status === 403 ? (body?.error || "Forbidden.")
            : `The tenant list failed: ${status} ${body?.error || ""}`;
        renderTenants([]);
        renderPager(null);
      }
      await refreshWatched();
      if (mine !== refreshes) return;
    } catch {
      if (mine !== refreshes) return;
      note.textContent = "The server cannot be reached.";
    }
  }
  renderConvergence();
  renderProblems();
  tenantsTimer = setTimeout(refreshTenants, TENANTS_EVERY);
}

async function refreshWatched() {
  if (!watched || !adminToken) {
    watchedStatus = null;
    return;
  }
  const tenantId = watched;
  const { status, body } = await getJson(`/api/v1/tenants/${encodeURIComponent(tenantId)}`, authHeaders());
  if (tenantId === watched) watchedStatus = status === 200 ? body : null;
}

function renderPager(body) {
  const pager = $("#pager");
  nextAfter = body?.next ?? null;
  pager.hidden = !body || (!pageAfter && !nextAfter);
  $("#prev-page").disabled = !pageAfter;
  $("#next-page").disabled = !nextAfter;
  if (body) {
    const first = pagesBefore.length * PAGE_SIZE + 1;
    const last = first + body.tenants.length - 1;
    $("#page-info").textContent = body.tenants.length ? `${first}–${last} of ${body.total}` : "";
  }
}

function problemsText(t) {
  const parts = [];
  if (t.failed) parts.push(`${t.failed} failed`);
  if (t.invalid?.length) parts.push(`${t.invalid.length} refused`);
  return parts.join(" · ");
}

function renderTenants(list) {
  const rows = list.map((t) => {
    const converged = t.last_event_id === null || t.converged === t.clients;
    const problems = problemsText(t);
    const row = el("tr", { dataset: { tenant: t.tenant_id }, class: t.tenant_id === watched ? "selected" : "" },
      el("td", { class: "tenant" }, t.tenant_id),
      el("td", { class: "clients" }, String(t.clients)),
      el("td", { class: "ws" }, String(t.connections_by_transport.ws || 0)),
      el("td", { class: "sse" }, String(t.connections_by_transport.sse || 0)),
      el("td", { class: "newest", title: t.last_event_id || "" }, t.last_event_id || "—"),
      el("td", { class: "converged", dataset: { state: converged ? "converged" : "behind" } },
        `${t.converged}/${t.clients}`),
      el("td", { class: "problems", dataset: { state: problems ? "bad" : "ok" } }, problems || "—"));
    row.addEventListener("click", () => watch(t.tenant_id));
    return row;
  });
  $("#tenants tbody").replaceChildren(...rows);
  if (!list.length) $("#total").textContent = "";
}

function renderConvergence() {
  const pill = $("#convergence");
  const t = watched && watchedStatus;
  if (!watched) {
    pill.textContent = "";
    pill.dataset.state = "unknown";
  } else if (!t) {
    pill.dataset.state = "unknown";
    pill.textContent = adminToken ? "convergence: unknown" : "convergence: needs the admin token";
  } else if (t.last_event_id === null) {
    pill.dataset.state = "converged";
    pill.textContent = `no event yet · ${t.clients} client${t.clients === 1 ? "" : "s"}`;
  } else {
    pill.dataset.state = t.failed ? "bad" : t.converged === t.clients ? "converged" : "behind";
    pill.textContent = `${t.converged} of ${t.clients} client${t.clients === 1 ? "" : "s"} on ${t.last_event_id}`
      + (t.failed ? ` · ${t.failed} failed` : "");
  }
}

function since(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return "";
  const seconds = Math.max(0, Math.round((Date.now() - when.getTime()) / 1000));
  const ago = seconds < 90 ? `${seconds} s` : seconds < 5400 ? `${Math.round(seconds / 60)} min` : `${Math.round(seconds / 3600)} h`;
  return `since ${when.toLocaleString()} (${ago} ago)`;
}

function renderProblems() {
  const t = watched && watchedStatus;
  const invalid = t?.invalid || [];
  const failures = t?.failures || [];
  $("#invalid").replaceChildren(...invalid.map((f) => el("li", { class: "invalid", dataset: { path: f.path } },
    el("span", { class: "path" }, f.path), " ",
    el("span", { class: "pointer" }, f.pointer ? `at ${f.pointer}` : "(whole file)"), ": ",
    el("span", { class: "reason" }, f.reason), " ",
    el("span", { class: "since", title: f.since }, since(f.since)))));
  $("#failures").replaceChildren(...failures.map((f) => el("li", { class: "failure" },
    el("span", { class: "count" }, `${f.clients} client${f.clients === 1 ? "" : "s"}: `),
    el("span", { class: "reason" }, f.reason))));
  const others = t ? t.failed - failures.reduce((sum, f) => sum + f.clients, 0) : 0;
  if (others > 0) $("#failures").append(el("li", { class: "failure muted" }, `${others} more with other reasons`));
  $("#failed-event").textContent = t?.failed ? `${t.last_event_id} (${t.failed} of ${t.clients})` : "";
  $("#invalid-box").hidden = !invalid.length;
  $("#failures-box").hidden = !failures.length;
  $("#problems").hidden = !invalid.length && !failures.length;
}

// -- the live stream ---------------------------------------------------------------------------

function watch(tenantId) {
  if (push) push.close();
  watched = tenantId;
  watchedStatus = null;
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
  renderProblems();
  refreshTenantsSoon(0);
}

function refreshTenantsSoon(delay = 150) {
  if (adminToken && tenantsTimer !== null) {
    clearTimeout(tenantsTimer);
    tenantsTimer = setTimeout(refreshTenants, delay);
  }
}

function firstPage() {
  pageAfter = null;
  pagesBefore = [];
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
$("#search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  firstPage();
  refreshTenants();
});
$("#search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { firstPage(); refreshTenants(); }, SEARCH_DELAY);
});
$("#with-clients").addEventListener("change", () => { firstPage(); refreshTenants(); });
$("#next-page").addEventListener("click", () => {
  if (!nextAfter) return;
  pagesBefore.push(pageAfter);
  pageAfter = nextAfter;
  refreshTenants();
});
$("#prev-page").addEventListener("click", () => {
  if (!pagesBefore.length) return;
  pageAfter = pagesBefore.pop();
  refreshTenants();
});
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
