"""btrfs primitives, through the ``btrfs`` tool of btrfs-progs.

Subvolumes are what make appimg versions and realm root filesystems cheap: a snapshot shares all
data with its source and costs the same whatever the size of the tree.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import struct
import time
from pathlib import Path

from realms import log
from realms.errors import CommandFailed, RealmsError
from realms.system.run import run

# The inode number of the root directory of every btrfs subvolume.
SUBVOLUME_ROOT_INODE = 256
# _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args): 4096 bytes (treeid, objectid, name[4080]).
_IOC_INO_LOOKUP = 0xD0009412
# _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2): 4096 bytes (fd, transid, flags, 32 bytes of
# qgroup fields, name[4040]); what "btrfs subvolume snapshot" calls.
_IOC_SNAP_CREATE_V2 = 0x50009417
_VOL_ARGS_V2 = struct.Struct("=qQQ32s4040s")
_SUBVOL_RDONLY = 1 << 1


def is_subvolume(path: Path) -> bool:
    """Whether ``path`` is the root of a subvolume (the caller knows the filesystem is btrfs)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_ino == SUBVOLUME_ROOT_INODE


def create_subvolume(path: Path) -> None:
    run(["btrfs", "subvolume", "create", path])


def snapshot(source: Path, target: Path, *, readonly: bool = False) -> None:
    """Snapshot the subvolume ``source`` as ``target``; zero cost, independent afterwards.

    The ioctl that ``btrfs subvolume snapshot`` makes, without starting that program (about
    4 ms of every ``realms new``). A full filesystem raises the OSError (ENOSPC), which the
    command line reports with what to free; other failures are RealmsErrors.
    """
    name = os.fsencode(target.name)
    if name in (b"", b".", b"..") or len(name) >= 4040:
        raise RealmsError(f"cannot snapshot {source} as {target}: not a name for a subvolume")
    log.debug(f"+ btrfs subvolume snapshot {'-r ' if readonly else ''}{source} {target} (ioctl)")
    try:
        source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            parent_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                flags = _SUBVOL_RDONLY if readonly else 0
                arguments = bytearray(_VOL_ARGS_V2.pack(source_fd, 0, flags, b"", name))
                fcntl.ioctl(parent_fd, _IOC_SNAP_CREATE_V2, arguments)
            finally:
                os.close(parent_fd)
        finally:
            os.close(source_fd)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise OSError(error.errno, error.strerror, str(target)) from None
        raise RealmsError(
            f"cannot snapshot {source} as {target}: {error.strerror or error}"
        ) from None


def set_readonly(path: Path, readonly: bool = True) -> None:
    run(["btrfs", "property", "set", "-ts", path, "ro", "true" if readonly else "false"])


def is_readonly(path: Path) -> bool:
    result = run(["btrfs", "property", "get", "-ts", path, "ro"])
    return str(result.stdout).strip() == "ro=true"


def subvolume_id(path: Path) -> int:
    """The id of the subvolume that holds ``path`` (an ioctl: no command, no write)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        arguments = bytearray(struct.pack("=QQ", 0, SUBVOLUME_ROOT_INODE) + bytes(4080))
        fcntl.ioctl(fd, _IOC_INO_LOOKUP, arguments)
    finally:
        os.close(fd)
    return int(struct.unpack_from("=Q", arguments)[0])


def delete_subvolume(path: Path) -> list[int]:
    """Delete a subvolume, and first any subvolumes nested inside it (which block deletion);
    return the ids of the subvolumes deleted (for :func:`reclaim`)."""
    ids = [subvolume_id(path)]
    try:
        run(["btrfs", "subvolume", "delete", path])
        return ids
    except CommandFailed:
        nested = list(_nested_subvolumes(path))
        if not nested:
            raise
    if is_readonly(path):
        # Removing a nested subvolume unlinks it from this one, which must be writable for that.
        set_readonly(path, False)
    for inner in reversed(nested):
        ids += delete_subvolume(inner)
    run(["btrfs", "subvolume", "delete", path])
    return ids


def _nested_subvolumes(path: Path) -> list[Path]:
    """Subvolumes below ``path``, parents before children, not descending into them."""
    found: list[Path] = []
    for directory, subdirectories, _files in os.walk(path):
        keep = []
        for name in subdirectories:
            child = Path(directory) / name
            if is_subvolume(child):
                found.append(child)
                found.extend(_nested_subvolumes(child))
            else:
                keep.append(name)
        subdirectories[:] = keep
    return found


def generation_at_creation(path: Path) -> int:
    """The transaction id at which the subvolume was made (its snapshot's starting point)."""
    output = str(run(["btrfs", "subvolume", "show", path]).stdout)
    match = re.search(r"^\s*Gen at creation:\s*(\d+)", output, re.MULTILINE)
    if not match:
        raise RealmsError(f"btrfs subvolume show {path} did not say its generation")
    return int(match[1])


def written_since(path: Path, generation: int) -> tuple[int, int]:
    """Bytes written and files written to in the subvolume after ``generation``: a search of
    the changed part of its tree (btrfs subvolume find-new), not a walk of the whole tree.
    Call after the data is on disk (syncfs), or writes still in memory are missed.

    find-new lists extents of ``generation`` itself too: for a snapshot, that is everything its
    source wrote in the transaction that made the snapshot (an import, then at once an update),
    which the snapshot did not write. Its own writes all come in later transactions."""
    output = str(run(["btrfs", "subvolume", "find-new", path, str(generation + 1)]).stdout)
    written = 0
    inodes = set()
    for match in re.finditer(r"^inode (\d+) file offset \d+ len (\d+) ", output, re.MULTILINE):
        inodes.add(match[1])
        written += int(match[2])
    return written, len(inodes)


def _deleted_ids(path: Path) -> set[int]:
    """Subvolumes deleted but not yet cleaned up, on the filesystem that holds ``path``."""
    output = str(run(["btrfs", "subvolume", "list", "-d", path]).stdout)
    return {int(match) for match in re.findall(r"^ID (\d+) ", output, re.MULTILINE)}


def reclaim(path: Path, ids: list[int] | None = None, timeout: float = 60.0) -> bool:
    """Wait (at most ``timeout`` seconds) until the space of the deleted subvolumes ``ids``
    (None: every deleted subvolume) is free again on the filesystem that holds ``path``; return
    whether it is.

    btrfs frees a deleted subvolume in the background (its cleaner), and the extents it frees
    count as free only after the next transaction commit: left alone, that takes up to 30 s or
    more. ``btrfs subvolume sync`` waits for the cleaner but not for the commit, and can itself
    wait for the periodic commit before the cleaner starts. Here each ``btrfs filesystem sync``
    commits (which also wakes the cleaner); one more commit after the subvolumes are gone makes
    their space free. Only ``ids`` are waited for: other stores may share the filesystem.
    """
    deadline = time.monotonic() + timeout
    while True:
        run(["btrfs", "filesystem", "sync", path])
        pending = _deleted_ids(path)
        if ids is not None:
            pending &= set(ids)
        if not pending:
            run(["btrfs", "filesystem", "sync", path])
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def make_filesystem(image: Path, label: str) -> None:
    run(["mkfs.btrfs", "--quiet", "--label", label, image])
