"""The tables, targets and JSON summary of the ``verity`` benchmark (see :mod:`bench.verity`)."""

from __future__ import annotations

import statistics
from typing import Any

from bench.base import MIB, human
from bench.harness import (
    Measurement,
)
from bench.report import (
    detail_medians,
    format_ratio,
    format_seconds,
    print_table,
    print_targets,
    ratio,
    rounded,
    target_line,
    timing_cells,
    timing_json,
)
from bench.verity_runs import (
    APPIMG,
    CMD_IN_PROCESS,
    CMD_OURS,
    CMD_PEER,
    CMD_START,
    OURS_FORMAT,
    OURS_VERIFY,
    PEERS,
    TARGET_MEMORY_GROWTH,
    TARGET_RATIO,
    VERIFY_APPIMG,
    VS_START,
    Bench,
)
from realms.image.verity import BLOCK_SIZE


def mib(size: float) -> str:
    return f"{size / MIB:.1f}"


def gbps(data_bytes: int, ms: float) -> float:
    return data_bytes / (ms / 1000) / 1e9


def report(
    measurements: list[Measurement],
    seals: list[Measurement],
    commands: list[Measurement],
    *,
    sealed: dict[str, Any],
    memory: dict[str, list[int]],
    memory_hwm: dict[str, list[int]],
    memory_labels: dict[str, str],
    bench: Bench,
    tree: dict[str, Any],
) -> dict[str, Any]:
    data_bytes = bench.blocks * BLOCK_SIZE
    by_method = {m.method: m for m in measurements}
    rows = []
    results = []
    versus: dict[str, float | None] = {}
    for m in measurements:
        throughput = gbps(data_bytes, m.median) if m.method != VS_START else None
        peer = PEERS.get(m.method)
        faster = ratio(by_method[peer].median, m.median) if peer else None
        if peer:
            versus[m.method] = faster
        cpu = [d["cpu_ms"] for d in bench.details.get(m.method, [])]
        other = [d["other_cpu_ms"] for d in bench.details.get(m.method, [])]
        rows.append(
            [
                m.method,
                *timing_cells(m),
                f"{statistics.median(cpu):.0f}" if cpu else "-",
                f"{max(other):.0f}" if other else "-",
                "-" if throughput is None else f"{throughput:.2f}",
                format_ratio(faster),
            ]
        )
        results.append(
            {
                **timing_json(m, 2),
                "cpu_ms": [round(c, 1) for c in cpu],
                "other_cpu_ms": [round(c, 1) for c in other],
                "gb_per_s": rounded(throughput, 3),
                "throughput_vs_veritysetup": rounded(faster, 3),
            }
        )
    print()
    print(f"data: {human(data_bytes)} of random data ({bench.blocks} blocks), in the page cache")
    print()
    print_table(
        [
            "method",
            "median ms",
            "min ms",
            "max ms",
            "CPU ms",
            "others max",
            "GB/s",
            "ours/veritysetup",
        ],
        rows,
        left=1,
    )

    peaks = {key: statistics.median(values) for key, values in memory.items()}
    memory_rows = [
        [
            memory_labels[key],
            mib(peaks[key]),
            mib(min(memory[key])),
            mib(max(memory[key])),
        ]
        for key in memory
    ]
    growth = peaks["large"] - peaks["small"]
    memory_rows.append(
        [
            f"difference {memory_labels['large']} - {memory_labels['small']}",
            f"{growth / MIB:+.2f}",
            "",
            "",
        ]
    )
    print()
    print_table(
        ["peak RSS of a child running format_hash_tree", "median MiB", "min MiB", "max MiB"],
        memory_rows,
        left=1,
    )

    seal_rows = []
    seal_results = []
    for m in seals:
        runs = bench.details[m.method]
        medians = detail_medians(
            runs, ("filesystem_ms", "hash_tree_ms", "rest_ms", "image_bytes", "nblocks")
        )
        fs_ms = medians["filesystem_ms"]
        hash_ms = medians["hash_tree_ms"]
        rest_ms = medians["rest_ms"]
        image = int(medians["image_bytes"])
        nblocks = int(medians["nblocks"])
        hash_rate = gbps(nblocks * BLOCK_SIZE, hash_ms) if hash_ms > 0 else None
        seal_rows.append(
            [
                m.method,
                *timing_cells(m, seconds=True),
                format_seconds(fs_ms),
                format_seconds(hash_ms),
                format_seconds(rest_ms),
                f"{image / MIB:.0f}",
                format_ratio(ratio(image, tree["bytes"])),
            ]
        )
        seal_results.append(
            {
                **timing_json(m, 1),
                "filesystem_median_ms": round(fs_ms, 1),
                "hash_tree_median_ms": round(hash_ms, 1),
                "rest_median_ms": round(rest_ms, 1),
                "hash_tree_gb_per_s": rounded(hash_rate, 3),
                "image_bytes": image,
                "nblocks": nblocks,
                "details": runs,
            }
        )
    print()
    print(
        f"appimg {APPIMG}: tree {tree['bytes'] / MIB:.0f} MiB ({tree['bytes']} bytes, the tree "
        f"version's size), {tree['files']} files, {tree['directories']} directories, "
        f"{tree['symlinks']} symlinks"
    )
    print()
    print_table(
        [
            "seal",
            "median s",
            "min s",
            "max s",
            "filesystem s",
            "hash tree s",
            "rest s",
            "image MiB",
            "image/tree",
        ],
        seal_rows,
        left=1,
    )

    command_results, command_ratio, command_beyond = command_report(commands, bench, sealed)

    format_ratio_value = versus.get(OURS_FORMAT)
    verify_ratio_value = versus.get(OURS_VERIFY)
    format_met = format_ratio_value is not None and format_ratio_value >= TARGET_RATIO
    verify_met = verify_ratio_value is not None and verify_ratio_value >= TARGET_RATIO
    memory_met = growth < TARGET_MEMORY_GROWTH
    command_met = command_ratio is not None and command_ratio >= TARGET_RATIO
    print_targets(
        [
            target_line(
                f"format throughput ours/veritysetup >= {TARGET_RATIO}",
                format_ratio(format_ratio_value),
                format_met,
            ),
            target_line(
                f"verify throughput ours/veritysetup >= {TARGET_RATIO}",
                format_ratio(verify_ratio_value),
                verify_met,
            ),
            target_line(
                f"format_hash_tree peak memory {memory_labels['large']} - "
                f"{memory_labels['small']} < {TARGET_MEMORY_GROWTH / MIB:.0f} MiB",
                f"{growth / MIB:+.2f} MiB",
                memory_met,
            ),
            target_line(
                f"{CMD_OURS} of a {human(sealed['image_bytes'])} sealed image, as commands: "
                f"{CMD_PEER} / {CMD_OURS} >= {TARGET_RATIO}",
                format_ratio(command_ratio),
                command_met,
            ),
        ]
    )
    return {
        "results": results,
        "memory": {
            key: {
                "label": memory_labels[key],
                "peak_rss_bytes": values,
                "median_bytes": peaks[key],
                "vm_hwm_bytes": memory_hwm[key],
            }
            for key, values in memory.items()
        },
        "memory_growth_bytes": growth,
        "seal": seal_results,
        "verify_command": {
            "image": sealed,
            "results": command_results,
            "beyond_in_process_median_of_rounds_ms": round(command_beyond, 1),
        },
        "targets": {
            "throughput_ratio_at_least": TARGET_RATIO,
            "memory_growth_below_bytes": TARGET_MEMORY_GROWTH,
            "format_met": format_met,
            "verify_met": verify_met,
            "memory_met": memory_met,
            "verify_command_ratio": rounded(command_ratio, 3),
            "verify_command_met": command_met,
            "all_met": format_met and verify_met and memory_met and command_met,
        },
    }


def command_report(
    commands: list[Measurement], bench: Bench, sealed: dict[str, Any]
) -> tuple[list[dict[str, Any]], float | None, float]:
    """Print the table of the whole commands on the sealed image and where realms' command
    spends its time beyond the check; return the JSON entries, the ratio of the target (the
    peer's median over the command's) and the command's time beyond the call in process."""
    data_bytes = sealed["data_bytes"]
    by_method = {m.method: m for m in commands}
    peer = by_method[CMD_PEER].median
    rows = []
    results = []
    for m in commands:
        throughput = gbps(data_bytes, m.median) if m.method != CMD_START else None
        faster = ratio(peer, m.median) if m.method in (CMD_OURS, CMD_IN_PROCESS) else None
        cpu = [d["cpu_ms"] for d in bench.details.get(m.method, [])]
        other = [d["other_cpu_ms"] for d in bench.details.get(m.method, [])]
        rows.append(
            [
                m.method,
                *timing_cells(m),
                f"{statistics.median(cpu):.0f}" if cpu else "-",
                f"{max(other):.0f}" if other else "-",
                "-" if throughput is None else f"{throughput:.2f}",
                format_ratio(faster),
            ]
        )
        results.append(
            {
                **timing_json(m, 2),
                "cpu_ms": [round(c, 1) for c in cpu],
                "other_cpu_ms": [round(c, 1) for c in other],
                "gb_per_s": rounded(throughput, 3),
                "vs_peer": rounded(faster, 3),
            }
        )
    tree = sealed["tree"]
    print()
    print(
        f"appimg {VERIFY_APPIMG}: a {human(tree['bytes'])} generated tree ({tree['files']} files) "
        f"sealed with ext4: {human(sealed['image_bytes'])} image, {sealed['data_blocks']} blocks "
        "of data, in the page cache"
    )
    print()
    print_table(
        [
            "whole commands on one sealed image",
            "median ms",
            "min ms",
            "max ms",
            "CPU ms",
            "others max",
            "GB/s",
            f"{CMD_PEER.split(' (')[0]}/ours",
        ],
        rows,
        left=1,
    )
    # Per round (the methods of a round run one after the other), which the load of a shared
    # machine disturbs less than a difference of medians.
    beyond = statistics.median(
        ours - inside
        for ours, inside in zip(
            by_method[CMD_OURS].samples, by_method[CMD_IN_PROCESS].samples, strict=True
        )
    )
    start = by_method[CMD_START].median
    print(
        f"\n{CMD_OURS} beyond the same call in process (median of the rounds' differences): "
        f"{beyond:.1f} ms; start-up alone ({CMD_START}): {start:.1f} ms"
    )
    return results, ratio(peer, by_method[CMD_OURS].median), beyond
