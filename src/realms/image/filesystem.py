"""The filesystem inside a block image, made from a tree: ext4 (Citadel's) or erofs.

- ext4, 4096-byte blocks, no journal (the image is only ever mounted read-only), no reserved
  blocks, made with ``mkfs.ext4 -d`` (ownership, modes, xattrs, hard links and device nodes are
  kept), then shrunk to its minimum with ``resize2fs -M``, so that no empty block is hashed.
- erofs, lz4hc-compressed, made with ``mkfs.erofs``: read-only by design, and much smaller.

Both are made into a file of their own; :mod:`realms.image.realmfs` places that file after the
image header.

Made with :class:`Fixed` (a seal with a given salt), the same tree gives the same bytes: the
random parts (filesystem UUID, ext4's directory hash seed) come from it, and so do the times
the tools write (ext4's superblock times through ``E2FSPROGS_FAKE_TIME`` and ``E2FSCK_TIME``,
erofs's build time through ``SOURCE_DATE_EPOCH``). ext4 inodes also hold an atime and a
ctime, which ``mkfs.ext4 -d`` copies from the tree (when the files were last read and written
there, not what they hold): they are set to that time afterwards. Both tools lay a directory
out in name order, whatever order the tree's directories list their entries in. erofs-utils 1.5's
``-T`` sets every file's mtime, so it is not used: ``SOURCE_DATE_EPOCH`` only clamps mtimes
from its second on, and a second after :func:`newest_mtime` clamps none.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from realms.errors import CommandFailed, RealmsError
from realms.image.header import BLOCK_SIZE
from realms.system.run import run

FILESYSTEMS = ("ext4", "erofs")
_EXT4_MAGIC_OFFSET = 1024 + 56
_EROFS_MAGIC_OFFSET = 1024


@dataclass(frozen=True)
class Fixed:
    """What makes a filesystem image the same for the same tree (see the module docstring)."""

    uuid: str
    hash_seed: str
    time: int
    """Seconds since the epoch: the newest mtime in the tree (:func:`newest_mtime`)."""

    def ext4_env(self) -> Mapping[str, str]:
        return {**os.environ, "E2FSPROGS_FAKE_TIME": str(self.time), "E2FSCK_TIME": str(self.time)}


def newest_mtime(tree: Path) -> int:
    """The newest mtime (whole seconds) of anything in ``tree``, symlinks not followed."""
    newest = int(os.lstat(tree).st_mtime)
    pending = [str(tree)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                try:
                    newest = max(newest, int(entry.stat(follow_symlinks=False).st_mtime))
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                except OSError:
                    continue
    return newest


def _tree_size(tree: Path) -> tuple[int, int]:
    """(bytes in 4096-byte blocks, entries) of a tree."""
    blocks = 0
    entries = 0
    for directory, subdirectories, files in os.walk(tree):
        entries += 1 + len(files)
        for name in files:
            try:
                size = os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                continue
            blocks += -(-size // BLOCK_SIZE)
        blocks += len(subdirectories)
    return blocks * BLOCK_SIZE, entries


def make_ext4(tree: Path, target: Path, label: str, fixed: Fixed | None = None) -> int:
    """Make the smallest ext4 filesystem holding ``tree`` in the file ``target``; return its
    number of 4096-byte blocks."""
    env = fixed.ext4_env() if fixed else None
    same = ["-U", fixed.uuid, "-E", f"hash_seed={fixed.hash_seed}"] if fixed else []
    data, entries = _tree_size(tree)
    inodes = entries + entries // 10 + 256
    size = int(data * 1.1) + inodes * 256 + (16 << 20)
    for _attempt in range(4):
        target.unlink(missing_ok=True)
        with open(target, "wb") as handle:
            handle.truncate(-(-size // BLOCK_SIZE) * BLOCK_SIZE)
        try:
            run(
                [
                    "mkfs.ext4",
                    "-q",
                    "-F",
                    "-b",
                    str(BLOCK_SIZE),
                    "-O",
                    "^has_journal",
                    "-m",
                    "0",
                    "-N",
                    str(inodes),
                    "-L",
                    label[:16],
                    *same,
                    "-d",
                    tree,
                    target,
                ],
                env=env,
            )
            break
        except CommandFailed as error:
            if "Could not allocate" not in error.stderr and "No space" not in error.stderr:
                raise
            size = size * 3 // 2
    else:
        raise RealmsError(f"could not make an ext4 filesystem large enough for {tree}")
    if fixed:
        _fix_times(target, fixed)
    # resize2fs wants a freshly checked filesystem; -M shrinks it to the minimum.
    checked = run(["e2fsck", "-f", "-y", target], check=False, env=env)
    if checked.returncode not in (0, 1):  # 1: e2fsck corrected something, as it may
        raise CommandFailed(["e2fsck", "-f", "-y", str(target)], checked.returncode, checked.stderr)
    run(["resize2fs", "-M", target], env=env)
    dump = str(run(["dumpe2fs", "-h", target]).stdout)
    match = re.search(r"^Block count:\s+(\d+)", dump, re.MULTILINE)
    if not match:
        raise RealmsError(f"dumpe2fs did not say the block count of {target}")
    blocks = int(match[1])
    os.truncate(target, blocks * BLOCK_SIZE)
    return blocks


def _fix_times(target: Path, fixed: Fixed) -> None:
    """Set the atime and ctime of every inode of the ext4 filesystem ``target`` to
    ``fixed.time``: mkfs.ext4 -d (e2fsprogs 1.47.0) copies them from the tree, where they
    differ between two copies of the same files (ctime is when a file was written there)."""
    env = fixed.ext4_env()
    dump = str(run(["dumpe2fs", "-h", target], env=env).stdout)
    match = re.search(r"^Inode count:\s+(\d+)", dump, re.MULTILINE)
    if not match:
        raise RealmsError(f"dumpe2fs did not say the inode count of {target}")
    asked = "".join(f"testi <{number}>\n" for number in range(1, int(match[1]) + 1))
    answers = str(run(["debugfs", "-f", "-", target], input=asked, env=env).stdout)
    used = re.findall(r"^Inode (\d+) is marked in use", answers, re.MULTILINE)
    script = "".join(
        f"sif <{number}> {field} @{fixed.time}\n" for number in used for field in ("atime", "ctime")
    )
    run(["debugfs", "-w", "-f", "-", target], input=script, env=env)


def make_erofs(tree: Path, target: Path, label: str, fixed: Fixed | None = None) -> int:
    """Make an lz4hc-compressed erofs filesystem of ``tree`` in ``target``; return its number of
    4096-byte blocks."""
    target.unlink(missing_ok=True)
    # A SOURCE_DATE_EPOCH of the caller's would clamp the tree's mtimes: never passed on.
    env = {key: value for key, value in os.environ.items() if key != "SOURCE_DATE_EPOCH"}
    same = ["-U", fixed.uuid] if fixed else []
    if fixed:
        # erofs sets every mtime not older than it to it (dropping the nanoseconds of one in
        # the same second): a second after the newest changes none.
        env["SOURCE_DATE_EPOCH"] = str(fixed.time + 1)
    run(["mkfs.erofs", "--quiet", "-zlz4hc", *same, target, tree], env=env)
    size = target.stat().st_size
    blocks = -(-size // BLOCK_SIZE)
    os.truncate(target, blocks * BLOCK_SIZE)
    return blocks


def make(kind: str, tree: Path, target: Path, label: str, fixed: Fixed | None = None) -> int:
    if kind == "ext4":
        return make_ext4(tree, target, label, fixed)
    if kind == "erofs":
        return make_erofs(tree, target, label, fixed)
    raise RealmsError(f"unknown filesystem {kind!r} (ext4 or erofs)")


def detect(path: Path, offset: int) -> str | None:
    """The filesystem at ``offset`` in ``path``: "ext4", "erofs" or None."""
    with open(path, "rb") as handle:
        handle.seek(offset + _EROFS_MAGIC_OFFSET)
        if handle.read(4) == b"\xe2\xe1\xf5\xe0":
            return "erofs"
        handle.seek(offset + _EXT4_MAGIC_OFFSET)
        if handle.read(2) == b"\x53\xef":
            return "ext4"
    return None
