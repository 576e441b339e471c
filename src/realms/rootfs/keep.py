"""Carrying a realm's state paths (its ``keep`` setting) from its old root to a new one.

A pattern is an absolute path whose components may be globs (fnmatch, one component each: ``*``
never crosses a ``/``). It is matched in the old root without following any symlink: a symlinked
directory on the way matches nothing, since its target may be outside the root. What it matches
is copied to the same place in the new root as it is (``cp -a``): a file byte for byte
(reflinked where the filesystem can), a directory with all it holds, a symlink as a symlink,
device nodes (an overlay's whiteouts) as device nodes, with owner, mode, extended attributes and
times. What the new root had there is replaced.

Directories on the way that the new root lacks are made as the old root has them (owner, mode,
times, extended attributes but overlayfs's own: an opaque mark would hide the new lower
layer's files). A directory on the way that is a symlink (or no directory) in the new root
stops that path with a warning: realms never writes through a link of a tree.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path

from realms import log
from realms.errors import InvalidInput
from realms.system.fs import remove_tree
from realms.system.run import run

_GLOB = frozenset("*?[")
# overlayfs's attributes of a directory in an upper layer (opaque, impure, origin): they belong
# to the layer they were made in, never to a directory made anew.
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")


def check_patterns(realm: str, patterns: list[str]) -> list[list[str]]:
    """The components of each pattern of realm ``realm``'s keep setting; refused: a relative
    path, ``.`` or ``..`` components, the root itself."""
    checked = []
    for pattern in patterns:
        parts = [part for part in pattern.split("/") if part]
        if not pattern.startswith("/") or not parts or any(p in (".", "..") for p in parts):
            raise InvalidInput(
                f"realm {realm}: keep: {pattern!r} is not an absolute path below / without "
                "'.' or '..'",
                hint=f"set it with: realms config {realm} keep '[\"/etc/machine-id\"]'",
            )
        checked.append(parts)
    return checked


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def matches(root: Path, parts: list[str]) -> list[str]:
    """The paths (relative to ``root``) that one pattern matches, sorted."""
    found = [""]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        following = []
        for relative in found:
            directory = root / relative if relative else root
            if not _is_real_dir(directory):
                continue
            if _GLOB & set(part):
                try:
                    names = sorted(os.listdir(directory))
                except OSError:
                    continue
                chosen = [n for n in names if fnmatch.fnmatchcase(n, part)]
            else:
                chosen = [part] if os.path.lexists(directory / part) else []
            for name in chosen:
                path = f"{relative}/{name}" if relative else name
                if last or _is_real_dir(root / path):
                    following.append(path)
        found = following
    return sorted(found)


def _copy_attributes(source: Path, target: Path) -> None:
    """A directory made anew gets its counterpart's owner, mode and extended attributes."""
    info = os.lstat(source)
    os.lchown(target, info.st_uid, info.st_gid)
    os.chmod(target, stat.S_IMODE(info.st_mode))
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError:
        names = []
    for name in names:
        if name.startswith(_OVERLAY_XATTRS):
            continue
        try:
            value = os.getxattr(source, name, follow_symlinks=False)
            os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as error:
            log.debug(f"extended attribute {name} of {source} not copied: {error}")


def _parent_ready(old_root: Path, new_root: Path, parent: str, made: list[str]) -> bool:
    """Make the directories of ``parent`` that the new root lacks; False where one of them is
    a symlink or no directory in the new root."""
    if not parent:
        return True
    path = ""
    for part in parent.split("/"):
        path = f"{path}/{part}" if path else part
        target = new_root / path
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            target.mkdir()
            _copy_attributes(old_root / path, target)
            made.append(path)
            continue
        if not stat.S_ISDIR(info.st_mode):
            log.warn(f"not kept: /{parent} is not a directory in the new root (/{path})")
            return False
    return True


def carry(old_root: Path, new_root: Path, realm: str, patterns: list[str]) -> list[str]:
    """Copy what ``patterns`` match in ``old_root`` to ``new_root``; return the paths copied
    (relative to the roots)."""
    wanted: dict[str, list[str]] = {}
    for parts in check_patterns(realm, patterns):
        for relative in matches(old_root, parts):
            parent, _, name = relative.rpartition("/")
            names = wanted.setdefault(parent, [])
            if name not in names:
                names.append(name)
    made: list[str] = []
    carried = []
    for parent, names in sorted(wanted.items()):
        if not _parent_ready(old_root, new_root, parent, made):
            continue
        for name in names:
            # Replaced, not merged: the kept path is what the old root had, nothing more.
            remove_tree(new_root / parent / name)
        sources = [str(old_root / parent / name) for name in names]
        # One cp for a directory's paths; -a: no symlink followed, owner, mode, xattrs, times.
        run(["cp", "-a", "--reflink=auto", "-t", str(new_root / parent), "--", *sources])
        carried += [f"{parent}/{name}" if parent else name for name in names]
    # Times last: making and filling a directory changes its own.
    for path in reversed(made):
        info = os.lstat(old_root / path)
        os.utime(new_root / path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
    return sorted(carried)
