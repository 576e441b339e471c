"""``realms gc``: free what nothing refers to, and say what it freed and what it left.

One plan (:func:`plan`) decides what may go; ``--dry-run`` prints it, a real run frees exactly
it, checking each item again under the lock that covers it (something that changed meanwhile
is left, and reported as skipped). What may go:

- **leftovers**: temporary names of killed commands (:func:`realms.store.txn.find_leftovers`),
  each freed holding its owner's locks taken without waiting, as the sweep does: a leftover
  whose lock is held belongs to a command that runs and is skipped; one no lock covers goes
  once it is a minute old. Version trees and kept updates that an appimg's record no longer
  names (a prune killed between the record and the delete) go too, under the appimg's lock.
- **versions** beyond ``keep-versions`` per appimg: the rule of ``realms appimg prune``
  (:func:`realms.appimg.versions.prunable`): never the current one, a pinned one, or one that
  realms or realm snapshots run on.
- **finished builds** (``cache/builds/KEY``) whose key no version records, under the cache
  lock; the cache's own eviction (the few most recently used) still applies on every build.
- **.deb files** in ``cache/packages/`` that no remaining finished build installed, and apt's
  partial downloads there. No lock covers this cache, so while any build runs it is left alone.
- **registry blobs** that no version's manifests name (the manifests of pulled and pushed
  versions that are in the cache, and what they name), unless written in the last hour (a pull
  or a push that runs may be using it); partial downloads and push files older than a day
  whose writer's ``flock`` is free.

``removed/`` holds the homes of removed realms: gc reports it and never frees it. When an
appimg's record is damaged, nothing it might refer to (finished builds, blobs) is freed.
Everything gc deletes is renamed away first or deleted whole, so a gc killed at any point
leaves a consistent store and the next command (or gc) removes what it left.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realms import log
from realms.appimg.record import load_record
from realms.errors import Busy, RealmsError
from realms.health import references
from realms.health.measure import file_bytes, measure
from realms.store import Store
from realms.store.txn import STALE_AFTER, Leftover, find_leftovers, remove

BLOB_YOUNG = 3600.0
"""A blob written this recently may belong to a pull or push that runs: it stays."""
PARTIAL_STALE = 86400.0
"""A partial download or push file this old was left by a command that ended."""
_KEY = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"v\d+(\.img)?")


@dataclass(frozen=True)
class Freed:
    what: str
    """leftover, unrecorded version, version, build, package, blob, partial blob."""
    path: str
    bytes: int
    """Bytes it holds alone (what deleting it frees; extents it shares stay)."""

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "path": self.path, "bytes": self.bytes}


@dataclass(frozen=True)
class Skipped:
    what: str
    path: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class GcResult:
    dry_run: bool
    freed: list[Freed] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    removed_homes: int = 0
    """Entries in ``removed/`` (homes of removed realms): reported, never freed."""
    removed_bytes: int = 0

    @property
    def total(self) -> int:
        return sum(entry.bytes for entry in self.freed)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "freed": [entry.to_json() for entry in self.freed],
            "total": self.total,
            "skipped": [entry.to_json() for entry in self.skipped],
            "removed": {"entries": self.removed_homes, "bytes": self.removed_bytes},
        }


@dataclass(frozen=True)
class Candidate:
    """Something the plan frees: ``free`` deletes it (checking again under its lock) and
    returns a reason when it had to leave it after all."""

    what: str
    path: Path
    tree: bool
    """Measured as a tree (a tool); else as a plain file."""
    free: Callable[[], str | None]


@dataclass
class Plan:
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def add(self, what: str, path: Path, free: Callable[[], str | None], tree: bool) -> None:
        self.candidates.append(Candidate(what, path, tree, free))

    def skip(self, what: str, path: Path, reason: str) -> None:
        self.skipped.append(Skipped(what, str(path), reason))


def plan(store: Store) -> Plan:
    """What gc would free now, and what it leaves and why (nothing is changed)."""
    found = Plan()
    refs = references.collect(store)
    for name in refs.damaged:
        found.skip("appimg", store.record_path(name), "its record is damaged (see realms check)")
    _leftovers(store, found)
    _unrecorded(store, refs, found)
    _versions(store, refs, found)
    builds = references.running_builds(store, list(refs.records))
    if builds:
        reason = f"a build runs ({', '.join(builds)})"
        found.skip("build", store.build_cache_dir, reason)
        found.skip("package", store.cache_dir / "packages", reason)
    elif refs.damaged:
        found.skip("build", store.build_cache_dir, "an appimg's record is damaged")
    else:
        kept = _builds(store, refs, found)
        _packages(store, kept, found)
    if refs.damaged:
        found.skip("blob", store.blob_cache_dir, "an appimg's record is damaged")
    else:
        _blobs(store, refs, found)
    _partials(store, found)
    return found


def sizes(store: Store, candidates: list[Candidate]) -> dict[Path, int]:
    """The bytes each candidate holds alone: trees measured in one go, files by their blocks."""
    _method, measured = measure(store, [c.path for c in candidates if c.tree])
    return {
        c.path: measured[c.path].exclusive if c.path in measured else file_bytes(c.path)
        for c in candidates
    }


def collect_garbage(store: Store, *, dry_run: bool = False) -> GcResult:
    """Free what :func:`plan` finds (``dry_run``: only say it)."""
    found = plan(store)
    size = sizes(store, found.candidates)
    freed, skipped = [], list(found.skipped)
    if not dry_run and found.candidates:
        with log.step(f"Freeing {len(found.candidates)} unreferenced things"):
            for candidate in found.candidates:
                try:
                    reason = candidate.free()
                except (OSError, RealmsError) as error:
                    reason = f"could not delete it: {error}"
                if reason is not None:
                    skipped.append(Skipped(candidate.what, str(candidate.path), reason))
                else:
                    freed.append(Freed(candidate.what, str(candidate.path), size[candidate.path]))
        store.reclaim()
    elif dry_run:
        freed = [Freed(c.what, str(c.path), size[c.path]) for c in found.candidates]
    homes = _entries(store.removed_dir)
    _method, removed = measure(store, [store.removed_dir]) if homes else ("", {})
    kept = removed[store.removed_dir].exclusive if homes else 0
    return GcResult(dry_run, freed, skipped, len(homes), kept)


def _entries(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


# Leftovers


def _leftovers(store: Store, found: Plan) -> None:
    now = time.time()
    for leftover in find_leftovers(store):
        path = leftover.path
        if path.parent == store.removed_dir:
            # A temporary name in removed/ is a home on its way in: never ours to delete.
            found.skip("leftover", path, "in removed/ (homes of removed realms are never freed)")
            continue
        if not leftover.locks:
            try:
                young = now - os.lstat(path).st_mtime <= STALE_AFTER
            except FileNotFoundError:
                continue
            if young:
                found.skip("leftover", path, "made in the last minute: a command may be writing it")
                continue

        def free(leftover: Leftover = leftover) -> str | None:
            with ExitStack() as stack:
                for lock in leftover.locks:
                    stack.enter_context(lock())
                remove(store, store.backend, leftover.path)
            return None

        try:
            with ExitStack() as stack:
                for lock in leftover.locks:
                    stack.enter_context(lock())
        except Busy as busy:
            found.skip("leftover", path, f"its command runs: {busy.message}")
            continue
        except RealmsError as error:  # a name no lock file may have: not ours to judge
            found.skip("leftover", path, str(error))
            continue
        found.add("leftover", path, _busy_is_skip(free), tree=True)


def _busy_is_skip(free: Callable[[], str | None]) -> Callable[[], str | None]:
    def guarded() -> str | None:
        try:
            return free()
        except Busy as busy:
            return f"its command runs: {busy.message}"

    return guarded


def _unrecorded(store: Store, refs: references.References, found: Plan) -> None:
    """Version trees and kept updates in an appimg's directory that its record does not name."""
    for name, record in refs.records.items():
        known = {v.tree_name() for v in record.versions}
        directory = store.appimg_dir(name)
        for entry in _entries(directory):
            stray = entry == "kept-update" and record.kept is None
            if entry in known or not (stray or _VERSION.fullmatch(entry)):
                continue

            def free(name: str = name, entry: str = entry) -> str | None:
                with store.appimg_lock(name):
                    record = load_record(store, name)
                    if entry in {v.tree_name() for v in record.versions} or (
                        entry == "kept-update" and record.kept is not None
                    ):
                        return "its record names it again"
                    store.discard(store.appimg_dir(name) / entry)
                return None

            found.add("unrecorded version", directory / entry, free, tree=True)


# Versions


def _versions(store: Store, refs: references.References, found: Plan) -> None:
    from realms.appimg import versions

    keep = store.config.keep_versions
    for name, record in refs.records.items():
        for version in versions.prunable(store, name, record, keep):

            def free(name: str = name, number: int = version.version) -> str | None:
                return _free_version(store, name, number, keep)

            found.add("version", store.version_path(name, version), free, tree=True)


def _free_version(store: Store, name: str, number: int, keep: int) -> str | None:
    """Delete one version if prune's rule still says so (as :func:`versions.prune` does it:
    the record first, then the activations nobody uses, then the tree)."""
    from realms import activation
    from realms.appimg import versions
    from realms.appimg.record import changing

    with store.appimg_lock(name):
        with changing(store, name, locked=True) as record:
            prunable = versions.prunable(store, name, record, keep)
            doomed = [v for v in prunable if v.version == number]
            if not doomed:
                return "no longer beyond the keep count, or in use, current or pinned"
            record.versions = [v for v in record.versions if v.version != number]
        with store.activation_lock(name):
            activation.release_unused(store, name)
        store.discard(store.version_path(name, doomed[0]))
    return None


# Build cache and packages


def _builds(store: Store, refs: references.References, found: Plan) -> list[Path]:
    """Add the finished builds no version records; return the ones that stay."""
    directory = store.build_cache_dir
    names = _entries(directory)
    keys = [n for n in names if _KEY.fullmatch(n)]
    kept = []
    for key in keys:
        if key in refs.build_keys:
            kept.append(directory / key)
            continue

        def free(key: str = key) -> str | None:
            with store.cache_lock():
                if key in references.collect(store).build_keys:
                    return "a version records its key now"
                store.discard(directory / key)
                for suffix in (".used", ".json"):
                    (directory / f"{key}{suffix}").unlink(missing_ok=True)
            return None

        found.add("build", directory / key, free, tree=True)
    for name in names:
        owner, dot, suffix = name.partition(".")
        if dot and suffix in ("used", "json") and _KEY.fullmatch(owner) and owner not in keys:
            found.add("build", directory / name, _unlinker(directory / name), tree=False)
    return kept


def _unlinker(path: Path) -> Callable[[], str | None]:
    def free() -> str | None:
        path.unlink(missing_ok=True)
        return None

    return free


def _packages(store: Store, kept: list[Path], found: Plan) -> None:
    from realms.builder import cache

    wanted: set[str] = set()
    for tree in kept:
        installed = cache.installed_debs(tree)
        if not installed:
            found.skip("package", store.cache_dir / "packages", f"{tree} has no dpkg status")
            return
        wanted |= installed
    for release in _entries(store.cache_dir / "packages"):
        directory = store.cache_dir / "packages" / release
        for name in _entries(directory):
            if name.endswith(".deb") and name not in wanted:
                found.add("package", directory / name, _unlinker(directory / name), tree=False)
        for name in _entries(directory / "partial"):
            path = directory / "partial" / name
            if path.is_file() and not path.is_symlink():
                found.add("package", path, _unlinker(path), tree=False)


# Blobs


def _blobs(store: Store, refs: references.References, found: Plan) -> None:
    directory = store.blob_cache_dir / "sha256"
    now = time.time()
    for name in _entries(directory):
        path = directory / name
        if not _KEY.fullmatch(name) or f"sha256:{name}" in refs.blobs:
            continue
        try:
            young = now - os.lstat(path).st_mtime < BLOB_YOUNG
        except FileNotFoundError:
            continue
        if young:
            found.skip("blob", path, "written in the last hour: a pull or push may use it")
            continue
        found.add("blob", path, _unlinker(path), tree=False)


def _partials(store: Store, found: Plan) -> None:
    """Partial downloads (``partial/sha256-HEX``, resumed by the next pull) and push files
    (``partial/.push.*``) older than a day whose writer's lock is free."""
    directory = store.blob_cache_dir / "partial"
    now = time.time()
    for name in _entries(directory):
        path = directory / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        if now - info.st_mtime < PARTIAL_STALE:
            continue
        reason = _partial_lock(path, lambda: None)
        if reason is not None:
            found.skip("partial blob", path, reason)
            continue

        def free(path: Path = path) -> str | None:
            return _partial_lock(path, lambda: path.unlink(missing_ok=True))

        found.add("partial blob", path, free, tree=False)


def _partial_lock(path: Path, then: Callable[[], None]) -> str | None:
    """Run ``then`` holding the partial file's ``flock`` (taken without waiting): its writer
    holds it while it writes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return "gone already"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "a pull or push is writing it"
        then()
    finally:
        os.close(fd)
    return None
