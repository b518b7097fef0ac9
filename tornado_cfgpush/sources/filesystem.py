"""The default event source: a tenant's configuration is a folder (or one file) on disk.

Layout: tenant ``T`` is the folder ``<config-dir>/T/`` (recursive; ``path`` is relative to
it, ``/``-separated) or the single file ``<config-dir>/T.<ext>`` (``path`` is the file name).

The way a change travels here::

    watchdog observer thread --call_soon_threadsafe--> loop: _on_fs_event
      -> _schedule(path)       debounce: one timer per file, restarted by every event,
                               fired at the latest ``max_delay`` after the first one
      -> _settle(path)         sha256 of the content against what was last reported:
                               created / modified / deleted / moved, or nothing
      -> queue -> run() -> emit(payload)

Comparing checksums instead of trusting event kinds is what makes one save one event
whatever the editor does (in place, truncate and write, temp file and rename), and a save
that changes no byte (or a ``touch``) no event at all.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Any

from marshmallow import ValidationError
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

try:  # Linux (inotify) only
    from watchdog.observers import inotify_move_event_grouper
except ImportError:  # pragma: no cover
    inotify_move_event_grouper = None

# watchdog holds each IN_MOVED_FROM for 0.5 s to pair it with its IN_MOVED_TO, and its queue's
# reader sleeps that whole time when it looked at the queue between the two halves, even once
# they are paired: an atomic save (a temporary file renamed over the real one) was then
# reported 0.5 s late, about one save in twenty (scripts/bench.py e2e). The kernel queues both
# halves of a rename together, so a short hold pairs them as well; a half left unpaired is
# still reported right (checksums, ``_vanished_twin``). The attribute is watchdog's class
# default (watchdog 7.1), read when each observer starts.
PAIR_RENAMES_WITHIN = 0.02
if inotify_move_event_grouper is not None:
    inotify_move_event_grouper.InotifyMoveEventGrouper.delay = PAIR_RENAMES_WITHIN

from .. import Emit, hookimpl
from .. import structured
from ..rules import path_error, tenant_id_error

log = logging.getLogger("cfgpush.sources.filesystem")

SOURCE_NAME = "filesystem"
INOTIFY_WATCHES = "/proc/sys/fs/inotify/max_user_watches"
POLL_INTERVAL = 1.0

# Editors' temporary, swap, lock and backup files: never configuration.
_IGNORED_SUFFIXES = (
    "~", ".swp", ".swo", ".swx", ".swpx", ".tmp", ".temp", ".bak", ".orig", ".rej",
    ".part", ".crdownload", "___jb_tmp___", "___jb_old___", ".kate-swp",
)
_IGNORED_NAMES = {"4913"}  # vim probes whether it may create files in the folder


# Parsed structured files are kept to compute `diff`; their raw sizes may add up to this.
MAX_KEPT_DOCUMENT_BYTES = 64 * 1024 * 1024
_NO_DOC = object()  # not structured, too large, or did not parse: no diff
_RESCAN = object()  # queued when events may have been lost: rescan, then Resync the tenants

# watchdog reports a kernel queue overflow (IN_Q_OVERFLOW) only in this log record (its
# handler is internal to the emitter): the record is how a source learns it lost events.
_WATCHDOG_INOTIFY_LOGGER = "watchdog.observers.inotify_c"
_OVERFLOW_MESSAGE = "Inotify queue overflowed"


class _OverflowWatch(logging.Filter):
    """Tells every running filesystem source when watchdog logs a queue overflow."""

    def __init__(self) -> None:
        super().__init__()
        self.listeners: set[Any] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(_OVERFLOW_MESSAGE):
            for listener in list(self.listeners):
                listener()
        return True


_overflow_watch = _OverflowWatch()
logging.getLogger(_WATCHDOG_INOTIFY_LOGGER).addFilter(_overflow_watch)


def is_ignored_name(name: str) -> bool:
    """True for names that are never configuration: dotfiles, editors' temp/backup files."""
    return (
        name.startswith(".")
        or name in _IGNORED_NAMES
        or (name.startswith("#") and name.endswith("#"))
        or name.endswith(_IGNORED_SUFFIXES)
    )


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def inotify_watch_limit() -> int | None:
    try:
        with open(INOTIFY_WATCHES) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def count_directories(root: Path) -> int:
    return 1 + sum(len(dirs) for _, dirs, _ in os.walk(root))


def choose_observer_kind(directories: int, watch_limit: int | None) -> str:
    """``"inotify"`` unless the folder needs more watches than the kernel allows.

    watchdog swallows a failed watch below the root silently (that subtree would give no
    events), so the count is checked before starting rather than trusting the start.
    """
    if watch_limit is not None and directories >= watch_limit:
        return "polling"
    return "inotify"


def _watch_limit_message(directories: int, limit: int | None) -> str:
    return (
        f"inotify watch limit reached (fs.inotify.max_user_watches = {limit}, the config folder has "
        f"{directories} directories): raise it, e.g. `sysctl fs.inotify.max_user_watches=524288` "
        f"(persist it in /etc/sysctl.d/); falling back to polling every {POLL_INTERVAL:g} s"
    )


class _ToLoop(FileSystemEventHandler):
    """Runs on the observer thread: hands every event to the loop, does nothing else."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback):
        self._loop = loop
        self._callback = callback

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._loop.call_soon_threadsafe(self._callback, event)
        except RuntimeError:  # loop closed during shutdown
            pass


class FilesystemSource:
    name = SOURCE_NAME

    def __init__(self, config_dir: Path | str, debounce: float = 0.05, *, max_delay: float | None = None,
                 polling: bool = False):
        self.config_dir = Path(config_dir)
        self.debounce = debounce
        # A file written continuously still reports, at least this often.
        self.max_delay = max_delay if max_delay is not None else max(1.0, 20 * debounce)
        self.force_polling = polling
        self.observer_kind = ""
        self.root = ""
        self._known: dict[str, str] = {}  # absolute path -> checksum last reported
        # absolute path -> (parsed document, raw size) of structured files, for `diff`
        self._docs: dict[str, tuple[Any, int]] = {}
        self._docs_bytes = 0
        self._pending: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._moved_from: dict[str, str] = {}  # destination -> source of a rename in flight
        self._queue: asyncio.Queue[dict[str, Any]] | None = None  # None while not running
        # Payloads a run settled but did not get out (it was cancelled or crashed in emit, or
        # they were still queued): their checksums are already in _known, so the next run's
        # rescan would not see them as changes. The next run emits them first.
        self._unsent: list[dict[str, Any]] = []
        self._buffer: list[FileSystemEvent] | None = None  # events held while scanning
        self._refused_tenants: set[str] = set()
        self._ran_before = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set once watching and the initial scan are done: changes from then on are reported.
        self.started = asyncio.Event()

    # -- the source contract --------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        root = self.config_dir.resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"config folder {str(self.config_dir)!r} does not exist or is not a folder")
        self.root = str(root)
        self.started.clear()
        self._loop = loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._buffer = []
        starting = loop.run_in_executor(None, self._start_observer, loop)
        try:
            observer = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # Cancelled while the watcher starts on its thread: stop it once it has started.
            starting.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().stop())
            raise
        overflowed = lambda: loop.call_soon_threadsafe(self._on_overflow)  # noqa: E731
        _overflow_watch.listeners.add(overflowed)
        in_flight: dict[str, Any] | None = None
        try:
            # First what an earlier run settled but did not get out (see _unsent).
            for payload in self._unsent:
                self._queue.put_nowait(payload)
            self._unsent = []
            scanned = await loop.run_in_executor(None, self._scan_tree, self.root)
            rescan = self._ran_before
            self._ran_before = True
            if rescan:
                # Restarted after a crash: report what changed while no one was watching.
                self._settle_all(scanned)
            else:
                self._known = {path: state[0] for path, state in scanned.items()}
                for path, (_, doc, size) in scanned.items():
                    self._remember_doc(path, doc, size)
                # A shared broker remembers what was published before this process started:
                # report what changed on disk while no source was watching.
                await self._reconcile_with_published(emit)
            buffered, self._buffer = self._buffer, None
            for event in buffered:
                self._on_fs_event(event)
            log.info("watching %s (%s, %d files, debounce %.0f ms)", self.root, self.observer_kind,
                     len(self._known), self.debounce * 1000)
            self.started.set()
            while True:
                payload = await self._queue.get()
                if payload is _RESCAN:
                    # The kernel dropped events: compare the whole tree, then tell the
                    # clients their view may have missed something in between.
                    self._settle_all(await loop.run_in_executor(None, self._scan_tree, self.root))
                    await emit.gap(self.tenants())
                    continue
                in_flight = payload
                try:
                    await emit(payload)
                except ValidationError:
                    in_flight = None  # refused by the schema: sending it again cannot help
                    raise
                in_flight = None
        finally:
            # Stopped: fs events still on their way from the observer thread are dropped from
            # now on, and the next run's rescan finds their changes. Settled after this point,
            # they would update _known and be queued to no one: lost for good.
            queue, self._queue = self._queue, None
            # Keep what was settled but not surely emitted (the payload in flight when emit
            # raised or was cancelled, the queued ones) for the next run, as its rescan cannot
            # see them. Re-sending one that did go out is harmless: the broker drops a created/
            # modified/deleted identical to the previous event of its path.
            _overflow_watch.listeners.discard(overflowed)
            unsent = [in_flight] if in_flight is not None else []
            queued = [queue.get_nowait() for _ in range(queue.qsize())]
            self._unsent = unsent + [p for p in queued if p is not _RESCAN]
            for _, handle in self._pending.values():
                handle.cancel()
            self._pending.clear()
            observer.stop()
            await loop.run_in_executor(None, observer.join)

    async def _reconcile_with_published(self, emit: Emit) -> None:
        lookup = getattr(emit, "published_states", None)
        if lookup is None:  # an emit without it (a test's, say): nothing to compare with
            return
        on_disk: dict[str, dict[str, str]] = {}
        for path, checksum in self._known.items():
            tenant_id, rel = self._classify(path)
            on_disk.setdefault(tenant_id, {})[rel] = checksum
        for tenant_id in sorted(on_disk):
            previous = await lookup(tenant_id)
            if not previous:
                continue  # never published (or a fresh embedded broker): nothing to compare
            files = on_disk[tenant_id]
            for rel in sorted(set(files) | set(previous)):
                now, before = files.get(rel), previous.get(rel)
                if now == before:
                    continue
                if now is None:
                    self._report(tenant_id, "deleted", rel, None)
                else:
                    self._report(tenant_id, "created" if before is None else "modified", rel, now)

    def manifest(self, tenant_id: str) -> dict[str, str] | None:
        """``{path: checksum}`` of every file of ``tenant_id`` as last reported."""
        if not self.root:
            return None
        found = {}
        for path, checksum in self._known.items():
            target = self._classify(path)
            if target is not None and target[0] == tenant_id:
                found[target[1]] = checksum
        return found

    def tenants(self) -> list[str]:
        """The tenants with files here: whose clients resync when this source restarts."""
        return sorted({t[0] for t in map(self._classify, self._known) if t is not None})

    # -- watching -----------------------------------------------------------------------------

    def _on_overflow(self) -> None:
        if self._queue is not None:
            log.warning("the kernel's inotify queue overflowed: rescanning %s "
                        "(raise fs.inotify.max_queued_events if this recurs)", self.root)
            self._queue.put_nowait(_RESCAN)

    def _settle_all(self, scanned: dict[str, tuple[str, Any, int]]) -> None:
        for path in sorted(set(scanned) | set(self._known)):
            self._settle_to(path, scanned.get(path))

    def _start_observer(self, loop: asyncio.AbstractEventLoop):
        """On a worker thread: scheduling recursive watches walks the whole tree."""
        handler = _ToLoop(loop, self._on_fs_event)
        kind = "polling" if self.force_polling else None
        if kind is None:
            directories = count_directories(Path(self.root))
            limit = inotify_watch_limit()
            kind = choose_observer_kind(directories, limit)
            if kind == "polling":
                log.warning(_watch_limit_message(directories, limit))
        if kind == "inotify":
            observer = Observer()
            try:
                observer.schedule(handler, self.root, recursive=True)
                observer.start()
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                    raise
                log.warning(_watch_limit_message(count_directories(Path(self.root)), inotify_watch_limit()))
                kind = "polling"
        if kind == "polling":
            observer = PollingObserver(timeout=POLL_INTERVAL)
            observer.schedule(handler, self.root, recursive=True)
            observer.start()
        self.observer_kind = kind
        return observer

    def _scan_tree(self, top: str) -> dict[str, tuple[str, Any, int]]:
        """The state (see ``_read``) of every trackable file under ``top``."""
        found = {}
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not is_ignored_name(d)]
            for name in filenames:
                path = os.path.join(dirpath, name)
                if self._classify(path) is not None:
                    state = self._read(path)
                    if state is not None:
                        found[path] = state
        return found

    def _on_fs_event(self, event: FileSystemEvent) -> None:
        if self._queue is None:
            return  # not running (stopping or stopped): the next run rescans
        if self._buffer is not None:
            self._buffer.append(event)
            return
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if kind == "moved" else ""
        if event.is_directory:
            self._on_directory_event(kind, src, dest)
            return
        if kind != "moved":
            self._schedule(src)
            return
        if src in self._known and self._same_tenant(src, dest):
            # A rename inside a tenant: one `moved` event when the destination settles.
            self._moved_from[dest] = src
            self._cancel(src)
        else:
            self._schedule(src)
        self._schedule(dest)

    def _on_directory_event(self, kind: str, src: str, dest: str) -> None:
        if kind in ("deleted", "moved"):
            prefix = src.rstrip(os.sep) + os.sep
            for path in [p for p in self._known if p.startswith(prefix)]:
                self._schedule(path)
        if kind in ("created", "moved"):
            # Files written right after mkdir may only show as Created on the folder.
            top = dest or src
            if os.path.isdir(top) and self._inside_root(top):
                for dirpath, dirnames, filenames in os.walk(top):
                    dirnames[:] = [d for d in dirnames if not is_ignored_name(d)]
                    for name in filenames:
                        self._schedule(os.path.join(dirpath, name))

    # -- debounce -----------------------------------------------------------------------------

    def _schedule(self, path: str) -> None:
        if self._classify(path) is None:
            return
        loop = self._loop
        now = loop.time()
        pending = self._pending.get(path)
        if pending is None:
            first = now
        else:
            first = pending[0]
            pending[1].cancel()
        when = min(now + self.debounce, first + self.max_delay)
        self._pending[path] = (first, loop.call_at(when, self._settle, path))

    def _cancel(self, path: str) -> None:
        pending = self._pending.pop(path, None)
        if pending is not None:
            pending[1].cancel()

    def _settle(self, path: str) -> None:
        self._pending.pop(path, None)
        self._settle_to(path, self._read(path))

    def _settle_to(self, path: str, state: tuple[str, Any, int] | None) -> None:
        """Compare the file's state with what was last reported; queue the difference."""
        target = self._classify(path)
        moved_from = self._moved_from.pop(path, None)
        if target is None:
            return
        tenant_id, rel = target
        previous = self._known.get(path)
        checksum = state[0] if state is not None else None
        old_doc = self._forget_doc(path)
        if state is not None:
            self._remember_doc(path, state[1], state[2])
        if checksum is None:
            if moved_from is not None:
                # Renamed on before it settled (a -> b -> c): its own file, the rename's source,
                # must still be settled, or it stays known (in manifests) and is never deleted.
                self._schedule(moved_from)
            if previous is not None:
                del self._known[path]
                self._report(tenant_id, "deleted", rel, None)
            return
        self._known[path] = checksum
        if moved_from is not None:
            if moved_from in self._known and not os.path.lexists(moved_from):
                del self._known[moved_from]
                self._forget_doc(moved_from)
                old = self._classify(moved_from)
                self._report(tenant_id, "moved", rel, checksum, meta={"old_path": old[1]} if old else None)
                return
            self._schedule(moved_from)  # not a plain rename after all: settle it on its own
        if previous is None:
            twin = self._vanished_twin(path, tenant_id, checksum)
            if twin is not None:
                del self._known[twin[0]]
                self._forget_doc(twin[0])
                self._report(tenant_id, "moved", rel, checksum, meta={"old_path": twin[1]})
                return
            self._report(tenant_id, "created", rel, checksum)
        elif previous != checksum:
            new_doc = state[1]
            diff = structured.diff(old_doc, new_doc) if old_doc is not _NO_DOC and new_doc is not _NO_DOC else None
            self._report(tenant_id, "modified", rel, checksum, diff=diff)

    def _report(self, tenant_id: str, change_type: str, rel: str, checksum: str | None,
                meta: dict | None = None, diff: dict | None = None) -> None:
        payload: dict[str, Any] = {"tenant_id": tenant_id, "change_type": change_type, "path": rel,
                                   "checksum": checksum}
        if meta:
            payload["meta"] = meta
        if diff is not None:
            payload["diff"] = diff
        self._queue.put_nowait(payload)

    # -- parsed documents, for `diff` -----------------------------------------------------------

    def _remember_doc(self, path: str, doc: Any, size: int) -> None:
        if doc is _NO_DOC or self._docs_bytes + size > MAX_KEPT_DOCUMENT_BYTES:
            return
        self._docs[path] = (doc, size)
        self._docs_bytes += size

    def _forget_doc(self, path: str) -> Any:
        kept = self._docs.pop(path, None)
        if kept is None:
            return _NO_DOC
        self._docs_bytes -= kept[1]
        return kept[0]

    # -- paths ----------------------------------------------------------------------------------

    def _inside_root(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)

    def _classify(self, path: str) -> tuple[str, str] | None:
        """``(tenant_id, path relative to the tenant)`` for a trackable file, else None."""
        if not self._inside_root(path) or path == self.root:
            return None
        parts = path[len(self.root) + 1:].split(os.sep)
        if any(is_ignored_name(part) for part in parts):
            return None
        if len(parts) == 1:
            stem, dot, _ = parts[0].rpartition(".")
            if not dot:
                return None
            tenant_id, rel = stem, parts[0]
        else:
            tenant_id, rel = parts[0], "/".join(parts[1:])
        if tenant_id_error(tenant_id):
            if tenant_id not in self._refused_tenants:
                self._refused_tenants.add(tenant_id)
                log.warning("ignoring %r: %r is not a valid tenant id (%s)", path, tenant_id,
                            tenant_id_error(tenant_id))
            return None
        if path_error(rel):
            return None
        return tenant_id, rel

    def _vanished_twin(self, path: str, tenant_id: str, checksum: str) -> tuple[str, str] | None:
        """``(absolute, relative path)`` of a known file of the tenant with this very content
        that is gone from disk: the source of a rename that watchdog did not pair.

        A file renamed into a folder made just before (``mkdir new && mv a.json new/``), whose
        watch was not in place yet, shows up as Created here and, a moment later (watchdog holds
        an unpaired IN_MOVED_FROM for PAIR_RENAMES_WITHIN), as Deleted there. Reporting it as ``moved`` is
        what the rename was; were it a deletion and an unrelated creation of the same bytes,
        ``moved`` leaves the client in exactly the same state. Linear in the known files, and
        only for files that appear.
        """
        for other, known in self._known.items():
            if known == checksum and other != path and not os.path.lexists(other):
                target = self._classify(other)
                if target is not None and target[0] == tenant_id:
                    return other, target[1]
        return None

    def _same_tenant(self, a: str, b: str) -> bool:
        ta, tb = self._classify(a), self._classify(b)
        return ta is not None and tb is not None and ta[0] == tb[0]

    def _read(self, path: str) -> tuple[str, Any, int] | None:
        """``(checksum, parsed document or _NO_DOC, size)``, or None when ``path`` is not a
        regular file of its own tenant.

        Links are followed only when they stay in the tenant they are found in: a link out
        of the config folder, or into another tenant, would hand one tenant's content (its
        checksum, its keys) to another's clients.
        """
        try:
            real = os.path.realpath(path)
            own = self._classify(path)
            target = self._classify(real) if self._inside_root(real) else None
            if own is None or target is None or target[0] != own[0]:
                if real != path:
                    log.debug("not following %s: it leads outside its tenant", path)
                return None
            info = os.stat(real)
            if not stat.S_ISREG(info.st_mode):
                return None
            if info.st_size <= structured.MAX_PARSED_BYTES and structured.parser_for(path) is not None:
                with open(real, "rb") as f:
                    data = f.read(structured.MAX_PARSED_BYTES + 1)
                if len(data) > structured.MAX_PARSED_BYTES:  # it grew since the stat
                    return sha256_of(real), _NO_DOC, 0
                ok, doc = structured.parse(path, data)
                return "sha256:" + hashlib.sha256(data).hexdigest(), doc if ok else _NO_DOC, len(data)
            return sha256_of(real), _NO_DOC, 0
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            return None


@hookimpl
def cfgpush_register_sources(settings) -> list[FilesystemSource]:
    return [FilesystemSource(settings.config_dir, settings.debounce_ms / 1000)]
