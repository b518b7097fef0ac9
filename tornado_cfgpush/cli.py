"""``cfgpush-serve``: flags, ``CFGPUSH_*`` environment variables, logging.

Every setting flag ``--some-flag`` can also be given as ``CFGPUSH_SOME_FLAG``; a flag wins
over the environment, the environment over the default (from ``Settings``). A bad value
anywhere ends the program with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence
from urllib.parse import urlsplit, urlunsplit

from . import __version__
from .plugins import PluginError, describe_plugins, get_plugin_manager, known_plugin_names
from .settings import Settings

PROG = "cfgpush-serve"
ENV_PREFIX = "CFGPUSH_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class UsageError(Exception):
    """A bad flag, environment variable or file: reported in one line, exit status 2."""


def _int_in(low: int, high: int | None, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{what} must be a whole number, not {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{what} must be {bound}, not {value}")
        return value
    return parse


def _positive_float(what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{what} must be a number of seconds, not {text!r}") from None
        if not value > 0 or value == float("inf"):
            raise ValueError(f"{what} must be a positive number of seconds, not {text!r}")
        return value
    return parse


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, not {text!r}")
    return text.upper()


def _secret(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = text.strip()
        if len(text) < 8:
            raise ValueError(f"{what} must be at least 8 characters")
        return text
    return parse


def _broker_url(text: str) -> str:
    scheme = urlsplit(text).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"broker must be a redis://, rediss:// or unix:// URL, not {redact_url(text)!r}")
    if importlib.util.find_spec("redis") is None:
        raise ValueError("a Redis broker needs redis-py: pip install 'tornado_cfgpush[redis]'")
    return text


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":<redacted>@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


# flag -> (Settings field, parser of one string, help). The one table of setting flags.
SETTING_FLAGS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "--host": ("host", str, "address to listen on"),
    "--port": ("port", _int_in(0, 65535, "port"), "port to listen on (0: any free port)"),
    "--config-dir": ("config_dir", Path, "folder of tenant configurations: <dir>/<tenant>/... or <dir>/<tenant>.<ext>"),
    "--debounce-ms": ("debounce_ms", _int_in(0, 60_000, "debounce"), "coalesce writes to one file within this window"),
    "--heartbeat-interval": ("heartbeat_interval", _positive_float("heartbeat interval"), "seconds between protocol pings"),
    "--heartbeat-timeout": ("heartbeat_timeout", _positive_float("heartbeat timeout"), "drop a client silent for this long"),
    "--log-level": ("log_level", _log_level, "DEBUG, INFO, WARNING or ERROR"),
    "--max-message-size": ("max_message_size", _int_in(16, None, "max message size"), "largest client frame in bytes (1009 past it)"),
    "--max-client-rate": ("max_client_rate", _int_in(1, None, "max client rate"), "client messages per second (1008 past it)"),
    "--max-backlog-bytes": ("max_backlog_bytes", _int_in(1024, None, "max backlog"), "unsent bytes per client before it is closed with 1013"),
    "--history-size": ("history_size", _int_in(0, None, "history size"), "events kept per tenant for resume"),
    "--history-ttl": ("history_ttl", _positive_float("history ttl"), "seconds an event is kept for resume"),
    "--drain-timeout": ("drain_timeout", _positive_float("drain timeout"), "seconds a graceful shutdown may take"),
    "--broker": ("broker", _broker_url, "redis://host:port/db (or rediss://, unix://) to share events between nodes; "
                 "the embedded broker without it"),
    "--admin-token": ("admin_token", _secret("admin token"), "bearer token for /api/v1/tenants/<id> (off without it)"),
    "--publish-token": ("publish_token", _secret("publish token"), "bearer token for POST /api/v1/events (off without it)"),
}
# Settings that are secrets: never logged, and readable from a file named by CFGPUSH_<FLAG>_FILE.
SECRET_FIELDS = {"admin_token", "publish_token"}


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = _Parser(prog=PROG, description="Push per-tenant configuration changes to WebSocket clients.")
    for flag, (field, _, help_text) in SETTING_FLAGS.items():
        # type=str: values are parsed after merging with the environment, by one parser.
        parser.add_argument(flag, dest=field, default=None, metavar=field.upper(),
                            help=f"{help_text} (default {getattr(defaults, field)}; env {env_name(flag)})")
    parser.add_argument("--disable-plugin", dest="disabled_plugins", action="append", default=None, metavar="NAME",
                        help="do not load this plugin, built-in or third-party; repeatable "
                             "(env CFGPUSH_DISABLE_PLUGIN, comma-separated)")
    parser.add_argument("--plugins", action="store_true", help="print the loaded plugins as JSON and exit")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """Merge flags over environment over defaults; raise UsageError naming the culprit."""
    values: dict[str, Any] = {}
    for flag, (field, parse, _) in SETTING_FLAGS.items():
        given = getattr(args, field)
        origin = flag
        if given is None and env_name(flag) in environ:
            given, origin = environ[env_name(flag)], env_name(flag)
        elif given is None and field in SECRET_FIELDS and env_name(flag) + "_FILE" in environ:
            origin = env_name(flag) + "_FILE"
            try:
                given = Path(environ[origin]).read_text()
            except OSError as exc:
                raise UsageError(f"{origin}: cannot read {environ[origin]!r}: {exc.strerror or exc}") from None
        if given is not None:
            try:
                values[field] = parse(given)
            except ValueError as exc:
                raise UsageError(f"{origin}: {exc}") from None
    disabled = args.disabled_plugins
    if disabled is None:
        disabled = _names(environ.get("CFGPUSH_DISABLE_PLUGIN", "") or environ.get("CFGPUSH_DISABLE_PLUGINS", ""))
    known = known_plugin_names()
    unknown = sorted(set(disabled) - known)
    if unknown:
        raise UsageError(f"--disable-plugin: unknown plugin {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(sorted(known))})")
    values["disabled_plugins"] = tuple(dict.fromkeys(disabled))
    try:
        return Settings(**values)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    try:
        args = build_parser().parse_args(argv)
        settings = settings_from(args, environ)
        pm = get_plugin_manager(settings.disabled_plugins)
        if args.plugins:
            print(json.dumps(describe_plugins(pm), indent=2))
            return 0
        if "filesystem" not in settings.disabled_plugins and not settings.config_dir.is_dir():
            raise UsageError(f"--config-dir: folder {str(settings.config_dir)!r} does not exist "
                             "(create it, or point --config-dir / CFGPUSH_CONFIG_DIR elsewhere)")
        from .app import StartupError, bind, serve
        try:
            sockets = bind(settings)
        except OSError as exc:
            raise UsageError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    except (UsageError, PluginError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    logging.getLogger("cfgpush").info("cfgpush %s starting with %s", __version__, _shown(settings))
    try:
        asyncio.run(serve(settings, pm, sockets=sockets))
    except StartupError as exc:  # after logging started, still one line and status 2
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _shown(settings: Settings) -> str:
    shown = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "extra"}
    for name in SECRET_FIELDS:
        if shown.get(name):
            shown[name] = "<redacted>"
    if settings.broker:
        shown["broker"] = redact_url(settings.broker)
    shown["config_dir"] = str(settings.config_dir)
    return json.dumps(shown)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
