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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realms import log, origin
from realms.appimg import tarball
from realms.appimg.record import RECORD_NAME, AppimgRecord, Version, load
from realms.errors import AlreadyExists, InvalidInput, NotFound, RealmsError
from realms.faults import checkpoint
from realms.names import check_appimg_name
from realms.store import Store, write_toml
from realms.system.run import run
from realms.units import now

LOCK_WAIT = 30.0
SGOS_MAGIC = b"SGOS"


@dataclass(frozen=True)
class AppimgInfo:
    name: str
    record: AppimgRecord
    realms: list[str]
    path: Path

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
        }


def appimg_dir(store: Store, name: str) -> Path:
    return store.appimgs_dir / name


def version_path(store: Store, name: str, version: Version) -> Path:
    return appimg_dir(store, name) / version.tree_name()


def load_record(store: Store, name: str) -> AppimgRecord:
    """The record of an existing appimg, or NotFound with a hint."""
    check_appimg_name(name)
    directory = appimg_dir(store, name)
    if not (directory / RECORD_NAME).exists():
        raise NotFound(
            f"no appimg named {name!r}",
            hint="'realms appimg list' shows the appimgs; 'realms appimg import' adds one",
        )
    return load(directory)


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
    return AppimgInfo(name, load_record(store, name), users.get(name, []), appimg_dir(store, name))


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
    compression: tarball.Compression | None  # None: a directory


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
            raise RealmsError(
                f"{source} is a block or sealed image; importing those is not supported yet",
                hint="import a directory or a root filesystem tarball",
            )
    raise InvalidInput(
        f"{source} is neither a directory, a tarball (.tar, .tar.gz, .tar.xz, .tar.zst, "
        ".tar.bz2) nor an image file"
    )


def _fill(store: Store, source: _Source, tree: Path) -> None:
    store.backend.create_tree(tree)
    if source.compression is None:
        with log.step(f"Copying {source.path}"):
            run(["cp", "-a", "--reflink=auto", "--", f"{source.path}/.", f"{tree}/"])
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
    """Import a directory or a root filesystem tarball as appimg ``name`` (version 1), or with
    ``new_version`` as the next version of the existing appimg ``name``.
    """
    check_appimg_name(name)
    source = _classify(source_path)
    if source.compression is not None:
        tarball.check(source.path, source.compression)
    detail = str(source.path.resolve())
    with store.appimg_lock(name, wait=LOCK_WAIT):
        store.sweep(store.appimgs_dir, store.appimg_lock, held=name)
        directory = appimg_dir(store, name)
        if (directory / RECORD_NAME).exists():
            if not new_version:
                raise AlreadyExists(
                    f"appimg {name!r} already exists",
                    hint="add --new-version to import as its next version, or choose another name",
                )
            record = load(directory)
            clean_versions(store, name, record)
            number = record.next_number()
            version = Version(number, "tree", now(), "import", detail)
            with store.staging(directory / version.tree_name(), f"{name} v{number}") as tree:
                _fill(store, source, tree)
                checkpoint("appimg-import:extracted")
                _check_os_tree(tree, source.path)
                version.size = _tree_size(tree)
                store.backend.freeze(tree)
            checkpoint("appimg-version:renamed")
            record.versions.append(version)
            record.current = number
            write_toml(directory / RECORD_NAME, record.to_toml())
        else:
            if new_version:
                raise NotFound(f"no appimg named {name!r} to add a version to")
            version = Version(1, "tree", now(), "import", detail)
            record = AppimgRecord(name, 1, [version])
            with store.staging(directory, f"appimg {name!r}") as staged:
                staged.mkdir(mode=0o755)
                tree = staged / version.tree_name()
                _fill(store, source, tree)
                checkpoint("appimg-import:extracted")
                _check_os_tree(tree, source.path)
                version.size = _tree_size(tree)
                store.backend.freeze(tree)
                write_toml(staged / RECORD_NAME, record.to_toml())
                checkpoint("appimg-import:staged")
    return show_appimg(store, name), version


def clean_versions(store: Store, name: str, record: AppimgRecord) -> None:
    """Delete trees in the appimg's directory that its record does not name (leftovers of
    killed commands). The caller holds the appimg's lock."""
    directory = appimg_dir(store, name)
    known = {v.tree_name() for v in record.versions}
    for entry in os.listdir(directory):
        if entry == RECORD_NAME or entry in known:
            continue
        if entry.startswith((".new.", ".del.")) or re.fullmatch(r"v\d+", entry):
            store.backend.remove(directory / entry)


def remove_appimg(store: Store, name: str) -> list[str]:
    """Remove an appimg and all its versions; return the realms that were made from it (tree
    realms are independent copies and keep working)."""
    with store.appimg_lock(name, wait=LOCK_WAIT):
        load_record(store, name)
        users = _users(store).get(name, [])
        store.discard(appimg_dir(store, name))
    return users
