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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from . import __version__, auth, logs
from .config_file import ConfigFile, PluginOption, add_plugin_options, parse_bool, plugin_values
from .config_file import render as render_config
from .plugins import PluginError, describe_plugins, get_plugin_manager, known_plugin_names
from .proxies import parse_networks
from .redaction import REDACTED, redact
from .settings import EVENT_LOOPS, WATCH_FALLBACKS, Settings
from .workerinfo import Worker
from .workers import worker_count

PROG = "cfgpush-serve"
ENV_PREFIX = "CFGPUSH_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


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


def _seconds_or_zero(what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{what} must be a number of seconds, not {text!r}") from None
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"{what} must be 0 or a positive number of seconds, not {text!r}")
        return value

    return parse


def _one_of(what: str, choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"{what} must be one of {', '.join(choices)}, not {text!r}")
        return text.lower()

    return parse


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, not {text!r}")
    return text.upper()


def _log_format(text: str) -> str:
    if text.lower() not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {text!r}")
    return text.lower()


def _event_loop(text: str) -> str:
    if text.lower() not in EVENT_LOOPS:
        raise ValueError(f"loop must be one of {', '.join(EVENT_LOOPS)}, not {text!r}")
    if text.lower() == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ValueError("--loop uvloop needs uvloop: pip install 'tornado_cfgpush[fast]'")
    return text.lower()


def _secret(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = text.strip()
        if len(text) < 8:
            raise ValueError(f"{what} must be at least 8 characters")
        return text

    return parse


def _password(text: str) -> str:
    text = text.rstrip("\r\n")  # as read from CFGPUSH_KEYFILE_PASSWORD_FILE
    if not text:
        raise ValueError("keyfile password must not be empty")
    return text


def _readable_file(what: str) -> Callable[[str], Path]:
    def parse(text: str) -> Path:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(f"{what} {text!r} is not a file")
        if not os.access(path, os.R_OK):
            raise ValueError(f"{what} {text!r} is not readable")
        return path.absolute()  # the reloader re-reads it whatever the working folder

    return parse


def _broker_url(text: str) -> str:
    scheme = urlsplit(text).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"broker must be a redis://, rediss:// or unix:// URL, not {redact(text)!r}")
    if importlib.util.find_spec("redis") is None:
        raise ValueError("a Redis broker needs redis-py: pip install 'tornado_cfgpush[redis]'")
    return text


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _schema_rules(text: str) -> list[str]:
    """``GLOB=FILE`` rules, each schema loaded and checked now: a bad one is a start-up error."""
    from .gate import SchemaError, load_schema, parse_schema_rule

    rules = []
    for item in _names(text):
        glob, path = parse_schema_rule(item)
        try:
            load_schema(path)
        except SchemaError as exc:
            raise ValueError(str(exc)) from None
        rules.append(f"{glob}={os.path.abspath(path)}")
    return rules


# flag -> (Settings field, parser of one string, help). The one table of setting flags.
SETTING_FLAGS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "--host": ("host", str, "address to listen on"),
    "--port": ("port", _int_in(0, 65535, "port"), "port to listen on (0: any free port)"),
    "--config-dir": ("config_dir", Path, "folder of tenant configurations: <dir>/<tenant>/... or <dir>/<tenant>.<ext>"),
    "--debounce-ms": ("debounce_ms", _int_in(0, 60_000, "debounce"), "coalesce writes to one file within this window"),
    "--heartbeat-interval": (
        "heartbeat_interval",
        _positive_float("heartbeat interval"),
        "seconds between protocol pings",
    ),
    "--heartbeat-timeout": (
        "heartbeat_timeout",
        _positive_float("heartbeat timeout"),
        "drop a client silent for this long",
    ),
    "--log-level": ("log_level", _log_level, "DEBUG, INFO, WARNING or ERROR"),
    "--log-format": (
        "log_format",
        _log_format,
        "text, or json (one JSON object per line, with tenant, connection and source where they apply)",
    ),
    "--metrics-tenant-labels": (
        "metrics_tenant_labels",
        parse_bool,
        "label /metrics series by tenant (one series per tenant: small fleets only)",
    ),
    "--metrics-public": (
        "metrics_public",
        parse_bool,
        "serve /metrics without the admin token (a scraper on a private network); it needs the token when one is set",
    ),
    "--max-message-size": (
        "max_message_size",
        _int_in(16, None, "max message size"),
        "largest client frame in bytes (1009 past it)",
    ),
    "--max-client-rate": (
        "max_client_rate",
        _int_in(1, None, "max client rate"),
        "client frames per second, any kind, in bursts of as many (1008 past it)",
    ),
    "--max-backlog-bytes": (
        "max_backlog_bytes",
        _int_in(1024, None, "max backlog"),
        "unsent bytes per client before it is closed with 1013",
    ),
    "--history-size": ("history_size", _int_in(0, None, "history size"), "events kept per tenant for resume"),
    "--history-ttl": (
        "history_ttl",
        _positive_float("history ttl"),
        "seconds an event is kept for resume; a tenant with no event for this long is forgotten",
    ),
    "--history-max-bytes": (
        "history_max_bytes",
        _int_in(1024 * 1024, None, "history max bytes"),
        "memory the embedded broker's history may use, all tenants together; past it the "
        "least recently published tenants' history is dropped",
    ),
    "--drain-timeout": ("drain_timeout", _positive_float("drain timeout"), "seconds a graceful shutdown may take"),
    "--broker": (
        "broker",
        _broker_url,
        "redis://host:port/db (or rediss://, unix://) to share events between nodes; the embedded broker without it",
    ),
    "--admin-token": ("admin_token", _secret("admin token"), "bearer token for /api/v1/tenants/<id> (off without it)"),
    "--publish-token": (
        "publish_token",
        auth.parse_tokens("publish token"),
        "bearer token(s) for POST /api/v1/events, repeatable or comma-separated (off without it)",
    ),
    "--publish-rate": (
        "publish_rate",
        _int_in(0, None, "publish rate"),
        "events per second each publish token may send (429 past it; 0: no limit)",
    ),
    "--publish-burst": (
        "publish_burst",
        _int_in(0, None, "publish burst"),
        "events a publish token may send at once before --publish-rate applies",
    ),
    "--jwt-secret": ("jwt_secret", auth.parse_jwt_secret, "HS256 secret (32 bytes at least): subscribers need a JWT"),
    "--jwt-public-key": (
        "jwt_public_key",
        auth.parse_public_key_file,
        "PEM public key FILE (RS256 or ES256): subscribers need a JWT",
    ),
    "--jwks": ("jwks", auth.parse_jwks_file, "JWKS FILE of public keys (kid picks one): subscribers need a JWT"),
    "--jwt-algorithm": ("jwt_algorithm", auth.parse_algorithm, "HS256, RS256 or ES256 (default: from the key)"),
    "--jwt-tenant-claim": ("jwt_tenant_claim", auth.parse_claim, "JWT claim naming the tenant"),
    "--jwt-issuer": ("jwt_issuer", str, "required iss of JWTs (not checked without it)"),
    "--jwt-audience": ("jwt_audience", str, "required aud of JWTs (not checked without it)"),
    "--allowed-origin": (
        "allowed_origins",
        auth.parse_origins,
        "cross-site page allowed to connect: https://app.example.com "
        "or *.example.com (https only without a scheme); repeatable or comma-separated "
        "(same-origin always is)",
    ),
    "--allowed-host": (
        "allowed_hosts",
        auth.parse_hosts,
        "host name /ws, /events, /metrics and the APIs answer for "
        "(others get 421): cfgpush.example.com[:port] or *.example.com; repeatable or "
        "comma-separated (default: any)",
    ),
    "--max-connections": (
        "max_connections",
        _int_in(0, None, "max connections"),
        "connections to /ws and /events (503 past it; 0: no limit)",
    ),
    "--max-connections-per-ip": (
        "max_connections_per_ip",
        _int_in(0, None, "max connections per ip"),
        "connections from one client address (429 past it; 0: no limit)",
    ),
    "--max-connections-per-tenant": (
        "max_connections_per_tenant",
        _int_in(0, None, "max connections per tenant"),
        "connections of one tenant (429 past it; 0: no limit)",
    ),
    "--handshake-timeout": (
        "handshake_timeout",
        _positive_float("handshake timeout"),
        "seconds a connection may take to send its request headers (idle before the upgrade included)",
    ),
    "--max-header-size": (
        "max_header_size",
        _int_in(1024, None, "max header size"),
        "bytes of request line and headers (the connection is closed past it)",
    ),
    "--max-query-size": (
        "max_query_size",
        _int_in(256, None, "max query size"),
        "bytes of the query string of /ws and /events (414 past it)",
    ),
    "--ws-compression": (
        "ws_compression",
        parse_bool,
        "permessage-deflate on /ws for clients that offer it (each event compressed once, no context takeover)",
    ),
    "--watch-canary": (
        "watch_canary",
        _seconds_or_zero("watch canary"),
        "seconds without a file event after which "
        "the filesystem source checks its watcher with a canary file (0: never)",
    ),
    "--watch-fallback": (
        "watch_fallback",
        _one_of("watch fallback", WATCH_FALLBACKS),
        "when the config folder needs more inotify watches than the kernel allows: error "
        "(a start-up error naming the sysctl) or poll (every second, /readyz degraded)",
    ),
    "--validate": (
        "validate",
        _names,
        "tenant-relative glob (fnmatch; * crosses /) of files that must parse (JSON, TOML, YAML) "
        "before a change of them is announced; repeatable or comma-separated",
    ),
    "--json-schema": (
        "json_schemas",
        _schema_rules,
        "GLOB=FILE: files matching GLOB must also satisfy that JSON Schema (draft 2020-12; "
        "pip install 'tornado_cfgpush[schema]'); repeatable or comma-separated",
    ),
    "--certfile": (
        "certfile",
        _readable_file("certfile"),
        "PEM certificate chain FILE (leaf first): serve HTTPS and wss:// on --port; reloaded when it changes",
    ),
    "--keyfile": ("keyfile", _readable_file("keyfile"), "PEM private key FILE of --certfile (default: in --certfile)"),
    "--keyfile-password": ("keyfile_password", _password, "password of an encrypted --keyfile"),
    "--tls-reload-interval": (
        "tls_reload_interval",
        _seconds_or_zero("tls reload interval"),
        "seconds between checks of --certfile/--keyfile for a new pair (0: never)",
    ),
    "--trusted-proxy": (
        "trusted_proxies",
        parse_networks,
        "address or CIDR network of a reverse proxy whose X-Forwarded-For / Forwarded / "
        "X-Forwarded-Proto are believed (the right-most hop not in these networks is the client); "
        "repeatable or comma-separated",
    ),
    "--proxy-protocol": (
        "proxy_protocol",
        parse_bool,
        "connections from a --trusted-proxy start with a PROXY header (v1 or v2, as TCP load balancers "
        "send) naming the client; one without it is closed",
    ),
    "--workers": (
        "workers",
        worker_count,
        "processes serving --port together (SO_REUSEPORT), each a node of --broker (which it needs); "
        "auto: one per core",
    ),
    "--serve-content": (
        "serve_content",
        _names,
        "tenant-relative glob (fnmatch, as --validate) of files whose content may leave the server: "
        "GET /api/v1/tenants/<tenant>/files/<path> and JSON Patches in events; repeatable or comma-separated",
    ),
    "--max-patch-bytes": (
        "max_patch_bytes",
        _int_in(0, None, "max patch bytes"),
        "largest JSON Patch an event of a served file carries (bytes of its JSON); over it none (0: never)",
    ),
    "--loop": ("event_loop", _event_loop, "the event loop: asyncio, or uvloop (pip install 'tornado_cfgpush[fast]')"),
}
# Settings that are secrets: never logged, and readable from a file named by CFGPUSH_<FLAG>_FILE.
SECRET_FIELDS = {"admin_token", "publish_token", "jwt_secret", "keyfile_password"}
# Flags that may be given more than once; the values are joined by commas, as in the environment.
REPEATABLE_FIELDS = {
    "allowed_origins",
    "allowed_hosts",
    "publish_token",
    "validate",
    "json_schemas",
    "trusted_proxies",
    "serve_content",
}
# Settings that are switches: the flag alone means true (--metrics-tenant-labels [true|false]).
BOOLEAN_FIELDS = {"metrics_tenant_labels", "metrics_public", "ws_compression", "proxy_protocol"}


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
        shape: dict[str, Any] = {}
        if field in BOOLEAN_FIELDS:
            shape.update(nargs="?", const="true")
        if field in REPEATABLE_FIELDS:
            shape["action"] = "append"
        parser.add_argument(
            flag,
            dest=field,
            default=None,
            metavar=field.upper(),
            help=f"{help_text} (default {getattr(defaults, field)}; env {env_name(flag)})",
            **shape,
        )
    parser.add_argument(
        "--disable-plugin",
        dest="disabled_plugins",
        action="append",
        default=None,
        metavar="NAME",
        help="do not load this plugin, built-in or third-party; repeatable "
        "(env CFGPUSH_DISABLE_PLUGIN, comma-separated)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="read settings from this TOML file, every flag a key without '--' "
        "(env CFGPUSH_CONFIG); flags and environment variables win over it",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as TOML (secrets redacted) and exit",
    )
    parser.add_argument("--plugins", action="store_true", help="print the loaded plugins as JSON and exit")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def settings_from(
    args: argparse.Namespace,
    environ: dict[str, str],
    config: ConfigFile | None = None,
    plugin_options: Sequence[PluginOption] | None = None,
    origins: dict[str, str] | None = None,
) -> Settings:
    """Merge flags over environment over the ``--config`` file over defaults; raise UsageError
    naming the culprit. ``plugin_options`` (None: not known yet, the file's other keys are not
    checked) land in ``settings.extra``; ``origins`` gets where each value came from."""
    config = config if config is not None else ConfigFile()
    origins = origins if origins is not None else {}
    values: dict[str, Any] = {}
    for flag, (field, parse, _) in SETTING_FLAGS.items():
        given = getattr(args, field)
        if isinstance(given, list):  # a repeatable flag (REPEATABLE_FIELDS)
            given = ",".join(given)
        origin = flag
        if given is None and env_name(flag) in environ:
            given, origin = environ[env_name(flag)], env_name(flag)
        elif given is None and field in SECRET_FIELDS and env_name(flag) + "_FILE" in environ:
            origin = env_name(flag) + "_FILE"
            try:
                given = Path(environ[origin]).read_text()
            except OSError as exc:
                raise UsageError(f"{origin}: cannot read {environ[origin]!r}: {exc.strerror or exc}") from None
        elif given is None and config.has(flag):
            origin = config.origin(flag)
            try:
                given = config.text(flag, many=field in REPEATABLE_FIELDS)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        if given is not None:
            try:
                values[field] = parse(given)
            except ValueError as exc:
                raise UsageError(f"{origin}: {exc}") from None
            origins[field] = origin
    disabled = args.disabled_plugins
    origins["disabled_plugins"] = "--disable-plugin" if disabled is not None else "default"
    if (
        disabled is None
        and not (environ.get("CFGPUSH_DISABLE_PLUGIN") or environ.get("CFGPUSH_DISABLE_PLUGINS"))
        and config.has("--disable-plugin")
    ):
        try:
            disabled = _names(config.text("--disable-plugin", many=True))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        origins["disabled_plugins"] = config.origin("--disable-plugin")
    elif disabled is None and (environ.get("CFGPUSH_DISABLE_PLUGIN") or environ.get("CFGPUSH_DISABLE_PLUGINS")):
        origins["disabled_plugins"] = "CFGPUSH_DISABLE_PLUGIN"
    if disabled is None:
        disabled = _names(environ.get("CFGPUSH_DISABLE_PLUGIN", "") or environ.get("CFGPUSH_DISABLE_PLUGINS", ""))
    known = known_plugin_names()
    unknown = sorted(set(disabled) - known)
    if unknown:
        raise UsageError(
            f"--disable-plugin: unknown plugin {', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})"
        )
    values["disabled_plugins"] = tuple(dict.fromkeys(disabled))
    if plugin_options is not None:
        try:
            config.check_known([*SETTING_FLAGS, "--disable-plugin", *(o.flag for o in plugin_options)])
            values["extra"] = plugin_values(list(plugin_options), args, environ, config, env_name, origins)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:
        return Settings(**values)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def configure_logging(level: str, log_format: str = "text") -> None:
    """Text or JSON lines on stderr, with tenant, connection and source (tornado_cfgpush.logs)."""
    logs.configure(level, log_format)


def load_configuration(argv: Sequence[str], environ: dict[str, str], *, extra_plugins: Sequence = ()):
    """Flags, environment and ``--config`` file, plugins' options included.

    Returns ``(settings, plugin_manager, args, origins, plugin_options)``. The command line is
    read twice: first for what decides which plugins load (``--disable-plugin``, ``--config``),
    then, once the plugins have added their options (``cfgpush_add_options``), in full.
    """
    argv = list(argv)
    first, _ = build_parser().parse_known_args([a for a in argv if a not in ("-h", "--help")])
    try:
        config = ConfigFile.load(first.config or environ.get(ENV_PREFIX + "CONFIG"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    disabled = settings_from(first, environ, config).disabled_plugins
    pm = get_plugin_manager(disabled, extra_plugins=extra_plugins)
    parser = build_parser()
    try:
        options = add_plugin_options(parser, pm)
    except ValueError as exc:
        raise PluginError(str(exc)) from None
    args = parser.parse_args(argv)
    origins: dict[str, str] = {}
    settings = settings_from(args, environ, config, options, origins)
    return settings, pm, args, origins, options


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    try:
        settings, pm, args, origins, plugin_options = load_configuration(
            sys.argv[1:] if argv is None else argv, environ
        )
        if args.plugins:
            print(json.dumps(describe_plugins(pm), indent=2))
            return 0
        if args.print_config:
            print(render_config(settings, origins, SETTING_FLAGS, SECRET_FIELDS, plugin_options), end="")
            return 0
        if "filesystem" not in settings.disabled_plugins:
            if not settings.config_dir.is_dir():
                raise UsageError(
                    f"--config-dir: folder {str(settings.config_dir)!r} does not exist "
                    "(create it, or point --config-dir / CFGPUSH_CONFIG_DIR elsewhere)"
                )
            if settings.watch_fallback == "error":
                from .sources.filesystem.watch import watch_limit_error

                problem = watch_limit_error(settings.config_dir)
                if problem:
                    raise UsageError(problem)
        if settings.certfile is not None:
            from .tls import TLSError, make_context

            try:  # a bad pair is a start-up error; serve() loads it again, and keeps watching it
                make_context(settings.certfile, settings.keyfile, settings.keyfile_password)
            except TLSError as exc:
                raise UsageError(f"--certfile/--keyfile: {exc}") from None
        from .app import StartupError, bind, serve

        worker = Worker.from_env(environ)
        try:
            if worker is not None:  # one of --workers: its own socket on the shared port
                sockets = bind(settings, port=worker.port, reuse_port=True)
            elif settings.workers > 1:
                from .workers import reserve

                sockets = reserve(settings.host, settings.port)
            else:
                sockets = bind(settings)
        except OSError as exc:
            raise UsageError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    except (UsageError, PluginError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if worker is None and settings.workers > 1:
        from .workers import supervise

        logging.getLogger("cfgpush").info(
            "cfgpush %s starting %d workers on port %d", __version__, settings.workers, sockets[0].getsockname()[1]
        )
        return supervise(sys.argv[1:] if argv is None else argv, environ, settings, sockets)
    logging.getLogger("cfgpush").info("cfgpush %s starting with %s", __version__, _shown(settings))
    raise_open_files_limit()
    run = asyncio.run
    if settings.event_loop == "uvloop":
        import uvloop

        run = uvloop.run
    try:
        run(serve(settings, pm, sockets=sockets, worker=worker))
    except StartupError as exc:  # after logging started, still one line and status 2
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def raise_open_files_limit() -> None:
    """Each client holds a file descriptor: lift the soft limit (often 1024) to the hard one."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logging.getLogger("cfgpush").warning("cannot raise the open-files limit to %d: %s", hard, exc)
            return
    logging.getLogger("cfgpush").info("open-files limit: %d", resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _shown(settings: Settings) -> str:
    shown = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "extra"}
    for name in SECRET_FIELDS:
        if shown.get(name):
            shown[name] = REDACTED
    if settings.broker:
        shown["broker"] = redact(settings.broker)
    shown["config_dir"] = str(settings.config_dir)
    return json.dumps(shown, default=str)  # default: the key files' paths (jwt_public_key, jwks)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
