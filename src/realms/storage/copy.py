"""The copy backend, for stores that are not on btrfs: trees are directories, a clone is
``cp -a --reflink=auto`` (shared extents where the filesystem has them, a full copy otherwise).
"""

from __future__ import annotations

from pathlib import Path

from realms.storage import Changes
from realms.system.fs import remove_tree
from realms.system.run import run


class CopyBackend:
    name = "copy"
    zero_cost = False

    def create_tree(self, path: Path) -> None:
        path.mkdir(mode=0o755)

    def clone(self, source: Path, target: Path) -> None:
        target.mkdir(mode=0o755)
        run(["cp", "-a", "--reflink=auto", "--", f"{source}/.", f"{target}/"])

    def freeze(self, path: Path) -> None:
        # A directory tree cannot be made read-only without changing its contents' modes; the
        # store records the version as read-only and never writes to it.
        pass

    def remove(self, path: Path) -> None:
        remove_tree(path)

    def reclaim_space(self, store: Path) -> None:
        pass

    def change_marker(self, path: Path) -> int | None:
        return None

    def changes_since(self, path: Path, marker: int) -> Changes | None:
        return None
