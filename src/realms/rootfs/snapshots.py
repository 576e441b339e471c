"""Snapshots of a realm's root: take, list, remove, restore (see :mod:`realms.rootfs.roots` for
where they live and how a root is replaced).

A snapshot is taken of the root as it is (instant on btrfs: a read-only snapshot) and only of a
realm that does not run, so that it is never taken halfway through a write. The realm's
``keep-snapshots`` setting bounds the snapshots taken with ``realms snapshot``: beyond it the
oldest go, never the one just taken. The roots realms itself keeps, ``pre-rebase`` and
``pre-restore``, are one each (the next rebase or restore replaces it) and are not counted.

Restoring makes a writable copy of the snapshot the realm's root, with the snapshot's origin
(for an image realm, the version below its layer: activated again, and kept from ``appimg
prune`` meanwhile by :func:`realms.activation.image_users`); the root it replaces becomes
``pre-restore``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from realms import config, log, origin
from realms.errors import AlreadyExists, InvalidInput, NotFound, RealmsError
from realms.faults import checkpoint
from realms.kinds import IMAGE_KINDS
from realms.names import check_existing_realm_name, check_snapshot_label
from realms.rootfs import roots
from realms.store import Store
from realms.store.layout import ORIGIN_NAME
from realms.system import btrfs

RUNNING_HINT = "stop it first (realms stop {name}), or wait for what runs in it to finish"


@dataclass(frozen=True)
class Snapshot:
    realm: str
    label: str
    created: str
    """When it was taken (ISO time)."""
    appimg: str = ""
    appimg_version: int = 0
    """The appimg version the root was made from (for an image realm: the one below it)."""
    kind: str = ""
    layer: str = "rootfs"
    """What was snapshotted: the root filesystem (rootfs) or an image realm's layer (upper)."""
    order: int = field(default=0, compare=False, repr=False)
    """When it was taken, in nanoseconds (orders snapshots of one second)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "realm": self.realm,
            "label": self.label,
            "created": self.created,
            "appimg": self.appimg,
            "appimg_version": self.appimg_version,
            "kind": self.kind,
            "layer": self.layer,
        }


def _read(store: Store, name: str, label: str) -> Snapshot:
    directory = store.realm(name).snapshot(label)
    found = origin.load(directory)
    record = config.read_toml(directory / ORIGIN_NAME)
    order = record.get("taken_ns")
    return Snapshot(
        name,
        label,
        str(record.get("taken") or found.created),
        found.appimg,
        found.appimg_version,
        found.kind,
        roots.layer_of(found),
        order if isinstance(order, int) else 0,
    )


def _all(store: Store, name: str) -> list[Snapshot]:
    try:
        labels = os.listdir(store.realm(name).snapshots)
    except FileNotFoundError:
        return []
    found = []
    for label in labels:
        if label.startswith("."):
            continue
        try:
            found.append(_read(store, name, label))
        except RealmsError as error:
            log.warn(f"realm {name}: snapshot {label}: {error.message}")
    return sorted(found, key=lambda s: (s.created, s.order, s.label))


def _require(store: Store, name: str, label: str) -> Snapshot:
    check_snapshot_label(label)
    if not store.realm(name).snapshot(label).is_dir():
        labels = ", ".join(s.label for s in _all(store, name)) or "none"
        raise NotFound(
            f"realm {name!r} has no snapshot {label!r} (it has: {labels})",
            hint=f"'realms snapshot list {name}' shows them",
        )
    return _read(store, name, label)


def _default_label(store: Store, name: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    label, number = stamp, 1
    while os.path.lexists(store.realm(name).snapshot(label)):
        number += 1
        label = f"{stamp}-{number}"
    return label


def snapshot_realm(store: Store, name: str, label: str | None = None) -> Snapshot:
    """Take a snapshot of realm ``name``'s root labelled ``label`` (default: the UTC time)."""
    from realms.realm import realm_settings

    check_existing_realm_name(name)
    if label is not None:
        check_snapshot_label(label)
        if label in roots.OWN_LABELS:
            raise InvalidInput(
                f"the label {label!r} is the one realms gives the root a rebase or a restore "
                "replaces",
                hint="choose another label",
            )
    store.sweep()
    with roots.idle(store, name, RUNNING_HINT.format(name=name)) as found:
        keep = int(realm_settings(store, name)["keep-snapshots"])
        if keep < 1:
            raise RealmsError(
                f"realm {name!r} keeps no snapshots (keep-snapshots = 0)",
                hint=f"realms config {name} keep-snapshots 5",
            )
        label = label or _default_label(store, name)
        if os.path.lexists(store.realm(name).snapshot(label)):
            raise AlreadyExists(f"realm {name!r} has a snapshot {label!r} already")
        layer = roots.layer_of(found)
        source = store.realm_dir(name) / layer
        if store.backend.name != "btrfs" or not btrfs.is_subvolume(source):
            what = "image realm's layer" if layer == "upper" else "root"
            log.note(
                f"realm {name}: its {what} is no btrfs subvolume, so the snapshot is a copy "
                "(cp --reflink=auto: extents shared where the filesystem can), not instant"
            )
        staged = roots.stage(store, name, label, found)
        try:
            with log.step(f"Taking snapshot {label} of realm {name}"):
                roots.copy_tree(store, source, staged / layer, readonly=True)
            checkpoint("snapshot:staged")
            roots.install(store, name, staged, label)
        except BaseException:
            if staged.exists():
                store.remove(staged)
            raise
        _trim(store, name, keep, label)
        return _read(store, name, label)


def _trim(store: Store, name: str, keep: int, spare: str) -> None:
    """Remove the oldest snapshots taken by the user beyond ``keep``, never ``spare``."""
    taken = [s for s in _all(store, name) if s.label not in roots.OWN_LABELS]
    for doomed in [s for s in taken if s.label != spare][: max(0, len(taken) - keep)]:
        log.note(f"Removing snapshot {doomed.label} of realm {name} (keep-snapshots = {keep})")
        roots.discard_snapshot(store, name, doomed.label)


def list_snapshots(store: Store, name: str) -> list[Snapshot]:
    """Realm ``name``'s snapshots, oldest first (a swap a killed command left is finished
    first: the realm's lock is taken, not shared)."""
    check_existing_realm_name(name)
    with store.realm_lock(name):
        if not store.realm(name).origin.exists():
            raise NotFound(f"no realm named {name!r}", hint="'realms list' shows the realms")
        roots.finish(store, name)
        return _all(store, name)


def remove_snapshot(store: Store, name: str, label: str) -> Snapshot:
    """Remove snapshot ``label`` of realm ``name`` (also while the realm runs: it is not
    its root)."""
    check_existing_realm_name(name)
    store.sweep()
    with store.realm_lock(name):
        if not store.realm(name).origin.exists():
            raise NotFound(f"no realm named {name!r}", hint="'realms list' shows the realms")
        roots.finish(store, name)
        found = _require(store, name, label)
        roots.discard_snapshot(store, name, label)
        return found


def restore_snapshot(store: Store, name: str, label: str) -> Snapshot:
    """Make snapshot ``label`` realm ``name``'s root again; the root it replaces is kept as
    the snapshot ``pre-restore``. Returns the snapshot restored."""
    check_existing_realm_name(name)
    store.sweep()
    with roots.idle(store, name, RUNNING_HINT.format(name=name)) as found:
        restored = _require(store, name, label)
        restore_root(store, name, found, label, keep_as=roots.PRE_RESTORE, what="restore")
        return restored


def restore_root(
    store: Store, name: str, found: origin.Origin, label: str, *, keep_as: str, what: str
) -> origin.Origin:
    """Give realm ``name`` (held by :func:`roots.idle`, with origin ``found``) a writable copy
    of snapshot ``label`` as its root and the snapshot's origin; the replaced root becomes
    snapshot ``keep_as``. Returns the new origin."""
    directory = store.realm(name).snapshot(label)
    was = origin.load(directory)
    layer = roots.layer_of(found)
    if roots.layer_of(was) != layer:
        raise RealmsError(
            f"snapshot {label!r} of realm {name!r} is of a {roots.layer_of(was)}, and the realm "
            f"now has a {layer}: it cannot be restored"
        )
    if was.kind in IMAGE_KINDS:
        roots.activate(store, was)
    new = found._replace(appimg=was.appimg, appimg_version=was.appimg_version, kind=was.kind)
    staged = roots.stage(store, name, keep_as, found)
    try:
        with log.step(f"Restoring snapshot {label} of realm {name}"):
            roots.copy_tree(store, directory / layer, staged / layer, readonly=False)
        checkpoint(f"{what}:staged")
    except BaseException:
        store.remove(staged)
        raise
    # From here the staged directory may hold the realm's old root: never removed on failure.
    roots.swap(store, name, staged, new, label=keep_as, what=what)
    if (new.appimg, new.appimg_version) != (found.appimg, found.appimg_version):
        roots.release_unused(store, found)
    return new
