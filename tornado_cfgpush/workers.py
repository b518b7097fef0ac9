"""``--workers N``: N processes serve one port, each a node of the shared broker.

One ``cfgpush-serve`` uses one core. With ``--workers N`` (``auto``: the cores this process may
run on) the process started becomes a supervisor that serves nothing itself:

* it binds the address once, with ``SO_REUSEPORT`` and without listening (so ``--port 0``
  resolves once, and nothing else can take the port while a worker restarts); a socket that
  does not listen gets no connection;
* it starts N workers: ``cfgpush-serve`` again, with the same flags, environment and
  ``--config`` file, told which worker they are (tornado_cfgpush.workerinfo). Each listens on
  its own socket bound to the same address with ``SO_REUSEPORT``: the kernel spreads new
  connections over the workers, and no worker accepts for another;
* each worker is a node of ``--broker`` (Redis), exactly as the nodes of a cluster (README,
  Cluster): event ids, resume and history are the broker's, so a client resumes on whichever
  worker it reaches; every worker runs the sources on the one folder ("every node watches one
  shared folder"). The embedded broker keeps events in one process, so ``--workers`` needs
  ``--broker``;
* a worker that exits unasked is started again (its clients reconnect, to any worker, and
  resume); SIGTERM or SIGINT to the supervisor goes to every worker, which drain as one server
  does, and the supervisor exits once they have;
* ``/metrics`` answered by any worker covers all of them: each series gets a ``worker`` label
  (tornado_cfgpush.metrics, ``merge_expositions``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from .settings import Settings
from .workerinfo import WORKER_ENV, Worker

log = logging.getLogger("cfgpush.workers")

# A worker that exits within this many seconds of its start is restarted after a growing
# pause (up to RESTART_MAX): a worker that cannot run must not spin.
RESTART_MIN, RESTART_MAX, STABLE_AFTER = 0.5, 10.0, 10.0
COMMAND = [sys.executable, "-c", "import sys; from tornado_cfgpush.cli import main; sys.exit(main())"]


def _die_with_parent() -> None:
    """In the worker, before it runs: SIGTERM when the supervisor dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG), so no worker outlives it and keeps the port."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def worker_count(text: str) -> int:
    """``--workers``: a number from 1 to 256, or ``auto`` (the cores this process may use)."""
    if text.strip().lower() == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"workers must be a whole number or auto, not {text!r}") from None
    if not 1 <= value <= 256:
        raise ValueError(f"workers must be from 1 to 256, or auto, not {value}")
    return value


def reserve(host: str, port: int) -> list[socket.socket]:
    """The address bound with SO_REUSEPORT, not listening (see the module docstring); port 0
    becomes one free port for every address of ``host``."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        ):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Supervisor:
    def __init__(self, argv: Sequence[str], environ: dict[str, str], settings: Settings, port: int):
        self.argv = list(argv)
        self.environ = environ
        self.settings = settings
        self.port = port
        self.count = settings.workers
        self.folder = tempfile.mkdtemp(prefix="cfgpush-workers-")
        self.procs: dict[int, subprocess.Popen] = {}
        self.started: dict[int, float] = {}
        self.pause: dict[int, float] = {}
        self.stopping = False

    def start(self, index: int) -> None:
        env = dict(self.environ)
        env[WORKER_ENV] = Worker(index, self.count, self.port, self.folder).to_env()
        proc = subprocess.Popen([*COMMAND, *self.argv], env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.procs[index] = proc
        self.started[index] = time.monotonic()
        log.info("worker %d of %d started (pid %d)", index, self.count, proc.pid)

    def _stop(self, signum: int, frame: object) -> None:
        if not self.stopping:
            log.info("%s: stopping %d workers", signal.Signals(signum).name, self.count)
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.count):
                self.start(index)
            status = self._watch()
            deadline = time.monotonic() + 2 * self.settings.drain_timeout + 5
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("worker pid %d did not stop in time; killing it", proc.pid)
                    proc.kill()
                    proc.wait()
            return status
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            shutil.rmtree(self.folder, ignore_errors=True)

    def _watch(self) -> int:
        restart_at: dict[int, float] = {}
        while not self.stopping:
            time.sleep(0.1)
            now = time.monotonic()
            for index, proc in list(self.procs.items()):
                if index in restart_at:
                    if now >= restart_at[index] and not self.stopping:
                        del restart_at[index]
                        self.start(index)
                    continue
                code = proc.poll()
                if code is None or self.stopping:
                    continue
                if code == 2:  # a configuration error: another try would fail the same way
                    log.error("worker %d exited with status 2 (a configuration error); stopping", index)
                    self._stop(signal.SIGTERM, None)
                    return 2
                lived = now - self.started[index]
                pause = (
                    RESTART_MIN if lived > STABLE_AFTER else min(RESTART_MAX, 2 * self.pause.get(index, RESTART_MIN))
                )
                self.pause[index] = pause
                log.warning(
                    "worker %d (pid %d) exited with status %s after %.1f s; starting it again in %.1f s",
                    index,
                    proc.pid,
                    code,
                    lived,
                    pause,
                )
                restart_at[index] = now + pause
        return 0


def supervise(argv: Sequence[str], environ: dict[str, str], settings: Settings, reserved: list[socket.socket]) -> int:
    port = reserved[0].getsockname()[1]
    try:
        return Supervisor(argv, environ, settings, port).run()
    finally:
        for sock in reserved:
            sock.close()
