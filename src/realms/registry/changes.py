"""What changed from one version of a tree to the next: the entries and whiteouts of a layer.

A version pushed on top of its parent's image adds one layer holding only what differs
(:mod:`realms.registry.push`). :func:`find_changes` says what that is:

- **Candidates**, found cheaply. On btrfs, ``btrfs send --no-data -p PARENT CHILD`` (both
  read-only subvolumes) tells every inode the kernel sees changed, without file data; the
  stream (format v1, :func:`read_stream`) is read as it comes and its paths are tracked
  through renames (:class:`PathTracker`: new inodes appear under temporary names such as
  ``o257-12-0`` and are renamed into place later), giving every path touched, both where it
  was in the parent and where it is in the child. Elsewhere (the copy backend) both trees are
  walked and compared by ``lstat`` and xattrs: a fallback, said in a debug line.
- **The decision**, from both trees, for the candidates only: a path gone from the child is a
  whiteout; a path whose inode changed (type, owners, mode, data, xattrs, links) is an entry;
  a directory that is not the parent's same directory (renamed, replaced) is an entry with its
  whole subtree, after a whiteout of what was there. A file with more than one link brings
  every path of its inode, so that the layer holds the whole hard-link group (tar links only
  to entries of the same layer).

Extra candidates cost nothing but a ``lstat``; a missing one would be a wrong image, so the
tracker keeps every path a command names, in both namespaces. Paths are resolved without
following symlinks (a parent directory that became a symlink never leads out of the tree).
"""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from realms import log
from realms.errors import CommandFailed, InvalidInput, RealmsError
from realms.system.run import check_exit, popen, run

MAGIC = b"btrfs-stream\0"

# Commands of the send stream (the kernel's fs/btrfs/send.h; v2 and v3 add commands only).
SUBVOL, SNAPSHOT = 1, 2
MKFILE, MKDIR, MKNOD, MKFIFO, MKSOCK, SYMLINK = 3, 4, 5, 6, 7, 8
RENAME, LINK, UNLINK, RMDIR = 9, 10, 11, 12
END = 21
# Commands that change the inode at their path (data, attributes, xattrs).
_CHANGES = {13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26}
_CREATES = {MKFILE, MKDIR, MKNOD, MKFIFO, MKSOCK, SYMLINK}

# Attributes (TLV types).
A_PATH, A_PATH_TO, A_PATH_LINK, A_DATA = 15, 16, 17, 19

_COMMAND = struct.Struct("<IHI")
_TLV = struct.Struct("<HH")
_COMMAND_LIMIT = 1 << 20
"""No command of a stream without data is near this; a larger length is a damaged stream."""


@dataclass(frozen=True)
class Command:
    cmd: int
    attributes: dict[int, bytes]

    def path(self, kind: int = A_PATH) -> str:
        value = self.attributes.get(kind)
        if value is None:
            raise InvalidInput(f"btrfs send stream: command {self.cmd} without path {kind}")
        return os.fsdecode(value)


def _exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise InvalidInput("btrfs send stream: it ends in the middle of a command")
    return data


def read_stream(stream: IO[bytes]) -> Iterator[Command]:
    """The commands of a send stream (v1-v3) up to its END, read as they come."""
    header = stream.read(len(MAGIC) + 4)
    if len(header) != len(MAGIC) + 4 or header[: len(MAGIC)] != MAGIC:
        raise InvalidInput("not a btrfs send stream")
    (version,) = struct.unpack("<I", header[len(MAGIC) :])
    if version not in (1, 2, 3):
        raise InvalidInput(f"btrfs send stream of version {version}, not 1 to 3")
    while True:
        head = stream.read(_COMMAND.size)
        if not head:
            return  # a stream of several subvolumes ends without an END of its own
        if len(head) != _COMMAND.size:
            raise InvalidInput("btrfs send stream: it ends in the middle of a command")
        length, cmd, _crc = _COMMAND.unpack(head)
        if length > _COMMAND_LIMIT:
            raise InvalidInput(f"btrfs send stream: a command of {length} bytes")
        body = _exactly(stream, length)
        if cmd == END:
            return
        yield Command(cmd, _attributes(body, version, cmd))


def _attributes(body: bytes, version: int, cmd: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    offset = 0
    while offset < len(body):
        if offset + _TLV.size > len(body):
            raise InvalidInput(f"btrfs send stream: command {cmd} has a cut attribute")
        kind, length = _TLV.unpack_from(body, offset)
        offset += _TLV.size
        if kind == A_DATA and version >= 2:
            # From v2 the data attribute has no length: it is the rest of the command.
            found[kind] = body[offset:]
            break
        if offset + length > len(body):
            raise InvalidInput(f"btrfs send stream: command {cmd} has a cut attribute")
        found[kind] = body[offset : offset + length]
        offset += length
    return found


@dataclass
class _Node:
    origin: str | None
    """Where this entry was in the parent's tree (a guess for new entries: only a candidate)."""
    children: dict[str, _Node] = field(default_factory=dict)
    touched: bool = False


def _join(directory: str | None, name: str) -> str | None:
    if directory is None:
        return None
    return f"{directory}/{name}" if directory else name


def _split(path: str) -> list[str]:
    return [part for part in path.split("/") if part and part != "."]


class PathTracker:
    """The paths a send stream touches, followed through its renames: a tree of the names
    the stream used, each knowing where it was in the parent (see the module docstring)."""

    def __init__(self) -> None:
        self._root = _Node("")
        self._gone: set[str] = set()

    def _lookup(self, path: str) -> tuple[_Node, str, _Node]:
        """(the directory node, the last name, the node), created along the way."""
        parent, name, node = self._root, "", self._root
        for part in _split(path):
            parent, name = node, part
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = _Node(_join(node.origin, part))
            node = child
        return parent, name, node

    def _retire(self, node: _Node) -> None:
        """A subtree leaves the namespace: where its entries were in the parent are
        candidates (whiteouts if they are gone from the child)."""
        stack = [node]
        while stack:
            current = stack.pop()
            if current.origin is not None:
                self._gone.add(current.origin)
            stack.extend(current.children.values())

    def touch(self, path: str) -> None:
        self._lookup(path)[2].touched = True

    def remove(self, path: str) -> None:
        directory, name, node = self._lookup(path)
        if node is self._root:
            raise InvalidInput("btrfs send stream: the root is removed")
        del directory.children[name]
        self._retire(node)
        if (where := _join(directory.origin, name)) is not None:
            self._gone.add(where)

    def rename(self, source: str, target: str) -> None:
        directory, name, node = self._lookup(source)
        if node is self._root:
            raise InvalidInput("btrfs send stream: the root is renamed")
        del directory.children[name]
        node.touched = True
        if (where := _join(directory.origin, name)) is not None:
            self._gone.add(where)
        target_directory, target_name, existing = self._lookup(target)
        if existing is self._root:
            raise InvalidInput("btrfs send stream: a rename onto the root")
        # The target's node (just made, or one the stream named before) is replaced.
        del target_directory.children[target_name]
        self._retire(existing)
        target_directory.children[target_name] = node

    def apply(self, command: Command) -> None:
        cmd = command.cmd
        if cmd in (SUBVOL, SNAPSHOT):
            return
        if cmd == RENAME:
            self.rename(command.path(), command.path(A_PATH_TO))
        elif cmd == LINK:
            self.touch(command.path())
            self.touch(command.path(A_PATH_LINK))
        elif cmd in (UNLINK, RMDIR):
            self.remove(command.path())
        elif cmd in _CREATES or cmd in _CHANGES:
            self.touch(command.path())
        else:
            raise InvalidInput(f"btrfs send stream: unknown command {cmd}")

    def candidates(self) -> set[str]:
        """Every path touched, where it is in the child and where it was in the parent."""
        found = set(self._gone)
        stack: list[tuple[str, _Node]] = [("", self._root)]
        while stack:
            path, node = stack.pop()
            if node.touched:
                found.add(path)
                if node.origin is not None:
                    found.add(node.origin)
            for name, child in node.children.items():
                stack.append((f"{path}/{name}" if path else name, child))
        return found


def stream_candidates(stream: IO[bytes]) -> set[str]:
    tracker = PathTracker()
    for command in read_stream(stream):
        tracker.apply(command)
    return tracker.candidates()


# The decision, from both trees


@dataclass(frozen=True)
class Changes:
    entries: list[str]
    """Paths of the child (relative, sorted) whose entries go into the layer."""
    whiteouts: list[str]
    """Paths of the parent (relative, sorted) that the layer deletes."""
    method: str
    """How the candidates were found: ``btrfs send`` or ``walk``."""

    @property
    def empty(self) -> bool:
        return not self.entries and not self.whiteouts


class _Tree:
    """``lstat`` of relative paths in a tree, never through a symlink."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, os.stat_result | None] = {}

    def lstat(self, path: str) -> os.stat_result | None:
        if path in self._cache:
            return self._cache[path]
        parent, _, _ = path.rpartition("/")
        above = self.lstat(parent) if path and parent else None
        found: os.stat_result | None
        if path and parent and (above is None or not stat.S_ISDIR(above.st_mode)):
            found = None
        else:
            try:
                found = os.lstat(self.root / path if path else self.root)
            except (FileNotFoundError, NotADirectoryError):
                found = None
        self._cache[path] = found
        return found

    def subtree(self, path: str) -> Iterator[str]:
        """The paths below directory ``path`` (sorted, parents first), not following links."""
        for directory, dirnames, filenames in os.walk(self.root / path, onerror=_raise):
            dirnames.sort()
            relative = os.path.relpath(directory, self.root)
            prefix = "" if relative == "." else f"{relative}/"
            for name in sorted([*dirnames, *filenames]):
                yield prefix + name


def _raise(error: OSError) -> None:
    raise error


def _xattrs(path: Path) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))
    except OSError:
        return ()


def _signature(tree: _Tree, path: str, info: os.stat_result) -> tuple[object, ...]:
    """What the walk compares: everything a layer entry carries but file data, for which size
    and modification time stand (as rsync does)."""
    mode = info.st_mode
    target = os.readlink(tree.root / path) if stat.S_ISLNK(mode) else None
    links = None if stat.S_ISDIR(mode) else info.st_nlink
    rdev = info.st_rdev if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else None
    size = info.st_size if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else None
    return (mode, info.st_uid, info.st_gid, size, info.st_mtime_ns, links, target, rdev,
            _xattrs(tree.root / path))  # fmt: skip


def _decide(
    parent: _Tree,
    child: _Tree,
    candidates: Iterable[str],
    *,
    unchanged: Callable[[str, os.stat_result, os.stat_result], bool],
    same_directory: Callable[[os.stat_result, os.stat_result], bool],
    links_of: Callable[[str, os.stat_result], Iterable[str]],
    method: str,
) -> Changes:
    entries: set[str] = set()
    whiteouts: set[str] = set()
    whole: list[str] = []
    for path in sorted(candidates):
        if not path:
            continue  # the root's own entry is not part of a layer
        old, new = parent.lstat(path), child.lstat(path)
        if new is None:
            if old is not None:
                whiteouts.add(path)
            continue
        if old is not None and unchanged(path, old, new):
            continue
        entries.add(path)
        replaced = old is not None and (
            stat.S_IFMT(old.st_mode) != stat.S_IFMT(new.st_mode)
            or (stat.S_ISDIR(new.st_mode) and not same_directory(old, new))
        )
        if replaced:
            whiteouts.add(path)
        if stat.S_ISDIR(new.st_mode) and (old is None or replaced):
            whole.append(path)
    for directory in whole:
        entries.update(child.subtree(directory))
    resolved: set[int] = set()
    for path in list(entries):
        info = child.lstat(path)
        if info is None or not stat.S_ISREG(info.st_mode) or info.st_nlink < 2:
            continue
        if info.st_ino not in resolved:
            resolved.add(info.st_ino)
            entries.update(links_of(path, info))
    # A whiteout below one of a deleted or replaced directory is covered by it (and its
    # directory may now be a file of the layer).
    kept = [w for w in sorted(whiteouts) if not any(a in whiteouts for a in _ancestors(w))]
    for path in sorted(entries):
        if os.path.basename(path).startswith(".wh."):
            raise InvalidInput(
                f"{child.root}/{path}: a name starting with .wh. means a deletion in an OCI layer"
            )
    return Changes(sorted(entries), kept, method)


def _ancestors(path: str) -> Iterator[str]:
    while "/" in path:
        path = path.rpartition("/")[0]
        yield path


def lstat_in(tree: Path, path: str) -> os.stat_result | None:
    """``lstat`` of the relative ``path`` in ``tree``, None where a directory on the way is not
    one (a symlink is never followed, so nothing outside the tree is looked at)."""
    return _Tree(tree).lstat(path)


def walk_tree(tree: Path) -> Iterator[str]:
    """Every path of ``tree`` but its root (sorted, parents first): a full layer."""
    yield from _Tree(tree).subtree("")


# The two ways of finding candidates


def _btrfs_candidates(parent: Path, child: Path) -> set[str]:
    argv: list[str | Path] = ["btrfs", "send", "--no-data", "-q", "-p", parent, child]
    with tempfile.TemporaryFile() as errors:
        process = popen(argv, stdout=subprocess.PIPE, stderr=errors)
        assert process.stdout is not None
        try:
            found = stream_candidates(process.stdout)
            # Whatever follows (nothing, for one subvolume) is read so that send can finish.
            while process.stdout.read(1 << 16):
                pass
        finally:
            process.stdout.close()
            returncode = process.wait()
        errors.seek(0)
        check_exit(argv, returncode, errors.read())
    return found


def _inode_paths(child: Path) -> Callable[[str, os.stat_result], Iterable[str]]:
    def resolve(path: str, info: os.stat_result) -> Iterable[str]:
        result = run(["btrfs", "inspect-internal", "inode-resolve", str(info.st_ino), child])
        prefix = f"{child}/"
        found = [line[len(prefix) :] for line in result.stdout.splitlines()]
        return [p for p in found if p and not p.startswith("/")]

    return resolve


def _walk_candidates(parent: _Tree, child: _Tree) -> tuple[set[str], dict[int, list[str]]]:
    """Paths whose signature differs (or that exist on one side only), and the child's
    hard-link groups."""
    candidates: set[str] = set()
    groups: dict[int, list[str]] = {}
    seen: set[str] = set()
    for path in child.subtree(""):
        seen.add(path)
        new = child.lstat(path)
        assert new is not None
        if stat.S_ISREG(new.st_mode) and new.st_nlink > 1:
            groups.setdefault(new.st_ino, []).append(path)
        old = parent.lstat(path)
        if old is None or _signature(parent, path, old) != _signature(child, path, new):
            candidates.add(path)
    for path in parent.subtree(""):
        if path not in seen:
            candidates.add(path)
    return candidates, groups


def find_changes(parent: Path, child: Path, *, btrfs: bool) -> Changes:
    """What a layer on top of ``parent``'s tree needs to give ``child``'s tree."""
    old, new = _Tree(parent), _Tree(child)
    if btrfs:
        try:
            candidates = _btrfs_candidates(parent, child)
        except (CommandFailed, InvalidInput) as error:
            log.debug(f"btrfs send of {child} against {parent} failed ({error}): walking both")
        else:
            # A btrfs snapshot keeps inode numbers; an inode untouched since keeps its ctime.
            return _decide(
                old,
                new,
                candidates,
                unchanged=lambda _p, a, b: a.st_ino == b.st_ino and a.st_ctime_ns == b.st_ctime_ns,
                same_directory=lambda a, b: a.st_ino == b.st_ino,
                links_of=_inode_paths(child),
                method="btrfs send",
            )
    log.debug(f"finding the changes from {parent} to {child} by walking both trees (fallback)")
    try:
        candidates, groups = _walk_candidates(old, new)
    except OSError as error:
        raise RealmsError(f"comparing {child} with {parent} failed: {error}") from None
    return _decide(
        old,
        new,
        candidates,
        unchanged=lambda p, a, b: _signature(old, p, a) == _signature(new, p, b),
        same_directory=lambda _a, _b: True,
        links_of=lambda _p, info: groups.get(info.st_ino, []),
        method="walk",
    )
