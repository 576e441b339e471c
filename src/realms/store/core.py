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
  directory, deletes it. Every kind of temporary name (:data:`TEMPORARY_PREFIXES`: ``.new.``,
  ``.del.``, ``.update.``, ``.tmp.`` of atomic writes, ``.skel.``) is counted by
  :meth:`Store.leftovers` and removed by the sweeps (:meth:`Store.sweep`, :meth:`Store.sweep_all`).
- Removal works on a full store: taking a lock writes nothing (:mod:`realms.locks`), and the
  space of what was deleted (also of what a failed command made) is free again when the command
  returns, not when btrfs gets to it (:meth:`realms.storage.Backend.reclaim_space`).

Who may look: the store directory is mode 0700, owned by root, and nothing else. One rule at the
top rather than 0711 with every child 0700: nothing below has to be checked, new kinds of entries
(a cache, a log) are private without anyone remembering to make them so, and no host user needs
to reach anything inside (containers get their files through mounts that root makes). The
directory is created 0700 (never wider, whatever the umask), a pool's root is made 0700 before it
is first mounted (:mod:`realms.pool`), and ``realms init`` fixes a store made by an older realms
(see :func:`make_private`). realms does not set a process-wide umask: commands write files into
realm trees and images that must keep the modes they are given (0644), and the 0700 top makes
everything below private anyway.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from realms import config, locks, log, pool
from realms.errors import AlreadyExists, Busy, InvalidInput, RealmsError, StoreFull
from realms.faults import checkpoint
from realms.names import check_lock_name
from realms.storage import Backend, backend_named
from realms.system import mounts
from realms.system.fs import TEMPORARY_PREFIX, atomic_write, fsync_dir, rename_noreplace, token

DEFAULT_STORE = Path("/var/lib/realms")
STORE_ENV = "REALMS_STORE"
STORE_FORMAT = 1
DEFAULT_POOL_SIZE = 32 << 30

NEW_PREFIX = ".new."
DELETED_PREFIX = ".del."
WORKING_PREFIX = ".update."
SKEL_PREFIX = ".skel."
TEMPORARY_PREFIXES = (NEW_PREFIX, DELETED_PREFIX, WORKING_PREFIX, TEMPORARY_PREFIX, SKEL_PREFIX)
STORE_MODE = 0o700
# A temporary file of an atomic write lives for milliseconds; one this old was left by a killed
# command (used where no lock covers the file: the store's top directory).
STALE_AFTER = 60.0


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
        if os.stat(root).st_mode & 0o077:
            log.warn(
                f"the store {root} is open to other users of this machine; "
                "run 'realms init' to close it"
            )
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
        check_lock_name("appimg", name)
        return locks.hold(
            self.locks_dir / f"appimg.{name}.lock", what=f"appimg {name}", shared=shared, wait=wait
        )

    def realm_lock(
        self, name: str, *, shared: bool = False, wait: float | None = None
    ) -> AbstractContextManager[None]:
        check_lock_name("realm", name)
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
        except BaseException:
            self._remove_quietly(temporary)
            # The space the failed command took is free when it returns, not 30 s later.
            self._reclaim_quietly()
            raise
        fsync_dir(target.parent)

    def discard(self, path: Path) -> None:
        """Make ``path`` disappear at once (a rename), then delete it."""
        doomed = path.with_name(f"{DELETED_PREFIX}{path.name}.{token()}")
        os.rename(path, doomed)
        fsync_dir(path.parent)
        checkpoint("discard:renamed")
        # On a store short of space, the backend waits until the space is free again.
        self.backend.remove(doomed)

    def _reclaim_quietly(self) -> None:
        try:
            self.backend.reclaim_space(self.root)
        except (OSError, RealmsError) as failure:
            log.debug(f"waiting for the space of deleted trees failed: {failure}")

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
            names = os.listdir(directory)
        except FileNotFoundError:
            return 0
        entries = [e for e in names if e.startswith((NEW_PREFIX, DELETED_PREFIX))]
        for name in names:
            # Temporary files of atomic writes inside NAME's own directory (its record, its
            # config): NAME's lock covers them as it covers NAME.
            if not name.startswith(".") and _has_temporary_files(directory / name):
                removed += self._sweep_temporary_files(directory / name, name, lock, held)
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

    def _sweep_temporary_files(
        self,
        directory: Path,
        name: str,
        lock: Callable[..., AbstractContextManager[None]],
        held: str | None,
    ) -> int:
        def remove() -> int:
            count = 0
            for entry in _temporary_files(directory):
                (directory / entry).unlink(missing_ok=True)
                count += 1
            return count

        if name == held:
            return remove()
        try:
            with lock(name, wait=0):
                return remove()
        except Busy:
            return 0

    def sweep_all(self) -> int:
        """The sweep of the whole store (``realms init``): every kind of leftover whose owner is
        not running; return how many were removed."""
        from realms.image.keys import Keyring  # keys imports this module

        removed = self.sweep(self.realms_dir, self.realm_lock)
        removed += self.sweep(self.appimgs_dir, self.appimg_lock)
        removed += self.sweep(self.root / "build", self._build_lock)
        Keyring(self).sweep()
        now = time.time()
        for entry in os.listdir(self.root):
            path = self.root / entry
            if entry.startswith((TEMPORARY_PREFIX, SKEL_PREFIX)):
                try:
                    stale = now - os.lstat(path).st_mtime > STALE_AFTER
                except FileNotFoundError:
                    continue
                if stale:
                    self._remove_quietly(path)
                    removed += 1
        return removed

    def _build_lock(self, name: str, wait: float | None = 0) -> AbstractContextManager[None]:
        # The builder's lock (realms.builder.build takes the same file).
        return locks.hold(
            self.locks_dir / f"build.{name}.lock", what=f"build of appimg {name}", wait=wait
        )

    def leftovers(self) -> list[Path]:
        """Temporary names in the store, of every kind (of running or killed commands; working
        copies of update sessions and build trees included)."""
        directories = [
            self.root,
            self.appimgs_dir,
            self.realms_dir,
            self.root / "build",
            self.root / "cache" / "builds",
            self.removed_dir,
            self.root / "keys",
            self.root / "keys" / "signing",
            *self.appimgs_dir.glob("*/"),
            *self.realms_dir.glob("*/"),
        ]
        found = []
        for directory in directories:
            try:
                entries = os.listdir(directory)
            except (FileNotFoundError, NotADirectoryError):
                continue
            found += [directory / e for e in entries if e.startswith(TEMPORARY_PREFIXES)]
        return found


def _temporary_files(directory: Path) -> list[str]:
    try:
        return [e for e in os.listdir(directory) if e.startswith(TEMPORARY_PREFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _has_temporary_files(directory: Path) -> bool:
    return bool(_temporary_files(directory))


def out_of_space_hint(root: Path, path: str | Path | None) -> str:
    """What to say when writing ``path`` failed with ENOSPC: which filesystem is full (the
    store's, or the one that holds a source or an output file elsewhere) and what frees it."""
    if path is not None:
        where = mounts.mount_of(Path(os.path.dirname(os.path.abspath(path))))
        if where.target != mounts.mount_of(root).target:
            return (
                f"the filesystem at {where.target} (which holds {path}) is full, not the store: "
                "free space there or write elsewhere"
            )
    return _store_full_hint(root)


def _store_full_hint(root: Path) -> str:
    return f"{_filesystem_name(root)} is full: {_freeing_hint(root)}"


def _filesystem_name(path: Path) -> str:
    """The filesystem that holds ``path``, as a person knows it: a store's pool by its image
    file, anything else by where it is mounted."""
    mount = mounts.mount_of(path)
    if mount.fstype == "btrfs" and mount.source.startswith("/dev/loop"):
        image = mounts.loop_backing_file(mount.source)
        if image is not None and image.name.endswith(".pool.img"):
            return f"the store's btrfs pool {image}"
    return f"the filesystem at {mount.target}"


def _freeing_hint(path: Path) -> str:
    grow = " or make the pool larger" if "pool" in _filesystem_name(path) else ""
    return f"free space (realms remove, realms appimg prune){grow}"


# Nearly no space left: a tool that failed with a short write (GNU tar's "Wrote only N of M
# bytes", without an errno) ran out of space.
_NEARLY_FULL = 16 << 20


def out_of_space_error(target: Path, doing: str, stderr: bytes) -> StoreFull | None:
    """The error for a tool that failed writing into ``target`` in the store, if it failed for
    want of space there (its stderr says so, or it wrote short on a filesystem now full)."""
    full = b"No space left on device" in stderr
    if not full and b"Wrote only" in stderr:
        try:
            info = os.statvfs(target)
            full = info.f_bavail * info.f_frsize < _NEARLY_FULL
        except OSError:
            full = False
    if not full:
        return None
    return StoreFull(
        f"{_filesystem_name(target)} is full: {doing} ran out of space; nothing was imported",
        hint=_freeing_hint(target),
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
    image = pool.image_path(root)
    mounted = False
    if not (root / "store.toml").exists() and image.exists() and backend != "copy":
        with log.step(f"Mounting the store's btrfs pool {image} at {root}"):
            pool.mount(image, root)
        mounted = True
    marker = root / "store.toml"
    if marker.exists():
        make_private(root)
        store = Store.open(root)
        existing = store.backend.name
        if backend not in ("auto", existing):
            raise RealmsError(
                f"the store at {root} already uses the {existing} backend",
                hint="a store's backend is chosen once, by the first 'realms init'",
            )
        _make_layout(root)
        store.sweep_all()
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
    _make_layout(root)
    write_toml(marker, {"format": STORE_FORMAT, "backend": chosen})
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
    keys = root / "keys"
    for directory in (keys, keys / "signing"):
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


def _make_layout(root: Path) -> None:
    for name in ("appimg", "realms", "locks", "removed", "Shared"):
        (root / name).mkdir(mode=0o755, exist_ok=True)
    os.chmod(root / "locks", 0o700)
    os.chown(root / "Shared", 1000, 1000)
    skel = root / "skel"
    if not skel.exists():
        temporary = root / f"{SKEL_PREFIX}{token()}"
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
