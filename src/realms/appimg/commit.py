"""The one way a version of an appimg comes into being: import, build, update, seal (and later
pull) all end in :func:`commit`.

Under the appimg's lock, :func:`commit`

1. loads the record (or, for a new appimg, stages the whole appimg directory instead),
2. deletes what the record does not name (:func:`reconcile`: a version renamed into place by a
   command killed before it wrote the record, a kept update the record does not name),
3. lets the caller's ``check`` look at the record (an update refuses to commit over a version
   that became current meanwhile, and keeps its tree instead; a kept update being committed
   is cleared from the record, written with the new version),
4. has the caller's ``place`` put the finished tree or image file at a temporary name beside
   the versions (``.new.vN.RANDOM``), freezes it (a tree read-only, an image file 0444), and
   renames it to ``vN`` / ``vN.img`` with RENAME_NOREPLACE,
5. adds the version to the record as the current one and writes the record atomically.

Killed between 4 and 5, the store holds a version the record does not name: the appimg is as it
was, and the next commit deletes it. Whatever takes time (extracting, building, sealing, writing
an update's changes to disk) happens before, outside the appimg's lock, wherever possible; a
version whose number goes into what is made (a sealed image's signed metainfo) reserves it
first (:func:`reserve`), so that numbers are never reused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from realms.appimg.record import (
    AppimgRecord,
    Change,
    Version,
    changing,
    exists,
    write_record,
)
from realms.errors import AlreadyExists, NotFound, RealmsError
from realms.faults import checkpoint
from realms.kinds import ImageKind, VersionOrigin
from realms.storage import Changes
from realms.store import Store
from realms.store.layout import KEPT_NAME, RECORD_NAME, TEMPORARY_PREFIXES
from realms.system.run import run
from realms.units import now

Mode = Literal["create", "add", "either"]
"""Whether the appimg must be new ("create"), must exist ("add"), or may be either."""

Check = Callable[[AppimgRecord], RealmsError | None]
"""Called with the record under the appimg's lock before anything is placed; it may change the
record (which is then written) and return an error that stops the commit."""


@dataclass(frozen=True)
class NewVersion:
    """What :func:`commit` records about the version it makes."""

    kind: ImageKind
    origin: VersionOrigin
    detail: str
    number: int | None = None
    """A number taken with :func:`reserve`; None: the next one."""
    parent: int | None = None
    """The version it was made from; None: the current one (none for a new appimg)."""
    build_key: str | None = None
    changes: Changes | None = None
    measure: bool = True
    """Record a tree's size (``du``, which walks it): not for updates, whose commit must not
    take longer for a larger tree."""
    source: dict[str, str] | None = None
    """A pulled version's ``{"ref", "digest"}`` (see Version.source)."""
    image_digest: str | None = None
    """An image version's ``sha256:HEX``, where it is known (see Version.image_digest)."""


def reserve(store: Store, name: str) -> int:
    """Take the next version number for a version that will take a while to make."""
    with changing(store, name) as record:
        number = record.next_number()
        record.highest = number
    return number


def commit(
    store: Store,
    name: str,
    place: Callable[[Path], None],
    new: NewVersion,
    *,
    mode: Mode = "either",
    check: Check | None = None,
) -> Version:
    """Commit the version that ``place`` puts at the path it is given (a tree, or the image
    file of a block or sealed ``kind``) as the new current version of appimg ``name``."""
    with store.appimg_lock(name):
        if not exists(store, name):
            if mode == "add":
                raise NotFound(f"no appimg named {name!r} to add a version to")
            return _create(store, name, place, new)
        if mode == "create":
            raise AlreadyExists(
                f"appimg {name!r} already exists",
                hint="add --new-version to import as its next version, or choose another name",
            )
        failure: RealmsError | None = None
        with changing(store, name, locked=True) as record:
            # Before the check, which may change what the record names (its kept update).
            reconcile(store, name, record)
            failure = check(record) if check is not None else None
            if failure is None:
                version = _version(record, new)
                target = store.version_path(name, version)
                with store.staging(target, f"{name} v{version.version}") as path:
                    _place(store, path, place, version, new)
                checkpoint("appimg-version:renamed")
                checkpoint(f"appimg-{new.origin}:renamed")
                record.add(version, Change(now(), new.origin, version.version, new.detail))
        if failure is not None:
            raise failure
    return version


def _version(record: AppimgRecord, new: NewVersion) -> Version:
    number = new.number if new.number is not None else record.next_number()
    version = Version(number, new.kind, now(), new.origin, new.detail, build_key=new.build_key)
    version.source, version.image_digest = new.source, new.image_digest
    version.parent = new.parent if new.parent is not None else record.current
    if new.changes is not None:
        version.written, version.files_changed = new.changes.written, new.changes.files
    return version


def _create(store: Store, name: str, place: Callable[[Path], None], new: NewVersion) -> Version:
    """A new appimg: its directory, version 1 and its record are staged together and renamed
    into place at once. The caller holds the appimg's lock."""
    version = Version(1, new.kind, now(), new.origin, new.detail, build_key=new.build_key)
    version.source, version.image_digest = new.source, new.image_digest
    record = AppimgRecord(name, 1)
    with store.staging(store.appimg_dir(name), f"appimg {name!r}") as staged:
        staged.mkdir(mode=0o755)
        _place(store, staged / version.tree_name(), place, version, new)
        record.add(version, Change(now(), new.origin, 1, new.detail))
        # Written inside the staged directory, which is renamed to the appimg's as a whole.
        write_record(staged / RECORD_NAME, record)
        checkpoint("appimg-import:staged")
    return version


def _place(
    store: Store, path: Path, place: Callable[[Path], None], version: Version, new: NewVersion
) -> None:
    place(path)
    if version.kind == ImageKind.TREE:
        if new.measure:
            version.size = _tree_size(path)
        store.backend.freeze(path)
    else:
        version.size = path.stat().st_size
        path.chmod(0o444)


def _tree_size(tree: Path) -> int:
    result = run(["du", "--summarize", "--bytes", "--apparent-size", tree])
    match = re.match(r"(\d+)", str(result.stdout))
    return int(match[1]) if match else 0


def reconcile(store: Store, name: str, record: AppimgRecord) -> int:
    """Delete the versions and the kept update that are in the appimg's directory but not in
    its record (the temporary names are the sweep's, :mod:`realms.store.txn`); return how many.
    The caller holds the appimg's lock."""
    directory = store.appimg_dir(name)
    known = {v.tree_name() for v in record.versions}
    removed = 0
    for entry in sorted(os.listdir(directory)):
        if entry == RECORD_NAME or entry in known or entry.startswith(TEMPORARY_PREFIXES):
            continue
        if (entry == KEPT_NAME and record.kept is None) or re.fullmatch(r"v\d+(\.img)?", entry):
            store.remove(directory / entry)
            removed += 1
    return removed
