"""From "this file was touched" to one event per real change: the settle state machine.

Pure: no disk, no clock, no threads. The worker feeds it what the watcher saw (``touched``,
``renamed``), asks which files are due to be read (``due``), hands back what it read
(``read_done``), and takes the events (``take``). Tested without a disk (tests/test_settle.py).

Level-triggered, not edge-triggered: an event is computed when it is taken, from two states of
the file, what the server was last told (``sent``) and what was read last (``current``), never
from the kinds of events the watcher reported. So one save is one event whatever the editor did
(in place, truncate and write, a temporary file renamed over the original), a save that
changes no byte is no event, and while the server cannot take events as fast as files change
(a broker outage, a burst), changes of one file coalesce to the newest: what waits is one
entry per file, never a queue that grows with the rate of writes.

Debounce: a touched file is read once ``debounce`` passes without another touch, and at the
latest ``max_delay`` after the first one (a file written continuously still reports).

Renames: a rename inside a tenant (``renamed``) is one ``moved`` event once both ends are read
(the source gone, the destination there). A file that appears with the content of a file of
the same tenant that is gone, both read, is a rename the watcher did not pair (``mkdir new &&
mv a.json new/``): also ``moved``. The watcher reports the source's disappearance a little
after the destination (it holds the unpaired half up to ``watch.PAIR_RENAMES_WITHIN``), so a
new file whose content a known file of its tenant has waits ``TWIN_GRACE`` for it. All of it
through indexes, never by scanning the known files: a burst of thousands of identical files
costs what a burst of distinct ones costs (and waits the grace once).
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Iterable
from typing import Any, Final, NamedTuple

from ...structured import Unparsed
from .names import Key, Target

Payload = dict[str, Any]

# Why a structured file's event carries no diff (meta.diff_skipped), besides structured's own.
NO_PREVIOUS = "no_previous_version"  # the version before did not parse, or is not known
MEMORY_CAP = "memory_cap"  # the kept copies reached the source's bound
TWIN_GRACE = 0.06  # seconds: twice watchdog's hold of an unpaired rename half, and some
NOT_REPRESENTABLE = "keys_not_representable"  # a key the wire cannot carry (a lone surrogate)


class Read:
    """What a read found: ``checksum`` (None: no such regular file), the file's ``copy`` for
    the next diff (opaque here: the worker keeps structured files compressed, or an
    ``Unparsed`` saying why there is none; None for a file that is not structured), its
    ``size`` (what the copy counts for against the bound), and the diff against the copy the
    read was asked with (None when there is none; ``skip`` then says why).

    ``version`` orders what several nodes observe of one shared file (the broker drops a
    change older than the one it recorded): the content's change time (ctime, in
    microseconds: set by the kernel, the same for every reader), or, for a file found gone,
    the time it was found so (before any later re-creation's ctime)."""

    __slots__ = (
        "checksum",
        "copy",
        "size",
        "diff",
        "skip",
        "extra",
        "version",
        "refused",
        "patch",
        "document_checksum",
        "patch_skip",
    )

    def __init__(
        self,
        checksum: str | None,
        copy: Any = None,
        size: int = 0,
        diff: dict[str, Any] | None = None,
        skip: str | None = None,
        extra: Any = None,
        version: int | None = None,
    ):
        self.checksum = checksum
        self.copy = copy
        self.size = size
        self.diff = diff
        self.skip = skip
        self.extra = extra  # the reader's own (tree.Content, for rescans)
        self.version = version
        self.refused: Any = None  # the gate's Failure: this version may not be announced
        # A served file (--serve-content): the RFC 6902 patch from the copy the read was asked
        # with, and the new document's canonical checksum; or why there is none.
        self.patch: list[dict[str, Any]] | None = None
        self.document_checksum: str | None = None
        self.patch_skip: str | None = None


GONE = Read(None)


class Taken(NamedTuple):
    """An event taken: the file's key, the payload, the key it moved from, its version."""

    key: Key
    payload: Payload
    old_key: Key | None
    version: int | None


class _File:
    __slots__ = (
        "target",
        "sent",
        "sent_copy",
        "sent_size",
        "current",
        "first",
        "deadline",
        "reading",
        "again",
        "ready",
        "ready_at",
        "moved_from",
        "moved_to",
        "cached",
        "read_at",
    )

    def __init__(self, target: Target):
        self.target = target
        self.sent: str | None = None  # the checksum the server was told (None: no file)
        self.sent_copy: Any = None  # its copy (see Read), for the next diff
        self.sent_size = 0  # what sent_copy counts against the memory bound
        self.current: Read | None = None  # read, not yet taken
        self.first: float | None = None  # first touch since the last read
        self.deadline: float | None = None  # when to read (None: not waiting)
        self.reading = False  # a read is under way
        self.again = False  # touched while being read: read once more after
        self.ready = False  # read and waiting to be taken
        self.ready_at = 0.0  # when it was read
        self.read_at = float("-inf")  # when a read was last asked for
        self.moved_from: Key | None = None  # the other end of a rename into this file
        self.moved_to: Key | None = None  # and of a rename out of it: its event is the other's
        self.cached: Any = None  # the reader's last Content, offered back for rescans


class Settler:
    def __init__(self, debounce: float, max_delay: float, *, max_copy_bytes: int = 1024 * 1024 * 1024):
        self.debounce = debounce
        self.max_delay = max_delay
        self.max_copy_bytes = max_copy_bytes  # the kept copies' sizes, together
        self.copy_bytes = 0
        self._files: dict[Key, _File] = {}
        self._timers: list[tuple[float, int, Key]] = []  # (deadline, n, key), stale ones skipped
        self._n = itertools.count()
        self._ready: dict[Key, None] = {}  # read, in the order they were read
        # Renames the watcher did not pair: files read as gone whose sent content was
        # (tenant, checksum), and how many files with that sent content are still to be read.
        self._gone: dict[tuple[str, str], dict[Key, None]] = {}
        self._unread: dict[tuple[str, str | None], int] = {}
        # How many files of a tenant the server knows with a content: a new file with one of
        # those may be a rename whose other half the watcher has not reported yet.
        self._sent_count: dict[tuple[str, str], int] = {}
        self._retry_at: float | None = None  # a file waits out the grace until then
        self._now = float("inf")
        # Folder -> files and subfolders below it that this machine knows, for folder events.
        self._dir_files: dict[str, set[Key]] = {}
        self._dir_dirs: dict[str, set[str]] = {}

    # -- what the server was told ------------------------------------------------------------

    def baseline(
        self, key: Key, target: Target, checksum: str, copy: Any = None, size: int = 0, cached: Any = None
    ) -> None:
        """The server knows ``key`` with this content (a start-up scan, or a restart's record)."""
        f = self._file(key, target)
        self._set_sent(f, checksum)
        self._keep_copy(f, copy, size)
        f.cached = cached

    def known(self) -> Iterable[tuple[Key, Target, str]]:
        """``(key, target, checksum)`` of every file as the server was last told."""
        return ((k, f.target, f.sent) for k, f in self._files.items() if f.sent is not None)

    def sent_checksum(self, key: Key) -> str | None:
        f = self._files.get(key)
        return f.sent if f is not None else None

    def below(self, folder: str) -> list[Key]:
        """Every file this machine knows under ``folder`` (a key prefix), however deep."""
        found: list[Key] = []
        todo = [folder]
        while todo:
            d = todo.pop()
            found.extend(self._dir_files.get(d, ()))
            todo.extend(self._dir_dirs.get(d, ()))
        return found

    def tracked(self) -> list[Key]:
        return list(self._files)

    # -- what the watcher saw -----------------------------------------------------------------

    def touched(self, key: Key, target: Target, now: float, *, at_once: bool = False) -> None:
        """``key`` may have changed: read it once the debounce passes (``at_once``: now, its
        writer being done; but not twice within a debounce: a writer that saves again and
        again is coalesced like any other)."""
        f = self._file(key, target)
        if at_once and now - f.read_at < self.debounce:
            at_once = False
        if f.reading:
            f.again = True
            return
        if f.ready:  # read already, not taken: its content is stale now
            f.ready = False
            del self._ready[key]
            self._leave_gone(key, f)
            f.current = None
        if f.deadline is None:
            f.first = now
            if f.sent is not None:
                self._count_unread(f, +1)
        first = f.first if f.first is not None else now
        deadline = now if at_once else min(now + self.debounce, first + self.max_delay)
        if f.deadline is None or deadline != f.deadline:
            f.deadline = deadline
            heapq.heappush(self._timers, (deadline, next(self._n), key))

    def announced(self, key: Key) -> bool:
        """Whether the server was told of ``key`` (and not of its deletion since)."""
        f = self._files.get(key)
        return f is not None and f.sent is not None

    def renamed(
        self, src: Key, src_target: Target, dest: Key, dest_target: Target, now: float, *, at_once: bool = False
    ) -> None:
        """``src`` was renamed to ``dest``; one ``moved`` event when it is a rename inside a
        tenant of a file the server knows, else whatever each end turns out to be."""
        f = self._files.get(src)
        origin = None
        if f is not None and src_target[0] == dest_target[0]:
            if f.sent is not None:
                origin = src
            elif f.moved_from is not None:  # a -> b -> c before b was reported: a -> c
                origin, f.moved_from = f.moved_from, None
        if origin is not None:
            self._file(dest, dest_target).moved_from = origin
            self._files[origin].moved_to = dest
        self.touched(dest, dest_target, now, at_once=at_once)
        self.touched(src, src_target, now)

    # -- reading --------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadline = self._next_timer()
        if self._retry_at is not None and (deadline is None or self._retry_at < deadline):
            return self._retry_at
        return deadline

    def _next_timer(self) -> float | None:
        timers = self._timers
        while timers:
            deadline, _, key = timers[0]
            f = self._files.get(key)
            if f is not None and f.deadline == deadline:
                return deadline
            heapq.heappop(timers)  # stale
        return None

    def due(self, now: float) -> list[tuple[Key, Any, Any]]:
        """Files to read now, as ``(key, copy to diff against, cached read)``; each is
        then being read until ``read_done``."""
        out = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, key = heapq.heappop(timers)
            f = self._files.get(key)
            if f is None or f.deadline != deadline:
                continue
            f.deadline = None
            f.reading = True
            f.read_at = now
            out.append((key, f.sent_copy if f.sent is not None else None, f.cached))
        return out

    def read_done(self, key: Key, read: Read, now: float) -> None:
        f = self._files[key]
        f.reading = False
        if read.extra is not None:
            f.cached = read.extra
        if f.sent is not None:
            self._count_unread(f, -1)
        f.first = None
        if f.again:  # touched while it was read: what was read may be stale already
            f.again = False
            self.touched(key, f.target, now)
            return
        f.ready_at = now
        f.current = read
        f.ready = True
        self._ready[key] = None
        if read.checksum is None and f.sent is not None:
            self._gone.setdefault((f.target[0], f.sent), {})[key] = None

    def read_refused(self, key: Key, now: float) -> None:
        """What was read of ``key`` may not be announced (the validation gate refused it): as if
        nothing changed, the server keeps the last version it was told."""
        f = self._files[key]
        f.reading = False
        if f.sent is not None:
            self._count_unread(f, -1)
        f.first = None
        if f.again:
            f.again = False
            self.touched(key, f.target, now)
            return
        if f.moved_from is not None:
            f.moved_from = None
        if f.sent is None and f.deadline is None:
            self._forget(key, f)

    # -- events ---------------------------------------------------------------------------------

    def pending(self) -> int:
        """Files read and waiting to be taken."""
        return len(self._ready)

    def busy(self) -> bool:
        """Whether any file is waiting for its debounce, being read, or waiting to be taken."""
        return bool(self._ready) or self._next_timer() is not None or any(f.reading for f in self._files.values())

    def take(self, limit: int, now: float = float("inf")) -> list[Taken]:
        """Up to ``limit`` events, in the order their files were read. A file that may be the
        destination of a rename whose source is still to be read, or not reported yet (see
        ``TWIN_GRACE``; ``now`` is the time), waits for it."""
        self._now = now
        self._retry_at = None
        out: list[Taken] = []
        progress = True
        while progress and len(out) < limit:
            progress = False  # a pass that took something may have freed a waiting file
            for key in list(self._ready):
                if len(out) >= limit:
                    break
                if key not in self._ready:  # taken with its rename's other end
                    continue
                found = self._event(key)
                if found is _WAIT:
                    continue
                progress = True
                if found is not None:
                    payload, old, version = found
                    out.append(Taken(key, payload, old, version))
        return out

    def _event(self, key: Key) -> tuple[Payload, Key | None, int | None] | _Wait | None:
        f = self._files[key]
        read = f.current
        assert read is not None
        tenant_id, rel = f.target
        if f.moved_to is not None:
            dest = self._files.get(f.moved_to)
            if dest is not None and dest.moved_from == key and read.checksum is None:
                return _WAIT  # gone: the rename's destination reports both ends, once read
            f.moved_to = None
        if f.moved_from is not None:
            src = self._files.get(f.moved_from)
            if src is not None and (src.reading or src.deadline is not None):
                return _WAIT  # the other end is still to be read
            src_key, f.moved_from = f.moved_from, None
            if src is not None and src.moved_to == key:
                src.moved_to = None
            if (
                src is not None
                and src.ready
                and src.current is not None
                and src.current.checksum is None
                and src.sent is not None
                and read.checksum is not None
            ):
                return self._moved(key, f, src_key, src)
        if read.checksum is None:
            if f.sent is None:
                self._taken(key, f)
                return None
            payload = _payload(tenant_id, "deleted", rel, None)
        elif f.sent is None:
            twin = self._twin(tenant_id, read.checksum)
            if (
                twin is None
                and self._sent_count.get((tenant_id, read.checksum))
                and self._now < f.ready_at + TWIN_GRACE
            ):
                twin = _WAIT  # a file of that content may be gone, its report still on the way
                retry = f.ready_at + TWIN_GRACE
                self._retry_at = retry if self._retry_at is None else min(self._retry_at, retry)
            if twin is _WAIT:
                return _WAIT
            if twin is not None:
                return self._moved(key, f, twin, self._files[twin])
            payload = _payload(tenant_id, "created", rel, read.checksum)
        elif f.sent == read.checksum:
            self._taken(key, f)  # the same bytes again: a touch, or a save of what was there
            return None
        else:
            payload = _payload(tenant_id, "modified", rel, read.checksum)
            if read.diff is not None:
                payload["diff"] = read.diff
            elif read.skip is not None:
                payload["meta"] = {"diff_skipped": read.skip}
            if read.patch is not None:
                # The copy the patch was made from is the version the server was last told.
                payload["patch"] = read.patch
                payload["base_checksum"] = f.sent
                payload["document_checksum"] = read.document_checksum
            elif read.patch_skip is not None:
                payload.setdefault("meta", {})["patch_skipped"] = read.patch_skip
        version = read.version
        self._taken(key, f)
        return payload, None, version

    def _moved(self, key: Key, f: _File, src_key: Key, src: _File) -> tuple[Payload, Key, int | None]:
        read = f.current
        assert read is not None
        payload = _payload(f.target[0], "moved", f.target[1], read.checksum, meta={"old_path": src.target[1]})
        versions = [v for v in (read.version, src.current.version if src.current else None) if v is not None]
        self._taken(src_key, src)
        self._taken(key, f)
        return payload, src_key, max(versions) if versions else None

    def _twin(self, tenant_id: str, checksum: str) -> Key | _Wait | None:
        gone = self._gone.get((tenant_id, checksum))
        if gone:
            return next(iter(gone))
        if self._unread.get((tenant_id, checksum)):
            return _WAIT  # a file of that content is about to be read: maybe the rename's source
        return None

    def _taken(self, key: Key, f: _File) -> None:
        """``f``'s current read becomes what the server knows."""
        read = f.current
        self._leave_gone(key, f)
        if f.ready:
            f.ready = False
            del self._ready[key]
        f.current = None
        if read is not None:
            self._set_sent(f, read.checksum)
            self._keep_copy(f, read.copy if read.checksum is not None else None, read.size)
        if f.sent is None and f.deadline is None and not f.reading:
            self._forget(key, f)

    # -- bookkeeping --------------------------------------------------------------------------------

    def _set_sent(self, f: _File, checksum: str | None) -> None:
        counts = self._sent_count
        if f.sent is not None:
            index = (f.target[0], f.sent)
            left = counts.get(index, 0) - 1
            if left > 0:
                counts[index] = left
            else:
                counts.pop(index, None)
        f.sent = checksum
        if checksum is not None:
            index = (f.target[0], checksum)
            counts[index] = counts.get(index, 0) + 1

    def _file(self, key: Key, target: Target) -> _File:
        f = self._files.get(key)
        if f is None:
            f = self._files[key] = _File(target)
            folder = key.rpartition("/")[0]
            self._dir_files.setdefault(folder, set()).add(key)
            child = folder
            while child:
                parent = child.rpartition("/")[0]
                subdirs = self._dir_dirs.setdefault(parent, set())
                if child in subdirs:
                    break
                subdirs.add(child)
                child = parent
        return f

    def _forget(self, key: Key, f: _File) -> None:
        self._keep_copy(f, None, 0)
        del self._files[key]
        folder = key.rpartition("/")[0]
        files = self._dir_files.get(folder)
        if files is not None:
            files.discard(key)
        while folder and not self._dir_files.get(folder) and not self._dir_dirs.get(folder):
            self._dir_files.pop(folder, None)
            self._dir_dirs.pop(folder, None)
            parent = folder.rpartition("/")[0]
            siblings = self._dir_dirs.get(parent)
            if siblings is not None:
                siblings.discard(folder)
            folder = parent

    def _keep_copy(self, f: _File, copy: Any, size: int) -> None:
        self.copy_bytes -= f.sent_size
        f.sent_copy, f.sent_size = None, 0
        if copy is None or isinstance(copy, Unparsed):
            f.sent_copy = copy
            return
        if self.copy_bytes + size > self.max_copy_bytes:
            f.sent_copy = Unparsed(MEMORY_CAP)
            return
        f.sent_copy, f.sent_size = copy, size
        self.copy_bytes += size

    def _count_unread(self, f: _File, delta: int) -> None:
        index = (f.target[0], f.sent)
        left = self._unread.get(index, 0) + delta
        if left > 0:
            self._unread[index] = left
        else:
            self._unread.pop(index, None)

    def _leave_gone(self, key: Key, f: _File) -> None:
        if f.sent is None:
            return
        gone = self._gone.get((f.target[0], f.sent))
        if gone is not None and key in gone:
            del gone[key]
            if not gone:
                del self._gone[(f.target[0], f.sent)]


class _Wait(enum.Enum):
    """Not yet: the other end of a rename is still to be read (or reported)."""

    WAIT = "wait"


_WAIT: Final = _Wait.WAIT


def _payload(
    tenant_id: str, change_type: str, rel: str, checksum: str | None, *, meta: dict[str, Any] | None = None
) -> Payload:
    payload: Payload = {"tenant_id": tenant_id, "change_type": change_type, "path": rel, "checksum": checksum}
    if meta:
        payload["meta"] = meta
    return payload
