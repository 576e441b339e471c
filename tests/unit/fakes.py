"""Stand-ins for the parts of a store that need root, for the unit tests.

:class:`DirectoryBackend` implements :class:`realms.storage.Backend` with plain directories and
nothing but Python (no btrfs, no ``cp``): a clone is a copy, a change marker is a listing of
the tree. On top of the protocol it records what the store asked of it (``calls``) and checks
what the store promises: a frozen tree is never written to afterwards (:meth:`check_frozen`,
run by the ``store`` fixture when the test ends).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from realms.storage import Changes
from realms.system.fs import remove_tree

# (mode, size, modification time, inode) of every entry below a tree, by relative path.
Listing = dict[str, tuple[int, int, int, int]]


def listing(root: Path) -> Listing:
    found: Listing = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            key = os.path.relpath(path, root)
            found[key] = (info.st_mode, info.st_size, info.st_mtime_ns, info.st_ino)
    return found


def copy_tree(source: Path, target: Path) -> None:
    """``cp -a`` for what a test tree holds: directories, files, symlinks and FIFOs, with their
    modes and times (owners only where the process may set them)."""
    target.mkdir(mode=0o755)
    for entry in os.scandir(source):
        child = target / entry.name
        info = entry.stat(follow_symlinks=False)
        if entry.is_symlink():
            child.symlink_to(os.readlink(entry.path))
        elif entry.is_dir(follow_symlinks=False):
            copy_tree(Path(entry.path), child)
        elif stat.S_ISFIFO(info.st_mode):
            os.mkfifo(child, stat.S_IMODE(info.st_mode))
        elif stat.S_ISREG(info.st_mode):
            shutil.copy2(entry.path, child, follow_symlinks=False)
        else:
            raise AssertionError(f"the fake backend cannot copy {entry.path}")
        if not entry.is_symlink():
            os.chmod(child, stat.S_IMODE(info.st_mode))
            os.utime(child, ns=(info.st_atime_ns, info.st_mtime_ns))
        if os.geteuid() == 0:
            os.lchown(child, info.st_uid, info.st_gid)
    info = os.lstat(source)
    os.chmod(target, stat.S_IMODE(info.st_mode))
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))


class DirectoryBackend:
    name = "directories"
    zero_cost = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, Path]] = []
        # Frozen trees by (device, inode) of their top directory: a tree is frozen under its
        # staging name and then renamed into place.
        self.frozen: dict[tuple[int, int], tuple[Path, Listing]] = {}
        self._markers: dict[int, Listing] = {}

    def create_tree(self, path: Path) -> None:
        self.calls.append(("create_tree", path))
        path.mkdir(mode=0o755)

    def clone(self, source: Path, target: Path) -> None:
        self.calls.append(("clone", source))
        copy_tree(source, target)

    def freeze(self, path: Path) -> None:
        self.calls.append(("freeze", path))
        info = os.stat(path)
        self.frozen[info.st_dev, info.st_ino] = (path, listing(path))

    def remove(self, path: Path) -> None:
        self.calls.append(("remove", path))
        # Forget the frozen trees it held first: their inode numbers may be used again.
        if path.is_dir() and not path.is_symlink():
            for directory, _dirs, _files in os.walk(path):
                info = os.lstat(directory)
                self.frozen.pop((info.st_dev, info.st_ino), None)
        remove_tree(path)

    def reclaim_space(self, store: Path) -> None:
        self.calls.append(("reclaim_space", store))

    def change_marker(self, path: Path) -> int | None:
        marker = len(self._markers) + 1
        self._markers[marker] = listing(path)
        return marker

    def changes_since(self, path: Path, marker: int) -> Changes | None:
        before = self._markers[marker]
        written = files = 0
        for name, now in listing(path).items():
            if stat.S_ISREG(now[0]) and before.get(name) != now:
                written += now[1]
                files += 1
        return Changes(written, files)

    def check_frozen(self, store: Path) -> int:
        """Every frozen tree still in ``store`` (under whatever name) is as it was when it was
        frozen; return how many were checked."""
        checked = 0
        for directory, dirs, _files in os.walk(store):
            for name in list(dirs):
                path = Path(directory) / name
                info = os.lstat(path)
                found = self.frozen.get((info.st_dev, info.st_ino))
                if found is not None:
                    dirs.remove(name)  # its listing covers everything below
                    assert listing(path) == found[1], f"{path} changed after it was frozen"
                    checked += 1
        return checked
