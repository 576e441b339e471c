"""The memory of idle booted realms, for :mod:`bench.booted`: many realms on one base are
started one after the other, left to settle, and each one's memory is read from the kernel.

Per realm: the proportional set size (PSS, ``/proc/PID/smaps_rollup``: a page shared by N
processes counts 1/N for each) of every process in the realm's cgroup (its init, its services and
nspawn), its supervisor apart (a process of realms per booted realm where systemd is not PID 1),
the RSS for comparison, and ``memory.current`` of the realm's cgroup where the memory controller
is on cgroup2 (not on hybrid hosts, where memory is a v1 controller). The machine's
MemAvailable before and after the starts is kept too: it also shows the kernel's memory (page
tables, slabs) that PSS leaves out.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Protocol

from bench.base import MIB, log, run
from bench.harness import timed
from bench.report import print_table
from realms.lifecycle import cgroups

TARGET_MEMORY_MB = 30.0


class Booted(Protocol):
    env: dict[str, str]

    def realms_cmd(self, *args: str, flag: str = "-q") -> list[str]: ...

    def runtime(self, name: str) -> Any: ...


_FIELDS = {"Pss:": "pss", "Pss_Anon:": "pss_anon", "Rss:": "rss"}


def _memory_kib(pids: list[int]) -> dict[str, int]:
    """PSS, its anonymous part (what page cache is not: the processes' own data) and RSS of
    processes together, in KiB; a process that is gone counts nothing."""
    found = dict.fromkeys(_FIELDS.values(), 0)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    words = line.split()
                    if words and words[0] in _FIELDS:
                        found[_FIELDS[words[0]]] += int(words[1])
        except OSError:
            continue
    return found


def realm_memory(bench: Booted, name: str) -> dict[str, Any]:
    """What an idle booted realm holds: its cgroup's processes (init, services, nspawn), its
    supervisor, and memory.current where the memory controller is on cgroup2."""
    runtime = bench.runtime(name)
    if runtime is None:
        raise RuntimeError(f"realm {name} is not running")
    pids = cgroups.pids(runtime.cgroup)
    realm = _memory_kib(pids)
    supervisor = _memory_kib([runtime.supervisor_pid] if runtime.supervisor_pid else [])
    current = None
    with contextlib.suppress(OSError, ValueError):
        current = int((runtime.cgroup / "memory.current").read_text()) / MIB
    return {
        "processes": len(pids),
        **{f"cgroup_{key}_mib": round(value / 1024, 2) for key, value in realm.items()},
        **{f"supervisor_{key}_mib": round(value / 1024, 2) for key, value in supervisor.items()},
        "total_pss_mib": round((realm["pss"] + supervisor["pss"]) / 1024, 2),
        "total_pss_anon_mib": round((realm["pss_anon"] + supervisor["pss_anon"]) / 1024, 2),
        "memory_current_mib": None if current is None else round(current, 2),
    }


def measure_memory(bench: Booted, appimg: str, count: int, settle_seconds: float) -> dict[str, Any]:
    names = [f"m{n}" for n in range(1, count + 1)]
    for name in names:
        run(bench.realms_cmd("new", name, "--appimg", appimg), bench.env)
    available_before = _mem_available_mib()
    starts = []
    for name in names:
        starts.append(timed(bench.realms_cmd("start", name), bench.env))
        log(f"started {name} in {starts[-1]:.0f} ms")
    log(f"{count} realms running; waiting {settle_seconds:g} s for them to settle")
    time.sleep(settle_seconds)
    per_realm = {name: realm_memory(bench, name) for name in names}
    available_after = _mem_available_mib()
    began = time.perf_counter()
    for name in names:
        run(bench.realms_cmd("stop", name), bench.env)
    stop_all = (time.perf_counter() - began) * 1000
    for name in names:
        run(bench.realms_cmd("remove", name), bench.env)
    return {
        "realms": count,
        "settle_seconds": settle_seconds,
        "start_ms": [round(s, 1) for s in starts],
        "stop_all_ms": round(stop_all, 1),
        "mem_available_drop_mib": round(available_before - available_after, 1),
        "per_realm": per_realm,
    }


def _mem_available_mib() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def print_memory(memory: dict[str, Any]) -> tuple[dict[str, Any], str, bool]:
    """Print the table of memory per realm; return its summary, the target's claim and whether
    it is met (the median of realm and supervisor together under the goal)."""
    per_realm = memory["per_realm"].values()
    keys = [key for key in next(iter(per_realm)) if key.endswith("_mib")]
    keys.remove("memory_current_mib")
    summary = {
        key: {
            "median": round(statistics.median(r[key] for r in per_realm), 1),
            "max": round(max(r[key] for r in per_realm), 1),
        }
        for key in keys
    }
    print()
    print(
        f"{memory['realms']} idle booted realms on one base, after {memory['settle_seconds']:g} s "
        f"(MiB per realm, PSS; MemAvailable dropped by {memory['mem_available_drop_mib']:.0f} MiB "
        "in all):"
    )
    print_table(
        ["per realm", "median MiB", "max MiB"],
        [
            [label, f"{summary[key]['median']:.1f}", f"{summary[key]['max']:.1f}"]
            for label, key in (
                ("realm's cgroup (init, services, nspawn)", "cgroup_pss_mib"),
                ("  of which anonymous (not page cache)", "cgroup_pss_anon_mib"),
                ("its supervisor (realms)", "supervisor_pss_mib"),
                ("  of which anonymous", "supervisor_pss_anon_mib"),
                ("both", "total_pss_mib"),
                ("  of which anonymous", "total_pss_anon_mib"),
                ("realm's cgroup, RSS", "cgroup_rss_mib"),
            )
        ],
        left=1,
    )
    print(
        f"started one after the other: median {statistics.median(memory['start_ms']):.0f} ms; "
        f"all stopped one after the other in {memory['stop_all_ms'] / 1000:.1f} s"
    )
    claim = f"memory per idle realm (PSS, with its supervisor, median) < {TARGET_MEMORY_MB:g} MiB"
    return summary, claim, summary["total_pss_mib"]["median"] < TARGET_MEMORY_MB
