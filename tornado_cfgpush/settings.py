"""The server's effective settings: one frozen value, built by the CLI or by a test.

Defaults live here and only here; ``cli.py`` derives its flags' defaults from this class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

EVENT_LOOPS = ("asyncio", "uvloop")
WATCH_FALLBACKS = ("error", "poll")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 7945
    config_dir: Path = Path("config")
    # 50 ms coalesces every editor's multi-step save we know of (vim, VS Code, JetBrains,
    # nano, sed -i) and keeps a save's notification well under 100 ms.
    debounce_ms: int = 50
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 10.0
    log_level: str = "INFO"
    # "text" (one human line per record) or "json" (JSON lines, tornado_cfgpush.logs).
    log_format: str = "text"
    # /metrics: a tenant label on connections, published events and deliveries (small fleets only).
    metrics_tenant_labels: bool = False
    # /metrics needs the admin token when one is set; metrics_public leaves it open (a scraper
    # on a private network, without credentials).
    metrics_public: bool = False
    disabled_plugins: tuple[str, ...] = ()
    # Client frames: docs/protocol.md section 2 (1009 over the size, 1008 over the rate).
    max_message_size: int = 4096
    max_client_rate: int = 20
    # Unsent bytes a connection may hold before it is closed with 1013.
    max_backlog_bytes: int = 1024 * 1024
    # Per-tenant history for resume: the newest events within both bounds.
    history_size: int = 1000
    history_ttl: float = 600.0
    # What the embedded broker keeps for every tenant together (history and idempotence
    # records, broker/memory.py); past it the least recently published tenants' go first.
    # 256 MiB: a quarter of a 1 GiB node, which holds about 200 000 plain events (1.2 KB each
    # in a busy tenant) or 140 000 tenants with one event each (1.8 KB): the default history
    # (10 minutes) of 300 events per second (docs/operations.md, Capacity).
    history_max_bytes: int = 256 * 1024 * 1024
    # How long a graceful shutdown may take before the process exits anyway.
    drain_timeout: float = 5.0
    # Where events are published and kept: None for the embedded broker (one process),
    # or a redis:// / rediss:// / unix:// URL to share them between nodes.
    broker: str | None = field(default=None, repr=False)
    # Bearer token for the operations API (/api/v1/tenants/...); None: that API is off.
    admin_token: str | None = field(default=None, repr=False)
    # Bearer token(s) of the publish API (POST /api/v1/events); None: that API is off.
    # Several: a tuple, or one string of comma-separated tokens (tornado_cfgpush.auth).
    publish_token: str | tuple[str, ...] | None = field(default=None, repr=False)
    # The publish API's budget per token (a token bucket): events per second, and how many may
    # come at once; past it 429 with Retry-After. 0: no limit. Far above what a deploy
    # pipeline sends; it keeps one leaked or runaway publisher from taking the event loop.
    publish_rate: int = 500
    publish_burst: int = 2000
    # Subscriber authentication (tornado_cfgpush.auth, SECURITY.md): off while none of
    # jwt_secret (HS256), jwt_public_key (a PEM file: RS256/ES256) and jwks (a JWKS file) is set.
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key: Path | None = None
    jwks: Path | None = None
    jwt_algorithm: str | None = None  # None: HS256 for a secret, else from the key
    jwt_tenant_claim: str = "tenant_id"
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Cross-site pages allowed to connect: exact origins or "*.example.com" patterns;
    # same-origin requests always pass.
    allowed_origins: tuple[str, ...] = ()
    # Host names (or "*.example.com" patterns, ":port" optional) that /ws, /events, /metrics and
    # the APIs answer for; others get 421 (DNS rebinding). Empty: every Host is answered.
    allowed_hosts: tuple[str, ...] = ()
    # Connections to /ws and /events together (0: no limit): past the server-wide one 503,
    # past the per-address or per-tenant one 429.
    max_connections: int = 10_000
    max_connections_per_ip: int = 2_500
    max_connections_per_tenant: int = 5_000
    # Seconds a connection may take to send its request headers (idle before the upgrade too).
    handshake_timeout: float = 10.0
    # Bytes of request line and headers (Tornado closes the connection past it), and of the
    # query string of /ws and /events (414 past it).
    max_header_size: int = 16 * 1024
    max_query_size: int = 4096
    # permessage-deflate on /ws (RFC 7692) for clients that offer it: off by default, since
    # configuration events are small; each event is compressed once (no context takeover).
    ws_compression: bool = False
    # The filesystem source checks its watcher after this many seconds without any event: it
    # writes a canary file (a dotfile in the config folder, removed at once) and expects to
    # hear of it; a watcher that stopped delivering is restarted. 0: never (a read-only folder
    # never gets one either; dead watcher threads are noticed either way).
    watch_canary: float = 60.0
    # When the config folder needs more inotify watches than the kernel allows
    # (fs.inotify.max_user_watches): "error", a start-up error naming the sysctl and the number
    # needed; or "poll", the folder is polled every second instead (and /readyz says degraded).
    watch_fallback: str = "error"
    # The validation gate (tornado_cfgpush.gate): tenant-relative globs whose files must parse
    # before a change is announced, and "GLOB=FILE" rules whose files must also satisfy a JSON
    # Schema (draft 2020-12).
    validate: tuple[str, ...] = ()
    json_schemas: tuple[str, ...] = ()
    # Configuration content (issue #14; off by default: values may be secrets): tenant-relative
    # globs (the gate's matching rule, rules.path_matches) of the files whose content may leave
    # the server, by GET /api/v1/tenants/<t>/files/<path> and as JSON Patches in events.
    serve_content: tuple[str, ...] = ()
    # The largest patch an event carries (its JSON text, in bytes); over it no patch: the
    # client fetches the file (one conditional GET). 0: no patches at all.
    max_patch_bytes: int = 16 * 1024
    # The event loop: "asyncio" (the standard library's) or "uvloop" (pip install
    # 'tornado_cfgpush[fast]'): cheaper I/O per delivery.
    event_loop: str = "asyncio"
    # TLS (tornado_cfgpush.tls): HTTPS and wss:// on the one port when certfile is set; the key
    # is in certfile when keyfile is None. The files are checked every tls_reload_interval
    # seconds and a changed pair is used for new connections (0: never reloaded).
    certfile: Path | None = None
    keyfile: Path | None = None
    keyfile_password: str | None = field(default=None, repr=False)
    tls_reload_interval: float = 5.0
    # Reverse proxies whose X-Forwarded-For / Forwarded / X-Forwarded-Proto are believed
    # (tornado_cfgpush.proxies): addresses or CIDR networks. Empty: the peer is the client.
    trusted_proxies: tuple[str, ...] = ()
    # The PROXY protocol (v1, v2) from the trusted proxies: each of their connections starts
    # with a header naming the client (tornado_cfgpush.proxy_protocol).
    proxy_protocol: bool = False
    # Processes serving the one port (tornado_cfgpush.workers): each a node of --broker.
    workers: int = 1
    # Extra, plugin-owned settings (name -> value); never interpreted by the core.
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config_dir", Path(self.config_dir))
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if self.heartbeat_timeout < self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be at least heartbeat_interval")
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"--loop must be one of {', '.join(EVENT_LOOPS)}, not {self.event_loop!r}")
        if self.watch_fallback not in WATCH_FALLBACKS:
            raise ValueError(
                f"--watch-fallback must be one of {', '.join(WATCH_FALLBACKS)}, not {self.watch_fallback!r}"
            )
        if self.debounce_ms < 0:
            raise ValueError("debounce_ms must not be negative")
        for name in ("jwt_public_key", "jwks", "certfile", "keyfile"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
        object.__setattr__(self, "validate", tuple(self.validate))
        object.__setattr__(self, "json_schemas", tuple(self.json_schemas))
        object.__setattr__(self, "serve_content", tuple(self.serve_content))
        if self.max_patch_bytes < 0:
            raise ValueError("max_patch_bytes must not be negative")
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))
        object.__setattr__(self, "trusted_proxies", tuple(self.trusted_proxies))
        if self.keyfile and not self.certfile:
            raise ValueError("--keyfile needs --certfile")
        if self.keyfile_password and not self.certfile:
            raise ValueError("--keyfile-password needs --certfile")
        if self.proxy_protocol and not self.trusted_proxies:
            raise ValueError("--proxy-protocol needs --trusted-proxy: the load balancers allowed to send the header")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.tls_reload_interval < 0:
            raise ValueError("tls_reload_interval must not be negative")
        if self.publish_rate < 0 or self.publish_burst < 0:
            raise ValueError("publish_rate and publish_burst must not be negative")
        keys = [name for name in ("jwt_secret", "jwt_public_key", "jwks") if getattr(self, name)]
        if len(keys) > 1:
            raise ValueError(
                "give one JWT key only: --jwt-secret, --jwt-public-key or --jwks, not "
                + " and ".join("--" + k.replace("_", "-") for k in keys)
            )
        if self.jwt_algorithm and self.jwt_secret and self.jwt_algorithm != "HS256":
            raise ValueError(f"--jwt-algorithm {self.jwt_algorithm} needs --jwt-public-key or --jwks, not --jwt-secret")
        if self.jwt_algorithm == "HS256" and (self.jwt_public_key or self.jwks):
            raise ValueError("--jwt-algorithm HS256 needs --jwt-secret, not a public key")
