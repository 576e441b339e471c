"""``realms check``: each realm's directory (``realms/NAME/``) against its ``origin.toml``.

Read under the realm's lock, shared (a rebase or a restore swaps a root under it held
exclusively); a repair takes it exclusively and looks again. What is checked:

- ``origin.toml`` parses (a realm without one is invisible to every command: its directory,
  home included, is moved to ``removed/``, never deleted);
- its home and config are there (a missing home is made again from ``skel/``: there was nothing
  left to lose; a config that does not parse is kept beside a fresh one);
- a tree realm's root is a subvolume (a missing root is cloned again from the version it came
  from, when that version is still there);
- an image realm's upper and work directories are there, and the version it runs on is still
  recorded (a realm on a version that is gone is for ``realms rebase``);
- no two realms share a uid range (the later one is given a new range at its next run).

Only ``lstat`` and the read of two small files per realm: no tree is walked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from realms import config, origin
from realms.appimg.record import AppimgRecord, load_record
from realms.errors import RealmsError
from realms.health.findings import Finding, finding, move_aside
from realms.kinds import IMAGE_KINDS
from realms.names import check_existing_realm_name
from realms.store import Store, write_toml
from realms.store.layout import TEMPORARY_PREFIXES
from realms.system import btrfs
from realms.system.fs import atomic_write, rename_noreplace


def check_realms(store: Store) -> tuple[list[Finding], dict[str, origin.Origin]]:
    """Every realm's findings, and the origins that could be read (by realm name)."""
    found: list[Finding] = []
    origins: dict[str, origin.Origin] = {}
    records: dict[str, AppimgRecord | None] = {}
    try:
        entries = sorted(os.listdir(store.realms_dir))
    except FileNotFoundError:
        return found, origins  # the appimgs' check reports the store's layout
    for name in entries:
        if name.startswith("."):
            continue  # temporary names: the leftovers' check
        directory = store.realm_dir(name)
        try:
            check_existing_realm_name(name)
            is_directory = stat.S_ISDIR(os.lstat(directory).st_mode)
        except RealmsError:
            found.append(_orphan(store, name, directory, "not a realm name"))
            continue
        if not is_directory:
            found.append(_orphan(store, name, directory, "not a directory"))
            continue
        with store.realm_lock(name, shared=True):
            problems, made = _check_realm(store, name, records)
        found += problems
        if made is not None:
            origins[name] = made
    found += _shared_ranges(store, origins)
    return found, origins


def _orphan(store: Store, name: str, directory: Path, detail: str) -> Finding:
    def fix() -> str:
        try:
            check_existing_realm_name(name)
        except RealmsError:
            return move_aside(store, directory, "stray")
        with store.realm_lock(name), store.run_lock(name):
            if not os.path.lexists(directory) or _readable_origin(directory):
                return "nothing to do (the realm changed meanwhile)"
            return move_aside(store, directory, f"realm-{name}")

    return finding(
        "realm-orphan",
        f"realm {name}",
        directory,
        detail,
        "move the directory (its home and root) to removed/",
        fix,
    )


def _readable_origin(directory: Path) -> bool:
    try:
        origin.load(directory)
    except RealmsError:
        return False
    return True


def _record(
    records: dict[str, AppimgRecord | None], store: Store, name: str
) -> AppimgRecord | None:
    if name not in records:
        try:
            records[name] = load_record(store, name)
        except RealmsError:
            records[name] = None
    return records[name]


def _check_realm(
    store: Store, name: str, records: dict[str, AppimgRecord | None]
) -> tuple[list[Finding], origin.Origin | None]:
    files = store.realm(name)
    what = f"realm {name}"
    try:
        if not files.origin.exists():
            raise RealmsError("missing")
        made = origin.load(files.directory)
    except RealmsError as error:
        reason = str(error).removeprefix(f"{files.origin}: ")
        detail = f"origin.toml: {reason}: the realm is invisible to every command"
        return [_orphan(store, name, files.directory, detail)], None
    found: list[Finding] = []
    record = _record(records, store, made.appimg)
    version = record.version(made.appimg_version) if record is not None else None
    if made.kind in IMAGE_KINDS:
        if version is None or not os.path.lexists(store.version_path(made.appimg, version)):
            found.append(
                finding(
                    "realm-version-gone",
                    what,
                    files.origin,
                    f"runs on version {made.appimg_version} of appimg {made.appimg}, which is gone",
                    f"'realms rebase {name}' onto another version, or remove the realm",
                )
            )
        for layer in (files.upper, files.work, files.rootfs, files.lower):
            if not _is_directory(layer):
                found.append(_layer(store, name, layer, made))
    else:
        found += _check_root(store, name, made, record)
    found += _check_snapshots(store, name)
    if not _is_directory(files.home):
        found.append(_home(store, name))
    found += _check_config(store, name)
    return found, made


def _finish(store: Store, name: str) -> str:
    from realms.rootfs.roots import finish

    with store.realm_lock(name), store.run_lock(name):
        finish(store, name)
    return "finished (as the realm's next rebase, restore or snapshot would)"


def _check_snapshots(store: Store, name: str) -> list[Finding]:
    """An interrupted swap of the realm's root (rebase, restore), what killed snapshot commands
    left, and snapshots whose origin or root is damaged."""
    files = store.realm(name)
    what = f"realm {name}"
    found = []
    if os.path.lexists(files.root_swap):
        found.append(
            finding(
                "root-swap",
                what,
                files.root_swap,
                "a rebase or restore was interrupted",
                "finish it (as the realm's next rebase, restore or snapshot would)",
                lambda: _finish(store, name),
            )
        )
    try:
        entries = sorted(os.listdir(files.snapshots))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        path = files.snapshots / entry
        if entry.startswith(TEMPORARY_PREFIXES):
            found.append(
                finding(
                    "leftover",
                    what,
                    path,
                    "left by a killed command",
                    "delete it (as the realm's next rebase, restore or snapshot would)",
                    lambda: _finish(store, name),
                )
            )
            continue
        if entry.startswith("."):
            continue
        try:
            made = origin.load(path)
            layer = path / ("upper" if made.kind in IMAGE_KINDS else "rootfs")
            if not _is_directory(layer):
                raise RealmsError(f"its {layer.name}/ is missing")
        except RealmsError as error:
            reason = str(error).removeprefix(f"{path / 'origin.toml'}: ")
            found.append(
                finding(
                    "snapshot-damaged",
                    what,
                    path,
                    f"snapshot {entry}: {reason}",
                    "move it to removed/",
                    lambda path=path, entry=entry: move_aside(  # type: ignore[misc]
                        store, path, f"{name}-snapshot-{entry}"
                    ),
                )
            )
    return found


def _is_directory(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _check_root(
    store: Store, name: str, made: origin.Origin, record: AppimgRecord | None
) -> list[Finding]:
    rootfs = store.realm(name).rootfs
    if _is_directory(rootfs):
        if store.backend.name == "btrfs" and not btrfs.is_subvolume(rootfs):
            return [
                finding(
                    "realm-root",
                    f"realm {name}",
                    rootfs,
                    "its root is a directory, not a btrfs subvolume (snapshots need one)",
                    f"'realms rebase {name}' gives it a root that is one",
                )
            ]
        return []
    version = record.version(made.appimg_version) if record is not None else None
    source = store.version_path(made.appimg, version) if version is not None else None
    exists = os.path.lexists(rootfs)
    detail = "its root filesystem is " + ("not a directory" if exists else "missing")
    if source is None or not _is_directory(source) or exists:
        return [
            finding(
                "realm-root",
                f"realm {name}",
                rootfs,
                detail,
                f"'realms rebase {name}' gives it a fresh root; or remove it (--keep-home)",
            )
        ]
    label = f"appimg {made.appimg} version {made.appimg_version}"

    def clone() -> str:
        with store.realm_lock(name), store.run_lock(name):
            if os.path.lexists(rootfs):
                return "nothing to do (the realm changed meanwhile)"
            with (
                store.appimg_lock(made.appimg, shared=True),
                store.staging(rootfs, f"the root of realm {name!r}") as staged,
            ):
                store.backend.clone(source, staged)
        return f"cloned a fresh root from {label}"

    return [
        finding(
            "realm-root", f"realm {name}", rootfs, detail, f"clone a fresh root from {label}", clone
        )
    ]


def _layer(store: Store, name: str, layer: Path, made: origin.Origin) -> Finding:
    def fix() -> str:
        with store.realm_lock(name), store.run_lock(name):
            if _is_directory(layer):
                return "nothing to do (the realm changed meanwhile)"
            if os.path.lexists(layer):
                kept = layer.with_name(f"{layer.name}.damaged")
                rename_noreplace(layer, kept)
            layer.mkdir(mode=0o755)
            if layer == store.realm(name).upper and made.uid_base is not None:
                os.chown(layer, made.uid_base, made.uid_base)
        return "made it (empty)"

    return finding(
        "realm-layer",
        f"realm {name}",
        layer,
        f"its {layer.name}/ directory is missing",
        "make it (empty: what was written there is gone already)",
        fix,
    )


def _home(store: Store, name: str) -> Finding:
    home = store.realm(name).home

    def fix() -> str:
        from realms.realm import make_home

        with store.realm_lock(name), store.run_lock(name):
            if _is_directory(home):
                return "nothing to do (the realm changed meanwhile)"
            kept = ""
            if os.path.lexists(home):
                kept = "; what was there " + move_aside(store, home, f"{name}-home")
            with store.staging(home, f"the home of realm {name!r}") as staged:
                make_home(store, staged)
        return "made a new home from skel/" + kept

    return finding(
        "realm-home",
        f"realm {name}",
        home,
        "its home is missing" if not os.path.lexists(home) else "its home is not a directory",
        "make a new home from skel/ (what is there now is moved to removed/)",
        fix,
    )


def _check_config(store: Store, name: str) -> list[Finding]:
    path = store.realm(name).config
    try:
        config.read_toml(path)
        if os.path.lexists(path):
            config.load_realm(path, store.config.realm_defaults)
            return []
        detail = "its config is missing"
    except RealmsError as error:
        detail = f"its config cannot be read ({error})"

    def fix() -> str:
        with store.realm_lock(name), store.run_lock(name):
            kept = ""
            if os.path.lexists(path):
                kept = "; the old one " + move_aside(store, path, f"{name}-config")
            made = origin.load(store.realm_dir(name))
            template = config.commented_template(
                config.REALM_SETTINGS,
                f"realm {name}; rewritten by realms check; unset keys fall back to "
                f"[realm-defaults] in {store.config_path}",
                {"realmfs": made.appimg},
            )
            atomic_write(path, template)
        return "wrote a fresh config" + kept

    return [
        finding(
            "realm-config",
            f"realm {name}",
            path,
            detail,
            "write a fresh config (a damaged one is moved to removed/)",
            fix,
        )
    ]


def _shared_ranges(store: Store, origins: dict[str, origin.Origin]) -> list[Finding]:
    """Two realms in one uid range could reach each other's files: the later one made gets a
    new range at its next run (its origin forgets the range)."""
    found = []
    first: dict[int, str] = {}
    for name, made in sorted(origins.items(), key=lambda item: (item[1].created, item[0])):
        if made.uid_base is None:
            continue
        other = first.setdefault(made.uid_base, name)
        if other == name:
            continue

        def fix(name: str = name) -> str:
            with store.realm_lock(name), store.run_lock(name):
                current = origin.load(store.realm_dir(name))
                changed = current._replace(uid_base=None)
                write_toml(store.realm(name).origin, changed.to_toml())
            return "its origin forgets the range: the next run gives it a new one"

        found.append(
            finding(
                "realm-uid-range",
                f"realm {name}",
                store.realm(name).origin,
                f"shares the uid range {made.uid_base} with realm {other}",
                "give it a new range at its next run",
                fix,
            )
        )
    return found
