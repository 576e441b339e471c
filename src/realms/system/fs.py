"""File primitives that keep the store consistent: atomic writes, no-replace renames, and
reading files inside an untrusted root filesystem without following its symlinks out of it.

Temporary files are named ``.tmp.NAME.TOKEN`` (:data:`TEMPORARY_PREFIX`), beside the file they
become; the store counts and sweeps what a killed command left (:mod:`realms.store`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

TEMPORARY_PREFIX = ".tmp."

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(source: Path, target: Path, flags: int, named: Path) -> None:
    # ctypes is loaded here, not at import: most commands rename nothing this way.
    import ctypes

    from realms.system.libc import checked, libc

    function = libc.renameat2
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    result = function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags)
    checked(result, "renameat2", str(named))


def token() -> str:
    """A short random string for temporary names."""
    # What secrets.token_hex does, without importing secrets (hmac, random, base64) at every
    # start-up.
    return os.urandom(4).hex()


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path) -> None:
    """Write everything of the filesystem that holds ``path`` to disk."""
    from realms.system.libc import checked, libc

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        checked(libc.syncfs(fd), "syncfs", str(path))
    finally:
        os.close(fd)


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, failing with FileExistsError if ``target`` exists.

    Plain rename(2) silently replaces an empty directory or a file; renameat2 with
    RENAME_NOREPLACE makes "exactly one creator wins" hold even without a lock.
    """
    _renameat2(source, target, _RENAME_NOREPLACE, target)


def rename_exchange(first: Path, second: Path) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): each is at every moment one of
    the two things, never missing."""
    _renameat2(first, second, _RENAME_EXCHANGE, second)


def temporary_name(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (``.tmp.NAME.TOKEN``)."""
    return path.with_name(f"{TEMPORARY_PREFIX}{path.name}.{token()}")


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write a file through a temporary name and a rename, so readers see old or new, never half.

    The temporary file is created (O_EXCL: never an existing file or a planted symlink) with
    ``mode`` already, so a private key in it is never readable by others, not even for a moment;
    the umask can only have taken bits away, and fchmod sets exactly ``mode`` before any byte is
    written (files inside realm trees must keep 0644 whatever realms' umask is).
    """
    if isinstance(data, str):
        data = data.encode()
    temporary = temporary_name(path)
    fd = os.open(
        temporary,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        mode & 0o7777,
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode & 0o7777)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_symlink(target: str, path: Path) -> None:
    """Point the symlink ``path`` at ``target``, replacing it atomically."""
    temporary = temporary_name(path)
    os.symlink(target, temporary)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


_MAX_SYMLINKS = 40


def open_in_root(root: Path, relative: str) -> int:
    """Open a file of a root filesystem as a process chrooted to ``root`` would see it.

    Symlinks are resolved component by component relative to ``root`` (an absolute link target
    restarts at ``root``, ``..`` never climbs above it), so a hostile tree cannot make realms read a
    file of the host. Returns a read-only file descriptor; raises OSError like open(2).
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _walk(root_fd, relative)
    finally:
        os.close(root_fd)


def _walk(root_fd: int, relative: str) -> int:
    pending = [part for part in relative.split("/") if part not in ("", ".")]
    stack = [os.dup(root_fd)]
    hops = 0
    try:
        while pending:
            part = pending.pop(0)
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            info = os.stat(part, dir_fd=stack[-1], follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), relative)
                target = os.readlink(part, dir_fd=stack[-1])
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                pending[:0] = [p for p in target.split("/") if p not in ("", ".")]
                continue
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            # O_NONBLOCK: opening a FIFO planted in the tree must not hang us.
            flags |= os.O_DIRECTORY if pending else os.O_NONBLOCK
            stack.append(os.open(part, flags, dir_fd=stack[-1]))
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def unlink_in_root(root: Path, relative: str) -> bool:
    """Remove a file (not a directory) inside ``root``, resolving the path as
    :func:`open_in_root` does; return whether there was one."""
    parent, _, name = relative.strip("/").rpartition("/")
    try:
        parent_fd = open_in_root(root, parent)
    except FileNotFoundError:
        return False
    try:
        os.unlink(name, dir_fd=parent_fd)
    except FileNotFoundError:
        return False
    finally:
        os.close(parent_fd)
    return True


def read_in_root(root: Path, relative: str, limit: int = 1 << 20) -> bytes:
    """Read up to ``limit`` bytes of a file inside ``root`` (see :func:`open_in_root`)."""
    fd = open_in_root(root, relative)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", relative)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(limit)


def remove_tree(path: Path, remove_special_dir: Callable[[Path], bool] | None = None) -> None:
    """Remove a file or a directory tree without following symlinks.

    ``remove_special_dir`` is asked first about every directory; when it returns True it has
    removed that directory itself (the btrfs backend deletes subvolumes this way).
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        path.unlink()
        return
    if remove_special_dir is not None and remove_special_dir(path):
        return
    with os.scandir(path) as entries:
        children = list(entries)
    for entry in children:
        if entry.is_dir(follow_symlinks=False):
            remove_tree(Path(entry.path), remove_special_dir)
        else:
            os.unlink(entry.path)
    os.rmdir(path)
