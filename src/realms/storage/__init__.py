"""Storage backends: how the store makes, clones, freezes and removes root filesystem trees.

The model: an appimg version of kind ``tree`` is a *frozen* tree (read-only); a realm's root
filesystem is a writable *clone* of one version, independent of it afterwards. Backends only do
these primitives; the store (:mod:`realms.store`) decides what to do with them, owns temporary
names, locks and cleanup.

- ``btrfs`` (:mod:`realms.storage.btrfs`): trees are subvolumes; a clone is a snapshot, whose cost
  does not grow with the tree; frozen means the subvolume's read-only property.
- ``copy`` (:mod:`realms.storage.copy`): trees are plain directories; a clone is
  ``cp -a --reflink=auto`` (a full copy unless the filesystem can share extents); frozen is only
  recorded, not enforced.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol


class Changes(NamedTuple):
    written: int
    """Bytes of file data written."""
    files: int
    """Files written to (created or changed); deletions are not counted."""


class Backend(Protocol):
    name: str
    zero_cost: bool
    """Whether a clone costs the same whatever the tree's size."""

    def create_tree(self, path: Path) -> None:
        """Make an empty, writable tree at ``path`` (which must not exist)."""

    def clone(self, source: Path, target: Path) -> None:
        """Make ``target`` a writable tree with the contents of the tree ``source``."""

    def freeze(self, path: Path) -> None:
        """Make the tree at ``path`` read-only."""

    def remove(self, path: Path) -> None:
        """Remove ``path``: a tree, a file, or a directory that holds trees. On a filesystem
        short of space, return only when the space is free again."""

    def reclaim_space(self, store: Path) -> None:
        """Wait until the space of the trees this backend removed is free again (after a
        failed change, or a removal on a store short of space)."""

    def change_marker(self, path: Path) -> int | None:
        """A mark of the tree's state now, for :meth:`changes_since` (None: not supported)."""

    def changes_since(self, path: Path, marker: int) -> Changes | None:
        """What was written to the tree since ``marker``, or None if the backend cannot tell."""


def backend_named(name: str) -> Backend:
    # Imported here: the drivers import nothing from this module but the protocol's name.
    from realms.storage.btrfs import BtrfsBackend
    from realms.storage.copy import CopyBackend

    drivers: dict[str, type[Backend]] = {"btrfs": BtrfsBackend, "copy": CopyBackend}
    return drivers[name]()
