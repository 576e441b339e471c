"""btrfs primitives, through the ``btrfs`` tool of btrfs-progs.

Subvolumes are what make appimg versions and realm root filesystems cheap: a snapshot shares all
data with its source and costs the same whatever the size of the tree.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from realms.errors import CommandFailed
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


def wait_for_deletions(path: Path) -> None:
    """Wait until the filesystem has cleaned up every deleted subvolume."""
    # Commit first: the cleaner only starts on deletions that a transaction has committed.
    run(["btrfs", "filesystem", "sync", path])
    run(["btrfs", "subvolume", "sync", path])


def make_filesystem(image: Path, label: str) -> None:
    run(["mkfs.btrfs", "--quiet", "--label", label, image])
