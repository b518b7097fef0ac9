"""``--config FILE``, ``--print-config`` and ``--log-format`` (issue 8), as a user runs them."""

from __future__ import annotations

import json
import tomllib

import pytest

from tornado_cfgpush.cli import load_configuration
from tornado_cfgpush.testing import LISTENING, WebSocketClient, clean_env

from .clihelpers import assert_one_error_line, run_cli


def write(tmp_path, text: str):
    path = tmp_path / "cfgpush.toml"
    path.write_text(text)
    return path


def test_file_values_are_used_and_flags_and_environment_win(tmp_path, config_dir):
    path = write(
        tmp_path,
        f'config-dir = "{config_dir}"\nport = 8001\nhost = "127.0.0.2"\n'
        'debounce_ms = 70\nlog-format = "json"\nmetrics-tenant-labels = true\n'
        'disable-plugin = ["filesystem"]\n',
    )
    environ = {"CFGPUSH_PORT": "8002"}
    settings, _, _, origins, _ = load_configuration(["--config", str(path), "--host", "::1"], environ)
    assert (settings.host, settings.port, settings.debounce_ms) == ("::1", 8002, 70)
    assert settings.config_dir == config_dir
    assert (settings.log_format, settings.metrics_tenant_labels) == ("json", True)
    assert settings.disabled_plugins == ("filesystem",)
    assert origins["host"] == "--host"
    assert origins["port"] == "CFGPUSH_PORT"
    assert origins["debounce_ms"] == f"{path}: debounce-ms"
    # CFGPUSH_CONFIG names the file too; the flag alone means true.
    settings, *_ = load_configuration(["--metrics-tenant-labels"], {"CFGPUSH_CONFIG": str(path)})
    assert (settings.port, settings.metrics_tenant_labels) == (8001, True)
    settings, *_ = load_configuration(["--metrics-tenant-labels", "false"], {"CFGPUSH_CONFIG": str(path)})
    assert settings.metrics_tenant_labels is False


def test_defaults_without_a_file(tmp_path):
    settings, _, args, origins, _ = load_configuration([], {})
    assert (settings.port, settings.log_format, settings.metrics_tenant_labels) == (7945, "text", False)
    assert "port" not in origins and not args.print_config


FILE_ERRORS = {
    "unknown key": ("prot = 1\n", "cfgpush.toml: unknown key 'prot' (keys are the flags without '--': "),
    "bad value": ("port = 70000\n", "cfgpush.toml: port: port must be from 0 to 65535, not 70000"),
    "bad type": ("port = [1]\n", "cfgpush.toml: port: expected one value, not a list"),
    "not toml": ("port = \n", "is not valid TOML"),
    "a table": ("[server]\nport = 1\n", "cfgpush.toml: [server] is a table; every setting is a top-level key"),
    "bad format": ('log-format = "xml"\n', "cfgpush.toml: log-format: log format must be one of text, json, not 'xml'"),
}


@pytest.mark.parametrize("case", list(FILE_ERRORS))
def test_bad_file_exits_2_with_one_line(tmp_path, config_dir, case):
    text, expected = FILE_ERRORS[case]
    path = write(tmp_path, text)
    result = run_cli("--config", str(path), "--config-dir", str(config_dir), cwd=tmp_path)
    assert_one_error_line(result, expected)


def test_missing_file_exits_2(tmp_path):
    result = run_cli("--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert_one_error_line(result, f"--config: cannot read '{tmp_path / 'nope.toml'}': No such file or directory")


def test_print_config_shows_the_merge_with_secrets_redacted(tmp_path, config_dir):
    path = write(
        tmp_path,
        f'config-dir = "{config_dir}"\nport = 8001\nadmin-token = "file-secret-123"\n'
        'broker = "redis://user:hunter22@redis.internal:6379/0"\n',
    )
    env = clean_env(CFGPUSH_PUBLISH_TOKEN="env-secret-456", CFGPUSH_DEBOUNCE_MS="90")
    result = run_cli("--config", str(path), "--port", "8003", "--print-config", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for secret in ("file-secret-123", "env-secret-456", "hunter22"):
        assert secret not in out
    printed = tomllib.loads(out)  # a file --config takes back
    assert printed["port"] == 8003
    assert printed["debounce-ms"] == 90
    assert printed["config-dir"] == str(config_dir)
    assert printed["admin-token"] == printed["publish-token"] == "<redacted>"
    assert printed["broker"] == "redis://user:<redacted>@redis.internal:6379/0"
    assert printed["log-format"] == "text"
    assert "port = 8003  # --port" in out
    assert "debounce-ms = 90  # CFGPUSH_DEBOUNCE_MS" in out
    assert f'admin-token = "<redacted>"  # {path}: admin-token' in out


def test_printed_configuration_is_a_valid_config_file(tmp_path, config_dir):
    first = run_cli("--config-dir", str(config_dir), "--debounce-ms", "75", "--print-config", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    path = write(tmp_path, first.stdout)
    second = run_cli("--config", str(path), "--print-config", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert tomllib.loads(second.stdout) == tomllib.loads(first.stdout)


@pytest.mark.gen_test(timeout=90)
async def test_json_logs_carry_tenant_connection_and_source(start, config_dir):
    server = start("--config-dir", str(config_dir), "--port", "0", "--log-format", "json", "--log-level", "DEBUG")
    port = int((await server.wait_log(r'"message": "' + LISTENING))[1])
    client = await WebSocketClient.open(f"ws://127.0.0.1:{port}/ws", "acme")
    try:
        await client.expect("Welcome")
        await server.wait_log(r"subscribed: tenant acme")
        (config_dir / "acme" / "app.json").write_text('{"a": 2}')
        await client.expect("ConfigChanged", timeout=10)
    finally:
        client.close()
    await server.wait_log(r'"logger": "cfgpush.ws", "message": "ws-\d+ closed')
    records = [json.loads(line) for line in server.log]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    subscribed = next(r for r in records if "subscribed: tenant acme" in r["message"])
    assert subscribed["tenant"] == "acme"
    assert subscribed["connection"].startswith("ws-")
    assert "source" not in subscribed
    access = next(r for r in records if r["logger"] == "tornado.access" and "/ws" in r["message"])
    assert (access["tenant"], access["connection"]) == ("acme", subscribed["connection"])
    assert any(r.get("source") == "filesystem" for r in records)
    starting = next(r for r in records if r["message"].startswith("cfgpush "))
    assert "tenant" not in starting and "connection" not in starting
