"""Which realm came from which appimg version: each realm's ``origin.toml``.

Written once when the realm is made and never changed by appimg updates, so that ``realms list``
can tell which realms are outdated and ``realms appimg show`` which realms use an appimg.

A rebase or a restore (:mod:`realms.rootfs`) gives the realm another root and another origin
in one step: it writes ``root-swap.toml`` (the new origin and the identity of the new root),
then swaps the roots with one atomic exchange, then writes ``origin.toml``. While the swap
record is there, the root that is in place says which origin is true (:func:`load`), so a
command killed between the exchange and the write leaves a consistent realm either way.

A snapshot of a realm's root keeps the origin of that root (``snapshots/LABEL/origin.toml``,
:func:`snapshot_origins`): a snapshot of an image realm's layer needs its version to stay.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from realms.config import read_toml
from realms.errors import InvalidInput, RealmsError
from realms.kinds import ImageKind
from realms.store.layout import ORIGIN_NAME, ROOT_SWAP_NAME

__all__ = ["ORIGIN_NAME", "Origin", "all_origins", "load", "root_identity", "snapshot_origins"]


class Origin(NamedTuple):
    appimg: str
    appimg_version: int
    kind: ImageKind
    created: str
    uid_base: int | None = None
    """The first host uid of the realm's user namespace (see :mod:`realms.system.idmap`);
    None for a realm made before realms used user namespaces, until its next run."""

    def to_toml(self) -> dict[str, object]:
        return {key: value for key, value in self._asdict().items() if value is not None}


def root_identity(path: Path) -> str:
    """What tells one root (a tree or an image realm's layer) from another one that replaced it
    under the same name: its btrfs subvolume's id, else its inode number."""
    from realms.system import btrfs

    if btrfs.is_subvolume(path):
        try:
            return f"subvolume:{btrfs.subvolume_id(path)}"
        except OSError:
            pass  # a directory with inode 256 on another filesystem (the copy backend)
    return f"inode:{os.lstat(path).st_ino}"


def load(realm_dir: Path) -> Origin:
    found = _parse(realm_dir / ORIGIN_NAME)
    swap = realm_dir / ROOT_SWAP_NAME
    if os.path.lexists(swap):
        data = read_toml(swap)
        root = data.get("root")
        if root not in ("rootfs", "upper") or not isinstance(data.get("identity"), str):
            raise InvalidInput(f"{swap}: damaged realm record")
        try:
            swapped = root_identity(realm_dir / root) == data["identity"]
        except OSError:
            swapped = False
        if swapped:
            return _parse(swap, data.get("origin"))
    return found


def _parse(path: Path, data: object = None) -> Origin:
    if data is None:
        data = read_toml(path)
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: damaged realm record")
    try:
        return Origin(
            appimg=str(data["appimg"]),
            appimg_version=int(data["appimg_version"]),
            kind=ImageKind(data["kind"]),
            created=str(data["created"]),
            uid_base=int(data["uid_base"]) if "uid_base" in data else None,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInput(f"{path}: damaged realm record ({error})") from None


def all_origins(realms_dir: Path) -> dict[str, Origin]:
    """Every complete realm's origin, by realm name (temporary names are skipped)."""
    result = {}
    try:
        names = sorted(n for n in os.listdir(realms_dir) if not n.startswith("."))
    except FileNotFoundError:
        return {}
    for name in names:
        try:
            result[name] = load(realms_dir / name)
        except RealmsError:
            continue
    return result


def snapshot_origins(realms_dir: Path) -> dict[tuple[str, str], Origin]:
    """The origin of every realm snapshot's root, by (realm, label); damaged ones skipped."""
    result = {}
    for name in all_origins(realms_dir):
        directory = realms_dir / name / "snapshots"
        try:
            labels = sorted(n for n in os.listdir(directory) if not n.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for label in labels:
            try:
                result[(name, label)] = _parse(directory / label / ORIGIN_NAME)
            except RealmsError:
                continue
    return result
