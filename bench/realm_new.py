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

    .venv/bin/python -m bench realm_new
    .venv/bin/python -m bench realm_new --small-mb 50 --large-mb 500 --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.base import RESULTS_DIR, log, run
from bench.harness import (
    BenchBase,
    Measurement,
    add_output_option,
    check_counts,
    measure,
    prepare_run,
    realms_command,
    recorded_command,
    timed,
)
from bench.report import (
    format_ratio,
    print_targets,
    print_two_tree_table,
    record,
    rounded,
    target_line,
    write_results,
)
from bench.system import (
    SCRATCH_TOOLS,
    STORE_DIR,
    load_average,
    machine_info,
    scratch_btrfs,
    scratch_size,
)
from bench.trees import (
    SIZES,
    GeneratedTrees,
    add_two_tree_options,
    import_two_trees,
    two_tree_config,
)

RESULTS = RESULTS_DIR / "realm_new.json"

TARGET_MS = 150.0
TARGET_RATIO = 1.2


# Measurements


@dataclass
class Bench(BenchBase):
    env: dict[str, str]
    warmup: int

    @property
    def store(self) -> Path:
        return self.mountpoint / STORE_DIR

    def tree(self, size: str) -> Path:
        """The tree of appimg ``small`` or ``large`` (its only version)."""
        return self.store / "appimg" / size / "v1"

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
            elapsed = timed(["btrfs", "subvolume", "snapshot", self.tree(size), target])
            run(["btrfs", "subvolume", "delete", target])
            return elapsed

        return sample

    def copy(self, size: str, *options: str) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            # The copy goes into a subvolume of its own, so that removing it is quick.
            holder = self.mountpoint / self.fresh("copy")
            run(["btrfs", "subvolume", "create", holder])
            self.settle()
            elapsed = timed(["cp", "-a", *options, self.tree(size), holder / "tree"])
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


def report(measurements: list[Measurement], trees: GeneratedTrees) -> dict[str, Any]:
    results, scaling = print_two_tree_table(
        measurements,
        trees,
        baseline="realms new",
        versus_title="vs realms new",
        versus_key="vs_realms_new",
    )
    new = {m.size: m.median for m in measurements if m.method == "realms new"}
    labels = trees.labels
    # On a shared machine the medians move with the load; the difference to the start-up in
    # the same round (they run one after the other) moves much less.
    startup = next(m for m in measurements if m.method == "realms --version")
    beyond = {
        m.size: statistics.median(
            ours - floor for ours, floor in zip(m.samples, startup.samples, strict=False)
        )
        for m in measurements
        if m.method == "realms new"
    }
    print()
    print(
        "realms new beyond its start-up (minus realms --version in the same round), median: "
        + ", ".join(f"{labels[size]} {value:.1f} ms" for size, value in beyond.items())
    )
    new_ratio = scaling.get("realms new")
    small_met = new["small"] < TARGET_MS
    large_met = new["large"] < TARGET_MS
    ratio_met = new_ratio is not None and new_ratio < TARGET_RATIO
    print_targets(
        [
            target_line(
                f"realms new median < {TARGET_MS:.0f} ms, {labels['small']}",
                f"{new['small']:.1f} ms",
                small_met,
            ),
            target_line(
                f"realms new median < {TARGET_MS:.0f} ms, {labels['large']}",
                f"{new['large']:.1f} ms",
                large_met,
            ),
            target_line(
                f"realms new large/small ratio < {TARGET_RATIO}",
                format_ratio(new_ratio),
                ratio_met,
            ),
        ]
    )
    return {
        "results": results,
        "ratios_large_over_small": {k: rounded(v, 3) for k, v in scaling.items()},
        "realms_new_beyond_startup_median_ms": {k: round(v, 1) for k, v in beyond.items()},
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
    add_two_tree_options(parser, runs_of="realms new and snapshot")
    add_output_option(parser, RESULTS)
    args = parser.parse_args(argv)
    check_counts(parser, (args.small_mb, args.large_mb, args.runs, args.copy_runs), args.warmup)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not prepare_run((*SCRATCH_TOOLS, "cp")):
        return 2
    image_size = scratch_size(args.image_gb, 4 * (args.small_mb + args.large_mb))
    started = time.perf_counter()
    try:
        with scratch_btrfs(image_size) as mountpoint:
            env = {**os.environ, "REALMS_STORE": str(mountpoint / STORE_DIR)}
            bench = Bench(mountpoint, realms_command(), env, args.warmup)
            machine = machine_info(mountpoint.parent)
            machine["load_average_at_start"] = load_average()
            run(bench.realms_cmd("init"), env)
            trees = import_two_trees(
                bench,
                env,
                {"small": args.small_mb, "large": args.large_mb},
                args.seed,
                tree_of=bench.tree,
            )
            measurements = [
                Measurement("realms --version", "-", args.runs, bench.startup()),
                *(
                    Measurement("realms new", size, args.runs, bench.realms_new(size))
                    for size in SIZES
                ),
                *(
                    Measurement("btrfs snapshot", size, args.runs, bench.snapshot(size))
                    for size in SIZES
                ),
                *(Measurement("cp -a", size, args.copy_runs, bench.copy(size)) for size in SIZES),
                *(
                    Measurement(
                        "cp -a --reflink=never",
                        size,
                        args.copy_runs,
                        bench.copy(size, "--reflink=never"),
                    )
                    for size in SIZES
                ),
            ]
            bench.measure(measurements)
            machine["load_average_at_end"] = load_average()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    summary = report(measurements, trees)
    body = {
        "config": {
            **two_tree_config(args, image_size),
            "realms_command": recorded_command(bench.realms),
        },
        "commands": {
            "realms --version": "realms --version",
            "realms new": "realms -q new NAME --appimg {small,large}",
            "btrfs snapshot": "btrfs subvolume snapshot STORE/appimg/{small,large}/v1 DEST",
            "cp -a": "cp -a STORE/appimg/{small,large}/v1 DEST",
            "cp -a --reflink=never": "cp -a --reflink=never STORE/appimg/{small,large}/v1 DEST",
        },
        "trees": trees.to_json(),
        **summary,
    }
    write_results(args.output, record("realm_new", machine, body, started), ensure_ascii=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
