"""realms df (and the store-wide commands) on a store of 100 realms and 20 versions.

:func:`make_store` makes the store once on a scratch btrfs filesystem: appimg ``base`` (the
busybox tree of the tests plus a generated tree of ``--tree-mb`` MiB under ``/data``), 20
versions (each an update that writes a small file; keep-versions = 20 keeps them all), and
100 realms spread over the versions (5 made after each version), every tenth one with 1 MiB
of its own. :func:`time_command` times a whole realms command line on it (median of
``--runs``). Other store-wide commands (``realms check``) add their measurement here with
these two functions. :func:`compare_with_walk` times the full ``btrfs filesystem du`` walk of
the versions, roots and homes (what ``realms df`` did before it measured snapshots from their
changes) and gives df's largest difference from it, row by row.

Targets (issue 15): ``realms df`` under 3 s, ``realms check`` under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.base import MIB, RESULTS_DIR, log
from bench.harness import add_image_option, add_output_option, prepare_run, realms_command
from bench.report import print_table, print_targets, record, target_line, write_results
from bench.system import machine_info, scratch_btrfs, scratch_size
from bench.trees import generate_tree

REALMS = 100
VERSIONS = 20
DF_TARGET = 3.0
CHECK_TARGET = 2.0


def _realms(store: Path, *args: str) -> str:
    env = dict(os.environ, REALMS_STORE=str(store))
    result = subprocess.run(
        [*realms_command(), "-q", *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"realms {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def make_store(
    mountpoint: Path, *, realms: int = REALMS, versions: int = VERSIONS, tree_mb: int = 50
) -> Path:
    """A store at ``mountpoint/store`` with appimg base of ``versions`` versions and
    ``realms`` realms spread over them (see the module's doc); return its path."""
    from realms.realm import new_realm
    from realms.store import Store
    from tests.helpers import make_busybox_tree

    store = mountpoint / "store"
    tree = mountpoint / "tree"
    make_busybox_tree(tree)
    (tree / "data").mkdir()
    generate_tree(tree / "data", tree_mb * MIB, seed=15)
    _realms(store, "init")
    config = store / "config.toml"
    config.write_text(config.read_text() + f"\nkeep-versions = {versions}\n")
    _realms(store, "appimg", "import", "base", str(tree))
    opened = Store.open(store)
    per_version = max(1, realms // versions)
    made = 0
    started = time.perf_counter()
    for version in range(1, versions + 1):
        if version > 1:
            script = f"echo {version} > /etc/version-{version}"
            _realms(store, "update-appimg", "base", "--", "sh", "-c", script)
        count = per_version if version < versions else realms - made
        for _ in range(count):
            name = f"r{made:03d}"
            new_realm(opened, name, "base")
            if made % 10 == 0:
                (store / "realms" / name / "rootfs/own").write_bytes(os.urandom(MIB))
            made += 1
        log(f"version {version}: {made} realms ({time.perf_counter() - started:.0f} s)")
    return store


def time_command(store: Path, args: Sequence[str], runs: int) -> list[float]:
    """Seconds of each of ``runs`` runs of ``realms -q ARGS`` (the whole process), after one
    untimed run."""
    _realms(store, *args)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        _realms(store, *args)
        samples.append(time.perf_counter() - started)
    return samples


def compare_with_walk(store: Path) -> dict[str, Any]:
    """``realms df``'s numbers against one ``btrfs filesystem du`` walk of every version, root
    and home (the truth, and the old method's cost): the walk's seconds, how many rows df
    measured from their changes, the largest differences in bytes."""
    rows = json.loads(_realms(store, "df", "--json"))["objects"]
    rows = [r for r in rows if r["kind"] in ("version", "root", "home")]
    started = time.perf_counter()
    output = subprocess.run(
        ["btrfs", "filesystem", "du", "--raw", "-s", *(r["path"] for r in rows)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    walk = time.perf_counter() - started
    truth = {}
    for line in output.splitlines()[1:]:
        _total, exclusive, shared, name = line.split(maxsplit=3)
        truth[name] = (int(exclusive), int(shared))
    return {
        "walk_seconds": walk,
        "rows": len(rows),
        "estimated_rows": sum(bool(r.get("shared_estimated")) for r in rows),
        "max_exclusive_error": max(abs(r["exclusive"] - truth[r["path"]][0]) for r in rows),
        "max_shared_error": max(abs(r["shared"] - truth[r["path"]][1]) for r in rows),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command")
    parser.add_argument("--realms", type=int, default=REALMS)
    parser.add_argument("--versions", type=int, default=VERSIONS)
    parser.add_argument("--tree-mb", type=int, default=50, help="generated data in the appimg")
    add_image_option(parser, holds="the store")
    add_output_option(parser, RESULTS_DIR / "health.json")
    args = parser.parse_args(argv)
    if not prepare_run(["btrfs", "systemd-nspawn", "busybox"]):
        return 2
    began = time.perf_counter()
    with scratch_btrfs(scratch_size(args.image_gb, 4096)) as mountpoint:
        machine = machine_info(mountpoint)
        store = make_store(
            mountpoint, realms=args.realms, versions=args.versions, tree_mb=args.tree_mb
        )
        files = sum(len(f) for _d, _s, f in os.walk(store / "appimg/base/v1"))
        results: dict[str, Any] = {}
        commands = (
            ("df", ["df", "--json"]),
            ("check", ["check", "--json"]),
            ("gc --dry-run", ["gc", "--dry-run", "--json"]),
        )
        for name, command in commands:
            samples = time_command(store, command, args.runs)
            results[name] = {"samples": samples, "median": statistics.median(samples)}
        accuracy = compare_with_walk(store)
    rows = [
        [f"realms {name}", f"{r['median']:.2f}", f"{min(r['samples']):.2f}"]
        for name, r in results.items()
    ]
    print(f"store: {args.realms} realms, {args.versions} versions, {files} files per tree")
    print_table(["command", "median s", "min s"], rows, left=1)
    print(
        f"df vs a full btrfs filesystem du walk ({accuracy['walk_seconds']:.2f} s, "
        f"{accuracy['rows']} versions, roots and homes, {accuracy['estimated_rows']} measured "
        f"from their changes): largest difference {accuracy['max_exclusive_error']} bytes "
        f"exclusive, {accuracy['max_shared_error']} bytes shared"
    )
    df_median = results["df"]["median"]
    check_median = results["check"]["median"]
    print_targets(
        [
            target_line("realms df under 3 s", f"{df_median:.2f} s", df_median < DF_TARGET),
            target_line(
                "realms check under 2 s", f"{check_median:.2f} s", check_median < CHECK_TARGET
            ),
        ]
    )
    body = {
        "realms": args.realms,
        "versions": args.versions,
        "tree_mb": args.tree_mb,
        "files_per_tree": files,
        "results": results,
        "df_vs_walk": accuracy,
    }
    write_results(args.output, record("health", machine, body, began))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
