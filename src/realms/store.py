"""The store: where appimgs and realms live, and the rules that keep it consistent.

Layout of a store (default ``/var/lib/realms``)::

    store.toml              format and storage backend; its presence marks an initialized store
    config.toml             global config (see realms.config)
    skel/                   copied into every new realm's home
    Shared/                 bound into realms that set use-shared-dir
    appimg/NAME/            one appimg: appimg.toml (its record) and one tree per version (v1, ...)
    realms/NAME/            one realm: config, origin.toml, home/, rootfs/
    default.realm           symlink to the default realm's directory (as on Citadel)
    removed/                homes kept by `realms remove --keep-home`
    locks/                  one lock file per appimg and per realm

How changes stay safe:

- Every new thing is made under a temporary name in the directory where it will live
  (``.new.NAME.RANDOM``) and renamed into place with RENAME_NOREPLACE, so a name is either absent
  or complete, and of two processes making the same name exactly one wins.
- Removal renames first (``.del.NAME.RANDOM``), so the thing disappears at once, then deletes.
- All of this happens under the thing's lock (:mod:`realms.locks`). A temporary name whose lock is
  free was left by a killed process; the next command that takes that lock, or that sweeps the
  directory, deletes it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from realms import config, locks, log, pool
from realms.errors import AlreadyExists, Busy, InvalidInput, RealmsError, StoreFull
from realms.faults import checkpoint
from realms.storage import Backend, backend_named
from realms.system import mounts
from realms.system.fs import atomic_write, fsync_dir, rename_noreplace, token

DEFAULT_STORE = Path("/var/lib/realms")
STORE_ENV = "REALMS_STORE"
STORE_FORMAT = 1
DEFAULT_POOL_SIZE = 32 << 30

NEW_PREFIX = ".new."
DELETED_PREFIX = ".del."
WORKING_PREFIX = ".update."


def locate(path: str | Path | None = None) -> Path:
    """The store directory: the argument, else $REALMS_STORE, else /var/lib/realms."""
    chosen = path or os.environ.get(STORE_ENV) or DEFAULT_STORE
    return Path(os.path.abspath(chosen))


def write_toml(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    atomic_write(path, tomli_w.dumps(data), mode)


@dataclass
class Store:
    root: Path
    backend: Backend
    _config: config.GlobalConfig | None = field(default=None, repr=False)

    @property
    def appimgs_dir(self) -> Path:
        return self.root / "appimg"

    @property
    def realms_dir(self) -> Path:
        return self.root / "realms"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    @property
    def skel_dir(self) -> Path:
        return self.root / "skel"

    @property
    def shared_dir(self) -> Path:
        return self.root / "Shared"

    @property
    def removed_dir(self) -> Path:
        return self.root / "removed"

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def default_realm_link(self) -> Path:
        return self.root / "default.realm"

    @classmethod
    def open(cls, root: Path) -> Store:
        """Open an initialized store, or explain how to initialize (or re-mount) it."""
        marker = root / "store.toml"
        if not marker.exists():
            image = pool.image_path(root)
            if image.exists():
                raise RealmsError(
                    f"the store's btrfs pool {image} is not mounted at {root}",
                    hint="run 'realms init' to mount it again",
                )
            raise RealmsError(
                f"no realms store at {root}",
                hint="run 'realms init' to create one, or choose another with --store",
            )
        data = config.read_toml(marker)
        backend = data.get("backend")
        if data.get("format") != STORE_FORMAT or backend not in ("btrfs", "copy"):
            raise InvalidInput(f"{marker}: not a realms store of format {STORE_FORMAT}")
        return cls(root, backend_named(str(backend)))

    @property
    def config(self) -> config.GlobalConfig:
        if self._config is None:
            self._config = config.load_global(self.config_path)
        return self._config

    # Locks

    def appimg_lock(
        self, name: str, *, shared: bool = False, wait: float | None = None
    ) -> AbstractContextManager[None]:
        return locks.hold(
            self.locks_dir / f"appimg.{name}.lock", what=f"appimg {name}", shared=shared, wait=wait
        )

    def realm_lock(
        self, name: str, *, shared: bool = False, wait: float | None = None
    ) -> AbstractContextManager[None]:
        return locks.hold(
            self.locks_dir / f"realm.{name}.lock", what=f"realm {name}", shared=shared, wait=wait
        )

    # Temporary names

    @contextmanager
    def staging(self, target: Path, what: str) -> Iterator[Path]:
        """Yield a temporary path beside ``target`` for the caller to create and fill; on success
        rename it to ``target`` (AlreadyExists if that appeared meanwhile), on failure remove it.
        """
        temporary = target.with_name(f"{NEW_PREFIX}{target.name}.{token()}")
        try:
            yield temporary
            try:
                rename_noreplace(temporary, target)
            except FileExistsError:
                raise AlreadyExists(f"{what} already exists") from None
            except OSError as error:
                if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise AlreadyExists(f"{what} already exists") from None
                raise
        except BaseException as error:
            self._remove_quietly(temporary)
            if _out_of_space(error):
                # So that the next command does not fail for want of the space just freed.
                try:
                    self.backend.reclaim_space(self.root)
                except (OSError, RealmsError) as failure:
                    log.debug(f"waiting for the space of {temporary} failed: {failure}")
            raise
        fsync_dir(target.parent)

    def discard(self, path: Path) -> None:
        """Make ``path`` disappear at once (a rename), then delete it."""
        doomed = path.with_name(f"{DELETED_PREFIX}{path.name}.{token()}")
        os.rename(path, doomed)
        fsync_dir(path.parent)
        checkpoint("discard:renamed")
        self.backend.remove(doomed)

    def remove(self, path: Path) -> None:
        """Remove a tree this store made, unmounting first whatever a killed command left
        mounted inside it (only mounts below ``path``: realms' own)."""
        mounts.unmount_below(path)
        self.backend.remove(path)

    def _remove_quietly(self, path: Path) -> None:
        try:
            self.remove(path)
        except (OSError, RealmsError) as error:
            log.warn(f"could not remove {path}: {error}; the next command will retry")

    def sweep(
        self,
        directory: Path,
        lock: Callable[..., AbstractContextManager[None]],
        held: str | None = None,
    ) -> int:
        """Delete leftovers of killed commands in ``directory``; return how many.

        A leftover of NAME is deleted only while holding NAME's lock, taken without waiting; the
        caller passes ``held`` for the name whose lock it already holds.
        """
        removed = 0
        try:
            entries = [
                e for e in os.listdir(directory) if e.startswith((NEW_PREFIX, DELETED_PREFIX))
            ]
        except FileNotFoundError:
            return 0
        for entry in entries:
            parts = entry.split(".")
            if len(parts) != 4:
                continue
            name = parts[2]
            path = directory / entry
            if name == held:
                self._remove_quietly(path)
                removed += 1
                continue
            try:
                with lock(name, wait=0):
                    if path.exists():
                        self._remove_quietly(path)
                        removed += 1
            except Busy:
                continue
        return removed

    def leftovers(self) -> list[Path]:
        """Temporary names in the store (of running or killed commands; working copies of
        update sessions included)."""
        found = []
        for directory in (self.appimgs_dir, self.realms_dir, *self.appimgs_dir.glob("*/")):
            if directory.is_dir():
                found += [
                    directory / entry
                    for entry in os.listdir(directory)
                    if entry.startswith((NEW_PREFIX, DELETED_PREFIX, WORKING_PREFIX))
                ]
        return found


def _out_of_space(error: BaseException) -> bool:
    return isinstance(error, StoreFull) or (
        isinstance(error, OSError) and error.errno == errno.ENOSPC
    )


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
        root.mkdir(parents=True, exist_ok=True)
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
    image = pool.image_path(root)
    mounted = False
    if not (root / "store.toml").exists() and image.exists() and backend != "copy":
        with log.step(f"Mounting the store's btrfs pool {image} at {root}"):
            pool.mount(image, root)
        mounted = True
    marker = root / "store.toml"
    if marker.exists():
        existing = Store.open(root).backend.name
        if backend not in ("auto", existing):
            raise RealmsError(
                f"the store at {root} already uses the {existing} backend",
                hint="a store's backend is chosen once, by the first 'realms init'",
            )
        _make_layout(root)
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
    _make_layout(root)
    write_toml(marker, {"format": STORE_FORMAT, "backend": chosen})
    if chosen == "copy":
        log.note(
            "the copy backend clones trees with 'cp -a --reflink=auto': "
            "new realms cost a full copy unless the filesystem shares extents"
        )
    return InitResult(root, chosen, True, mounted, pool.mounted_pool(root))


def _make_layout(root: Path) -> None:
    for name in ("appimg", "realms", "locks", "removed", "Shared"):
        (root / name).mkdir(mode=0o755, exist_ok=True)
    os.chmod(root / "locks", 0o700)
    os.chown(root / "Shared", 1000, 1000)
    skel = root / "skel"
    if not skel.exists():
        temporary = root / f".skel.{token()}"
        if Path("/etc/skel").is_dir():
            shutil.copytree("/etc/skel", temporary, symlinks=True)
        else:
            temporary.mkdir()
        os.rename(temporary, skel)
    config_path = root / "config.toml"
    if not config_path.exists():
        atomic_write(config_path, _config_template())


def _config_template() -> str:
    text = config.commented_template(
        config.GLOBAL_SETTINGS, "realms global configuration (TOML). Unset keys use the default."
    )
    realm = config.commented_template(
        config.REALM_SETTINGS,
        "Realm settings used when a realm's own config does not set them:",
    )
    realm_lines = "\n".join(
        f"# {line}" if line and not line.startswith("#") else line for line in realm.splitlines()
    )
    return f"{text}\n# [realm-defaults]\n{realm_lines}\n"
