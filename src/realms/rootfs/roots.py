"""A realm's root and its snapshots on disk, and the one way a realm's root is replaced.

The *root* of a realm is what it writes: ``rootfs/`` for a realm on a tree version, the
overlay's upper layer ``upper/`` for one on a block or sealed version (the version below it is
its origin's). A snapshot is ``snapshots/LABEL/``: the origin of that root (``origin.toml``,
with the time it was taken) and the root itself, read-only (a btrfs read-only snapshot; a
reflink copy where the root is no subvolume).

:func:`swap` replaces the root, and the origin with it, in one step (a rebase, a restore):

1. the caller stages ``snapshots/.new.LABEL.TOKEN/``: the new root, and the current origin
   (what the snapshot LABEL will say once it holds the current root);
2. ``root-swap.toml`` records the new origin and the identity of the new root
   (:func:`realms.origin.root_identity`);
3. one RENAME_EXCHANGE swaps the staged root and the realm's: from here on the realm has the
   new root, and :func:`realms.origin.load` reads the new origin from the record;
4. :func:`finish`: ``origin.toml`` is written, the old root (now in the staged directory) is
   frozen and becomes snapshot LABEL, and the record goes.

A command killed anywhere leaves the old root with the old origin or the new root with the new
origin, never none; :func:`finish` completes or drops what is left (staged directories,
``.del.`` names under ``snapshots/``), run first by every command of this package under the
realm's lock. The realm lock and then the run lock (without waiting: a running realm is
refused) are held throughout (:func:`idle`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from realms import config, log, origin
from realms.errors import Busy, InvalidInput, NotFound
from realms.faults import checkpoint
from realms.kinds import IMAGE_KINDS
from realms.names import check_existing_realm_name, check_snapshot_label
from realms.store import Store, write_toml
from realms.store.layout import DELETED_PREFIX, NEW_PREFIX, ORIGIN_NAME, TEMPORARY_PREFIXES
from realms.system import btrfs
from realms.system.fs import fsync_dir, rename_exchange, rename_noreplace, token
from realms.system.run import run
from realms.units import now

PRE_REBASE = "pre-rebase"
PRE_RESTORE = "pre-restore"
OWN_LABELS = (PRE_REBASE, PRE_RESTORE)
"""The labels realms gives the roots it replaces; each is replaced by the next of its kind."""


def layer_of(found: origin.Origin) -> str:
    """The name of the realm's root in its directory: ``rootfs`` or ``upper``."""
    return "upper" if found.kind in IMAGE_KINDS else "rootfs"


@contextmanager
def idle(store: Store, name: str, hint: str | None = None) -> Iterator[origin.Origin]:
    """Hold realm ``name`` for a change of its root: its lock, then its run lock without waiting
    (Busy, with ``hint``, while it runs); an interrupted swap is finished first. Yields its
    origin."""
    check_existing_realm_name(name)
    with store.realm_lock(name), ExitStack() as stack:
        if not store.realm(name).origin.exists():
            raise NotFound(f"no realm named {name!r}", hint="'realms list' shows the realms")
        try:
            stack.enter_context(store.run_lock(name))
        except Busy as error:
            raise Busy(error.message, hint=hint or error.hint) from None
        finish(store, name)
        yield origin.load(store.realm_dir(name))


def copy_tree(store: Store, source: Path, target: Path, *, readonly: bool) -> None:
    """Make ``target`` a copy of the root ``source``: a btrfs snapshot (no cost) where
    ``source`` is a subvolume, else a directory filled with ``cp -a --reflink=auto`` (never
    written to when it is a snapshot, though not read-only)."""
    if store.backend.name == "btrfs" and btrfs.is_subvolume(source):
        btrfs.snapshot(source, target, readonly=readonly)
        return
    # A plain directory stays one: an image realm's layer must be on the subvolume of its
    # overlay's work directory (overlayfs renames between them).
    target.mkdir(mode=0o755)
    run(["cp", "-a", "--reflink=auto", "--", f"{source}/.", f"{target}/"])


def freeze(store: Store, root: Path) -> None:
    if store.backend.name == "btrfs" and btrfs.is_subvolume(root):
        btrfs.set_readonly(root)


def stage(store: Store, name: str, label: str, found: origin.Origin) -> Path:
    """A new staging directory for snapshot ``label``, holding ``found`` as its origin; the
    caller puts the root in it (``rootfs`` or ``upper``)."""
    snapshots = store.realm(name).snapshots
    snapshots.mkdir(mode=0o700, exist_ok=True)
    staged = snapshots / f"{NEW_PREFIX}{label}.{token()}"
    staged.mkdir(mode=0o700)
    # taken_ns orders snapshots taken within one second.
    write_toml(
        staged / ORIGIN_NAME, {**found.to_toml(), "taken": now(), "taken_ns": time.time_ns()}
    )
    return staged


def install(store: Store, name: str, staged: Path, label: str) -> None:
    """Make the staged directory snapshot ``label``, replacing one of that label."""
    files = store.realm(name)
    target = files.snapshot(label)
    doomed = None
    if os.path.lexists(target):
        doomed = files.snapshots / f"{DELETED_PREFIX}{label}.{token()}"
        os.rename(target, doomed)
    rename_noreplace(staged, target)
    fsync_dir(files.snapshots)
    if doomed is not None:
        store.remove(doomed)


def activate(store: Store, found: origin.Origin) -> None:
    """Activate the image version ``found`` names (checked as at every use); NotFound when it
    is gone."""
    from realms import activation
    from realms.appimg.record import load_record

    with store.appimg_lock(found.appimg, shared=True):
        version = load_record(store, found.appimg).version(found.appimg_version)
        if version is None:
            raise NotFound(f"version {found.appimg_version} of appimg {found.appimg!r} is gone")
        with store.activation_lock(found.appimg):
            activation.activate(
                store, found.appimg, version, store.version_path(found.appimg, version)
            )


def release_unused(store: Store, found: origin.Origin) -> None:
    """Release the activation of the version a realm left, if no realm runs on it now."""
    if found.kind not in IMAGE_KINDS:
        return
    from realms import activation

    with store.activation_lock(found.appimg):
        if not activation.users(store, found.appimg, found.appimg_version):
            activation.release(store, found.appimg, found.appimg_version)


def discard_snapshot(store: Store, name: str, label: str) -> None:
    files = store.realm(name)
    doomed = files.snapshots / f"{DELETED_PREFIX}{label}.{token()}"
    os.rename(files.snapshot(label), doomed)
    fsync_dir(files.snapshots)
    store.remove(doomed)


def swap(
    store: Store, name: str, staged: Path, new: origin.Origin, *, label: str, what: str
) -> None:
    """Give realm ``name`` the root staged in ``staged`` (from :func:`stage`) and the origin
    ``new``; its current root becomes snapshot ``label``. The caller holds :func:`idle`."""
    files = store.realm(name)
    layer = layer_of(new)
    current = files.directory / layer
    record = {
        "what": what,
        "root": layer,
        "identity": origin.root_identity(staged / layer),
        "staged": staged.name,
        "label": label,
        "origin": new.to_toml(),
    }
    write_toml(files.root_swap, record)
    checkpoint(f"{what}:recorded")
    rename_exchange(staged / layer, current)
    fsync_dir(files.directory)
    fsync_dir(staged)
    checkpoint(f"{what}:swapped")
    finish(store, name)


def finish(store: Store, name: str) -> None:
    """Complete a swap that reached its exchange, drop one that did not, and remove what killed
    commands left under ``snapshots/``. The caller holds the realm's lock (a swap holds it
    throughout); it may run meanwhile, on the root in place, which this does not change."""
    files = store.realm(name)
    if os.path.lexists(files.root_swap):
        data = config.read_toml(files.root_swap)
        found = origin.load(files.directory)  # the new origin once the roots were exchanged
        what, staged_name, label = data.get("what"), data.get("staged"), data.get("label")
        if not (
            isinstance(what, str)
            and isinstance(staged_name, str)
            and staged_name.startswith(NEW_PREFIX)
            and "/" not in staged_name
            and isinstance(label, str)
        ):
            raise InvalidInput(f"{files.root_swap}: damaged realm record")
        check_snapshot_label(label)
        staged = files.snapshots / staged_name
        swapped = origin.root_identity(files.directory / data["root"]) == data["identity"]
        if swapped:
            write_toml(files.origin, found.to_toml())
            checkpoint(f"{what}:origin")
            if staged.is_dir():
                freeze(store, staged / str(data["root"]))
                install(store, name, staged, label)
            checkpoint(f"{what}:snapshot")
            if found.kind in IMAGE_KINDS:
                from realms import activation

                # The version the realm left, unless other realms run on it (a swap releases
                # it itself; this is for one that was killed before).
                with store.activation_lock(found.appimg):
                    activation.release_unused(store, found.appimg)
        files.root_swap.unlink()
        fsync_dir(files.directory)
    try:
        entries = os.listdir(files.snapshots)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.startswith(TEMPORARY_PREFIXES):
            log.debug(f"removing {files.snapshots / entry}, left by a killed command")
            store.remove(files.snapshots / entry)
