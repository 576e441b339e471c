"""The btrfs backend: every tree is a subvolume, a clone is a snapshot."""

from __future__ import annotations

from pathlib import Path

from realms.storage import Changes
from realms.system import btrfs
from realms.system.fs import remove_tree


class BtrfsBackend:
    name = "btrfs"
    zero_cost = True

    def create_tree(self, path: Path) -> None:
        btrfs.create_subvolume(path)

    def clone(self, source: Path, target: Path) -> None:
        btrfs.snapshot(source, target)

    def freeze(self, path: Path) -> None:
        btrfs.set_readonly(path)

    def remove(self, path: Path) -> None:
        remove_tree(path, _delete_if_subvolume)

    def reclaim_space(self, store: Path) -> None:
        # btrfs frees a deleted subvolume's extents in the background; after a command failed
        # for lack of space, the next one should not fail for the same reason.
        btrfs.wait_for_deletions(store)

    def change_marker(self, path: Path) -> int | None:
        return btrfs.generation_at_creation(path)

    def changes_since(self, path: Path, marker: int) -> Changes | None:
        written, files = btrfs.written_since(path, marker)
        return Changes(written, files)


def _delete_if_subvolume(path: Path) -> bool:
    if btrfs.is_subvolume(path):
        btrfs.delete_subvolume(path)
        return True
    return False
