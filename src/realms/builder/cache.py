"""The build caches, in the store's ``cache/`` directory.

- ``cache/packages/RELEASE/``: downloaded .deb files, shared by every build of that release.
  After a successful build only the files of the packages that build installed are kept, so the
  cache does not grow with every new package version.
- ``cache/builds/KEY``: the finished root filesystem of a build, read-only, keyed by the digest
  of the build's inputs (:func:`realms.builder.config.inputs_digest`). A build whose inputs
  are unchanged reuses it instead of building again; the newest few are kept.

Entries are added under a temporary name and renamed into place, like everything in the store,
under the cache lock; a finished build is cloned holding that lock shared, so that another
build's eviction cannot take it away meanwhile.
"""

from __future__ import annotations

import re
from pathlib import Path

from realms.store import NEW_PREFIX, Store
from realms.system.fs import fsync_dir, rename_noreplace, token

RESULTS_KEPT = 3


def packages_dir(store: Store, release: str) -> Path:
    path = store.packages_dir(release)
    (path / "partial").mkdir(parents=True, exist_ok=True)
    return path


def _results(store: Store) -> Path:
    path = store.build_cache_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


def lookup(store: Store, key: str) -> Path | None:
    """The cached result of the build with inputs ``key``, marked as just used."""
    path = _results(store) / key
    if not path.is_dir():
        return None
    (_results(store) / f"{key}.used").touch()  # touch() also renews an existing file's time
    return path


def clone(store: Store, key: str, target: Path) -> None:
    """Make ``target`` a writable clone of the cached build ``key``."""
    with store.cache_lock(shared=True):
        store.backend.clone(_results(store) / key, target)


def keep(store: Store, key: str, tree: Path) -> None:
    """Keep a read-only copy (a snapshot on btrfs) of a finished build, then drop old ones."""
    results = _results(store)
    with store.cache_lock():
        if (results / key).exists():
            return
        temporary = results / f"{NEW_PREFIX}{key}.{token()}"
        store.backend.clone(tree, temporary)
        store.backend.freeze(temporary)
        try:
            rename_noreplace(temporary, results / key)
        except OSError:
            store.backend.remove(temporary)
            return
        (results / f"{key}.used").touch()
        fsync_dir(results)
        _evict(store)


def _evict(store: Store) -> None:
    """Drop all but the newest few results; the caller holds the cache lock."""
    results = _results(store)
    entries = [entry for entry in results.iterdir() if re.fullmatch(r"[0-9a-f]{64}", entry.name)]

    def last_used(entry: Path) -> float:
        marker = results / f"{entry.name}.used"
        return marker.stat().st_mtime if marker.exists() else 0.0

    for old in sorted(entries, key=last_used, reverse=True)[RESULTS_KEPT:]:
        store.discard(old)
        (results / f"{old.name}.used").unlink(missing_ok=True)


def _installed_debs(tree: Path) -> set[str]:
    """The .deb file names of the packages installed in ``tree`` (from dpkg's status)."""
    try:
        status = (tree / "var/lib/dpkg/status").read_text(errors="replace")
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
    wanted = _installed_debs(tree)
    if not wanted:
        return 0
    removed = 0
    for deb in directory.glob("*.deb"):
        if deb.name not in wanted:
            deb.unlink(missing_ok=True)
            removed += 1
    return removed
