"""The filesystem source's tests share these: a subscribed client, one checked event, silence,
and the running source of the service."""

from __future__ import annotations

import asyncio
import hashlib

from tornado_cfgpush.schemas import CHECKSUM_RE
from tornado_cfgpush.sources.filesystem import FilesystemSource

EXPECT = 5.0  # an expected message, generous: 2 cores shared with other test runs
QUIET = 0.4  # expect_nothing after the debounce (30 ms in tornado_cfgpush.testing's settings)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fs_source(core) -> FilesystemSource:
    return next(s for s in core.sources if isinstance(s, FilesystemSource))


async def subscribe(connect, tenant_id: str, **query):
    client = await connect(tenant_id, **query)
    welcome = await client.expect("Welcome", timeout=EXPECT)
    assert welcome["tenant_id"] == tenant_id
    return client


async def change(client, timeout: float = EXPECT) -> dict:
    event = await client.expect("ConfigChanged", timeout=timeout)
    assert event["source"] == "filesystem"
    assert event["timestamp"].endswith("Z")
    if event["change_type"] == "deleted":
        assert event["checksum"] is None
    else:
        assert CHECKSUM_RE.match(event["checksum"]), event
    return event


async def nothing(*clients, timeout: float = QUIET) -> None:
    await asyncio.gather(*(c.expect_nothing(timeout) for c in clients))
