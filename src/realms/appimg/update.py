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
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from realms import log
from realms.activation import IMAGE_KINDS
from realms.appimg.images import commit_image, reserve_number
from realms.appimg.layout import (
    LOCK_WAIT,
    appimg_dir,
    clean_versions,
    load_record,
    no_update_running,
    version_path,
)
from realms.appimg.record import RECORD_NAME, Change, Version
from realms.container import Container, check_os_tree
from realms.container import run as run_container
from realms.errors import NotFound, RealmsError
from realms.faults import checkpoint
from realms.image import filesystem, keys, realmfs
from realms.image.header import HEADER_SIZE
from realms.names import check_appimg_name
from realms.store import WORKING_PREFIX, Store, write_toml
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


def update_appimg(
    store: Store, name: str | None, command: list[str], *, discard: bool = False
) -> UpdateResult:
    """Run ``command`` (a root shell when empty) on a working copy of appimg ``name`` (default:
    the config's default-appimg) and commit it as a new version if it exits 0."""
    name = check_appimg_name(name or store.config.default_appimg)
    with no_update_running(store, name):
        base = load_record(store, name).current_version
        if base.kind in IMAGE_KINDS:
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
    with store.appimg_lock(name, wait=LOCK_WAIT):
        record = load_record(store, name)
        clean_versions(store, name, record, update_lock_held=True)
        base = record.current_version
        if base.kind != "tree":
            raise RealmsError(f"version {base.version} changed kind meanwhile; try again")
        working = appimg_dir(store, name) / f"{WORKING_PREFIX}{token()}"
        if not store.backend.zero_cost:
            log.note(f"copy backend: copying appimg {name!r} for the update (not a snapshot)")
        store.backend.clone(version_path(store, name, base), working)
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


def _commit(
    store: Store, name: str, working: Path, base: Version, *, marker: int | None, detail: str
) -> Version:
    # Everything that takes time happens before the lock: writing the changes to disk and
    # finding what changed costs what the session wrote, not what the image holds.
    syncfs(working)
    changes = store.backend.changes_since(working, marker) if marker is not None else None
    with store.appimg_lock(name, wait=LOCK_WAIT):
        record = load_record(store, name)
        version = Version(record.next_number(), "tree", now(), "update", detail)
        version.parent = base.version
        if changes is not None:
            version.written, version.files_changed = changes.written, changes.files
        store.backend.freeze(working)
        rename_noreplace(working, version_path(store, name, version))
        fsync_dir(appimg_dir(store, name))
        checkpoint("appimg-update:renamed")
        record.add(version, Change(now(), "update", version.version, detail))
        write_toml(appimg_dir(store, name) / RECORD_NAME, record.to_toml())
    return version


def _update_image(
    store: Store, name: str, base: Version, command: list[str], *, discard: bool
) -> UpdateResult:
    """An update of a block or sealed version: the image's files are copied into a working
    tree, the session runs on it, and a commit makes a new image of the same filesystem from
    it: resealed with a new salt and signed with the channel's key when the image is sealed.
    The key is checked before the session starts."""
    image = version_path(store, name, base)
    header, _ = realmfs.read_header(image)
    meta = header.metainfo
    seed = None
    if base.kind == "sealed":
        channel = meta.channel or ""
        try:
            seed = keys.Keyring(store).signing_seed(channel)
        except NotFound:
            raise RealmsError(
                f"appimg {name!r} is sealed for channel {channel!r}, and this store has no "
                "signing key for it: the update could not be resealed",
                hint=f"'realms key generate {channel}' (and trust it where the image is used)",
            ) from None
    fs = filesystem.detect(image, HEADER_SIZE) or "ext4"
    _, number = reserve_number(store, name)
    work = appimg_dir(store, name) / f"{WORKING_PREFIX}{token()}"
    work.mkdir()
    try:
        tree = work / "tree"
        store.backend.create_tree(tree)
        with log.step(f"Copying the files of version {base.version} into a working tree"):
            _unpack(image, meta.nblocks or 0, fs, tree, work / "lower")
        status = _run(store, name, tree, command)
        if status != 0 or discard:
            return UpdateResult(name, base.version, status, None, discard)
        detail = shlex.join(command) if command else "interactive shell"
        made = realmfs.seal_tree(
            tree,
            work / "image.img",
            scratch=work,
            name=name,
            version=number,
            fs=fs,
            channel=meta.channel if seed else None,
            seed=seed,
            verity=seed is not None,
        )
        version = Version(number, base.kind, now(), "update", detail, size=made.size)
        version.parent = base.version
        commit_image(
            store, name, work / "image.img", version, Change(now(), "update", number, detail)
        )
        return UpdateResult(name, base.version, status, version, False)
    finally:
        with log.step("Removing the working copy"):
            store.remove(work)


def _unpack(image: Path, nblocks: int, fs: str, tree: Path, lower: Path) -> None:
    """Copy every file of the image into ``tree``, keeping owners, modes, xattrs and links.
    The image is mounted in a mount namespace of the copy's own, so nothing stays mounted."""
    lower.mkdir()
    script = 'mount -t "$1" -o ro "$2" "$3" && cp -a "$3/." "$4/"'
    with attached(image, offset=HEADER_SIZE, size=nblocks * 4096) as device:
        run(mounts.in_own_mount_namespace(script, fs, device, lower, tree))
    found = tree / "lost+found"
    if found.is_dir() and not any(found.iterdir()):
        found.rmdir()  # made by mkfs.ext4, not part of the tree that was sealed
