"""How long ``realms appimg build`` takes: a first build against a bare ``mmdebstrap`` of the same
packages, and a rebuild with unchanged inputs.

On a btrfs filesystem of its own (a sparse image file, loop-mounted under a temporary directory)
this benchmark times, round by round:

- ``realms appimg build (first)``: ``realms appimg build`` with the default config (the appimg
  ``base``: Debian trixie, minbase, the default packages, a user, a locale) into a *fresh store*
  made with ``realms init`` just before (untimed): the package cache and the build cache are
  empty, so this is a user's first build, downloads included. ``--rebuild`` is not passed: with
  a fresh store it would change nothing. The steps realms prints (bootstrap, modules, apt,
  cleanup, commit) are timed from when their lines arrive;
- ``mmdebstrap (bare)``: ``mmdebstrap --variant=minbase --include=PACKAGES trixie DIR MIRROR``,
  with the same packages as the default config and the mirror realms uses (the host's Debian
  mirror, ``realms.system.apt.host_debian_mirror()``), into an empty directory (a subvolume of
  its own), with no package cache either: how a user runs it by hand;
- ``realms appimg build (up to date)``: ``realms -q appimg build`` again on the store of this
  round's first build, inputs unchanged: the current version was built from them, so nothing
  is done;
- ``realms appimg build same-inputs.toml (cached)``: ``realms -q appimg build FILE`` on the same
  store, where FILE says only ``name = "copy"`` and ``hostname = "base"``: the default config's
  inputs under another appimg name, so the cached result of the first build becomes version 1
  of ``copy`` by a snapshot;
- ``realms appimg build --name other``: the same command with ``--name other``. This is *not* a
  cache hit: the default hostname is the appimg's name (``with_name`` in
  ``realms.builder.config``), and the hostname is one of the inputs, so ``other`` is built again
  (with the package cache the round's first build filled; the script records which it was).

Each round runs these five in this order (``--runs`` rounds, 3 by default, after ``--warmup``
untimed rounds, none by default: a warm-up would only warm the mirror's caches). Before every
timed run the script waits until btrfs has cleaned up deleted subvolumes and runs ``sync``.
After each run it checks what was made (a version of ``base`` built from the config, no new
version when up to date, a cached version of ``copy``, a version of ``other``) and counts the
installed packages and the bytes of both root filesystems; the bare tree is deleted after its
run, a round's store at the start of the next round. None of that is timed.

It prints a table of medians (with min and max) and each method's ratio to the bare mmdebstrap,
the median time of each step of the first builds and of the ``--name other`` builds, and
whether the targets hold: a first build at most 1.3 times the bare mmdebstrap, a cached rebuild
under 5 s (checked for the up-to-date build, the cached build under another name, and
``--name other``). The results, with every sample and step, go to ``bench/results/build.json``.

The network is part of every first build and every bare mmdebstrap: both download every
package from the mirror. Rounds alternate the two so that the mirror's changing speed falls on
both alike; the spread shows how much it changed.

It needs root (mkfs.btrfs, mount, mmdebstrap, systemd-nspawn) and the network, and cleans up
after itself, also on Ctrl-C or SIGTERM: it unmounts its filesystem, checks that no loop device
is left backed by its image, and removes its temporary directory. Run it from the repository
root (about 3.5 minutes with the defaults)::

    .venv/bin/python -m bench build
    .venv/bin/python -m bench build --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.base import GIB, RESULTS_DIR, human, log, run, tool_version
from bench.harness import (
    BenchBase,
    Measurement,
    add_image_option,
    add_output_option,
    measure,
    mmdebstrap_argv,
    prepare_run,
    realms_command,
    realms_source,
    recorded_command,
    step_times,
    timed,
    timeline,
)
from bench.report import (
    format_ratio,
    format_seconds,
    print_table,
    print_targets,
    ratio,
    record,
    rounded,
    target_line,
    timing_cells,
    timing_json,
    write_results,
)
from bench.system import SCRATCH_TOOLS, load_average, machine_info, remove_tree, scratch_btrfs
from bench.trees import tree_stats
from realms.builder.config import BuildConfig, load
from realms.system import apt

RESULTS = RESULTS_DIR / "build.json"

TARGET_FIRST_RATIO = 1.3
TARGET_CACHED_S = 5.0

APPIMG = "base"
OTHER_NAME = "other"
COPY_NAME = "copy"
# The default config's inputs under another appimg name: the hostname is set to the default's
# (by default it follows the appimg's name, and it is an input).
SAME_INPUTS_CONFIG = f'name = "{COPY_NAME}"\nhostname = "{APPIMG}"\n'
SAME_INPUTS_FILE = "same-inputs.toml"

FIRST = "realms appimg build (first)"
BARE = "mmdebstrap (bare)"
UP_TO_DATE = "realms appimg build (up to date)"
CACHED = f"realms appimg build {SAME_INPUTS_FILE} (cached)"
OTHER = f"realms appimg build --name {OTHER_NAME}"

# The steps of a first build, as printed, grouped for the table (regular expressions on the
# step titles of realms.builder.build; a step that matches none is shown as it is).
STEP_GROUPS = (
    (r"Bootstrapping .*", "bootstrap (mmdebstrap, minbase, locales)"),
    (r"Running module .* \(before packages\)", "modules before the packages"),
    (r"Updating package lists and upgrading", "apt-get update, upgrade"),
    (r"Installing \d+ packages.*", "apt-get install (the packages)"),
    (r"Running (module|script) .* \(after packages\)", "modules after the packages"),
    (r"Cleaning up the image", "cleanup"),
    (r"Committing as a new version .*", "commit (cache, version)"),
)
OTHER_STEPS = "start-up, config, exit (the rest)"


def installed_packages(root: Path) -> int:
    """How many packages dpkg has installed in a root filesystem."""
    status = (root / "var" / "lib" / "dpkg" / "status").read_text(errors="replace")
    return len(re.findall(r"^Status: install ok installed$", status, re.MULTILINE))


def group_steps(steps: dict[str, float], total: float) -> dict[str, float]:
    """The step times of one first build, in the groups of :data:`STEP_GROUPS`, plus the rest
    of the total."""
    grouped: dict[str, float] = {title: 0.0 for _, title in STEP_GROUPS}
    for name, elapsed in steps.items():
        title = next((t for pattern, t in STEP_GROUPS if re.fullmatch(pattern, name)), name)
        grouped[title] = grouped.get(title, 0.0) + elapsed
    grouped[OTHER_STEPS] = total - sum(grouped.values())
    return grouped


@dataclass
class Bench(BenchBase):
    config: BuildConfig
    store: Path | None = None
    """The store of the last first build: the cached rebuilds run on it."""

    def env(self, store: Path) -> dict[str, str]:
        return {**os.environ, "REALMS_STORE": str(store)}

    def versions(self, store: Path, name: str) -> list[dict[str, Any]]:
        output = run([*self.realms, "appimg", "versions", name, "--json"], self.env(store))
        found: list[dict[str, Any]] = json.loads(output)
        return found

    def bare_argv(self, target: Path) -> list[str]:
        return mmdebstrap_argv(self.config, target, self.config.mirror)

    def first(self) -> Callable[[int], float]:
        def sample(run_number: int) -> float:
            if self.store is not None:  # the previous round's store, done with
                remove_tree(self.store)
                self.store = None
            store = self.mountpoint / self.fresh("store")
            env = self.env(store)
            run([*self.realms, "-q", "init"], env)
            self.settle()
            elapsed, lines = timeline([*self.realms, "appimg", "build"], env)
            self.store = store
            versions = self.versions(store, APPIMG)
            if len(versions) != 1 or versions[0]["origin"] != "build":
                raise RuntimeError(f"expected one built version of {APPIMG}: {versions}")
            steps = step_times(lines)
            tree = store / "appimg" / APPIMG / "v1"
            debs = list((store / "cache" / "packages" / self.config.release).glob("*.deb"))
            self.note(
                FIRST,
                run_number,
                {
                    "total_ms": elapsed,
                    "steps_ms": steps,
                    "groups_ms": group_steps(steps, elapsed),
                    "packages_installed": installed_packages(tree),
                    "tree_bytes": tree_stats(tree).bytes,
                    "cached_debs": len(debs),
                    "cached_debs_bytes": sum(deb.stat().st_size for deb in debs),
                },
            )
            return elapsed

        return sample

    def bare(self) -> Callable[[int], float]:
        def sample(run_number: int) -> float:
            target = self.mountpoint / self.fresh("bare")
            run(["btrfs", "subvolume", "create", target])
            self.settle()
            elapsed = timed(self.bare_argv(target))
            self.note(
                BARE,
                run_number,
                {
                    "total_ms": elapsed,
                    "packages_installed": installed_packages(target),
                    "tree_bytes": tree_stats(target).bytes,
                },
            )
            remove_tree(target)
            return elapsed

        return sample

    def up_to_date(self) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            assert self.store is not None, "the first build of the round runs before"
            before = self.versions(self.store, APPIMG)
            self.settle()
            elapsed = timed([*self.realms, "-q", "appimg", "build"], self.env(self.store))
            after = self.versions(self.store, APPIMG)
            if after != before:
                raise RuntimeError(f"an up-to-date build changed appimg {APPIMG}: {after}")
            return elapsed

        return sample

    def cached(self) -> Callable[[int], float]:
        """The default config's inputs under another name: the cached result, snapshotted."""

        def sample(_run: int) -> float:
            assert self.store is not None, "the first build of the round runs before"
            config = self.mountpoint / SAME_INPUTS_FILE
            config.write_text(SAME_INPUTS_CONFIG)
            self.settle()
            elapsed = timed([*self.realms, "-q", "appimg", "build", config], self.env(self.store))
            versions = self.versions(self.store, COPY_NAME)
            if len(versions) != 1 or not versions[0]["detail"].endswith("(cached)"):
                raise RuntimeError(f"expected one cached version of {COPY_NAME}: {versions}")
            return elapsed

        return sample

    def other_name(self) -> Callable[[int], float]:
        """``--name other``: the hostname follows the name, so the inputs differ and this builds
        again, with the package cache the round's first build filled."""

        def sample(run_number: int) -> float:
            assert self.store is not None, "the first build of the round runs before"
            self.settle()
            elapsed, lines = timeline(
                [*self.realms, "appimg", "build", "--name", OTHER_NAME], self.env(self.store)
            )
            versions = self.versions(self.store, OTHER_NAME)
            if len(versions) != 1 or versions[0]["origin"] != "build":
                raise RuntimeError(f"expected one built version of {OTHER_NAME}: {versions}")
            steps = step_times(lines)
            self.note(
                OTHER,
                run_number,
                {
                    "total_ms": elapsed,
                    "outcome": "cached" if versions[0]["detail"].endswith("(cached)") else "built",
                    "steps_ms": steps,
                    "groups_ms": group_steps(steps, elapsed) if steps else {},
                },
            )
            return elapsed

        return sample


# Report


def report(
    measurements: list[Measurement], details: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    by_method = {m.method: m for m in measurements}
    bare = by_method[BARE].median
    rows = []
    results = []
    for m in measurements:
        versus = ratio(m.median, bare)
        rows.append([m.method, *timing_cells(m, seconds=True), format_ratio(versus)])
        entry = {**timing_json(m, 1), "vs_bare_mmdebstrap": rounded(versus, 3)}
        if m.method in details:
            entry["details"] = details[m.method]
        results.append(entry)
    print()
    print_table(["method", "median s", "min s", "max s", "vs mmdebstrap"], rows, left=1)

    firsts = details[FIRST]
    others = details[OTHER]

    def step_medians(runs: list[dict[str, Any]]) -> dict[str, float]:
        titles = dict.fromkeys(title for d in runs for title in d["groups_ms"])
        return {
            title: statistics.median(d["groups_ms"].get(title, 0.0) for d in runs)
            for title in titles
        }

    groups = step_medians(firsts)
    other_groups = step_medians(others)
    first_median = by_method[FIRST].median
    step_rows = [
        [
            title,
            format_seconds(value),
            f"{100 * value / first_median:.0f} %",
            format_seconds(other_groups[title]) if title in other_groups else "-",
        ]
        for title, value in groups.items()
    ]
    print()
    print_table(
        ["steps of the builds, medians (s)", "first", "share", f"--name {OTHER_NAME}"],
        step_rows,
        left=1,
    )
    packages = {
        "first_build": sorted({d["packages_installed"] for d in firsts}),
        "bare_mmdebstrap": sorted({d["packages_installed"] for d in details[BARE]}),
    }
    trees = {
        "first_build": statistics.median(d["tree_bytes"] for d in firsts),
        "bare_mmdebstrap": statistics.median(d["tree_bytes"] for d in details[BARE]),
    }
    print()
    for key, label in (("first_build", "first build"), ("bare_mmdebstrap", "bare mmdebstrap")):
        counts = ", ".join(str(c) for c in packages[key])
        print(f"{label}: {counts} packages installed, tree {human(int(trees[key]))}")

    first_ratio = ratio(first_median, bare)
    first_met = first_ratio is not None and first_ratio <= TARGET_FIRST_RATIO
    cached_met = {
        method: by_method[method].median < TARGET_CACHED_S * 1000 for method in (UP_TO_DATE, CACHED)
    }
    outcomes = [d["outcome"] for d in others]
    other_met = by_method[OTHER].median < TARGET_CACHED_S * 1000
    print_targets(
        [
            target_line(
                f"first build / bare mmdebstrap <= {TARGET_FIRST_RATIO}",
                format_ratio(first_ratio),
                first_met,
            ),
            *(
                target_line(
                    f"{method} median < {TARGET_CACHED_S:.0f} s",
                    f"{format_seconds(by_method[method].median)} s",
                    met,
                )
                for method, met in cached_met.items()
            ),
            target_line(
                f"{OTHER} median < {TARGET_CACHED_S:.0f} s",
                f"{format_seconds(by_method[OTHER].median)} s",
                other_met,
            )
            + f" ({outcomes.count('built')} of {len(outcomes)} runs built again: the hostname "
            "follows --name, and it is an input)",
        ]
    )
    return {
        "results": results,
        "first_build_steps_median_ms": {k: round(v, 1) for k, v in groups.items()},
        "other_name_steps_median_ms": {k: round(v, 1) for k, v in other_groups.items()},
        "other_name_outcomes": outcomes,
        "packages_installed": packages,
        "tree_bytes_median": trees,
        "ratio_first_over_bare": rounded(first_ratio, 3),
        "targets": {
            "first_over_bare_at_most": TARGET_FIRST_RATIO,
            "cached_rebuild_below_s": TARGET_CACHED_S,
            "first_build_met": first_met,
            "up_to_date_met": cached_met[UP_TO_DATE],
            "cached_met": cached_met[CACHED],
            "other_name_met": other_met,
            "all_met": first_met and all(cached_met.values()) and other_met,
        },
    }


# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a first 'realms appimg build' against a bare mmdebstrap of the same "
        "packages, and cached rebuilds.",
    )
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (3)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed rounds first (0)")
    add_image_option(parser, 16)
    add_output_option(parser, RESULTS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.image_gb < 4:
        parser.error("runs must be positive, the image at least 4 GiB")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not prepare_run((*SCRATCH_TOOLS, "sync", "mmdebstrap", "systemd-nspawn")):
        return 2
    realms_code = realms_source()
    config = load(None)
    mirror = apt.host_debian_mirror()
    if config.mirror != mirror:
        raise SystemExit(f"the default config's mirror {config.mirror} is not the host's {mirror}")
    image_size = args.image_gb * GIB
    started = time.perf_counter()
    try:
        with scratch_btrfs(image_size) as mountpoint:
            bench = Bench(mountpoint, realms_command(), config)
            machine = machine_info(mountpoint.parent)
            machine["mmdebstrap"] = tool_version(["mmdebstrap", "--version"])
            machine["systemd_nspawn"] = tool_version(["systemd-nspawn", "--version"])
            machine["load_average_at_start"] = load_average()
            measurements = [
                Measurement(FIRST, "-", args.runs, bench.first()),
                Measurement(BARE, "-", args.runs, bench.bare()),
                Measurement(UP_TO_DATE, "-", args.runs, bench.up_to_date()),
                Measurement(CACHED, "-", args.runs, bench.cached()),
                Measurement(OTHER, "-", args.runs, bench.other_name()),
            ]
            measure(measurements, args.warmup, mountpoint)
            machine["load_average_at_end"] = load_average()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    summary = report(measurements, bench.details)
    body = {
        "config": {
            "runs": args.runs,
            "warmup": args.warmup,
            "image_bytes": image_size,
            "release": config.release,
            "variant": config.variant,
            "mirror": mirror,
            "packages": config.packages,
            "realms_command": recorded_command(bench.realms),
            "realms_source": realms_code,
        },
        "commands": {
            FIRST: "untimed: REALMS_STORE=NEW realms -q init; timed: realms appimg build",
            BARE: " ".join(mmdebstrap_argv(config, "DIR", mirror)),
            UP_TO_DATE: "realms -q appimg build (on the store of the round's first build)",
            CACHED: (
                f"realms -q appimg build {SAME_INPUTS_FILE} (on the same store; the file: "
                f"{SAME_INPUTS_CONFIG!r})"
            ),
            OTHER: f"realms appimg build --name {OTHER_NAME} (on the same store)",
        },
        **summary,
    }
    write_results(args.output, record("build", machine, body, started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
