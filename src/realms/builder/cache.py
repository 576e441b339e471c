"""The build caches, in the store's ``cache/`` directory.

- ``cache/packages/RELEASE/``: downloaded .deb files, shared by every build of that release.
  After a successful build only the files of the packages that build installed are kept, so the
  cache does not grow with every new package version.
- ``cache/builds/KEY``: the finished root filesystem of a build, read-only, keyed by the build
  key (the config's inputs and the archive state, :mod:`realms.builder.archive`). A build whose
  key is unchanged reuses it instead of building again; the newest few are kept.
- ``cache/stages/KEY``: the bootstrap stage of a build (:mod:`realms.builder.stages`), from
  which a build with another package list starts.

Both tree caches are a :class:`Shelf`: read-only trees (snapshots on btrfs) by key, each with a
record beside it (``KEY.json``: what it was made from, to explain a miss) and a marker of its
last use (``KEY.used``); the least recently used go first. Entries are added under a temporary
name and renamed into place, like everything in the store, under the cache lock; an entry is
cloned holding that lock shared, so that another build's eviction cannot take it away meanwhile.
Records are read as damaged input: one that does not parse is ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realms.faults import checkpoint
from realms.store import NEW_PREFIX, Store
from realms.system.fs import atomic_write, fsync_dir, read_in_root, rename_noreplace, token

RESULTS_KEPT = 3
STAGES_KEPT = 2
MAX_RECORD = 1 << 20
MAX_STATUS = 64 << 20
_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Shelf:
    """Read-only trees of one kind, by key (see the module's doc)."""

    directory: Path
    kept: int

    def _ready(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.directory

    def lookup(self, key: str) -> Path | None:
        """The tree of ``key``, marked as just used; None when it is not kept."""
        path = self.directory / key
        if not path.is_dir():
            return None
        (self.directory / f"{key}.used").touch()  # touch() also renews an existing file's time
        return path

    def clone(self, store: Store, key: str, target: Path) -> None:
        """Make ``target`` a writable clone of the tree ``key``."""
        with store.cache_lock(shared=True):
            store.backend.clone(self.directory / key, target)

    def keep(self, store: Store, key: str, tree: Path, record: dict[str, Any]) -> None:
        """Keep a read-only copy (a snapshot on btrfs) of ``tree`` as ``key``, with ``record``
        beside it, then drop the least recently used beyond the few kept."""
        directory = self._ready()
        with store.cache_lock():
            if (directory / key).exists():
                return
            temporary = directory / f"{NEW_PREFIX}{key}.{token()}"
            store.backend.clone(tree, temporary)
            store.backend.freeze(temporary)
            checkpoint("build-cache:staged")
            try:
                rename_noreplace(temporary, directory / key)
            except OSError:
                store.backend.remove(temporary)
                return
            atomic_write(directory / f"{key}.json", json.dumps(record, sort_keys=True))
            (directory / f"{key}.used").touch()
            fsync_dir(directory)
            self._evict(store)

    def records(self) -> list[tuple[str, dict[str, Any]]]:
        """The keys and records of the kept trees, the most recently used first."""
        found = []
        for key in self._keys():
            try:
                with open(self.directory / f"{key}.json", "rb") as handle:
                    data = json.loads(handle.read(MAX_RECORD))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                found.append((key, data))
        return found

    def _keys(self) -> list[str]:
        """The kept keys, the most recently used first."""
        try:
            names = [entry.name for entry in self.directory.iterdir()]
        except FileNotFoundError:
            return []

        def last_used(key: str) -> float:
            try:
                return (self.directory / f"{key}.used").stat().st_mtime
            except OSError:
                return 0.0

        keys = [name for name in names if _KEY.fullmatch(name)]
        return sorted(keys, key=last_used, reverse=True)

    def _evict(self, store: Store) -> None:
        """Drop all but the most recently used few; the caller holds the cache lock."""
        for old in self._keys()[self.kept :]:
            store.discard(self.directory / old)
            for suffix in (".used", ".json"):
                (self.directory / f"{old}{suffix}").unlink(missing_ok=True)


def results(store: Store) -> Shelf:
    """Finished builds, by build key."""
    return Shelf(store.build_cache_dir, RESULTS_KEPT)


def stages(store: Store) -> Shelf:
    """Bootstrap stages, by stage key."""
    return Shelf(store.stage_cache_dir, STAGES_KEPT)


def packages_dir(store: Store, release: str) -> Path:
    path = store.packages_dir(release)
    (path / "partial").mkdir(parents=True, exist_ok=True)
    return path


def lookup(store: Store, key: str) -> Path | None:
    """The cached result of the build ``key``, marked as just used."""
    return results(store).lookup(key)


def clone(store: Store, key: str, target: Path) -> None:
    """Make ``target`` a writable clone of the cached build ``key``."""
    results(store).clone(store, key, target)


def keep(store: Store, key: str, tree: Path, record: dict[str, Any] | None = None) -> None:
    """Keep a read-only copy of a finished build, with its record, then drop old ones."""
    results(store).keep(store, key, tree, record or {})


def installed_debs(tree: Path) -> set[str]:
    """The .deb file names of the packages installed in ``tree`` (from dpkg's status)."""
    try:
        # The tree is a build's: its paths are not followed out of it.
        status = read_in_root(tree, "var/lib/dpkg/status", MAX_STATUS).decode(errors="replace")
    except OSError:
        return set()
    names = set()
    for stanza in status.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.MULTILINE))
        if "Package" in fields and "Version" in fields:
            version = fields["Version"].replace(":", "%3a")
            names.add(f"{fields['Package']}_{version}_{fields.get('Architecture', 'all')}.deb")
    return names


def prune_packages(directory: Path, tree: Path) -> int:
    """Delete cached .deb files that the build in ``tree`` did not install; return how many."""
    wanted = installed_debs(tree)
    if not wanted:
        return 0
    removed = 0
    for deb in directory.glob("*.deb"):
        if deb.name not in wanted:
            deb.unlink(missing_ok=True)
            removed += 1
    return removed
