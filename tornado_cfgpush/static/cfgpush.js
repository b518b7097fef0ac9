// cfgpush.js: the browser client of a cfgpush server (docs/protocol.md). An ES module with no
// dependency and no build step; types in cfgpush.d.ts beside it.
//
//   import { CfgPush } from "https://cfg.example.com/cfgpush.js";
//   const push = new CfgPush("https://cfg.example.com", { tenantId: "acme",
//     onChange: async (event) => { await reload(event.path); } });
//
// What it does for you: reconnects with full-jitter exponential backoff (0.5 s doubling to
// 20 s), resumes from the last event it received (nothing missed, nothing twice, or an explicit
// onResync), sends "Ping" every heartbeat interval and treats two silent intervals as a dead
// connection, acknowledges events once onChange's promise resolves (and, when it throws or
// rejects, answers the event with an Ack carrying the error), refreshes the token
// before it expires, falls back to Server-Sent Events where WebSockets are blocked, and stops
// on close().
//
// With content: true it also keeps the served files it has seen (--serve-content on the server),
// by checksum, and hands onChange the new value: onChange(event, {content, document}). A change
// that comes with a JSON Patch (RFC 6902) is applied to the document it holds, and the result
// checked against the event's document_checksum (SHA-256 of its RFC 8785 canonical JSON);
// otherwise, or when the check fails, the file is fetched (a conditional GET, after a random
// wait of up to fetchJitterMs, so that ten thousand pages do not ask at the same instant) and
// its bytes checked against the event's checksum. For a TOML or YAML file the page cannot parse,
// the document is the server's (?form=document, canonical JSON checked against its ETag), so
// later patches apply to it too. push.file(path) fetches a file once (and keeps it); a Resync
// refreshes only the files whose checksum changed.
//
// An Ack means "applied up to this event": the newest one is sent at once when none went out
// for ackInterval, else when the interval is over. A burst of thousands of events costs at most
// ten Ack frames a second, within the server's frame budget (--max-client-rate, 20 a second).

const PROTOCOL = 1;
const DEFAULTS = {
  transport: "auto", // "auto": WebSocket, falling back to SSE; or "ws", "sse"
  backoffMin: 500, // ms: the first reconnect waits a random time in [0, backoffMin]
  backoffMax: 20000, // ms: the window doubles per failed attempt up to this
  stableAfter: 5000, // ms a connection must last for the next drop to start from backoffMin again
  connectTimeout: 10000, // ms to wait for Welcome
  storage: false, // true or a key: keep the last applied event id in sessionStorage
  headers: null, // extra request headers of the SSE transport (WebSockets cannot send any)
  refreshLead: 30000, // ms before a token's exp to fetch a new one (at most a fifth of its life)
  wsFailuresBeforeFallback: 2, // WebSocket attempts that never opened before SSE is tried
  ackInterval: 100, // ms: at most one Ack (of the newest applied event) per interval
  content: false, // true: keep served files, apply patches, hand onChange {content, document}
  fetchJitterMs: 250, // ms: a fetch after a change waits a random time in [0, fetchJitterMs]
};

// -- canonical JSON (RFC 8785), SHA-256 and JSON Patch (RFC 6902): the server's patching.py ----

/** RFC 8785 canonical JSON of a value parsed from JSON: members sorted by UTF-16 code units (what
 * Array.prototype.sort does with strings), strings and numbers as JSON.stringify writes them. */
export function canonicalJson(value) {
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return "[" + value.map(canonicalJson).join(",") + "]";
  return "{" + Object.keys(value).sort().map((k) => JSON.stringify(k) + ":" + canonicalJson(value[k])).join(",") + "}";
}

/** "sha256:<hex>" of bytes (an ArrayBuffer or a typed array) or of a string's UTF-8; null where
 * the page has no crypto.subtle (a plain-http page of a host other than localhost). */
export async function sha256(data) {
  if (!globalThis.crypto?.subtle) return null;
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return "sha256:" + Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function pointerParts(pointer) {
  if (pointer === "") return [];
  if (!pointer.startsWith("/")) throw new Error(`not a JSON Pointer: ${pointer}`);
  return pointer.slice(1).split("/").map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
}

function arrayIndex(array, segment, adding) {
  if (adding && segment === "-") return array.length;
  if (!/^(0|[1-9][0-9]*)$/.test(segment)) throw new Error(`not an array index: ${segment}`);
  const i = Number(segment);
  if (i > array.length || (i === array.length && !adding)) throw new Error(`index out of range: ${i}`);
  return i;
}

function child(target, segment) {
  if (Array.isArray(target)) return target[arrayIndex(target, segment, false)];
  if (target && typeof target === "object" && Object.hasOwn(target, segment)) return target[segment];
  throw new Error(`no member ${segment}`);
}

function locate(doc, pointer) {
  const parts = pointerParts(pointer);
  if (!parts.length) throw new Error("the whole document has no parent");
  let target = doc;
  for (const segment of parts.slice(0, -1)) target = child(target, segment);
  return [target, parts[parts.length - 1]];
}

function removeAt(doc, pointer) {
  const [parent, last] = locate(doc, pointer);
  if (Array.isArray(parent)) return parent.splice(arrayIndex(parent, last, false), 1)[0];
  if (parent && typeof parent === "object" && Object.hasOwn(parent, last)) {
    const value = parent[last];
    delete parent[last];
    return value;
  }
  throw new Error(`nothing to remove at ${pointer}`);
}

function addAt(doc, pointer, value) {
  if (pointer === "") return value;
  const [parent, last] = locate(doc, pointer);
  if (Array.isArray(parent)) parent.splice(arrayIndex(parent, last, true), 0, value);
  else if (parent && typeof parent === "object") parent[last] = value;
  else throw new Error(`cannot add below ${pointer}`);
  return doc;
}

/** A new document: doc with an RFC 6902 patch applied (doc is left as it was); throws when an
 * operation does not apply. */
export function applyPatch(doc, patch) {
  let out = structuredClone(doc);
  for (const op of patch) {
    const value = "value" in op ? structuredClone(op.value) : undefined;
    switch (op.op) {
      case "add": out = addAt(out, op.path, value); break;
      case "remove": removeAt(out, op.path); break;
      case "replace":
        if (op.path === "") { out = value; break; }
        removeAt(out, op.path);
        out = addAt(out, op.path, value);
        break;
      case "move": {
        if (op.path === op.from) break;
        if (op.path.startsWith(op.from + "/")) throw new Error("cannot move a value into itself");
        out = addAt(out, op.path, removeAt(out, op.from));
        break;
      }
      case "copy": out = addAt(out, op.path, structuredClone(pointerParts(op.from).reduce(child, out))); break;
      case "test":
        if (canonicalJson(pointerParts(op.path).reduce(child, out)) !== canonicalJson(op.value)) {
          throw new Error(`test failed at ${op.path}`);
        }
        break;
      default: throw new Error(`unknown operation ${op.op}`);
    }
  }
  return out;
}

const ignore = () => {};
const FETCH_RETRIES = 3; // content: a 503 (the file is being changed) is asked again this often

function decodeExp(token) {
  // A JWT's exp (seconds since the epoch), or null for anything else: tokens stay opaque.
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(parts[1].length / 4) * 4, "="));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" && isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

/** Full jitter (AWS architecture blog): a uniform delay in [0, min(max, min * 2^attempt)]. */
/** An Ack's `error`: the first line of what a callback threw, within the protocol's 200 characters. */
export function ackError(error) {
  let text;
  try {
    text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  } catch {
    text = "";
  }
  text = (text.split("\n")[0] || "").trim() || "callback failed";
  // A lone surrogate would break the wire rule (the server refuses the Ack): replace it.
  text = text.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD");
  // Whole code points only: a lone surrogate would break the wire rule.
  const points = Array.from(text);
  return points.length <= 200 ? text : points.slice(0, 199).join("") + "…";
}

export function backoffDelay(attempt, min = DEFAULTS.backoffMin, max = DEFAULTS.backoffMax, random = Math.random) {
  return random() * Math.min(max, min * 2 ** Math.min(attempt, 30));
}

export class CfgPush {
  constructor(url, options = {}) {
    if (!options || typeof options.tenantId !== "string" || !options.tenantId) {
      throw new TypeError("CfgPush: options.tenantId is required");
    }
    this.options = { ...DEFAULTS, ...options };
    this.tenantId = options.tenantId;
    this.base = CfgPush.baseUrl(url);
    this.storageKey = typeof this.options.storage === "string" ? this.options.storage
      : `cfgpush:${this.base}:${this.tenantId}:last_event_id`;
    this.lastEventId = options.lastEventId ?? this._load() ?? null; // applied (Acked) id
    this._cursor = this.lastEventId; // received id: where a reconnect resumes
    this.state = "connecting";
    this.transport = null;
    this.heartbeatInterval = null;
    this.welcome = null;
    this._attempt = 0;
    this._wsFailures = 0;
    this._wsWorked = false;
    this._sseSticky = this.options.transport === "sse";
    this._conn = null;
    this._timer = null;
    this._refreshTimer = null;
    this._token = options.token ?? null;
    this._closed = false;
    this._freshToken = false;
    this._everWelcomed = false;
    this._chain = Promise.resolve();
    this.files = new Map(); // content: path -> {checksum, content (text or null), document}
    this._fetching = new Map(); // path -> the fetch under way
    this._failure = null; // {event_id, error}: the newest event a callback failed on, until one applies
    queueMicrotask(() => this._connect());
  }

  /** "https://h:1/x/" or "wss://h:1/ws" -> "https://h:1/x" (what /ws and /events hang off). */
  static baseUrl(url) {
    const parsed = new URL(url ?? "", globalThis.location?.href);
    if (parsed.protocol === "ws:") parsed.protocol = "http:";
    if (parsed.protocol === "wss:") parsed.protocol = "https:";
    let path = parsed.pathname.replace(/\/+$/, "");
    if (path.endsWith("/ws") || path.endsWith("/events")) path = path.replace(/\/(ws|events)$/, "");
    return parsed.origin + path;
  }

  /** Stop for good: no reconnect, no callback after this returns. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._timer);
    clearTimeout(this._refreshTimer);
    const conn = this._conn;
    this._conn = null;
    if (conn) this._teardown(conn, 1000, "client closed");
    this._status("closed", {});
  }

  // -- connecting ------------------------------------------------------------------------------

  async _connect() {
    this._timer = null;
    if (this._closed) return;
    const conn = { kind: this._useSse() ? "sse" : "ws", opened: false, welcomed: false, started: Date.now(),
      timers: [], refreshPending: null, ackTimer: null, acked: null, ackedAt: null };
    this._conn = conn;
    this._status("connecting", { transport: conn.kind, attempt: this._attempt });
    let token = this._token;
    if (this.options.getToken && !this._freshToken) {
      try {
        token = this._token = await this.options.getToken();
      } catch (error) {
        if (conn === this._conn) this._lost(conn, { error: `getToken failed: ${error}` });
        return;
      }
      if (conn !== this._conn || this._closed) return;
    }
    this._freshToken = false;
    this._planRefresh(token);
    this._watch(conn, this.options.connectTimeout, "no Welcome in time");
    if (conn.kind === "ws") this._openWs(conn, token);
    else this._openSse(conn, token);
  }

  _useSse() {
    if (this.options.transport === "sse" || typeof WebSocket === "undefined") return true;
    if (this.options.transport === "ws") return false;
    return this._sseSticky || this._wsFailures >= this.options.wsFailuresBeforeFallback;
  }

  _query(token, extra = {}) {
    const params = new URLSearchParams({ tenant_id: this.tenantId, ...extra });
    if (this._cursor) params.set("last_event_id", this._cursor);
    if (token) params.set("token", token);
    return params.toString();
  }

  _openWs(conn, token) {
    const url = this.base.replace(/^http/, "ws") + "/ws?" + this._query(token);
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      this._lost(conn, { error: String(error) });
      return;
    }
    conn.ws = ws;
    ws.onopen = () => { conn.opened = true; };
    ws.onmessage = (message) => {
      let parsed;
      try {
        parsed = JSON.parse(message.data);
      } catch {
        return;
      }
      if (typeof parsed === "string") this._handle(conn, parsed, {});
      else if (parsed && typeof parsed === "object") {
        const kind = Object.keys(parsed)[0];
        this._handle(conn, kind, parsed[kind] ?? {});
      }
    };
    ws.onerror = ignore; // onclose follows
    ws.onclose = (event) => this._lost(conn, { code: event.code, reason: event.reason });
  }

  async _openSse(conn, token) {
    const controller = new AbortController();
    conn.abort = () => controller.abort();
    const headers = { Accept: "text/event-stream", ...(this.options.headers || {}) };
    let info = {};
    try {
      const response = await fetch(this.base + "/events?" + this._query(token), {
        headers, signal: controller.signal, cache: "no-store", credentials: "same-origin",
      });
      if (!response.ok) {
        let reason = "";
        try { reason = (await response.json()).error || ""; } catch { /* not JSON */ }
        info = { status: response.status, reason };
        if (response.status === 400) info.fatal = true; // a bad tenant id stays bad
      } else {
        conn.opened = true;
        await this._readSse(conn, response.body);
        info = { reason: "stream ended" };
      }
    } catch (error) {
      if (conn.aborted) return;
      info = { error: String(error) };
    }
    if (!conn.aborted) this._lost(conn, info);
  }

  async _readSse(conn, body) {
    // The event-stream format as the WHATWG spec parses it: lines end in CRLF, LF or CR.
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    conn.reader = reader;
    let buffer = "";
    let data = [];
    let kind = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done || conn.aborted) return;
      this._alive(conn);
      buffer += value;
      for (;;) {
        const match = /\r\n|\r|\n/.exec(buffer);
        if (!match || (match[0] === "\r" && match.index === buffer.length - 1)) break; // CR: wait for a LF
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === "") {
          if (data.length) {
            let parsed = null;
            try { parsed = JSON.parse(data.join("\n")); } catch { /* skip */ }
            if (parsed !== null) this._handle(conn, kind || "message", parsed);
          }
          data = [];
          kind = "";
        } else if (line.startsWith(":")) {
          continue; // ": ping": already counted as a sign of life
        } else {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "data") data.push(text);
          else if (field === "event") kind = text;
        }
        if (conn.aborted) return;
      }
    }
  }

  // -- messages --------------------------------------------------------------------------------

  _handle(conn, kind, body) {
    if (conn !== this._conn || this._closed) return;
    this._alive(conn);
    switch (kind) {
      case "Welcome":
        this._welcome(conn, body);
        break;
      case "ConfigChanged":
        if (!conn.welcomed) return;
        this._cursor = body.event_id;
        if (this.options.content) {
          this._apply(async () => this.options.onChange?.(body, await this._changed(body)), body.event_id);
        } else {
          this._apply(() => this.options.onChange?.(body), body.event_id);
        }
        break;
      case "Resync":
        if (!conn.welcomed) return;
        this._cursor = body.last_event_id ?? null;
        if (this.options.content) {
          this._apply(async () => this.options.onResync?.(body, await this._resynced(body)), body.last_event_id ?? null);
        } else {
          this._apply(() => this.options.onResync?.(body), body.last_event_id ?? null);
        }
        break;
      case "Pong":
      case "Refreshed":
        if (conn.refreshPending) conn.refreshPending = null; // the Refresh before it was taken
        break;
      case "Error":
        if (conn.refreshPending) {
          // Refused, or a server without Refresh: reconnect with the new token, resuming.
          this._reconnectNow(conn, "token refresh by reconnecting");
        } else {
          console.warn("cfgpush: the server did not accept a message:", body.message);
        }
        break;
      default:
        break;
    }
  }

  _welcome(conn, welcome) {
    conn.welcomed = true;
    conn.welcomedAt = Date.now();
    this.welcome = welcome;
    this.transport = conn.kind;
    this.heartbeatInterval = Number(welcome.heartbeat_interval) || 5;
    if (conn.kind === "ws") {
      this._wsWorked = true;
      this._wsFailures = 0;
      const every = this.heartbeatInterval * 1000;
      conn.timers.push(setInterval(() => this._send(conn, "Ping"), every));
    } else if (!this._wsWorked && this.options.transport === "auto") {
      this._sseSticky = true; // WebSockets never worked here: stay on SSE
    }
    this._alive(conn);
    const first = !this._everWelcomed;
    this._everWelcomed = true;
    const resumed = this._cursor;
    this._status("open", { transport: conn.kind, welcome });
    if (!resumed) {
      const newest = welcome.last_event_id ?? null;
      this._cursor = newest;
      if (!first && newest !== null) {
        // We had no id to resume from (the tenant had no event yet) and events came meanwhile:
        // the server cannot replay them, so this is a Resync made here.
        this._apply(() => this.options.onResync?.({ tenant_id: this.tenantId, last_event_id: newest,
          reason: "no_resume_point" }), newest);
      } else {
        this._apply(() => this.options.onWelcome?.(welcome), newest);
      }
    } else if (this.lastEventId || this._failure) {
      this._ackSoon(); // convergence counts per connection: say where we are
    }
  }

  /** Run one callback after the previous ones (events apply in order), then Ack its id; a
   * callback that throws or rejects is answered with an Ack carrying the error instead. */
  _apply(callback, eventId) {
    this._chain = this._chain.then(async () => {
      if (this._closed) return;
      try {
        await callback();
      } catch (error) {
        console.error("cfgpush: a callback failed; the event is reported as not applied", error);
        if (this._closed || eventId === null || eventId === undefined) return;
        this._failure = { event_id: eventId, error: ackError(error) };
        this._ackSoon();
        return;
      }
      if (this._closed || eventId === null || eventId === undefined) return;
      this._failure = null;
      this.lastEventId = eventId;
      this._save(eventId);
      this._ackSoon();
    });
  }

  /** Send this client's latest answer on this connection (the newest applied id, or the
   * failure of a later event): now if no Ack went out for ackInterval, else when the interval
   * is over (the newest answer then; the ones in between are implied). */
  _ackSoon() {
    const conn = this._conn;
    if (!conn || !conn.welcomed || conn.kind !== "ws" || conn.ackTimer) return;
    const wait = (conn.ackedAt ?? -Infinity) + this.options.ackInterval - Date.now();
    if (wait <= 0) this._sendAck(conn);
    else conn.ackTimer = setTimeout(() => this._sendAck(conn), wait);
  }

  _sendAck(conn) {
    conn.ackTimer = null;
    const failure = this._failure;
    const ack = failure ?? (this.lastEventId ? { event_id: this.lastEventId } : null);
    if (conn !== this._conn || this._closed || !ack) return;
    const key = failure ? `${failure.event_id} ${failure.error}` : ack.event_id;
    if (key === conn.acked) return;
    conn.acked = key;
    conn.ackedAt = Date.now();
    this._send(conn, { Ack: ack });
  }

  _send(conn, message) {
    if (conn.ws && conn.ws.readyState === 1) conn.ws.send(JSON.stringify(message));
  }

  // -- content (--serve-content) -----------------------------------------------------------------

  /** The served file at path: {checksum, content, document}, fetched once and then kept up to
   * date by the events (content is the text; document the parsed document, for .json files
   * and, from the server's ?form=document, for .toml, .yaml and .yml files, or what patches
   * made; null where unknown). Rejects when the file is not served (404). */
  async file(path) {
    const held = this.files.get(path);
    if (held && held.content !== null) return held;
    return this._fetch(path, null);
  }

  async _changed(event) {
    const path = event.path;
    if (event.change_type === "deleted" || event.checksum === null) {
      this.files.delete(path);
      if (event.change_type === "moved") this.files.delete(event.meta?.old_path);
      return { content: null, document: null };
    }
    if (event.change_type === "moved") this.files.delete(event.meta?.old_path);
    const held = this.files.get(path);
    if (held && held.checksum === event.checksum) return held;
    if (!held && !event.patch) return { content: null, document: null }; // not a file it keeps
    if (held && event.patch && held.checksum === event.base_checksum && held.document !== null) {
      try {
        const document = applyPatch(held.document, event.patch);
        const sum = await sha256(canonicalJson(document));
        // No crypto.subtle (an insecure context): base_checksum matched, the check is skipped.
        if (sum === event.document_checksum || sum === null) {
          const version = { checksum: event.checksum, content: null, document };
          this.files.set(path, version);
          return version;
        }
      } catch { /* does not apply: fetch */ }
    }
    await new Promise((resolve) => setTimeout(resolve, Math.random() * this.options.fetchJitterMs));
    try {
      return await this._fetch(path, held && held.content !== null ? held : null, event.checksum);
    } catch (error) {
      console.warn(`cfgpush: fetching ${path} failed`, error);
      return { content: null, document: null };
    }
  }

  async _resynced(resync) {
    const changed = {};
    const manifest = resync.manifest;
    for (const [path, held] of [...this.files]) {
      const now = manifest ? manifest[path] ?? null : undefined;
      if (now === null) {
        this.files.delete(path);
        changed[path] = { content: null, document: null };
      } else if (now !== held.checksum) {
        try {
          changed[path] = await this._fetch(path, held.content !== null ? held : null, now);
        } catch (error) {
          console.warn(`cfgpush: fetching ${path} failed`, error);
        }
      }
    }
    return { changed };
  }

  async _fetch(path, held, expected = undefined) {
    const key = `${path}\n${expected}`;
    if (!this._fetching.has(key)) {
      const done = this._fetchNow(path, held, expected).finally(() => this._fetching.delete(key));
      this._fetching.set(key, done);
    }
    return this._fetching.get(key);
  }

  async _fetchNow(path, held, expected) {
    const url = `${this.base}/api/v1/tenants/${encodeURIComponent(this.tenantId)}/files/`
      + path.split("/").map(encodeURIComponent).join("/");
    const headers = {};
    if (this._token) headers.Authorization = `Bearer ${this._token}`;
    if (held) headers["If-None-Match"] = `"${held.checksum}"`;
    let response;
    let tag;
    for (let attempt = 0; ; attempt++) {
      response = await fetch(url, { headers, cache: "no-store", credentials: "same-origin" });
      tag = (response.headers.get("ETag") || "").replace(/^W\//, "").replace(/"/g, "");
      // 503: the file is being changed; or an answer of an older version than the event's (a
      // node of a shared folder that has not read the new one yet): asked again a few times
      // after the server's Retry-After (at most 2 s).
      const older = expected !== undefined && (response.ok || response.status === 304) && tag !== expected;
      if ((response.status !== 503 && !older) || attempt >= FETCH_RETRIES) break;
      const wait = Math.min(2, Number(response.headers.get("Retry-After")) || 1) * 1000;
      await new Promise((resolve) => setTimeout(resolve, wait * (0.5 + Math.random() / 2)));
    }
    if (response.status === 304 && held) return held;
    if (!response.ok) throw new Error(`GET ${path}: ${response.status}`);
    const bytes = await response.arrayBuffer();
    const checksum = (await sha256(bytes)) ?? tag; // no crypto.subtle: the server's word for it
    if (checksum !== tag) throw new Error(`GET ${path}: the bytes are not the version the server named`);
    const content = new TextDecoder().decode(bytes);
    let document = null;
    if (/\.json$/i.test(path)) {
      try { document = JSON.parse(content); } catch { /* not JSON after all */ }
    } else if (/\.(toml|ya?ml)$/i.test(path)) {
      document = await this._fetchDocument(url, headers.Authorization, checksum);
    }
    const version = { checksum, content, document };
    // An older version than the newest event's (a change raced the fetch) is not kept over it.
    if (expected === undefined || checksum === expected || !this.files.has(path)) this.files.set(path, version);
    return version;
  }

  /** The parsed document of a TOML or YAML file, which a page cannot parse itself: the server's
   * ?form=document (canonical JSON) of the raw version checksum names, its bytes checked against
   * its ETag; null when the file has none (422), or the server answered another version (a
   * change raced this fetch: its event brings the document). */
  async _fetchDocument(url, authorization, checksum) {
    try {
      const headers = authorization ? { Authorization: authorization } : {};
      const response = await fetch(url + "?form=document", { headers, cache: "no-store", credentials: "same-origin" });
      if (!response.ok || response.headers.get("Cfgpush-Checksum") !== checksum) return null;
      const tag = (response.headers.get("ETag") || "").replace(/^W\//, "").replace(/"/g, "");
      const bytes = await response.arrayBuffer();
      const sum = await sha256(bytes);
      if (sum !== null && sum !== tag) return null; // not the document the server named
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (error) {
      console.warn("cfgpush: fetching a document failed", error);
      return null;
    }
  }

  // -- liveness and reconnecting ---------------------------------------------------------------

  _alive(conn) {
    if (conn.welcomed) this._watch(conn, 2 * this.heartbeatInterval * 1000, "server silent for two heartbeat intervals");
  }

  _watch(conn, ms, why) {
    clearTimeout(conn.watchdog);
    conn.watchdog = setTimeout(() => this._reconnectNow(conn, why, true), ms);
  }

  _reconnectNow(conn, reason, failure = false) {
    if (conn !== this._conn) return;
    this._teardown(conn, 4000, reason);
    this._lost(conn, { reason, immediate: !failure });
  }

  _teardown(conn, code, reason) {
    conn.aborted = true;
    clearTimeout(conn.watchdog);
    clearTimeout(conn.ackTimer);
    conn.timers.forEach(clearInterval);
    if (conn.ws) {
      const ws = conn.ws;
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try { ws.close(code >= 4000 || code === 1000 ? code : 1000, reason.slice(0, 100)); } catch { /* closing */ }
    }
    if (conn.abort) conn.abort();
  }

  _lost(conn, info) {
    if (conn !== this._conn || this._closed) return;
    this._teardown(conn, 1000, "reconnecting");
    this._conn = null;
    if (conn.kind === "ws" && !conn.opened) this._wsFailures += 1;
    if (conn.kind === "sse" && !conn.welcomed) {
      if (!this._sseSticky) this._wsFailures = 0; // neither works: the server is away, try WebSocket again
    }
    if (conn.welcomed && Date.now() - conn.welcomedAt >= this.options.stableAfter) this._attempt = 0;
    if (info.fatal) {
      this._status("failed", info);
      this._closed = true;
      return;
    }
    const delay = info.immediate ? 0 : backoffDelay(this._attempt, this.options.backoffMin, this.options.backoffMax);
    if (!info.immediate) this._attempt += 1;
    this._status("reconnecting", { ...info, delay, attempt: this._attempt });
    this._timer = setTimeout(() => this._connect(), delay);
  }

  // -- tokens ----------------------------------------------------------------------------------

  _planRefresh(token) {
    clearTimeout(this._refreshTimer);
    const exp = this.options.getToken ? decodeExp(token) : null;
    if (exp === null) return;
    const left = exp * 1000 - Date.now();
    const wait = Math.max(1000, left - Math.min(this.options.refreshLead, left / 5));
    this._refreshTimer = setTimeout(() => this._refresh(), wait);
  }

  async _refresh() {
    if (this._closed) return;
    let token;
    try {
      token = this._token = await this.options.getToken();
    } catch (error) {
      console.warn("cfgpush: getToken failed; retrying at the next reconnect", error);
      return;
    }
    const conn = this._conn;
    if (this._closed || !conn) return;
    this._freshToken = true; // the reconnect below (if any) uses it without asking again
    this._planRefresh(token);
    if (conn.kind === "ws" && conn.welcomed) {
      // Refresh in place: the server answers Refreshed, or Error (refused, or a server
      // without Refresh): then reconnect with the new token. The Ping behind it makes a
      // server that ignores it answer anyway.
      conn.refreshPending = token;
      this._send(conn, { Refresh: { token } });
      this._send(conn, "Ping");
    } else if (conn.welcomed) {
      this._reconnectNow(conn, "token refresh by reconnecting");
    }
  }

  // -- storage and status ----------------------------------------------------------------------

  _load() {
    if (!this.options.storage) return null;
    try { return globalThis.sessionStorage?.getItem(this.storageKey) ?? null; } catch { return null; }
  }

  _save(eventId) {
    if (!this.options.storage) return;
    try { globalThis.sessionStorage?.setItem(this.storageKey, eventId); } catch { /* full or denied */ }
  }

  _status(state, info) {
    this.state = state;
    try {
      this.options.onStatus?.({ state, transport: info.transport ?? this.transport, lastEventId: this.lastEventId, ...info });
    } catch (error) {
      console.error("cfgpush: onStatus failed", error);
    }
  }
}

CfgPush.PROTOCOL = PROTOCOL;
export default CfgPush;
