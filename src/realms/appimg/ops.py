"""Operations on appimgs as a whole: list, show, import, remove.

An import is committed by :mod:`realms.appimg.commit` (under the appimg's lock, through a
temporary name); a removal renames the appimg's directory away first (see
:mod:`realms.store.txn`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from realms import activation, log, origin
from realms.appimg import tarball
from realms.appimg.commit import NewVersion, commit
from realms.appimg.compression import Compression, detect
from realms.appimg.record import AppimgRecord, Version, load_record
from realms.errors import InvalidInput, NotFound, RealmsError
from realms.faults import checkpoint
from realms.kinds import ImageKind, VerityMode, VersionOrigin
from realms.names import check_appimg_name
from realms.store import Store

SGOS_MAGIC = b"SGOS"


@dataclass(frozen=True)
class AppimgInfo:
    name: str
    record: AppimgRecord
    realms: list[str]
    path: Path
    verity: VerityMode
    """How the current version is checked here: kernel, userspace (checked at activation) or
    none (a tree or block version)."""

    @property
    def kind(self) -> ImageKind:
        return self.record.current_version.kind

    @property
    def version(self) -> int:
        return self.record.current

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "versions": [
                {**v.to_json(), "current": v.version == self.version} for v in self.record.versions
            ],
            "realms": self.realms,
            "path": str(self.path),
            "verity": self.verity,
            "history": [asdict(change) for change in self.record.history],
        }


def _names(store: Store) -> list[str]:
    try:
        entries = os.listdir(store.appimgs_dir)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if not e.startswith(".") and store.record_path(e).exists())


def _info(store: Store, name: str, users: dict[str, list[str]]) -> AppimgInfo:
    record = load_record(store, name)
    try:
        verity = activation.enforcement(store, record.current_version.kind)
    except RealmsError:
        verity = VerityMode.NONE  # policy "kernel" without dm-verity: such realms are refused
    return AppimgInfo(name, record, users.get(name, []), store.appimg_dir(name), verity)


def _users(store: Store) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for realm, found in origin.all_origins(store.realms_dir).items():
        users.setdefault(found.appimg, []).append(realm)
    return users


def list_appimgs(store: Store) -> list[AppimgInfo]:
    users = _users(store)
    return [_info(store, name, users) for name in _names(store)]


def show_appimg(store: Store, name: str) -> AppimgInfo:
    return _info(store, name, _users(store))


# Import


@dataclass(frozen=True)
class _Source:
    path: Path
    compression: Compression | None  # None: a directory or an image file
    image: bool = False


def _classify(source: Path) -> _Source:
    try:
        if source.is_dir():
            return _Source(source, None)
        if not source.exists():
            raise NotFound(f"{source}: no such file or directory")
        compression = detect(source)
    except PermissionError as error:
        raise RealmsError(f"{source}: {error.strerror}") from None
    if compression is not None:
        return _Source(source, compression)
    with open(source, "rb") as handle:
        if handle.read(4) == SGOS_MAGIC:
            return _Source(source, None, image=True)
    raise InvalidInput(
        f"{source} is neither a directory, a tarball (.tar, .tar.gz, .tar.xz, .tar.zst, "
        ".tar.bz2) nor an image file"
    )


def _fill(store: Store, source: _Source, tree: Path) -> None:
    """Fill the empty tree with the checked entries of the source: a directory goes through
    the same checks as a tarball (so its device nodes are skipped too), in one pass."""
    if source.compression is None:
        tarball.copy_directory(source.path, tree)
    else:
        tarball.extract(source.path, source.compression, tree)


def _check_os_tree(tree: Path, source: Path) -> None:
    if not (tree / "usr").is_dir() and not (tree / "bin").exists():
        log.warn(f"{source} has no /usr or /bin: realms made from it may not start")


def import_appimg(
    store: Store, name: str, source_path: Path, *, new_version: bool = False
) -> tuple[AppimgInfo, Version]:
    """Import a directory, a root filesystem tarball or a block/sealed image file as appimg
    ``name`` (version 1), or with ``new_version`` as the next version of appimg ``name``.

    A directory or tarball is checked while it is extracted into the version's temporary tree
    (:mod:`realms.appimg.tarball`); if it is refused, that tree is deleted and nothing is
    imported. Their device nodes are not stored (one warning counts them). An image file keeps
    whatever device nodes its filesystem holds: it is verified whole and stored as it is, and
    its activations are mounted ``nodev``, so such nodes open nothing.
    """
    check_appimg_name(name)
    source = _classify(source_path)
    store.sweep()
    if source.image:
        from realms.appimg.images import import_image  # it builds on this module

        version = import_image(store, name, source.path, new_version=new_version)
        return show_appimg(store, name), version

    def make(tree: Path) -> None:
        store.backend.create_tree(tree)
        _fill(store, source, tree)
        checkpoint("appimg-import:extracted")
        _check_os_tree(tree, source.path)

    new = NewVersion(ImageKind.TREE, VersionOrigin.IMPORT, str(source.path.resolve()))
    version = commit(store, name, make, new, mode="add" if new_version else "create")
    return show_appimg(store, name), version


def remove_appimg(store: Store, name: str) -> list[str]:
    """Remove an appimg and all its versions; return the realms that were made from it (tree
    realms are independent copies and keep working)."""
    store.sweep()
    # The update lock first (the lock order): an update holds it while it takes the appimg lock.
    with store.update_lock(name), store.appimg_lock(name):
        load_record(store, name)
        running_on = activation.image_users(store, name)
        if running_on:
            realms = sorted({realm for names in running_on.values() for realm in names})
            raise RealmsError(
                f"appimg {name!r} has realms running on its image versions: {', '.join(realms)}",
                hint="remove those realms first, or the snapshots named (realms snapshot "
                "remove NAME LABEL); realms on tree versions do not stop this",
            )
        users = _users(store).get(name, [])
        with store.activation_lock(name):
            activation.release_unused(store, name)
            store.discard(store.appimg_dir(name))
    return users
