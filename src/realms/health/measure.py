"""How many bytes paths of the store hold alone and share with others, measured in one go.

Three methods, chosen per store:

- ``qgroups``: where the btrfs filesystem has quotas enabled (realms never enables them: that
  costs every write on the whole filesystem), ``btrfs qgroup show --raw`` reports every
  subvolume's referenced and exclusive bytes in one call, exact and without a walk. Paths that
  are not subvolumes (homes, upper layers, image files, cache directories) are measured as below.
- ``filesystem du``: btrfs without quotas. ``btrfs filesystem du --raw -s`` gives, per path,
  the bytes of extents that nothing else references (exclusive) and the bytes of extents it
  shares with other files, counted once ("set shared"); it walks every file of what it
  measures (FIEMAP per file: ~45 us a file, a minute for 100 realms of a 10,000-file image).
  So it walks only what cannot be measured otherwise. A subvolume that is a snapshot of
  another one measured here (a realm's root of its version, a version of the version it was
  updated from) whose source stayed read-only since is measured from what changed since it
  was made (:mod:`realms.health.changes`, the btrfs trees searched: no walk): its exclusive
  bytes exactly, its shared bytes as its source's bytes less what it no longer references plus
  what it added (``estimated``). The rest (the first version of each appimg, homes, upper
  layers, snapshots, caches, leftovers) goes to ONE ``btrfs filesystem du`` call (each call
  costs a start); an empty directory is not given to it.
- ``du``: on the copy backend (trees are plain copies), ``du -s -x -B1`` in one call; nothing is
  known to be shared.

The filesystem is synced first: data still in memory has no extents for FIEMAP nor in the
trees, and qgroups count at a transaction's commit. A path that disappears while it is
measured (a command removed it) counts as empty. Files of the caches (blobs, .deb files) are
measured with ``lstat`` (allocated blocks), never a tool.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from realms import log
from realms.errors import RealmsError
from realms.health import changes
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
    changes: bool = False
    """Measured from what changed since its snapshot: ``shared`` is an estimate."""

    def __add__(self, other: Measured) -> Measured:
        return Measured(
            self.exclusive + other.exclusive,
            self.shared + other.shared,
            self.changes or other.changes,
        )


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
        elif _empty_directory(path):
            found[path] = NOTHING
        else:
            rest.append(path)
    snapshots: dict[Path, tuple[changes.SubvolumeInfo, Path]] = {}
    if method == FILESYSTEM_DU:
        snapshots = _snapshots_of_measured(rest)
        rest = [path for path in rest if path not in snapshots]
    if rest:
        tool = "du" if method == DU else "btrfs filesystem du"
        with log.step(f"Measuring {len(rest)} trees and files with {tool}"):
            found.update(_measure_with_tool(method, rest))
    if snapshots:
        with log.step(f"Measuring {len(snapshots)} snapshots from what changed in them"):
            failed = _measure_changes(store, snapshots, found)
        if failed:
            found.update(_measure_with_tool(method, failed))
    return method, {path: found.get(path, NOTHING) for path in wanted}


def _empty_directory(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False  # a file, or gone: the tool says


def _snapshots_of_measured(paths: list[Path]) -> dict[Path, tuple[changes.SubvolumeInfo, Path]]:
    """The subvolumes among ``paths`` that are snapshots of another one of ``paths`` which has
    not changed since (read-only, last changed before the snapshot): each with its own
    information and its source's path. Empty where the ioctls cannot be used."""
    infos: dict[Path, changes.SubvolumeInfo] = {}
    try:
        for path in paths:
            if btrfs.is_subvolume(path):
                try:
                    infos[path] = changes.subvolume_info(path)
                except OSError:
                    continue  # gone meanwhile: the tool says
    except changes.Unavailable as error:
        log.debug(f"measuring every tree with btrfs filesystem du: {error}")
        return {}
    by_uuid = {info.uuid: path for path, info in infos.items()}
    found = {}
    for path, info in infos.items():
        source = by_uuid.get(info.parent_uuid)
        if source is None or source == path:
            continue
        parent = infos[source]
        if parent.readonly and parent.ctransid <= info.otransid:
            found[path] = (info, source)
    return found


def _measure_changes(
    store: Store,
    snapshots: dict[Path, tuple[changes.SubvolumeInfo, Path]],
    found: dict[Path, Measured],
) -> list[Path]:
    """Measure each snapshot from its source's bytes and what changed since, sources first
    (a version's source can be a snapshot too); return those that could not be measured so."""
    failed: list[Path] = []
    done: dict[Path, Measured] = {}

    def measured(path: Path) -> Measured | None:
        if path in done or path not in snapshots:
            return done.get(path, found.get(path))
        info, source = snapshots[path]
        before = measured(source)
        try:
            if before is None:
                raise OSError("its source was not measured")
            change = changes.compare(fd, info, changes.subvolume_info(source))
        except (OSError, changes.Unavailable) as error:
            log.debug(f"measuring {path} with btrfs filesystem du: {error}")
            failed.append(path)
            return None
        held = before.exclusive + before.shared
        shared = held - change.dropped + change.added + change.new_shared
        done[path] = Measured(change.exclusive, max(shared, 0), changes=True)
        return done[path]

    fd = os.open(store.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # Deep chains (an appimg's versions) are followed iteratively from the oldest.
        for path in sorted(snapshots, key=lambda p: snapshots[p][0].otransid):
            measured(path)
    finally:
        os.close(fd)
    found.update(done)
    return failed


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
