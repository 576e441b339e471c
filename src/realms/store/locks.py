"""Advisory locks (``fcntl.flock``) that make concurrent realms commands safe.

Each appimg and each realm has its own lock file in the store's ``locks/`` directory. Commands that
change something take the lock exclusively; commands that only need a thing to stay put (making a
realm from an appimg) take it shared. A lock dies with its process, so a killed command never
leaves a lock behind, and a temporary name whose lock is free belongs to a dead command and may
be cleaned up (see :mod:`realms.store.txn`). The lock order is in :mod:`realms.store.layout`.

Nothing is ever written into a lock file: it is created empty once and only opened and locked
after that, so that commands which free space (``realms remove``, ``appimg remove``, ``prune``)
work on a full store. A command that finds a lock taken finds who holds it in ``/proc/locks``, by
the lock file's device and inode, and names that process.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from realms.errors import Busy


def holders(path: Path) -> list[int]:
    """The pids holding a flock on the file at ``path`` (from /proc/locks; waiters excluded).

    /proc/locks names a file by its superblock's device and inode number, and on btrfs that
    device is not the one stat() reports (each subvolume has its own): a line with the inode
    number is a candidate, confirmed by the process having the very file open.
    """
    try:
        info = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2d:271 0 EOF"; waiters have "->" after the number.
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        if fields[5].rpartition(":")[2] != str(info.st_ino):
            continue
        try:
            pid = int(fields[4])
        except ValueError:
            continue
        if pid not in found and _has_open(pid, info):
            found.append(pid)
    return found


def _has_open(pid: int, info: os.stat_result) -> bool:
    return _descriptor_of(str(pid), info) is not None


def _descriptor_of(process: str, info: os.stat_result) -> int | None:
    """The descriptor of process ``process`` (a pid, or ``self``) that has the file ``info``
    describes open, or None."""
    try:
        descriptors = os.listdir(f"/proc/{process}/fd")
    except OSError:
        return None
    for descriptor in descriptors:
        try:
            other = os.stat(f"/proc/{process}/fd/{descriptor}")
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
            return int(descriptor)
    return None


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            words = handle.read().rstrip(b"\0").split(b"\0")
    except OSError:
        return ""
    text = " ".join(w.decode(errors="replace") for w in words)
    # The supervisor of a started realm, once it waits (realms.lifecycle.watch).
    if " -c import sys;sys.path.insert(0,sys.argv[1]);from realms.lifecycle import " in text:
        return f"the supervisor of realm {words[-1].decode(errors='replace')}"
    # Python runs realms as "python -m realms ...": show it as the command a person typed.
    for prefix in ("-m realms ", "/realms "):
        if prefix in text:
            return "realms " + text.split(prefix, 1)[1]
    return text


def _holder(path: Path) -> str:
    pids = holders(path)
    if not pids:
        return ""
    command = _command_line(pids[0])
    return f" (held by pid {pids[0]}{': ' + command if command else ''})"


@contextmanager
def hold(
    path: Path,
    *,
    what: str,
    shared: bool = False,
    wait: float | None = None,
    busy: str | None = None,
    hint: str | None = None,
) -> Iterator[None]:
    """Hold the lock at ``path`` for the duration of the block.

    ``wait`` is how long to wait for a busy lock: None waits as long as it takes, 0 fails at once
    with :class:`Busy`, whose message is ``busy`` (default: "``what`` is busy") followed by the
    holder, with ``hint``.
    """
    fd = _open(path)
    try:
        operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if wait is None:
            fcntl.flock(fd, operation)
        else:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, operation | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        message = busy or f"{what} is busy"
                        raise Busy(f"{message}{_holder(path)}", hint=hint) from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _open(path: Path) -> int:
    # Read-only is enough for flock, and an existing lock file opens without any write to the
    # filesystem; only a lock's first use creates its (empty) file.
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def own_descriptor(path: Path) -> int | None:
    """The descriptor of this process that has the lock file at ``path`` open (the one holding
    the lock, when this process holds it): a process that executes another program keeps its
    locks by keeping that descriptor open across the exec."""
    return _descriptor_of("self", os.stat(path))


def is_free(path: Path) -> bool:
    """Whether nobody holds the lock at ``path`` (checked by taking and releasing it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
