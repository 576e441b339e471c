"""How fast realms computes and checks dm-verity hash trees, against veritysetup; how much memory
that takes; and how long sealing the base appimg takes.

On a btrfs filesystem of its own (a sparse image file, loop-mounted under a temporary directory)
this benchmark writes a file of random data (1 GiB by default) and then times, on that file, in
the same run:

- ``format_hash_tree (realms)``: :func:`realms.image.verity.format_hash_tree` called in this
  process (as ``realms appimg seal`` calls it, with its default of 2 threads), writing the hash
  area after the data;
- ``veritysetup format``: ``veritysetup format FILE FILE --data-blocks=N --hash-offset=SIZE
  --salt=SALT --uuid=UUID`` (cryptsetup-bin), the same layout, salt and uuid: both write the same
  bytes (checked once before the timed runs: same root hash, byte-identical hash area);
- ``verify_hash_tree (realms)``: :func:`realms.image.verity.verify_hash_tree` (every data and
  hash block against the root hash), in this process;
- ``veritysetup verify``: ``veritysetup verify FILE FILE ROOT --hash-offset=SIZE``;
- ``veritysetup --version``: veritysetup's start-up, for reference: its times above include
  it, while realms' functions run in a process that has started already.

The file is in the page cache (it was just written, and is read before the timed runs), so this
measures hashing, not the disk. Each is repeated ``--runs`` times (5) after ``--warmup`` untimed
rounds (1), interleaved round by round, with ``sync`` before every timed run. The throughput is
the data's bytes per second (GB: 10^9 bytes). The CPU time (user + system, all threads) of each
run is kept too (the median is printed), and so is the CPU time the rest of the machine used
meanwhile (from /proc/stat; the largest is printed as ``others max``): realms uses both cores,
so anything else that runs slows it down more than veritysetup, which uses one.

Memory: the peak resident set size of a child process that runs only ``format_hash_tree``, for
a 256 MiB file and for the 1 GiB file, each in a fresh child (``--memory-runs`` children each, 3
by default), and of a child that only imports the module, for reference. The peak is
``/usr/bin/time -v``'s "Maximum resident set size" (the child's VmHWM is kept as well), not
``wait4``'s ``ru_maxrss`` of a child of this script: Linux records the size of the address space
a process leaves at exec, which for a child of this script is this script's own. A hash tree
kept in memory would grow with the image: its level 0 alone is 1/128 of the data, 6 MiB more for
1 GiB than for 256 MiB.

Sealing: ``mmdebstrap --variant=minbase --include=PACKAGES trixie ROOT.tar.zst MIRROR`` (the
default config's packages and the host's Debian mirror, as ``realms appimg build`` uses) makes a
realistic root filesystem once; a fresh store imports it as appimg ``base``, ``realms key
generate realmfs-user`` makes the signing key, and version 1 is pinned. Then ``realms appimg seal
base --fs ext4`` and ``--fs erofs`` are timed alternately (``--seal-runs`` each, 3 by default,
after ``--warmup`` untimed rounds), with ``realms appimg rollback base 1`` and ``realms appimg
prune base --keep 1`` after each (untimed), so that every seal starts from the same tree. The
steps realms prints (the filesystem, the hash tree) are timed from when their lines arrive; the
image's size is the sealed version's ``size`` in ``realms appimg versions base --json``.

It prints the tables, and whether the targets hold: realms' throughput at least 1.3 times
veritysetup's, for format and for verify, and a peak memory of ``format_hash_tree`` that does not
grow with the image (less than 1 MiB more for 1 GiB than for 256 MiB). The results, with every
sample, go to ``bench/results/verity.json``.

It needs root (mkfs.btrfs, mount, mmdebstrap) and the network (mmdebstrap), and cleans up after
itself, also on Ctrl-C or SIGTERM: it unmounts its filesystem, checks that no loop device is left
backed by its image, and removes its temporary directory. Run it from the repository root (about
1.5 minutes with the defaults)::

    .venv/bin/python bench/verity.py
    .venv/bin/python bench/verity.py --size-mb 512 --runs 3 --seal-runs 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import secrets
import statistics
import sys
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from common import (
    GIB,
    MIB,
    RESULTS_DIR,
    SCRATCH_TOOLS,
    STORE_DIR,
    BenchBase,
    Measurement,
    add_image_option,
    add_output_option,
    check_counts,
    detail_medians,
    format_ratio,
    format_seconds,
    human,
    load_average,
    log,
    machine_cpu_ms,
    machine_info,
    measure,
    mmdebstrap_argv,
    piped,
    prepare_run,
    print_table,
    print_targets,
    ratio,
    realms_command,
    realms_source,
    record,
    recorded_command,
    rounded,
    run,
    scratch_btrfs,
    step_times,
    target_line,
    timeline,
    timing_cells,
    timing_json,
    tool_version,
    tree_stats,
    write_results,
)
from realms.builder.config import load
from realms.image.verity import BLOCK_SIZE, VerityCheck, format_hash_tree, verify_hash_tree
from realms.system import apt

RESULTS = RESULTS_DIR / "verity.json"

TARGET_RATIO = 1.3
TARGET_MEMORY_GROWTH = 1 * MIB

APPIMG = "base"
CHANNEL = "realmfs-user"
WRITE_CHUNK = 16 * MIB

OURS_FORMAT = "format_hash_tree (realms)"
VS_FORMAT = "veritysetup format"
OURS_VERIFY = "verify_hash_tree (realms)"
VS_VERIFY = "veritysetup verify"
VS_START = "veritysetup --version"
PEERS = {OURS_FORMAT: VS_FORMAT, OURS_VERIFY: VS_VERIFY}
SEAL = "realms appimg seal --fs {fs}"
FILESYSTEMS = ("ext4", "erofs")

# A child process that runs only format_hash_tree (or, with 0 blocks, only the import).
FORMAT_CHILD = """
import sys
from pathlib import Path

from realms.image.verity import BLOCK_SIZE, format_hash_tree

path, blocks, salt = Path(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])
if blocks:
    format_hash_tree(
        path, data_offset=0, data_blocks=blocks, hash_offset=blocks * BLOCK_SIZE, salt=salt
    )
with open("/proc/self/status") as status:
    print(next(line for line in status if line.startswith("VmHWM:")), end="")
"""

_MAX_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")
_VM_HWM = re.compile(r"^VmHWM:\s+(\d+) kB$", re.MULTILINE)
_ROOT_HASH = re.compile(r"^Root hash:\s+([0-9a-f]{64})$", re.MULTILINE)
_HASH_STEP = re.compile(r"Computing the dm-verity hash tree of (\d+) blocks")
_FS_STEP = re.compile(r"Making the \w+ filesystem")

T = TypeVar("T")


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            chunk = os.urandom(min(WRITE_CHUNK, size - written))
            handle.write(chunk)
            written += len(chunk)


def child_usage(argv: Sequence[str | Path]) -> tuple[float, float, str]:
    """Run a process that must succeed; return its wall time and CPU time (user + system, from
    wait4) in milliseconds, and its output (stdout and stderr in one pipe)."""
    command = [str(arg) for arg in argv]
    start = time.perf_counter()
    with piped(command) as (process, pipe):
        output = pipe.read()
        _, status, usage = os.wait4(process.pid, 0)
    elapsed = (time.perf_counter() - start) * 1000
    process.returncode = os.waitstatus_to_exitcode(status)
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {text.strip()}")
    cpu = (usage.ru_utime + usage.ru_stime) * 1000
    return elapsed, cpu, text


def self_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000


def in_process(call: Callable[[], T]) -> tuple[float, float, T]:
    """Call ``call`` in this process; return its wall time and the CPU time (user + system, all
    threads) this process used meanwhile, in milliseconds, and what it returned."""
    cpu = self_cpu_ms()
    start = time.perf_counter()
    result = call()
    elapsed = (time.perf_counter() - start) * 1000
    return elapsed, self_cpu_ms() - cpu, result


def hash_area_digest(path: Path, offset: int) -> str:
    """A digest of everything from ``offset`` to the end of the file (the hash area)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(WRITE_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Bench(BenchBase):
    data: Path
    blocks: int
    salt: bytes
    uuid: uuidlib.UUID
    root: str = ""
    """The root hash (hex) both tools compute for the data."""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def hash_offset(self) -> int:
        return self.blocks * BLOCK_SIZE

    @property
    def store(self) -> Path:
        return self.mountpoint / STORE_DIR

    def with_cpu(
        self, method: str, run_number: int, timed_call: Callable[[], tuple[float, float, T]]
    ) -> tuple[float, T]:
        """A timed run after :meth:`settle`: ``timed_call`` returns its wall and CPU time (ms)
        and a result. Notes the wall time, the CPU time and the CPU time the rest of the machine
        used meanwhile; returns the wall time and the result."""
        self.settle()
        machine = machine_cpu_ms()
        elapsed, cpu, result = timed_call()
        other = machine_cpu_ms() - machine - cpu
        self.note(method, run_number, {"wall_ms": elapsed, "cpu_ms": cpu, "other_cpu_ms": other})
        return elapsed, result

    # Throughput

    def ours_format(self) -> str:
        root = format_hash_tree(
            self.data,
            data_offset=0,
            data_blocks=self.blocks,
            hash_offset=self.hash_offset,
            salt=self.salt,
            uuid=self.uuid.bytes,
        )
        return root.hex()

    def ours_verify(self) -> VerityCheck:
        return verify_hash_tree(
            self.data,
            data_offset=0,
            data_blocks=self.blocks,
            hash_offset=self.hash_offset,
            root=bytes.fromhex(self.root),
            salt=self.salt,
        )

    def vs_format_argv(self) -> list[str]:
        return [
            "veritysetup",
            "format",
            str(self.data),
            str(self.data),
            f"--data-blocks={self.blocks}",
            f"--hash-offset={self.hash_offset}",
            f"--salt={self.salt.hex()}",
            f"--uuid={self.uuid}",
        ]

    def vs_format(self) -> tuple[float, float, str]:
        elapsed, cpu, stdout = child_usage(self.vs_format_argv())
        found = _ROOT_HASH.search(stdout)
        if found is None:
            raise RuntimeError(f"veritysetup format printed no root hash:\n{stdout}")
        return elapsed, cpu, found[1]

    def check_identical(self) -> dict[str, Any]:
        """Both tools write the same root hash and hash area (untimed; also warms the cache)."""
        _, _, theirs = self.vs_format()
        their_area = hash_area_digest(self.data, self.hash_offset)
        ours = self.ours_format()
        our_area = hash_area_digest(self.data, self.hash_offset)
        if ours != theirs or our_area != their_area:
            raise RuntimeError(
                f"realms and veritysetup differ: root {ours} / {theirs}, hash area "
                f"{our_area} / {their_area}"
            )
        self.root = ours
        return {"root_hash": ours, "hash_area_sha256": our_area, "identical": True}

    def format_ours(self) -> Callable[[int], float]:
        def sample(run_number: int) -> float:
            elapsed, root = self.with_cpu(
                OURS_FORMAT, run_number, lambda: in_process(self.ours_format)
            )
            if root != self.root:
                raise RuntimeError(f"format_hash_tree: root hash {root}, expected {self.root}")
            return elapsed

        return sample

    def format_theirs(self) -> Callable[[int], float]:
        def sample(run_number: int) -> float:
            elapsed, root = self.with_cpu(VS_FORMAT, run_number, self.vs_format)
            if root != self.root:
                raise RuntimeError(f"veritysetup format: root hash {root}, expected {self.root}")
            return elapsed

        return sample

    def verify_ours(self) -> Callable[[int], float]:
        def sample(run_number: int) -> float:
            elapsed, result = self.with_cpu(
                OURS_VERIFY, run_number, lambda: in_process(self.ours_verify)
            )
            if not result.ok:
                raise RuntimeError(f"verify_hash_tree failed: {result.message}")
            return elapsed

        return sample

    def verify_theirs(self) -> Callable[[int], float]:
        def sample(run_number: int) -> float:
            argv: list[str | Path] = [
                "veritysetup",
                "verify",
                self.data,
                self.data,
                self.root,
                f"--hash-offset={self.hash_offset}",
            ]
            elapsed, _ = self.with_cpu(VS_VERIFY, run_number, lambda: child_usage(argv))
            return elapsed

        return sample

    def startup(self) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            self.settle()
            elapsed, _, _ = child_usage(["veritysetup", "--version"])
            return elapsed

        return sample

    # Memory

    def peak_memory(self, path: Path, blocks: int) -> tuple[int, int]:
        """Peak RSS (bytes) of a fresh child that runs only format_hash_tree (0 blocks: only
        the import): as /usr/bin/time -v reports it, and the child's own VmHWM.

        Not wait4's ru_maxrss for a child of this process: Linux records the RSS of the
        address space a process leaves at exec, which for a child forked (or vforked) from
        this process is this process's own. /usr/bin/time is small, so what it forks is not
        inflated."""
        self.settle()
        argv = ["/usr/bin/time", "-v", sys.executable, "-c", FORMAT_CHILD]
        _, _, text = child_usage([*argv, path, str(blocks), self.salt.hex()])
        maximum = _MAX_RSS.search(text)
        hwm = _VM_HWM.search(text)
        if maximum is None or hwm is None:
            raise RuntimeError(f"no peak RSS in the output of the memory child:\n{text}")
        return int(maximum[1]) * 1024, int(hwm[1]) * 1024

    # Sealing

    def realms_run(self, *args: str) -> str:
        return run([*self.realms, *args], self.env)

    def versions(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(
            self.realms_run("appimg", "versions", APPIMG, "--json")
        )
        return found

    def seal(self, fs: str) -> Callable[[int], float]:
        method = SEAL.format(fs=fs)

        def sample(run_number: int) -> float:
            self.settle()
            elapsed, lines = timeline(
                [*self.realms, "appimg", "seal", APPIMG, "--fs", fs, "--channel", CHANNEL],
                self.env,
            )
            current = next(v for v in self.versions() if v["current"])
            if current["kind"] != "sealed" or current["parent"] != 1:
                raise RuntimeError(f"expected a sealed version from version 1: {current}")
            steps = step_times(lines)
            nblocks = 0
            hash_ms = filesystem_ms = 0.0
            for title, value in steps.items():
                if found := _HASH_STEP.fullmatch(title):
                    nblocks, hash_ms = int(found[1]), value
                elif _FS_STEP.fullmatch(title):
                    filesystem_ms = value
            self.note(
                method,
                run_number,
                {
                    "total_ms": elapsed,
                    "filesystem_ms": filesystem_ms,
                    "hash_tree_ms": hash_ms,
                    "rest_ms": elapsed - filesystem_ms - hash_ms,
                    "nblocks": nblocks,
                    "image_bytes": current["size"],
                    "version": current["version"],
                    "steps_ms": steps,
                },
            )
            self.realms_run("-q", "appimg", "rollback", APPIMG, "1")
            self.realms_run("-q", "appimg", "prune", APPIMG, "--keep", "1")
            return elapsed

        return sample


# Report


def mib(size: float) -> str:
    return f"{size / MIB:.1f}"


def gbps(data_bytes: int, ms: float) -> float:
    return data_bytes / (ms / 1000) / 1e9


def report(
    measurements: list[Measurement],
    seals: list[Measurement],
    *,
    memory: dict[str, list[int]],
    memory_hwm: dict[str, list[int]],
    memory_labels: dict[str, str],
    bench: Bench,
    tree: dict[str, Any],
) -> dict[str, Any]:
    data_bytes = bench.blocks * BLOCK_SIZE
    by_method = {m.method: m for m in measurements}
    rows = []
    results = []
    versus: dict[str, float | None] = {}
    for m in measurements:
        throughput = gbps(data_bytes, m.median) if m.method != VS_START else None
        peer = PEERS.get(m.method)
        faster = ratio(by_method[peer].median, m.median) if peer else None
        if peer:
            versus[m.method] = faster
        cpu = [d["cpu_ms"] for d in bench.details.get(m.method, [])]
        other = [d["other_cpu_ms"] for d in bench.details.get(m.method, [])]
        rows.append(
            [
                m.method,
                *timing_cells(m),
                f"{statistics.median(cpu):.0f}" if cpu else "-",
                f"{max(other):.0f}" if other else "-",
                "-" if throughput is None else f"{throughput:.2f}",
                format_ratio(faster),
            ]
        )
        results.append(
            {
                **timing_json(m, 2),
                "cpu_ms": [round(c, 1) for c in cpu],
                "other_cpu_ms": [round(c, 1) for c in other],
                "gb_per_s": rounded(throughput, 3),
                "throughput_vs_veritysetup": rounded(faster, 3),
            }
        )
    print()
    print(f"data: {human(data_bytes)} of random data ({bench.blocks} blocks), in the page cache")
    print()
    print_table(
        [
            "method",
            "median ms",
            "min ms",
            "max ms",
            "CPU ms",
            "others max",
            "GB/s",
            "ours/veritysetup",
        ],
        rows,
        left=1,
    )

    peaks = {key: statistics.median(values) for key, values in memory.items()}
    memory_rows = [
        [
            memory_labels[key],
            mib(peaks[key]),
            mib(min(memory[key])),
            mib(max(memory[key])),
        ]
        for key in memory
    ]
    growth = peaks["large"] - peaks["small"]
    memory_rows.append(
        [
            f"difference {memory_labels['large']} - {memory_labels['small']}",
            f"{growth / MIB:+.2f}",
            "",
            "",
        ]
    )
    print()
    print_table(
        ["peak RSS of a child running format_hash_tree", "median MiB", "min MiB", "max MiB"],
        memory_rows,
        left=1,
    )

    seal_rows = []
    seal_results = []
    for m in seals:
        runs = bench.details[m.method]
        medians = detail_medians(
            runs, ("filesystem_ms", "hash_tree_ms", "rest_ms", "image_bytes", "nblocks")
        )
        fs_ms = medians["filesystem_ms"]
        hash_ms = medians["hash_tree_ms"]
        rest_ms = medians["rest_ms"]
        image = int(medians["image_bytes"])
        nblocks = int(medians["nblocks"])
        hash_rate = gbps(nblocks * BLOCK_SIZE, hash_ms) if hash_ms > 0 else None
        seal_rows.append(
            [
                m.method,
                *timing_cells(m, seconds=True),
                format_seconds(fs_ms),
                format_seconds(hash_ms),
                format_seconds(rest_ms),
                f"{image / MIB:.0f}",
                format_ratio(ratio(image, tree["bytes"])),
            ]
        )
        seal_results.append(
            {
                **timing_json(m, 1),
                "filesystem_median_ms": round(fs_ms, 1),
                "hash_tree_median_ms": round(hash_ms, 1),
                "rest_median_ms": round(rest_ms, 1),
                "hash_tree_gb_per_s": rounded(hash_rate, 3),
                "image_bytes": image,
                "nblocks": nblocks,
                "details": runs,
            }
        )
    print()
    print(
        f"appimg {APPIMG}: tree {tree['bytes'] / MIB:.0f} MiB ({tree['bytes']} bytes, the tree "
        f"version's size), {tree['files']} files, {tree['directories']} directories, "
        f"{tree['symlinks']} symlinks"
    )
    print()
    print_table(
        [
            "seal",
            "median s",
            "min s",
            "max s",
            "filesystem s",
            "hash tree s",
            "rest s",
            "image MiB",
            "image/tree",
        ],
        seal_rows,
        left=1,
    )

    format_ratio_value = versus.get(OURS_FORMAT)
    verify_ratio_value = versus.get(OURS_VERIFY)
    format_met = format_ratio_value is not None and format_ratio_value >= TARGET_RATIO
    verify_met = verify_ratio_value is not None and verify_ratio_value >= TARGET_RATIO
    memory_met = growth < TARGET_MEMORY_GROWTH
    print_targets(
        [
            target_line(
                f"format throughput ours/veritysetup >= {TARGET_RATIO}",
                format_ratio(format_ratio_value),
                format_met,
            ),
            target_line(
                f"verify throughput ours/veritysetup >= {TARGET_RATIO}",
                format_ratio(verify_ratio_value),
                verify_met,
            ),
            target_line(
                f"format_hash_tree peak memory {memory_labels['large']} - "
                f"{memory_labels['small']} < {TARGET_MEMORY_GROWTH / MIB:.0f} MiB",
                f"{growth / MIB:+.2f} MiB",
                memory_met,
            ),
        ]
    )
    return {
        "results": results,
        "memory": {
            key: {
                "label": memory_labels[key],
                "peak_rss_bytes": values,
                "median_bytes": peaks[key],
                "vm_hwm_bytes": memory_hwm[key],
            }
            for key, values in memory.items()
        },
        "memory_growth_bytes": growth,
        "seal": seal_results,
        "targets": {
            "throughput_ratio_at_least": TARGET_RATIO,
            "memory_growth_below_bytes": TARGET_MEMORY_GROWTH,
            "format_met": format_met,
            "verify_met": verify_met,
            "memory_met": memory_met,
            "all_met": format_met and verify_met and memory_met,
        },
    }


# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time realms' dm-verity hash trees against veritysetup, their memory, and "
        "sealing the base appimg.",
    )
    parser.add_argument("--size-mb", type=int, default=1024, help="the data file, MiB (1024)")
    parser.add_argument(
        "--small-mb", type=int, default=256, help="the smaller file for the memory test (256)"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each tool (5)")
    parser.add_argument(
        "--memory-runs", type=int, default=3, help="child processes per size for memory (3)"
    )
    parser.add_argument("--seal-runs", type=int, default=3, help="timed seals per fs (3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    add_image_option(parser, 8)
    add_output_option(parser, RESULTS)
    args = parser.parse_args(argv)
    check_counts(parser, (args.size_mb, args.small_mb, args.runs, args.memory_runs, args.seal_runs))
    if args.warmup < 0 or args.small_mb >= args.size_mb:
        parser.error("--small-mb must be below --size-mb, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tools = ("veritysetup", "mmdebstrap", "zstd", "mkfs.ext4", "mkfs.erofs", "/usr/bin/time")
    if not prepare_run((*SCRATCH_TOOLS, "sync", *tools)):
        return 2
    realms_code = realms_source()
    config = load(None)
    mirror = apt.host_debian_mirror()
    image_size = args.image_gb * GIB
    started = time.perf_counter()
    phases: dict[str, float] = {}
    try:
        with scratch_btrfs(image_size) as mountpoint:
            machine = machine_info(mountpoint.parent)
            machine["veritysetup"] = tool_version(["veritysetup", "--version"])
            machine["mmdebstrap"] = tool_version(["mmdebstrap", "--version"])
            for package in ("e2fsprogs", "erofs-utils", "cryptsetup-bin"):
                machine[package] = tool_version(["dpkg-query", "-W", "-f=${Version}\n", package])
            machine["load_average_at_start"] = load_average()
            data = mountpoint / "data.img"
            small = mountpoint / "small.img"
            start = time.perf_counter()
            write_random(data, args.size_mb * MIB)
            write_random(small, args.small_mb * MIB)
            run(["sync"])
            phases["write_random_seconds"] = round(time.perf_counter() - start, 1)
            bench = Bench(
                mountpoint,
                realms_command(),
                data,
                args.size_mb * MIB // BLOCK_SIZE,
                secrets.token_bytes(32),
                uuidlib.uuid4(),
                env={**os.environ, "REALMS_STORE": str(mountpoint / STORE_DIR)},
            )
            identical = bench.check_identical()
            log(f"realms and veritysetup agree: root hash {bench.root}, identical hash areas")

            measurements = [
                Measurement(OURS_FORMAT, "-", args.runs, bench.format_ours()),
                Measurement(VS_FORMAT, "-", args.runs, bench.format_theirs()),
                Measurement(OURS_VERIFY, "-", args.runs, bench.verify_ours()),
                Measurement(VS_VERIFY, "-", args.runs, bench.verify_theirs()),
                Measurement(VS_START, "-", args.runs, bench.startup()),
            ]
            measure(measurements, args.warmup, mountpoint)

            memory_labels = {
                "import": "import only (no format)",
                "small": human(args.small_mb * MIB),
                "large": human(args.size_mb * MIB),
            }
            targets = {
                "import": (small, 0),
                "small": (small, args.small_mb * MIB // BLOCK_SIZE),
                "large": (data, bench.blocks),
            }
            memory: dict[str, list[int]] = {key: [] for key in targets}
            memory_hwm: dict[str, list[int]] = {key: [] for key in targets}
            for number in range(args.memory_runs):
                for key, (path, blocks) in targets.items():
                    peak, hwm = bench.peak_memory(path, blocks)
                    memory[key].append(peak)
                    memory_hwm[key].append(hwm)
                    log(
                        f"peak RSS, {memory_labels[key]}, {number + 1}: {peak / MIB:.1f} MiB "
                        f"(VmHWM {hwm / MIB:.1f} MiB)"
                    )
            data.unlink()
            small.unlink()

            tarball = mountpoint / "root.tar.zst"
            argv = mmdebstrap_argv(config, tarball, mirror)
            log("making the root filesystem: " + " ".join(argv))
            start = time.perf_counter()
            run(argv)
            phases["mmdebstrap_seconds"] = round(time.perf_counter() - start, 1)
            bench.realms_run("-q", "init")
            start = time.perf_counter()
            bench.realms_run("-q", "appimg", "import", APPIMG, str(tarball))
            phases["import_seconds"] = round(time.perf_counter() - start, 1)
            tarball_bytes = tarball.stat().st_size
            tarball.unlink()
            bench.realms_run("-q", "key", "generate", CHANNEL)
            bench.realms_run("-q", "appimg", "pin", APPIMG, "1")
            stats = tree_stats(bench.store / "appimg" / APPIMG / "v1").to_json()
            tree = {
                "bytes": bench.versions()[0]["size"],  # what realms says: the table's number
                "file_bytes": stats.pop("bytes"),
                **stats,
                "tarball_bytes": tarball_bytes,
            }
            seals = [
                Measurement(SEAL.format(fs=fs), "-", args.seal_runs, bench.seal(fs))
                for fs in FILESYSTEMS
            ]
            measure(seals, args.warmup, mountpoint)
            machine["load_average_at_end"] = load_average()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    summary = report(
        measurements,
        seals,
        memory=memory,
        memory_hwm=memory_hwm,
        memory_labels=memory_labels,
        bench=bench,
        tree=tree,
    )
    data_hash_offset = bench.hash_offset
    body = {
        "config": {
            "size_mb": args.size_mb,
            "small_mb": args.small_mb,
            "runs": args.runs,
            "memory_runs": args.memory_runs,
            "seal_runs": args.seal_runs,
            "warmup": args.warmup,
            "image_bytes": image_size,
            "salt": bench.salt.hex(),
            "uuid": str(bench.uuid),
            "mirror": mirror,
            "packages": config.packages,
            "realms_command": recorded_command(bench.realms),
            "realms_source": realms_code,
        },
        "commands": {
            OURS_FORMAT: (
                f"format_hash_tree(FILE, data_offset=0, data_blocks={bench.blocks}, "
                f"hash_offset={data_hash_offset}, salt=SALT, uuid=UUID) in this process"
            ),
            VS_FORMAT: " ".join(bench.vs_format_argv()).replace(str(bench.data), "FILE"),
            OURS_VERIFY: (
                f"verify_hash_tree(FILE, data_offset=0, data_blocks={bench.blocks}, "
                f"hash_offset={data_hash_offset}, root=ROOT, salt=SALT) in this process"
            ),
            VS_VERIFY: f"veritysetup verify FILE FILE ROOT --hash-offset={data_hash_offset}",
            VS_START: "veritysetup --version",
            "memory": (
                "/usr/bin/time -v python -c FORMAT_CHILD FILE BLOCKS SALT: its 'Maximum "
                "resident set size'; the child also prints its VmHWM"
            ),
            "root filesystem": (
                " ".join(mmdebstrap_argv(config, "root.tar.zst", mirror))
                + f"; realms appimg import {APPIMG} root.tar.zst; realms key generate {CHANNEL}; "
                f"realms appimg pin {APPIMG} 1"
            ),
            "seal": (
                f"realms appimg seal {APPIMG} --fs FS --channel {CHANNEL}; untimed after it: "
                f"realms appimg rollback {APPIMG} 1; realms appimg prune {APPIMG} --keep 1"
            ),
        },
        "identical_to_veritysetup": identical,
        "tree": tree,
        "phases": phases,
        **summary,
    }
    write_results(args.output, record("verity", machine, body, started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
