"""What running realms in user namespaces costs: ``realms run REALM -- true`` and ``realms new``
with ``isolation = "userns"`` (the default) against ``isolation = "privileged"``.

A realm runs in a user namespace of its own unless its config says ``isolation =
"privileged"``: systemd-nspawn gets ``--private-users=BASE:65536``, a tree realm's root is
idmapped by nspawn (``--private-users-ownership=map``), and for a realm on a sealed image realms
creates a user namespace itself and attaches an idmapped clone of the activation as the overlay's
lower layer (:mod:`realms.system.idmap`). The issue's figure: the namespace must cost under 10%,
so each userns / privileged ratio of medians, measured in one run, must be under 1.10.

On a btrfs filesystem of its own (a sparse image file, loop-mounted under a temporary directory)
this benchmark generates a synthetic root-filesystem-like tree (``--tree-mb``, 64 MiB; the
generator of ``realm_new.py``) with a busybox root filesystem in it (busybox-static and its
applets, users root and user, from ``tests.helpers.make_busybox_tree``), so that commands run in
it. In a fresh store it imports the tree as appimgs ``tree`` and ``sealed``, makes the signing
key (``realms key generate realmfs-user``), seals ``sealed`` (``realms appimg seal sealed``), and
makes four realms: ``tu`` and ``tp`` on ``tree``, ``su`` and ``sp`` on ``sealed`` (which
activates the image, once). ``tp`` and ``sp`` get ``isolation = "privileged"`` in their config.
All of that is untimed, and so is a check that ``tu`` and ``su`` run in a user namespace (their
``/proc/self/uid_map`` is not the identity) and ``tp`` and ``sp`` do not. Then it times, round
by round, whole command lines as a user runs them:

- ``realms --version``: the command line's start-up (interpreter and imports), the floor;
- ``tree realm: run``: ``realms -q run tu|tp -- true``, userns and privileged;
- ``sealed realm: run``: ``realms -q run su|sp -- true``, userns and privileged, with the
  activation present (checked before every run in ``realms status --json``);
- ``tree realm: new``: ``realms -q new nN --appimg tree``, with ``[realm-defaults] isolation =
  "userns"`` and then ``"privileged"`` in the store's ``config.toml`` (written untimed before
  the run); the new realm is removed, untimed, afterwards.

Each is repeated ``--runs`` times (15) after ``--warmup`` untimed rounds (1), with btrfs's cleaner
waited for and ``sync`` before every timed command. In each round the userns and privileged runs
of a pair follow each other, and which one goes first alternates from round to round. The script
prints a table of medians (with min and max), each userns / privileged ratio of the medians (the
figure of the issue) and whether it is under 1.10; beside it the median of the rounds' own
ratios and differences, which slow drift on a busy machine affects less. The results, with every
sample, go to ``bench/results/userns.json``.

It needs root (mkfs.btrfs, mount, systemd-nspawn, busybox-static) and cleans up after itself,
also on Ctrl-C or SIGTERM: it removes its realms (which releases the activation), unmounts
whatever is still mounted in its filesystem and the filesystem, checks that no loop device is
left backed by its image or by a file on it, and removes its temporary directory. Run it from
the repository root (about a minute with the defaults)::

    .venv/bin/python -m bench userns
    .venv/bin/python -m bench userns --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
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
    prepare_run,
    realms_command,
    realms_source,
    recorded_command,
    timed,
)
from bench.report import (
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
from bench.system import (
    SCRATCH_TOOLS,
    STORE_DIR,
    load_average,
    machine_info,
    scratch_btrfs,
    scratch_size,
    settle,
)
from bench.trees import generate_source, tree_stats
from tests.helpers import make_busybox_tree

RESULTS = RESULTS_DIR / "userns.json"

TREE = "tree"
SEALED = "sealed"
CHANNEL = "realmfs-user"
COMMAND = ("true",)
USERNS = "userns"
PRIVILEGED = "privileged"
MODES = (USERNS, PRIVILEGED)
TARGET = 1.10

STARTUP = "realms --version"
TREE_RUN = "tree realm: run"
SEALED_RUN = "sealed realm: run"
NEW = "tree realm: new"
COMPARED = (TREE_RUN, SEALED_RUN, NEW)

# The realms run, per kind and isolation.
REALMS = {
    (TREE, USERNS): "tu",
    (TREE, PRIVILEGED): "tp",
    (SEALED, USERNS): "su",
    (SEALED, PRIVILEGED): "sp",
}
IDENTITY_MAP = "0 0 4294967295"  # /proc/self/uid_map outside any user namespace


@dataclass
class Bench(BenchBase):
    env: dict[str, str]
    store_config: str = ""
    """The store's config.toml as ``realms init`` wrote it ([realm-defaults] is added to it)."""

    @property
    def store(self) -> Path:
        return self.mountpoint / STORE_DIR

    def set_realm_isolation(self, realm: str, isolation: str) -> None:
        path = self.store / "realms" / realm / "config"
        text = path.read_text()
        write_atomically(path, f"{text.rstrip()}\nisolation = {json.dumps(isolation)}\n")

    def set_default_isolation(self, isolation: str) -> None:
        """``[realm-defaults] isolation = ISOLATION`` in the store's config.toml."""
        table = f'\n[realm-defaults]\nisolation = "{isolation}"\n'
        write_atomically(self.store / "config.toml", self.store_config.rstrip() + "\n" + table)

    def uid_map(self, realm: str) -> str:
        output = run(self.realms_cmd("run", realm, "--", "cat", "/proc/self/uid_map"), self.env)
        return " ".join(output.split())

    def startup(self) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            self.settle()
            return timed([*self.realms, "--version"], self.env)

        return sample

    def run_in(self, kind: str, isolation: str) -> Callable[[int], float]:
        realm = REALMS[(kind, isolation)]

        def sample(_run: int) -> float:
            if kind == SEALED:
                status = json.loads(run(self.realms_cmd("status", "--json"), self.env))
                active = [a for a in status["activations"] if a["appimg"] == SEALED]
                if len(active) != 1 or realm not in active[0]["users"]:
                    raise RuntimeError(f"expected the activation of {SEALED} used by {realm}")
            self.settle()
            return timed(self.realms_cmd("run", realm, "--", *COMMAND), self.env)

        return sample

    def new(self, isolation: str) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            self.set_default_isolation(isolation)
            name = self.fresh("n")
            self.settle()
            try:
                return timed(self.realms_cmd("new", name, "--appimg", TREE), self.env)
            finally:
                shown = json.loads(run(self.realms_cmd("show", name, "--json"), self.env))
                run(self.realms_cmd("remove", name), self.env)
                self.set_default_isolation(USERNS)
                if shown.get("isolation") != isolation:
                    raise RuntimeError(f"realm {name} was made with {shown.get('isolation')}")

        return sample


def measure_pairs(
    startup: Measurement,
    pairs: list[tuple[Measurement, Measurement]],
    warmup: int,
    mountpoint: Path,
) -> None:
    """Warm-up rounds (untimed), then rounds of one run of each measurement: the start-up,
    then each pair (userns, privileged) in turn, the pair's order swapped every round, so that
    neither isolation always runs first (after the other's cache effects)."""
    for round_number in range(-warmup, startup.runs):
        ordered = [startup]
        for pair in pairs:
            ordered += pair if round_number % 2 == 0 else pair[::-1]
        for m in ordered:
            elapsed = m.sample(round_number)
            if round_number < 0:
                log(f"warm-up {round_number + warmup + 1}/{warmup}: {m.method} ({m.size})")
                continue
            m.samples.append(elapsed)
            log(f"{m.method} ({m.size}) run {round_number + 1}/{m.runs}: {elapsed:.1f} ms")
    settle(mountpoint)


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.bench")
    temporary.write_text(text)
    os.replace(temporary, path)


# Report


def report(measurements: list[Measurement]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Print the table and the targets; return the JSON entries and the ratios and targets.

    The target is the ratio of the medians. Beside it: the median of the rounds' own ratios and
    differences (userns over and minus privileged, run one after the other in the same round),
    which drift on a busy machine affects less."""
    by_key = {(m.method, m.size): m for m in measurements}
    rows = []
    results = []
    ratios: dict[str, float | None] = {}
    paired: dict[str, dict[str, float]] = {}
    for m in measurements:
        cells = ["-", "-", "-"]
        entry = {**timing_json(m, 2), "isolation": m.size}
        if m.size == USERNS:
            other = by_key[(m.method, PRIVILEGED)]
            ratios[m.method] = ratio(m.median, other.median)
            rounds = list(zip(m.samples, other.samples, strict=True))
            paired[m.method] = {
                "median_round_ratio": statistics.median(u / p for u, p in rounds),
                "median_round_difference_ms": statistics.median(u - p for u, p in rounds),
            }
            cells = [
                f"{ratios[m.method]:.3f}",
                f"{paired[m.method]['median_round_ratio']:.3f}",
                f"{paired[m.method]['median_round_difference_ms']:+.1f}",
            ]
            entry["vs_privileged"] = rounded(ratios[m.method], 3)
            entry |= {k: round(v, 3) for k, v in paired[m.method].items()}
        rows.append([m.method, m.size, *timing_cells(m), *cells])
        results.append(entry)
    print()
    print_table(
        [
            "method",
            "isolation",
            "median ms",
            "min ms",
            "max ms",
            "userns/privileged",
            "per round",
            "userns-privileged ms",
        ],
        rows,
    )
    lines = []
    targets: dict[str, bool] = {}
    for method in COMPARED:
        value = ratios[method]
        met = value is not None and value < TARGET
        claim = f"{method}: userns/privileged (medians) < {TARGET:.2f}"
        targets[claim] = met
        lines.append(target_line(claim, "-" if value is None else f"{value:.3f}", met))
    print_targets(lines)
    extra = {
        "ratios_userns_over_privileged": {k: rounded(v, 3) for k, v in ratios.items()},
        "targets": targets,
    }
    return results, extra


# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time realms run and realms new with isolation userns against privileged.",
    )
    parser.add_argument("--tree-mb", type=int, default=64, help="the generated tree, MiB (64)")
    parser.add_argument("--runs", type=int, default=15, help="timed rounds (15)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    add_image_option(parser, holds="the tree")
    add_seed_option(parser)
    add_output_option(parser, RESULTS)
    args = parser.parse_args(argv)
    check_counts(parser, (args.tree_mb, args.runs), args.warmup)
    return args


def prepare(bench: Bench, args: argparse.Namespace, setup: dict[str, float]) -> dict[str, Any]:
    """The store, the appimgs and the four realms (untimed); returns what the results record
    about them."""
    env = bench.env
    run(bench.realms_cmd("init"), env)
    bench.store_config = (bench.store / "config.toml").read_text()
    source = bench.mountpoint / "source"
    setup["generate_seconds"] = generate_source(
        source, args.tree_mb * MIB, args.seed, make_busybox_tree
    )
    for name in (TREE, SEALED):
        run(bench.realms_cmd("appimg", "import", name, str(source)), env)
    run(["btrfs", "subvolume", "delete", source])
    stats = tree_stats(bench.store / "appimg" / TREE / "v1")
    run(bench.realms_cmd("key", "generate", CHANNEL), env)
    start = time.perf_counter()
    run(bench.realms_cmd("appimg", "seal", SEALED), env)
    setup["seal_seconds"] = time.perf_counter() - start
    versions = json.loads(run(bench.realms_cmd("appimg", "versions", SEALED, "--json"), env))
    sealed = next(v for v in versions if v["current"])
    if sealed["kind"] != "sealed":
        raise RuntimeError(f"appimg {SEALED} is not sealed: {sealed}")
    maps: dict[str, str] = {}
    for (kind, isolation), realm in REALMS.items():
        run(bench.realms_cmd("new", realm, "--appimg", kind), env)
        if isolation == PRIVILEGED:
            bench.set_realm_isolation(realm, PRIVILEGED)
        shown = json.loads(run(bench.realms_cmd("show", realm, "--json"), env))
        if shown.get("isolation") != isolation:
            raise RuntimeError(f"realm {realm} has isolation {shown.get('isolation')}")
        maps[realm] = bench.uid_map(realm)
        if (maps[realm] == IDENTITY_MAP) != (isolation == PRIVILEGED):
            raise RuntimeError(f"realm {realm} ({isolation}) runs with uid_map {maps[realm]}")
    log(
        f"tree {human(stats.bytes)}, {stats.files} files; sealed image {human(sealed['size'])} "
        f"in {setup['seal_seconds']:.1f} s; uid maps: {maps}"
    )
    return {
        "tree": {"label": human(stats.bytes), **stats.to_json()},
        "sealed_image": {"version": sealed["version"], "bytes": sealed["size"]},
        "uid_maps": maps,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tools = ("sync", "systemd-nspawn", "busybox", "mkfs.ext4")
    if not prepare_run((*SCRATCH_TOOLS, *tools)):
        return 2
    realms_code = realms_source()
    image_size = scratch_size(args.image_gb, 4 * args.tree_mb)
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
                prepared = prepare(bench, args, setup)
                startup = Measurement(STARTUP, "-", args.runs, bench.startup())
                pairs = [
                    (
                        Measurement(method, USERNS, args.runs, sample(USERNS)),
                        Measurement(method, PRIVILEGED, args.runs, sample(PRIVILEGED)),
                    )
                    for method, sample in (
                        (TREE_RUN, partial(bench.run_in, TREE)),
                        (SEALED_RUN, partial(bench.run_in, SEALED)),
                        (NEW, bench.new),
                    )
                ]
                measure_pairs(startup, pairs, args.warmup, mountpoint)
                measurements = [startup, *(m for pair in pairs for m in pair)]
                machine["load_average_at_end"] = load_average()
            finally:
                # Removing the realms releases the activation, so that the filesystem can go.
                if (bench.store / "realms").is_dir():
                    for realm in sorted(os.listdir(bench.store / "realms")):
                        if realm.startswith("."):
                            continue
                        try:
                            run(bench.realms_cmd("remove", realm), env)
                        except RuntimeError as error:
                            log(f"could not remove realm {realm}: {error}")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    print()
    print(f"tree: {prepared['tree']['label']}, {prepared['tree']['files']} files")
    results, summary = report(measurements)
    body = {
        "config": {
            "tree_mb": args.tree_mb,
            "runs": args.runs,
            "warmup": args.warmup,
            "seed": args.seed,
            "image_bytes": image_size,
            "realms_command": recorded_command(bench.realms),
            "realms_source": realms_code,
        },
        "commands": {
            STARTUP: "realms --version",
            TREE_RUN: 'realms -q run tu|tp -- true (tp: isolation = "privileged" in its config)',
            SEALED_RUN: (
                "realms -q run su|sp -- true on appimg sealed, already active "
                '(sp: isolation = "privileged" in its config)'
            ),
            NEW: (
                "[realm-defaults] isolation = userns|privileged in config.toml (untimed); "
                "timed: realms -q new nN --appimg tree; untimed: realms -q remove nN"
            ),
        },
        **prepared,
        "setup_seconds": {k: round(v, 1) for k, v in setup.items()},
        "results": results,
        **summary,
    }
    write_results(args.output, record("userns", machine, body, started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
