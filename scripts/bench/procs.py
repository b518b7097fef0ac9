"""Processes the bench starts (servers under test, redis-server) and what it reads of them.

Every process and temporary directory is registered in one ``Resources`` object whose
``cleanup()`` runs in a ``finally`` (and at exit), so a failure or Ctrl-C leaves nothing
behind. Servers keep the bench's process group: a ``killpg`` of the bench (the smoke test does
it on a timeout) reaches them too.

CPU and memory are read from ``/proc/<pid>``: ``stat`` (utime, stime: all threads, in clock
ticks), ``task/*/schedstat`` (run time in ns, finer than ticks) and ``status`` (VmRSS).
"""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
ALL_CPUS = -1  # a Proc's cpu: every core (cfgpush --workers)
TWO_CORES = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
SERVER_CPU, GENERATOR_CPU = 0, 1


def pin_self() -> bool:
    """The generator (this process) on core 1; servers go to core 0. False on one core."""
    if TWO_CORES:
        os.sched_setaffinity(0, {GENERATOR_CPU})
    return TWO_CORES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """One started process; its stdout and stderr go to ``log`` (never a pipe that could fill)."""

    def __init__(self, name: str, cmd: list[str], log: Path, cpu: int | None, env: dict | None = None):
        self.name, self.cmd, self.log = name, cmd, log
        self.started = time.monotonic()
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
        self.pid = self.popen.pid
        # Pinned and given the fd limit right after exec: the interpreter is still starting,
        # so every thread it creates later inherits the affinity.
        if cpu is not None and TWO_CORES:
            try:
                # ALL_CPUS: not this process's own (the generator's core), which it would inherit.
                os.sched_setaffinity(self.pid, set(range(os.cpu_count() or 1)) if cpu == ALL_CPUS else {cpu})
            except OSError:
                pass
        try:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.prlimit(self.pid, resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, AttributeError, ValueError):
            pass

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        """The process and its live children (cfgpush --workers: the workers)."""
        found = [self.pid]
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            pass
        return found

    def cpu(self) -> tuple[float, float]:
        """(user, sys) seconds of the whole process, all threads, and of its live children."""
        user = sys_ = 0.0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            user += int(fields[11]) / CLK_TCK
            sys_ += int(fields[12]) / CLK_TCK
        return user, sys_

    def run_ns(self) -> int:
        """Nanoseconds on a CPU, summed over the live threads of the process and its live
        children (finer than the 10 ms ticks)."""
        total = 0
        for pid in self.pids():
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for task in tasks:
                try:
                    with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                        total += int(f.read().split()[0])
                except (OSError, ValueError, IndexError):
                    pass
        return total

    def rss_kb(self) -> int:
        return _rss_kb(self.pid)

    def children_rss_kb(self) -> int:
        """The RSS of this process's children (cfgpush-serve's filesystem worker), together."""
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                if parent == self.pid:
                    total += _rss_kb(int(entry))
            except (OSError, ValueError, IndexError, RuntimeError):  # gone meanwhile
                continue
        return total

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self) -> int | None:
        if self.alive():
            self.popen.kill()
        try:
            return self.popen.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process stuck in the kernel
            return None


class Resources:
    """Every process and directory the bench made; ``cleanup()`` removes them all."""

    def __init__(self, keep_logs: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="cfgpush-bench-"))
        self.keep_logs = keep_logs
        self.procs: list[Proc] = []
        self.count = 0
        self.cleanups: list = []  # callables: what is not a Proc (the writer's pipes)
        atexit.register(self.cleanup)

    def start(self, name: str, cmd: list[str], cpu: int | None = SERVER_CPU, env: dict | None = None) -> Proc:
        proc = Proc(name, cmd, self.log_path(name), cpu, env)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.kill()
        if proc in self.procs:
            self.procs.remove(proc)

    def mkdir(self, name: str) -> Path:
        path = self.dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log_path(self, name: str) -> Path:
        self.count += 1
        return self.dir / f"{self.count:03d}-{name}.log"

    def cleanup(self) -> None:
        for callback in self.cleanups:
            try:
                callback()
            except Exception:  # cleanup goes on whatever one of them does
                pass
        self.cleanups.clear()
        for proc in self.procs:
            proc.kill()
        self.procs.clear()
        if self.dir.exists():
            if self.keep_logs:
                print(f"bench: logs kept in {self.dir}", file=sys.stderr)
                atexit.unregister(self.cleanup)  # said once
            else:
                shutil.rmtree(self.dir, ignore_errors=True)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
