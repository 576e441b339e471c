"""Operations on appimgs as a whole: list, show, import, remove.

Every change happens under the appimg's lock and through a temporary name (see
:mod:`realms.store`): a new appimg is assembled in ``appimg/.new.NAME.RANDOM`` and renamed into
place; a new version of an existing appimg is the tree ``appimg/NAME/.new.vN.RANDOM``, renamed to
``vN`` before the record names it current. A tree that the record does not name is a leftover of
a killed command and is deleted by the next command that holds the lock.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from realms import activation, log, origin
from realms.appimg import tarball
from realms.appimg.layout import (
    LOCK_WAIT,
    appimg_dir,
    clean_versions,
    load_record,
    no_update_running,
)
from realms.appimg.record import RECORD_NAME, AppimgRecord, Change, Version, load
from realms.errors import AlreadyExists, InvalidInput, NotFound, RealmsError
from realms.faults import checkpoint
from realms.names import check_appimg_name
from realms.store import Store, write_toml
from realms.system.run import run
from realms.units import now

SGOS_MAGIC = b"SGOS"


@dataclass(frozen=True)
class AppimgInfo:
    name: str
    record: AppimgRecord
    realms: list[str]
    path: Path
    verity: str
    """How the current version is checked here: "kernel", "userspace" (checked at
    activation) or "none" (a tree or block version)."""

    @property
    def kind(self) -> str:
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
    return sorted(
        e
        for e in entries
        if not e.startswith(".") and (store.appimgs_dir / e / RECORD_NAME).exists()
    )


def _info(store: Store, name: str, users: dict[str, list[str]]) -> AppimgInfo:
    record = load_record(store, name)
    try:
        verity = activation.enforcement(store, record.current_version.kind)
    except RealmsError:
        verity = "none"  # policy "kernel" without dm-verity: such realms are refused
    return AppimgInfo(name, record, users.get(name, []), appimg_dir(store, name), verity)


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
    compression: tarball.Compression | None  # None: a directory or an image file
    image: bool = False


def _classify(source: Path) -> _Source:
    try:
        if source.is_dir():
            return _Source(source, None)
        if not source.exists():
            raise NotFound(f"{source}: no such file or directory")
        compression = tarball.detect(source)
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


def _tree_size(tree: Path) -> int:
    result = run(["du", "--summarize", "--bytes", "--apparent-size", tree])
    match = re.match(r"(\d+)", str(result.stdout))
    return int(match[1]) if match else 0


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
    if source.image:
        from realms.appimg.images import import_image  # it builds on this module

        version = import_image(store, name, source.path, new_version=new_version)
        return show_appimg(store, name), version

    def make(tree: Path) -> None:
        store.backend.create_tree(tree)
        _fill(store, source, tree)
        checkpoint("appimg-import:extracted")
        _check_os_tree(tree, source.path)

    version = add_version(
        store,
        name,
        make,
        origin="import",
        detail=str(source.path.resolve()),
        mode="add" if new_version else "create",
    )
    return show_appimg(store, name), version


def add_version(
    store: Store,
    name: str,
    make: Callable[[Path], None],
    *,
    origin: str,
    detail: str,
    mode: str = "either",
    kind: str = "tree",
    build_key: str | None = None,
) -> Version:
    """Make a version with ``make`` (which creates the tree, or the image file of a block or
    sealed ``kind``, at the path it is given) and commit it as the new current version of
    appimg ``name``; ``mode`` says whether the appimg must be new ("create"), must exist
    ("add"), or may be either ("either").
    """
    with store.appimg_lock(name, wait=LOCK_WAIT):
        store.sweep(store.appimgs_dir, store.appimg_lock, held=name)
        directory = appimg_dir(store, name)
        if (directory / RECORD_NAME).exists():
            if mode == "create":
                raise AlreadyExists(
                    f"appimg {name!r} already exists",
                    hint="add --new-version to import as its next version, or choose another name",
                )
            record = load(directory)
            clean_versions(store, name, record)
            version = Version(record.next_number(), kind, now(), origin, detail)
            version.parent, version.build_key = record.current, build_key
            with store.staging(
                directory / version.tree_name(), f"{name} v{version.version}"
            ) as tree:
                _make_frozen_tree(store, tree, make, version)
            checkpoint("appimg-version:renamed")
            record.add(version, Change(now(), origin, version.version, detail))
            write_toml(directory / RECORD_NAME, record.to_toml())
            return version
        if mode == "add":
            raise NotFound(f"no appimg named {name!r} to add a version to")
        version = Version(1, kind, now(), origin, detail, build_key=build_key)
        record = AppimgRecord(name, 1)
        record.add(version, Change(now(), origin, 1, detail))
        with store.staging(directory, f"appimg {name!r}") as staged:
            staged.mkdir(mode=0o755)
            _make_frozen_tree(store, staged / version.tree_name(), make, version)
            write_toml(staged / RECORD_NAME, record.to_toml())
            checkpoint("appimg-import:staged")
        return version


def _make_frozen_tree(
    store: Store, path: Path, make: Callable[[Path], None], version: Version
) -> None:
    make(path)
    if version.kind == "tree":
        version.size = _tree_size(path)
        store.backend.freeze(path)
    else:
        version.size = path.stat().st_size
        path.chmod(0o444)


def remove_appimg(store: Store, name: str) -> list[str]:
    """Remove an appimg and all its versions; return the realms that were made from it (tree
    realms are independent copies and keep working)."""
    with store.appimg_lock(name, wait=LOCK_WAIT), no_update_running(store, name):
        load_record(store, name)
        running_on = activation.image_users(store, name)
        if running_on:
            realms = sorted({realm for names in running_on.values() for realm in names})
            raise RealmsError(
                f"appimg {name!r} has realms running on its image versions: {', '.join(realms)}",
                hint="remove those realms first (realms on tree versions do not stop this)",
            )
        users = _users(store).get(name, [])
        with activation.lock(store, name):
            activation.release_unused(store, name)
            store.discard(appimg_dir(store, name))
    return users
