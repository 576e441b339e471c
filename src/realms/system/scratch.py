"""Scratch filesystems for the tests and the benchmarks, and releasing what they left mounted.

A scratch filesystem is btrfs in a sparse file, mounted through a loop device (``mount -o loop``
detaches the device when it is unmounted). Releasing one unmounts what is mounted at or below its
directory (deepest first) and detaches the loop devices backed by files below it: only what was
made there, never another mount or loop device of the machine, which other work shares. realms'
commands do not use this module; the tests (``tests/helpers.py``) and the benchmarks
(``bench/system.py``) do, so that both find and release mounts and loop devices one way, the way
:mod:`realms.system.mounts` reads them.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from realms.system.mounts import (
    loops_backed_below,
    loops_backed_by,
    mounted_below,
    wait_until_detached,
)

__all__ = [
    "detach",
    "loops_backed_below",
    "loops_backed_by",
    "make_btrfs",
    "mounts_below",
    "unmount",
    "unmount_below",
    "wait_until_detached",
]


def make_btrfs(image: Path, mountpoint: Path, size: int | str, *, label: str | None = None) -> None:
    """Make the sparse file ``image`` of ``size`` (bytes, or truncate's notation such as ``4G``),
    format it as btrfs and mount it at ``mountpoint`` (made if need be)."""
    subprocess.run(["truncate", "-s", str(size), str(image)], check=True)
    labelled = ["--label", label] if label else []
    mkfs = ["mkfs.btrfs", "--quiet", *labelled, str(image)]
    subprocess.run(mkfs, check=True, capture_output=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)


def mounts_below(directory: Path, *, itself: bool = True) -> list[Path]:
    """Mount points below ``directory`` (and on it, with ``itself``), deepest first."""
    real = Path(os.path.realpath(directory))
    return [target for target in mounted_below(directory) if itself or target != real]


def unmount(target: Path, *, attempts: int = 50, pause: float = 0.1) -> str | None:
    """Unmount ``target``, trying again while it is busy; None once it is not mounted, else what
    the last ``umount`` said."""
    problem = None
    for attempt in range(attempts):
        if not os.path.ismount(target):
            return None
        result = subprocess.run(
            ["umount", str(target)], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return None
        problem = result.stderr.strip() or f"umount exited with {result.returncode}"
        if attempt + 1 < attempts:
            time.sleep(pause)
    return problem


def unmount_below(directory: Path, *, attempts: int = 50, pause: float = 0.1) -> list[Path]:
    """Unmount everything mounted at or below ``directory``, deepest first, trying again while a
    mount is busy; what is still mounted after ``attempts`` tries is unmounted lazily. Returns
    the mount points that needed the lazy unmount."""
    for _attempt in range(attempts):
        found = mounts_below(directory)
        if not found:
            return []
        if subprocess.run(["umount", str(found[0])], capture_output=True, check=False).returncode:
            time.sleep(pause)
    left = mounts_below(directory)
    for target in left:
        subprocess.run(["umount", "--lazy", str(target)], capture_output=True, check=False)
    return left


def detach(device: str) -> None:
    """Detach a loop device (one that was found backed by a file of ours)."""
    subprocess.run(["losetup", "--detach", device], capture_output=True, check=False)
