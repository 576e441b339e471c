"""The C library, for the few system calls Python 3.11 has no wrapper for (renameat2, syncfs,
openat2, unshare, mount, open_tree, mount_setattr, move_mount, prctl): one handle, and one way
to turn a failed call into an OSError."""

from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def checked(result: int, what: str, filename: str | None = None) -> int:
    """``result`` of a libc call, or the OSError its errno describes (naming ``what``)."""
    if result < 0:
        number = ctypes.get_errno()
        if filename is not None:
            raise OSError(number, os.strerror(number), filename)
        raise OSError(number, f"{what}: {os.strerror(number)}")
    return result
