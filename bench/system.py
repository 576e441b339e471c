"""The machine side of a benchmark: the scratch btrfs filesystem (made, and always released, with
:mod:`realms.system.scratch`, which the tests use too), waiting until btrfs has settled, removing
trees of subvolumes, and what the machine is and was doing (information, CPU time, load).

:func:`scratch_btrfs` unmounts its filesystem, checks that no loop device is left backed by its
image and removes its temporary directory, also when the block it guards is left by Ctrl-C or
(after :func:`bench.harness.stop_on_signals`) SIGTERM or SIGHUP."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.base import GIB, MIB, human, log, run, tool_version
from realms.system import scratch

SETTLE_TIMEOUT = 300.0  # seconds


STORE_DIR = "store"  # a benchmark's store on the scratch filesystem: MOUNTPOINT/store


# What every benchmark needs for its scratch filesystem (see scratch_btrfs).
SCRATCH_TOOLS = ("mkfs.btrfs", "btrfs", "mount", "umount", "losetup", "findmnt")


MIN_SCRATCH_GIB = 8  # the least size of a scratch filesystem sized to its trees


def machine_info(workdir: Path) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    backing = run(["findmnt", "--noheadings", "--output", "FSTYPE", "--target", workdir]).strip()
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": cpu,
        "memory_bytes": memory,
        "python": platform.python_version(),
        "btrfs_progs": tool_version(["btrfs", "--version"]),
        "cp": tool_version(["cp", "--version"]),
        "image_backing_fstype": backing,
    }


def scratch_size(image_gb: int, enough_mb: int) -> int:
    """The size of the scratch filesystem in bytes: ``image_gb`` GiB as asked (``--image-gb``)
    or, where that is 0, ``enough_mb`` MiB but at least :data:`MIN_SCRATCH_GIB` GiB."""
    return (image_gb * GIB) or max(MIN_SCRATCH_GIB * GIB, enough_mb * MIB)


@contextmanager
def scratch_btrfs(size: int) -> Iterator[Path]:
    """A fresh btrfs filesystem in a sparse image, mounted; yields its mount point. Always
    unmounted afterwards (first whatever is still mounted inside it, such as an activated image,
    and the loop devices backed by files on it), its loop device checked, and its temporary
    directory removed."""
    workdir = Path(tempfile.mkdtemp(prefix="realms-bench-"))
    image = workdir / "btrfs.img"
    mountpoint = workdir / "mnt"
    try:
        scratch.make_btrfs(image, mountpoint, size, label="realms-bench")
        log(f"btrfs: {human(size)} sparse image {image}, mounted at {mountpoint}")
        yield mountpoint
    finally:
        release(workdir, image, mountpoint)


def release(workdir: Path, image: Path, mountpoint: Path) -> None:
    """Release a scratch filesystem: what a benchmark left mounted inside it (activations of
    sealed appimgs, which hold loop devices backed by files on it) first, then the filesystem
    and its loop device; remove ``workdir`` only if all of that went."""
    problems = []
    for inner in scratch.mounts_below(mountpoint, itself=False):
        log(f"unmounting {inner}, left mounted inside the scratch filesystem")
        problem = scratch.unmount(inner, attempts=10, pause=0.5)
        if problem:
            problems.append(f"could not unmount {inner}: {problem}")
    for device in scratch.loops_backed_below(mountpoint):
        log(f"loop device {device} is backed by a file on the scratch filesystem: detaching")
        scratch.detach(device)
    if not problems and os.path.ismount(mountpoint):
        problem = scratch.unmount(mountpoint, attempts=10, pause=0.5)
        if problem:
            problems.append(f"could not unmount {mountpoint} ({problem}); unmount it by hand")
    # mount -o loop detaches its device when the filesystem goes, which happens after umount
    # returns: wait for that before detaching it by hand.
    if not problems and not scratch.wait_until_detached(image, timeout=10):
        for device in scratch.loops_backed_by(image):
            log(f"loop device {device} still backed by {image}: detaching it")
            scratch.detach(device)
        if not scratch.wait_until_detached(image, timeout=10):
            left = scratch.loops_backed_by(image)
            problems.append(f"loop devices still backed by {image}: {', '.join(left)}")
    if problems:
        log("cleanup incomplete, temporary directory kept: " + "; ".join(problems))
    else:
        shutil.rmtree(workdir)
        log(f"cleaned up: unmounted, no loop device left, removed {workdir}")


def settle(mountpoint: Path) -> None:
    """Wait until deleted subvolumes are cleaned and dirty data are written.

    Not ``btrfs subvolume sync``: btrfs's cleaner would wait for the next periodic commit
    (30 s) to start. ``btrfs filesystem sync`` commits and wakes it; poll until it is done.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while run(["btrfs", "subvolume", "list", "-d", mountpoint]).strip():
        if time.monotonic() > deadline:
            log(f"deleted subvolumes still not cleaned after {SETTLE_TIMEOUT} s; going on")
            break
        run(["btrfs", "filesystem", "sync", mountpoint])
        time.sleep(0.02)
    run(["sync"])


BTRFS_SUBVOLUME_INODE = 256  # the inode number of every subvolume's root directory


def remove_tree(path: Path) -> None:
    """Remove a directory on btrfs that may hold subvolumes (a store, a bootstrapped root):
    the subvolumes in it (and itself, if it is one) deepest first, then what is left."""
    if not path.exists():
        return
    subvolumes = []
    if path.stat().st_ino == BTRFS_SUBVOLUME_INODE:
        subvolumes.append(path)
    for directory, subdirectories, _ in os.walk(path):
        for name in subdirectories:
            full = Path(directory) / name
            if full.lstat().st_ino == BTRFS_SUBVOLUME_INODE:
                subvolumes.append(full)
    for subvolume in sorted(subvolumes, key=lambda p: -len(p.parts)):
        run(["btrfs", "subvolume", "delete", subvolume])
    if path.exists():
        shutil.rmtree(path)


def machine_cpu_ms() -> float:
    """CPU time the whole machine has spent busy (all CPUs: user, system, interrupts, steal),
    in milliseconds, from /proc/stat; the difference over a run shows what else ran."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    ticks = user + nice + system + irq + softirq + steal
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def children_cpu_ms() -> float:
    """CPU time (user + system) of this process's finished, waited-for children and theirs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: other work on the machine shows there."""
    return [round(x, 2) for x in os.getloadavg()]
