"""A plain Tornado ``StaticFileHandler`` over a folder: what an application that serves its
configuration files does today (the herd scenario's baseline). No compression (Tornado's
default), its own ETag (a hash of the file, read per request).

    python scripts/bench/servers/static.py --root FOLDER --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from _common import raise_nofile
from tornado import httpserver, netutil, web


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    raise_nofile()
    logging.basicConfig(level=logging.WARNING)

    async def serve() -> None:
        app = web.Application([(r"/(.*)", web.StaticFileHandler, {"path": args.root})])
        server = httpserver.HTTPServer(app)
        # The same listen backlog as cfgpush's: a herd is not refused by the kernel's queue.
        server.add_sockets(netutil.bind_sockets(args.port, args.host, backlog=4096))
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
