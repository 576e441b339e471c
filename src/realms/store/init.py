"""``realms init``: make a store, or mount its pool again, and keep it closed to host users.

Who may look: the store directory is mode 0700, owned by root, and nothing else. One rule at the
top rather than 0711 with every child 0700: nothing below has to be checked, new kinds of entries
(a cache, a log) are private without anyone remembering to make them so, and no host user needs
to reach anything inside (containers get their files through mounts that root makes). The
directory is created 0700 (never wider, whatever the umask), a pool's root is made 0700 before it
is first mounted (:mod:`realms.store.pool`), and ``realms init`` fixes a store made by an older
realms (see :func:`make_private`). realms does not set a process-wide umask: commands write files
into realm trees and images that must keep the modes they are given (0644), and the 0700 top
makes everything below private anyway.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from realms import config, log
from realms.errors import InvalidInput, RealmsError
from realms.store import pool
from realms.store.core import Store, marker_text
from realms.store.layout import SKEL_PREFIX, Layout
from realms.system import mounts
from realms.system.fs import atomic_write, token

DEFAULT_POOL_SIZE = 32 << 30
STORE_MODE = 0o700


@dataclass(frozen=True)
class InitResult:
    store: Path
    backend: str
    created: bool
    mounted: bool
    pool_image: Path | None


def init(root: Path, *, backend: str = "auto", pool_size: int = DEFAULT_POOL_SIZE) -> InitResult:
    """Prepare a store (idempotent): see the module docstring and ``realms init --help``."""
    if backend not in ("auto", "btrfs", "copy"):
        raise InvalidInput(f"unknown backend {backend!r}", hint="choose auto, btrfs or copy")
    if pool_size < pool.MIN_POOL_SIZE:
        raise InvalidInput(f"--pool-size {pool_size} bytes is too small (at least 256M)")
    try:
        # 0700 from the start (mkdir can only narrow it); an existing directory is fixed below.
        root.mkdir(mode=STORE_MODE, parents=True, exist_ok=True)
    except FileExistsError:
        raise RealmsError(f"{root} exists and is not a directory") from None
    # Lock the directory itself: a second `realms init` waits, then finds the store made.
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _init_locked(root, backend, pool_size)
    finally:
        os.close(fd)


def _init_locked(root: Path, backend: str, pool_size: int) -> InitResult:
    layout = Layout(root)
    image = pool.image_path(root)
    mounted = False
    marker = layout.marker_path
    if not marker.exists() and image.exists() and backend != "copy":
        with log.step(f"Mounting the store's btrfs pool {image} at {root}"):
            pool.mount(image, root)
        mounted = True
    if marker.exists():
        make_private(root)
        store = Store.open(root)
        existing = store.backend.name
        if backend not in ("auto", existing):
            raise RealmsError(
                f"the store at {root} already uses the {existing} backend",
                hint="a store's backend is chosen once, by the first 'realms init'",
            )
        _make_layout(layout)
        store.sweep()
        return InitResult(root, existing, False, mounted, pool.mounted_pool(root))

    fstype = mounts.mount_of(root).fstype
    if backend == "copy":
        chosen = "copy"
    elif fstype == "btrfs":
        chosen = "btrfs"
    else:
        if any(root.iterdir()):
            raise RealmsError(
                f"{root} is not on btrfs and not empty: cannot mount a btrfs pool over it",
                hint="empty it, choose another --store, or use --backend copy",
            )
        pool.create(root, pool_size)
        with log.step(f"Mounting the store's btrfs pool at {root}"):
            pool.mount(image, root)
        mounted = True
        chosen = "btrfs"
    make_private(root)
    _make_layout(layout)
    atomic_write(marker, marker_text(chosen), 0o644)
    if chosen == "copy":
        log.note(
            "the copy backend clones trees with 'cp -a --reflink=auto': "
            "new realms cost a full copy unless the filesystem shares extents"
        )
    return InitResult(root, chosen, True, mounted, pool.mounted_pool(root))


def make_private(root: Path) -> list[Path]:
    """Close a store to host users (for stores made by an older realms, 0755 and 0644); return
    what was changed.

    Fixed: the store directory (0700; with a pool, that is the pool's root), the pool image file
    beside it (0600), the pool's mount (``nosuid,nodev`` added by a remount), and under the store
    the keys (``keys/`` and ``keys/signing/`` 0700, every file in them 0600).
    """
    changed: list[Path] = []

    def narrow(path: Path, mode: int) -> None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            return  # never follow a link out of the store
        if stat.S_IMODE(info.st_mode) != mode:
            os.chmod(path, mode, follow_symlinks=False)
            changed.append(path)

    narrow(root, STORE_MODE)
    image = pool.mounted_pool(root)
    if image is not None:
        narrow(image, pool.IMAGE_MODE)
        if not mounts.has_safe_options(mounts.mount_of(root)):
            mounts.make_safe(root)
            changed.append(root)
    layout = Layout(root)
    for directory in (layout.keys_dir, layout.signing_dir):
        narrow(directory, 0o700)
        try:
            entries = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            path = directory / entry
            if os.path.isfile(path) and not os.path.islink(path):
                narrow(path, 0o600)
    return changed


def _make_layout(layout: Layout) -> None:
    for directory in (
        layout.appimgs_dir,
        layout.realms_dir,
        layout.locks_dir,
        layout.removed_dir,
        layout.shared_dir,
    ):
        directory.mkdir(mode=0o755, exist_ok=True)
    os.chmod(layout.locks_dir, 0o700)
    os.chown(layout.shared_dir, 1000, 1000)
    skel = layout.skel_dir
    if not skel.exists():
        temporary = layout.root / f"{SKEL_PREFIX}{token()}"
        if Path("/etc/skel").is_dir():
            shutil.copytree("/etc/skel", temporary, symlinks=True)
        else:
            temporary.mkdir()
        os.rename(temporary, skel)
    if not layout.config_path.exists():
        atomic_write(layout.config_path, _config_template())


def _config_template() -> str:
    return config.global_template()
