"""Watching the config folder: which observer, its adjustments, and the hand-over of its events.

Runs in the filesystem source's worker process (``worker.py``). watchdog's observer thread
calls ``Inbox.put_event`` for every event: an append under a lock, nothing else. The inbox is
bounded: past the bound the watcher drops events and raises a flag, and the worker rescans the
tree and tells the server its tenants may have missed changes (``Resync(source_gap)``), as for
a kernel queue overflow (``IN_Q_OVERFLOW``, reported by watchdog only as a log record, which
``OverflowWatch`` listens for).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

INOTIFY_WATCHES = "/proc/sys/fs/inotify/max_user_watches"
POLL_INTERVAL = 1.0
# watchdog holds each IN_MOVED_FROM this long (its default: 0.5 s) to pair it with its
# IN_MOVED_TO, and its queue's reader sleeps that whole time when it looked at the queue
# between the two halves: an atomic save (a temporary file renamed over the real one) was
# reported 0.5 s late, about one save in twenty (scripts/bench.py e2e). The kernel queues
# both halves of a rename together, so a short hold pairs them as well; a half left unpaired
# is still reported right (the settle machine's rename rules).
PAIR_RENAMES_WITHIN = 0.02
# Raw events held between the watcher and the settle loop; past it, a rescan instead.
INBOX_BOUND = 200_000

# The events the settle machine uses. Without opens and closes-without-write (watchdog's
# default asks the kernel for every kind), the worker's own reads of a file give no events,
# and a burst fills the kernel's queue half as fast.
EVENTS = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
]

_WATCHDOG_INOTIFY_LOGGER = "watchdog.observers.inotify_c"
_OVERFLOW_MESSAGE = "Inotify queue overflowed"


def inotify_watch_limit() -> int | None:
    try:
        with open(INOTIFY_WATCHES) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def count_directories(root: Path | str) -> int:
    """The folder and the folders below it (as ``os.walk`` lists them: a link to a folder
    counts, and is not walked), without listing its files' names (twice as fast: it runs at
    every start, in the server and in the worker)."""
    count = 1
    todo = [os.fspath(root)]
    while todo:
        try:
            with os.scandir(todo.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir():
                            count += 1
                            if not entry.is_symlink():
                                todo.append(entry.path)
                    except OSError:
                        pass
        except OSError:  # gone meanwhile, or not listable
            pass
    return count


def choose_observer_kind(directories: int, watch_limit: int | None) -> str:
    """``"inotify"`` unless the folder needs more watches than the kernel allows.

    watchdog swallows a failed watch below the root silently (that subtree would give no
    events), so the count is checked before starting rather than trusting the start.
    """
    if watch_limit is not None and directories >= watch_limit:
        return "polling"
    return "inotify"


def watch_limit_message(directories: int, limit: int | None) -> str:
    return (
        f"inotify watch limit reached (fs.inotify.max_user_watches = {limit}, the config folder has "
        f"{directories} directories): raise it, e.g. `sysctl fs.inotify.max_user_watches="
        f"{_enough(directories)}` (persist it in /etc/sysctl.d/); polling every {POLL_INTERVAL:g} s instead "
        f"(--watch-fallback poll)"
    )


def _enough(directories: int) -> int:
    return max(8192, 2 * directories)  # room for the folders made later, and other watchers


class WatchLimitReached(Exception):
    """The config folder needs more inotify watches than the kernel allows (--watch-fallback error)."""


def watch_limit_error(root: Path | str) -> str | None:
    """The start-up error of a folder that needs more watches than the kernel allows, or None."""
    limit = inotify_watch_limit()
    if limit is None:
        return None
    directories = count_directories(root)
    if choose_observer_kind(directories, limit) == "inotify":
        return None
    return (
        f"--config-dir: the folder has {directories} directories to watch, and the kernel allows "
        f"{limit} inotify watches (fs.inotify.max_user_watches): raise it, e.g. "
        f"`sysctl fs.inotify.max_user_watches={_enough(directories)}` (persist it in /etc/sysctl.d/), "
        f"or start with --watch-fallback poll to poll the folder every {POLL_INTERVAL:g} s instead"
    )


def adjust_watchdog() -> None:
    """watchdog's class default, read when each observer starts: set in the worker process
    only, when it starts (never at import)."""
    try:
        from watchdog.observers import inotify_move_event_grouper
    except ImportError:  # pragma: no cover - not Linux
        return
    inotify_move_event_grouper.InotifyMoveEventGrouper.delay = PAIR_RENAMES_WITHIN


class Inbox:
    """What the settle loop has to look at: watcher events (bounded) and everything else
    (read results, wake-ups), in arrival order."""

    def __init__(self, bound: int = INBOX_BOUND):
        self.bound = bound
        self.overflowed = False
        self._items: deque[Any] = deque()
        self._events = 0
        self._ready = threading.Condition(threading.Lock())

    def put_event(self, event: FileSystemEvent) -> None:
        with self._ready:
            if self._events >= self.bound:
                self.overflowed = True
                return
            self._events += 1
            self._items.append(event)
            self._ready.notify()

    def put(self, item: Any) -> None:
        with self._ready:
            self._items.append(item)
            self._ready.notify()

    def take(self, timeout: float | None) -> list[Any]:
        """Everything waiting, or an empty list once ``timeout`` passed with nothing."""
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)
            items = list(self._items)
            self._items.clear()
            self._events = 0
            return items

    def take_overflow(self) -> bool:
        with self._ready:
            overflowed, self.overflowed = self.overflowed, False
            return overflowed


class ToInbox(FileSystemEventHandler):
    """Runs on the observer thread: hands every event to the inbox, does nothing else."""

    def __init__(self, inbox: Inbox):
        self._inbox = inbox

    def dispatch(self, event: FileSystemEvent) -> None:
        self._inbox.put_event(event)


class OverflowWatch(logging.Filter):
    """Calls ``on_overflow`` when watchdog logs a kernel queue overflow."""

    def __init__(self, on_overflow: Callable[[], None]):
        super().__init__()
        self._on_overflow = on_overflow

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(_OVERFLOW_MESSAGE):
            self._on_overflow()
        return True

    def install(self) -> None:
        logging.getLogger(_WATCHDOG_INOTIFY_LOGGER).addFilter(self)


def start_observer(
    root: str,
    handler: FileSystemEventHandler,
    *,
    polling: bool,
    watch_limit: int | None,
    log: logging.Logger,
    fallback: str = "poll",
):
    """An observer watching ``root`` recursively, started, and its kind: ``inotify``, or
    ``polling`` when forced, or (``fallback`` "poll") when the kernel's watch limit is too low;
    with ``fallback`` "error" a too-low limit raises ``WatchLimitReached``."""
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    kind = "polling" if polling else None
    if kind is None:
        directories = count_directories(root)
        kind = choose_observer_kind(directories, watch_limit)
        if kind == "polling":
            if fallback != "poll":
                raise WatchLimitReached(watch_limit_error(root) or watch_limit_message(directories, watch_limit))
            log.warning(watch_limit_message(directories, watch_limit))
    if kind == "inotify":
        observer = Observer()
        try:
            observer.schedule(handler, root, recursive=True, event_filter=EVENTS)
            observer.start()
        except OSError as exc:
            import errno

            if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                raise
            message = watch_limit_message(count_directories(root), inotify_watch_limit())
            if fallback != "poll":
                raise WatchLimitReached(message) from None
            log.warning(message)
            kind = "polling"
    if kind == "polling":
        observer = PollingObserver(timeout=POLL_INTERVAL)
        observer.schedule(handler, root, recursive=True, event_filter=EVENTS)
        observer.start()
    return observer, kind


def observer_alive(observer: Any) -> bool:
    """Whether the observer and each of its emitter threads still run."""
    return observer.is_alive() and all(e.is_alive() for e in list(observer.emitters))
