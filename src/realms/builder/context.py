"""A build config's *build context*: the config file and the files and scripts it names.

They are untrusted (they may come from anyone). The config is read once and its directory
opened so that it is the directory that holds the file that was read; every file and script the
config names is a relative path inside that directory, opened once below it (``openat2`` with
``RESOLVE_BENEATH``, so no symlink leads out of the directory) and read into memory; the build
uses those bytes, never the path again.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realms.errors import InvalidInput
from realms.settings import parse_toml, shown
from realms.system.libc import libc

MAX_CONTEXT_FILE = 64 << 20
"""The largest file or script a build config may name (they are read into memory once)."""

_SYS_OPENAT2 = 437  # the same number on every architecture (a syscall added after 5.1)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


# O_NONBLOCK: a FIFO in the context must not hang the build; O_NOCTTY: nor a terminal adopt us.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


def _open_beneath(directory_fd: int, relative: str) -> int:
    """Open ``relative`` below ``directory_fd``: symlinks are followed only while they stay
    below it (EXDEV otherwise). The kernel resolves and opens in one step, so nothing can be
    swapped in between a check and the open."""
    how = _OpenHow(_OPEN_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = int(
        libc.syscall(
            _SYS_OPENAT2,
            directory_fd,
            os.fsencode(relative),
            ctypes.byref(how),
            ctypes.sizeof(how),
        )
    )
    if fd >= 0:
        return fd
    number = ctypes.get_errno()
    if number != errno.ENOSYS:
        raise OSError(number, os.strerror(number), relative)
    # A kernel without openat2 (before 5.6): no symlink at all, component by component.
    fd = os.dup(directory_fd)
    parts = relative.split("/")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        flags = (_OPEN_FLAGS if last else os.O_RDONLY | os.O_DIRECTORY) | os.O_NOFOLLOW
        try:
            following = os.open(part, flags, dir_fd=fd)
        finally:
            os.close(fd)
        fd = following
    return fd


@dataclass(frozen=True)
class Context:
    """The config's directory, opened once: every file it names is opened below this."""

    path: Path
    fd: int

    @classmethod
    def current(cls) -> Context:
        """The working directory (for the default config, which names no file)."""
        return cls(Path.cwd(), os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))

    def close(self) -> None:
        os.close(self.fd)

    def read(self, relative: str, what: str) -> bytes:
        """The contents of ``relative``, a regular file inside the config's directory;
        ``what`` begins an error line (``FILE [section]: key:``)."""
        parts = relative.split("/")
        if (
            not relative
            or relative.startswith("/")
            or ".." in parts
            or not relative.isprintable()
            or "\\" in relative
        ):
            raise InvalidInput(
                f"{what} expected a path relative to the config's directory, without '..', "
                f"got {shown(relative)}"
            )
        relative = "/".join(part for part in parts if part not in ("", "."))
        try:
            fd = _open_beneath(self.fd, relative)
        except OSError as error:
            reason = {
                errno.ENOENT: "not found",
                errno.ENOTDIR: "not found",
                errno.EXDEV: "leads outside the config's directory (through a symlink)",
                errno.ELOOP: "is a symlink (or has too many)",
            }.get(error.errno or 0, f"cannot be opened: {os.strerror(error.errno or 0)}")
            raise InvalidInput(f"{what} {shown(relative)} {reason} (in {self.path})") from None
        try:
            return _read_regular(fd, relative, what)
        finally:
            os.close(fd)


def _read_regular(fd: int, relative: str, what: str) -> bytes:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInput(f"{what} {shown(relative)} is not a regular file")
    if info.st_size > MAX_CONTEXT_FILE:
        raise InvalidInput(f"{what} {shown(relative)} is larger than {MAX_CONTEXT_FILE >> 20} MiB")
    chunks = []
    size = 0
    while chunk := os.read(fd, 1 << 20):
        size += len(chunk)
        if size > MAX_CONTEXT_FILE:  # it grew after fstat
            raise InvalidInput(f"{what} {shown(relative)} changed while it was read")
        chunks.append(chunk)
    return b"".join(chunks)


def read_config(path: Path) -> tuple[dict[str, Any], Context]:
    """The parsed config and its directory, opened so that the directory is the one that
    holds the file that was read (a directory swapped for a symlink in between is refused).
    The caller closes the context."""
    real = path.resolve()
    try:
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as error:
        raise InvalidInput(f"{path}: cannot be read: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{path}: no such build config")
        data = handle.read(MAX_CONTEXT_FILE)
    directory = os.open(real.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        seen = os.stat(real.name, dir_fd=directory, follow_symlinks=False)
        if (seen.st_dev, seen.st_ino) != (info.st_dev, info.st_ino):
            raise InvalidInput(f"{path}: changed while it was read")
        parsed = parse_toml(data, path)
    except BaseException:
        os.close(directory)
        raise
    return parsed, Context(real.parent, directory)
