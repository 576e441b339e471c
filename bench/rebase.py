"""How long ``realms rebase`` of a tree realm takes, against ``realms new``, by appimg size.

A rebase gives a realm a fresh root from another version of its appimg and carries its state
over (:mod:`realms.rootfs.rebase`): a btrfs snapshot of the version, a copy of the kept paths,
a read-only snapshot property and a few renames, so it should cost about what ``realms new``
costs and the same for a 200 MiB and a 2 GiB appimg.

On a btrfs filesystem of its own this benchmark generates two synthetic root-filesystem-like
trees (as ``realm_new`` does), imports them as appimgs ``small`` and ``large``, and commits a
second version of each (``update-appimg SIZE -- true``). It then times, on the same trees:

- ``realms new``: the whole command line process (``realms -q new NAME --appimg SIZE``);
- ``realms rebase``: ``realms -q rebase NAME --to 1`` of a realm made (untimed) from version 2
  whose root has the state the default ``keep`` setting names (a machine-id, four ssh host
  keys), written untimed before;
- ``realms rebase --undo``: going back, on a realm rebased untimed just before;
- ``realms --version``: the start-up floor of the command line, for reference.

Each is repeated ``--runs`` times after ``--warmup`` untimed runs, round by round, with
``sync`` and btrfs's cleaner settled before every timed run; whatever a run made is removed
afterwards, untimed. It prints medians (min, max), each method's ratio to ``realms new`` on
the same tree and its large / small ratio, and whether the targets hold: ``realms rebase``
under 2x ``realms new`` on both trees, and its large / small ratio under 1.2 (O(1) in the
image's size). The results, with every sample, go to ``bench/results/rebase.json``.

It needs root and cleans up after itself, also on Ctrl-C. Run it from the repository root::

    .venv/bin/python -m bench rebase
    .venv/bin/python -m bench rebase --small-mb 100 --large-mb 1000 --runs 5
"""

from __future__ import annotations

import argparse
import os
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
    add_busybox,
    add_two_tree_options,
    import_two_trees,
    two_tree_config,
)

RESULTS = RESULTS_DIR / "rebase.json"

TARGET_VERSUS_NEW = 2.0
TARGET_RATIO = 1.2

STATE = {
    "etc/machine-id": b"0123456789abcdef0123456789abcdef\n",
    **{f"etc/ssh/ssh_host_{kind}_key": os.urandom(400) for kind in ("rsa", "ed25519")},
    **{f"etc/ssh/ssh_host_{kind}_key.pub": os.urandom(100) for kind in ("rsa", "ed25519")},
}
"""What the default keep setting carries: written into each realm's root before it is timed."""


@dataclass
class Bench(BenchBase):
    env: dict[str, str]
    warmup: int

    @property
    def store(self) -> Path:
        return self.mountpoint / STORE_DIR

    def tree(self, size: str) -> Path:
        return self.store / "appimg" / size / "v1"

    def realm_with_state(self, size: str) -> str:
        """A realm of appimg ``size`` (its version 2) with state to keep; untimed."""
        name = self.fresh("r")
        run(self.realms_cmd("new", name, "--appimg", size), self.env)
        root = self.store / "realms" / name / "rootfs"
        for path, data in STATE.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
        return name

    def realms_new(self, size: str) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            name = self.fresh("n")
            self.settle()
            elapsed = timed(self.realms_cmd("new", name, "--appimg", size), self.env)
            run(self.realms_cmd("remove", name), self.env)
            return elapsed

        return sample

    def rebase(self, size: str, *, undo: bool) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            name = self.realm_with_state(size)
            rebase = self.realms_cmd("rebase", name, "--to", "1")
            if undo:
                run(rebase, self.env)
            self.settle()
            command = self.realms_cmd("rebase", name, "--undo") if undo else rebase
            elapsed = timed(command, self.env)
            run(self.realms_cmd("remove", name), self.env)
            return elapsed

        return sample

    def startup(self) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            self.settle()
            return timed([*self.realms, "--version"], self.env)

        return sample


def report(measurements: list[Measurement], trees: GeneratedTrees) -> dict[str, Any]:
    results, scaling = print_two_tree_table(
        measurements,
        trees,
        baseline="realms new",
        versus_title="vs realms new",
        versus_key="vs_realms_new",
    )
    medians = {(m.method, m.size): m.median for m in measurements}
    labels = trees.labels
    versus = {
        size: medians[("realms rebase", size)] / medians[("realms new", size)] for size in SIZES
    }
    growth = scaling.get("realms rebase")
    versus_met = all(value < TARGET_VERSUS_NEW for value in versus.values())
    ratio_met = growth is not None and growth < TARGET_RATIO
    print_targets(
        [
            *(
                target_line(
                    f"realms rebase < {TARGET_VERSUS_NEW}x realms new, {labels[size]}",
                    format_ratio(versus[size]),
                    versus[size] < TARGET_VERSUS_NEW,
                )
                for size in SIZES
            ),
            target_line(
                f"realms rebase large/small ratio < {TARGET_RATIO}", format_ratio(growth), ratio_met
            ),
        ]
    )
    return {
        "results": results,
        "ratios_large_over_small": {k: rounded(v, 3) for k, v in scaling.items()},
        "targets": {
            "rebase_versus_new_below": TARGET_VERSUS_NEW,
            "ratio_large_over_small_below": TARGET_RATIO,
            "rebase_versus_new": {size: rounded(value, 3) for size, value in versus.items()},
            "versus_new_met": versus_met,
            "ratio_met": ratio_met,
            "all_met": versus_met and ratio_met,
        },
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time 'realms rebase' (and --undo) of a tree realm against 'realms new', on "
        "appimgs of about 200 MiB and 2 GiB.",
    )
    add_two_tree_options(parser, runs_of="each command")
    add_output_option(parser, RESULTS)
    args = parser.parse_args(argv)
    check_counts(parser, (args.small_mb, args.large_mb, args.runs, args.copy_runs), args.warmup)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not prepare_run(SCRATCH_TOOLS):
        return 2
    image_size = scratch_size(args.image_gb, 3 * (args.small_mb + args.large_mb))
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
                extra=add_busybox,
            )
            for size in SIZES:
                run(bench.realms_cmd("update-appimg", size, "--", "true"), env)
            measurements = [
                Measurement("realms --version", "-", args.runs, bench.startup()),
                *(
                    Measurement("realms new", size, args.runs, bench.realms_new(size))
                    for size in SIZES
                ),
                *(
                    Measurement("realms rebase", size, args.runs, bench.rebase(size, undo=False))
                    for size in SIZES
                ),
                *(
                    Measurement(
                        "realms rebase --undo", size, args.runs, bench.rebase(size, undo=True)
                    )
                    for size in SIZES
                ),
            ]
            measure(measurements, args.warmup, mountpoint)
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
            "realms rebase": "realms -q rebase NAME --to 1 (a realm of version 2, keep state)",
            "realms rebase --undo": "realms -q rebase NAME --undo (just rebased to version 1)",
        },
        "trees": trees.to_json(),
        **summary,
    }
    write_results(args.output, record("rebase", machine, body, started), ensure_ascii=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
