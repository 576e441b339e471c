"""How long committing an ``update-appimg`` session takes, and whether that depends on the size of
the appimg.

``realms update-appimg NAME -- COMMAND`` snapshots the appimg's current version as a writable
working copy, runs COMMAND on it in systemd-nspawn and, when it exits 0, commits the working copy
as a new read-only version: ``syncfs``, ``btrfs subvolume find-new`` (what the session wrote),
``btrfs property set ro``, a rename and an atomic write of the appimg's record. None of that
should depend on how big the image is.

On a btrfs filesystem of its own (a sparse image file, loop-mounted under a temporary directory)
this benchmark generates two synthetic root-filesystem-like trees, about 200 MiB and about 2 GiB
(the generator of ``realm_new.py``, plus busybox-static with the applets ``sh``, ``touch``,
``true`` and ``echo`` so that a command can run in them), imports them into a fresh store as
appimgs ``small`` and ``large``, and then times, on the same trees:

- ``realms update-appimg``: the whole command line process, ``realms -q update-appimg NAME --
  touch /etc/bench-N``, from start to exit: start-up, snapshot, container, commit;
- ``update-appimg commit``: the commit on its own, seen from outside. A second series of runs
  uses ``realms -v update-appimg NAME -- sh -c 'touch /etc/bench-N && echo MARK'``: ``-v``
  prints every external command realms runs, and the command in the container prints a marker
  when it is done. Both go to one pipe that the benchmark reads, noting when each line arrives.
  The commit is the time from the marker (the command has finished) to the line ``Committed
  appimg ...`` (the new version is recorded). That is what a user waits for after their command:
  it includes systemd-nspawn tearing the container down, which is not realms' work, so it is an
  upper bound of the commit. No private API is used and nothing in realms is patched. The
  phases of these runs are printed too: start-up and snapshot up to the container's start, the
  container, the commit split at the ``find-new`` line (before it: the container's teardown and
  ``syncfs``; after it: ``find-new``, ``property set ro``, the rename and the record), and the
  interpreter's exit;
- ``1st syncfs in a snapshot``: the kernel's share of the commit, alone. A writable snapshot of
  the current version is made and a file is created in it (untimed), then ``sync
  --file-system`` on it is timed: the first transaction commit after changing a fresh snapshot,
  which is what the commit's ``syncfs`` does;
- what a tool has to do to keep the old version while it makes a new one, on the current
  version's tree, each followed by ``sync --file-system`` on the new tree (timed too: realms'
  commit calls ``syncfs``, so a version is only made once it is on disk):
  - ``btrfs snapshot -r``: a bare read-only snapshot, the floor for realms;
  - ``cp -a``: GNU cp 9 and later reflinks by default, so on btrfs this copies every file's
    metadata but shares the data;
  - ``cp -a --reflink=never``: a full copy, what a tool without snapshots or reflinks has to do
    (copying a block image, or a backup before an update in place);
- ``realms --version``: the start-up floor of the command line, for reference.

Each is repeated ``--runs`` times (copies: ``--copy-runs``) after ``--warmup`` untimed runs,
interleaved round by round. Before every timed run the script waits until btrfs has cleaned up
deleted subvolumes, and runs ``sync``. After every update it checks that the new version is
current and holds ``/etc/bench-N``, then prunes the appimg to its 2 newest versions (``realms
appimg prune NAME --keep 2``); copies and snapshots are deleted. None of that is timed. It prints
a table of medians (with min and max), each method's ratio to ``realms update-appimg`` and its
2 GiB / 200 MiB ratio, and whether the target holds: a large / small ratio under 1.2 for
``realms update-appimg`` (and, as a second check, for the commit on its own). The results, with
every sample and phase, go to ``bench/results/update_commit.json``.

It needs root (mkfs.btrfs, mount, systemd-nspawn) and cleans up after itself, also on Ctrl-C or
SIGTERM: it unmounts its filesystem, checks that no loop device is left backed by its image, and
removes its temporary directory. Run it from the repository root::

    .venv/bin/python -m bench update_commit
    .venv/bin/python -m bench update_commit --small-mb 50 --large-mb 500 --runs 5
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

from bench.base import RESULTS_DIR, log, run, tool_version
from bench.harness import (
    BenchBase,
    Measurement,
    add_output_option,
    check_counts,
    measure,
    prepare_run,
    realms_command,
    realms_source,
    recorded_command,
    timed,
    timeline,
)
from bench.report import (
    detail_medians,
    format_ratio,
    print_table,
    print_targets,
    print_two_tree_table,
    ratio,
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

RESULTS = RESULTS_DIR / "update_commit.json"

TARGET_RATIO = 1.2
KEEP_VERSIONS = 2

MARK = "realms-bench: command done"

UPDATE = "realms update-appimg"
COMMIT = "update-appimg commit"
FIRST_SYNC = "1st syncfs in a snapshot"
SNAPSHOT = "btrfs snapshot -r"
COPY = "cp -a"
FULL_COPY = "cp -a --reflink=never"
STARTUP = "realms --version"

# The phases of the -v runs, as printed.
PHASES = (
    ("start_to_container_ms", "start -> nspawn starts (start-up, snapshot)"),
    ("container_to_command_done_ms", "nspawn starts -> command done"),
    ("command_done_to_committed_ms", "command done -> committed (the commit)"),
    ("command_done_to_find_new_ms", "  of which: done -> find-new (teardown, syncfs)"),
    ("find_new_to_committed_ms", "  of which: find-new -> committed"),
    ("committed_to_exit_ms", "committed -> exit (interpreter shutdown)"),
    ("total_ms", "total"),
)

# Lines of `realms -v update-appimg` that mark the phases (see realms.system.run and cli.py).
NSPAWN_LINE = "realms: + systemd-nspawn "
FIND_NEW_LINE = "realms: + btrfs subvolume find-new "
COMMITTED_LINE = "[+]: Committed appimg "


def phases_of(elapsed: float, lines: list[tuple[float, str]]) -> dict[str, float]:
    """The phases of one ``realms -v update-appimg`` run, from the times its lines arrived."""

    def first(predicate: Callable[[str], bool], what: str) -> float:
        for arrived, line in lines:
            if predicate(line):
                return arrived
        output = "\n".join(line for _, line in lines)
        raise RuntimeError(f"no {what} line in the output of realms -v update-appimg:\n{output}")

    nspawn = first(lambda line: line.startswith(NSPAWN_LINE), "systemd-nspawn")
    mark = first(lambda line: line == MARK, "marker")
    find_new = first(lambda line: line.startswith(FIND_NEW_LINE), "find-new")
    committed = first(lambda line: line.startswith(COMMITTED_LINE), "Committed")
    if not nspawn < mark <= find_new <= committed:
        raise RuntimeError(f"unexpected order of phases: {lines}")
    return {
        "start_to_container_ms": nspawn,
        "container_to_command_done_ms": mark - nspawn,
        "command_done_to_committed_ms": committed - mark,
        "command_done_to_find_new_ms": find_new - mark,
        "find_new_to_committed_ms": committed - find_new,
        "committed_to_exit_ms": elapsed - committed,
        "total_ms": elapsed,
    }


@dataclass
class Bench(BenchBase):
    """Its details are kept per (method, size)."""

    env: dict[str, str]
    warmup: int

    def current(self, name: str) -> tuple[int, Path]:
        """The current version of appimg ``name`` and its tree (untimed): the version from the
        public JSON, its tree where the store's layout puts it (``appimg/NAME/vN``)."""
        info = json.loads(run(self.realms_cmd("appimg", "show", name, "--json"), self.env))
        version = int(info["version"])
        tree = Path(info["path"]) / f"v{version}"
        if not tree.is_dir():
            raise RuntimeError(f"appimg {name}: no tree for version {version} at {tree}")
        return version, tree

    def check_and_prune(self, name: str, before: int, marker: str) -> None:
        """The update made a new current version holding ``marker``; prune old versions."""
        version, tree = self.current(name)
        if version != before + 1 or not (tree / "etc" / marker).exists():
            raise RuntimeError(
                f"appimg {name}: expected version {before + 1} with /etc/{marker}, found "
                f"version {version} at {tree}"
            )
        run(self.realms_cmd("appimg", "prune", name, "--keep", str(KEEP_VERSIONS)), self.env)

    def update(self, size: str) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            marker = self.fresh("bench-")
            before, _ = self.current(size)
            self.settle()
            elapsed = timed(
                self.realms_cmd("update-appimg", size, "--", "touch", f"/etc/{marker}"),
                self.env,
            )
            self.check_and_prune(size, before, marker)
            return elapsed

        return sample

    def commit(self, size: str) -> Callable[[int], float]:
        def sample(run_number: int) -> float:
            marker = self.fresh("bench-")
            before, _ = self.current(size)
            self.settle()
            script = f"touch /etc/{marker} && echo '{MARK}'"
            elapsed, lines = timeline(
                self.realms_cmd("update-appimg", size, "--", "sh", "-c", script, flag="-v"),
                self.env,
            )
            self.check_and_prune(size, before, marker)
            phases = phases_of(elapsed, lines)
            self.note((COMMIT, size), run_number, phases)
            return phases["command_done_to_committed_ms"]

        return sample

    def first_sync(self, size: str) -> Callable[[int], float]:
        """The first syncfs after a change in a fresh writable snapshot, as in the commit (where
        the command made the change); making the snapshot and the change are not timed."""

        def sample(_run: int) -> float:
            _, tree = self.current(size)
            target = self.mountpoint / self.fresh("changed")
            run(["btrfs", "subvolume", "snapshot", tree, target])
            self.settle()
            run(["touch", target / "etc" / "bench-changed"])
            elapsed = timed(["sync", "--file-system", target])
            run(["btrfs", "subvolume", "delete", target])
            return elapsed

        return sample

    def snapshot(self, size: str) -> Callable[[int], float]:
        def sample(run_number: int) -> float:
            _, tree = self.current(size)
            target = self.mountpoint / self.fresh("snapshot")
            self.settle()
            made = timed(["btrfs", "subvolume", "snapshot", "-r", tree, target])
            synced = timed(["sync", "--file-system", target])
            run(["btrfs", "subvolume", "delete", target])
            self.note((SNAPSHOT, size), run_number, {"make_ms": made, "sync_ms": synced})
            return made + synced

        return sample

    def copy(self, method: str, size: str, *options: str) -> Callable[[int], float]:
        def sample(run_number: int) -> float:
            _, tree = self.current(size)
            # The copy goes into a subvolume of its own, so that removing it is quick.
            holder = self.mountpoint / self.fresh("copy")
            run(["btrfs", "subvolume", "create", holder])
            self.settle()
            made = timed(["cp", "-a", *options, tree, holder / "tree"])
            synced = timed(["sync", "--file-system", holder / "tree"])
            run(["btrfs", "subvolume", "delete", holder])
            self.note((method, size), run_number, {"make_ms": made, "sync_ms": synced})
            return made + synced

        return sample

    def startup(self) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            self.settle()
            return timed([*self.realms, "--version"], self.env)

        return sample


# Report


def shown_as(method: str) -> str:
    """A method's name in the table: the copies and the snapshot are timed with their sync."""
    return method + (" + sync" if method in (SNAPSHOT, COPY, FULL_COPY) else "")


def report(
    measurements: list[Measurement],
    details: dict[tuple[str, str], list[dict[str, float]]],
    trees: GeneratedTrees,
) -> dict[str, Any]:
    results, scaling = print_two_tree_table(
        measurements,
        trees,
        baseline=UPDATE,
        versus_title="vs update-appimg",
        versus_key="vs_realms_update_appimg",
        shown_as=shown_as,
    )
    for entry in results:
        if (entry["method"], entry["size"]) in details:
            runs = details[(entry["method"], entry["size"])]
            entry["details"] = [{k: round(v, 3) for k, v in d.items()} for d in runs]
            entry["details_median"] = {k: round(v, 3) for k, v in detail_medians(runs).items()}
    labels = trees.labels
    print()
    medians = {size: detail_medians(details[(COMMIT, size)]) for size in SIZES}
    phase_rows = []
    for key, title in PHASES:
        small, large = medians["small"][key], medians["large"][key]
        phase_rows.append(
            [title, f"{small:.1f}", f"{large:.1f}", format_ratio(ratio(large, small))]
        )
    print_table(
        [
            f"phases of the {COMMIT} runs, medians (ms)",
            labels["small"],
            labels["large"],
            "large/small",
        ],
        phase_rows,
        left=1,
    )
    update_ratio = scaling.get(UPDATE)
    commit_ratio = scaling.get(COMMIT)
    update_met = update_ratio is not None and update_ratio < TARGET_RATIO
    commit_met = commit_ratio is not None and commit_ratio < TARGET_RATIO
    print_targets(
        [
            target_line(
                f"{UPDATE} large/small ratio < {TARGET_RATIO}",
                format_ratio(update_ratio),
                update_met,
            ),
            target_line(
                f"{COMMIT} large/small ratio < {TARGET_RATIO}",
                format_ratio(commit_ratio),
                commit_met,
            ),
        ]
    )
    return {
        "results": results,
        "ratios_large_over_small": {k: rounded(v, 3) for k, v in scaling.items()},
        "targets": {
            "ratio_large_over_small_below": TARGET_RATIO,
            "update_appimg_ratio_met": update_met,
            "commit_ratio_met": commit_met,
            "all_met": update_met and commit_met,
        },
    }


# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time committing 'realms update-appimg' against a bare btrfs snapshot and "
        "cp -a, on appimgs of about 200 MiB and 2 GiB.",
    )
    add_two_tree_options(parser, runs_of="realms and of the snapshot")
    add_output_option(parser, RESULTS)
    args = parser.parse_args(argv)
    check_counts(parser, (args.small_mb, args.large_mb, args.runs, args.copy_runs), args.warmup)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not prepare_run((*SCRATCH_TOOLS, "cp", "sync", "systemd-nspawn", "busybox")):
        return 2
    realms_code = realms_source()
    image_size = scratch_size(args.image_gb, 4 * (args.small_mb + args.large_mb))
    started = time.perf_counter()
    try:
        with scratch_btrfs(image_size) as mountpoint:
            env = {**os.environ, "REALMS_STORE": str(mountpoint / STORE_DIR)}
            bench = Bench(mountpoint, realms_command(), env, args.warmup)
            machine = machine_info(mountpoint.parent)
            machine["systemd_nspawn"] = tool_version(["systemd-nspawn", "--version"])
            # Other work on the machine shows in the spread; keep a trace of it.
            machine["load_average_at_start"] = load_average()
            run(bench.realms_cmd("init"), env)
            trees = import_two_trees(
                bench,
                env,
                {"small": args.small_mb, "large": args.large_mb},
                args.seed,
                tree_of=lambda size: bench.current(size)[1],
                extra=add_busybox,
            )
            measurements = [
                Measurement(STARTUP, "-", args.runs, bench.startup()),
                *(Measurement(UPDATE, size, args.runs, bench.update(size)) for size in SIZES),
                *(Measurement(COMMIT, size, args.runs, bench.commit(size)) for size in SIZES),
                *(
                    Measurement(FIRST_SYNC, size, args.runs, bench.first_sync(size))
                    for size in SIZES
                ),
                *(Measurement(SNAPSHOT, size, args.runs, bench.snapshot(size)) for size in SIZES),
                *(
                    Measurement(COPY, size, args.copy_runs, bench.copy(COPY, size))
                    for size in SIZES
                ),
                *(
                    Measurement(
                        FULL_COPY,
                        size,
                        args.copy_runs,
                        bench.copy(FULL_COPY, size, "--reflink=never"),
                    )
                    for size in SIZES
                ),
            ]
            measure(measurements, args.warmup, mountpoint)
            final = {size: bench.current(size)[0] for size in SIZES}
            machine["load_average_at_end"] = load_average()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    summary = report(measurements, bench.details, trees)
    body = {
        "config": {
            **two_tree_config(args, image_size),
            "keep_versions": KEEP_VERSIONS,
            "realms_command": recorded_command(bench.realms),
            "realms_source": realms_code,
        },
        "commands": {
            STARTUP: "realms --version",
            UPDATE: "realms -q update-appimg {small,large} -- touch /etc/bench-N",
            COMMIT: (
                f"realms -v update-appimg {{small,large}} -- sh -c 'touch /etc/bench-N && echo "
                f"\"{MARK}\"'; sample: from the marker line to the line '{COMMITTED_LINE}...'"
            ),
            FIRST_SYNC: (
                "untimed: btrfs subvolume snapshot TREE DEST; touch DEST/etc/bench-changed; "
                "timed: sync --file-system DEST"
            ),
            SNAPSHOT: "btrfs subvolume snapshot -r TREE DEST; sync --file-system DEST",
            COPY: "cp -a TREE DEST; sync --file-system DEST",
            FULL_COPY: "cp -a --reflink=never TREE DEST; sync --file-system DEST",
            "untimed after every update": (
                f"realms appimg show NAME --json (check); "
                f"realms appimg prune NAME --keep {KEEP_VERSIONS}"
            ),
        },
        "trees": trees.to_json(),
        "final_versions": final,
        **summary,
    }
    write_results(args.output, record("update_commit", machine, body, started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
