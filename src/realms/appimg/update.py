"""Update sessions: change an appimg in a container, then commit the change as a new version.

Citadel's ``update-appimg`` edited the live image. Here a session works on a copy:

1. The appimg's update lock is taken for the whole session: one update at a time per appimg, and
   a second one is told which command holds it. Realms can still be made from the current
   version meanwhile: the appimg's own lock is only taken for moments.
2. The current version is snapshotted as the working copy ``appimg/NAME/.update.RANDOM``.
3. A root shell (or the given command) runs in systemd-nspawn on the working copy, as machine
   ``NAME-appimg-update`` with the host's network. The host's resolv.conf is bound, not copied
   (an empty file nspawn had to make for that is removed afterwards), and the timezone is left
   alone, so that what the user does is what ends up in the image (besides the mount points
   nspawn needs, /proc, /sys, /dev and /run, in a tree that lacked them).
4. Exit status 0 commits: the working copy is written to disk, frozen, renamed to ``vN`` and
   recorded as the current version, under the appimg's lock. Commit time does not depend on the
   image's size. Any other exit status, ``discard``, or realms being stopped deletes the
   working copy. If realms is killed outright, the kernel stops the container (see
   :func:`realms.system.run.popen`) and the next command that takes the update lock deletes
   the working copy: the appimg stays as it was.
5. A commit happens only on the version the session started from. If another version became
   current meanwhile (an import ``--new-version``, a build, a seal, a rollback), committing
   would hide that version's changes behind "update of N": the commit is refused, and the
   session's tree is kept as ``appimg/NAME/kept-update`` (frozen, named in the record, shown by
   ``realms appimg versions``) for inspection. ``realms update-appimg NAME --commit-kept``
   commits it anyway as the next version (the other version stays, no longer current);
   ``--discard-kept`` deletes it. Until then no other update of that appimg starts, so that
   nothing is dropped without someone deciding it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from realms import log
from realms.appimg.commit import NewVersion, commit, reserve
from realms.appimg.record import AppimgRecord, KeptUpdate, Version, changing, load_record
from realms.container import Container
from realms.container import run as run_container
from realms.errors import Conflict, NotFound, RealmsError
from realms.faults import checkpoint
from realms.image import filesystem, keys, realmfs
from realms.image.header import HEADER_SIZE, data_size
from realms.kinds import ImageKind, VersionOrigin
from realms.names import check_appimg_name
from realms.storage import Changes
from realms.store import Store
from realms.system import mounts
from realms.system.fs import (
    fsync_dir,
    open_in_root,
    read_in_root,
    rename_noreplace,
    syncfs,
    token,
    unlink_in_root,
)
from realms.system.loop import attached
from realms.system.run import run
from realms.treeview import check_os_tree
from realms.units import now


@dataclass(frozen=True)
class UpdateResult:
    appimg: str
    base: int
    """The version the session started from."""
    status: int
    """The exit status of the shell or command."""
    committed: Version | None
    discarded: bool
    kept: KeptUpdate | None = None
    """With ``commit_kept`` or ``discard_kept``: the kept update that was committed or deleted
    (``base`` is then the version it started from, or the current version if it was deleted)."""


def update_appimg(
    store: Store,
    name: str | None,
    command: list[str],
    *,
    discard: bool = False,
    commit_kept: bool = False,
    discard_kept: bool = False,
) -> UpdateResult:
    """Run ``command`` (a root shell when empty) on a working copy of appimg ``name`` (default:
    the config's default-appimg) and commit it as a new version if it exits 0, unless another
    version became current meanwhile: then the working copy is kept and Conflict raised.
    ``commit_kept`` commits such a kept update anyway, ``discard_kept`` deletes it."""
    name = check_appimg_name(name or store.config.default_appimg)
    store.sweep()
    with store.update_lock(name):
        if commit_kept:
            return _commit_kept(store, name)
        if discard_kept:
            return _discard_kept(store, name)
        record = load_record(store, name)
        if record.kept is not None:
            kept = record.kept
            raise Conflict(
                f"appimg {name!r} has an update of version {kept.base} that was not committed "
                f"because {kept.reason} while it ran ({kept.detail}, {kept.created}); it is kept "
                f"in {store.kept_path(name)}",
                hint=_kept_hint(name),
            )
        base = record.current_version
        if base.kind.is_image:
            return _update_image(store, name, base, command, discard=discard)
        working, base, marker = _start(store, name)
        try:
            status = _run(store, name, working, command)
            if status != 0 or discard:
                return UpdateResult(name, base.version, status, None, discard)
            detail = shlex.join(command) if command else "interactive shell"
            version = _commit(store, name, working, base, marker=marker, detail=detail)
            return UpdateResult(name, base.version, status, version, False)
        finally:
            if working.exists():
                with log.step("Removing the working copy"):
                    store.backend.remove(working)


def _start(store: Store, name: str) -> tuple[Path, Version, int | None]:
    """Snapshot the current version as a working copy; return it, the version and a marker."""
    with store.appimg_lock(name):
        base = load_record(store, name).current_version
        if base.kind != ImageKind.TREE:
            raise RealmsError(f"version {base.version} changed kind meanwhile; try again")
        working = store.working_path(name, token())
        if not store.backend.zero_cost:
            log.note(f"copy backend: copying appimg {name!r} for the update (not a snapshot)")
        store.backend.clone(store.version_path(name, base), working)
    return working, base, store.backend.change_marker(working)


def _run(store: Store, name: str, working: Path, command: list[str]) -> int:
    check_os_tree(working, f"appimg {name!r}")
    if command:
        log.note(f"Running {shlex.join(command)} on {name} appimg")
    else:
        log.note("Leave the shell with exit status 0 to commit the changes as a new version")
        log.note(f"Entering root shell on {name} appimg")
    container = Container(
        rootfs=working, machine=f"{name}-appimg-update", command=command, pristine=True
    )
    had_resolv_conf = _exists_in(working, RESOLV_CONF)
    try:
        return run_container(container)
    finally:
        if not had_resolv_conf and _is_empty_file(working, RESOLV_CONF):
            unlink_in_root(working, RESOLV_CONF)


RESOLV_CONF = "etc/resolv.conf"


def _exists_in(root: Path, relative: str) -> bool:
    try:
        os.close(open_in_root(root, relative))
    except OSError:
        return False
    return True


def _is_empty_file(root: Path, relative: str) -> bool:
    try:
        return read_in_root(root, relative, limit=1) == b""
    except OSError:
        return False


def _kept_hint(name: str) -> str:
    return (
        f"look at it; 'realms update-appimg {name} --commit-kept' commits it anyway as the "
        f"next version, 'realms update-appimg {name} --discard-kept' deletes it"
    )


def _moved_on(record: AppimgRecord, base: Version) -> str | None:
    """What made another version current since ``base`` was, or None if it still is."""
    if record.current == base.version:
        return None
    last = next((c for c in reversed(record.history) if c.version == record.current), None)
    return f"version {record.current} became current" + (f" ({last.action})" if last else "")


def _keep(
    store: Store,
    name: str,
    record: AppimgRecord,
    tree: Path,
    base: Version,
    *,
    reason: str,
    detail: str,
    changes: Changes | None = None,
    fs: str | None = None,
    channel: str | None = None,
) -> Conflict:
    """Keep the session's ``tree`` as the appimg's kept update and return the error that says
    so. The caller holds the appimg's lock and writes the record."""
    # Renamed before it is frozen: btrfs does not move a read-only subvolume to another
    # directory (the working tree of an image update is one level down).
    rename_noreplace(tree, store.kept_path(name))
    store.backend.freeze(store.kept_path(name))
    fsync_dir(store.appimg_dir(name))
    # Killed here, the kept tree is one the record does not name: a leftover, deleted later.
    checkpoint("appimg-update:kept")
    record.kept = KeptUpdate(
        base.version,
        base.kind,
        now(),
        detail,
        reason,
        changes.written if changes else None,
        changes.files if changes else None,
        fs,
        channel,
    )
    return Conflict(
        f"not committed: {reason} while this update of version {base.version} ran; the "
        f"update is kept in {store.kept_path(name)}",
        hint=_kept_hint(name),
    )


def _commit(
    store: Store, name: str, working: Path, base: Version, *, marker: int | None, detail: str
) -> Version:
    # Everything that takes time happens before the lock: writing the changes to disk and
    # finding what changed costs what the session wrote, not what the image holds.
    syncfs(working)
    changes = store.backend.changes_since(working, marker) if marker is not None else None

    def keep_if_moved_on(record: AppimgRecord) -> Conflict | None:
        reason = _moved_on(record, base)
        if reason is None:
            return None
        return _keep(
            store, name, record, working, base, reason=reason, detail=detail, changes=changes
        )

    def place(path: Path) -> None:
        # Frozen before the rename (in the same directory), as a kept tree is.
        store.backend.freeze(working)
        rename_noreplace(working, path)

    new = NewVersion(
        ImageKind.TREE,
        VersionOrigin.UPDATE,
        detail,
        parent=base.version,
        changes=changes,
        measure=False,
    )
    return commit(store, name, place, new, mode="add", check=keep_if_moved_on)


def _update_image(
    store: Store, name: str, base: Version, command: list[str], *, discard: bool
) -> UpdateResult:
    """An update of a block or sealed version: the image's files are copied into a working
    tree, the session runs on it, and a commit makes a new image of the same filesystem from
    it: resealed with a new salt and signed with the channel's key when the image is sealed.
    The key is checked before the session starts."""
    image = store.version_path(name, base)
    header, _ = realmfs.read_header(image)
    channel = header.metainfo.channel if base.kind == ImageKind.SEALED else None
    fs = filesystem.detect(image, HEADER_SIZE) or "ext4"
    spec = _ImageSpec(base.kind, fs, channel, _signing_seed(store, name, channel))
    number = reserve(store, name)
    work = store.working_path(name, token())
    work.mkdir()
    try:
        tree = work / "tree"
        store.backend.create_tree(tree)
        with log.step(f"Copying the files of version {base.version} into a working tree"):
            _unpack(image, data_size(header.metainfo.nblocks or 0), fs, tree, work / "lower")
        status = _run(store, name, tree, command)
        if status != 0 or discard:
            return UpdateResult(name, base.version, status, None, discard)
        detail = shlex.join(command) if command else "interactive shell"

        def keep_if_moved_on(record: AppimgRecord) -> Conflict | None:
            reason = _moved_on(record, base)
            if reason is None:
                return None
            return _keep(
                store,
                name,
                record,
                tree,
                base,
                reason=reason,
                detail=detail,
                fs=spec.fs,
                channel=spec.channel,
            )

        # Checked before the seal (which takes a while) and again at the commit.
        with changing(store, name) as record:
            conflict = keep_if_moved_on(record)
        if conflict is not None:
            raise conflict
        version = _seal_and_commit(
            store,
            name,
            tree,
            work,
            spec,
            number=number,
            detail=detail,
            check=keep_if_moved_on,
            parent=base.version,
        )
        return UpdateResult(name, base.version, status, version, False)
    finally:
        with log.step("Removing the working copy"):
            store.remove(work)


def _signing_seed(store: Store, name: str, channel: str | None) -> bytes | None:
    """The channel's signing key for a sealed version (None: a block version); refused without
    it, before any work is done."""
    if channel is None:
        return None
    try:
        return keys.Keyring(store).signing_seed(channel)
    except NotFound:
        raise RealmsError(
            f"appimg {name!r} is sealed for channel {channel!r}, and this store has no "
            "signing key for it: the update could not be resealed",
            hint=f"'realms key generate {channel}' (and trust it where the image is used)",
        ) from None


@dataclass(frozen=True)
class _ImageSpec:
    """What an update of a block or sealed version makes again: the kind, the filesystem, and
    for a sealed version its channel and that channel's signing key."""

    kind: ImageKind
    fs: str
    channel: str | None
    seed: bytes | None


def _seal_and_commit(
    store: Store,
    name: str,
    tree: Path,
    work: Path,
    spec: _ImageSpec,
    *,
    number: int,
    detail: str,
    check: Callable[[AppimgRecord], Conflict | None],
    parent: int,
) -> Version:
    """Make an image of ``kind`` from ``tree`` in ``work`` and commit it as version
    ``number``, if ``check`` (called with the record, under the appimg's lock) lets it."""
    realmfs.seal_tree(
        tree,
        work / "image.img",
        scratch=work,
        name=name,
        version=number,
        fs=spec.fs,
        channel=spec.channel if spec.seed else None,
        seed=spec.seed,
        verity=spec.seed is not None,
    )
    new = NewVersion(spec.kind, VersionOrigin.UPDATE, detail, number, parent)
    return commit(
        store, name, lambda path: rename_noreplace(work / "image.img", path), new, check=check
    )


# Kept updates


def _kept(store: Store, name: str) -> KeptUpdate:
    kept = load_record(store, name).kept
    if kept is None:
        raise NotFound(f"appimg {name!r} has no kept update")
    return kept


def _commit_kept(store: Store, name: str) -> UpdateResult:
    """Commit the kept update as the next version, over whatever version is current."""
    kept = _kept(store, name)

    def clear(record: AppimgRecord) -> None:
        record.kept = None  # written with the new version, in one rename

    if kept.kind.is_image:
        spec = _ImageSpec(
            kept.kind, kept.fs or "ext4", kept.channel, _signing_seed(store, name, kept.channel)
        )
        number = reserve(store, name)
        work = store.working_path(name, token())
        work.mkdir()
        try:
            version = _seal_and_commit(
                store,
                name,
                store.kept_path(name),
                work,
                spec,
                number=number,
                detail=kept.detail,
                check=clear,
                parent=kept.base,
            )
        finally:
            store.remove(work)
    else:

        def place(path: Path) -> None:
            # A snapshot, not a rename: killed at any moment, either the record still names
            # the kept tree, or it names the new version (and the kept tree is a leftover).
            store.backend.clone(store.kept_path(name), path)

        changes = (
            Changes(kept.written, kept.files_changed or 0) if kept.written is not None else None
        )
        new = NewVersion(
            ImageKind.TREE,
            VersionOrigin.UPDATE,
            kept.detail,
            parent=kept.base,
            changes=changes,
            measure=False,
        )
        version = commit(store, name, place, new, mode="add", check=clear)
    _discard_kept_tree(store, name)
    return UpdateResult(name, kept.base, 0, version, False, kept)


def _discard_kept(store: Store, name: str) -> UpdateResult:
    with changing(store, name) as record:
        kept = record.kept
        if kept is None:
            raise NotFound(f"appimg {name!r} has no kept update")
        record.kept = None
    _discard_kept_tree(store, name)
    return UpdateResult(name, record.current, 0, None, True, kept)


def _discard_kept_tree(store: Store, name: str) -> None:
    """Delete the kept tree, which the record no longer names."""
    with store.appimg_lock(name):
        if store.kept_path(name).exists():
            with log.step("Removing the kept update"):
                store.discard(store.kept_path(name))


def _unpack(image: Path, size: int, fs: str, tree: Path, lower: Path) -> None:
    """Copy every file of the image into ``tree``, keeping owners, modes, xattrs and links.
    The image is mounted in a mount namespace of the copy's own, so nothing stays mounted."""
    lower.mkdir()
    script = 'mount -t "$1" -o ro "$2" "$3" && cp -a "$3/." "$4/"'
    with attached(image, offset=HEADER_SIZE, size=size) as device:
        run(mounts.in_own_mount_namespace(script, fs, device, lower, tree))
    found = tree / "lost+found"
    if found.is_dir() and not any(found.iterdir()):
        found.rmdir()  # made by mkfs.ext4, not part of the tree that was sealed
