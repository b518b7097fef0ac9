"""``cfgpush-serve`` run to its end in a subprocess, and the one-line error it must end with."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tornado_cfgpush.testing import COMMAND, ERROR_PREFIX, clean_env

RUN_TIMEOUT = 60.0


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        COMMAND + list(args),
        cwd=cwd,
        env=env if env is not None else clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def assert_one_error_line(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR_PREFIX + " "), lines[0]
    assert expected in lines[0], lines[0]
    assert result.stdout == ""
