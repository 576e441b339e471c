"""Loop devices that cannot leak: attached with the kernel's autoclear flag.

A loop device attached here is read-only, starts at an offset of its backing file (after an
image's header) and is detached by the kernel as soon as nothing holds it any more: the mount
(or dm-verity device) made on it, or, if realms dies before that, the file descriptor that
realms held. So a killed command never leaves a loop device behind, and unmounting is all it
takes to free one.

The ioctls (LOOP_CTL_GET_FREE on /dev/loop-control, then LOOP_CONFIGURE) are the ones losetup
uses; losetup has no option for autoclear.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from realms.errors import RealmsError

_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LO_FLAGS_READ_ONLY = 1
_LO_FLAGS_AUTOCLEAR = 4
# struct loop_info64: device, inode, rdevice, offset, sizelimit (u64 each); number,
# encrypt_type, encrypt_key_size, flags (u32 each); file_name[64], crypt_name[64],
# encrypt_key[32]; init[2] (u64).
_LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32s2Q")
# struct loop_config: fd, block_size (u32); loop_info64; reserved[8] (u64).
_LOOP_CONFIG = struct.Struct(f"=II{_LOOP_INFO64.size}s8Q")
_ATTEMPTS = 20


@contextmanager
def attached(backing: Path, *, offset: int, size: int | None = None) -> Iterator[str]:
    """Attach ``backing`` read-only from ``offset`` (``size`` bytes, or to its end) and yield
    the device's path. Mount it (or open dm-verity on it) inside the block: after the block the
    device lives exactly as long as that mount."""
    backing_fd = os.open(backing, os.O_RDONLY | os.O_CLOEXEC)
    try:
        device_fd, device = _configure(backing, backing_fd, offset, size or 0)
    finally:
        os.close(backing_fd)
    try:
        yield device
    finally:
        os.close(device_fd)


def _configure(backing: Path, backing_fd: int, offset: int, size: int) -> tuple[int, str]:
    name = str(backing).encode()[:63]
    info = _LOOP_INFO64.pack(
        0,
        0,
        0,
        offset,
        size,
        0,
        0,
        0,
        _LO_FLAGS_READ_ONLY | _LO_FLAGS_AUTOCLEAR,
        name,
        b"",
        b"",
        0,
        0,
    )
    config = _LOOP_CONFIG.pack(backing_fd, 0, info, *([0] * 8))
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        raise RealmsError(f"cannot use loop devices: /dev/loop-control: {error.strerror}") from None
    try:
        for _attempt in range(_ATTEMPTS):
            number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
            device = f"/dev/loop{number}"
            device_fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.ioctl(device_fd, _LOOP_CONFIGURE, config)
            except OSError as error:
                os.close(device_fd)
                if error.errno == errno.EBUSY:  # another process took it first
                    continue
                raise RealmsError(
                    f"cannot attach {backing} to {device}: {error.strerror}"
                ) from None
            return device_fd, device
    finally:
        os.close(control)
    raise RealmsError(f"cannot attach {backing}: every free loop device was taken meanwhile")
