"""The btrfs backend: every tree is a subvolume, a clone is a snapshot."""

from __future__ import annotations

import os
from pathlib import Path

from realms import log
from realms.errors import RealmsError
from realms.storage import Changes
from realms.system import btrfs
from realms.system.fs import remove_tree

# Below this much free space (or a tenth of the filesystem), a removal waits for its space.
SHORT_OF_SPACE = 2 << 30


def _short_of_space(path: Path) -> bool:
    try:
        info = os.statvfs(path)
    except OSError:
        return True
    free = info.f_bavail * info.f_frsize
    return free < SHORT_OF_SPACE or free < info.f_blocks * info.f_frsize // 10


class BtrfsBackend:
    name = "btrfs"
    zero_cost = True

    def __init__(self) -> None:
        # Subvolumes this process deleted whose space reclaim_space has not waited for yet.
        self._deleted: list[int] = []

    def create_tree(self, path: Path) -> None:
        btrfs.create_subvolume(path)

    def clone(self, source: Path, target: Path) -> None:
        btrfs.snapshot(source, target)

    def freeze(self, path: Path) -> None:
        btrfs.set_readonly(path)

    def remove(self, path: Path) -> None:
        def delete_if_subvolume(directory: Path) -> bool:
            if btrfs.is_subvolume(directory):
                self._deleted += btrfs.delete_subvolume(directory)
                return True
            return False

        remove_tree(path, delete_if_subvolume)
        if _short_of_space(path.parent):
            # The next command (or the one running) needs the space now; elsewhere waiting for
            # btrfs's cleaner (a second or more per GiB) is not worth it, so it frees it later.
            try:
                self.reclaim_space(path.parent)
            except (OSError, RealmsError) as error:
                log.debug(f"waiting for the space of {path} failed: {error}")

    def reclaim_space(self, store: Path) -> None:
        # btrfs frees a deleted subvolume's extents in the background, 16-30 s later; a removal
        # or a failed command returns its space at once, so the next command has it.
        # Files' extents too are free only after a commit, so reclaim commits even without ids.
        ids, self._deleted = self._deleted, []
        if not btrfs.reclaim(store, ids):
            raise RealmsError(f"btrfs did not free the space of deleted subvolumes {ids} in time")

    def change_marker(self, path: Path) -> int | None:
        return btrfs.generation_at_creation(path)

    def changes_since(self, path: Path, marker: int) -> Changes | None:
        written, files = btrfs.written_since(path, marker)
        return Changes(written, files)
