"""An appimg's versions: listing them, rolling back, pruning, pinning.

Rollback moves the current version to an earlier one and records that in the appimg's history;
no tree is copied or deleted, and realms are not touched (realms made from a later version show
as outdated). Prune deletes old versions beyond a count, never the current one and never a pinned
one. Every change is made under the appimg's lock and written atomically
(:func:`realms.appimg.record.changing`).
"""

from __future__ import annotations

from dataclasses import dataclass

from realms import activation
from realms.appimg.commit import reconcile
from realms.appimg.record import AppimgRecord, Change, Version, changing, load_record
from realms.errors import InvalidInput, NotFound, RealmsError
from realms.store import Store
from realms.units import now


def versions(store: Store, name: str) -> AppimgRecord:
    return load_record(store, name)


def _require_version(record: AppimgRecord, number: int) -> Version:
    found = record.version(number)
    if found is None:
        known = ", ".join(str(v.version) for v in record.versions)
        raise NotFound(f"appimg {record.name!r} has no version {number} (it has {known})")
    return found


def rollback(store: Store, name: str, number: int | None = None) -> tuple[int, int]:
    """Make version ``number`` (default: the newest one older than the current) current;
    return (previous current, new current)."""
    store.sweep()
    with changing(store, name) as record:
        if number is None:
            older = [v.version for v in record.versions if v.version < record.current]
            if not older:
                raise RealmsError(
                    f"appimg {name!r} has no version older than the current one "
                    f"({record.current}) to roll back to"
                )
            number = max(older)
        target = _require_version(record, number)
        if target.version == record.current:
            raise InvalidInput(f"version {number} of appimg {name!r} is already current")
        previous = record.current
        record.current = target.version
        record.record(Change(now(), "rollback", target.version, f"from version {previous}"))
    return previous, target.version


def set_pinned(store: Store, name: str, number: int, pinned: bool) -> Version:
    store.sweep()
    with changing(store, name) as record:
        version = _require_version(record, number)
        version.pinned = pinned
    return version


@dataclass(frozen=True)
class Pruned:
    removed: list[int]
    kept: list[int]
    in_use: dict[int, list[str]]
    """Old image versions kept because realms run on them."""


def prunable(store: Store, name: str, record: AppimgRecord, keep: int) -> list[Version]:
    """The versions :func:`prune` deletes (``realms gc`` lists the same): all but the ``keep``
    newest, never the current one, a pinned one, or one realms run on."""
    newest = sorted((v.version for v in record.versions), reverse=True)[:keep]
    # Realms on an image version run on it: it stays while they exist.
    in_use = activation.image_users(store, name)
    return [
        v
        for v in record.versions
        if v.version not in newest
        and v.version != record.current
        and not v.pinned
        and v.version not in in_use
    ]


def prune(store: Store, name: str, keep: int | None = None) -> Pruned:
    """Delete all but the ``keep`` newest versions (default: keep-versions of the config),
    sparing the current version and pinned ones."""
    keep = store.config.keep_versions if keep is None else keep
    if keep < 1:
        raise InvalidInput("--keep must be at least 1")
    store.sweep()
    with store.appimg_lock(name):
        # The record stops naming a version before its tree goes (it is written when this
        # block ends), so a kill in between leaves only a tree that the next commit deletes
        # (realms.appimg.commit.reconcile), never a record naming a missing tree.
        with changing(store, name, locked=True) as record:
            reconcile(store, name, record)
            newest = sorted((v.version for v in record.versions), reverse=True)[:keep]
            in_use = activation.image_users(store, name)
            doomed = prunable(store, name, record, keep)
            record.versions = [v for v in record.versions if v not in doomed]
        with store.activation_lock(name):
            activation.release_unused(store, name)
        for version in doomed:
            store.discard(store.version_path(name, version))
    spared = {v.version for v in record.versions if v.pinned} | {record.current, *newest}
    kept_in_use = {number: realms for number, realms in in_use.items() if number not in spared}
    return Pruned([v.version for v in doomed], [v.version for v in record.versions], kept_in_use)
