"""Synthetic root-filesystem trees: generated (about one directory for ten files, small and large
files of random, incompressible data, symlinks, ``usr/`` and ``etc/os-release``), counted, and
imported into a store as the appimgs of the benchmarks on two trees (``small`` and ``large``)."""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.base import MIB, human, log, run
from bench.harness import BenchBase, add_image_option, add_seed_option

# Synthetic trees: file data are slices of one random pool (incompressible, written fast).
POOL_BYTES = 32 * MIB


SMALL_FILE = (1 << 10, 64 << 10)  # log-uniform sizes: mean about 15 KiB


LARGE_FILE = (256 << 10, 16 << 20)  # log-uniform sizes: mean about 3.9 MiB


SMALL_SHARE = 0.4  # of the bytes, in small files; the rest in large ones


FILES_PER_DIRECTORY = 10


SYMLINK_SHARE = 0.02


EXECUTABLE_SHARE = 0.1


SKELETON = (
    "usr",
    "usr/bin",
    "usr/sbin",
    "usr/lib",
    "usr/lib/x86_64-linux-gnu",
    "usr/libexec",
    "usr/include",
    "usr/share",
    "usr/share/doc",
    "usr/share/locale",
    "etc",
    "etc/default",
    "var",
    "var/lib",
    "var/cache",
    "opt",
)


OS_RELEASE = (
    'PRETTY_NAME="realms benchmark tree"\nNAME="realms-bench"\nID=realms-bench\nVERSION_ID="1"\n'
)


def add_two_tree_options(parser: argparse.ArgumentParser, runs_of: str) -> None:
    """Add the options of a benchmark on a small and a large generated tree: ``--small-mb`` (200),
    ``--large-mb`` (2048), ``--runs`` (7, of what ``runs_of`` says), ``--copy-runs`` (3),
    ``--warmup`` (1), ``--image-gb`` (enough for the trees) and ``--seed``."""
    parser.add_argument("--small-mb", type=int, default=200, help="small tree, MiB (200)")
    parser.add_argument("--large-mb", type=int, default=2048, help="large tree, MiB (2048)")
    parser.add_argument("--runs", type=int, default=7, help=f"timed runs of {runs_of} (7)")
    parser.add_argument("--copy-runs", type=int, default=3, help="timed runs of cp -a (3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each first (1)")
    add_image_option(parser)
    add_seed_option(parser)


@dataclass
class TreeStats:
    bytes: int = 0
    files: int = 0
    directories: int = 0
    symlinks: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "bytes": self.bytes,
            "files": self.files,
            "directories": self.directories,
            "symlinks": self.symlinks,
        }

    def describe(self, label: str) -> str:
        """``LABEL (N bytes), N files, N directories, N symlinks``, as the reports print it."""
        return (
            f"{label} ({self.bytes} bytes), {self.files} files, {self.directories} directories, "
            f"{self.symlinks} symlinks"
        )


def log_uniform(rng: random.Random, bounds: tuple[int, int]) -> int:
    low, high = bounds
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def write_file(path: Path, data: memoryview, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)


def generate_tree(root: Path, target_bytes: int, seed: int) -> None:
    """Fill the existing directory ``root`` with about ``target_bytes`` of files laid out like
    a root filesystem."""
    rng = random.Random(seed)
    pool = memoryview(os.urandom(POOL_BYTES))
    sizes: list[int] = []
    small_budget = int(target_bytes * SMALL_SHARE)
    total = 0
    while total < small_budget:
        sizes.append(log_uniform(rng, SMALL_FILE))
        total += sizes[-1]
    while total < target_bytes:
        sizes.append(min(log_uniform(rng, LARGE_FILE), POOL_BYTES))
        total += sizes[-1]
    rng.shuffle(sizes)

    directories = [root / name for name in SKELETON]
    for directory in directories:
        directory.mkdir(mode=0o755)
    for number in range(max(0, len(sizes) // FILES_PER_DIRECTORY - len(SKELETON))):
        parent = rng.choice(directories)
        directory = parent / f"d{number:05d}"
        directory.mkdir(mode=0o755)
        directories.append(directory)

    write_file(root / "etc" / "os-release", memoryview(OS_RELEASE.encode()), 0o644)
    files: list[Path] = []
    for number, size in enumerate(sizes):
        path = rng.choice(directories) / f"f{number:06d}"
        offset = rng.randrange(POOL_BYTES - size + 1)
        mode = 0o755 if rng.random() < EXECUTABLE_SHARE else 0o644
        write_file(path, pool[offset : offset + size], mode)
        files.append(path)
    for number in range(int(len(sizes) * SYMLINK_SHARE)):
        link = rng.choice(directories) / f"l{number:05d}"
        target = rng.choice(files)
        os.symlink(os.path.relpath(target, link.parent), link)


def tree_stats(root: Path) -> TreeStats:
    """What is in a tree (its root directory not counted)."""
    stats = TreeStats()
    for directory, subdirectories, names in os.walk(root):
        stats.directories += len(subdirectories)
        for name in names:
            info = os.lstat(os.path.join(directory, name))
            if stat.S_ISLNK(info.st_mode):
                stats.symlinks += 1
            else:
                stats.files += 1
                stats.bytes += info.st_size
    return stats


def generate_source(
    source: Path, target_bytes: int, seed: int, extra: Callable[[Path], object] | None = None
) -> float:
    """Make the subvolume ``source`` and fill it: :func:`generate_tree`, then ``extra`` on it
    (such as what makes commands run in it), then ``sync``. Returns the seconds the filling and
    the sync took."""
    run(["btrfs", "subvolume", "create", source])
    start = time.perf_counter()
    generate_tree(source, target_bytes, seed)
    if extra is not None:
        extra(source)
    run(["sync"])
    return time.perf_counter() - start


SIZES = ("small", "large")  # the appimgs of the benchmarks on two generated trees


@dataclass
class GeneratedTrees:
    """The appimgs of a benchmark on two generated trees: what is in each and how long it took."""

    stats: dict[str, TreeStats]
    phases: dict[str, dict[str, float]]
    """Per size: ``generate_seconds`` and ``import_seconds``."""

    @property
    def labels(self) -> dict[str, str]:
        """Per size, its size in words (``205 MiB``, ``2.0 GiB``)."""
        return {size: human(self.stats[size].bytes) for size in self.stats}

    def to_json(self) -> dict[str, dict[str, Any]]:
        labels = self.labels
        return {
            size: {"label": labels[size], **self.stats[size].to_json(), **self.phases[size]}
            for size in self.stats
        }


def import_two_trees(
    bench: BenchBase,
    env: dict[str, str],
    sizes_mb: dict[str, int],
    seed: int,
    *,
    tree_of: Callable[[str], Path],
    extra: Callable[[Path], object] | None = None,
) -> GeneratedTrees:
    """For each size (in order): generate a tree of about that many MiB in the subvolume
    ``source-SIZE`` (:func:`generate_source`, with ``extra``), import it into the store as appimg
    SIZE, delete the source, and count what is in the appimg's tree, ``tree_of(SIZE)``."""
    stats: dict[str, TreeStats] = {}
    phases: dict[str, dict[str, float]] = {}
    for size, megabytes in sizes_mb.items():
        source = bench.mountpoint / f"source-{size}"
        generated = generate_source(source, megabytes * MIB, seed, extra)
        start = time.perf_counter()
        run(bench.realms_cmd("appimg", "import", size, str(source)), env)
        imported = time.perf_counter() - start
        run(["btrfs", "subvolume", "delete", source])
        stats[size] = tree_stats(tree_of(size))
        phases[size] = {
            "generate_seconds": round(generated, 2),
            "import_seconds": round(imported, 2),
        }
        log(
            f"tree {size}: {human(stats[size].bytes)}, {stats[size].files} files, "
            f"{stats[size].directories} directories; generated in {generated:.1f} s, "
            f"imported in {imported:.1f} s"
        )
    return GeneratedTrees(stats, phases)


def two_tree_config(args: argparse.Namespace, image_bytes: int) -> dict[str, Any]:
    """The options of :func:`add_two_tree_options` and the scratch image's size, as the results
    record them."""
    return {
        "small_mb": args.small_mb,
        "large_mb": args.large_mb,
        "runs": args.runs,
        "copy_runs": args.copy_runs,
        "warmup": args.warmup,
        "seed": args.seed,
        "image_bytes": image_bytes,
    }


APPLETS = ("sh", "touch", "true", "echo")
"""The busybox applets the benchmarks' commands use (update-appimg runs ``sh`` and ``true``)."""


def add_busybox(root: Path) -> None:
    """Make a generated tree able to run commands: busybox-static and a few applets."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("busybox is not installed (apt-get install busybox-static)")
    shutil.copy2(busybox, root / "usr" / "bin" / "busybox")
    for applet in APPLETS:
        (root / "usr" / "bin" / applet).symlink_to("busybox")
