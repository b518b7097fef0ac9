"""Run one of ``scripts/`` as a user would, in its own process group, and make sure nothing of
it survives: on a timeout one ``killpg`` ends it and every server it started (they stay in its
group), and a run that leaves a process behind fails the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run_script(script: str, args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """``python scripts/<script> <args>`` in ``cwd``; its exit status, stdout and stderr."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / script), *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{script} ran over {timeout} s; its stderr:\n{err[-4000:]}")
    finally:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            pass
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{script} left processes running in its group")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
