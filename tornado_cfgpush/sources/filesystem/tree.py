"""Reading a tenant's files so that what was checked is what is read.

Every file is opened relative to a descriptor of its tenant's folder, one path component at a
time with ``O_NOFOLLOW`` (``openat``), so that a folder swapped for a symbolic link between a
check and a read (``renameat2(RENAME_EXCHANGE)`` in a loop, SECURITY.md) can never lead the
reader into another tenant: there is no check-then-open by name. Symbolic links are resolved
here, by the same rule the source always had: a link is followed only while it stays inside its
own tenant's folder (relative links, or absolute ones into that folder); a link out of it, a
tenant folder that is itself a link, a link at the top of the config folder, and a regular file
with several hard links (another name of it may be another tenant's file) read as "no file".
FIFOs are opened non-blocking and, like every non-regular file, not read.

Reads are cached by ``(device, inode, size, mtime, ctime)`` for rescans only: a file whose
metadata say nothing changed since a read made well after its last change is not read again.

Nothing is parsed here: a structured file's content is kept as a compressed ``copy`` (zlib,
level 1: a few times smaller than the file, many times smaller than its parsed document), and
parsed only when a change asks for a diff (the worker's ``_finish``). At start, reading is
hashing and compressing: about 60 µs for a file of 5 KB.
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
from .names import Key, is_ignored_name, key_of

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO a tenant made must not hang the reader in open().
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
MAX_LINKS = 40  # as the kernel's own limit on links followed in one lookup
# Files up to this size are read where they are asked for; larger ones go to the slow lane,
# so that one large file never holds the others (bench: a 50 MB file beside a small one).
SMALL_FILE = 256 * 1024
_CHUNK = 1024 * 1024


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
    def read(key: Key, opened: Opened) -> Content:
        """Checksum (and, for a structured file within the parse limit, copy, compressed) an
        opened file; closes it. Large files are hashed in chunks (``hashlib`` lets go of the GIL)."""
        with open(opened.fd, "rb", closefd=True) as f:
            limit = structured.size_limit(key)
            if limit is not None and opened.info.st_size <= limit:
                # The size it has (and a byte more, to see it grew): a read of the limit would
                # allocate a megabyte per file and leave the heap in pieces (about 3x the RSS).
                data = f.read(opened.info.st_size + 1)
                if len(data) > opened.info.st_size:
                    data += f.read(limit + 1 - len(data))
                if len(data) <= limit:
                    checksum = "sha256:" + hashlib.sha256(data).hexdigest()
                    compressed = zlib.compress(data, 1)
                    return Content(checksum, compressed, len(compressed), signature(opened.info), time.time())
                digest = hashlib.sha256(data)  # it grew since the stat: hash the rest too
            else:
                digest = hashlib.sha256()
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
            copy = structured.Unparsed(structured.TOO_LARGE) if limit is not None else None
            return Content("sha256:" + digest.hexdigest(), copy, 0, signature(opened.info), time.time())

    @staticmethod
    def parse(key: Key, copy: Any) -> Any:
        """The document in a ``copy`` (``structured.parse``), or the ``Unparsed`` it is."""
        if not isinstance(copy, bytes):
            return copy
        return structured.parse(key, zlib.decompress(copy))

    # -- walking -------------------------------------------------------------------------------

    def walk(self, below: str = "") -> Iterator[Key]:
        """The keys of every file under the folder ``below`` (a key prefix; "" is the whole
        config folder), links not followed, ignored names skipped."""
        top = below or "."
        try:
            walker = os.fwalk(top, dir_fd=self.root_fd, follow_symlinks=False)
            for dirpath, dirnames, filenames, _ in walker:
                dirnames[:] = [d for d in dirnames if not is_ignored_name(d)]
                folder = os.path.normpath(dirpath)
                prefix = [] if folder == "." else folder.split("/")
                for name in filenames:
                    if not is_ignored_name(name):
                        yield key_of(prefix + [name])
        except OSError:  # the folder went away meanwhile
            return
