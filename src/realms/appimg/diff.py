"""``realms appimg diff``: the files added, removed and changed between two versions.

The model: both versions are read as trees, whatever their kind. A tree version is its read-only
directory; a block or sealed version is read through its activation (:mod:`realms.activation`),
so a sealed image is read only after the checks every realm on it gets (signature always, every
block unless the kernel checks each read), and a version this command activated is released
again, also when the comparison fails. The appimg's lock is held shared throughout (no version
goes away meanwhile), and the activation lock while an image is mounted for the comparison.

The comparison (:func:`compare_trees`) walks both trees together, one directory at a time, by
directory file descriptors: every entry is opened relative to its directory with ``O_NOFOLLOW``,
so a symlink inside a version (``/etc -> /``, ``x -> ../../..``) is compared as a symlink and
never followed, whatever the version holds. For each path in both it compares the type, then
the content (regular files: the size, then the bytes, unless both files share every extent of
one btrfs filesystem, as clones of one another do; devices: the device number; symlinks: the
target), the permission bits, the owner (numbers), the mtime and the extended attributes. Link
counts, sizes of directories and times other than the mtime are not compared: they say how a
filesystem stores the tree, not what is in it.

Two things an image's filesystem adds are not reported as changes against a tree: the
``/lost+found`` directory ``mkfs.ext4`` makes (when the other version has none) and the mtime
it gives the root directory by making it, and the nanoseconds of mtimes, which ``mkfs.ext4 -d``
does not keep (mtimes are compared in whole seconds when either version is an ext4 image).
"""

from __future__ import annotations

import collections
import fcntl
import os
import stat
import struct
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realms import log
from realms.appimg.record import AppimgRecord, Version, load_record
from realms.errors import InvalidInput, NotFound, RealmsError
from realms.kinds import ImageKind
from realms.names import check_appimg_name
from realms.store import Store

WHAT = ("type", "content", "mode", "owner", "mtime", "xattrs", "target")
"""What can change about a path, in the order a change lists them."""

MAX_DEPTH = 256
"""Directories deeper than this are refused: two descriptors are open per level, and no root
filesystem nests this deep (its paths would pass PATH_MAX)."""

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1 << 20
# Files are compared on a few threads (pread releases the GIL): reads from a cold cache
# overlap. At most this many comparisons wait, each holding two descriptors.
_THREADS = 4
_IN_FLIGHT = 64


@dataclass(frozen=True)
class Changed:
    path: str
    what: list[str]
    """Of "type", "content", "mode", "owner", "mtime", "xattrs", "target"."""


@dataclass(frozen=True)
class TreeDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[Changed] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": [{"path": c.path, "what": c.what} for c in self.changed],
        }


@dataclass(frozen=True)
class Side:
    """One tree to compare: its root, and what its filesystem adds (see the module
    docstring)."""

    root: Path
    ext4: bool = False
    """An ext4 image: its mtimes have whole seconds, mkfs made its /lost+found."""
    filesystem: str | None = None
    """Names the filesystem the tree is on, where it is known to be one with another side's
    (the trees of one store: btrfs gives each subvolume a device number of its own)."""


def compare_trees(old: Path | Side, new: Path | Side) -> TreeDiff:
    """The differences from tree ``old`` to tree ``new`` (see the module docstring). Paths are
    absolute inside the trees ("/" is the root itself), in the order of a sorted walk."""
    first = old if isinstance(old, Side) else Side(old)
    second = new if isinstance(new, Side) else Side(new)
    same = first.filesystem is not None and first.filesystem == second.filesystem
    skip_old = ("lost+found",) if first.ext4 else ()
    skip_new = ("lost+found",) if second.ext4 else ()
    with ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(_THREADS, thread_name_prefix="diff"))
        walk = _Walk(pool, seconds=first.ext4 or second.ext4, one_filesystem=same)
        fd_old = _open_root(first.root, stack)
        fd_new = _open_root(second.root, stack)
        # mkfs.ext4 sets the root's mtime when it makes /lost+found there.
        mtime = not walk.seconds
        root_old, root_new = os.fstat(fd_old), os.fstat(fd_new)
        walk.compare("/", root_old, root_new, _Where(fd_old), _Where(fd_new), mtime=mtime)
        walk.directories(fd_old, fd_new, "/", 1, skip_old=skip_old, skip_new=skip_new)
        return TreeDiff(walk.added, walk.removed, walk.finish())


def _open_root(root: Path, stack: ExitStack) -> int:
    try:
        fd = os.open(root, _DIRECTORY)
    except OSError as error:
        raise RealmsError(f"cannot open the tree {root}: {error.strerror}") from None
    stack.callback(os.close, fd)
    return fd


@dataclass(frozen=True)
class _Where:
    """An entry: the directory descriptor it is in and its name ("" for the directory
    itself)."""

    directory: int
    name: str = ""

    def xattr_target(self) -> int | str:
        if not self.name:
            return self.directory
        # Through the descriptor: the entry is looked up in that directory, never by a path
        # from the root whose components a version could make symlinks.
        return f"/proc/self/fd/{self.directory}/{self.name}"


class _Walk:
    def __init__(
        self, pool: ThreadPoolExecutor, *, seconds: bool, one_filesystem: bool = False
    ) -> None:
        self.pool = pool
        self.seconds = seconds
        self.one_filesystem = one_filesystem
        self.added: list[str] = []
        self.removed: list[str] = []
        # In walk order: a path, what changed but its content, whether its content is equal.
        self.found: list[tuple[str, list[str], Future[bool] | None]] = []
        self.in_flight: collections.deque[Future[bool]] = collections.deque()

    def finish(self) -> list[Changed]:
        changed = []
        for path, what, same in self.found:
            try:
                if same is not None and not same.result():
                    what.append("content")
            except OSError as error:
                raise _failed(path, error) from None
            if what:
                changed.append(Changed(path, sorted(what, key=WHAT.index)))
        return changed

    def _content(
        self, old: os.stat_result, new: os.stat_result, at_old: _Where, at_new: _Where, path: str
    ) -> Future[bool] | None:
        """Whether two regular files hold the same bytes: None when their sizes tell, else
        the answer to come."""
        if old.st_size != new.st_size:
            return _done(False)
        if old.st_size == 0:
            return None
        while len(self.in_flight) >= _IN_FLIGHT:
            self.in_flight.popleft().exception()  # waits; a failure is raised by finish
        shared = self.one_filesystem or old.st_dev == new.st_dev
        try:
            fd_old = os.open(at_old.name, _FILE, dir_fd=at_old.directory)
            try:
                fd_new = os.open(at_new.name, _FILE, dir_fd=at_new.directory)
            except BaseException:
                os.close(fd_old)
                raise
        except OSError as error:
            raise _failed(path, error) from None
        future = self.pool.submit(_same_content, fd_old, fd_new, extents=shared)
        self.in_flight.append(future)
        return future

    def directories(
        self,
        fd_old: int,
        fd_new: int,
        path: str,
        depth: int,
        *,
        skip_old: Collection[str] = (),
        skip_new: Collection[str] = (),
    ) -> None:
        """Compare the entries of two directories that are both in the trees, recursively."""
        if depth > MAX_DEPTH:
            raise InvalidInput(f"more than {MAX_DEPTH} nested directories at {path}")
        old = _entries(fd_old, path)
        new = _entries(fd_new, path)
        for name in sorted(old.keys() | new.keys()):
            child = _join(path, name)
            before, after = old.get(name), new.get(name)
            if after is None:
                assert before is not None
                if name not in skip_old or name in new:
                    self._one_side(fd_old, name, before, child, depth=depth, into=self.removed)
                continue
            if before is None:
                if name not in skip_new or name in old:
                    self._one_side(fd_new, name, after, child, depth=depth, into=self.added)
                continue
            self.compare(child, before, after, _Where(fd_old, name), _Where(fd_new, name))
            old_dir, new_dir = stat.S_ISDIR(before.st_mode), stat.S_ISDIR(after.st_mode)
            if old_dir and new_dir:
                with _opened(fd_old, name, child) as sub_old, _opened(fd_new, name, child) as sub:
                    self.directories(sub_old, sub, child, depth + 1)
            elif old_dir:
                self._below(fd_old, name, child, depth, self.removed)
            elif new_dir:
                self._below(fd_new, name, child, depth, self.added)

    def _one_side(
        self, fd: int, name: str, found: os.stat_result, path: str, *, depth: int, into: list[str]
    ) -> None:
        into.append(path)
        if stat.S_ISDIR(found.st_mode):
            self._below(fd, name, path, depth, into)

    def _below(self, fd: int, name: str, path: str, depth: int, into: list[str]) -> None:
        """Every path below directory ``name`` of ``fd``, into ``into``."""
        if depth + 1 > MAX_DEPTH:
            raise InvalidInput(f"more than {MAX_DEPTH} nested directories at {path}")
        with _opened(fd, name, path) as sub:
            for child_name, found in sorted(_entries(sub, path).items()):
                self._one_side(
                    sub, child_name, found, _join(path, child_name), depth=depth + 1, into=into
                )

    def compare(
        self,
        path: str,
        old: os.stat_result,
        new: os.stat_result,
        at_old: _Where,
        at_new: _Where,
        *,
        mtime: bool = True,
    ) -> None:
        what = []
        same = None
        kind = stat.S_IFMT(old.st_mode)
        if kind != stat.S_IFMT(new.st_mode):
            what.append("type")
        elif stat.S_ISREG(kind):
            same = self._content(old, new, at_old, at_new, path)
        elif stat.S_ISLNK(kind):
            if _readlink(at_old, path) != _readlink(at_new, path):
                what.append("target")
        elif (stat.S_ISCHR(kind) or stat.S_ISBLK(kind)) and old.st_rdev != new.st_rdev:
            what.append("content")
        if stat.S_IMODE(old.st_mode) != stat.S_IMODE(new.st_mode):
            what.append("mode")
        if (old.st_uid, old.st_gid) != (new.st_uid, new.st_gid):
            what.append("owner")
        if self.seconds:
            moved = old.st_mtime_ns // 10**9 != new.st_mtime_ns // 10**9
        else:
            moved = old.st_mtime_ns != new.st_mtime_ns
        if moved and mtime:
            what.append("mtime")
        if _xattrs(at_old, path) != _xattrs(at_new, path):
            what.append("xattrs")
        if what or same is not None:
            self.found.append((path, what, same))


def _join(path: str, name: str) -> str:
    return f"/{name}" if path == "/" else f"{path}/{name}"


def _failed(path: str, error: OSError) -> RealmsError:
    return RealmsError(f"cannot read {path} in a version: {error.strerror or error}")


def _entries(fd: int, path: str) -> dict[str, os.stat_result]:
    """The entries of the directory ``fd`` with their lstat."""
    try:
        # scandir(fd) works on a duplicate of fd; stat() is fstatat(fd, name, NOFOLLOW).
        with os.scandir(fd) as listing:
            return {entry.name: entry.stat(follow_symlinks=False) for entry in listing}
    except OSError as error:
        raise _failed(path, error) from None


class _opened:
    """A directory entry opened as a directory, never through a symlink."""

    def __init__(self, fd: int, name: str, path: str) -> None:
        try:
            self.fd = os.open(name, _DIRECTORY, dir_fd=fd)
        except OSError as error:
            raise _failed(path, error) from None

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)


def _readlink(at: _Where, path: str) -> str:
    try:
        return os.readlink(at.name, dir_fd=at.directory)
    except OSError as error:
        raise _failed(path, error) from None


def _xattrs(at: _Where, path: str) -> dict[str, bytes]:
    where = at.xattr_target()
    follow = isinstance(where, int)  # a descriptor is the entry itself
    try:
        names = os.listxattr(where, follow_symlinks=follow)
        return {name: os.getxattr(where, name, follow_symlinks=follow) for name in names}
    except OSError as error:
        if error.errno in (95, 61):  # EOPNOTSUPP, ENODATA (removed between the two calls)
            return {}
        raise _failed(path, error) from None


def _done(value: bool) -> Future[bool]:
    future: Future[bool] = Future()
    future.set_result(value)
    return future


def _same_content(fd_old: int, fd_new: int, *, extents: bool) -> bool:
    """Whether two open files of one size hold the same bytes; closes them."""
    try:
        # Clones on one btrfs filesystem (a version and its update) share their extents:
        # equal without reading a byte.
        if extents and same_extents(fd_old, fd_new):
            return True
        return _same_bytes(fd_old, fd_new)
    finally:
        os.close(fd_old)
        os.close(fd_new)


def _same_bytes(fd_old: int, fd_new: int) -> bool:
    offset = 0
    while True:
        # pread returns less than asked only at the end of a regular file.
        old = os.pread(fd_old, _CHUNK, offset)
        new = os.pread(fd_new, _CHUNK, offset)
        if old != new:
            return False
        if not old:
            return True
        offset += len(old)


# Shared extents (FIEMAP, linux/fiemap.h)

_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP = struct.Struct("=QQIIII")  # start, length, flags, mapped extents, extent count, -
_EXTENT = struct.Struct("=QQQ16xI12x")  # logical, physical, length, -, flags, -
_MAX_EXTENTS = 64
_LAST = 0x1
# Unknown or delayed placement, compressed or encrypted or inline data, a tail packed with
# others: a physical address that does not say which bytes the file holds.
_UNDECIDED = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400


def _extents(fd: int) -> tuple[tuple[int, int, int], ...] | None:
    """The file's extents (logical, physical, length), or None when they cannot tell its
    content (too many, or any of an undecided kind, or no FIEMAP here)."""
    request = bytearray(_FIEMAP.size + _MAX_EXTENTS * _EXTENT.size)
    _FIEMAP.pack_into(request, 0, 0, 2**64 - 1, 0, 0, _MAX_EXTENTS, 0)
    try:
        fcntl.ioctl(fd, _FS_IOC_FIEMAP, request)
    except OSError:
        return None
    mapped = _FIEMAP.unpack_from(request, 0)[3]
    found = []
    for index in range(mapped):
        logical, physical, length, flags = _EXTENT.unpack_from(
            request, _FIEMAP.size + index * _EXTENT.size
        )
        if flags & _UNDECIDED:
            return None
        found.append((logical, physical, length))
        if flags & _LAST:
            return tuple(found)
    return None  # more extents than asked for, or none at all


def same_extents(fd_old: int, fd_new: int) -> bool:
    """Whether two files of one filesystem (and of one size) share every extent."""
    old = _extents(fd_old)
    return old is not None and old == _extents(fd_new)


# The versions of an appimg


def _version(record: AppimgRecord, number: int) -> Version:
    found = record.version(number)
    if found is None:
        known = ", ".join(str(v.version) for v in record.versions)
        raise NotFound(f"appimg {record.name!r} has no version {number} (its versions: {known})")
    return found


def diff_appimg(store: Store, name: str, v1: int, v2: int) -> TreeDiff:
    """The files added, removed and changed from version ``v1`` to ``v2`` of appimg ``name``,
    of any kinds (see the module docstring)."""
    check_appimg_name(name)
    with store.appimg_lock(name, shared=True):
        record = load_record(store, name)
        old, new = _version(record, v1), _version(record, v2)
        if v1 == v2:
            return TreeDiff()
        with ExitStack() as stack:
            if old.kind.is_image or new.kind.is_image:
                from realms import activation

                stack.enter_context(store.activation_lock(name))
                activation.release_unused(store, name)  # a killed command's, a diff's too
            first = _side(store, name, old, stack)
            second = _side(store, name, new, stack)
            with log.step(f"Comparing versions {v1} and {v2} of appimg {name}"):
                return compare_trees(first, second)


def _side(store: Store, name: str, version: Version, stack: ExitStack) -> Side:
    """The tree of ``version``: an image is activated (checked first) unless it is, and
    released again when ``stack`` closes if this command activated it."""
    path = store.version_path(name, version)
    if version.kind == ImageKind.TREE:
        return Side(path, filesystem="store")
    from realms import activation
    from realms.image import filesystem
    from realms.image.header import HEADER_SIZE

    active = {found.version for found in activation.activations(store) if found.appimg == name}
    mounted = activation.activate(store, name, version, path)
    if version.version not in active:
        stack.callback(_release, store, name, version.version)
    return Side(mounted.mountpoint, ext4=filesystem.detect(path, HEADER_SIZE) == "ext4")


def _release(store: Store, name: str, number: int) -> None:
    from realms import activation

    try:
        if not activation.users(store, name, number):
            activation.release(store, name, number)
    except RealmsError as error:
        log.warn(f"appimg {name} version {number} stays active: {error}")
