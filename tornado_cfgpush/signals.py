"""SIGTERM and SIGINT that are never lost, whatever the event loop is doing.

asyncio's ``loop.add_signal_handler`` learns of a signal from the byte the C-level handler
writes into the loop's self-pipe; when that pipe is full (a thread waking the loop thousands of
times, say) the byte is dropped and so is the signal: "Exception ignored when trying to write
to the signal wakeup fd: BlockingIOError", and the server never stops. Here the signal's
Python-level handler does the work instead: the interpreter runs it for every delivered signal
(a flag in the interpreter, not a byte in a pipe), and it hands the signal to the loop with
``call_soon_threadsafe``, whose callback is queued even when the wake-up write fails. A wake-up
fd of our own (whose overflow is harmless) wakes the loop when the signal arrives on a thread
other than the loop's.

The first signal starts the graceful shutdown; a second one while it drains exits at once
(status 128 + the signal number, as a shell reports a process ended by a signal).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable

log = logging.getLogger("cfgpush")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install(loop: asyncio.AbstractEventLoop, on_first: Callable[[], None]) -> Callable[[], None]:
    """Route SIGTERM and SIGINT to ``on_first`` (once) on ``loop``; returns the undo."""
    received: list[int] = []

    def on_loop(signum: int) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            log.info("%s received: shutting down gracefully (send it again to exit at once)", name)
            on_first()
            return
        log.warning("%s received again while shutting down: exiting now", name)
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # pragma: no cover - exiting anyway
                pass
        os._exit(128 + signum)

    def handler(signum: int, frame: object) -> None:
        try:
            loop.call_soon_threadsafe(on_loop, signum)
        except RuntimeError:  # the loop is closed: the process is ending anyway
            pass

    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)

    def drain() -> None:
        try:
            while wake_r.recv(4096):
                pass
        except OSError:  # BlockingIOError: drained
            pass

    loop.add_reader(wake_r.fileno(), drain)
    previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)

    def uninstall() -> None:
        signal.set_wakeup_fd(previous_fd)
        loop.remove_reader(wake_r.fileno())
        wake_r.close()
        wake_w.close()
        for signum, old in previous.items():
            signal.signal(signum, old)

    return uninstall
