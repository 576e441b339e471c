"""The runs of the ``verity`` benchmark (see :mod:`bench.verity`): its names and targets, and the
:class:`Bench` whose methods are the timed samples: hash trees in this process and veritysetup's,
the peak memory of a child, sealing, and the whole ``realms appimg verify`` command against
``veritysetup verify`` on one sealed image."""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import sys
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.base import MIB, RESULTS_DIR, human, log, run
from bench.harness import (
    BenchBase,
    piped,
    step_times,
    timeline,
)
from bench.system import (
    STORE_DIR,
    machine_cpu_ms,
)
from bench.trees import generate_source, tree_stats
from realms import api
from realms import log as log_module
from realms.image.header import HEADER_SIZE
from realms.image.realmfs import read_header
from realms.image.verity import BLOCK_SIZE, VerityCheck, format_hash_tree, verify_hash_tree
from realms.system import loop

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

# The whole commands on one sealed image of about 1 GiB (appimg VERIFY_APPIMG).
VERIFY_APPIMG = "big"
CMD_OURS = "realms appimg verify"
CMD_IN_PROCESS = "api.verify_appimg (in process)"
CMD_VS_FILE = "veritysetup verify (data file)"
CMD_VS_LOOP = "veritysetup verify (loop device)"
CMD_START = "realms --version"
CMD_PEER = CMD_VS_FILE
"""The peer of the target: veritysetup at its fastest on the image's bytes."""
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


def child_usage(
    argv: Sequence[str | Path], env: dict[str, str] | None = None
) -> tuple[float, float, str]:
    """Run a process that must succeed; return its wall time and CPU time (user + system, from
    wait4) in milliseconds, and its output (stdout and stderr in one pipe)."""
    command = [str(arg) for arg in argv]
    start = time.perf_counter()
    with piped(command, env) as (process, pipe):
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


def in_process_call(call: Callable[[], T]) -> tuple[float, float, T]:
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
    sealed: Sealed | None = None
    """The sealed image of the command comparison, once made."""

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
                OURS_FORMAT, run_number, lambda: in_process_call(self.ours_format)
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
                OURS_VERIFY, run_number, lambda: in_process_call(self.ours_verify)
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


@dataclass(frozen=True)
class Sealed:
    """A sealed image in the store, and a reflinked copy of its data for veritysetup, which
    cannot start its data device at an offset (the image's data follows its 4096-byte header)."""

    image: Path
    blocks: int
    root: str
    data_copy: Path

    @property
    def hash_offset(self) -> int:
        return HEADER_SIZE + self.blocks * BLOCK_SIZE


def seal_for_verify(bench: Bench, tree_mb: int, seed: int) -> dict[str, Any]:
    """Untimed: generate a tree of about ``tree_mb`` MiB, import it as appimg VERIFY_APPIMG,
    seal it (ext4) and reflink its data into a file of its own; set ``bench.sealed`` and return
    what was made, for the results."""
    source = bench.mountpoint / "source-verify"
    generate_source(source, tree_mb * MIB, seed)
    stats = tree_stats(source)
    bench.realms_run("-q", "appimg", "import", VERIFY_APPIMG, str(source))
    run(["btrfs", "subvolume", "delete", source])
    start = time.perf_counter()
    bench.realms_run("-q", "appimg", "seal", VERIFY_APPIMG, "--fs", "ext4", "--channel", CHANNEL)
    seal_seconds = time.perf_counter() - start
    store = api.open_store(bench.store)
    version = api.appimg_versions(store, VERIFY_APPIMG).current_version
    image = store.version_path(VERIFY_APPIMG, version)
    header, _ = read_header(image)
    meta = header.metainfo
    if not meta.sealed or meta.verity_root is None or meta.nblocks is None:
        raise RuntimeError(f"{image} is not a sealed image")
    copy = bench.mountpoint / "verify-data.img"
    size = meta.nblocks * BLOCK_SIZE
    source_fd = os.open(image, os.O_RDONLY)
    target_fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        done = 0
        while done < size:
            count = os.copy_file_range(source_fd, target_fd, size - done, HEADER_SIZE + done, done)
            if count == 0:
                raise RuntimeError(f"copying the data of {image} stopped at {done} bytes")
            done += count
    finally:
        os.close(source_fd)
        os.close(target_fd)
    bench.sealed = Sealed(image, meta.nblocks, meta.verity_root.hex(), copy)
    log(f"sealed {VERIFY_APPIMG}: {human(image.stat().st_size)}, {meta.nblocks} blocks")
    return {
        "tree": stats.to_json(),
        "tree_mb": tree_mb,
        "seal_seconds": round(seal_seconds, 1),
        "image_bytes": image.stat().st_size,
        "data_blocks": meta.nblocks,
        "data_bytes": size,
        "root_hash": meta.verity_root.hex(),
        "version": version.version,
    }


def command_samples(bench: Bench) -> dict[str, Callable[[int], float]]:
    """The samples of the command comparison, by method: realms' whole command, the same call in
    this process, veritysetup on the data file and on a loop device, and realms' start-up."""
    sealed = bench.sealed
    assert sealed is not None, "seal_for_verify first"
    store = api.open_store(bench.store)
    log_module.setup(log_module.QUIET)  # the in-process call prints no steps

    def ours(run_number: int) -> float:
        argv = [*bench.realms, "-q", "appimg", "verify", VERIFY_APPIMG]
        elapsed, text = bench.with_cpu(CMD_OURS, run_number, lambda: child_usage(argv, bench.env))
        if not re.search(r"^\s+ok\s+verity\s", text, re.MULTILINE):
            raise RuntimeError(f"realms appimg verify did not check the hash tree:\n{text}")
        return elapsed

    def in_process(run_number: int) -> float:
        def call() -> tuple[float, float, bool]:
            elapsed, cpu, result = in_process_call(lambda: api.verify_appimg(store, VERIFY_APPIMG))
            return elapsed, cpu, result.ok

        elapsed, ok = bench.with_cpu(CMD_IN_PROCESS, run_number, call)
        if not ok:
            raise RuntimeError("api.verify_appimg failed")
        return elapsed

    def theirs(data: str | Path, method: str, run_number: int) -> float:
        argv = [
            "veritysetup",
            "verify",
            data,
            sealed.image,
            sealed.root,
            f"--hash-offset={sealed.hash_offset}",
        ]
        elapsed, _ = bench.with_cpu(method, run_number, lambda: child_usage(argv))
        return elapsed

    def theirs_file(run_number: int) -> float:
        return theirs(sealed.data_copy, CMD_VS_FILE, run_number)

    def theirs_loop(run_number: int) -> float:
        # A read-only loop device at the data's offset, detached as soon as it is closed.
        size = sealed.blocks * BLOCK_SIZE
        with loop.attached(sealed.image, offset=HEADER_SIZE, size=size) as device:
            return theirs(device, CMD_VS_LOOP, run_number)

    def startup(run_number: int) -> float:
        argv = [*bench.realms, "--version"]
        elapsed, _ = bench.with_cpu(CMD_START, run_number, lambda: child_usage(argv, bench.env))
        return elapsed

    return {
        CMD_OURS: ours,
        CMD_IN_PROCESS: in_process,
        CMD_VS_FILE: theirs_file,
        CMD_VS_LOOP: theirs_loop,
        CMD_START: startup,
    }
