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

    .venv/bin/python -m bench verity
    .venv/bin/python -m bench verity --size-mb 512 --runs 3 --seal-runs 1
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
import uuid as uuidlib
from collections.abc import Sequence

from bench.base import GIB, MIB, human, log, run, tool_version
from bench.harness import (
    Measurement,
    add_image_option,
    add_output_option,
    add_seed_option,
    check_counts,
    measure,
    mmdebstrap_argv,
    prepare_run,
    realms_command,
    realms_source,
    recorded_command,
)
from bench.report import (
    record,
    write_results,
)
from bench.system import (
    SCRATCH_TOOLS,
    STORE_DIR,
    load_average,
    machine_info,
    scratch_btrfs,
)
from bench.trees import tree_stats
from bench.verity_report import report
from bench.verity_runs import (
    APPIMG,
    CHANNEL,
    CMD_IN_PROCESS,
    CMD_OURS,
    CMD_START,
    CMD_VS_FILE,
    CMD_VS_LOOP,
    FILESYSTEMS,
    OURS_FORMAT,
    OURS_VERIFY,
    RESULTS,
    SEAL,
    VERIFY_APPIMG,
    VS_FORMAT,
    VS_START,
    VS_VERIFY,
    Bench,
    command_samples,
    seal_for_verify,
    write_random,
)
from realms.builder.config import load
from realms.image.verity import BLOCK_SIZE
from realms.system import apt


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
    parser.add_argument(
        "--verify-mb",
        type=int,
        default=900,
        help="the tree sealed for the comparison of whole verify commands, MiB (900: an image "
        "of about 1 GiB)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    add_seed_option(parser)
    add_image_option(parser, 8)
    add_output_option(parser, RESULTS)
    args = parser.parse_args(argv)
    counts = (args.size_mb, args.small_mb, args.runs, args.memory_runs, args.seal_runs)
    check_counts(parser, (*counts, args.verify_mb))
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

            bench.realms_run("-q", "init")
            bench.realms_run("-q", "key", "generate", CHANNEL)
            sealed = seal_for_verify(bench, args.verify_mb, args.seed)
            samples = command_samples(bench)
            commands = [
                Measurement(method, "-", args.runs, samples[method])
                for method in (CMD_OURS, CMD_VS_FILE, CMD_IN_PROCESS, CMD_VS_LOOP, CMD_START)
            ]
            measure(commands, args.warmup, mountpoint)
            bench.realms_run("-q", "appimg", "remove", VERIFY_APPIMG)
            assert bench.sealed is not None
            bench.sealed.data_copy.unlink()

            tarball = mountpoint / "root.tar.zst"
            argv = mmdebstrap_argv(config, tarball, mirror)
            log("making the root filesystem: " + " ".join(argv))
            start = time.perf_counter()
            run(argv)
            phases["mmdebstrap_seconds"] = round(time.perf_counter() - start, 1)
            start = time.perf_counter()
            bench.realms_run("-q", "appimg", "import", APPIMG, str(tarball))
            phases["import_seconds"] = round(time.perf_counter() - start, 1)
            tarball_bytes = tarball.stat().st_size
            tarball.unlink()
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
        commands,
        sealed=sealed,
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
            "verify_mb": args.verify_mb,
            "seed": args.seed,
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
            CMD_OURS: f"realms -q appimg verify {VERIFY_APPIMG}",
            CMD_IN_PROCESS: f"realms.api.verify_appimg(store, {VERIFY_APPIMG!r}) in this process",
            CMD_VS_FILE: (
                "veritysetup verify DATA IMAGE ROOT --hash-offset=HEADER+DATA, DATA a reflinked "
                "copy of the image's data (veritysetup cannot start a data device at an offset)"
            ),
            CMD_VS_LOOP: (
                "veritysetup verify LOOP IMAGE ROOT --hash-offset=HEADER+DATA, LOOP a read-only "
                "loop device on the image at the data's offset"
            ),
            CMD_START: "realms --version",
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
