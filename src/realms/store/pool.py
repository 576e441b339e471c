"""The btrfs pool: a sparse image file holding a btrfs filesystem, for stores whose directory
is not on btrfs.

The image lives beside the store directory (``/var/lib/realms`` -> ``/var/lib/realms.pool.img``),
never inside it, because it is mounted over the store directory. ``realms init`` creates and
mounts it; after a reboot the same command mounts it again.

The image file is mode 0600 from its creation: whoever reads it reads the whole store (the
channels' signing keys included). Its filesystem's root directory, which becomes the store
directory when mounted, is made 0700 before the pool is ever mounted where others could look. It
is mounted ``nosuid,nodev`` (:func:`realms.system.mounts.mount_image`).
"""

from __future__ import annotations

import os
from pathlib import Path

from realms import log
from realms.errors import InvalidInput, RealmsError
from realms.store.layout import pool_image
from realms.system import btrfs, mounts
from realms.system.run import run
from realms.units import format_size

IMAGE_MODE = 0o600
ROOT_MODE = 0o700

MIN_POOL_SIZE = 256 << 20


def image_path(store: Path) -> Path:
    return pool_image(store)


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
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, IMAGE_MODE)
        try:
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
            btrfs.make_filesystem(temporary, label="realms")
            _make_root_private(temporary, store)
            os.replace(temporary, image)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    return image


def _make_root_private(image: Path, store: Path) -> None:
    # mkfs makes the root directory 0755; change it in a mount namespace of our own (the empty
    # store directory as the mount point), so the host never sees the pool with that mode.
    # A killed realms takes the namespace, hence the mount and its loop device, with it.
    script = (
        'mount -o loop,nosuid,nodev "$1" "$2" || exit 1\n'
        'chmod 0700 "$2" || { umount "$2"; exit 1; }\n'
        'umount "$2"\n'
    )
    run(mounts.in_own_mount_namespace(script, image, store))
    # Its loop device goes away asynchronously; the pool must not be attached twice (two
    # devices with the same btrfs filesystem id) when it is mounted for real.
    if not mounts.wait_until_detached(image):
        raise RealmsError(f"the loop device of {image} was not detached after its first mount")


def make_private(image: Path, store: Path) -> None:
    """Give the image file and the store directory (the pool's root when mounted) the modes a
    new pool has, for pools made by an older realms (0644, 0755)."""
    os.chmod(image, IMAGE_MODE)
    os.chmod(store, ROOT_MODE)


def mount(image: Path, store: Path) -> None:
    if any(store.iterdir()):
        raise RealmsError(
            f"cannot mount the pool over {store}: the directory is not empty",
            hint="empty it or choose another --store",
        )
    mounts.mount_image(image, store, options="noatime")
