"""``--config FILE`` (TOML), plugins' options, and ``--print-config``.

The file holds every flag as a top-level key, named like the flag without its dashes
(``config-dir = "/srv/config"``; ``config_dir`` is accepted too). Values are what the flag
takes, in TOML's types: ``port = 7945``, ``metrics-tenant-labels = true``,
``disable-plugin = ["ticker"]``. ``cli.settings_from`` merges flag > environment > file >
default; this module reads the file, adds the plugins' options (``cfgpush_add_options``) to
that merge, and prints the result. Errors are ``ValueError`` whose message names the file and
key; the CLI reports them in one line with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .redaction import REDACTED, redact

# Plugin options whose dest contains one of these are secrets for --print-config.
SECRET_WORDS = ("secret", "token", "password")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(f"expected true or false, not {text!r}")


class ConfigFile:
    """The keys of one TOML file (or none), as the strings the flags would take."""

    def __init__(self, path: str | None = None, values: dict[str, Any] | None = None):
        self.path = path
        self.values = values or {}

    @classmethod
    def load(cls, path: str | None) -> ConfigFile:
        if not path:
            return cls()
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ValueError(f"--config: cannot read {path!r}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"--config: {path} is not valid TOML: {exc}") from None
        values: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict):
                raise ValueError(
                    f"{path}: [{key}] is a table; every setting is a top-level key (write it above any [table])"
                )
            name = key.replace("_", "-")
            if name in values:
                raise ValueError(f"{path}: {key!r} is given twice")
            values[name] = value
        return cls(path, values)

    def has(self, flag: str) -> bool:
        return flag.lstrip("-") in self.values

    def origin(self, flag: str) -> str:
        return f"{self.path}: {flag.lstrip('-')}"

    def text(self, flag: str, many: bool = False) -> str:
        """The value as the flag's string; a list only for repeatable flags (joined by commas)."""
        key = flag.lstrip("-")
        value = self.values[key]
        if isinstance(value, list) and not many:
            raise ValueError(f"{self.origin(flag)}: expected one value, not a list")
        if isinstance(value, list):
            if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{self.origin(flag)}: a list may hold only strings and numbers")
            return ",".join(str(v) for v in value)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ValueError(f"{self.origin(flag)}: expected a string, number or boolean, not {type(value).__name__}")

    def check_known(self, flags: Iterable[str]) -> None:
        known = {f.lstrip("-") for f in flags}
        unknown = sorted(set(self.values) - known)
        if unknown:
            raise ValueError(
                f"{self.path}: unknown key {', '.join(map(repr, unknown))} "
                f"(keys are the flags without '--': {', '.join(sorted(known))})"
            )


# -- plugins' options -------------------------------------------------------------------------------


@dataclasses.dataclass
class PluginOption:
    action: argparse.Action
    flag: str  # the long option string, e.g. --postgres-dsn
    default: Any  # the plugin's default, used when no flag, variable or key gives a value

    @property
    def dest(self) -> str:
        return self.action.dest

    @property
    def secret(self) -> bool:
        return any(word in self.dest.lower() for word in SECRET_WORDS)


def add_plugin_options(parser: argparse.ArgumentParser, pm: Any) -> list[PluginOption]:
    """Call ``cfgpush_add_options``; return the options it added (their defaults moved aside,
    so that a value given on the command line can be told from none)."""
    before = set(map(id, parser._actions))
    try:
        pm.hook.cfgpush_add_options(parser=parser)
    except Exception as exc:  # argparse.ArgumentError on a clash, a plugin's own bug
        raise ValueError(f"a plugin's cfgpush_add_options failed: {type(exc).__name__}: {exc}") from None
    options = []
    for action in parser._actions:
        if id(action) in before or not action.option_strings:
            continue
        flag = max(action.option_strings, key=len)
        options.append(PluginOption(action, flag, action.default))
        action.default = None
    return options


def plugin_values(
    options: list[PluginOption],
    args: argparse.Namespace,
    environ: dict[str, str],
    config: ConfigFile,
    env_name: Callable[[str], str],
    origins: dict[str, str],
) -> dict[str, Any]:
    """``settings.extra``: each option's value, flag > environment > file > its default."""
    extra: dict[str, Any] = {}
    for option in options:
        dest, flag = option.dest, option.flag
        given = getattr(args, dest, None)
        if given is not None:
            extra[dest], origins[dest] = given, flag
            continue
        if env_name(flag) in environ:
            text, origin = environ[env_name(flag)], env_name(flag)
        elif config.has(flag):
            text, origin = config.text(flag, many=_many(option.action)), config.origin(flag)
        else:
            extra[dest], origins[dest] = option.default, "default"
            continue
        try:
            extra[dest] = _convert(option, text)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            raise ValueError(f"{origin}: {exc}") from None
        origins[dest] = origin
    return extra


def _many(action: argparse.Action) -> bool:
    return isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+")


def _convert(option: PluginOption, text: str) -> Any:
    action = option.action
    if action.nargs == 0:  # store_true, store_false, store_const
        on = parse_bool(text)
        if isinstance(action, argparse._StoreFalseAction):
            return not on
        return action.const if on else option.default
    many = _many(action)
    parts = [p.strip() for p in text.split(",") if p.strip()] if many else [text]
    convert: Callable[[str], Any] | None = action.type  # type: ignore[assignment]  # argparse types it loosely
    values = [convert(p) if convert else p for p in parts]
    if action.choices is not None:
        for value in values:
            if value not in action.choices:
                raise ValueError(f"{value!r} is not one of {', '.join(map(str, action.choices))}")
    return values if many else values[0]


# -- --print-config ----------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def render(
    settings: Any,
    origins: dict[str, str],
    setting_flags: dict[str, tuple],
    secret_fields: set[str],
    options: list[PluginOption],
) -> str:
    """The effective configuration as a TOML file ``--config`` accepts, each key's origin beside it."""
    lines = [
        "# cfgpush-serve: the effective configuration (flag > environment > file > default).",
        f"# Secrets read {REDACTED}. Each comment says where the value came from.",
    ]

    def line(key: str, value: Any, origin: str, secret: bool) -> None:
        if value is None:
            lines.append(f"# {key} = (not set)")
            return
        if secret:
            value = REDACTED
        elif isinstance(value, str):
            value = redact(value)
        elif isinstance(value, Path):
            value = str(value)
        lines.append(f"{key} = {_toml(value)}  # {origin}")

    for flag, (field, _, _) in setting_flags.items():
        line(flag.lstrip("-"), getattr(settings, field), origins.get(field, "default"), field in secret_fields)
    line("disable-plugin", list(settings.disabled_plugins), origins.get("disabled_plugins", "default"), False)
    if options:
        lines.append("")
        lines.append("# Plugins' options (cfgpush_add_options), in settings.extra")
        for option in options:
            line(
                option.flag.lstrip("-"),
                settings.extra.get(option.dest),
                origins.get(option.dest, "default"),
                option.secret,
            )
    return "\n".join(lines) + "\n"
