"""The filesystem source's worker process: watch, read, hash, parse, diff and settle.

``python -m tornado_cfgpush.sources.filesystem.worker``, started by ``FilesystemSource.run``.
Why a process and not a thread of the server: every part of this is CPU or disk (watchdog's
own event processing, hashing, parsing YAML, diffing), and in a thread it would share the
server's GIL. A busy thread makes each socket write of the event loop wait up to the switch
interval for the GIL to come back (the convoy effect): a burst of ten thousand files would
stall every tenant's deliveries and heartbeats. In its own process it costs the server only
the lines it reads, and a file that crashes or bloats a parser takes down this process, not
the server (it is restarted, and its tenants get ``Resync``).

Protocol, one JSON object per line:

* in, on stdin, once: the settings (``root``, ``debounce``, ``max_delay``, ``polling``,
  ``watch_limit``, ``known``: the server's record of every file when it restarts us, else
  null). End of stdin (the server stopped or died) ends this process.
* out, on stdout: ``known`` (the start-up scan, in chunks, when ``known`` was null), ``ready``
  (watching; ``observer``), ``events`` (``items``: ``[key, payload, old key of a move]``),
  ``refused`` (a change of a file whose name cannot be announced), ``gap`` (after a rescan:
  changes may have been missed), ``log`` (a log record), ``alive`` (every few seconds when
  idle), ``fatal`` (this process fails; the server restarts it).

Threads here: watchdog's (events into the bounded ``Inbox``), the settle loop (this module's
``Worker.run``, on the main thread), the slow lane (files over ``tree.SMALL_FILE`` are read
there, so a large file never holds the others), stdin's reader (end of input) and stdout's
writer (the server reads when it is ready: while it is behind, changes coalesce in the settle
machine instead of queueing).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from ... import structured
from ...content import served
from ...gate import Failure, Gate
from ...patching import patch_between
from ...rules import wire_string_error
from .names import Unpublishable, classify, shown, split
from .settle import MEMORY_CAP, NO_PREVIOUS, NOT_REPRESENTABLE, Read, Settler
from .tree import Content, Opened, Packed, Packer, Refused, Tree, is_copy, signature
from .watch import POLL_INTERVAL, Inbox, OverflowWatch, ToInbox, adjust_watchdog, observer_alive, start_observer

log = logging.getLogger("cfgpush.sources.filesystem")

BATCH = 500  # events taken from the settle machine at a time
LINE_BYTES = 256 * 1024  # a line the server parses in a few milliseconds (one event may be more)
IN_FLIGHT = 2_000  # events written and not yet read by the server, at most
ALIVE_EVERY = 2.0  # seconds
SCAN_CHUNK = 2_000  # files per ``known`` line
# Files read at start and waiting for their folder's compression (``tree.Packer``), at most: a
# folder of many files that are not structured (nothing to compress) still goes out in lines
# of about ``SCAN_CHUNK``.
SCAN_PACKED = 256
REFUSED_AGAIN_AFTER = 1.0  # seconds: the events of one save of an unpublishable file are one refusal
# Overflows come in floods (a tenant renaming in a loop): one rescan per this many seconds at
# most; the events that still arrive meanwhile are handled as usual.
RESCAN_EVERY = 0.5
# A file whose writer says it is done (closed after writing, or renamed into place) is read at
# once instead of after the debounce: milliseconds from a save to the browsers. Not when more
# than this many events arrive together (a burst: the debounce coalesces it).
FAST_BATCH = 32
# The watcher's canary (``--watch-canary``): a dotfile of this worker's own in the config
# folder's top, made after a quiet spell and expected back from the watcher within this long
# (or two poll intervals); removed once seen. Other nodes sharing the folder ignore it, as
# every dotfile. A watcher that does not report it is restarted (the source fails, and the
# server restarts it with a rescan; its tenants get Resync).
CANARY_PREFIX = ".cfgpush-canary-"
CANARY_TIMEOUT = 10.0


class Output:
    """stdout, written by its own thread: the settle loop never blocks on the server."""

    def __init__(self, stream, wake: Callable[[], None]):
        self._stream = stream
        self._wake = wake
        self._queue: queue.SimpleQueue[tuple[bytes, int] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.in_flight = 0  # events queued or written, not yet taken by the server's read
        self.last_write = time.monotonic()
        self._thread = threading.Thread(target=self._write, name="cfgpush-fs-output", daemon=True)
        self._thread.start()

    def send(self, message: dict[str, Any], events: int = 0) -> None:
        line = json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"
        with self._lock:
            self.in_flight += events
        self._queue.put((line, events))

    def send_events(self, items: list[list[Any]]) -> None:
        """Events in lines of at most ``LINE_BYTES``, so that the server never parses a long
        line on its event loop."""
        encoded = [json.dumps(item, separators=(",", ":")) for item in items]
        start, size = 0, 0
        for i, text in enumerate(encoded):
            if i > start and size + len(text) > LINE_BYTES:
                self._send_raw(encoded[start:i])
                start, size = i, 0
            size += len(text) + 1
        if start < len(encoded):
            self._send_raw(encoded[start:])

    def _send_raw(self, items: list[str]) -> None:
        line = ('{"t":"events","items":[' + ",".join(items) + "]}\n").encode("utf-8")
        with self._lock:
            self.in_flight += len(items)
        self._queue.put((line, len(items)))

    def room(self) -> int:
        with self._lock:
            return IN_FLIGHT - self.in_flight

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

    def _write(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            line, events = item
            try:
                self._stream.write(line)
                self._stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                os._exit(0)  # the server is gone: nothing to report to
            self.last_write = time.monotonic()
            if events:
                with self._lock:
                    self.in_flight -= events
                self._wake()  # room for more: the settle loop may take events again


class ForwardLogs(logging.Handler):
    """Log records go to the server, which logs them in its own format."""

    def __init__(self, output: Output):
        super().__init__(logging.DEBUG)
        self._output = output

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("watchdog") and record.levelno < logging.ERROR:
            return  # its overflow warnings are ours to report (Worker._rescan), once
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
            self._output.send({"t": "log", "level": record.levelno, "name": record.name, "msg": message})
        except Exception:  # pragma: no cover - a log record must never fail the worker
            pass


class Lane:
    """One thread reading the large files, one at a time; results go to the inbox."""

    def __init__(self, inbox: Inbox, finish: Callable[[str, Content, Any], Read]):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._inbox = inbox
        self._finish = finish
        self._thread = threading.Thread(target=self._run, name="cfgpush-fs-lane", daemon=True)
        self._thread.start()

    def submit(self, key: str, opened, old_copy: Any) -> None:
        self._jobs.put((key, opened, old_copy))

    def _run(self) -> None:
        while True:
            key, opened, old_copy = self._jobs.get()
            try:
                read = self._finish(key, Tree.read(key, opened), old_copy)
            except OSError as exc:
                log.warning("cannot read %s: %s", shown(key), exc)
                read = _gone(_now_us())
            self._inbox.put(("read", key, read))

    def alive(self) -> bool:
        return self._thread.is_alive()


class Worker:
    def __init__(self, config: dict[str, Any], output: Output, inbox: Inbox):
        self.root = config["root"]
        self.config = config
        self.output = output
        self.inbox = inbox
        self.tree = Tree(self.root)
        self.settler = Settler(config["debounce"], config["max_delay"])
        self.gate = Gate(config.get("validate") or (), [tuple(rule) for rule in config.get("schemas") or ()])
        self.serve_content = tuple(config.get("serve_content") or ())
        self.max_patch_bytes = int(config.get("max_patch_bytes") or 0)
        self._invalid: dict[str, tuple[Failure, float]] = {}  # key -> (why refused, since: Unix time)
        self.lane = Lane(inbox, self._finish)
        self.observer: Any = None
        self.observer_kind = ""
        self._overflow = threading.Event()
        self._bad_tenants: set[str] = set()
        self._refused_at: dict[str, float] = {}
        self._refusals_logged: set[tuple[str, str]] = set()
        self._stopping = False
        self._rescan_at: float | None = None  # an overflow was seen: rescan then
        self._last_rescan = float("-inf")
        self._fast = True  # see FAST_BATCH
        self._canary_every = float(config.get("canary") or 0)
        self._canary_name = f"{CANARY_PREFIX}{socket.gethostname()}-{os.getpid()}"
        self._canary_sent: float | None = None  # when the canary was made, until it is seen
        self._last_event = time.monotonic()

    # -- start ------------------------------------------------------------------------------------

    def start(self) -> None:
        adjust_watchdog()
        OverflowWatch(self._on_kernel_overflow).install()
        handler = ToInbox(self.inbox)
        self.observer, kind = start_observer(
            self.root,
            handler,
            polling=self.config["polling"],
            watch_limit=self.config.get("watch_limit"),
            log=log,
            fallback=self.config.get("fallback", "poll"),
        )
        self.observer_kind = kind
        known = self.config.get("known")
        now = time.monotonic()
        if known is None:
            self._scan_baseline()
        else:
            # A restart: the server's record is the baseline; what differs on disk is reported.
            for key, tenant_id, rel, checksum in known:
                self.settler.baseline(key, (tenant_id, rel), checksum)
            self._touch_all(now)
        self.output.send({"t": "ready", "observer": kind, "forced": self.config["polling"]})

    def _on_kernel_overflow(self) -> None:  # on watchdog's thread
        self._overflow.set()
        self.inbox.put(("overflow",))  # wakes the settle loop

    def _scan_baseline(self) -> None:
        """Every file read, hashed and (a structured one) copied, compressed. One thread: the
        work is short steps that hold the GIL between system calls, and more threads here
        were slower (measured: 6.3 s for 100 000 files of 5 KB alone, 8.9 s with two readers,
        11.6 s with compression on a thread of its own). A folder's files are compressed
        together (``tree.Packer``): what the server is told of them waits for that.

        The cyclic garbage collector is off meanwhile: the scan makes no cycles, and the
        collector's passes over a few objects per file read cost a sixth of it (100 000 files:
        1 s of 6)."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._scan_all()
        finally:
            if collecting:
                gc.enable()

    def _scan_all(self) -> None:
        chunk: list[list[Any]] = []
        packer = Packer()
        packed: list[tuple[str, tuple[str, str], Content]] = []  # read, waiting for the packer
        folder = ""
        for key, folder_fd, name in self.tree.found():
            here = key.rpartition("/")[0]
            if packed and (here != folder or packer.full() or len(packed) >= SCAN_PACKED):
                self._scan_packed(packer, packed, chunk)
            folder = here
            target = self._target(key)
            if target is None:
                continue
            opened = self._open(key, (folder_fd, name))
            content = self._read_opened(key, opened, packer) if opened is not None else None
            if content is None:  # gone, refused by the link rules, or unreadable: said so
                continue
            if self.gate:  # what the gate refuses is not announced, at start either
                refused = self._finish(key, content, None).refused
                if refused is not None:
                    self._note_refused(key, refused)
                    continue
            packed.append((key, target, content))
        self._scan_packed(packer, packed, chunk)
        self.output.send({"t": "known", "files": chunk})

    def _scan_packed(
        self, packer: Packer, packed: list[tuple[str, tuple[str, str], Content]], chunk: list[list[Any]]
    ) -> None:
        """The files read since the packer last closed: compressed, and known (as a read of
        ``_finish`` would have them, without making one: at start, once per file)."""
        packer.close()
        baseline = self.settler.baseline
        for key, target, content in packed:
            copy = content.copy
            baseline(key, target, content.checksum, copy, _copy_size(content), content)
            chunk.append([key, target[0], target[1], content.checksum, content.sig.ctime_ns // 1000])
        packed.clear()
        if len(chunk) >= SCAN_CHUNK:
            self.output.send({"t": "known", "files": chunk[:]})
            chunk.clear()

    def _touch_all(self, now: float) -> None:
        """Every file on disk and every file the settle machine knows: read again at once
        (reusing reads whose file's metadata say nothing changed)."""
        keys = dict.fromkeys(self.tree.walk())
        keys.update(dict.fromkeys(self.settler.tracked()))
        for key in keys:
            target = self._target(key)
            if target is not None:
                self.settler.touched(key, target, now, at_once=True)
        self._read_due(now, rescan=True, inline=True)

    # -- the settle loop ----------------------------------------------------------------------------

    def run(self) -> None:
        last_health = time.monotonic()
        while not self._stopping:
            deadline = self.settler.next_deadline()
            if self._rescan_at is not None:
                deadline = self._rescan_at if deadline is None else min(deadline, self._rescan_at)
            now = time.monotonic()
            wait = ALIVE_EVERY if deadline is None else min(max(0.0, deadline - now), ALIVE_EVERY)
            items = self.inbox.take(wait)
            now = time.monotonic()
            if (self.inbox.take_overflow() or self._overflow.is_set()) and self._rescan_at is None:
                self._overflow.clear()
                self._rescan_at = max(now, self._last_rescan + RESCAN_EVERY)
            if self._rescan_at is not None and now >= self._rescan_at:
                self._rescan(now)
                continue
            # Many events at once is a burst still arriving: the debounce gathers it, and no
            # file is read the moment its writer is done (it may be written again at once).
            self._fast = sum(not isinstance(item, tuple) for item in items) <= FAST_BATCH
            for item in items:
                if isinstance(item, tuple):
                    if item[0] == "read":
                        self._read_done(item[1], item[2], now)
                    elif item[0] == "stop":
                        self._stopping = True
                else:
                    self._on_event(item, now)
            self._read_due(time.monotonic())
            self._send_events()
            if now - last_health >= ALIVE_EVERY:
                last_health = now
                self._check_health(now)

    def _rescan(self, now: float) -> None:
        """Events were lost: compare every file with what the server was told. What differs
        goes out as events, and only the tenants with a difference are told they may have
        missed something (``gap``): a flood of one tenant's changes never makes the others
        reload."""
        self._rescan_at = None
        self._last_rescan = now
        log.warning(
            "events were lost (the kernel's inotify queue or the watcher's own overflowed): "
            "rescanning %s (raise fs.inotify.max_queued_events if this recurs)",
            self.root,
        )
        self._touch_all(now)
        tenants = self._send_events(everything=True)
        if tenants:
            self.output.send({"t": "gap", "tenants": sorted(tenants)})

    def _check_health(self, now: float) -> None:
        if not observer_alive(self.observer) or not self.lane.alive():
            raise RuntimeError("a watcher thread died")
        for problem in self.gate.reload():  # a JSON Schema file that changed
            log.error("%s", problem)
        if self._canary_sent is not None:
            if now - self._canary_sent > self._canary_timeout():
                raise RuntimeError(
                    f"the watcher stopped delivering events: the canary {self._canary_name} "
                    f"was not reported within {self._canary_timeout():g} s"
                )
        elif self._canary_every and now - self._last_event >= self._canary_every:
            self._make_canary(now)
        if now - self.output.last_write >= ALIVE_EVERY:
            self.output.send({"t": "alive"})

    def _canary_timeout(self) -> float:
        return max(CANARY_TIMEOUT, 2 * POLL_INTERVAL + 1) if self.observer_kind == "polling" else CANARY_TIMEOUT

    def _make_canary(self, now: float) -> None:
        try:
            fd = os.open(
                self._canary_name,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                0o600,
                dir_fd=self.tree.root_fd,
            )
            os.close(fd)
        except OSError as exc:  # read-only, or not ours to write: no canary, say so once
            log.info(
                "cannot make the watcher's canary in %s (%s): a watcher that stops delivering is "
                "noticed only when its threads die",
                self.root,
                exc.strerror or exc,
            )
            self._canary_every = 0.0
            return
        self._canary_sent = now

    def _canary_seen(self) -> None:
        self._canary_sent = None
        try:
            os.unlink(self._canary_name, dir_fd=self.tree.root_fd)
        except OSError:
            pass

    def _send_events(self, everything: bool = False) -> set[str]:
        """Events the settle machine has, as far as the server has room (``everything``: all
        of them); returns their tenants."""
        tenants: set[str] = set()
        while self.settler.pending():
            room = self.output.room()
            if room <= 0 and not everything:
                break
            taken = self.settler.take(BATCH if everything else min(BATCH, room), time.monotonic())
            if not taken:
                break
            tenants.update(t.payload["tenant_id"] for t in taken)
            taken_at = time.monotonic()  # CLOCK_MONOTONIC: the server compares it with its own
            self.output.send_events([[t.key, t.payload, t.old_key, t.version, taken_at] for t in taken])
        return tenants

    # -- what the watcher saw ------------------------------------------------------------------------

    def _on_event(self, event: Any, now: float) -> None:
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return
        self._last_event = now
        src = os.fsdecode(event.src_path)
        if self._canary_sent is not None and kind == "created" and os.path.basename(src) == self._canary_name:
            self._canary_seen()
            return
        dest = os.fsdecode(event.dest_path) if kind == "moved" else ""
        if event.is_directory:
            # A folder gone (or moved away) takes its files with it, and the watcher reports
            # nothing for them: touch what is known below it. A folder that appears needs
            # nothing here: watchdog reports the files it finds in it (created, or moved with
            # a folder moved inside the tree), and polling finds them by itself.
            if kind in ("deleted", "moved"):
                parts = split(self.root, src)
                if parts is not None:
                    for key in self.settler.below("/".join(parts)):
                        self._touch(key, now)
            return
        src_parts = split(self.root, src)
        if kind != "moved":
            if src_parts is not None:
                # A close after writing says the writer is done: read now, not after the
                # debounce (unless a burst is arriving, see run). Only a file the server knows:
                # a new one may be an atomic save's temporary file ("sedX1b2c3"), renamed
                # away a moment after its close, and never to be announced.
                key = "/".join(src_parts)
                self._touch(key, now, at_once=kind == "closed" and self._fast and self.settler.announced(key))
            return
        dest_parts = split(self.root, dest)
        src_key = "/".join(src_parts) if src_parts is not None else None
        dest_key = "/".join(dest_parts) if dest_parts is not None else None
        src_target = self._target(src_key) if src_key is not None else None
        dest_target = self._target(dest_key) if dest_key is not None else None
        # A rename's destination is complete when reported (an atomic save's last step): read it
        # now. Its source waits the debounce: an editor renaming a file away (to a backup name)
        # is writing it again a moment later.
        if src_key is not None and dest_key is not None and src_target is not None and dest_target is not None:
            self.settler.renamed(src_key, src_target, dest_key, dest_target, now, at_once=self._fast)
            return
        if src_key is not None:
            self._touch(src_key, now)
        if dest_key is not None:
            self._touch(dest_key, now, at_once=self._fast)

    def _touch(self, key: str, now: float, at_once: bool = False) -> None:
        target = self._target(key)
        if target is not None:
            self.settler.touched(key, target, now, at_once=at_once)

    def _target(self, key: str) -> tuple[str, str] | None:
        found = classify(key)
        if isinstance(found, Unpublishable):
            self._refuse(key, found)
            return None
        if found is None or isinstance(found, tuple):
            return found
        if found not in self._bad_tenants and len(self._bad_tenants) < 1000:
            self._bad_tenants.add(found)
            log.warning(
                "ignoring %s: %s is not a valid tenant id (1 to 64 of A-Z a-z 0-9 . _ -, "
                "starting with a letter or digit)",
                shown(key),
                shown(found),
            )
        return None

    def _refuse(self, key: str, found: Unpublishable) -> None:
        """A change of a file whose name cannot be announced: the server logs it once, counts
        it and sends its tenant's clients ``Resync``."""
        now = time.monotonic()
        last = self._refused_at.get(key)
        if last is not None and now - last < REFUSED_AGAIN_AFTER:
            return
        if len(self._refused_at) > 10_000:
            self._refused_at.clear()
        self._refused_at[key] = now
        self.output.send({"t": "refused", "tenant": found.tenant_id, "path": found.shown, "reason": found.reason})

    # -- reading -----------------------------------------------------------------------------------

    def _read_due(self, now: float, *, rescan: bool = False, inline: bool = False) -> None:
        for key, old_copy, cached in self.settler.due(now):
            read = self._read_now(key, old_copy, cached if rescan else None, inline=inline)
            if read is not None:
                self._read_done(key, read, now)

    def _read_now(self, key: str, old_copy: Any, cached: Content | None, *, inline: bool = True) -> Read | None:
        """Read ``key`` here, or hand it to the slow lane (None then: its result comes later)."""
        looked = _now_us()  # a file found gone was gone at this time at the latest
        opened = self._open(key)
        if opened is None:
            return _gone(looked)
        if cached is not None and cached.still_valid(signature(opened.info)):
            os.close(opened.fd)
            return self._finish(key, cached, old_copy)
        if not inline and not Tree.is_small(opened):
            self.lane.submit(key, opened, old_copy)
            return None
        content = self._read_opened(key, opened)
        return _gone(looked) if content is None else self._finish(key, content, old_copy)

    def _open(self, key: str, found: tuple[int, str] | None = None) -> Opened | None:
        """``key`` opened (``found``: by the folder descriptor and name the walk found it by,
        ``Tree.open_found``), or None: no such file, or not read (said why)."""
        try:
            return self.tree.open(key) if found is None else self.tree.open_found(key, *found)
        except Refused as why:
            self._log_refusal(key, str(why))
        except OSError as exc:
            log.warning("cannot read %s: %s", shown(key), exc)
        return None

    @staticmethod
    def _read_opened(key: str, opened: Opened, packer: Packer | None = None) -> Content | None:
        """``Tree.read`` (with its ``packer``), or None when the read failed (said why)."""
        try:
            return Tree.read(key, opened, packer)
        except OSError as exc:
            log.warning("cannot read %s: %s", shown(key), exc)
            return None

    def _finish(self, key: str, content: Content, old_copy: Any) -> Read:
        """A read's ``Read``: refused by the gate, or with its diff against ``old_copy`` (both
        parsed here, only now that a change asks for it), or why there is none. Runs on the
        settle loop or the slow lane: reads shared state only (the gate's validators)."""
        copy = content.copy
        read = Read(content.checksum, copy, _copy_size(content), extra=content, version=content.sig.ctime_ns // 1000)
        gated = bool(self.gate) and self.gate.applies(_rel(key))
        if copy is None or (old_copy is None and is_copy(copy) and not gated):
            return read  # not structured, or new: no diff to make
        doc = Tree.parse(key, copy)
        if gated:
            read.refused = self.gate.judge(_rel(key), doc)
            if read.refused is not None or old_copy is None:
                return read
        if isinstance(doc, structured.Unparsed):
            read.skip = doc.reason
            return read
        old_doc = Tree.parse(key, old_copy) if old_copy is not None else None
        if old_doc is None or isinstance(old_doc, structured.Unparsed):
            read.skip = MEMORY_CAP if getattr(old_doc, "reason", None) == MEMORY_CAP else NO_PREVIOUS
            return read
        diff = structured.diff(old_doc, doc)
        if _representable(diff.values()):
            read.diff = diff
            if self.serve_content and self.max_patch_bytes and served(_rel(key), self.serve_content):
                self._patch(read, old_doc, doc)
        else:
            read.skip = NOT_REPRESENTABLE
        return read

    def _patch(self, read: Read, old_doc: Any, doc: Any) -> None:
        """A served file's patch from the previous document, made once here, for every client."""
        made = patch_between(old_doc, doc, self.max_patch_bytes)
        if isinstance(made, str):
            read.patch_skip = made
        else:
            read.patch, read.document_checksum = made

    def _read_done(self, key: str, read: Read, now: float) -> None:
        """A read's result to the settle machine, through the gate: a refused version is not a
        change (the last good one stays what the server knows), and says so once."""
        refused = read.refused
        if refused is None:
            if key in self._invalid:
                del self._invalid[key]
                target = self._target(key)
                if target is not None:
                    self.output.send({"t": "valid", "key": key, "tenant": target[0], "path": target[1]})
            self.settler.read_done(key, read, now)
            return
        self.settler.read_refused(key, now)
        self._note_refused(key, refused)

    def _note_refused(self, key: str, refused: Failure) -> None:
        if self._invalid.get(key, (None,))[0] == refused:
            return  # the same failure again (saved twice): said already
        target = self._target(key)
        if target is None:
            return
        since = self._invalid[key][1] if key in self._invalid else time.time()
        self._invalid[key] = (refused, since)
        self.output.send(
            {
                "t": "invalid",
                "key": key,
                "tenant": target[0],
                "path": target[1],
                "pointer": refused.pointer,
                "reason": refused.reason,
                "since": since,
            }
        )

    def _log_refusal(self, key: str, why: str) -> None:
        marker = (key, why)
        if marker in self._refusals_logged or len(self._refusals_logged) > 10_000:
            return
        self._refusals_logged.add(marker)
        log.info("not reading %s: %s", shown(key), why)

    def remove_canary(self) -> None:
        """The canary out, seen or not, is removed: never left behind in the folder."""
        if self._canary_sent is not None:
            self._canary_seen()

    def stop(self) -> None:
        self.remove_canary()
        if self.observer is not None:
            self.observer.stop()


def _rel(key: str) -> str:
    """The tenant-relative path of a key ("acme/ui/a.json" -> "ui/a.json"; "globex.json" stays)."""
    tenant, sep, rel = key.partition("/")
    return rel if sep else tenant


def _copy_size(content: Content) -> int:
    """What a read's copy counts for against the copies' bound (a ``Packed`` one knows its
    share only once its packer closed)."""
    copy = content.copy
    return copy.size if isinstance(copy, Packed) else content.size


def _now_us() -> int:
    return time.time_ns() // 1000


def _gone(looked: int) -> Read:
    return Read(None, version=looked)


def _representable(pointer_lists: Iterable[list[str]]) -> bool:
    """Whether every pointer can go on the wire (the wire rule: a key holding a lone surrogate,
    from a JSON ``\\ud800`` escape, cannot)."""
    return not any(wire_string_error(p) for pointers in pointer_lists for p in pointers)


def _stdin_watch(inbox: Inbox) -> None:
    """End of stdin: the server stopped (or died); stop too."""
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except (OSError, ValueError):
        pass
    inbox.put(("stop",))
    time.sleep(5)  # the settle loop stops at once; if it is stuck in a read, do not wait for it
    os._exit(0)


# The server's event loop first: when both want the CPU (a burst, on a small machine), the
# worker yields, and clients are served meanwhile; the worker's work waits a little instead.
NICENESS = 10


def main() -> int:
    warnings.filterwarnings("ignore", "Callback with id .* already exists for watch", RuntimeWarning)
    try:
        os.nice(NICENESS)
    except OSError:  # pragma: no cover - not permitted here: run at the server's priority
        pass
    config = json.loads(sys.stdin.buffer.readline())
    inbox = Inbox()
    output = Output(sys.stdout.buffer, lambda: inbox.put(("room",)))
    root_logger = logging.getLogger()
    root_logger.handlers[:] = [ForwardLogs(output)]
    root_logger.setLevel(config.get("log_level", logging.INFO))
    logging.getLogger("watchdog").setLevel(logging.INFO)
    threading.Thread(target=_stdin_watch, args=(inbox,), name="cfgpush-fs-stdin", daemon=True).start()
    worker = Worker(config, output, inbox)
    try:
        worker.start()
        worker.run()
    except Exception:
        # Before the fatal line: the server kills this process once it reads it, and a canary
        # out (the watcher that failed to report it, say) would stay in the folder.
        worker.remove_canary()
        output.send({"t": "fatal", "error": traceback.format_exc()})
        output.close()
        return 1
    finally:
        worker.stop()
    output.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
