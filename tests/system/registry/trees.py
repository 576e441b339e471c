"""What a tree is, as the registry tests compare it: every path with its type, mode, owners,
size and content hash (regular files), target (symlinks) and extended attributes, and which
paths are hard links of each other. Two trees are equal for these tests when their manifests
are equal; :func:`differences` says how they differ, readably."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

Entry = tuple[object, ...]


@dataclass(frozen=True)
class TreeManifest:
    entries: dict[str, Entry]
    hard_links: frozenset[frozenset[str]]
    """Groups of two or more paths that are one inode."""


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def _xattrs(path: Path) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((name, os.getxattr(path, name, follow_symlinks=False)) for name in names))


def tree_manifest(
    root: Path, *, mtimes: bool = False, ignore: tuple[str, ...] = ()
) -> TreeManifest:
    """The manifest of the tree at ``root`` (the root's own entry is ``.``); paths in ``ignore``
    (and everything below them) are left out. ``mtimes`` adds regular files' and symlinks'
    modification times (directories' change as their entries are written)."""
    entries: dict[str, Entry] = {}
    inodes: dict[tuple[int, int], set[str]] = {}
    for directory, dirnames, filenames in os.walk(root):
        base = Path(directory)
        for name in [".", *dirnames, *filenames] if base == root else [*dirnames, *filenames]:
            path = base / name if name != "." else base
            relative = os.path.relpath(path, root)
            if any(relative == i or relative.startswith(i + "/") for i in ignore):
                continue
            info = path.lstat()
            kind = stat.S_IFMT(info.st_mode)
            entry: list[object] = [kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid]
            if stat.S_ISREG(kind):
                entry += [info.st_size, _digest(path)]
                if info.st_nlink > 1:
                    inodes.setdefault((info.st_dev, info.st_ino), set()).add(relative)
            elif stat.S_ISLNK(kind):
                entry.append(os.readlink(path))
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                entry.append(info.st_rdev)
            if mtimes and not stat.S_ISDIR(kind):
                entry.append(int(info.st_mtime))
            entry.append(_xattrs(path))
            entries[relative] = tuple(entry)
    groups = frozenset(frozenset(paths) for paths in inodes.values() if len(paths) > 1)
    return TreeManifest(entries, groups)


def differences(left: TreeManifest, right: TreeManifest, limit: int = 20) -> list[str]:
    """Readable differences between two manifests (empty when equal)."""
    found: list[str] = []
    for path in sorted(left.entries.keys() - right.entries.keys()):
        found.append(f"only in the first: {path}")
    for path in sorted(right.entries.keys() - left.entries.keys()):
        found.append(f"only in the second: {path}")
    for path in sorted(left.entries.keys() & right.entries.keys()):
        if left.entries[path] != right.entries[path]:
            found.append(f"{path}: {left.entries[path]} != {right.entries[path]}")
    if left.hard_links != right.hard_links:
        found.append(
            f"hard links: {sorted(map(sorted, left.hard_links))} != "
            f"{sorted(map(sorted, right.hard_links))}"
        )
    return found[:limit]


def assert_same_tree(left: Path, right: Path, **options: object) -> None:
    """Fail with the first differences when the trees at ``left`` and ``right`` differ."""
    found = differences(tree_manifest(left, **options), tree_manifest(right, **options))  # type: ignore[arg-type]
    assert not found, "trees differ:\n  " + "\n  ".join(found)
