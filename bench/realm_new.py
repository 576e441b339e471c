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
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    GIB,
    MIB,
    RESULTS_DIR,
    Measurement,
    TreeStats,
    compile_realms,
    format_ratio,
    generate_tree,
    human,
    log,
    machine_info,
    measure,
    missing_tools,
    print_table,
    ratio,
    realms_command,
    run,
    scratch_btrfs,
    settle,
    stop_on_signals,
    timed,
    tree_stats,
)

RESULTS = RESULTS_DIR / "realm_new.json"

TARGET_MS = 150.0
TARGET_RATIO = 1.2

STORE_DIR = "store"


# Measurements


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
        settle(self.mountpoint)

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
        measure(measurements, self.warmup, self.mountpoint)


# Report


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("this benchmark needs root: it makes and mounts a btrfs filesystem")
        return 2
    for tool in missing_tools(
        ("mkfs.btrfs", "btrfs", "mount", "umount", "losetup", "findmnt", "cp")
    ):
        log(f"{tool} is not installed")
        return 2
    stop_on_signals()
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
