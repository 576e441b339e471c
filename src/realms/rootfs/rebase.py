"""``realms rebase``: a fresh root from the appimg, the realm's state carried over.

A realm on a tree version gets a writable snapshot of the new version (as ``realms new`` makes
one) with the paths of its ``keep`` setting copied from its root (:mod:`realms.rootfs.keep`); a
realm on a block or sealed version gets the new version below (activated first, the old one
released once no realm runs on it) and a fresh layer above with the kept paths of its old layer.
Either way the old root becomes the snapshot ``pre-rebase`` and the origin names the new
version, in one step (:func:`realms.rootfs.roots.swap`); the home and the config are outside the
root and stay as they are. ``--undo`` restores ``pre-rebase`` (origin included) and drops it.

A tree realm's rebase costs a snapshot, a few copies and renames, whatever the image's size.
Locks: the realm's, its run lock (a running realm is refused, or stopped first and started
again after with ``restart``), the appimg's (shared, as ``realms new``), its activation lock.
A change between a tree and an image kind is refused: the realm's writes would not fit the
other kind's root.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from realms import log, origin
from realms.appimg.record import Version, load_record
from realms.errors import NotFound, RealmsError
from realms.faults import checkpoint
from realms.kinds import ImageKind
from realms.names import check_existing_realm_name
from realms.rootfs import keep, roots
from realms.rootfs.snapshots import restore_root
from realms.store import Store


@dataclass(frozen=True)
class RebaseResult:
    realm: str
    from_version: int
    to_version: int
    undone: bool = False
    error: str | None = None
    """Set (and nothing changed) where --all-outdated could not rebase this realm."""
    kept: tuple[str, ...] = ()
    """The paths of the root carried over (absolute, as the realm sees them)."""
    appimg: str = ""
    restarted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "realm": self.realm,
            "appimg": self.appimg,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "undone": self.undone,
            "kept": list(self.kept),
            "restarted": self.restarted,
            "error": self.error,
        }


def _running_hint(name: str) -> str:
    return f"stop it first (realms stop {name}), or rebase with --restart to stop and start it"


def rebase_realm(
    store: Store,
    name: str | None,
    *,
    to: int | None = None,
    undo: bool = False,
    restart: bool = False,
    all_outdated: bool = False,
) -> list[RebaseResult]:
    """Rebase realm ``name`` onto version ``to`` (default: its appimg's current one), or undo
    its last rebase, or with ``all_outdated`` rebase every outdated realm (then each result
    says whether it failed). Returns one result per realm."""
    if all_outdated:
        if name is not None or to is not None or undo:
            raise RealmsError("--all-outdated takes no realm name, --to or --undo")
        return rebase_outdated(store, restart=restart)
    if name is None:
        raise RealmsError("name the realm to rebase, or use --all-outdated")
    if undo and to is not None:
        raise RealmsError("--undo goes back to the root from before the last rebase: no --to")
    return [_with_restart(store, name, restart, partial(_rebase_one, store, name, to, undo))]


def rebase_outdated(store: Store, *, restart: bool = False) -> list[RebaseResult]:
    """Rebase every realm whose appimg's current version is not its own; one failing does not
    stop the others."""
    results = []
    for name, found in origin.all_origins(store.realms_dir).items():
        try:
            current = load_record(store, found.appimg).current
        except RealmsError:
            continue  # its appimg is gone: nothing to rebase onto
        if current == found.appimg_version:
            continue
        try:
            one = _with_restart(store, name, restart, partial(_rebase_one, store, name, None))
        except RealmsError as error:
            log.warn(f"realm {name} was not rebased: {error.message}")
            one = RebaseResult(
                name, found.appimg_version, current, error=error.message, appimg=found.appimg
            )
        results.append(one)
    return results


def _with_restart(
    store: Store, name: str, restart: bool, work: Callable[[], RebaseResult]
) -> RebaseResult:
    """Run ``work``; with ``restart``, a booted realm is stopped first and started after
    (also when ``work`` failed: it changed nothing then)."""
    from realms.lifecycle import state

    check_existing_realm_name(name)
    if not restart or state.running(store, name) is None:
        return work()
    from realms.lifecycle import control

    control.stop(store, name)
    try:
        result = work()
    finally:
        for started in control.start(store, name):
            log.note(started.message())
    return dataclasses.replace(result, restarted=True)


def _rebase_one(store: Store, name: str, to: int | None, undo: bool = False) -> RebaseResult:
    from realms.realm import realm_settings

    store.sweep()
    with roots.idle(store, name, _running_hint(name)) as found:
        if undo:
            return _undo(store, name, found)
        patterns = list(realm_settings(store, name)["keep"])
        keep.check_patterns(name, patterns)
        with store.appimg_lock(found.appimg, shared=True):
            target = _target(store, name, found, to)
            new = found._replace(appimg_version=target.version, kind=target.kind)
            if target.kind.is_image:
                from realms import activation

                # Checked and mounted first: a bad image stops here, before anything changes.
                with store.activation_lock(found.appimg):
                    path = store.version_path(found.appimg, target)
                    activation.activate(store, found.appimg, target, path)
            kept = _stage_and_swap(store, name, found, new=new, target=target, patterns=patterns)
        roots.release_unused(store, found)
    return RebaseResult(
        name, found.appimg_version, target.version, kept=tuple(kept), appimg=found.appimg
    )


def _target(store: Store, name: str, found: origin.Origin, to: int | None) -> Version:
    """The version to rebase onto, checked: it exists, it is not the realm's, same kind of
    root, allowed by require-sealed."""
    record = load_record(store, found.appimg)
    target = record.current_version if to is None else record.version(to)
    if target is None:
        known = ", ".join(str(v.version) for v in record.versions)
        raise NotFound(f"appimg {found.appimg!r} has no version {to} (it has {known})")
    if target.version == found.appimg_version:
        raise RealmsError(
            f"realm {name!r} is already on version {target.version} of appimg {found.appimg!r}",
            hint=None if to is not None else "'realms rebase --to VERSION' picks another one",
        )
    if target.kind.is_image != found.kind.is_image:
        have = "an image" if found.kind.is_image else "a tree"
        raise RealmsError(
            f"version {target.version} of appimg {found.appimg!r} is {target.kind}, and realm "
            f"{name!r} is on {have} version: a rebase cannot change the kind of its root",
            hint="make a new realm from that version and copy what you need over",
        )
    if store.config.require_sealed and target.kind != ImageKind.SEALED:
        raise RealmsError(
            f"version {target.version} of appimg {found.appimg!r} is not sealed, and the "
            "policy require-sealed is on"
        )
    return target


def _stage_and_swap(
    store: Store,
    name: str,
    found: origin.Origin,
    *,
    new: origin.Origin,
    target: Version,
    patterns: list[str],
) -> list[str]:
    layer = roots.layer_of(found)
    old_root = store.realm_dir(name) / layer
    staged = roots.stage(store, name, roots.PRE_REBASE, found)
    fresh = staged / layer
    try:
        with log.step(f"Making a new root for realm {name} from version {target.version}"):
            if target.kind.is_image:
                # The layer above the new version starts empty, owned as the old one; a plain
                # directory, as realms new makes it (overlayfs renames from work/ into it).
                fresh.mkdir()
                info = os.lstat(old_root)
                os.chown(fresh, info.st_uid, info.st_gid)
                os.chmod(fresh, stat.S_IMODE(info.st_mode))
            else:
                store.backend.clone(store.version_path(found.appimg, target), fresh)
            kept = keep.carry(old_root, fresh, name, patterns)
        checkpoint("rebase:staged")
    except BaseException:
        store.remove(staged)
        raise
    # From here the staged directory may hold the realm's old root: never removed on failure.
    roots.swap(store, name, staged, new, label=roots.PRE_REBASE, what="rebase")
    return [f"/{path}" for path in kept]


def _undo(store: Store, name: str, found: origin.Origin) -> RebaseResult:
    if not store.realm(name).snapshot(roots.PRE_REBASE).is_dir():
        raise NotFound(
            f"realm {name!r} has no rebase to undo (no snapshot {roots.PRE_REBASE!r})",
            hint=f"'realms snapshot list {name}' shows its snapshots",
        )
    new = restore_root(
        store, name, found, roots.PRE_REBASE, keep_as=roots.PRE_RESTORE, what="rebase-undo"
    )
    # The realm's root is now a copy of it: the snapshot is spent.
    roots.discard_snapshot(store, name, roots.PRE_REBASE)
    return RebaseResult(
        name, found.appimg_version, new.appimg_version, undone=True, appimg=new.appimg
    )
