"""The servers under test: how each is started, where it listens, how it is triggered.

``cfgpush`` is the real CLI process (``tornado_cfgpush.cli.main``, as ``cfgpush-serve``);
the baselines are the programs of ``bench/servers/``. All are pinned to the server core and
answer ``POST /api/v1/events`` and ``GET /healthz`` (see ``servers/_common.py``); "ready"
means ``/healthz`` answered 200, i.e. the server serves, not merely binds.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .loadgen import Publisher
from .procs import ALL_CPUS, SERVER_CPU, Proc, Resources, free_port

HERE = Path(__file__).resolve().parent
SERVERS_DIR = HERE / "servers"
HOST = "127.0.0.1"
TENANT = "bench"
TOKEN = "bench-publish-token"

BASELINES = ("seed", "websockets", "floor")
CFGPUSH_MAIN = "import sys; from tornado_cfgpush.cli import main; sys.exit(main())"
CFGPUSH = [sys.executable, "-c", CFGPUSH_MAIN]
# Order of the tables: the seed first, the floor last before cfgpush, as in the issue.
ALL_SERVERS = ("seed", "websockets", "floor", "cfgpush")
DEFLATE = "cfgpush+deflate"
# cfgpush with --certfile/--keyfile: every client on wss:// (bench.py --tls).
TLS = "cfgpush+tls"
# bench.py --workers N: cfgpush as N workers ("cfgpush+<N>w": worker 0 holds the embedded
# broker, the others follow it), and on a private Redis as one process ("cfgpush+redis", pinned
# to the server core as the others) and as N workers ("cfgpush+<N>w+redis"). The workers run on
# every core: the generator's included, which a real deployment would not share.
REDIS_ONE = "cfgpush+redis"


def workers_name(n: int, redis: bool = False) -> str:
    return f"cfgpush+{n}w" + ("+redis" if redis else "")


def workers_of(name: str) -> int | None:
    found = re.fullmatch(r"cfgpush\+(\d+)w(\+redis)?", name)
    return int(found.group(1)) if found else None


_redis_urls: dict[int, str] = {}


async def shared_redis(res: Resources) -> str:
    """One private redis-server for the run's Redis-backed targets (started at first use)."""
    if id(res) not in _redis_urls:
        _, _redis_urls[id(res)] = await start_redis(res)
    return _redis_urls[id(res)]


@dataclass
class Options:
    """What every server start needs from the command line."""

    server_loop: str = "asyncio"
    heartbeat: float = 5.0
    debounce_ms: int | None = None  # None: cfgpush's default (50 ms)


@dataclass
class Target:
    name: str
    proc: Proc
    ws_port: int
    publish_port: int
    deflate: bool = False
    tls: ssl.SSLContext | None = None  # the clients' context when the server speaks TLS
    publisher: Publisher = field(init=False)

    def __post_init__(self) -> None:
        self.publisher = Publisher(HOST, self.publish_port, TOKEN, TENANT, ssl=self.tls)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def welcomes(self) -> bool:
        """cfgpush says Welcome once subscribed; the baselines say nothing."""
        return self.name not in BASELINES


def clean_env() -> dict[str, str]:
    """The environment without CFGPUSH_* settings: only the bench's flags configure cfgpush."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CFGPUSH_")}


def cfgpush_flags() -> str:
    """``cfgpush-serve --help``, to tell which optional flags this cfgpush has."""
    done = subprocess.run(CFGPUSH + ["--help"], capture_output=True, text=True, timeout=60, env=clean_env())
    return done.stdout


def cfgpush_command(
    port: int,
    opts: Options,
    *,
    config_dir: Path | None,
    broker: str | None = None,
    deflate: bool = False,
    connections: int = 50_000,
    extra: tuple[str, ...] = (),
) -> list[str]:
    cmd = CFGPUSH + [
        "--host",
        HOST,
        "--port",
        str(port),
        "--publish-token",
        TOKEN,
        "--log-level",
        "WARNING",
        "--heartbeat-interval",
        str(opts.heartbeat),
        "--heartbeat-timeout",
        str(2 * opts.heartbeat),
        "--max-connections",
        str(connections),
        "--max-connections-per-ip",
        str(connections),
        "--max-connections-per-tenant",
        str(connections),
        # The bench measures delivery: its pipelined bursts are not held to the
        # publish API's budget per token.
        "--publish-rate",
        "0",
    ]
    if config_dir is not None:
        cmd += ["--config-dir", str(config_dir)]
    else:  # published through the API only: no folder, no watcher
        cmd += ["--disable-plugin", "filesystem"]
    if broker:
        cmd += ["--broker", broker]
    if opts.debounce_ms is not None:
        cmd += ["--debounce-ms", str(opts.debounce_ms)]
    if deflate:
        cmd += ["--ws-compression"]
    if opts.server_loop != "asyncio":
        cmd += ["--loop", opts.server_loop]
    return cmd + list(extra)


def tls_pair(res: Resources) -> tuple[ssl.SSLContext, tuple[str, ...]]:
    """A certificate for localhost from a private CA, made once per run (a restarted node
    serves the same one): the clients' context that trusts it, and the cfgpush flags that
    serve it (an ECDSA P-256 key, as certificate managers issue by default)."""
    folder = res.mkdir("tls")
    certfile, keyfile, cafile = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    if not certfile.exists():
        from tornado_cfgpush.testing.certs import TestCA

        TestCA.create(folder).issue(certfile, keyfile)
    return ssl.create_default_context(cafile=str(cafile)), ("--certfile", str(certfile), "--keyfile", str(keyfile))


def bench_config_dir(res: Resources) -> Path:
    """A config folder with the bench tenant and one file, as a deployment would have
    (the same folder each call; the e2e scenario saves ``bench/x.json`` in it)."""
    root = res.mkdir("config")
    (root / TENANT).mkdir(exist_ok=True)
    (root / TENANT / "x.json").write_text('{"n": 0}\n')
    return root


async def start(
    name: str,
    res: Resources,
    opts: Options,
    *,
    port: int | None = None,
    config_dir: Path | None = None,
    broker: str | None = None,
    cpu: int | None = SERVER_CPU,
    timeout: float = 60.0,
    extra: tuple[str, ...] = (),
) -> Target:
    """Start server ``name`` (a baseline, ``cfgpush`` or ``cfgpush+deflate``); wait until it serves.

    cfgpush watches ``config_dir`` (its filesystem source on, as deployed) or, without one,
    only publishes through the API; the baselines have no folder. ``extra``: more cfgpush flags."""
    port = port or free_port()
    if name in BASELINES:
        publish_port = free_port() if name == "websockets" else port
        cmd = [
            sys.executable,
            str(SERVERS_DIR / f"{'websockets_server' if name == 'websockets' else name}.py"),
            "--host",
            HOST,
            "--port",
            str(port),
            "--publish-port",
            str(publish_port),
            "--publish-token",
            TOKEN,
            "--heartbeat-interval",
            str(opts.heartbeat),
            "--loop",
            opts.server_loop,
        ]
        target = Target(name, res.start(name, cmd, cpu), port, publish_port)
    else:
        deflate = name == DEFLATE
        client_tls = None
        if name == TLS:
            client_tls, tls_flags = tls_pair(res)
            extra = (*extra, *tls_flags)
        workers = workers_of(name)
        if name == REDIS_ONE or name.endswith("w+redis"):
            broker = broker or await shared_redis(res)
        if workers:
            extra = (*extra, "--workers", str(workers))
            cpu = ALL_CPUS
        cmd = cfgpush_command(port, opts, config_dir=config_dir, broker=broker, deflate=deflate, extra=extra)
        proc = res.start(name.replace("+", "-"), cmd, cpu, env=clean_env())
        target = Target(name, proc, port, port, deflate, client_tls)
    await wait_serving(target, timeout)
    return target


async def wait_serving(target: Target, timeout: float) -> None:
    probe = asyncio.ensure_future(target.publisher.healthy(timeout))
    try:
        while not probe.done():
            if not target.proc.alive():
                raise RuntimeError(
                    f"{target.name} exited with {target.proc.popen.returncode} before serving; "
                    f"its log:\n{target.proc.tail()}"
                )
            await asyncio.wait([probe], timeout=0.05)
        probe.result()
    except BaseException:
        probe.cancel()
        raise
    await target.publisher.connect()


def stop(target: Target, res: Resources) -> None:
    target.publisher.close()
    res.stop(target.proc)


# -- redis-server ------------------------------------------------------------------------------


async def start_redis(
    res: Resources,
    program: str = "redis-server",
    timeout: float = 20.0,
    *,
    port: int | None = None,
    persist: bool = False,
) -> tuple[Proc, str]:
    """A private redis-server on a free port (or ``port``: a restart), no persistence unless
    ``persist`` (an append-only file, flushed when it stops on SIGTERM, read when it starts
    again in the same folder); returns it and its URL."""
    port = port or free_port()
    work = res.mkdir(f"redis-{port}")
    proc = res.start(
        "redis",
        [
            program,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "yes" if persist else "no",
            "--dir",
            str(work),
        ],
        cpu=None,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if not proc.alive():
            raise RuntimeError(f"redis-server exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"PING\r\n")
            answer = await asyncio.wait_for(reader.readline(), 2)
            writer.close()
            if answer.startswith(b"+PONG"):
                return proc, f"redis://{HOST}:{port}/0"
        except (TimeoutError, OSError):
            pass
        if loop.time() > deadline:
            raise RuntimeError(f"redis-server did not answer PING within {timeout} s:\n{proc.tail()}")
        await asyncio.sleep(0.05)
