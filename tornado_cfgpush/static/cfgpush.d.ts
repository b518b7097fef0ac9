// Types of cfgpush.js, the browser client of a cfgpush server (docs/protocol.md).

/** One configuration change of the tenant (docs/protocol.md section 2, `ConfigChanged`). */
export interface ConfigChanged {
  tenant_id: string;
  change_type: "created" | "modified" | "deleted" | "moved";
  /** Opaque; compare only for equality. */
  event_id: string;
  /** Relative to the tenant, `/`-separated. */
  path?: string;
  /** `sha256:<hex>` of the new content; null after `deleted`. */
  checksum?: string | null;
  /** UTC, ISO 8601. */
  timestamp?: string;
  /** The name of the source (plugin) that saw the change. */
  source?: string;
  /** For JSON, TOML and YAML files: what changed, as JSON Pointers (never the values). */
  diff?: { added: string[]; removed: string[]; changed: string[] };
  meta?: Record<string, unknown>;
  /** Served files only (`--serve-content`): RFC 6902 patch from the version `base_checksum` names. */
  patch?: PatchOperation[];
  base_checksum?: string;
  /** `sha256:<hex>` of the new document's RFC 8785 canonical JSON. */
  document_checksum?: string;
}

export interface PatchOperation {
  op: "add" | "remove" | "replace" | "move" | "copy" | "test";
  path: string;
  from?: string;
  value?: unknown;
}

/** A served file as the client holds it (`content: true`). */
export interface FileVersion {
  checksum: string;
  /** The file's text; null when the version came from a patch (call `file()` for it) or is gone. */
  content: string | null;
  /** The parsed document: for `.json` files, for `.toml`/`.yaml`/`.yml` files the server's
   * (`?form=document`, canonical JSON), and whatever a patch made; null otherwise (a file
   * that does not parse, or holds a value JSON cannot). */
  document: unknown | null;
}

/** What a Resync changed of the files held (`content: true`): a file gone is `{content: null, document: null}`. */
export interface ResyncedFiles {
  changed: Record<string, FileVersion | { content: null; document: null }>;
}

/** The server cannot prove nothing was missed: reload, then go on from `last_event_id`. */
export interface Resync {
  tenant_id: string;
  last_event_id: string | null;
  /**
   * `history_expired`, `unknown_epoch`, `unknown_event_id`, `source_gap` (from the server), or
   * `no_resume_point` (from this client: it had no id to resume from and events came meanwhile).
   */
  reason: string;
  /** `{path: "sha256:<hex>"}` of the tenant's files, where the source can list them. */
  manifest?: Record<string, string>;
}

export interface Welcome {
  tenant_id: string;
  last_event_id: string | null;
  heartbeat_interval: number;
  protocol: number;
  manifest?: Record<string, string>;
}

export type State = "connecting" | "open" | "reconnecting" | "closed" | "failed";

export interface Status {
  state: State;
  /** The transport of the current or last connection. */
  transport: "ws" | "sse" | null;
  /** The newest event applied (its callback resolved). */
  lastEventId: string | null;
  /** `reconnecting`: milliseconds until the next attempt, and how many attempts failed. */
  delay?: number;
  attempt?: number;
  /** Why the connection ended, where known (WebSocket close code, HTTP status, error). */
  code?: number;
  status?: number;
  reason?: string;
  error?: string;
  welcome?: Welcome;
}

export interface CfgPushOptions {
  tenantId: string;
  /** Sent as `?token=` (the protocol's way; browsers cannot set WebSocket headers). */
  token?: string;
  /** Called before every connection and, for a JWT, before it expires; wins over `token`. */
  getToken?: () => string | Promise<string>;
  /** One call per change, in order; the event is acknowledged once the returned promise resolves
   * (coalesced: the newest applied event, at most once per `ackInterval`). When it throws or
   * rejects, the event is answered with `{"Ack": {"event_id", "error"}}` (the error's first line,
   * at most 200 characters: `ackError`), shown on the dashboard until a later event applies. */
  onChange?: (
    event: ConfigChanged,
    value?: FileVersion | { content: null; document: null },
  ) => unknown | Promise<unknown>;
  /** Reload the configuration; the client then goes on from `resync.last_event_id`. */
  onResync?: (resync: Resync, files?: ResyncedFiles) => unknown | Promise<unknown>;
  /** Called on the first Welcome when there was no id to resume from: load the configuration here. */
  onWelcome?: (welcome: Welcome) => unknown | Promise<unknown>;
  onStatus?: (status: Status) => void;
  /** `auto` (default): WebSocket, Server-Sent Events when WebSockets are blocked. */
  transport?: "auto" | "ws" | "sse";
  /** Resume from this id on the first connection. */
  lastEventId?: string | null;
  /** Keep the last applied id in sessionStorage (a string names the key). Default false. */
  storage?: boolean | string;
  /** Extra request headers of the SSE transport (for example `Authorization`). */
  headers?: Record<string, string>;
  /** Milliseconds; reconnect delays are uniform in [0, min(backoffMax, backoffMin * 2^attempt)]. */
  backoffMin?: number;
  backoffMax?: number;
  /** Milliseconds a connection must last for the next drop to start from backoffMin again. */
  stableAfter?: number;
  /** Milliseconds to wait for Welcome before trying again. */
  connectTimeout?: number;
  /** Milliseconds before a JWT's exp to refresh it (at most a fifth of its remaining life). */
  refreshLead?: number;
  /** WebSocket attempts that never opened before SSE is tried (default 2). */
  wsFailuresBeforeFallback?: number;
  /** Milliseconds: at most one `Ack` (of the newest applied event) per interval (default 100). */
  ackInterval?: number;
  /** Keep the served files seen (`file(path)`, patched events) and hand `onChange` their new
   * value: from a patch when it holds `base_checksum`, else by a conditional GET. Default false. */
  content?: boolean;
  /** Milliseconds: a fetch after a change waits a random time in [0, fetchJitterMs] (default 250). */
  fetchJitterMs?: number;
}

/** The `error` of an `Ack` for what a callback threw: `"<name>: <message>"`, first line, at most 200 characters. */
export declare function ackError(error: unknown): string;
/** RFC 8785 canonical JSON of a value parsed from JSON. */
export declare function canonicalJson(value: unknown): string;
/** `sha256:<hex>` of bytes, or of a string's UTF-8; null without `crypto.subtle` (an insecure
 * context: a plain-http page of a host other than localhost), where `content: true` skips its checks. */
export declare function sha256(data: string | ArrayBuffer | ArrayBufferView): Promise<string | null>;
/** A new document with an RFC 6902 patch applied; throws when an operation does not apply. */
export declare function applyPatch<T = unknown>(doc: T, patch: PatchOperation[]): T;

export declare function backoffDelay(attempt: number, min?: number, max?: number, random?: () => number): number;

export declare class CfgPush {
  static readonly PROTOCOL: number;
  /** `"https://h/x/"` or `"wss://h/ws"` to the base that `/ws` and `/events` hang off. */
  static baseUrl(url: string): string;
  /** `url`: the server (`https://cfg.example.com`, `ws://host:7945/ws`); it connects at once. */
  constructor(url: string, options: CfgPushOptions);
  readonly tenantId: string;
  readonly state: State;
  readonly transport: "ws" | "sse" | null;
  readonly lastEventId: string | null;
  readonly heartbeatInterval: number | null;
  readonly welcome: Welcome | null;
  /** `content: true`: the served files held, by path. */
  readonly files: Map<string, FileVersion>;
  /** The served file at `path`, fetched once and then kept up to date; rejects when not served. */
  file(path: string): Promise<FileVersion>;
  /** Stop for good: no reconnect and no callback afterwards. */
  close(): void;
}

export default CfgPush;
