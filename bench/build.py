"""How long ``realms appimg build`` takes: a cold build against a bare ``mmdebstrap`` of the same
packages, a build with one package more on an unchanged mirror (the stage cache), and rebuilds
with unchanged inputs (the mirror's state checked).

On a btrfs filesystem of its own (a sparse image file, loop-mounted under a temporary directory)
this benchmark times, round by round:

- ``realms appimg build (cold)``: ``realms appimg build`` with the default config (the appimg
  ``base``: Debian trixie, minbase, the default packages, a user, a locale) into a *fresh store*
  made with ``realms init`` just before (untimed): the package cache, the stage cache and the
  build cache are empty, so this is a user's first build, downloads included. The steps realms
  prints (bootstrap, modules, apt, the stage cache, install, cleanup, commit) are timed from
  when their lines arrive;
- ``mmdebstrap (bare)``: ``mmdebstrap --variant=minbase --include=PACKAGES trixie DIR MIRROR``,
  with the same packages as the default config and the mirror realms uses (the host's Debian
  mirror, ``realms.system.apt.host_debian_mirror()``), into an empty directory (a subvolume of
  its own), with no package cache either: how a user runs it by hand;
- ``realms appimg build (up to date)``: ``realms -q appimg build`` again on the store of this
  round's cold build, config and mirror unchanged: the mirror's Release files are asked for
  (conditional GETs), the key is the current version's, so nothing is built;
- ``realms appimg build same-inputs.toml (cached)``: ``realms -q appimg build FILE`` on the same
  store, where FILE says only ``name = "copy"`` and ``hostname = "base"``: the default config's
  inputs under another appimg name, so the cached result of the cold build becomes version 1
  of ``copy`` by a snapshot;
- ``realms appimg build plus-one.toml (+1 package)``: the default config with one package more
  (``file``), as appimg ``plus`` (hostname ``base``, so that the modules before the packages
  are the same) on the same store, with ``--explain``: the bootstrap comes from the stage cache
  (checked: ``bootstrap: hit``), and one apt transaction installs the package list, with the
  package cache warm.

Each round runs these five in this order, except that every other round runs the bare
mmdebstrap first (``--runs`` rounds, 3 by default, after ``--warmup`` untimed rounds, none by
default: a warm-up would only warm the mirror's caches). Before every
timed run the script waits until btrfs has cleaned up deleted subvolumes and runs ``sync``.
After each run it checks what was made (a version of ``base`` built from the config, no new
version when up to date, a cached version of ``copy``, a built version of ``plus`` with the
package) and counts the installed packages and the bytes of both root filesystems; the bare
tree is deleted after its run, a round's store at the start of the next round. None of that is
timed.

It prints a table of medians (with min and max) and each method's ratio to the bare mmdebstrap,
the median time of each step of the cold builds and of the +1 builds, and whether the targets
of issue 14 hold: a cold build at most 1.2 times the bare mmdebstrap, a +1 package build under
0.5 times the bare mmdebstrap (of the whole package list), an up-to-date build under 2 s
(mirror check included), and a cached build under another name under 5 s. The results, with
every sample and step, go to ``bench/results/build.json``.

The network is part of every cold build and every bare mmdebstrap: both download every
package from the mirror. Rounds alternate which of the two runs first, so that the mirror's
changing speed, and a caching proxy that serves the second fetch of the same packages faster,
fall on both alike; the spread shows how much it changed.

It needs root (mkfs.btrfs, mount, mmdebstrap, systemd-nspawn) and the network, and cleans up
after itself, also on Ctrl-C or SIGTERM: it unmounts its filesystem, checks that no loop device
is left backed by its image, and removes its temporary directory. Run it from the repository
root (about 10 minutes with the defaults)::

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

TARGET_FIRST_RATIO = 1.2
TARGET_ADDED_RATIO = 0.5
TARGET_UP_TO_DATE_S = 2.0
TARGET_CACHED_S = 5.0

APPIMG = "base"
COPY_NAME = "copy"
PLUS_NAME = "plus"
ADDED_PACKAGE = "file"
# The default config's inputs under another appimg name: the hostname is set to the default's
# (by default it follows the appimg's name, and it is an input).
SAME_INPUTS_CONFIG = f'name = "{COPY_NAME}"\nhostname = "{APPIMG}"\n'
SAME_INPUTS_FILE = "same-inputs.toml"
PLUS_FILE = "plus-one.toml"

FIRST = "realms appimg build (cold)"
BARE = "mmdebstrap (bare)"
UP_TO_DATE = "realms appimg build (up to date)"
CACHED = f"realms appimg build {SAME_INPUTS_FILE} (cached)"
ADDED = f"realms appimg build {PLUS_FILE} (+1 package)"

# The steps of a build, as printed, grouped for the table (regular expressions on the
# step titles of realms.builder.build; a step that matches none is shown as it is).
STEP_GROUPS = (
    (r"Bootstrapping .*", "bootstrap (mmdebstrap, minbase, locales)"),
    (r"Running module .* \(before packages\)", "modules before the packages"),
    (r"Updating package lists and upgrading", "apt-get update, upgrade"),
    (r"(Keeping the bootstrap in|Starting from) the .*", "stage cache (keep or start from)"),
    (r"Installing \d+ packages.*", "apt-get install (the packages)"),
    (r"Running (module|script) .* \(after packages\)", "modules after the packages"),
    (r"Cleaning up the image", "cleanup (reproducible)"),
    (r"Committing as a new version .*", "commit (cache, version)"),
)
OTHER_STEPS = "start-up, config, mirror check, exit (the rest)"


def installed_packages(root: Path) -> int:
    """How many packages dpkg has installed in a root filesystem."""
    status = (root / "var" / "lib" / "dpkg" / "status").read_text(errors="replace")
    return len(re.findall(r"^Status: install ok installed$", status, re.MULTILINE))


def group_steps(steps: dict[str, float], total: float) -> dict[str, float]:
    """The step times of one build, in the groups of :data:`STEP_GROUPS`, plus the rest
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
    """The store of the last cold build: the other builds run on it."""

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
            assert self.store is not None, "the cold build of the round runs before"
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
            assert self.store is not None, "the cold build of the round runs before"
            config = self.mountpoint / SAME_INPUTS_FILE
            config.write_text(SAME_INPUTS_CONFIG)
            self.settle()
            elapsed = timed([*self.realms, "-q", "appimg", "build", config], self.env(self.store))
            versions = self.versions(self.store, COPY_NAME)
            if len(versions) != 1 or not versions[0]["detail"].endswith("(cached)"):
                raise RuntimeError(f"expected one cached version of {COPY_NAME}: {versions}")
            return elapsed

        return sample

    def added(self) -> Callable[[int], float]:
        """The default config with one package more, on the round's store: the bootstrap from
        the stage cache, one apt transaction."""

        def sample(run_number: int) -> float:
            assert self.store is not None, "the cold build of the round runs before"
            config = self.mountpoint / PLUS_FILE
            config.write_text(plus_config(self.config))
            self.settle()
            elapsed, lines = timeline(
                [*self.realms, "appimg", "build", config, "--explain"], self.env(self.store)
            )
            texts = [text for _, text in lines]
            if "bootstrap: hit" not in texts:
                raise RuntimeError(f"the +1 build did not start from the cached bootstrap: {texts}")
            versions = self.versions(self.store, PLUS_NAME)
            if len(versions) != 1 or versions[0]["detail"].endswith("(cached)"):
                raise RuntimeError(f"expected one built version of {PLUS_NAME}: {versions}")
            tree = self.store / "appimg" / PLUS_NAME / "v1"
            if not (tree / "usr" / "bin" / ADDED_PACKAGE).exists():
                raise RuntimeError(f"{ADDED_PACKAGE} is not installed in {PLUS_NAME}")
            steps = step_times(lines)
            self.note(
                ADDED,
                run_number,
                {
                    "total_ms": elapsed,
                    "explained": [t for t in texts if t.startswith(("bootstrap:", "packages:"))],
                    "steps_ms": steps,
                    "groups_ms": group_steps(steps, elapsed),
                    "packages_installed": installed_packages(tree),
                },
            )
            return elapsed

        return sample


def plus_config(config: BuildConfig) -> str:
    """The default config with one package more, as appimg plus with the default's hostname."""
    packages = json.dumps([*config.packages, ADDED_PACKAGE])
    return f'name = "{PLUS_NAME}"\nhostname = "{APPIMG}"\npackages = {packages}\n'


def measure_alternating(measurements: list[Measurement], runs: int) -> None:
    """Rounds of one run each, like :func:`bench.harness.measure`, but every other round runs
    the bare mmdebstrap before the cold build: whichever fetches the packages second may find
    them in a caching proxy in front of the mirror, and this spreads that over both."""
    by_method = {m.method: m for m in measurements}
    for round_number in range(runs):
        order = list(measurements)
        if round_number % 2:
            order.remove(by_method[BARE])
            order.insert(0, by_method[BARE])
        for m in order:
            elapsed = m.sample(round_number)
            m.samples.append(elapsed)
            log(f"{m.method} run {round_number + 1}/{runs}: {elapsed:.1f} ms")


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
    addeds = details[ADDED]

    def step_medians(runs: list[dict[str, Any]]) -> dict[str, float]:
        titles = dict.fromkeys(title for d in runs for title in d["groups_ms"])
        return {
            title: statistics.median(d["groups_ms"].get(title, 0.0) for d in runs)
            for title in titles
        }

    groups = step_medians(firsts)
    added_groups = step_medians(addeds)
    first_median = by_method[FIRST].median
    step_rows = [
        [
            title,
            format_seconds(value),
            f"{100 * value / first_median:.0f} %",
            format_seconds(added_groups[title]) if title in added_groups else "-",
        ]
        for title, value in groups.items()
    ]
    print()
    print_table(
        ["steps of the builds, medians (s)", "cold", "share", "+1 package"], step_rows, left=1
    )
    packages = {
        "cold_build": sorted({d["packages_installed"] for d in firsts}),
        "bare_mmdebstrap": sorted({d["packages_installed"] for d in details[BARE]}),
        "plus_one": sorted({d["packages_installed"] for d in addeds}),
    }
    trees = {
        "cold_build": statistics.median(d["tree_bytes"] for d in firsts),
        "bare_mmdebstrap": statistics.median(d["tree_bytes"] for d in details[BARE]),
    }
    print()
    for key, label in (("cold_build", "cold build"), ("bare_mmdebstrap", "bare mmdebstrap")):
        counts = ", ".join(str(c) for c in packages[key])
        print(f"{label}: {counts} packages installed, tree {human(int(trees[key]))}")

    first_ratio = ratio(first_median, bare)
    added_ratio = ratio(by_method[ADDED].median, bare)
    met = {
        "cold_build_met": first_ratio is not None and first_ratio <= TARGET_FIRST_RATIO,
        "plus_one_met": added_ratio is not None and added_ratio < TARGET_ADDED_RATIO,
        "up_to_date_met": by_method[UP_TO_DATE].median < TARGET_UP_TO_DATE_S * 1000,
        "cached_met": by_method[CACHED].median < TARGET_CACHED_S * 1000,
    }
    print_targets(
        [
            target_line(
                f"cold build / bare mmdebstrap <= {TARGET_FIRST_RATIO}",
                format_ratio(first_ratio),
                met["cold_build_met"],
            ),
            target_line(
                f"+1 package / bare mmdebstrap < {TARGET_ADDED_RATIO}",
                format_ratio(added_ratio),
                met["plus_one_met"],
            ),
            target_line(
                f"{UP_TO_DATE} median < {TARGET_UP_TO_DATE_S:.0f} s (mirror check included)",
                f"{format_seconds(by_method[UP_TO_DATE].median)} s",
                met["up_to_date_met"],
            ),
            target_line(
                f"{CACHED} median < {TARGET_CACHED_S:.0f} s",
                f"{format_seconds(by_method[CACHED].median)} s",
                met["cached_met"],
            ),
        ]
    )
    return {
        "results": results,
        "cold_build_steps_median_ms": {k: round(v, 1) for k, v in groups.items()},
        "plus_one_steps_median_ms": {k: round(v, 1) for k, v in added_groups.items()},
        "packages_installed": packages,
        "tree_bytes_median": trees,
        "ratio_cold_over_bare": rounded(first_ratio, 3),
        "ratio_plus_one_over_bare": rounded(added_ratio, 3),
        "targets": {
            "cold_over_bare_at_most": TARGET_FIRST_RATIO,
            "plus_one_over_bare_below": TARGET_ADDED_RATIO,
            "up_to_date_below_s": TARGET_UP_TO_DATE_S,
            "cached_below_s": TARGET_CACHED_S,
            **met,
            "all_met": all(met.values()),
        },
    }


# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a cold 'realms appimg build' against a bare mmdebstrap of the same "
        "packages, a build with one package more (the stage cache), and rebuilds with unchanged "
        "inputs.",
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
                Measurement(ADDED, "-", args.runs, bench.added()),
            ]
            if args.warmup:
                measure(measurements, args.warmup, mountpoint)
                for m in measurements:
                    m.samples.clear()
            measure_alternating(measurements, args.runs)
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
            UP_TO_DATE: "realms -q appimg build (on the store of the round's cold build)",
            CACHED: (
                f"realms -q appimg build {SAME_INPUTS_FILE} (on the same store; the file: "
                f"{SAME_INPUTS_CONFIG!r})"
            ),
            ADDED: (
                f"realms appimg build {PLUS_FILE} --explain (on the same store; the file: "
                f"{plus_config(config)!r})"
            ),
        },
        **summary,
    }
    write_results(args.output, record("build", machine, body, started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
