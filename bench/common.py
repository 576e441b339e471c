"""What the benchmarks share: the checks at start-up and the common command-line options, a
scratch btrfs filesystem, synthetic root-filesystem trees, timing of whole processes (and of the
steps a realms command prints), machine information, the pieces of the reports (table cells and
JSON entries of a measurement, the table printer, the targets) and writing the JSON results.

A benchmark script imports this module as ``common`` (Python puts the script's directory,
``bench/``, first on the module search path). Everything here needs root where it mounts or
formats, and cleans up after itself: :func:`scratch_btrfs` unmounts its filesystem, checks that no
loop device is left backed by its image and removes its temporary directory, also when the block
it guards is left by Ctrl-C or (after :func:`stop_on_signals`) SIGTERM or SIGHUP.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
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
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from realms.builder.config import BuildConfig

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

STORE_DIR = "store"  # a benchmark's store on the scratch filesystem: MOUNTPOINT/store
# What every benchmark needs for its scratch filesystem (see scratch_btrfs).
SCRATCH_TOOLS = ("mkfs.btrfs", "btrfs", "mount", "umount", "losetup", "findmnt")
MIN_SCRATCH_GIB = 8  # the least size of a scratch filesystem sized to its trees


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


@contextmanager
def piped(
    argv: Sequence[str], env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], IO[bytes]]]:
    """Start a process with stdin from /dev/null and its stdout and stderr in one pipe; yield the
    process and the pipe. If the block is left by an exception (Ctrl-C, or SIGTERM after
    :func:`stop_on_signals`), the process is killed and waited for, as subprocess.run would (a
    container of realms gets SIGTERM from the kernel), so that the scratch filesystem can be
    unmounted. The pipe is always closed."""
    process = subprocess.Popen(
        list(argv),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        yield process, process.stdout
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        process.stdout.close()


def timeline(
    argv: Sequence[str | Path], env: dict[str, str] | None = None
) -> tuple[float, list[tuple[float, str]]]:
    """Run a process with its stdout and stderr in one pipe; return its wall time and each line
    it printed with when the line arrived, both in milliseconds from its start. It must exit 0."""
    command = [str(arg) for arg in argv]
    start = time.perf_counter()
    lines: list[tuple[float, str]] = []
    pending = b""
    with piped(command, env) as (process, pipe), selectors.DefaultSelector() as selector:
        fd = pipe.fileno()
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


# Start-up and the command line


def prepare_run(tools: Sequence[str]) -> bool:
    """Whether the benchmark can run: as root, with every tool in ``tools`` installed; where it
    cannot, say why on stderr (the first missing tool only). Where it can, make SIGTERM and SIGHUP
    unwind like Ctrl-C (:func:`stop_on_signals`) and byte-compile realms (:func:`compile_realms`).
    """
    if os.geteuid() != 0:
        log("this benchmark needs root: it makes and mounts a btrfs filesystem")
        return False
    missing = missing_tools(tools)
    if missing:
        log(f"{missing[0]} is not installed")
        return False
    stop_on_signals()
    compile_realms()
    return True


def add_image_option(
    parser: argparse.ArgumentParser, default_gb: int | None = None, *, holds: str = "the trees"
) -> None:
    """Add ``--image-gb``, the size of the scratch filesystem's sparse image: by default
    ``default_gb`` GiB or, where that is None, 0: enough for what it ``holds`` (see
    :func:`scratch_size`)."""
    if default_gb is None:
        parser.add_argument(
            "--image-gb",
            type=int,
            default=0,
            help=f"size of the sparse btrfs image, GiB (default: enough for {holds}, "
            f"at least {MIN_SCRATCH_GIB})",
        )
    else:
        parser.add_argument(
            "--image-gb",
            type=int,
            default=default_gb,
            help=f"size of the sparse btrfs image, GiB ({default_gb})",
        )


def add_seed_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--seed``, the seed of :func:`generate_tree`'s layout (1)."""
    parser.add_argument("--seed", type=int, default=1, help="seed of the tree layout (1)")


def add_output_option(parser: argparse.ArgumentParser, results: Path) -> None:
    """Add ``--output``, where the JSON results go (by default ``results``)."""
    parser.add_argument(
        "--output", type=Path, default=results, help=f"JSON results (default: {results})"
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


def check_counts(
    parser: argparse.ArgumentParser, counts: Sequence[int], warmup: int | None = None
) -> None:
    """Stop with a usage error unless every one of ``counts`` (sizes, runs) is at least 1 and
    ``warmup``, where given, at least 0."""
    if min(counts) < 1 or (warmup is not None and warmup < 0):
        parser.error("sizes and runs must be positive")


def scratch_size(image_gb: int, enough_mb: int) -> int:
    """The size of the scratch filesystem in bytes: ``image_gb`` GiB as asked (``--image-gb``)
    or, where that is 0, ``enough_mb`` MiB but at least :data:`MIN_SCRATCH_GIB` GiB."""
    return (image_gb * GIB) or max(MIN_SCRATCH_GIB * GIB, enough_mb * MIB)


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


def recorded_command(realms: Sequence[str]) -> list[str]:
    """The realms command line as the results record it: its first word without a directory."""
    return [Path(arg).name for arg in realms[:1]] + list(realms[1:])


def mmdebstrap_argv(config: BuildConfig, target: str | Path, mirror: str) -> list[str]:
    """A bare mmdebstrap of a build config's release, variant and packages into ``target``."""
    return [
        "mmdebstrap",
        f"--variant={config.variant}",
        f"--include={','.join(config.packages)}",
        config.release,
        str(target),
        mirror,
    ]


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


@dataclass
class BenchBase:
    """What the ``Bench`` of every benchmark has: the scratch filesystem's mount point, the realms
    command line, a counter for fresh names, and what timed runs measured besides their samples.
    """

    mountpoint: Path
    realms: list[str]
    counter: int = field(default=0, kw_only=True)
    details: dict[Any, list[dict[str, Any]]] = field(default_factory=dict, kw_only=True)
    """Per key (a method, or whatever a benchmark chooses): one entry a timed run."""

    def fresh(self, prefix: str) -> str:
        """A name not used before in this run: ``prefix`` and a number."""
        self.counter += 1
        return f"{prefix}{self.counter}"

    def settle(self) -> None:
        settle(self.mountpoint)

    def realms_cmd(self, *args: str, flag: str = "-q") -> list[str]:
        """The realms command line with ``flag`` (quiet by default) and ``args``."""
        return [*self.realms, flag, *args]

    def note(self, key: Any, run_number: int, detail: dict[str, Any]) -> None:
        """Keep what a timed run measured besides its sample (warm-up runs are not kept)."""
        if run_number >= 0:
            self.details.setdefault(key, []).append(detail)


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


def rounded(value: float | None, digits: int) -> float | None:
    """``value`` rounded to ``digits`` decimals; None stays None."""
    return None if value is None else round(value, digits)


def format_seconds(ms: float) -> str:
    """Milliseconds as seconds with two decimals, for the tables' columns in seconds."""
    return f"{ms / 1000:.2f}"


def timing_cells(m: Measurement, *, seconds: bool = False) -> list[str]:
    """A measurement's median, min and max as table cells: milliseconds with one decimal or,
    with ``seconds``, seconds with two."""
    values = (m.median, min(m.samples), max(m.samples))
    return [format_seconds(v) if seconds else f"{v:.1f}" for v in values]


def timing_json(m: Measurement, digits: int, *, size: bool = False) -> dict[str, Any]:
    """A measurement's entry in the JSON results: its method, its tree (with ``size``), its
    runs, every sample and the median, min and max, in milliseconds rounded to ``digits``
    decimals. A benchmark adds its ratios and details after these keys."""
    entry: dict[str, Any] = {"method": m.method}
    if size:
        entry["size"] = m.size
    entry |= {
        "runs": m.runs,
        "samples_ms": [round(s, digits) for s in m.samples],
        "median_ms": round(m.median, digits),
        "min_ms": round(min(m.samples), digits),
        "max_ms": round(max(m.samples), digits),
    }
    return entry


def detail_medians(
    details: list[dict[str, Any]], keys: Sequence[str] | None = None
) -> dict[str, float]:
    """The median over runs of each of ``keys`` (by default those of the first run) in the
    details the runs noted; empty where no run noted any."""
    if not details:
        return {}
    return {key: statistics.median(d[key] for d in details) for key in (keys or list(details[0]))}


def large_over_small(measurements: list[Measurement]) -> dict[str, float | None]:
    """For each method measured on both trees: its median on the large tree over its median on
    the small one, in the order of the large trees' measurements."""
    by_key = {(m.method, m.size): m for m in measurements}
    return {
        m.method: ratio(m.median, by_key[(m.method, "small")].median)
        for m in measurements
        if m.size == "large" and (m.method, "small") in by_key
    }


def print_two_tree_table(
    measurements: list[Measurement],
    trees: GeneratedTrees,
    *,
    baseline: str,
    versus_title: str,
    versus_key: str,
    shown_as: Callable[[str], str] = str,
) -> tuple[list[dict[str, Any]], dict[str, float | None]]:
    """The report of a benchmark on two generated trees: print what is in the trees and a table
    of each measurement's median, min and max (ms), its ratio to the median of ``baseline`` on
    the same tree (column ``versus_title``) and, on the large tree, its ratio to its own median
    on the small one; a method's name is shown as ``shown_as(method)``. Returns the JSON entries
    (:func:`timing_json`, to 3 decimals, with the ratio to the baseline as ``versus_key``) and
    the large / small ratios of :func:`large_over_small`."""
    by_key = {(m.method, m.size): m for m in measurements}
    baselines = {size: by_key[(baseline, size)].median for size in SIZES}
    scaling = large_over_small(measurements)
    labels = trees.labels
    rows = []
    results = []
    for m in measurements:
        versus = ratio(m.median, baselines[m.size]) if m.size in baselines else None
        growth = scaling.get(m.method) if m.size == "large" else None
        rows.append(
            [
                shown_as(m.method),
                labels.get(m.size, "-"),
                *timing_cells(m),
                format_ratio(versus),
                format_ratio(growth),
            ]
        )
        results.append({**timing_json(m, 3, size=True), versus_key: rounded(versus, 3)})
    print()
    for size in SIZES:
        print(f"{size}: {trees.stats[size].describe(labels[size])}")
    print()
    print_table(
        ["method", "tree", "median ms", "min ms", "max ms", versus_title, "large/small"], rows
    )
    return results, scaling


def target_line(claim: str, value: str, met: bool) -> str:
    """A line of the targets: ``  CLAIM: VALUE: met`` (or ``NOT met``)."""
    return f"  {claim}: {value}: {'met' if met else 'NOT met'}"


def print_targets(lines: Sequence[str]) -> None:
    """Print the targets, each a :func:`target_line`, after a blank line and ``targets:``."""
    print()
    print("targets:")
    for line in lines:
        print(line)


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


# Results


def record(
    benchmark: str, machine: dict[str, Any], body: dict[str, Any], started: float
) -> dict[str, Any]:
    """The JSON results of a run: the benchmark's name, the date (UTC, to the second), the
    machine, ``body``, and the seconds since ``started`` (a :func:`time.perf_counter` value)."""
    return {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        **body,
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def write_results(output: Path, data: dict[str, Any], *, ensure_ascii: bool = False) -> None:
    """Write the JSON results to ``output`` (indented by 2, with a final newline; its directory
    made if need be) and say where they went."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=2, ensure_ascii=ensure_ascii) + "\n")
    print(f"\nresults written to {output}")
