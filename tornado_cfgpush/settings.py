"""The server's effective settings: one frozen value, built by the CLI or by a test.

Defaults live here and only here; ``cli.py`` derives its flags' defaults from this class.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


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
    disabled_plugins: tuple[str, ...] = ()
    # Client frames: PROTOCOL.md section 2 (1009 over the size, 1008 over the rate).
    max_message_size: int = 4096
    max_client_rate: int = 20
    # Unsent bytes a connection may hold before it is closed with 1013.
    max_backlog_bytes: int = 1024 * 1024
    # Per-tenant history for resume: the newest events within both bounds.
    history_size: int = 1000
    history_ttl: float = 600.0
    # How long a graceful shutdown may take before the process exits anyway.
    drain_timeout: float = 5.0
    # Where events are published and kept: None for the embedded broker (one process),
    # or a redis:// / rediss:// / unix:// URL to share them between nodes.
    broker: str | None = field(default=None, repr=False)
    # Bearer token for the operations API (/api/v1/tenants/...); None: that API is off.
    admin_token: str | None = field(default=None, repr=False)
    # Bearer token of the publish API (POST /api/v1/events); None: that API is off.
    publish_token: str | None = field(default=None, repr=False)
    # Extra, plugin-owned settings (name -> value); never interpreted by the core.
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config_dir", Path(self.config_dir))
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if self.heartbeat_timeout < self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be at least heartbeat_interval")
        if self.debounce_ms < 0:
            raise ValueError("debounce_ms must not be negative")
