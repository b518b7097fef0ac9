"""A private ``redis-server`` for tests that must break it (kill, restart, pause)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from .waiting import wait_for

# Two cores shared with other test runs: waits are generous, nothing asserts a duration.
WAIT = 15.0


class RedisServer:
    """A private ``redis-server``. Ready means its unix socket (in our own directory)
    answers: the TCP port might belong to someone else, the socket cannot."""

    def __init__(self, program: str):
        self.program = program
        self.dir = Path(tempfile.mkdtemp(prefix="cfgpush-redis-"))
        self.sock = self.dir / "redis.sock"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accepting(self) -> bool:
        assert self.proc is not None  # started
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.sock))
            except OSError:
                return False
        return True

    async def start(self, same_port: bool = False) -> None:
        for attempt in range(5):
            if not same_port:
                with socket.socket() as s:  # a free port; if it is taken meanwhile, try another
                    s.bind(("127.0.0.1", 0))
                    self.port = s.getsockname()[1]
            self.proc = subprocess.Popen(
                [
                    self.program,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--unixsocket",
                    str(self.sock),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                    "--logfile",
                    str(self.dir / "redis.log"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                await wait_for(self._accepting, WAIT)
                return
            except RuntimeError:
                if same_port or attempt == 4:
                    raise

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
        if self.sock.exists():
            self.sock.unlink()

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
