"""btrfs primitives, through the ``btrfs`` tool of btrfs-progs.

Subvolumes are what make appimg versions and realm root filesystems cheap: a snapshot shares all
data with its source and costs the same whatever the size of the tree.
"""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

from realms.errors import CommandFailed, RealmsError
from realms.system.run import run

# The inode number of the root directory of every btrfs subvolume.
SUBVOLUME_ROOT_INODE = 256


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
    """Snapshot the subvolume ``source`` as ``target``; zero cost, independent afterwards."""
    run(["btrfs", "subvolume", "snapshot", *(["-r"] if readonly else []), source, target])


def set_readonly(path: Path, readonly: bool = True) -> None:
    run(["btrfs", "property", "set", "-ts", path, "ro", "true" if readonly else "false"])


def is_readonly(path: Path) -> bool:
    result = run(["btrfs", "property", "get", "-ts", path, "ro"])
    return str(result.stdout).strip() == "ro=true"


def delete_subvolume(path: Path) -> None:
    """Delete a subvolume, and first any subvolumes nested inside it (which block deletion)."""
    try:
        run(["btrfs", "subvolume", "delete", path])
        return
    except CommandFailed:
        nested = list(_nested_subvolumes(path))
        if not nested:
            raise
    if is_readonly(path):
        # Removing a nested subvolume unlinks it from this one, which must be writable for that.
        set_readonly(path, False)
    for inner in reversed(nested):
        delete_subvolume(inner)
    run(["btrfs", "subvolume", "delete", path])


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


def wait_for_deletions(path: Path, timeout: float = 60.0) -> bool:
    """Wait (at most ``timeout`` seconds) until the filesystem has cleaned up every deleted
    subvolume; return whether it has.

    Not ``btrfs subvolume sync``, which can wait for btrfs's next periodic commit (30 s) before
    the cleaner even starts: each ``btrfs filesystem sync`` commits and wakes the cleaner.
    """
    deadline = time.monotonic() + timeout
    while str(run(["btrfs", "subvolume", "list", "-d", path]).stdout).strip():
        if time.monotonic() > deadline:
            return False
        run(["btrfs", "filesystem", "sync", path])
        time.sleep(0.05)
    return True


def make_filesystem(image: Path, label: str) -> None:
    run(["mkfs.btrfs", "--quiet", "--label", label, image])
