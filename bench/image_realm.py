"""How long starting a command in a realm takes on a sealed image of about 1 GiB: on the first
activation of the image, and once it is active, against a realm on a tree.

A realm on a sealed appimg version has no root filesystem of its own: the image is *activated*
once (its signature checked, then, on machines without dm-verity such as these, every data and
hash block checked in userspace; then a loop device and a read-only mount) and shared by every
realm made from that version; each realm adds its writable layer on an overlay. The activation is
made by the first ``realms new`` or ``realms run`` that needs it and released when the last
realm on it is removed.

On a btrfs filesystem of its own (a sparse image file, loop-mounted under a temporary directory)
this benchmark generates a synthetic root-filesystem-like tree of about 1 GiB (the generator of
``realm_new.py``) with a busybox root filesystem in it (busybox-static and its applets, users
root and user, from ``tests.helpers.make_busybox_tree``), so that commands run in it. In a
fresh store it imports the tree twice, as appimgs ``big`` and ``bigtree``, makes the signing key
(``realms key generate realmfs-user``), seals ``big`` (``realms appimg seal big --fs ext4``),
and makes the realm ``t`` on ``bigtree``. All of that is untimed. Then it times, round by round:

- ``tree realm: run``: ``realms -q run t -- true`` on the tree realm;
- ``sealed, 1st activation: new``: ``realms new sN --appimg big`` with nothing active: the
  previous round's realm was removed first (which released the activation) and ``realms status
  --json`` is checked to list no activation. ``realms new`` activates the image, so this is
  where the check of every block, the loop device and the mount are; they are timed from the
  lines realms prints for its steps. The CPU time of ``realms new`` (all its threads and the
  commands it runs) and that of the rest of the machine meanwhile (from /proc/stat, in 10 ms
  ticks) are kept too: the check hashes on both cores, so anything else that runs slows it;
- ``sealed, 1st activation: run``: ``realms -q run sN -- true`` right after it;
- ``sealed, 1st activation: new + run``: the two together, what a user waits for to run a
  command on an image that is not active yet;
- ``sealed, already active: run``: ``realms -q run sN -- true`` again, the activation present
  (checked in ``realms status --json``): what every later command costs.

Each is repeated ``--runs`` times (5) after ``--warmup`` untimed rounds (1), with ``sync``
before every timed command. The image file is in the page cache (the untimed warm-up round
reads all of it), so the check at activation measures hashing, not the disk. The script
prints a table of medians (with min and max) and each one's ratio to the tree realm's run, and
the median steps and CPU times of the activations. There is no target: it reports. The
results, with every sample, go to ``bench/results/image_realm.json``.

It needs root (mkfs.btrfs, mount, systemd-nspawn, busybox-static) and cleans up after itself,
also on Ctrl-C or SIGTERM: it removes its realms (which releases the activation), unmounts
whatever is still mounted in its filesystem and the filesystem, checks that no loop device is
left backed by its image or by a file on it, and removes its temporary directory. Run it from
the repository root (under a minute with the defaults)::

    .venv/bin/python -m bench image_realm
    .venv/bin/python -m bench image_realm --tree-mb 256 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.base import MIB, RESULTS_DIR, human, log, run, tool_version
from bench.harness import (
    BenchBase,
    Measurement,
    add_image_option,
    add_output_option,
    add_seed_option,
    check_counts,
    measure,
    prepare_run,
    realms_command,
    realms_source,
    recorded_command,
    step_times,
    timed,
    timeline,
)
from bench.report import (
    detail_medians,
    format_ratio,
    print_table,
    ratio,
    record,
    rounded,
    timing_cells,
    timing_json,
    write_results,
)
from bench.system import (
    SCRATCH_TOOLS,
    STORE_DIR,
    children_cpu_ms,
    load_average,
    machine_cpu_ms,
    machine_info,
    scratch_btrfs,
    scratch_size,
)
from bench.trees import generate_source, tree_stats
from realms.image.realmfs import read_header
from tests.helpers import make_busybox_tree

RESULTS = RESULTS_DIR / "image_realm.json"

SEALED = "big"
TREE = "bigtree"
TREE_REALM = "t"
CHANNEL = "realmfs-user"
COMMAND = ("true",)

TREE_RUN = "tree realm: run"
FIRST_NEW = "sealed, 1st activation: new"
FIRST_RUN = "sealed, 1st activation: run"
FIRST_TOTAL = "sealed, 1st activation: new + run"
ACTIVE_RUN = "sealed, already active: run"

# The steps of `realms new` on an image that is not active (realms.activation).
CHECK_STEP = "Checking appimg {name} version {version} (every block)"
ACTIVATE_STEP = "Activating appimg {name} version {version}"


@dataclass
class Bench(BenchBase):
    env: dict[str, str]
    version: int = 0
    """The sealed version of ``big``."""
    realm: str | None = None
    """The realm on the sealed image made in this round (removed at the next round's start)."""
    pending_new: float | None = None
    """This round's time of ``realms new`` (its run is sampled next)."""
    pending_run: float | None = None

    @property
    def store(self) -> Path:
        return self.mountpoint / STORE_DIR

    def activations(self) -> list[dict[str, Any]]:
        status = json.loads(run(self.realms_cmd("status", "--json"), self.env))
        found: list[dict[str, Any]] = status["activations"]
        return found

    def remove_realm(self) -> None:
        if self.realm is not None:
            run(self.realms_cmd("remove", self.realm), self.env)
            self.realm = None

    def tree_run(self) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            self.settle()
            return timed(self.realms_cmd("run", TREE_REALM, "--", *COMMAND), self.env)

        return sample

    def first_new(self) -> Callable[[int], float]:
        def sample(run_number: int) -> float:
            self.remove_realm()
            left = self.activations()
            if left:
                raise RuntimeError(f"activations left before a first activation: {left}")
            name = self.fresh("s")
            self.settle()
            machine, own = machine_cpu_ms(), children_cpu_ms()
            elapsed, lines = timeline([*self.realms, "new", name, "--appimg", SEALED], self.env)
            own = children_cpu_ms() - own
            machine = machine_cpu_ms() - machine
            self.realm = name
            steps = step_times(lines)
            check = steps.get(CHECK_STEP.format(name=SEALED, version=self.version))
            activate = steps.get(ACTIVATE_STEP.format(name=SEALED, version=self.version))
            if check is None or activate is None:
                output = "\n".join(line for _, line in lines)
                raise RuntimeError(f"realms new did not activate the image:\n{output}")
            self.note(
                FIRST_NEW,
                run_number,
                {
                    "total_ms": elapsed,
                    "check_ms": check,
                    "activate_ms": activate,
                    "rest_ms": elapsed - check - activate,
                    "cpu_ms": own,
                    "other_cpu_ms": machine - own,
                    "steps_ms": steps,
                },
            )
            self.pending_new = elapsed
            return elapsed

        return sample

    def first_run(self) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            assert self.realm is not None, "the realm is made just before"
            self.settle()
            elapsed = timed(self.realms_cmd("run", self.realm, "--", *COMMAND), self.env)
            self.pending_run = elapsed
            return elapsed

        return sample

    def first_total(self) -> Callable[[int], float]:
        """Not a run of its own: the sum of this round's new and run."""

        def sample(_run: int) -> float:
            assert self.pending_new is not None and self.pending_run is not None
            total = self.pending_new + self.pending_run
            self.pending_new = self.pending_run = None
            return total

        return sample

    def active_run(self) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            assert self.realm is not None, "the realm is made in the same round"
            active = [a for a in self.activations() if a["appimg"] == SEALED]
            if len(active) != 1 or self.realm not in active[0]["users"]:
                raise RuntimeError(f"expected the activation of {SEALED} used by {self.realm}")
            self.settle()
            return timed(self.realms_cmd("run", self.realm, "--", *COMMAND), self.env)

        return sample


# Report


def report(
    measurements: list[Measurement],
    details: dict[str, list[dict[str, Any]]],
    *,
    image_bytes: int,
    nblocks: int,
) -> dict[str, Any]:
    by_method = {m.method: m for m in measurements}
    tree_run = by_method[TREE_RUN].median
    rows = []
    results = []
    for m in measurements:
        versus = ratio(m.median, tree_run)
        rows.append([m.method, *timing_cells(m), format_ratio(versus)])
        entry = {**timing_json(m, 2), "vs_tree_realm_run": rounded(versus, 3)}
        if m.method in details:
            entry["details"] = [
                {k: (round(v, 2) if isinstance(v, float) else v) for k, v in d.items()}
                for d in details[m.method]
            ]
        results.append(entry)
    print()
    print_table(["method", "median ms", "min ms", "max ms", "vs tree realm run"], rows, left=1)

    news = details[FIRST_NEW]
    phases = detail_medians(
        news, ("check_ms", "activate_ms", "rest_ms", "total_ms", "cpu_ms", "other_cpu_ms")
    )
    data_bytes = nblocks * 4096
    check_rate = data_bytes / (phases["check_ms"] / 1000) / 1e9
    print()
    print_table(
        ["steps of realms new on an inactive image, medians", "ms"],
        [
            [f"check every block ({human(data_bytes)} of data)", f"{phases['check_ms']:.1f}"],
            ["loop device and read-only mount", f"{phases['activate_ms']:.1f}"],
            ["the rest (start-up, realm, exit)", f"{phases['rest_ms']:.1f}"],
            ["total", f"{phases['total_ms']:.1f}"],
            ["CPU time of realms new (its threads and children)", f"{phases['cpu_ms']:.0f}"],
            ["CPU time of everything else meanwhile", f"{phases['other_cpu_ms']:.0f}"],
        ],
        left=1,
    )
    print()
    print(
        f"image: {human(image_bytes)} ({image_bytes} bytes, {nblocks} blocks of data); the "
        f"check ran at {check_rate:.2f} GB/s of data"
    )
    return {
        "results": results,
        "activation_steps_median_ms": {k: round(v, 2) for k, v in phases.items()},
        "check_gb_per_s": round(check_rate, 3),
    }


# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a command in a realm on a sealed image (first activation, already "
        "active) against a realm on a tree.",
    )
    parser.add_argument("--tree-mb", type=int, default=1024, help="the tree, MiB (1024)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    parser.add_argument(
        "--fs", choices=("ext4", "erofs"), default="ext4", help="the image's filesystem (ext4)"
    )
    add_image_option(parser, holds="the tree")
    add_seed_option(parser)
    add_output_option(parser, RESULTS)
    args = parser.parse_args(argv)
    check_counts(parser, (args.tree_mb, args.runs), args.warmup)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tools = ("sync", "systemd-nspawn", "busybox", "mkfs.ext4", "mkfs.erofs")
    if not prepare_run((*SCRATCH_TOOLS, *tools)):
        return 2
    realms_code = realms_source()
    image_size = scratch_size(args.image_gb, 5 * args.tree_mb)
    started = time.perf_counter()
    setup: dict[str, float] = {}
    try:
        with scratch_btrfs(image_size) as mountpoint:
            env = {**os.environ, "REALMS_STORE": str(mountpoint / STORE_DIR)}
            bench = Bench(mountpoint, realms_command(), env)
            try:
                machine = machine_info(mountpoint.parent)
                machine["systemd_nspawn"] = tool_version(["systemd-nspawn", "--version"])
                machine["load_average_at_start"] = load_average()
                run(bench.realms_cmd("init"), env)
                source = mountpoint / "source"
                setup["generate_seconds"] = generate_source(
                    source, args.tree_mb * MIB, args.seed, make_busybox_tree
                )
                start = time.perf_counter()
                for name in (SEALED, TREE):
                    run(bench.realms_cmd("appimg", "import", name, str(source)), env)
                setup["import_two_seconds"] = time.perf_counter() - start
                run(["btrfs", "subvolume", "delete", source])
                stats = tree_stats(bench.store / "appimg" / TREE / "v1")
                run(bench.realms_cmd("key", "generate", CHANNEL), env)
                start = time.perf_counter()
                run(bench.realms_cmd("appimg", "seal", SEALED, "--fs", args.fs), env)
                setup["seal_seconds"] = time.perf_counter() - start
                versions = json.loads(
                    run(bench.realms_cmd("appimg", "versions", SEALED, "--json"), env)
                )
                sealed = next(v for v in versions if v["current"])
                if sealed["kind"] != "sealed":
                    raise RuntimeError(f"appimg {SEALED} is not sealed: {sealed}")
                bench.version = int(sealed["version"])
                image = bench.store / "appimg" / SEALED / f"v{bench.version}.img"
                nblocks = read_header(image)[0].metainfo.nblocks or 0
                run(bench.realms_cmd("new", TREE_REALM, "--appimg", TREE), env)
                verity = json.loads(run(bench.realms_cmd("status", "--json"), env))["verity"]
                log(
                    f"tree {human(stats.bytes)}, {stats.files} files; sealed image "
                    f"{human(sealed['size'])} in {setup['seal_seconds']:.1f} s; verity: {verity}"
                )
                measurements = [
                    Measurement(TREE_RUN, "-", args.runs, bench.tree_run()),
                    Measurement(FIRST_NEW, "-", args.runs, bench.first_new()),
                    Measurement(FIRST_RUN, "-", args.runs, bench.first_run()),
                    Measurement(FIRST_TOTAL, "-", args.runs, bench.first_total()),
                    Measurement(ACTIVE_RUN, "-", args.runs, bench.active_run()),
                ]
                measure(measurements, args.warmup, mountpoint)
                machine["load_average_at_end"] = load_average()
            finally:
                # Removing the realms releases the activation, so that the filesystem can go.
                for realm in (bench.realm, TREE_REALM):
                    if realm is not None:
                        try:
                            run(bench.realms_cmd("remove", realm), env)
                        except RuntimeError as error:
                            log(f"could not remove realm {realm}: {error}")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    print()
    print(f"tree: {stats.describe(human(stats.bytes))}; verity: {verity}")
    summary = report(measurements, bench.details, image_bytes=sealed["size"], nblocks=nblocks)
    body = {
        "config": {
            "tree_mb": args.tree_mb,
            "runs": args.runs,
            "warmup": args.warmup,
            "fs": args.fs,
            "seed": args.seed,
            "image_bytes": image_size,
            "realms_command": recorded_command(bench.realms),
            "realms_source": realms_code,
        },
        "commands": {
            TREE_RUN: f"realms -q run {TREE_REALM} -- true ({TREE_REALM}: realms new "
            f"{TREE_REALM} --appimg {TREE}, untimed)",
            FIRST_NEW: (
                f"untimed: realms -q remove s(N-1); realms status --json lists no activation; "
                f"timed: realms new sN --appimg {SEALED}"
            ),
            FIRST_RUN: "realms -q run sN -- true, right after realms new sN",
            FIRST_TOTAL: "the sum of the two above, in the same round",
            ACTIVE_RUN: "realms -q run sN -- true again, the activation present",
        },
        "tree": {"label": human(stats.bytes), **stats.to_json()},
        "sealed_image": {
            "version": bench.version,
            "fs": args.fs,
            "bytes": sealed["size"],
            "nblocks": nblocks,
            "verity": verity,
        },
        "setup_seconds": {k: round(v, 1) for k, v in setup.items()},
        **summary,
    }
    write_results(args.output, record("image_realm", machine, body, started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
