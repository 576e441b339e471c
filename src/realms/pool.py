"""The btrfs pool: a sparse image file holding a btrfs filesystem, for stores whose directory
is not on btrfs.

The image lives beside the store directory (``/var/lib/realms`` -> ``/var/lib/realms.pool.img``),
never inside it, because it is mounted over the store directory. ``realms init`` creates and
mounts it; after a reboot the same command mounts it again.
"""

from __future__ import annotations

import os
from pathlib import Path

from realms import log
from realms.errors import InvalidInput, RealmsError
from realms.system import btrfs, mounts
from realms.units import format_size

MIN_POOL_SIZE = 256 << 20


def image_path(store: Path) -> Path:
    return store.parent / f"{store.name}.pool.img"


def mounted_pool(store: Path) -> Path | None:
    """The pool image mounted at ``store``, if the store directory is such a mount."""
    real = Path(os.path.realpath(store))
    for mount in reversed(mounts.mounts()):
        if mount.target == real:
            if mount.fstype == "btrfs" and mount.source.startswith("/dev/loop"):
                return mounts.loop_backing_file(mount.source)
            return None
    return None


def create(store: Path, size: int) -> Path:
    """Make the sparse image and its btrfs filesystem (the store directory stays untouched)."""
    if size < MIN_POOL_SIZE:
        raise InvalidInput(f"pool size {size} bytes is too small (at least 256M)")
    image = image_path(store)
    temporary = image.with_name(f".{image.name}.new")
    temporary.unlink(missing_ok=True)
    with log.step(f"Creating a {format_size(size)} btrfs pool in {image}"):
        with open(temporary, "wb") as handle:
            handle.truncate(size)
        try:
            btrfs.make_filesystem(temporary, label="realms")
            os.replace(temporary, image)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    return image


def mount(image: Path, store: Path) -> None:
    if any(store.iterdir()):
        raise RealmsError(
            f"cannot mount the pool over {store}: the directory is not empty",
            hint="empty it or choose another --store",
        )
    mounts.mount_image(image, store, options="noatime")
