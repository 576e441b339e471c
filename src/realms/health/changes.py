"""What a btrfs snapshot changed since it was made, read from the btrfs trees (no file walk).

A realm's root is a writable snapshot of an appimg version, and a version made by an update a
snapshot of the version before: at its creation (transaction ``otransid``) a snapshot S
references exactly what its parent P does. If P has been read-only since (versions and realm
snapshots are), everything S holds from before that transaction is still P's too, so S holds
**alone** only extents written after it, and only those that nothing else references since
(a later snapshot of S, a reflink elsewhere). That is what this module measures, in the cost
of what changed rather than of the whole tree:

- the items of S's tree in leaves written after ``otransid`` (``BTRFS_IOC_TREE_SEARCH`` with a
  minimum transaction, the search of ``btrfs subvolume find-new``): the inodes changed (their
  inode item's ``transid``) and the file extents written since (their ``generation``);
- each changed inode compared with the same inode of P (same number and generation: the same
  file): the extents it no longer references (overwritten, truncated) and the old extents it
  references anew (a reflink of an unchanged file); a changed directory's entries compared with
  P's: a file (or a whole tree) deleted from S is no longer referenced by S;
- each extent written since: ``BTRFS_IOC_LOGICAL_INO_V2`` lists every (root, inode) that
  references it, globally: S's alone (one inode of S) or shared.

The byte counts follow ``btrfs filesystem du``: the file ranges of regular and preallocated
extents, inline extents and holes not counted. ``shared`` is then P's bytes, less what S no
longer references, plus what it references anew; it is an estimate where P itself references
an extent twice (reflinks inside P), and P's bytes are themselves measured or estimated.

The ioctls need CAP_SYS_ADMIN; :class:`Unavailable` says when they cannot be used (then the
caller measures with ``btrfs filesystem du``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# _IOR(0x94, 60, struct btrfs_ioctl_get_subvol_info_args): 504 bytes.
_IOC_GET_SUBVOL_INFO = 0x81F8943C
_SUBVOL_INFO_SIZE = 504
# _IOWR(0x94, 17, struct btrfs_ioctl_search_args_v2): the key (104 bytes), buf_size, then buf.
_IOC_TREE_SEARCH_V2 = 0xC0709411
_SEARCH_KEY = struct.Struct("=7Q4I4Q")
_SEARCH_HEADER = struct.Struct("=3Q2I")
_SEARCH_BUFFER = 64 << 10
# _IOWR(0x94, 59, struct btrfs_ioctl_logical_ino_args): 56 bytes.
_IOC_LOGICAL_INO_V2 = 0xC038943B
_LOGICAL_INO_ARGS = struct.Struct("=QQ3QQQ")
_LOGICAL_INO_IGNORE_OFFSET = 1
_REFERENCES_BUFFER = 4096

_U64_MAX = (1 << 64) - 1
_INODE_ITEM, _DIR_INDEX, _EXTENT_DATA = 1, 96, 108
_ROOT_ITEM = 132  # a directory entry's location type when the entry is a subvolume
_ROOT_SUBVOL_RDONLY = 1 << 0  # in a root item's flags
# struct btrfs_file_extent_item: generation, ram_bytes, compression, encryption,
# other_encoding, type; then (regular and preallocated) disk_bytenr, disk_num_bytes, offset,
# num_bytes.
_EXTENT_HEAD = struct.Struct("=QQBBHB")
_EXTENT_BODY = struct.Struct("=4Q")
_INLINE = 0


class Unavailable(Exception):
    """The btrfs ioctls cannot be used here (no CAP_SYS_ADMIN, an old kernel)."""


@dataclass(frozen=True)
class SubvolumeInfo:
    id: int
    uuid: bytes
    parent_uuid: bytes
    """All zero for a subvolume that is no snapshot."""
    otransid: int
    """The transaction that made it (``Gen at creation``)."""
    ctransid: int
    """The last transaction that changed it."""
    readonly: bool


@dataclass(frozen=True)
class Extent:
    """One file extent item: a range of a file mapped to (part of) an extent on disk."""

    inode: int
    file_offset: int
    disk_bytenr: int
    offset: int
    bytes: int
    generation: int


@dataclass
class Change:
    """What a snapshot holds compared with its parent, in bytes."""

    exclusive: int = 0
    """Extents written since the snapshot that nothing else references."""
    new_shared: int = 0
    """Extents written since that something else references too."""
    dropped: int = 0
    """The parent's extents it no longer references (overwritten, truncated, deleted)."""
    added: int = 0
    """Old extents it references anew (reflinks)."""
    inodes: int = 0
    """Inodes changed (what the measure cost)."""
    extents: set[int] = field(default_factory=set)


def subvolume_info(path: Path) -> SubvolumeInfo:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        buffer = bytearray(_SUBVOL_INFO_SIZE)
        fcntl.ioctl(fd, _IOC_GET_SUBVOL_INFO, buffer)
    except OSError as error:
        raise _unavailable(error) from None
    finally:
        os.close(fd)
    treeid = struct.unpack_from("=Q", buffer, 0)[0]
    flags = struct.unpack_from("=Q", buffer, 288)[0]
    uuid, parent_uuid = bytes(buffer[296:312]), bytes(buffer[312:328])
    ctransid, otransid = struct.unpack_from("=QQ", buffer, 344)
    readonly = bool(flags & _ROOT_SUBVOL_RDONLY)
    return SubvolumeInfo(treeid, uuid, parent_uuid, otransid, ctransid, readonly)


def _unavailable(error: OSError) -> Exception:
    refused = (errno.EPERM, errno.EACCES, errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP)
    if error.errno in (*refused, errno.EOVERFLOW):  # EOVERFLOW: an item larger than the buffer
        return Unavailable(f"btrfs ioctl refused: {error.strerror}")
    return error


@dataclass(frozen=True)
class _Item:
    objectid: int
    type: int
    offset: int
    data: bytes


def _search(
    fd: int,
    tree: int,
    first: tuple[int, int, int],
    last: tuple[int, int, int],
    min_transid: int = 0,
) -> Iterator[_Item]:
    """The items of tree ``tree`` from key ``first`` to ``last`` (objectid, type, offset: keys
    compare in that order), in leaves written in ``min_transid`` or later."""
    (objectid, kind, offset), (max_objectid, max_type, max_offset) = first, last
    buffer = bytearray(_SEARCH_KEY.size + 8 + _SEARCH_BUFFER)
    while True:
        key = (tree, objectid, max_objectid, offset, max_offset, min_transid, _U64_MAX)
        _SEARCH_KEY.pack_into(buffer, 0, *key, kind, max_type, 4096, 0, 0, 0, 0, 0)
        struct.pack_into("=Q", buffer, _SEARCH_KEY.size, _SEARCH_BUFFER)
        try:
            fcntl.ioctl(fd, _IOC_TREE_SEARCH_V2, buffer)
        except OSError as error:
            raise _unavailable(error) from None
        count = struct.unpack_from("=I", buffer, 7 * 8 + 8)[0]
        if count == 0:
            return
        position = _SEARCH_KEY.size + 8
        for _ in range(count):
            _transid, objectid, offset, kind, length = _SEARCH_HEADER.unpack_from(buffer, position)
            position += _SEARCH_HEADER.size
            yield _Item(objectid, kind, offset, bytes(buffer[position : position + length]))
            position += length
        # The next search starts just after the last key returned.
        if offset < _U64_MAX:
            offset += 1
        elif kind < 255:
            kind, offset = kind + 1, 0
        elif objectid < max_objectid:
            objectid, kind, offset = objectid + 1, 0, 0
        else:
            return
        if (objectid, kind, offset) > last:
            return


def _extent(item: _Item) -> Extent | None:
    """A file extent item that maps bytes on disk (not inline, not a hole), or None."""
    if len(item.data) < _EXTENT_HEAD.size:
        return None
    generation, _ram, _compression, _encryption, _other, kind = _EXTENT_HEAD.unpack_from(item.data)
    if kind == _INLINE or len(item.data) < _EXTENT_HEAD.size + _EXTENT_BODY.size:
        return None
    bytenr, _disk_bytes, offset, length = _EXTENT_BODY.unpack_from(item.data, _EXTENT_HEAD.size)
    if bytenr == 0:
        return None
    return Extent(item.objectid, item.offset, bytenr, offset, length, generation)


@dataclass
class _Inode:
    generation: int = -1
    """-1: no inode item (the inode does not exist)."""
    directory: bool = False
    extents: set[Extent] = field(default_factory=set)
    children: set[int] = field(default_factory=set)
    """A directory's entries (inode numbers; subvolumes left out)."""


def _inode(fd: int, tree: int, number: int) -> _Inode:
    found = _Inode()
    for item in _search(fd, tree, (number, _INODE_ITEM, 0), (number, _EXTENT_DATA, _U64_MAX)):
        if item.type == _INODE_ITEM and len(item.data) >= 56:
            found.generation = struct.unpack_from("=Q", item.data, 0)[0]
            found.directory = stat.S_ISDIR(struct.unpack_from("=I", item.data, 52)[0])
        elif item.type == _DIR_INDEX and len(item.data) >= 17:
            child, location = struct.unpack_from("=QB", item.data, 0)
            if location == _INODE_ITEM:
                found.children.add(child)
        elif item.type == _EXTENT_DATA:
            extent = _extent(item)
            if extent is not None:
                found.extents.add(extent)
    return found


_Ranges = dict[int, list[tuple[int, int]]]


def _ranges(extents: Iterable[Extent]) -> _Ranges:
    """The bytes of each extent on disk that ``extents`` map, as sorted disjoint ranges: an
    extent partly overwritten is mapped by several items, a reflinked range by two."""
    pieces: _Ranges = {}
    for extent in extents:
        pieces.setdefault(extent.disk_bytenr, []).append(
            (extent.offset, extent.offset + extent.bytes)
        )
    merged: _Ranges = {}
    for bytenr, spans in pieces.items():
        joined: list[tuple[int, int]] = []
        for start, end in sorted(spans):
            if joined and start <= joined[-1][1]:
                joined[-1] = (joined[-1][0], max(joined[-1][1], end))
            else:
                joined.append((start, end))
        merged[bytenr] = joined
    return merged


def _length(ranges: _Ranges) -> int:
    return sum(end - start for spans in ranges.values() for start, end in spans)


def _minus(first: Iterable[Extent], second: Iterable[Extent]) -> int:
    """The bytes on disk ``first`` maps and ``second`` does not."""
    mine, theirs = _ranges(first), _ranges(second)
    total = _length(mine)
    for bytenr, spans in mine.items():
        for start, end in spans:
            for other_start, other_end in theirs.get(bytenr, ()):
                total -= max(0, min(end, other_end) - max(start, other_start))
    return total


def compare(store_fd: int, snapshot: SubvolumeInfo, parent: SubvolumeInfo) -> Change:
    """What ``snapshot`` holds compared with ``parent`` (read-only since the snapshot was made)
    and alone; ``store_fd`` is any open directory of the filesystem."""
    return _Comparison(store_fd, snapshot.id, parent.id, snapshot.otransid).run()


class _Comparison:
    def __init__(self, fd: int, snapshot: int, parent: int, since: int) -> None:
        self.fd, self.snapshot, self.parent, self.since = fd, snapshot, parent, since
        self.change = Change()
        self.gone: set[int] = set()
        """The parent's inodes found deleted (counted once, hard links and all)."""

    def run(self) -> Change:
        changed: set[int] = set()
        written: list[Extent] = []
        everything = ((0, 0, 0), (_U64_MAX, 255, _U64_MAX))
        for item in _search(self.fd, self.snapshot, *everything, min_transid=self.since + 1):
            # Leaves written since hold unchanged items too: an inode item says when its
            # inode changed, a file extent item when its data was written.
            if item.type == _INODE_ITEM and len(item.data) >= 16:
                if struct.unpack_from("=Q", item.data, 8)[0] > self.since:
                    changed.add(item.objectid)
            elif item.type == _EXTENT_DATA:
                extent = _extent(item)
                if extent is not None and extent.generation > self.since:
                    written.append(extent)
                    changed.add(item.objectid)
        self.change.inodes = len(changed)
        for number in sorted(changed):
            self._changed(number)
        _share(self.fd, self.snapshot, written, self.change)
        return self.change

    def _changed(self, number: int) -> None:
        now = _inode(self.fd, self.snapshot, number)
        before = _inode(self.fd, self.parent, number)
        if before.generation != now.generation:
            # A new file, or a number the parent used for another file (now deleted).
            for child in self._drop(number, before):
                self._drop_if_deleted(child)
            before = _Inode()
        self.change.dropped += _minus(before.extents, now.extents)
        anew = [e for e in now.extents if e.generation <= self.since]
        if anew and _minus(anew, before.extents):
            self.change.added += _added(self.fd, self.parent, anew, before.extents)
        if before.directory and now.directory:
            for child in before.children - now.children:
                self._drop_if_deleted(child)

    def _drop_if_deleted(self, number: int) -> None:
        """The parent's inode ``number`` left a directory: deleted, unless it is still in the
        snapshot elsewhere (moved, another hard link)."""
        pending = [number]
        while pending:  # a deleted tree, level by level (however deep: no recursion)
            number = pending.pop()
            if number in self.gone:
                continue
            generation = _generation(self.fd, self.parent, number)
            if generation < 0 or _generation(self.fd, self.snapshot, number) == generation:
                continue
            pending += self._drop(number, _inode(self.fd, self.parent, number))

    def _drop(self, number: int, before: _Inode) -> set[int]:
        """The parent's inode ``number`` is not in the snapshot: nor its extents; return its
        entries (a directory's), to be checked in turn."""
        if number in self.gone or before.generation < 0:
            return set()
        self.gone.add(number)
        self.change.dropped += _length(_ranges(before.extents))
        return before.children


def _generation(fd: int, tree: int, number: int) -> int:
    """The generation of inode ``number`` of ``tree`` (its birth: a reused number differs),
    -1 where there is none."""
    for item in _search(fd, tree, (number, _INODE_ITEM, 0), (number, _INODE_ITEM, _U64_MAX)):
        if item.type == _INODE_ITEM and len(item.data) >= 8:
            return int(struct.unpack_from("=Q", item.data, 0)[0])
    return -1


def _added(fd: int, parent: int, anew: list[Extent], before: set[Extent]) -> int:
    """The bytes of old extents an inode references anew (a reflink) that the parent does not
    reference at all: a copy of a file of the parent shares bytes already counted."""
    foreign = [
        e for e in anew if not any(r == parent for r, _i in _referenced_by(fd, e.disk_bytenr))
    ]
    return _minus(foreign, before)


def _share(fd: int, root: int, written: list[Extent], change: Change) -> None:
    """Split the extents written since the snapshot into those only one inode of ``root``
    references (the snapshot's alone) and the others."""
    by_extent: dict[int, list[Extent]] = {}
    for extent in written:
        by_extent.setdefault(extent.disk_bytenr, []).append(extent)
    for bytenr, items in by_extent.items():
        size = _length(_ranges(items))
        if len({e.inode for e in items}) == 1 and _referenced_by(fd, bytenr) <= {
            (root, items[0].inode)
        }:
            change.exclusive += size
            change.extents.add(bytenr)
        else:
            change.new_shared += size


def _referenced_by(fd: int, bytenr: int) -> set[tuple[int, int]]:
    """Every (subvolume, inode) that references the extent at ``bytenr``, on the whole
    filesystem; a list too long for the buffer has a made-up entry (it is shared anyway)."""
    references = ctypes.create_string_buffer(_REFERENCES_BUFFER)
    arguments = bytearray(
        _LOGICAL_INO_ARGS.pack(
            bytenr,
            _REFERENCES_BUFFER,
            0,
            0,
            0,
            _LOGICAL_INO_IGNORE_OFFSET,
            ctypes.addressof(references),
        )
    )
    try:
        fcntl.ioctl(fd, _IOC_LOGICAL_INO_V2, arguments)
    except OSError as error:
        if error.errno == errno.ENOENT:
            return set()  # freed meanwhile
        raise _unavailable(error) from None
    _left, _missing, count, missed = struct.unpack_from("=4I", references.raw, 0)
    found = set()
    for index in range(count // 3):
        inode, _offset, root = struct.unpack_from("=3Q", references.raw, 16 + index * 24)
        found.add((root, inode))
    if missed:
        found.add((0, 0))
    return found
