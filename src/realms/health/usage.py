"""``realms df``: the bytes each appimg version, realm, cache and leftover holds.

Each object is measured once, all in one go (:mod:`realms.health.measure`: btrfs qgroups where
they are enabled; else ``btrfs filesystem du``, except for snapshots of a tree measured too (a
realm's root, a version updated from another one), measured from what changed in them since;
plain ``du`` on the copy backend), as two numbers: the bytes it holds **exclusively** (what
deleting it would free) and the bytes it **shares** with other objects (a realm made from a
version shares all of that version's files until it changes them). The objects:

- every version of every appimg (its tree, or its image file), and a kept update;
- every realm: its root (a tree realm's ``rootfs``, an image realm's writable ``upper``
  layer; the image itself is its version's), its ``home``, its ``snapshots``;
- the caches, one entry per directory of ``cache/`` (builds, stages, packages, blobs,
  archive, ...);
- the leftovers: temporary names (what the next command's sweep deletes), and ``removed/``
  (homes kept by ``realms remove --keep-home``: never freed by gc);
- what ``realms gc`` would free now (its plan, :func:`realms.health.gc.plan`), measured with
  the rest.

Exclusive bytes add up to a lower bound of what the objects hold together; shared bytes count
the same extents once per object that shares them, so they do not add up. A row measured from
its changes says that its shared bytes are an estimate (``shared_estimated``): its exclusive
bytes are exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realms import origin
from realms.health import gc, references
from realms.health.measure import DU, Measured, file_bytes, measure
from realms.kinds import IMAGE_KINDS
from realms.store import Store


@dataclass(frozen=True)
class Usage:
    object: str
    """``APPIMG vN``, ``APPIMG kept update``, a realm's name, a cache's name."""
    kind: str
    """version, kept-update, root, upper, home, snapshots."""
    exclusive: int
    shared: int
    path: str = ""
    note: str = ""
    """``current``, ``pinned`` (versions)."""
    shared_estimated: bool = False
    """Measured from what changed since its snapshot (see :mod:`realms.health.measure`)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "object": self.object,
            "kind": self.kind,
            "exclusive": self.exclusive,
            "shared": self.shared,
            "shared_estimated": self.shared_estimated,
            "path": self.path,
            "note": self.note,
        }


@dataclass(frozen=True)
class Part:
    """A cache or a kind of leftover: its bytes, and how many entries it has."""

    exclusive: int
    shared: int
    entries: int
    path: str

    def to_json(self) -> dict[str, Any]:
        return {
            "exclusive": self.exclusive,
            "shared": self.shared,
            "entries": self.entries,
            "path": self.path,
        }


@dataclass(frozen=True)
class DiskUsage:
    method: str
    """"qgroups", "filesystem du" (btrfs without quotas) or "du" (the copy backend)."""
    objects: list[Usage] = field(default_factory=list)
    caches: dict[str, Part] = field(default_factory=dict)
    leftovers: dict[str, Part] = field(default_factory=dict)
    """``temporary`` (temporary names) and ``removed`` (homes kept in removed/)."""
    gc_would_free: int = 0
    filesystem_size: int = 0
    filesystem_used: int = 0

    @property
    def exclusive(self) -> int:
        parts = [*self.caches.values(), *self.leftovers.values()]
        return sum(u.exclusive for u in self.objects) + sum(p.exclusive for p in parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "objects": [u.to_json() for u in self.objects],
            "caches": {name: part.to_json() for name, part in self.caches.items()},
            "leftovers": {name: part.to_json() for name, part in self.leftovers.items()},
            "gc_would_free": self.gc_would_free,
            "exclusive": self.exclusive,
            "filesystem": {"size": self.filesystem_size, "used": self.filesystem_used},
        }


@dataclass(frozen=True)
class _Wanted:
    """An object to measure: its row, and the paths whose bytes it sums."""

    name: str
    kind: str
    paths: list[Path]
    path: Path
    note: str = ""


def disk_usage(store: Store) -> DiskUsage:
    """Measure every object of the store (see the module's doc); nothing is changed."""
    refs = references.collect(store)
    rows = _versions(store, refs) + _realms(store)
    caches = {name: _entries(store.cache_dir / name) for name in _names(store.cache_dir)}
    cache_paths = {name: _cache_paths(store.cache_dir / name) for name in caches}
    temporary = [p for p in store.leftovers() if p.parent != store.removed_dir]
    removed = [store.removed_dir / n for n in _names(store.removed_dir)]
    plan = gc.plan(store)
    wanted = [p for row in rows for p in row.paths]
    wanted += [p for paths in cache_paths.values() for p in paths]
    wanted += temporary + removed + [c.path for c in plan.candidates if c.tree]
    method, measured = measure(store, wanted)

    def total(paths: list[Path]) -> Measured:
        return sum((measured.get(p, Measured(0, 0)) for p in paths), Measured(0, 0))

    objects = []
    for row in rows:
        found = total(row.paths)
        usage = Usage(
            row.name,
            row.kind,
            found.exclusive,
            found.shared,
            str(row.path),
            row.note,
            found.changes,
        )
        objects.append(usage)
    caches_found = {}
    for name, count in caches.items():
        found = total(cache_paths[name])
        path = str(store.cache_dir / name)
        caches_found[name] = Part(found.exclusive, found.shared, count, path)
    found_temporary, found_removed = total(temporary), total(removed)
    leftovers = {
        "temporary": Part(found_temporary.exclusive, found_temporary.shared, len(temporary), ""),
        "removed": Part(
            found_removed.exclusive, found_removed.shared, len(removed), str(store.removed_dir)
        ),
    }
    sizes = {
        c.path: measured[c.path].exclusive if c.tree else file_bytes(c.path)
        for c in plan.candidates
    }
    info = os.statvfs(store.root)
    size = info.f_blocks * info.f_frsize
    used = size - info.f_bfree * info.f_frsize
    return DiskUsage(
        method,
        objects,
        caches_found,
        leftovers,
        sum(sizes.values()),
        size,
        used,
    )


def _names(directory: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(directory) if not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _entries(directory: Path) -> int:
    try:
        return len(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return 0


def _cache_paths(directory: Path) -> list[Path]:
    """A cache as the paths measured: each entry of the build and stage caches (trees that gc
    frees one by one), the whole directory of the others (files)."""
    if directory.name in ("builds", "stages"):
        return [directory / n for n in _names(directory)]
    return [directory]


def _versions(store: Store, refs: references.References) -> list[_Wanted]:
    rows = []
    for name, record in refs.records.items():
        for version in record.versions:
            path = store.version_path(name, version)
            marks = [m for m, on in (("current", version.version == record.current),) if on]
            marks += ["pinned"] if version.pinned else []
            rows.append(
                _Wanted(f"{name} v{version.version}", "version", [path], path, ", ".join(marks))
            )
        kept = store.kept_path(name)
        if os.path.lexists(kept):
            rows.append(_Wanted(f"{name} kept update", "kept-update", [kept], kept))
    return rows


def _realms(store: Store) -> list[_Wanted]:
    rows = []
    origins = origin.all_origins(store.realms_dir)
    for name in _names(store.realms_dir):
        files = store.realm(name)
        made = origins.get(name)
        image = made is not None and made.kind in IMAGE_KINDS
        root = files.upper if image else files.rootfs
        rows.append(_Wanted(name, "upper" if image else "root", [root], root))
        rows.append(_Wanted(name, "home", [files.home], files.home))
        if _names(files.snapshots):
            rows.append(_Wanted(name, "snapshots", [files.snapshots], files.snapshots))
    return rows


def method_line(result: DiskUsage) -> str:
    """How the numbers were measured, in words."""
    line = {
        "qgroups": "btrfs qgroups (subvolumes); btrfs filesystem du (other files)",
        "filesystem du": "btrfs filesystem du (quotas are not enabled on this filesystem)",
        DU: "du (copy backend: nothing is known to be shared)",
    }.get(result.method, result.method)
    estimated = sum(u.shared_estimated for u in result.objects)
    if estimated:
        line += (
            f"; {estimated} snapshots (realm roots, updated versions) from what changed in "
            "them since they were made (btrfs tree search, as find-new): exclusive exact, "
            "shared estimated"
        )
    return line
