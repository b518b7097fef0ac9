"""Waiting on a condition with a deadline, and what a test does when a program or service it
needs is missing."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from typing import NoReturn

import pytest

# CI sets it (.ci/run): a test that needs a program or service fails instead of skipping.
REQUIRE_SERVICES = os.environ.get("CFGPUSH_REQUIRE_SERVICES") == "1"


async def wait_for(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> None:
    """Wait until ``predicate()`` is true, or fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        await asyncio.sleep(interval)  # wait-ok: polling a condition under a deadline


def unavailable(message: str) -> NoReturn:
    """Skip the test because ``message`` (something it needs is missing), or fail it under
    ``CFGPUSH_REQUIRE_SERVICES=1``."""
    if REQUIRE_SERVICES:
        pytest.fail(message + "; CFGPUSH_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)


def need_program(name: str) -> str:
    """The path of ``name``; skip (or fail under CFGPUSH_REQUIRE_SERVICES=1) without it."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (apt-get install the package that provides it)")
    return path
