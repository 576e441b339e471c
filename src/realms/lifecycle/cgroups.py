"""The cgroup of a booted realm: one directory per realm in the cgroup2 hierarchy, which holds
every process of the realm (nspawn is moved there before exec, and all it starts stays below).

Whether a realm still has processes is the cgroup's ``populated`` flag, whatever happened to
the processes realms started (a SIGKILLed nspawn leaves the realm's init running, reparented:
it is still in the cgroup); stopping for good is ``cgroup.kill``, which kills everything in
it at once. nspawn makes ``payload/`` and ``supervisor/`` below it, and on a hybrid host (v1
controllers, cgroup2 beside them, as on these machines) mirrors them in the ``name=systemd`` v1
hierarchy: removal takes both trees, deepest first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import time
from functools import cache
from pathlib import Path

from realms.errors import RealmsError


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, super options) of every mount of this process."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            fields = line.split()
            try:
                dash = fields.index("-")
            except ValueError:
                continue
            point = fields[4].replace("\\040", " ")
            found.append(
                (point, fields[dash + 1], fields[dash + 3] if len(fields) > dash + 3 else "")
            )
    return found


@cache
def find_unified_root() -> Path | None:
    """Where the cgroup2 hierarchy is mounted (``/sys/fs/cgroup``, or
    ``/sys/fs/cgroup/unified`` on a hybrid host); None if it is not."""
    for point, fstype, _options in _mounts():
        if fstype == "cgroup2":
            return Path(point)
    return None


def unified_root() -> Path:
    found = find_unified_root()
    if found is not None:
        return found
    raise RealmsError(
        "no cgroup2 hierarchy is mounted: booted realms need one (each realm's processes are "
        "kept in a cgroup of their own)",
        hint="mount -t cgroup2 none /sys/fs/cgroup/unified",
    )


@cache
def named_systemd_root() -> Path | None:
    """The v1 ``name=systemd`` hierarchy of a hybrid host, where nspawn mirrors its cgroups."""
    for point, fstype, options in _mounts():
        if fstype == "cgroup" and "name=systemd" in options.split(","):
            return Path(point)
    return None


def path(relative: str) -> Path:
    return unified_root() / relative


def create(relative: str) -> Path:
    directory = path(relative)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def populated(directory: Path) -> bool:
    """Whether any process is in the cgroup or below it (a missing cgroup has none)."""
    try:
        text = (directory / "cgroup.events").read_text()
    except OSError as error:
        if _gone(error):
            return False
        raise
    return "populated 1" in text.splitlines()


def _gone(error: OSError) -> bool:
    """Whether ``error`` says the cgroup is gone: no such file, or (a file opened before the
    cgroup was removed) no such device."""
    return error.errno in (errno.ENOENT, errno.ENODEV)


def kill(directory: Path) -> None:
    """SIGKILL every process in the cgroup and below (kernel 5.14+)."""
    try:
        (directory / "cgroup.kill").write_text("1")
    except OSError as error:
        if not _gone(error):
            raise


def wait_empty(directory: Path, timeout: float) -> bool:
    """Wait until the cgroup has no process left, at most ``timeout`` seconds; whether it is
    empty. The kernel wakes poll() on cgroup.events when ``populated`` changes."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.open(directory / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        while True:
            try:
                if b"populated 0" in os.pread(fd, 256, 0):
                    return True
            except OSError as error:
                if _gone(error):
                    return True  # removed: only an empty cgroup can be
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # Also a short tick: a wakeup missed between the read and the poll costs 50 ms.
            poller.poll(min(left, 0.05) * 1000)
    finally:
        os.close(fd)


def pids(directory: Path) -> list[int]:
    """Every process in the cgroup and below."""
    found: list[int] = []
    for parent, _subdirectories, files in os.walk(directory):
        if "cgroup.procs" in files:
            try:
                text = Path(parent, "cgroup.procs").read_text()
            except OSError:
                continue
            found += [int(word) for word in text.split()]
    return found


def remove(relative: str) -> None:
    """Remove the realm's (empty) cgroup, its sub-cgroups and their v1 mirror; what still has
    processes stays (the caller checked it is empty)."""
    roots = [unified_root(), named_systemd_root()]
    for root in roots:
        if root is None:
            continue
        top = root / relative
        if not top.is_dir():
            continue
        for parent, subdirectories, _files in os.walk(top, topdown=False):
            for directory in subdirectories:
                _rmdir(Path(parent, directory))
        _rmdir(top)


def _rmdir(directory: Path) -> None:
    # Busy (a process is still in it) or gone: either way nothing to do here.
    with contextlib.suppress(OSError):
        directory.rmdir()
