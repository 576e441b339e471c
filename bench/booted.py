"""What booted realms cost: ``realms start``, ``realms stop`` and ``realms run`` on a running realm
against bare systemd-nspawn and nsenter, and the memory of 20 idle booted realms on one base:
the figures of issue 13, in one run on the same tree.

- ``realms start`` to READY within 1.2x of bare ``systemd-nspawn --boot --notify-ready=yes``
  to its ``READY=1``;
- ``realms stop`` within 1.2x of SIGTERM to that bare nspawn until it exits;
- ``realms run NAME -- true`` on a running realm (it joins the realm, see
  :mod:`realms.lifecycle.join`) within 1.5x of ``nsenter -t LEADER -a true``; that floor has no
  interpreter to start, so the table also shows ``realms --version`` (Python's start-up and
  realms' imports) and what each realms command costs beyond it, round by round;
- 20 booted realms on one base: the memory of each, idle (goal: under 30 MB).

On a btrfs filesystem of its own (a loop-mounted sparse image) it makes a bootable tree with
mmdebstrap (what ``tests/system/conftest.py``'s ``bootable_tree`` is: trixie minbase with systemd,
dbus, iproute2, user ``user``, no getty) or takes ``--tree``, imports it as appimg ``boot`` and
makes realm ``b0``. The bare nspawn boots a writable snapshot of the same version with the options
realms gives nspawn for a booted realm (``--boot --notify-ready=yes --console=read-only
--register=no --keep-unit --private-users=BASE:65536 --private-users-ownership=map``, a uid range
that realms reserved, ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``, in a cgroup of its own), its
console to a file, READY=1 read from a ``NOTIFY_SOCKET`` of the benchmark's. None of that is
timed. Then, round by round (after ``--warmup`` untimed rounds), as the whole process a user
waits for:

- ``realms --version``;
- ``realms start``: ``realms -q start b0`` (btrfs settled and ``sync`` first);
- ``realms run (joined)``: ``realms -q run b0 -- true``, b0 running;
- ``nsenter -a``: ``nsenter -t LEADER -a true`` on b0's init;
- ``realms stop``: ``realms -q stop b0``;
- ``realms run (one-shot)``: ``realms -q run b0 -- true``, b0 stopped (for comparison);
- ``bare nspawn start``: from starting nspawn to READY=1 on the notify socket;
- ``bare nspawn stop``: from SIGTERM to nspawn to its exit;
- the same two for nspawn with exactly the options realms gave b0's nspawn (read from its
  command line once, untimed: the realm's home bound with ``:idmap``, its ``LANG``, its
  hostname for init): the cost of what nspawn does for the realm apart, the ratio against it
  is what realms itself adds. The targets are checked against both.

Then it measures the memory of ``--realms`` idle booted realms on the same appimg (see
:mod:`bench.booted_memory`), stops them all (timed, for the record) and removes them.

It writes ``bench/results/booted.json`` (every sample, medians, ratios, memory per realm,
targets) and cleans up as the others do, also on Ctrl-C or SIGTERM: every realm and the bare
nspawn stopped, its cgroups removed, its filesystem unmounted and its loop device checked. Run
it from the repository root (about 3 minutes with the defaults)::

    .venv/bin/python -m bench booted
    .venv/bin/python -m bench booted --runs 11 --realms 20 --tree /path/to/bootable/root
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.base import RESULTS_DIR, log, run, tool_version
from bench.booted_bare import MINIMAL_OPTIONS, Bare
from bench.booted_memory import measure_memory, print_memory
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
)
from bench.report import (
    format_ratio,
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
)

RESULTS = RESULTS_DIR / "booted.json"

APPIMG = "boot"
REALM = "b0"
RESERVED = "bare-range"  # a realm never started: its uid range is the bare nspawn's

PYTHON = "python start"
STOP_FLOOR = "python + stop's stdlib"
STOP_STDLIB = (
    "argparse",
    "fcntl",
    "json",
    "pathlib",
    "select",
    "shlex",
    "signal",
    "typing",
    "zlib",
)
"""What ``realms stop`` loads of the standard library (the rest it loads are their imports)."""
START_FLOOR = "python + start's stdlib"
START_STDLIB = (*STOP_STDLIB, "ctypes", "socket", "subprocess", "tomllib")
"""What ``realms start`` and its supervisor load besides: the notify socket, nspawn's process,
the system calls Python has no wrapper for, the realm's config."""
VERSION = "realms --version"
START = "realms start"
RUN = "realms run (joined)"
NSENTER = "nsenter -a"
STOP = "realms stop"
ONE_SHOT = "realms run (one-shot)"
BARE_START = "bare nspawn start"
BARE_STOP = "bare nspawn stop"
SAME_START = "bare nspawn start, realm's options"
SAME_STOP = "bare nspawn stop, realm's options"

# Each realms command, its peer and the largest ratio the issue allows: against the bare
# nspawn, and against nspawn with exactly the options realms gave it (the realm's home, LANG,
# hostname): what realms itself adds.
COMPARED = (
    (START, BARE_START, 1.2),
    (START, SAME_START, 1.2),
    (STOP, BARE_STOP, 1.2),
    (STOP, SAME_STOP, 1.2),
    (RUN, NSENTER, 1.5),
)
RUN_ALLOWANCE_MS = 100.0
"""The issue's own reading of "1.5x nsenter" for a Python program: a joined run within about
100 ms on top of Python's start (nsenter's 3 ms is not reachable by any Python program)."""

PACKAGES = "systemd,systemd-sysv,dbus,iproute2"


# The realms side


@dataclass
class Bench(BenchBase):
    env: dict[str, str]
    bare: Bare | None = None
    same: Bare | None = None
    """The bare nspawn with the realm's own options."""

    @property
    def store(self) -> Path:
        return self.mountpoint / STORE_DIR

    def runtime(self, name: str) -> Any:
        from realms.lifecycle import state
        from realms.store import Store

        return state.running(Store.open(self.store), name)

    def leader(self, name: str) -> int:
        runtime = self.runtime(name)
        if runtime is None or runtime.leader_pid is None:
            raise RuntimeError(f"realm {name} is not running")
        return int(runtime.leader_pid)

    def command(self, *args: str, settle: bool = False) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            if settle:
                self.settle()
            return timed(self.realms_cmd(*args), self.env)

        return sample

    def startup(self) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            return timed([*self.realms, "--version"], self.env)

        return sample

    def python(self) -> Callable[[int], float]:
        """The interpreter realms runs on, starting and doing nothing."""

        def sample(_run: int) -> float:
            return timed([sys.executable, "-c", "pass"], self.env)

        return sample

    def floor(self, modules: Sequence[str]) -> Callable[[int], float]:
        """The interpreter importing ``modules`` and doing nothing else."""

        def sample(_run: int) -> float:
            return timed([sys.executable, "-c", f"import {', '.join(modules)}"], self.env)

        return sample

    def nsenter(self) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            return timed(["nsenter", "-t", str(self.leader(REALM)), "-a", "true"])

        return sample

    def bare_sample(self, *, start: bool, same: bool = False) -> Callable[[int], float]:
        def sample(_run: int) -> float:
            bare = self.same if same else self.bare
            assert bare is not None
            if start:
                self.settle()
                return bare.start()
            return bare.stop()

        return sample

    def stop_everything(self) -> None:
        """Stop every realm that runs (whatever went wrong before) and the bare nspawn."""
        for bare in (self.bare, self.same):
            if bare is not None:
                bare.clean_up()
        realms_dir = self.store / "realms"
        if not realms_dir.is_dir():
            return
        for name in sorted(os.listdir(realms_dir)):
            if name.startswith(".") or self.runtime(name) is None:
                continue
            try:
                run(self.realms_cmd("stop", name), self.env)
            except RuntimeError as error:
                log(f"could not stop realm {name}: {error}")


# Report


def report(measurements: list[Measurement], memory: dict[str, Any]) -> dict[str, Any]:
    by_method = {m.method: m for m in measurements}
    floor = by_method[VERSION]
    rows = []
    results = []
    ratios: dict[str, float | None] = {}
    first_peer: dict[str, str] = {}
    for method, compared, _limit in COMPARED:
        first_peer.setdefault(method, compared)
    for m in measurements:
        peer = first_peer.get(m.method)
        versus = ratio(m.median, by_method[peer].median) if peer else None
        beyond = None
        if m.method.startswith("realms ") and m is not floor:
            beyond = statistics.median(
                a - b for a, b in zip(m.samples, floor.samples, strict=False)
            )
        rows.append(
            [
                m.method,
                *timing_cells(m),
                peer or "-",
                format_ratio(versus),
                "-" if beyond is None else f"{beyond:.1f}",
            ]
        )
        entry = timing_json(m, 2)
        entry |= {"versus": peer, "ratio": rounded(versus, 3)}
        entry["beyond_startup_median_ms"] = rounded(beyond, 1)
        results.append(entry)
    print()
    print_table(
        [
            "method",
            "median ms",
            "min ms",
            "max ms",
            "compared with",
            "ratio",
            "beyond --version ms",
        ],
        rows,
        left=1,
    )
    targets: dict[str, bool] = {}
    lines = []
    for method, peer, limit in COMPARED:
        value = ratio(by_method[method].median, by_method[peer].median)
        ratios[f"{method} / {peer}"] = value
        claim = f"{method} / {peer} (medians) <= {limit}"
        targets[claim] = value is not None and value <= limit
        lines.append(target_line(claim, format_ratio(value), targets[claim]))
    lines.extend(_floor_lines(by_method))
    python = by_method.get(PYTHON)
    if python is not None and RUN in by_method:
        over = statistics.median(
            a - b for a, b in zip(by_method[RUN].samples, python.samples, strict=False)
        )
        claim = f"{RUN} beyond {PYTHON} (median of differences) <= {RUN_ALLOWANCE_MS:g} ms"
        targets[claim] = over <= RUN_ALLOWANCE_MS
        lines.append(target_line(claim, f"{over:.1f} ms", targets[claim]))
    summary, claim, met = print_memory(memory)
    targets[claim] = met
    lines.append(target_line(claim, f"{summary['total_pss_mib']['median']:.1f} MiB", met))
    print_targets(lines)
    return {
        "results": results,
        "ratios": {k: rounded(v, 3) for k, v in ratios.items()},
        "memory": {**memory, "summary": summary},
        "targets": targets,
    }


def _floor_lines(by_method: dict[str, Measurement]) -> list[str]:
    """The best ratios any Python program could reach: the bare nspawn plus the start of an
    interpreter that loads the command's standard library and does nothing else."""
    lines = []
    for method, floor, peer in ((START, START_FLOOR, BARE_START), (STOP, STOP_FLOOR, BARE_STOP)):
        spent, bare = by_method[floor].median, by_method[peer].median
        best = format_ratio(ratio(bare + spent, bare))
        lines.append(f"  (at best, {method}: {peer} + {floor} ({spent:.1f} ms): {best})")
    return lines


# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time realms start, stop and run (joined) on a booted realm against bare "
        "systemd-nspawn and nsenter; measure the memory of idle booted realms.",
    )
    parser.add_argument("--tree", type=Path, help="a bootable root tree (default: mmdebstrap)")
    parser.add_argument("--runs", type=int, default=7, help="timed rounds (7)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    parser.add_argument("--realms", type=int, default=20, help="idle realms for memory (20)")
    parser.add_argument(
        "--settle", type=float, default=20.0, help="seconds the idle realms get (20)"
    )
    parser.add_argument("--image-gb", type=int, default=12, help="the btrfs image, GiB (12)")
    add_output_option(parser, RESULTS)
    args = parser.parse_args(argv)
    check_counts(parser, (args.runs, args.realms, args.image_gb), args.warmup)
    if args.tree is not None and not (args.tree / "usr").is_dir():
        parser.error(f"--tree {args.tree}: not a root filesystem")
    return args


def make_tree(target: Path) -> float:
    """The bootable tree, as tests/system/conftest.py's bootable_tree makes it; seconds taken."""
    from realms.system.apt import host_debian_mirror

    began = time.perf_counter()
    run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            f"--include={PACKAGES}",
            '--customize-hook=chroot "$1" useradd --create-home --uid 1000 --user-group user',
            '--customize-hook=chroot "$1" systemctl mask console-getty.service getty.target',
            "trixie",
            str(target),
            host_debian_mirror(),
        ]
    )
    return time.perf_counter() - began


def prepare(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """The store, appimg boot, realm b0 and the bare nspawn's tree and uid range (untimed)."""
    env = bench.env
    run(bench.realms_cmd("init"), env)
    tree = args.tree
    made = None
    if tree is None:
        tree = bench.mountpoint / "source"
        made = make_tree(tree)
    run(bench.realms_cmd("appimg", "import", APPIMG, str(tree)), env)
    if args.tree is None:
        run(["rm", "-rf", "--one-file-system", str(tree)])
    for name in (REALM, RESERVED):
        run(bench.realms_cmd("new", name, "--appimg", APPIMG), env)
    uid_base = json.loads(run(bench.realms_cmd("show", RESERVED, "--json"), env))["uid_base"]
    bare_tree = bench.mountpoint / "bare"
    run(["btrfs", "subvolume", "snapshot", bench.store / "appimg" / APPIMG / "v1", bare_tree])
    run(["btrfs", "property", "set", "-ts", bare_tree, "ro", "false"])
    bench.bare = Bare(bare_tree, int(uid_base), bench.mountpoint)
    options = realm_options(bench)
    bench.same = Bare(bare_tree, int(uid_base), bench.mountpoint, "bare-same", options)
    return {
        "tree": str(args.tree) if args.tree else "mmdebstrap",
        "mmdebstrap_seconds": made,
        "realm_options": list(options),
    }


def realm_options(bench: Bench) -> tuple[str, ...]:
    """The options realms gives nspawn for realm b0 beyond the bare nspawn's own, read from
    the command line of b0's nspawn (started once, untimed)."""
    run(bench.realms_cmd("start", REALM), bench.env)
    try:
        runtime = bench.runtime(REALM)
        words = Path(f"/proc/{runtime.nspawn_pid}/cmdline").read_bytes().split(b"\0")[1:-1]
    finally:
        run(bench.realms_cmd("stop", REALM), bench.env)
    own = ("--directory=", "--machine=", "--private-users=", "--link-journal=")
    argv = [word.decode() for word in words]
    return tuple(word for word in argv if word not in MINIMAL_OPTIONS and not word.startswith(own))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tools = ("systemd-nspawn", "nsenter", *(() if args.tree else ("mmdebstrap",)))
    if not prepare_run((*SCRATCH_TOOLS, *tools)):
        return 2
    realms_code = realms_source()
    image_size = scratch_size(args.image_gb, 0)
    started = time.perf_counter()
    try:
        with scratch_btrfs(image_size) as mountpoint:
            env = {**os.environ, "REALMS_STORE": str(mountpoint / STORE_DIR)}
            bench = Bench(mountpoint, realms_command(), env)
            try:
                machine = machine_info(mountpoint.parent)
                machine["systemd_nspawn"] = tool_version(["systemd-nspawn", "--version"])
                machine["load_average_at_start"] = load_average()
                prepared = prepare(bench, args)
                measurements = [
                    Measurement(PYTHON, "-", args.runs, bench.python()),
                    Measurement(STOP_FLOOR, "-", args.runs, bench.floor(STOP_STDLIB)),
                    Measurement(START_FLOOR, "-", args.runs, bench.floor(START_STDLIB)),
                    Measurement(VERSION, "-", args.runs, bench.startup()),
                    Measurement(START, "-", args.runs, bench.command("start", REALM, settle=True)),
                    Measurement(RUN, "-", args.runs, bench.command("run", REALM, "--", "true")),
                    Measurement(NSENTER, "-", args.runs, bench.nsenter()),
                    Measurement(STOP, "-", args.runs, bench.command("stop", REALM)),
                    Measurement(
                        ONE_SHOT, "-", args.runs, bench.command("run", REALM, "--", "true")
                    ),
                    Measurement(BARE_START, "-", args.runs, bench.bare_sample(start=True)),
                    Measurement(BARE_STOP, "-", args.runs, bench.bare_sample(start=False)),
                    Measurement(
                        SAME_START, "-", args.runs, bench.bare_sample(start=True, same=True)
                    ),
                    Measurement(
                        SAME_STOP, "-", args.runs, bench.bare_sample(start=False, same=True)
                    ),
                ]
                # One round runs them in this order: each start is followed by its stop.
                measure(measurements, args.warmup, mountpoint)
                memory = measure_memory(bench, APPIMG, args.realms, args.settle)
                machine["load_average_at_end"] = load_average()
            finally:
                bench.stop_everything()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    summary = report(measurements, memory)
    body = {
        "config": {
            "runs": args.runs,
            "warmup": args.warmup,
            "realms": args.realms,
            "settle_seconds": args.settle,
            "image_bytes": image_size,
            "packages": PACKAGES,
            "realms_command": recorded_command(bench.realms),
            "realms_source": realms_code,
        },
        "commands": {
            VERSION: "realms --version",
            START: f"realms -q start {REALM} (btrfs settled and sync first)",
            RUN: f"realms -q run {REALM} -- true ({REALM} running: joined)",
            NSENTER: f"nsenter -t LEADER -a true (LEADER: {REALM}'s init)",
            STOP: f"realms -q stop {REALM}",
            ONE_SHOT: f"realms -q run {REALM} -- true ({REALM} stopped: a container of its own)",
            BARE_START: " ".join(bench.bare.argv() if bench.bare else [])
            + " (NOTIFY_SOCKET; until READY=1)",
            BARE_STOP: "SIGTERM to the bare nspawn, until it exits",
            SAME_START: " ".join(bench.same.argv() if bench.same else [])
            + " (NOTIFY_SOCKET; until READY=1)",
            SAME_STOP: "SIGTERM to that nspawn, until it exits",
        },
        **prepared,
        **summary,
    }
    write_results(args.output, record("booted", machine, body, started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
