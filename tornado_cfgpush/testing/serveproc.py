"""``cfgpush-serve`` in a subprocess, as a user runs it; its log read by a thread."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from .waiting import wait_for

SCRIPT = Path(sys.executable).with_name("cfgpush-serve")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tornado_cfgpush.cli"]
ERROR_PREFIX = "cfgpush-serve: error:"
LISTENING = r"listening on https?://127\.0\.0\.1:(\d+) "
# Waits are generous: two cores, and other test runs beside this one.
START_TIMEOUT = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any CFGPUSH_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CFGPUSH_")}
    env.update(extra)
    return env


class ServeProcess:
    """A running ``cfgpush-serve``; its stderr (the log) is collected line by line."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(
            COMMAND + args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self.out: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stderr, self.log), (self.proc.stdout, self.out))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.log)

    def find(self, pattern: str) -> re.Match | None:
        for line in list(self.log):
            found = re.search(pattern, line)
            if found:
                return found
        return None

    async def wait_log(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match:
        """The first log line matching ``pattern``; fails early if the process ends first."""

        def seen() -> bool:
            if self.find(pattern):
                return True
            if self.proc.poll() is not None:
                self.join()
                if self.find(pattern):
                    return True
                raise AssertionError(
                    f"cfgpush-serve exited with {self.proc.returncode} before logging "
                    f"{pattern!r}; its log:\n{self.text()}"
                )
            return False

        try:
            await wait_for(seen, timeout)
        except AssertionError as exc:
            if "exited" in str(exc):
                raise
            raise AssertionError(f"no log line {pattern!r} within {timeout} s; the log:\n{self.text()}") from None
        found = self.find(pattern)
        assert found is not None  # seen() found it
        return found

    async def wait_exit(self, timeout: float) -> int:
        await wait_for(lambda: self.proc.poll() is not None, timeout)
        self.join()
        return self.proc.returncode

    def join(self) -> None:
        for reader in self._readers:
            reader.join(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.join()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
