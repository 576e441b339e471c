"""How long ``realms new`` takes, and whether that depends on the size of the appimg.

On a btrfs filesystem of its own (a sparse image file, loop-mounted under a temporary directory)
this benchmark generates two synthetic root-filesystem-like trees, about 200 MiB and about 2 GiB
(many small files, some large ones, thousands of directories, a few symlinks, ``usr/`` and
``etc/os-release``), imports them into a fresh store as appimgs ``small`` and ``large``, and
then times, on the same trees:

- ``realms new``: the whole command line process (``realms -q new NAME --appimg small|large``),
  from start to exit, as a user would wait for it;
- ``btrfs subvolume snapshot``: the bare snapshot of the appimg's tree that ``realms new`` makes;
- ``cp -a``: a copy of the same tree. GNU cp 9 and later reflinks by default (``--reflink=auto``),
  so on btrfs this copies every file's metadata but shares the data;
- ``cp -a --reflink=never``: a full copy of metadata and data, what a realm would cost without
  btrfs;
- ``realms --version``: the start-up floor of the command line (interpreter plus imports), for
  reference.

Each is repeated ``--runs`` times after ``--warmup`` untimed runs, interleaved round by round;
``sync`` runs before every timed run and whatever a run made is removed afterwards (untimed, and
btrfs's cleaner is woken and waited for until deleted subvolumes are gone). It prints a table of
medians (with min and max), each method's ratio to ``realms new`` and its 2 GiB / 200 MiB ratio,
and whether the targets hold: ``realms new`` under 150 ms median for both sizes, and a large /
small ratio under 1.2. The results, with every sample, go to ``bench/results/realm_new.json``.

It needs root (mkfs.btrfs, mount) and cleans up after itself, also on Ctrl-C: it unmounts its
filesystem, checks that no loop device is left backed by its image, and removes its temporary
directory. Run it from the repository root::

    .venv/bin/python bench/realm_new.py
    .venv/bin/python bench/realm_new.py --small-mb 50 --large-mb 500 --runs 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "realm_new.json"

TARGET_MS = 150.0
TARGET_RATIO = 1.2

MIB = 1 << 20
GIB = 1 << 30

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

STORE_DIR = "store"
SETTLE_TIMEOUT = 300.0  # seconds


# Small helpers


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(argv: Sequence[str | Path], env: dict[str, str] | None = None) -> str:
    """Run a command that must succeed (untimed work); return its stdout."""
    result = subprocess.run(
        [str(arg) for arg in argv], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(str(a) for a in argv)} failed ({result.returncode}): "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


def timed(argv: Sequence[str | Path], env: dict[str, str] | None = None) -> float:
    """Wall time of a whole process, in milliseconds; it must succeed."""
    command = [str(arg) for arg in argv]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return elapsed


def human(size: int) -> str:
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / MIB:.0f} MiB"


def tool_version(argv: list[str]) -> str:
    try:
        return run(argv).splitlines()[0].strip()
    except (OSError, RuntimeError, IndexError):
        return "unknown"


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


# The scratch btrfs filesystem


def loops_backed_by(image: Path) -> list[str]:
    """Loop devices whose backing file is ``image``."""
    output = run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"])
    found = []
    for line in output.splitlines():
        name, _, back = line.strip().partition(" ")
        back = back.strip().removesuffix(" (deleted)")
        if back == str(image):
            found.append(name)
    return found


def unmount(mountpoint: Path) -> None:
    for attempt in range(10):
        if not os.path.ismount(mountpoint):
            return
        result = subprocess.run(
            ["umount", str(mountpoint)], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return
        log(f"umount {mountpoint} failed (attempt {attempt + 1}): {result.stderr.strip()}")
        time.sleep(0.5)
    raise RuntimeError(f"could not unmount {mountpoint}; unmount it by hand")


@contextmanager
def scratch_btrfs(size: int) -> Iterator[Path]:
    """A fresh btrfs filesystem in a sparse image, mounted; yields its mount point. Always
    unmounted, its loop device checked, and its temporary directory removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="realms-bench-"))
    image = workdir / "btrfs.img"
    mountpoint = workdir / "mnt"
    try:
        mountpoint.mkdir()
        with open(image, "wb") as handle:
            handle.truncate(size)
        run(["mkfs.btrfs", "--quiet", "--label", "realms-bench", image])
        run(["mount", "-o", "loop", image, mountpoint])
        log(f"btrfs: {human(size)} sparse image {image}, mounted at {mountpoint}")
        yield mountpoint
    finally:
        problems = []
        try:
            unmount(mountpoint)
        except RuntimeError as error:
            problems.append(str(error))
        if not problems:
            for device in loops_backed_by(image):
                # Ours (backed by our image): mount -o loop should have detached it.
                log(f"loop device {device} still backed by {image}: detaching it")
                subprocess.run(["losetup", "--detach", device], check=False)
            left = loops_backed_by(image)
            if left:
                problems.append(f"loop devices still backed by {image}: {', '.join(left)}")
        if problems:
            log("cleanup incomplete, temporary directory kept: " + "; ".join(problems))
        else:
            shutil.rmtree(workdir)
            log(f"cleaned up: unmounted, no loop device left, removed {workdir}")


# Synthetic root filesystems


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


# Measurements


@dataclass
class Measurement:
    """One method on one tree: a command timed ``runs`` times."""

    method: str
    size: str  # "small", "large", or "-" for start-up
    runs: int
    sample: Callable[[int], float]  # run number -> milliseconds (timed part only)
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class Bench:
    mountpoint: Path
    realms: list[str]
    env: dict[str, str]
    warmup: int
    trees: dict[str, Path] = field(default_factory=dict)  # "small"/"large" -> appimg tree
    counter: int = 0

    @property
    def store(self) -> Path:
        return self.mountpoint / STORE_DIR

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def settle(self) -> None:
        """Wait until deleted subvolumes are cleaned and dirty data are written.

        Not ``btrfs subvolume sync``: btrfs's cleaner would wait for the next periodic commit
        (30 s) to start. ``btrfs filesystem sync`` commits and wakes it; poll until it is done.
        """
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while run(["btrfs", "subvolume", "list", "-d", self.mountpoint]).strip():
            if time.monotonic() > deadline:
                log(f"deleted subvolumes still not cleaned after {SETTLE_TIMEOUT} s; going on")
                break
            run(["btrfs", "filesystem", "sync", self.mountpoint])
            time.sleep(0.02)
        run(["sync"])

    def realms_cmd(self, *args: str) -> list[str]:
        return [*self.realms, "-q", *args]

    def realms_new(self, size: str) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            name = self.fresh("r")
            self.settle()
            elapsed = timed(self.realms_cmd("new", name, "--appimg", size), self.env)
            run(self.realms_cmd("remove", name), self.env)
            return elapsed

        return sample

    def snapshot(self, size: str) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            target = self.mountpoint / self.fresh("snapshot")
            self.settle()
            elapsed = timed(["btrfs", "subvolume", "snapshot", self.trees[size], target])
            run(["btrfs", "subvolume", "delete", target])
            return elapsed

        return sample

    def copy(self, size: str, *options: str) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            # The copy goes into a subvolume of its own, so that removing it is quick.
            holder = self.mountpoint / self.fresh("copy")
            run(["btrfs", "subvolume", "create", holder])
            self.settle()
            elapsed = timed(["cp", "-a", *options, self.trees[size], holder / "tree"])
            run(["btrfs", "subvolume", "delete", holder])
            return elapsed

        return sample

    def startup(self) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            self.settle()
            return timed([*self.realms, "--version"], self.env)

        return sample

    def measure(self, measurements: list[Measurement]) -> None:
        """Warm-up rounds (untimed), then rounds of one run of each measurement still short of
        its runs, so that slow drift spreads over all methods."""
        for round_number in range(self.warmup):
            for m in measurements:
                log(f"warm-up {round_number + 1}/{self.warmup}: {m.method} ({m.size})")
                m.sample(-1)
        for round_number in range(max(m.runs for m in measurements)):
            for m in measurements:
                if round_number >= m.runs:
                    continue
                elapsed = m.sample(round_number)
                m.samples.append(elapsed)
                log(f"{m.method} ({m.size}) run {round_number + 1}/{m.runs}: {elapsed:.1f} ms")
        self.settle()


def realms_command() -> list[str]:
    script = Path(sys.executable).with_name("realms")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "realms"]


def compile_realms() -> None:
    """Byte-compile the realms package, so that timings do not include compiling it (with
    PYTHONDONTWRITEBYTECODE set nothing else would write the .pyc files)."""
    spec = importlib.util.find_spec("realms")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("realms is not importable from this Python; run it with .venv/bin/python")
    for location in spec.submodule_search_locations:
        run([sys.executable, "-m", "compileall", "-q", location])


# Report


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    aligned = [
        "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [headers, *rows]
    ]
    print(aligned[0])
    print("-" * len(aligned[0]))
    for line in aligned[1:]:
        print(line)


def report(
    measurements: list[Measurement], stats: dict[str, TreeStats], labels: dict[str, str]
) -> dict[str, Any]:
    by_key = {(m.method, m.size): m for m in measurements}
    new = {size: by_key[("realms new", size)].median for size in ("small", "large")}
    rows = []
    results = []
    scaling: dict[str, float | None] = {}
    for m in measurements:
        versus = ratio(m.median, new[m.size]) if m.size in new else None
        large_over_small = None
        if m.size == "large" and (m.method, "small") in by_key:
            large_over_small = ratio(m.median, by_key[(m.method, "small")].median)
            scaling[m.method] = large_over_small
        rows.append(
            [
                m.method,
                labels.get(m.size, "-"),
                f"{m.median:.1f}",
                f"{min(m.samples):.1f}",
                f"{max(m.samples):.1f}",
                format_ratio(versus),
                format_ratio(large_over_small),
            ]
        )
        results.append(
            {
                "method": m.method,
                "size": m.size,
                "runs": m.runs,
                "samples_ms": [round(s, 3) for s in m.samples],
                "median_ms": round(m.median, 3),
                "min_ms": round(min(m.samples), 3),
                "max_ms": round(max(m.samples), 3),
                "vs_realms_new": None if versus is None else round(versus, 3),
            }
        )
    print()
    for size in ("small", "large"):
        s = stats[size]
        print(
            f"{size}: {labels[size]} ({s.bytes} bytes), {s.files} files, "
            f"{s.directories} directories, {s.symlinks} symlinks"
        )
    print()
    print_table(
        ["method", "tree", "median ms", "min ms", "max ms", "vs realms new", "large/small"],
        rows,
    )
    new_ratio = scaling.get("realms new")
    small_met = new["small"] < TARGET_MS
    large_met = new["large"] < TARGET_MS
    ratio_met = new_ratio is not None and new_ratio < TARGET_RATIO
    print()
    print("targets:")
    print(
        f"  realms new median < {TARGET_MS:.0f} ms, {labels['small']}: {new['small']:.1f} ms: "
        f"{'met' if small_met else 'NOT met'}"
    )
    print(
        f"  realms new median < {TARGET_MS:.0f} ms, {labels['large']}: {new['large']:.1f} ms: "
        f"{'met' if large_met else 'NOT met'}"
    )
    print(
        f"  realms new large/small ratio < {TARGET_RATIO}: {format_ratio(new_ratio)}: "
        f"{'met' if ratio_met else 'NOT met'}"
    )
    return {
        "results": results,
        "ratios_large_over_small": {
            k: None if v is None else round(v, 3) for k, v in scaling.items()
        },
        "targets": {
            "realms_new_median_ms_below": TARGET_MS,
            "ratio_large_over_small_below": TARGET_RATIO,
            "realms_new_small_met": small_met,
            "realms_new_large_met": large_met,
            "ratio_met": ratio_met,
            "all_met": small_met and large_met and ratio_met,
        },
    }


# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time 'realms new' against a bare btrfs snapshot and cp -a, on appimgs of "
        "about 200 MiB and 2 GiB.",
    )
    parser.add_argument("--small-mb", type=int, default=200, help="small tree, MiB (200)")
    parser.add_argument("--large-mb", type=int, default=2048, help="large tree, MiB (2048)")
    parser.add_argument(
        "--runs", type=int, default=7, help="timed runs of realms new and snapshot (7)"
    )
    parser.add_argument("--copy-runs", type=int, default=3, help="timed runs of cp -a (3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each first (1)")
    parser.add_argument(
        "--image-gb",
        type=int,
        default=0,
        help="size of the sparse btrfs image, GiB (default: enough for the trees, at least 8)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the tree layout (1)")
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"JSON results (default: {RESULTS})"
    )
    args = parser.parse_args(argv)
    if min(args.small_mb, args.large_mb, args.runs, args.copy_runs) < 1 or args.warmup < 0:
        parser.error("sizes and runs must be positive")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("this benchmark needs root: it makes and mounts a btrfs filesystem")
        return 2
    for tool in ("mkfs.btrfs", "btrfs", "mount", "umount", "losetup", "findmnt", "cp"):
        if shutil.which(tool) is None:
            log(f"{tool} is not installed")
            return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    compile_realms()
    targets_mb = {"small": args.small_mb, "large": args.large_mb}
    image_size = (args.image_gb * GIB) or max(8 * GIB, 4 * (args.small_mb + args.large_mb) * MIB)
    started = time.perf_counter()
    try:
        with scratch_btrfs(image_size) as mountpoint:
            env = {**os.environ, "REALMS_STORE": str(mountpoint / STORE_DIR)}
            bench = Bench(mountpoint, realms_command(), env, args.warmup)
            machine = machine_info(mountpoint.parent)
            run(bench.realms_cmd("init"), env)
            stats: dict[str, TreeStats] = {}
            phases: dict[str, dict[str, float]] = {}
            for size, megabytes in targets_mb.items():
                source = mountpoint / f"source-{size}"
                run(["btrfs", "subvolume", "create", source])
                start = time.perf_counter()
                generate_tree(source, megabytes * MIB, args.seed)
                run(["sync"])
                generated = time.perf_counter() - start
                start = time.perf_counter()
                run(bench.realms_cmd("appimg", "import", size, str(source)), env)
                imported = time.perf_counter() - start
                run(["btrfs", "subvolume", "delete", source])
                bench.trees[size] = bench.store / "appimg" / size / "v1"
                stats[size] = tree_stats(bench.trees[size])
                phases[size] = {
                    "generate_seconds": round(generated, 2),
                    "import_seconds": round(imported, 2),
                }
                log(
                    f"tree {size}: {human(stats[size].bytes)}, {stats[size].files} files, "
                    f"{stats[size].directories} directories; generated in {generated:.1f} s, "
                    f"imported in {imported:.1f} s"
                )
            labels = {size: human(stats[size].bytes) for size in stats}
            measurements = [
                Measurement("realms --version", "-", args.runs, bench.startup()),
                *(
                    Measurement("realms new", size, args.runs, bench.realms_new(size))
                    for size in ("small", "large")
                ),
                *(
                    Measurement("btrfs snapshot", size, args.runs, bench.snapshot(size))
                    for size in ("small", "large")
                ),
                *(
                    Measurement("cp -a", size, args.copy_runs, bench.copy(size))
                    for size in ("small", "large")
                ),
                *(
                    Measurement(
                        "cp -a --reflink=never",
                        size,
                        args.copy_runs,
                        bench.copy(size, "--reflink=never"),
                    )
                    for size in ("small", "large")
                ),
            ]
            bench.measure(measurements)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    summary = report(measurements, stats, labels)
    data = {
        "benchmark": "realm_new",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "config": {
            "small_mb": args.small_mb,
            "large_mb": args.large_mb,
            "runs": args.runs,
            "copy_runs": args.copy_runs,
            "warmup": args.warmup,
            "seed": args.seed,
            "image_bytes": image_size,
            "realms_command": [Path(a).name if i == 0 else a for i, a in enumerate(bench.realms)],
        },
        "commands": {
            "realms --version": "realms --version",
            "realms new": "realms -q new NAME --appimg {small,large}",
            "btrfs snapshot": "btrfs subvolume snapshot STORE/appimg/{small,large}/v1 DEST",
            "cp -a": "cp -a STORE/appimg/{small,large}/v1 DEST",
            "cp -a --reflink=never": "cp -a --reflink=never STORE/appimg/{small,large}/v1 DEST",
        },
        "trees": {
            size: {"label": labels[size], **stats[size].to_json(), **phases[size]} for size in stats
        },
        **summary,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
