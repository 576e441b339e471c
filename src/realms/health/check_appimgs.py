"""``realms check``: each appimg's record (``appimg/NAME/appimg.toml``) against its directory.

Read under the appimg's lock, shared (a commit renames its version into place and writes the
record under the same lock held exclusively, so a check never sees one without the other); a
repair takes it exclusively and looks again before it changes anything. What is checked:

- the directory has a record that parses and names itself;
- every version the record names is there, of its kind (a read-only subvolume, or an image
  file of mode 0444) — a missing one is dropped from the record only when another version can
  be current and no realm runs on it;
- nothing the record does not name (a version renamed into place by a command killed before it
  wrote the record: what the appimg's next commit deletes, :func:`realms.appimg.commit.reconcile`);
- a kept update and its tree agree.

Only ``lstat`` and one read of the record per appimg (and ``btrfs property get`` per tree
version): no tree is walked.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from realms.appimg.record import AppimgRecord, Change, Version, changing, load_record
from realms.errors import RealmsError
from realms.health.findings import Finding, finding, move_aside, relative
from realms.kinds import ImageKind
from realms.names import check_appimg_name
from realms.store import Store
from realms.store.layout import KEPT_NAME, RECORD_NAME, TEMPORARY_PREFIXES
from realms.system import btrfs
from realms.units import now

_VERSION_NAME = re.compile(r"v\d+(\.img)?")


def check_appimgs(store: Store, image_users: dict[tuple[str, int], list[str]]) -> list[Finding]:
    """Every appimg's findings; ``image_users``: the realms on each (appimg, image version)."""
    found: list[Finding] = []
    try:
        entries = sorted(os.listdir(store.appimgs_dir))
    except FileNotFoundError:
        return [_missing_directory(store, store.appimgs_dir)]
    for name in entries:
        if name.startswith("."):
            continue  # temporary names: the leftovers' check
        directory = store.appimg_dir(name)
        try:
            check_appimg_name(name)
        except RealmsError:
            found.append(_stray(store, directory, f"appimg {name!r}", "not an appimg name"))
            continue
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            found.append(_stray(store, directory, f"appimg {name}", "not a directory"))
            continue
        with store.appimg_lock(name, shared=True):
            found += _check_appimg(store, name, image_users)
    return found


def _missing_directory(store: Store, directory: Path) -> Finding:
    def fix() -> str:
        directory.mkdir(mode=0o755, exist_ok=True)
        return "made it (empty)"

    return finding("store-layout", "store", directory, "missing", "make it (empty)", fix)


def _stray(store: Store, path: Path, what: str, detail: str) -> Finding:
    """Something in appimg/ that is no appimg: moved aside, never deleted."""
    return finding(
        "appimg-stray",
        what,
        path,
        detail,
        "move it to removed/",
        lambda: move_aside(store, path, f"appimg-{path.name}"),
    )


def _check_appimg(
    store: Store, name: str, image_users: dict[tuple[str, int], list[str]]
) -> list[Finding]:
    what = f"appimg {name}"
    directory = store.appimg_dir(name)
    record_path = store.record_path(name)
    if not os.path.lexists(record_path):
        return [
            finding(
                "appimg-record",
                what,
                record_path,
                f"{RECORD_NAME} is missing: the appimg cannot be used",
                "move the appimg's directory (its versions) to removed/",
                lambda: move_aside(store, directory, f"appimg-{name}"),
            )
        ]
    try:
        record = load_record(store, name)
    except RealmsError as error:
        return [
            finding(
                "appimg-record",
                what,
                record_path,
                f"cannot be read: {error}",
                "restore appimg.toml from a backup, or move the appimg's directory away and "
                "import it again",
            )
        ]
    found: list[Finding] = []
    if record.name != name:
        found.append(
            finding(
                "appimg-record",
                what,
                record_path,
                f"names itself {record.name!r}",
                f"write the name {name!r} into it",
                lambda: _rename_record(store, name),
            )
        )
    for version in record.versions:
        found += _check_version(store, record, version, image_users)
    found += _unrecorded(store, name, record)
    return found


def _rename_record(store: Store, name: str) -> str:
    with changing(store, name) as record:
        record.name = name
    return "name written"


def _check_version(
    store: Store,
    record: AppimgRecord,
    version: Version,
    image_users: dict[tuple[str, int], list[str]],
) -> list[Finding]:
    name = record.name
    what = f"appimg {name}"
    path = store.version_path(name, version)
    label = f"version {version.version} ({version.kind})"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return [_missing_version(store, record, version, image_users)]
    if version.kind == ImageKind.TREE:
        if not stat.S_ISDIR(info.st_mode):
            return [_wrong_kind(what, path, f"{label} is not a directory")]
        if store.backend.name != "btrfs":
            return []
        if not btrfs.is_subvolume(path):
            return [_wrong_kind(what, path, f"{label} is not a btrfs subvolume")]
        if not btrfs.is_readonly(path):

            def freeze() -> str:
                with store.appimg_lock(name):
                    store.backend.freeze(path)
                return "made read-only"

            return [
                finding(
                    "version-writable",
                    what,
                    path,
                    f"{label} is writable (a version is frozen)",
                    "make it read-only",
                    freeze,
                )
            ]
        return []
    if not stat.S_ISREG(info.st_mode):
        return [_wrong_kind(what, path, f"{label} is not a regular file")]
    if stat.S_IMODE(info.st_mode) != 0o444:

        def chmod() -> str:
            with store.appimg_lock(name):
                os.chmod(path, 0o444, follow_symlinks=False)
            return "mode set to 0444"

        return [
            finding(
                "version-writable",
                what,
                path,
                f"{label} has mode {stat.S_IMODE(info.st_mode):04o}, not 0444",
                "set its mode to 0444",
                chmod,
            )
        ]
    return []


def _wrong_kind(what: str, path: Path, detail: str) -> Finding:
    return finding(
        "version-kind",
        what,
        path,
        detail,
        "look at it by hand; 'realms appimg prune' or 'appimg remove' drops it from the record",
    )


def _missing_version(
    store: Store,
    record: AppimgRecord,
    version: Version,
    image_users: dict[tuple[str, int], list[str]],
) -> Finding:
    name, number = record.name, version.version
    what = f"appimg {name}"
    path = store.version_path(name, version)
    detail = f"version {number} ({version.kind}) is in the record but not on disk"
    users = image_users.get((name, number), []) if version.kind.is_image else []
    others = [v for v in record.versions if v.version != number]
    if users:
        return finding(
            "version-missing",
            what,
            path,
            detail + f"; realms {', '.join(users)} run on it",
            f"'realms rebase' those realms onto another version of {name}, or remove them",
        )
    if not others:
        return finding(
            "version-missing",
            what,
            path,
            detail + " (its only version)",
            f"import a version again ('realms appimg import {name} ... --new-version'), or "
            f"'realms appimg remove {name}'",
        )
    current = number == record.current
    newest = max(v.version for v in others)
    also = f", version {newest} becomes current" if current else ""

    def drop() -> str:
        with changing(store, name) as changed:
            gone = changed.version(number)
            if gone is None or os.path.lexists(store.version_path(name, gone)):
                return "nothing to do (the record changed meanwhile)"
            changed.versions = [v for v in changed.versions if v.version != number]
            if changed.current == number:
                changed.current = max(v.version for v in changed.versions)
                changed.record(
                    Change(now(), "check", changed.current, f"version {number} was missing")
                )
        return f"dropped version {number} from the record{also}"

    return finding("version-missing", what, path, detail, f"drop it from the record{also}", drop)


def _unrecorded(store: Store, name: str, record: AppimgRecord) -> list[Finding]:
    """What is in the appimg's directory but not in its record (or the other way round)."""
    found: list[Finding] = []
    what = f"appimg {name}"
    directory = store.appimg_dir(name)
    known = {v.tree_name() for v in record.versions}
    for entry in sorted(os.listdir(directory)):
        if entry == RECORD_NAME or entry in known or entry.startswith(TEMPORARY_PREFIXES):
            continue
        path = directory / entry
        if entry == KEPT_NAME and record.kept is not None:
            continue
        if entry == KEPT_NAME or _VERSION_NAME.fullmatch(entry):
            detail = (
                "a kept update the record does not name"
                if entry == KEPT_NAME
                else f"{entry} is not in the record (a command was killed before it wrote it)"
            )
            found.append(
                finding(
                    "version-unrecorded",
                    what,
                    path,
                    detail,
                    "delete it (never committed: the appimg's next commit deletes it too)",
                    lambda: _reconcile(store, name),
                )
            )
    if record.kept is not None and not os.path.lexists(store.kept_path(name)):

        def forget_kept() -> str:
            with changing(store, name) as changed:
                if not os.path.lexists(store.kept_path(name)):
                    changed.kept = None
            return "kept update dropped from the record"

        found.append(
            finding(
                "kept-update-missing",
                what,
                store.kept_path(name),
                "the record names a kept update whose tree is gone",
                "drop the kept update from the record",
                forget_kept,
            )
        )
    return found


def _reconcile(store: Store, name: str) -> str:
    from realms.appimg.commit import reconcile

    with store.appimg_lock(name), changing(store, name, locked=True) as record:
        removed = reconcile(store, name, record)
    return (
        f"deleted {removed} unrecorded entr{'y' if removed == 1 else 'ies'}"
        if removed
        else (f"nothing left to delete in {relative(store, store.appimg_dir(name))}")
    )
