"""Reading a tenant's files so that what was checked is what is read.

Every file is opened relative to a descriptor of its tenant's folder, one path component at a
time with ``O_NOFOLLOW`` (``openat``), so that a folder swapped for a symbolic link between a
check and a read (``renameat2(RENAME_EXCHANGE)`` in a loop, SECURITY.md) can never lead the
reader into another tenant: there is no check-then-open by name. Symbolic links are resolved
here, by the same rule the source always had: a link is followed only while it stays inside its
own tenant's folder (relative links, or absolute ones into that folder); a link out of it, a
tenant folder that is itself a link, a link at the top of the config folder, and a regular file
with several hard links (another name of it may be another tenant's file) read as "no file".
FIFOs are opened non-blocking and, like every non-regular file, not read. The start-up scan
opens each file in the folder the walk found it in (``found``, ``open_found``): that folder was
reached the same way, one ``O_NOFOLLOW`` component at a time, and a name that is a link takes
``open``'s way, so the scan reads what a change would.

Reads are cached by ``(device, inode, size, mtime, ctime)`` for rescans only: a file whose
metadata say nothing changed since a read made well after its last change is not read again.

Nothing is parsed here: a structured file's content is kept as a compressed ``copy`` (zlib,
level 1: a few times smaller than the file, many times smaller than its parsed document), and
parsed only when a change asks for a diff (the worker's ``_finish``). At start the files of a
folder are compressed together (``Packer``, ``Packed``): reading a file of 5 KB is then about
45 µs of CPU in all (open, read, hash, its share of the compression, the bookkeeping).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
import zlib
from collections import deque
from collections.abc import Iterator
from typing import Any, NamedTuple

from ... import structured
from .names import Key, is_ignored_name

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO a tenant made must not hang the reader in open().
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
MAX_LINKS = 40  # as the kernel's own limit on links followed in one lookup
# Files up to this size are read where they are asked for; larger ones go to the slow lane,
# so that one large file never holds the others (bench: a 50 MB file beside a small one).
SMALL_FILE = 256 * 1024
_CHUNK = 1024 * 1024
# At start, the structured files of a folder up to this size are compressed together, in
# streams of this many bytes at most (``Packer``).
PACK_FILE = 64 * 1024
PACK_BYTES = 256 * 1024


class Refused(Exception):
    """The file is not read: the reason says why (a link out of its tenant, ...)."""


class Signature(NamedTuple):
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


def signature(info: os.stat_result) -> Signature:
    return Signature(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class Content(NamedTuple):
    """A regular file as read: its checksum, its ``copy`` (a structured file's bytes,
    compressed; ``Unparsed(TOO_LARGE)`` past the parse limit; None when not structured), the
    copy's size, the file's metadata and when it was read."""

    checksum: str
    copy: Any
    size: int
    sig: Signature
    read_at: float

    def still_valid(self, sig: Signature) -> bool:
        """Whether a rescan may keep this read for a file whose metadata are ``sig``: the
        same file, unchanged, and read more than a second after its last change (timestamps
        are coarser than a second on some file systems)."""
        return sig == self.sig and sig.ctime_ns / 1e9 < self.read_at - 1.0


class Opened(NamedTuple):
    fd: int
    info: os.stat_result


def is_copy(copy: Any) -> bool:
    """Whether ``copy`` (a ``Content``'s) holds a file's bytes (compressed alone, or ``Packed``)."""
    return isinstance(copy, (bytes, Packed))


class Packed:
    """A file's copy compressed in one zlib stream with the files read beside it (the files of
    a folder, at start): similar files compress together about three times smaller, and twice
    as fast, as one by one. ``blob`` (shared) inflates to the files one after the other, this
    one at ``start:end``; ``size`` is its share of the blob, what it counts for against the
    copies' bound. A blob stays while any of its files keeps its copy: what the others' left
    costs is at most the blobs of the start-up scan, never more as files change (a changed
    file's new copy is its own)."""

    __slots__ = ("blob", "start", "end", "size", "_raw")

    def __init__(self, raw: bytes, start: int):
        self.blob = b""
        self.start = start
        self.end = start + len(raw)
        self.size = 0
        self._raw: bytes | None = raw  # until the packer closes

    def data(self) -> bytes:
        if self._raw is not None:
            return self._raw
        return _inflated(self.blob)[self.start : self.end]


class Packer:
    """Files' bytes gathered to be compressed together (``Packed``)."""

    def __init__(self) -> None:
        self._packed: list[Packed] = []
        self._bytes = 0

    def add(self, raw: bytes) -> Packed:
        packed = Packed(raw, self._bytes)
        self._packed.append(packed)
        self._bytes += len(raw)
        return packed

    def full(self) -> bool:
        return self._bytes >= PACK_BYTES

    def close(self) -> None:
        """Compress what was added: the ``Packed`` copies get their blob and size. The packer
        is empty again."""
        if not self._packed:
            return
        raws = [p._raw or b"" for p in self._packed]
        blob = compress(b"".join(raws))
        total = max(1, self._bytes)
        for p in self._packed:
            p.blob = blob
            p.size = max(1, len(blob) * (p.end - p.start) // total)
            p._raw = None
        self._packed = []
        self._bytes = 0


# The blob inflated last: a diff (or the gate, at start) reads the files of one blob together.
_last_inflated: tuple[bytes, bytes] = (b"", b"")


def _inflated(blob: bytes) -> bytes:
    global _last_inflated
    last = _last_inflated  # one read: the slow lane's thread may replace it meanwhile
    if last[0] is blob:
        return last[1]
    data = zlib.decompress(blob)
    _last_inflated = (blob, data)
    return data


class Tree:
    """The config folder, held by a directory descriptor (``root`` is its resolved path)."""

    def __init__(self, root: str):
        self.root = root
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.root_fd)

    # -- opening -----------------------------------------------------------------------------------

    def open(self, key: Key) -> Opened | None:
        """The regular file ``key`` opened for reading, or None when there is no such regular
        file. Raises ``Refused`` for one that is not read by the link rules above."""
        parts = key.split("/")
        if len(parts) == 1:  # a single-file tenant: no folder for a link to stay in
            return self._checked(self._open_at(parts[0], _FILE_FLAGS, self.root_fd))
        try:
            tenant_fd = os.open(parts[0], _DIR_FLAGS, dir_fd=self.root_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Refused("its tenant folder is a symbolic link") from None
            return self._gone(exc)
        try:
            return self._checked(self._open_beneath(tenant_fd, parts[0], parts[1:]))
        finally:
            os.close(tenant_fd)

    def _open_at(self, name: str, flags: int, dir_fd: int) -> int | None:
        try:
            return os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Refused("it is a symbolic link at the top of the config folder") from None
            return self._gone(exc)

    @staticmethod
    def _gone(exc: OSError) -> None:
        # Gone, or not a file (a folder, a socket: ENXIO), or in a folder that became a file.
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENXIO, errno.ENODEV):
            return None
        raise exc

    def _open_beneath(self, tenant_fd: int, tenant: str, parts: list[str]) -> int | None:
        """``openat`` component by component below the tenant's folder, resolving links by hand
        (lexically, against the folders opened so far), never letting the kernel follow one."""
        todo = deque(parts)
        opened: list[int] = []  # folders below the tenant's, innermost last
        links = 0
        try:
            while todo:
                name = todo.popleft()
                if name in ("", "."):
                    continue
                if name == "..":
                    if not opened:
                        raise Refused("a symbolic link leads out of its tenant")
                    os.close(opened.pop())
                    continue
                here = opened[-1] if opened else tenant_fd
                last = not todo
                try:
                    fd = os.open(name, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=here)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        return self._gone(exc)
                    try:
                        target = os.readlink(name, dir_fd=here)
                    except OSError:
                        return self._gone(exc)  # not a link: a file where a folder was expected
                    links += 1
                    if links > MAX_LINKS:
                        raise Refused("too many levels of symbolic links") from None
                    if target.startswith("/"):
                        inside = os.path.join(self.root, tenant)
                        if target != inside and not target.startswith(inside + "/"):
                            raise Refused("a symbolic link leads out of its tenant") from None
                        for fd_ in opened:
                            os.close(fd_)
                        opened.clear()
                        target = target[len(inside) :]
                    todo.extendleft(reversed(target.split("/")))
                    continue
                if last:
                    return fd
                opened.append(fd)
            return None  # the path named a folder
        finally:
            for fd_ in opened:
                os.close(fd_)

    @staticmethod
    def _checked(fd: int | None) -> Opened | None:
        if fd is None:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)
                return None
            if info.st_nlink > 1:
                os.close(fd)
                raise Refused(f"it has {info.st_nlink} hard links (another may be another tenant's file)")
            return Opened(fd, info)
        except OSError:
            os.close(fd)
            raise

    # -- reading -------------------------------------------------------------------------------

    @staticmethod
    def is_small(opened: Opened) -> bool:
        return opened.info.st_size <= SMALL_FILE

    @staticmethod
    def read(key: Key, opened: Opened, packer: Packer | None = None) -> Content:
        """Checksum (and, for a structured file within the parse limit, copy, compressed) an
        opened file; closes it. Large files are hashed in chunks (``hashlib`` lets go of the GIL).
        With a ``packer``, a small file's copy is ``Packed`` with the packer's other files
        (the ``Content``'s ``size`` is 0 then: the copy's own ``size`` is its share, known once
        the packer closes)."""
        limit = structured.size_limit(key)
        size = opened.info.st_size
        if limit is not None and size <= limit:
            # System calls on the descriptor, no file object: at start this runs once per file,
            # and a buffered reader's set-up cost more than reading 5 KB.
            try:
                # The size it has (and a byte more, to see it grew): a read of the limit would
                # allocate a megabyte per file and leave the heap in pieces (about 3x the RSS).
                data = _read_up_to(opened.fd, size + 1)
                if len(data) > size:
                    data += _read_up_to(opened.fd, limit + 1 - len(data))
                if len(data) > limit:  # it grew past the limit since the stat: hash the rest too
                    digest = hashlib.sha256(data)
                    while chunk := os.read(opened.fd, _CHUNK):
                        digest.update(chunk)
                    too_large = structured.Unparsed(structured.TOO_LARGE)
                    return Content("sha256:" + digest.hexdigest(), too_large, 0, signature(opened.info), time.time())
            finally:
                os.close(opened.fd)
            checksum = "sha256:" + hashlib.sha256(data).hexdigest()
            if packer is not None and len(data) <= PACK_FILE:
                return Content(checksum, packer.add(data), 0, signature(opened.info), time.time())
            compressed = compress(data)
            return Content(checksum, compressed, len(compressed), signature(opened.info), time.time())
        with open(opened.fd, "rb", closefd=True) as f:
            digest = hashlib.sha256()
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        copy = structured.Unparsed(structured.TOO_LARGE) if limit is not None else None
        return Content("sha256:" + digest.hexdigest(), copy, 0, signature(opened.info), time.time())

    @staticmethod
    def parse(key: Key, copy: Any) -> Any:
        """The document in a ``copy`` (``structured.parse``), or the ``Unparsed`` it is."""
        if isinstance(copy, bytes):
            return structured.parse(key, zlib.decompress(copy))
        if isinstance(copy, Packed):
            return structured.parse(key, copy.data())
        return copy

    # -- walking -------------------------------------------------------------------------------

    def walk(self) -> Iterator[Key]:
        """The keys of every file in the config folder, links not followed, ignored names skipped."""
        for key, _, _ in self.found():
            yield key

    def found(self) -> Iterator[tuple[Key, int, str]]:
        """``(key, descriptor of its folder, name)`` of every file ``walk`` lists. The folder's
        descriptor stays open until the next file is asked for: ``open_found`` opens the file
        there, by its name alone, instead of looking its whole path up again (at start, once
        per file of the tree)."""
        yield from self._found_in(self.root_fd, "")

    def _found_in(self, folder_fd: int, prefix: str) -> Iterator[tuple[Key, int, str]]:
        """A folder's files first, then its folders' (as ``os.fwalk`` lists them, top down).
        A link is never walked: a link to a folder is neither a folder nor a file here (its
        files are found, if at all, where they are), any other link is a file (``open``
        decides what it reads as). A folder is opened with ``O_NOFOLLOW``: one swapped for a
        link meanwhile is not walked."""
        folders: list[str] = []
        try:
            with os.scandir(folder_fd) as entries:
                names = []
                for entry in entries:
                    name = entry.name
                    if is_ignored_name(name):
                        continue
                    try:
                        if entry.is_dir():  # follows a link: a link to a folder is skipped
                            if not entry.is_symlink():
                                folders.append(name)
                            continue
                    except OSError:  # a link whose target cannot be looked at is a file
                        if not _is_link(entry):
                            continue
                    names.append(name)
        except OSError:  # the folder went away meanwhile, or cannot be listed
            return
        for name in names:
            yield prefix + name, folder_fd, name
        for name in folders:
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=folder_fd)
            except OSError:  # gone, not listable, or a link now
                continue
            try:
                yield from self._found_in(fd, f"{prefix}{name}/")
            finally:
                os.close(fd)

    def open_found(self, key: Key, folder_fd: int, name: str) -> Opened | None:
        """``open(key)`` for a file ``found`` listed, opened in the folder it was found in (that
        folder was reached by the same rules: no link followed). A name that is a link, or
        that cannot be opened as a file, takes the way of ``open``: its rules decide."""
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=folder_fd)
        except OSError:
            return self.open(key)
        return self._checked(fd)


def _read_up_to(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes from ``fd``: fewer only at the end of the file."""
    data = os.read(fd, n)
    while data and len(data) < n:  # at the end, or a short read (a network file system)
        more = os.read(fd, n - len(data))
        if not more:
            break
        data += more
    return data


def _is_link(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def compress(data: bytes) -> bytes:
    """``data`` as zlib (level 1), with a window and a hash table sized to it: for a file of a
    few kilobytes, setting up the default 32 KiB window and 128 KiB of hash table is most of
    the work (a 5 KB file: 18 µs instead of 46 µs, the same size). ``zlib.decompress`` reads
    any window size from the stream's header."""
    bits = min(15, max(10, len(data).bit_length()))
    compressor = zlib.compressobj(1, zlib.DEFLATED, bits, min(8, bits - 8))
    return compressor.compress(data) + compressor.flush()
