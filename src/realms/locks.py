"""Advisory locks (``fcntl.flock``) that make concurrent realms commands safe.

Each appimg and each realm has its own lock file in the store's ``locks/`` directory. Commands that
change something take the lock exclusively; commands that only need a thing to stay put (making a
realm from an appimg) take it shared. A lock dies with its process, so a killed command never
leaves a lock behind, and a temporary name whose lock is free belongs to a dead command and may
be cleaned up (see :mod:`realms.store`).

The holder of an exclusive lock writes its pid and command line into the lock file, so that a
command that finds the lock taken can say who has it.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from realms.errors import Busy


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return ""
    return f" (held by {text})" if text else ""


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
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)}\n".encode(), 0)
        try:
            yield
        finally:
            if not shared:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def is_free(path: Path) -> bool:
    """Whether nobody holds the lock at ``path`` (checked by taking and releasing it)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
