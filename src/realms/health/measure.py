"""How many bytes paths of the store hold alone and share with others, measured in one go.

Three methods, chosen per store:

- ``qgroups``: where the btrfs filesystem has quotas enabled (realms never enables them: that
  costs every write on the whole filesystem), ``btrfs qgroup show --raw`` reports every
  subvolume's referenced and exclusive bytes in one call, exact and without a walk. Paths that
  are not subvolumes (homes, upper layers, image files, cache directories) are measured as below.
- ``filesystem du``: ``btrfs filesystem du --raw -s`` with every path in ONE call (each call
  costs a start and a walk of what it is given): per path, the bytes of extents that nothing
  else references (exclusive) and the bytes of extents it shares with other files, counted once
  ("set shared"). It walks every file of what it measures (FIEMAP per file), so its cost grows
  with the number of files; it does not cross into other filesystems.
- ``du``: on the copy backend (trees are plain copies), ``du -s -x -B1`` in one call; nothing is
  known to be shared.

The filesystem is synced first: data still in memory has no extents for FIEMAP, and qgroups
count at a transaction's commit. A path that disappears while it is measured (a command removed
it) counts as empty. Files of the caches (blobs, .deb files) are measured with ``lstat``
(allocated blocks), never a tool.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from realms import log
from realms.errors import RealmsError
from realms.store import Store
from realms.system import btrfs
from realms.system.fs import syncfs
from realms.system.run import run

QGROUPS = "qgroups"
FILESYSTEM_DU = "filesystem du"
DU = "du"

_QGROUP_LINE = re.compile(r"^\s*0/(\d+)\s+(\d+)\s+(\d+)(?:\s|$)")
_FI_DU_LINE = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\S.*)$")
_DU_LINE = re.compile(r"^(\d+)\t(.+)$")


@dataclass(frozen=True)
class Measured:
    exclusive: int
    """Bytes only this path holds: what removing it frees."""
    shared: int
    """Bytes it shares with other paths (a realm with the version it was made from)."""

    def __add__(self, other: Measured) -> Measured:
        return Measured(self.exclusive + other.exclusive, self.shared + other.shared)


NOTHING = Measured(0, 0)


def file_bytes(path: Path) -> int:
    """The bytes a plain file holds on disk (0 when it is gone)."""
    try:
        return os.lstat(path).st_blocks * 512
    except OSError:
        return 0


def parse_qgroups(output: str) -> dict[int, Measured]:
    """Subvolume qgroups (``0/ID``) of ``btrfs qgroup show --raw``: by subvolume id, exclusive
    and referenced-but-not-exclusive bytes. Lines that are not such a qgroup (headers, higher
    level groups, a future column) are skipped."""
    found: dict[int, Measured] = {}
    for line in output.splitlines():
        match = _QGROUP_LINE.match(line)
        if match is None:
            continue
        referenced, exclusive = int(match[2]), int(match[3])
        found[int(match[1])] = Measured(exclusive, max(referenced - exclusive, 0))
    return found


def parse_filesystem_du(output: str) -> dict[str, Measured]:
    """``btrfs filesystem du --raw -s`` lines (Total, Exclusive, Set shared, Filename) by the
    file name as given."""
    found: dict[str, Measured] = {}
    for line in output.splitlines():
        match = _FI_DU_LINE.match(line)
        if match is not None:
            found[match[4]] = Measured(int(match[2]), int(match[3]))
    return found


def parse_du(output: str) -> dict[str, Measured]:
    found: dict[str, Measured] = {}
    for line in output.splitlines():
        match = _DU_LINE.match(line)
        if match is not None:
            found[match[2]] = Measured(int(match[1]), 0)
    return found


def qgroups_enabled(store: Store) -> dict[int, Measured] | None:
    """Every subvolume's qgroup numbers, or None where quotas are off (or being rescanned:
    their numbers are then wrong)."""
    if store.backend.name != "btrfs":
        return None
    result = run(["btrfs", "qgroup", "show", "--raw", store.root], check=False)
    stderr = str(result.stderr).lower()
    if result.returncode != 0 or "inconsistent" in stderr or "rescan" in stderr:
        return None
    return parse_qgroups(str(result.stdout))


def method_of(store: Store, qgroups: dict[int, Measured] | None) -> str:
    if store.backend.name != "btrfs":
        return DU
    return QGROUPS if qgroups is not None else FILESYSTEM_DU


def measure(store: Store, paths: Iterable[Path]) -> tuple[str, dict[Path, Measured]]:
    """Measure every path (trees, subvolumes, directories, files) in one go; return the method
    and the bytes of each (a missing path: nothing)."""
    wanted = list(dict.fromkeys(p for p in paths if os.path.lexists(p)))
    # Data still in memory has no extents yet (and qgroups count at a commit): write it first.
    syncfs(store.root)
    qgroups = qgroups_enabled(store)
    method = method_of(store, qgroups)
    found: dict[Path, Measured] = {}
    rest: list[Path] = []
    for path in wanted:
        if qgroups is not None and btrfs.is_subvolume(path):
            try:
                found[path] = qgroups.get(btrfs.subvolume_id(path), NOTHING)
                continue
            except OSError:
                pass
        if "\n" in str(path):
            found[path] = _walk(path)  # a name the tools' output cannot carry
        else:
            rest.append(path)
    if rest:
        tool = "du" if method == DU else "btrfs filesystem du"
        with log.step(f"Measuring {len(rest)} trees and files with {tool}"):
            found.update(_measure_with_tool(method, rest))
    return method, {path: found.get(path, NOTHING) for path in wanted}


def _measure_with_tool(method: str, paths: list[Path]) -> dict[Path, Measured]:
    if method == DU:
        argv = ["du", "-s", "-x", "-B1", "--", *map(str, paths)]
        parse = parse_du
    else:
        argv = ["btrfs", "filesystem", "du", "--raw", "-s", *map(str, paths)]
        parse = parse_filesystem_du
    # A path removed meanwhile makes the tool fail for it alone: its line is missing.
    result = run(argv, check=False)
    by_name = parse(str(result.stdout))
    if result.returncode != 0 and not by_name:
        raise RealmsError(f"{argv[0]} {argv[1]} failed: {str(result.stderr).strip()[-200:]}")
    return {path: by_name.get(str(path), NOTHING) for path in paths}


def _walk(path: Path) -> Measured:
    total = file_bytes(path)
    if path.is_dir() and not path.is_symlink():
        for directory, _subdirectories, files in os.walk(path):
            total += sum(file_bytes(Path(directory) / name) for name in files)
    return Measured(total, 0)
