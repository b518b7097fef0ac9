"""tornado_cfgpush: push per-tenant configuration changes to browsers.

Plugin author's guide
=====================

An *event source* tells the server that a tenant's configuration changed. The filesystem
watcher is one (the built-in plugin ``filesystem``); yours can watch a database, a queue or
an API. A source is any object with a ``name`` and an ``async run(emit)`` method::

    import asyncio
    from tornado_cfgpush import hookimpl

    class Ticker:
        name = "ticker"

        async def run(self, emit):
            # Runs until it is cancelled at shutdown.
            while True:
                event_id = await emit({"tenant_id": "acme", "change_type": "modified",
                                       "path": "clock.json"})
                await asyncio.sleep(60)

    @hookimpl
    def cfgpush_register_sources(settings):
        return [Ticker()]

Publish it as a distribution with an entry point in the ``cfgpush`` group::

    [options.entry_points]
    cfgpush =
        ticker = cfgpush_ticker

The rules the server keeps for you:

* ``emit(payload)`` is a coroutine function. It validates ``payload`` against the
  ``ConfigChanged`` schema (:mod:`tornado_cfgpush.schemas`), publishes it and returns the
  new ``event_id``. A bad payload raises :class:`marshmallow.ValidationError` and reaches
  no client. ``source`` defaults to your source's ``name``.
* A ``run`` that raises is logged with the source's name and restarted with exponential
  backoff; it never takes the other sources or the server down. A ``run`` that returns
  is finished and is not restarted.
* ``run`` is cancelled at shutdown: let :class:`asyncio.CancelledError` propagate.
* A source that may have lost events (its own queue overflowed, say) calls
  ``await emit.gap(tenant_ids)`` (None: any tenant); their clients get ``Resync`` with
  reason ``source_gap``. A crashed and restarted source does so by itself, for the
  tenants its optional ``tenants()`` method names (all connected tenants without it).
* A source that meets a change it cannot publish calls
  ``await emit.skipped(tenant_id, what, why, reason="invalid")``: logged once, counted in
  ``cfgpush_events_rejected_total``, and that tenant's clients get ``Resync``, so nothing
  vanishes silently. Each ``emit`` lets the event loop run once: publishing thousands of
  events in a row never holds it.
* A source that can list a tenant's files defines ``manifest(tenant_id)`` returning
  ``{path: checksum}``; ``Resync`` carries it, so clients refetch only what differs.
* A source that needs time to start (connect, scan) can expose ``started``, an
  :class:`asyncio.Event` it sets once changes from then on are reported; ``/readyz``
  and ``CfgPush.wait_started()`` wait for it.
* Plugins are blocked by name like pytest's ``-p no:NAME``:
  ``cfgpush-serve --disable-plugin NAME``; the built-in ``filesystem`` source too.

Every hook is specified, with its arguments, in :mod:`tornado_cfgpush.hookspecs`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "cfgpush"
"""The pluggy project name and the entry-point group third-party plugins register in."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a function as an implementation of a ``cfgpush_*`` hook."""


class Emit(Protocol):
    """What a source's ``run`` receives (see the guide above)."""

    async def __call__(
        self, payload: dict[str, Any], *, version: int | None = None, content: bytes | None = None
    ) -> str:
        """Validate ``payload``, publish it, return its event id. ``version`` (optional) orders
        what several nodes observe of one path: the broker drops a change older than the one
        it recorded (``CfgPush.publish``). ``content`` (optional): the path's new bytes, whose
        sha256 is the payload's ``checksum``; the validation gate checks them
        (``tornado_cfgpush.content.ContentRefused`` when it refuses: nothing is published), and
        for a path the operator serves (``--serve-content``) the files API answers them and the
        event carries the patch from the previous version handed."""
        ...  # pragma: no cover - a protocol

    async def gap(self, tenant_ids: Iterable[str] | None = None) -> None:
        """Events of ``tenant_ids`` (None: of any tenant) may be lost: their clients resync."""
        ...  # pragma: no cover - a protocol

    async def skipped(
        self, tenant_id: str, what: str, why: str, reason: str = "invalid", *, resync: bool = True
    ) -> None:
        """A change of ``what`` of ``tenant_id`` cannot be published, ``why`` in words: logged
        once, counted under ``reason``, and (``resync``) that tenant's clients resync."""
        ...  # pragma: no cover - a protocol


@runtime_checkable
class EventSource(Protocol):
    """What ``cfgpush_register_sources`` returns a list of."""

    name: str

    async def run(self, emit: Emit) -> None:  # pragma: no cover - a protocol
        ...


__all__ = ["EventSource", "Emit", "hookimpl", "__version__", "PROJECT_NAME"]
