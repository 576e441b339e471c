"""How the store changes safely: staging under a temporary name, discarding, and THE sweep.

- Every new thing is made under a temporary name in the directory where it will live
  (``.new.NAME.RANDOM``, :func:`staging`) and renamed into place with RENAME_NOREPLACE, so a
  name is either absent or complete, and of two processes making the same name exactly one wins.
- Removal renames first (``.del.NAME.RANDOM``, :func:`discard`), so the thing disappears at once,
  then deletes.
- All of this happens under the thing's lock (:mod:`realms.store.layout`). A temporary name
  whose lock is free was left by a killed process.

:func:`sweep` is the one sweep: every command that changes the store runs it at its start
(``realms init`` too), and :func:`leftovers`, which ``realms status`` counts, finds exactly what
it sweeps. It costs a few ``listdir`` calls (one per store directory, appimg and realm); each
leftover is deleted under the lock of its owner, taken without waiting, so a leftover of a
command that still runs is left to that command (see :func:`_find` for who owns what). Read-only
commands (list, show, status) do not sweep: they change nothing, and status shows what is left.

Space: the space of what was deleted (also of what a failed command made) is free again when the
command returns, not when btrfs gets to it (:meth:`realms.storage.Backend.reclaim_space`).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from realms import log
from realms.errors import AlreadyExists, Busy, RealmsError
from realms.faults import checkpoint
from realms.storage import Backend
from realms.store.layout import (
    DELETED_PREFIX,
    NEW_PREFIX,
    TEMPORARY_PREFIXES,
    WORKING_PREFIX,
    Layout,
)
from realms.system import mounts
from realms.system.fs import fsync_dir, rename_noreplace, token

# A temporary file where no lock covers it (the store's top directory, removed/) lives for
# milliseconds; one this old was left by a killed command.
STALE_AFTER = 60.0

Lock = Callable[[], AbstractContextManager[None]]


def remove(layout: Layout, backend: Backend, path: Path) -> None:
    """Remove a tree (or file) this store made, unmounting first whatever a killed command left
    mounted inside it (only mounts below ``path``: realms' own)."""
    if path.is_dir() and not path.is_symlink():
        mounts.unmount_below(path)
    backend.remove(path)


def _remove_quietly(layout: Layout, backend: Backend, path: Path) -> bool:
    try:
        remove(layout, backend, path)
    except FileNotFoundError:
        return False
    except (OSError, RealmsError) as error:
        log.warn(f"could not remove {path}: {error}; the next command will retry")
        return False
    return True


def reclaim_quietly(layout: Layout, backend: Backend) -> None:
    try:
        backend.reclaim_space(layout.root)
    except (OSError, RealmsError) as failure:
        log.debug(f"waiting for the space of deleted trees failed: {failure}")


@contextmanager
def staging(layout: Layout, backend: Backend, target: Path, what: str) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` for the caller to create and fill; on success
    rename it to ``target`` (AlreadyExists if that appeared meanwhile), on failure remove it.
    The caller holds the lock of the thing ``target`` is."""
    temporary = target.with_name(f"{NEW_PREFIX}{target.name}.{token()}")
    try:
        yield temporary
        rename_into_place(temporary, target, what)
    except BaseException:
        if os.path.lexists(temporary):
            _remove_quietly(layout, backend, temporary)
        # The space the failed command took is free when it returns, not 30 s later.
        reclaim_quietly(layout, backend)
        raise


def rename_into_place(made: Path, target: Path, what: str) -> None:
    """Rename the finished ``made`` to ``target`` (never over something: AlreadyExists)."""
    try:
        rename_noreplace(made, target)
    except FileExistsError:
        raise AlreadyExists(f"{what} already exists") from None
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise AlreadyExists(f"{what} already exists") from None
        raise
    fsync_dir(target.parent)


def discard(backend: Backend, path: Path) -> None:
    """Make ``path`` disappear at once (a rename), then delete it; the caller holds its lock."""
    doomed = path.with_name(f"{DELETED_PREFIX}{path.name}.{token()}")
    os.rename(path, doomed)
    fsync_dir(path.parent)
    checkpoint("discard:renamed")
    # On a store short of space, the backend waits until the space is free again.
    backend.remove(doomed)


# The sweep


@dataclass(frozen=True)
class Leftover:
    path: Path
    locks: tuple[Lock, ...]
    """The locks that cover it, in the lock order; none: it goes once it is stale."""


def _listdir(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _owner(entry: str) -> str | None:
    """NAME of ``.new.NAME.RANDOM`` or ``.del.NAME.RANDOM`` (None for other names)."""
    for prefix in (NEW_PREFIX, DELETED_PREFIX):
        if entry.startswith(prefix):
            name, _, rest = entry[len(prefix) :].rpartition(".")
            return name if name and rest else None
    return None


def _find(layout: Layout) -> list[Leftover]:
    """Every temporary name in the store, with the locks its owner holds while it lives:

    - ``realms/.new.NAME.*``, ``.del.NAME.*``: realm NAME's lock; temporary files inside
      ``realms/NAME/`` (its config, its origin): its realm lock and its run lock (a run writes
      the origin holding only the run lock).
    - ``appimg/.new.NAME.*``, ``.del.NAME.*`` and ``.new.``, ``.del.``, ``.tmp.`` names inside
      ``appimg/NAME/``: appimg NAME's lock; ``appimg/NAME/.update.*`` (an update's or a seal's
      work): its update lock, then its appimg lock.
    - ``build/.new.NAME.*``: the build lock of NAME; ``cache/builds/.new.*``, ``.del.*``,
      the same in ``cache/stages/``, ``cache/archive/.tmp.*``: the cache lock; ``keys/.tmp.*``
      and ``keys/signing/.tmp.*``: the keyring lock.
    - in the store's top directory and ``removed/``: no lock covers them; they go once stale.
    """
    found: list[Leftover] = []

    def add(path: Path, *held: Lock) -> None:
        found.append(Leftover(path, held))

    for top in (layout.root, layout.removed_dir):
        for entry in _listdir(top):
            if entry.startswith(TEMPORARY_PREFIXES):
                add(top / entry)

    def objects(directory: Path, lock_of: Callable[[Layout, str], Lock]) -> list[str]:
        """Add the temporary names in ``directory`` (``.new.NAME.*`` under NAME's lock) and
        return the names of the complete objects there."""
        names = []
        for entry in _listdir(directory):
            if not entry.startswith("."):
                names.append(entry)
            elif (name := _owner(entry)) is not None:
                add(directory / entry, lock_of(layout, name))
            elif entry.startswith(TEMPORARY_PREFIXES):
                add(directory / entry)
        return names

    for realm in objects(layout.realms_dir, _realm_lock):
        for inner in _listdir(layout.realm_dir(realm)):
            if inner.startswith(TEMPORARY_PREFIXES):
                locks = (_realm_lock(layout, realm), _run_lock(layout, realm))
                add(layout.realm_dir(realm) / inner, *locks)
    for appimg in objects(layout.appimgs_dir, _appimg_lock):
        for inner in _listdir(layout.appimg_dir(appimg)):
            if inner.startswith(WORKING_PREFIX):
                locks = (_update_lock(layout, appimg), _appimg_lock(layout, appimg))
                add(layout.appimg_dir(appimg) / inner, *locks)
            elif inner.startswith(TEMPORARY_PREFIXES):
                add(layout.appimg_dir(appimg) / inner, _appimg_lock(layout, appimg))
    objects(layout.build_dir, _build_lock)
    for directory in (layout.build_cache_dir, layout.stage_cache_dir, layout.archive_cache_dir):
        for entry in _listdir(directory):
            if entry.startswith(TEMPORARY_PREFIXES):
                add(directory / entry, lambda: layout.cache_lock(wait=0))
    for directory in (layout.keys_dir, layout.signing_dir):
        for entry in _listdir(directory):
            if entry.startswith(TEMPORARY_PREFIXES):
                add(directory / entry, lambda: layout.keyring_lock(wait=0))
    return found


def _realm_lock(layout: Layout, name: str) -> Lock:
    return lambda: layout.realm_lock(name, wait=0)


def _run_lock(layout: Layout, name: str) -> Lock:
    return lambda: layout.run_lock(name)


def _appimg_lock(layout: Layout, name: str) -> Lock:
    return lambda: layout.appimg_lock(name, wait=0)


def _update_lock(layout: Layout, name: str) -> Lock:
    return lambda: layout.update_lock(name)


def _build_lock(layout: Layout, name: str) -> Lock:
    return lambda: layout.build_lock(name, wait=0)


def leftovers(layout: Layout) -> list[Path]:
    """Temporary names in the store, of every kind (of running or killed commands; working
    copies of update sessions and build trees included): what :func:`sweep` looks at."""
    return [leftover.path for leftover in _find(layout)]


def find_leftovers(layout: Layout) -> list[Leftover]:
    """The leftovers with the locks that cover each (what the sweep takes), for the commands
    that report what they skip (``realms gc``, ``realms check``)."""
    return _find(layout)


def sweep(layout: Layout, backend: Backend) -> int:
    """Delete every leftover whose owner does not run (its locks are free; none is waited
    for); return how many were deleted."""
    removed = 0
    now = time.time()
    for leftover in _find(layout):
        if not leftover.locks:
            try:
                stale = now - os.lstat(leftover.path).st_mtime > STALE_AFTER
            except FileNotFoundError:
                continue
            if stale and _remove_quietly(layout, backend, leftover.path):
                removed += 1
            continue
        try:
            with ExitStack() as stack:
                for lock in leftover.locks:
                    stack.enter_context(lock())
                if _remove_quietly(layout, backend, leftover.path):
                    removed += 1
        except Busy:
            continue  # its command runs: it removes its own temporary names
        except RealmsError as error:  # a name no lock file may have: not ours to judge
            log.debug(f"not sweeping {leftover.path}: {error}")
    return removed
