"""What to say when the store, or a filesystem a command writes to, is full."""

from __future__ import annotations

import os
from pathlib import Path

from realms.errors import StoreFull


def out_of_space_hint(root: Path, path: str | Path | None) -> str:
    """What to say when writing ``path`` failed with ENOSPC: which filesystem is full (the
    store's, or the one that holds a source or an output file elsewhere) and what frees it."""
    from realms.system import mounts

    if path is not None:
        where = mounts.mount_of(Path(os.path.dirname(os.path.abspath(path))))
        if where.target != mounts.mount_of(root).target:
            return (
                f"the filesystem at {where.target} (which holds {path}) is full, not the store: "
                "free space there or write elsewhere"
            )
    return _store_full_hint(root)


def _store_full_hint(root: Path) -> str:
    return f"{_filesystem_name(root)} is full: {_freeing_hint(root)}"


def _filesystem_name(path: Path) -> str:
    """The filesystem that holds ``path``, as a person knows it: a store's pool by its image
    file, anything else by where it is mounted."""
    from realms.system import mounts

    mount = mounts.mount_of(path)
    if mount.fstype == "btrfs" and mount.source.startswith("/dev/loop"):
        image = mounts.loop_backing_file(mount.source)
        if image is not None and image.name.endswith(".pool.img"):
            return f"the store's btrfs pool {image}"
    return f"the filesystem at {mount.target}"


def _freeing_hint(path: Path) -> str:
    grow = " or make the pool larger" if "pool" in _filesystem_name(path) else ""
    return f"free space (realms remove, realms appimg prune){grow}"


# Nearly no space left: a tool that failed with a short write (GNU tar's "Wrote only N of M
# bytes", without an errno) ran out of space.
_NEARLY_FULL = 16 << 20


def out_of_space_error(target: Path, doing: str, stderr: bytes) -> StoreFull | None:
    """The error for a tool that failed writing into ``target`` in the store, if it failed for
    want of space there (its stderr says so, or it wrote short on a filesystem now full)."""
    full = b"No space left on device" in stderr
    if not full and b"Wrote only" in stderr:
        try:
            info = os.statvfs(target)
            full = info.f_bavail * info.f_frsize < _NEARLY_FULL
        except OSError:
            full = False
    if not full:
        return None
    return StoreFull(
        f"{_filesystem_name(target)} is full: {doing} ran out of space; nothing was imported",
        hint=_freeing_hint(target),
    )
