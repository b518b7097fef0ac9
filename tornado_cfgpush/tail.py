"""``cfgpush-tail URL --tenant X``: print a tenant's events as JSON lines, across reconnects.

The operator's ``tail -f`` for configuration. Each line on stdout is one message as it came on
the wire (``{"ConfigChanged": {...}}``, ``{"Resync": {...}}``, and ``{"Welcome": {...}}`` with
``--welcome``); connection news goes to stderr. SIGINT or SIGTERM ends it with status 0; a
refusal that retrying cannot cure (an invalid tenant id, a refused token) with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .client import ConfigChanged, FileVersion, Resync, SubscribeError, Subscription

PROG = "cfgpush-tail"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Print a tenant's configuration changes as JSON lines.")
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:7945 (or ws://host:port/ws)")
    parser.add_argument("--tenant", "-t", required=True, help="the tenant id")
    parser.add_argument("--last-event-id", default=None, help="resume after this event id")
    parser.add_argument(
        "--token",
        default=None,
        help="subscriber token (?token=); also CFGPUSH_TOKEN or CFGPUSH_TOKEN_FILE (safer: not in ps)",
    )
    parser.add_argument(
        "--cafile",
        default=None,
        help="PEM file of the CA(s) that signed a wss:// server's certificate (default: the system's); "
        "also CFGPUSH_CAFILE",
    )
    parser.add_argument("--manifest", action="store_true", help="ask for the manifest in Welcome")
    parser.add_argument("--welcome", action="store_true", help="print Welcome messages too")
    parser.add_argument(
        "--content",
        action="store_true",
        help="keep the served files (--serve-content on the server) and print each new value "
        '(after the event, a line {"File": {"path", "checksum", "document", "text"}}); '
        "--file PATH fetches one at start",
    )
    parser.add_argument(
        "--file", action="append", default=[], metavar="PATH", help="with --content: a served file to follow"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no connection news on stderr")
    return parser


def _token(args: argparse.Namespace, environ: dict[str, str]) -> str | None:
    if args.token:
        return args.token
    if environ.get("CFGPUSH_TOKEN"):
        return environ["CFGPUSH_TOKEN"]
    if environ.get("CFGPUSH_TOKEN_FILE"):
        try:
            return Path(environ["CFGPUSH_TOKEN_FILE"]).read_text().strip()
        except OSError as exc:
            raise SubscribeError(f"CFGPUSH_TOKEN_FILE: cannot read it: {exc.strerror or exc}") from None
    return None


def _ssl_context(args: argparse.Namespace, environ: dict[str, str]) -> ssl.SSLContext | None:
    cafile = args.cafile or environ.get("CFGPUSH_CAFILE")
    if not cafile:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise SubscribeError(f"--cafile: cannot use {cafile!r}: {getattr(exc, 'strerror', None) or exc}") from None


def _news(quiet: bool):
    def on_status(state: str, info: dict) -> None:
        if quiet:
            return
        if state == "open":
            welcome = info.get("welcome") or {}
            print(
                f"{PROG}: subscribed to {welcome.get('tenant_id')} (newest event {welcome.get('last_event_id')})",
                file=sys.stderr,
                flush=True,
            )
        elif state == "reconnecting":
            print(
                f"{PROG}: {info.get('reason')}; reconnecting in {info.get('delay', 0):.2f} s",
                file=sys.stderr,
                flush=True,
            )

    return on_status


async def tail(args: argparse.Namespace, environ: dict[str, str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    subscription = Subscription(
        args.url,
        args.tenant,
        last_event_id=args.last_event_id,
        token=_token(args, environ),
        manifest=args.manifest,
        welcome=args.welcome,
        on_status=_news(args.quiet),
        ssl_context=_ssl_context(args, environ),
        content=args.content,
    )

    def show(path: str, version: FileVersion | None) -> None:
        shown: dict = {"path": path, "checksum": None, "document": None, "text": None}
        if version is not None:
            shown["checksum"] = version.checksum
            shown["text"] = version.content.decode("utf-8", "replace") if version.content is not None else None
            try:
                json.dumps(version.document)
                shown["document"] = version.document
            except (TypeError, ValueError):  # a TOML date: text only
                pass
        sys.stdout.write(json.dumps({"File": shown}, separators=(",", ":")) + "\n")

    async def pump() -> None:
        for path in args.file if args.content else ():
            show(path, await subscription.file(path))
        async for event in subscription:
            sys.stdout.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")
            if isinstance(event, ConfigChanged) and args.content and event.path and event.value is not None:
                show(event.path, event.value)
            elif isinstance(event, Resync) and event.files:
                for path, version in sorted(event.files.items()):
                    show(path, version)
            sys.stdout.flush()

    task = asyncio.ensure_future(pump())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
        await subscription.aclose()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    failure = task.exception() if task.done() and not task.cancelled() else None
    if failure is not None:
        raise failure
    return 0


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ = dict(os.environ if environ is None else environ)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=f"{PROG}: %(message)s")
    try:
        return asyncio.run(tail(args, environ))
    except (SubscribeError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `cfgpush-tail ... | head`: the reader is gone, so are we
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
