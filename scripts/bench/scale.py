"""The ``scale`` scenario (issue #17): start time and memory against the size of the tree.

One tree is built, in steps, and reused: 10 files of ``file_bytes`` of JSON per tenant, grown
to each size of ``sizes`` in turn (10 000, 50 000, then 100 000 files by default), so the
second size writes only what the first lacks. At each size ``cfgpush-serve`` starts on the
tree (default flags, the page cache warm: the tree was just written) and the scenario reads:

* ``ready_s``: from the process's start to ``GET /readyz`` answering 200 (and ``serving_s``,
  to ``/healthz``);
* ``rss_mb``: its RSS once ready;
* ``diff``: whether a change of the last tenant's file then comes with its ``diff``.

Baselines of the same run, on the same core: a plain Python process that walks the tree and
reads and hashes every file (``hash_s``, its peak RSS), and ``cfgpush-serve`` on an empty tree
(its ready time and RSS: the server's own floor). ``rss_mb - empty RSS`` over the tree's size on
disk is the memory the data costs.

Memory per idle tenant: a server without a folder gets one event for each of ``idle_tenants``
tenants (``POST /api/v1/events``, pipelined); its RSS growth over that number is what a tenant
without clients costs in the whole process (hub, broker, status, allocator), measured from the
outside.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from .loadgen import Publisher
from .procs import SERVER_CPU, Resources
from .targets import HOST, TOKEN, Options, cfgpush_command, clean_env, free_port

FILES_PER_TENANT = 10
# Read every file and hash it, as the server must at start: the floor of any start.
HASH_TREE = r"""
import hashlib, os, resource, sys, time
started = time.monotonic()
files = size = 0
for folder, _, names in os.walk(sys.argv[1]):
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        hashlib.sha256(data).digest()
        files += 1
        size += len(data)
print(files, size, time.monotonic() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def document(file_bytes: int) -> tuple[bytes, bytes]:
    """A JSON document of ``file_bytes`` in two halves around a 12-digit counter: every file
    different (its own checksum), written without formatting anything per file."""
    head = b'{"id": "'
    items = []
    n = 0
    body = b'", "limits": {"rate": 100, "burst": 50}, "features": {"search": true, "beta": false}, "items": ['
    tail = b"]}\n"
    while len(head) + 12 + len(body) + len(b", ".join(items)) + len(tail) < file_bytes - 40:
        items.append(b'{"name": "item-%05d", "on": true}' % n)
        n += 1
    return head, body + b", ".join(items) + tail


def build_tree(root: Path, tenants: range, file_bytes: int) -> tuple[int, float]:
    """Write ``FILES_PER_TENANT`` files for each tenant number in ``tenants``; (files, seconds).
    The loop does three system calls per file and nothing else: the bytes are joined from
    prepared halves."""
    head, tail = document(file_bytes)
    started = time.monotonic()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    written = 0
    for t in tenants:
        folder = root / f"t{t:05d}"
        folder.mkdir(exist_ok=True)
        base = str(folder) + "/"
        for k in range(FILES_PER_TENANT):
            fd = os.open(f"{base}{k}.json", flags, 0o644)
            os.write(fd, b"%s%012d%s" % (head, t * FILES_PER_TENANT + k, tail))
            os.close(fd)
        written += FILES_PER_TENANT
    return written, time.monotonic() - started


async def wait_status(publisher: Publisher, path: str, proc, timeout: float) -> float:
    """Seconds from the process's start until ``GET path`` answers 200."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if not proc.alive():
            raise RuntimeError(f"cfgpush-serve exited with {proc.popen.returncode}; its log:\n{proc.tail()}")
        try:
            status, _ = await publisher.get(path, timeout=5)
            if status == 200:
                return time.monotonic() - proc.started
        except (OSError, TimeoutError, ConnectionError, AttributeError):
            publisher.close()
        if loop.time() > deadline:
            raise TimeoutError(f"{path} not 200 within {timeout} s")
        await asyncio.sleep(0.02)


async def start_on(res: Resources, opts: Options, config_dir: Path | None, timeout: float, name: str) -> dict:
    """``cfgpush-serve`` on ``config_dir``: (process, publisher, figures when ready)."""
    port = free_port()
    cmd = cfgpush_command(port, opts, config_dir=config_dir)
    proc = res.start(name, cmd, SERVER_CPU, env=clean_env())
    publisher = Publisher(HOST, port, TOKEN)
    serving = await wait_status(publisher, "/healthz", proc, timeout)
    ready = await wait_status(publisher, "/readyz", proc, timeout)
    return {"proc": proc, "publisher": publisher, "port": port, "serving_s": serving, "ready_s": ready}


async def diff_arrives(port: int, root: Path, tenant: str, file_bytes: int, timeout: float) -> bool | None:
    """Change one key of ``tenant``'s last file and read its event: whether it has a ``diff``."""
    from tornado_cfgpush.client import ConfigChanged, Welcome, subscribe

    target = root / tenant / f"{FILES_PER_TENANT - 1}.json"
    data = json.loads(target.read_bytes())
    data["limits"]["rate"] += 1
    try:
        async with asyncio.timeout(timeout):
            async with subscribe(f"http://{HOST}:{port}", tenant, welcome=True) as events:
                async for event in events:
                    if isinstance(event, Welcome):
                        target.write_text(json.dumps(data))
                    elif isinstance(event, ConfigChanged) and event.path == target.name:
                        return bool(event.diff and "/limits/rate" in event.diff.get("changed", ()))
    except TimeoutError:
        return None
    return None


async def hash_baseline(res: Resources, root: Path, timeout: float) -> dict:
    proc = res.start("hash-tree", [sys.executable, "-c", HASH_TREE, str(root)], SERVER_CPU, env=clean_env())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proc.alive():
        if loop.time() > deadline:
            res.stop(proc)
            raise TimeoutError("hashing the tree took over the timeout")
        await asyncio.sleep(0.05)
    files, size, seconds, maxrss_kb = proc.log.read_text().split()[-4:]
    res.stop(proc)
    return {"files": int(files), "bytes": int(size), "hash_s": float(seconds), "rss_mb": int(maxrss_kb) / 1024}


async def idle_tenants_memory(res: Resources, opts: Options, tenants: int, timeout: float) -> dict:
    """RSS growth per tenant with one event and no client, in a server without a folder."""
    started = await start_on(res, opts, None, timeout, "cfgpush-idle-tenants")
    proc, publisher = started["proc"], started["publisher"]
    try:
        await asyncio.sleep(0.5)  # let start-up allocations settle
        before = proc.rss_kb()
        await publisher.connect()
        window = 200  # requests in flight on the keep-alive connection
        for first in range(0, tenants, window):
            answers = [
                publisher.publish("app.json", f"idle-{n:06d}") for n in range(first, min(tenants, first + window))
            ]
            for answer in answers:
                publisher.event_id(await answer)
        await asyncio.sleep(0.5)
        after = proc.rss_kb()
    finally:
        publisher.close()
        res.stop(proc)
    return {
        "tenants": tenants,
        "rss_before_mb": before / 1024,
        "rss_after_mb": after / 1024,
        "kb_per_tenant": (after - before) / tenants,
    }


async def run(
    res: Resources,
    opts: Options,
    *,
    sizes: list[int],
    file_bytes: int,
    idle_tenants: int,
    timeout: float,
) -> dict:
    root = res.mkdir("scale-tree")
    empty = res.mkdir("scale-empty")
    out: dict = {"file_bytes": file_bytes, "files_per_tenant": FILES_PER_TENANT, "sizes": [], "failures": []}

    floor = await start_on(res, opts, empty, timeout, "cfgpush-empty-tree")
    out["empty"] = {"ready_s": floor["ready_s"], "rss_mb": floor["proc"].rss_kb() / 1024}
    floor["publisher"].close()
    res.stop(floor["proc"])

    built = 0
    for files in sorted(sizes):
        tenants = max(1, files // FILES_PER_TENANT)
        written, build_s = build_tree(root, range(built, tenants), file_bytes)
        built = tenants
        baseline = await hash_baseline(res, root, timeout)
        started = await start_on(res, opts, root, timeout, f"cfgpush-scale-{files}")
        proc = started["proc"]
        try:
            rss_mb = proc.rss_kb() / 1024
            worker_rss_mb = proc.children_rss_kb() / 1024  # the filesystem worker process
            diff = await diff_arrives(started["port"], root, f"t{tenants - 1:05d}", file_bytes, min(timeout, 60))
        finally:
            started["publisher"].close()
            res.stop(proc)
        row = {
            "files": files,
            "tenants": tenants,
            "tree_mb": baseline["bytes"] / 1e6,
            "built_s": build_s,
            "written": written,
            "serving_s": started["serving_s"],
            "ready_s": started["ready_s"],
            "rss_mb": rss_mb,
            "worker_rss_mb": worker_rss_mb,
            "rss_over_empty_mb": rss_mb - out["empty"]["rss_mb"],
            "diff": diff,
            "hash_s": baseline["hash_s"],
            "hash_rss_mb": baseline["rss_mb"],
            "ready_over_hash": started["ready_s"] / baseline["hash_s"] if baseline["hash_s"] > 0 else None,
        }
        out["sizes"].append(row)
        print(
            f"bench: scale {files} files: ready {row['ready_s']:.2f} s (hashing alone {row['hash_s']:.2f} s), "
            f"RSS {rss_mb:.0f} MB (empty tree {out['empty']['rss_mb']:.0f} MB) and its worker's {worker_rss_mb:.0f} MB, "
            f"diff {diff}",
            file=sys.stderr,
        )
        if diff is not True:
            out["failures"].append(
                f"scale: a change in the last tenant of {files} files came without its diff ({diff})"
            )
    out["idle_tenants"] = await idle_tenants_memory(res, opts, idle_tenants, timeout)
    return out
