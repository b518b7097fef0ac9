"""Writes into a config folder from a process of its own: the burst scenario's and the soak's files.

The files are written by a separate process, pinned to the generator's core, so that writing
at disk speed never takes the server's core, nor the generator's loop while it counts
receipts. ``Writer`` is the parent's side (asyncio); run as a program (``python writer.py
<config-dir> [--log FILE]``) this module is the child: one JSON command per line on stdin,
one JSON answer per line on stdout.

Commands (paths relative to the config folder, ``/``-separated):

* ``{"op": "write", "files": [[path, content, style], ...]}`` where ``content`` is a string,
  or ``{"bytes": n}`` for a generated file of ``n`` bytes (a unique first line, then filler,
  written in 1 MiB chunks as ``cp`` would), and ``style`` is ``plain`` (open, write, close: as
  ``git checkout`` creates a file) or ``atomic`` (a dotfile renamed over the path: as editors
  and deployment tools save);
* ``{"op": "delete", "paths": [path, ...]}``;
* ``{"op": "quit"}``.

Answer: ``{"count": n, "first": t, "last": t, "times": [t, ...]}``: when the first and the
last file were complete, and each file, on ``time.monotonic()`` (CLOCK_MONOTONIC, the clock
of the generator's ``perf_counter`` on Linux). Parent folders are made as needed.

With ``--log FILE`` every write is appended to FILE, in the order of the writes, as one JSON
line ``{"seq": n, "path": path, "sha256": "<hex>" or null for a deletion, "t": t}``: the
record of what the folder went through, which ``checker.py`` compares the clients with.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from pathlib import Path

CHUNK = 1 << 20
# Answers are single JSON lines of up to a few MB (every write's time).
PIPE_LIMIT = 64 << 20


def _generated(path: str, size: int, serial: int) -> tuple[list[bytes], str]:
    """A ``size``-byte file unique to this write, as chunks; and its sha256."""
    head = f"{path} #{serial} {time.time_ns()}\n".encode()
    filler = b"x" * CHUNK
    chunks, left, digest = [head[:size]], size - min(len(head), size), hashlib.sha256(head[:size])
    while left > 0:
        piece = filler[: min(left, CHUNK)]
        chunks.append(piece)
        digest.update(piece)
        left -= len(piece)
    return chunks, digest.hexdigest()


class Child:
    """The writing process: every command in order, as fast as the disk takes it."""

    def __init__(self, root: str, log: str | None):
        self.root = root
        self.made: set[str] = set()
        self.log = open(log, "a", buffering=1 << 16) if log else None
        self.seq = 0
        self.serial = 0

    def _record(self, path: str, sha256: str | None, t: float) -> None:
        self.seq += 1
        if self.log is not None:
            self.log.write(json.dumps({"seq": self.seq, "path": path, "sha256": sha256, "t": t}) + "\n")

    def _parent(self, full: str) -> None:
        folder = os.path.dirname(full)
        if folder not in self.made:
            os.makedirs(folder, exist_ok=True)
            self.made.add(folder)

    def write(self, files: list) -> list[float]:
        times = []
        for path, content, style in files:
            full = os.path.join(self.root, path)
            self._parent(full)
            if isinstance(content, dict):
                self.serial += 1
                chunks, sha256 = _generated(path, int(content["bytes"]), self.serial)
            else:
                data = content.encode()
                chunks, sha256 = [data], hashlib.sha256(data).hexdigest()
            target = full
            if style == "atomic":
                head, name = os.path.split(full)
                target = os.path.join(head, f".{name}.{os.getpid()}.tmp")  # a dotfile: never configuration
            with open(target, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            if style == "atomic":
                os.replace(target, full)
            now = time.monotonic()
            times.append(now)
            self._record(path, sha256, now)
        return times

    def delete(self, paths: list[str]) -> list[float]:
        times = []
        for path in paths:
            try:
                os.unlink(os.path.join(self.root, path))
            except FileNotFoundError:
                continue
            now = time.monotonic()
            times.append(now)
            self._record(path, None, now)
        return times

    def serve(self) -> None:
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            if op == "quit":
                break
            times = self.write(command["files"]) if op == "write" else self.delete(command["paths"])
            if self.log is not None:
                self.log.flush()
            answer = {
                "count": len(times),
                "first": times[0] if times else None,
                "last": times[-1] if times else None,
                "times": times if command.get("times") else None,
            }
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
        if self.log is not None:
            self.log.close()


class Writer:
    """The parent's side: ``await start()``, ``await write(...)``, ``await close()``.
    Registered with ``Resources``: cleanup kills it whatever happened."""

    def __init__(self, res, config_dir: Path, *, log: Path | None = None, cpu: int | None = None):
        self.res, self.config_dir, self.log, self.cpu = res, config_dir, log, cpu
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        from .procs import TWO_CORES

        cmd = [sys.executable, __file__, str(self.config_dir)] + (["--log", str(self.log)] if self.log else [])
        with open(self.res.log_path("writer"), "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err, limit=PIPE_LIMIT
            )
        if self.cpu is not None and TWO_CORES:
            try:
                os.sched_setaffinity(self.proc.pid, {self.cpu})
            except OSError:
                pass
        self.res.cleanups.append(self.kill)

    async def _call(self, command: dict) -> dict:
        async with self.lock:  # one command at a time: answers come back in order
            self.proc.stdin.write((json.dumps(command) + "\n").encode())
            await self.proc.stdin.drain()
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the writer process ended (status {self.proc.returncode}); see its log in {self.res.dir}"
            )
        return json.loads(line)

    async def write(self, files: list, *, times: bool = False) -> dict:
        """``files``: ``[(path, content, style), ...]`` (see the module's docstring)."""
        return await self._call({"op": "write", "files": [list(f) for f in files], "times": times})

    async def delete(self, paths: list[str]) -> dict:
        return await self._call({"op": "delete", "paths": list(paths)})

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.stdin.write(b'{"op": "quit"}\n')
                await self.proc.stdin.drain()
                await asyncio.wait_for(self.proc.wait(), 30)
            except (TimeoutError, OSError):
                self.kill()
                await self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    args = sys.argv[1:]
    log_file = None
    if "--log" in args:
        at = args.index("--log")
        log_file = args[at + 1]
        del args[at : at + 2]
    Child(args[0], log_file).serve()
