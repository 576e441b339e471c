"""What the benchmarks share: a scratch btrfs filesystem, synthetic root-filesystem trees, timing
of whole processes (and of the steps a realms command prints), machine information and the table
printer.

A benchmark script imports this module as ``common`` (Python puts the script's directory,
``bench/``, first on the module search path). Everything here needs root where it mounts or
formats, and cleans up after itself: :func:`scratch_btrfs` unmounts its filesystem, checks that no
loop device is left backed by its image and removes its temporary directory, also when the block
it guards is left by Ctrl-C or (after :func:`stop_on_signals`) SIGTERM or SIGHUP.
"""

from __future__ import annotations

import importlib.util
import math
import os
import platform
import random
import re
import resource
import selectors
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
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"

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


def timeline(
    argv: Sequence[str | Path], env: dict[str, str] | None = None
) -> tuple[float, list[tuple[float, str]]]:
    """Run a process with its stdout and stderr in one pipe; return its wall time and each line
    it printed with when the line arrived, both in milliseconds from its start. It must exit 0."""
    command = [str(arg) for arg in argv]
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    fd = process.stdout.fileno()
    lines: list[tuple[float, str]] = []
    pending = b""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                selector.select()
                chunk = os.read(fd, 1 << 16)
                arrived = (time.perf_counter() - start) * 1000
                if not chunk:
                    break
                *complete, pending = (pending + chunk).split(b"\n")
                lines.extend((arrived, line.decode(errors="replace")) for line in complete)
        returncode = process.wait()
        elapsed = (time.perf_counter() - start) * 1000
    except BaseException:
        # Interrupted: stop the process as subprocess.run would (a container of realms gets
        # SIGTERM from the kernel), so that the scratch filesystem can be unmounted.
        process.kill()
        process.wait()
        raise
    finally:
        process.stdout.close()
    if pending:
        lines.append((elapsed, pending.decode(errors="replace")))
    if returncode != 0:
        output = "\n".join(line for _, line in lines)
        raise RuntimeError(f"{' '.join(command)} failed ({returncode}):\n{output}")
    return elapsed, lines


STEP_PREFIX = "[+]: "
_STEP_DONE = re.compile(r"(.*): done \([0-9.]+s\)")


def step_times(lines: list[tuple[float, str]]) -> dict[str, float]:
    """How long each step of a realms command took, in milliseconds, from the lines of
    :func:`timeline`. Where stderr is not a terminal, a step prints ``[+]: TITLE`` when it starts
    and ``[+]: TITLE: done (N.Ns)`` when it ends; the time between the two lines' arrivals is
    finer than the tenths of a second that realms prints."""
    started: dict[str, float] = {}
    durations: dict[str, float] = {}
    for arrived, line in lines:
        if not line.startswith(STEP_PREFIX):
            continue
        text = line.removeprefix(STEP_PREFIX)
        done = _STEP_DONE.fullmatch(text)
        if done and done[1] in started:
            durations[done[1]] = arrived - started.pop(done[1])
        else:
            started[text] = arrived
    return durations


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


def missing_tools(tools: Sequence[str]) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """Make SIGTERM and SIGHUP unwind like Ctrl-C, so that the scratch filesystem is cleaned."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)


# The realms command line


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


def realms_source() -> dict[str, Any]:
    """The git commit of the realms package that runs, and whether its files differ from it
    (None where the package is not in a git checkout)."""
    spec = importlib.util.find_spec("realms")
    if spec is None or not spec.submodule_search_locations:
        return {"commit": None, "modified": None}
    location = next(iter(spec.submodule_search_locations))
    try:
        commit = run(["git", "-C", location, "rev-parse", "HEAD"]).strip()
        modified = bool(run(["git", "-C", location, "status", "--porcelain", "--", "."]).strip())
    except (OSError, RuntimeError):
        return {"commit": None, "modified": None}
    return {"commit": commit, "modified": modified}


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


def loops_backed_under(directory: Path) -> list[str]:
    """Loop devices whose backing file is under ``directory`` (images in a store on it)."""
    output = run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"])
    prefix = os.path.realpath(directory) + "/"
    found = []
    for line in output.splitlines():
        name, _, back = line.strip().partition(" ")
        if back.strip().startswith(prefix):
            found.append(name)
    return found


def mounts_below(directory: Path) -> list[Path]:
    """Mount points under ``directory`` (not itself), deepest first."""
    prefix = os.path.realpath(directory) + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            target = line.split()[4].replace("\\040", " ")
            if target.startswith(prefix):
                found.append(Path(target))
    return sorted(set(found), key=lambda path: -len(path.parts))


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
    unmounted afterwards (first whatever is still mounted inside it, such as an activated image,
    and the loop devices backed by files on it), its loop device checked, and its temporary
    directory removed."""
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
            # What a benchmark left mounted inside (activations of sealed appimgs, which
            # hold loop devices backed by files on this filesystem) goes first.
            for inner in mounts_below(mountpoint):
                log(f"unmounting {inner}, left mounted inside the scratch filesystem")
                unmount(inner)
            for device in loops_backed_under(mountpoint):
                log(
                    f"loop device {device} is backed by a file on the scratch filesystem: detaching"
                )
                subprocess.run(["losetup", "--detach", device], check=False)
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
    sample: Callable[[int], float]  # run number (-1: warm-up) -> milliseconds (timed part only)
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def measure(measurements: list[Measurement], warmup: int, mountpoint: Path) -> None:
    """Warm-up rounds (untimed), then rounds of one run of each measurement still short of its
    runs, so that slow drift spreads over all methods."""
    for round_number in range(warmup):
        for m in measurements:
            log(f"warm-up {round_number + 1}/{warmup}: {m.method} ({m.size})")
            m.sample(-1)
    for round_number in range(max(m.runs for m in measurements)):
        for m in measurements:
            if round_number >= m.runs:
                continue
            elapsed = m.sample(round_number)
            m.samples.append(elapsed)
            log(f"{m.method} ({m.size}) run {round_number + 1}/{m.runs}: {elapsed:.1f} ms")
    settle(mountpoint)


# Report


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(headers: list[str], rows: list[list[str]], left: int = 2) -> None:
    """A table with the first ``left`` columns left-aligned and the others right-aligned."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    aligned = [
        "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [headers, *rows]
    ]
    print(aligned[0])
    print("-" * len(aligned[0]))
    for line in aligned[1:]:
        print(line)
