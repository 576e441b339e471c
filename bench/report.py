"""The pieces of the reports: ratios, table cells and JSON entries of a :class:`Measurement`, the
table printer, the targets' lines, the two-tree table, and the JSON results written to
``bench/results/``."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import Measurement
from bench.trees import SIZES, GeneratedTrees


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def rounded(value: float | None, digits: int) -> float | None:
    """``value`` rounded to ``digits`` decimals; None stays None."""
    return None if value is None else round(value, digits)


def format_seconds(ms: float) -> str:
    """Milliseconds as seconds with two decimals, for the tables' columns in seconds."""
    return f"{ms / 1000:.2f}"


def timing_cells(m: Measurement, *, seconds: bool = False) -> list[str]:
    """A measurement's median, min and max as table cells: milliseconds with one decimal or,
    with ``seconds``, seconds with two."""
    values = (m.median, min(m.samples), max(m.samples))
    return [format_seconds(v) if seconds else f"{v:.1f}" for v in values]


def timing_json(m: Measurement, digits: int, *, size: bool = False) -> dict[str, Any]:
    """A measurement's entry in the JSON results: its method, its tree (with ``size``), its
    runs, every sample and the median, min and max, in milliseconds rounded to ``digits``
    decimals. A benchmark adds its ratios and details after these keys."""
    entry: dict[str, Any] = {"method": m.method}
    if size:
        entry["size"] = m.size
    entry |= {
        "runs": m.runs,
        "samples_ms": [round(s, digits) for s in m.samples],
        "median_ms": round(m.median, digits),
        "min_ms": round(min(m.samples), digits),
        "max_ms": round(max(m.samples), digits),
    }
    return entry


def detail_medians(
    details: list[dict[str, Any]], keys: Sequence[str] | None = None
) -> dict[str, float]:
    """The median over runs of each of ``keys`` (by default those of the first run) in the
    details the runs noted; empty where no run noted any."""
    if not details:
        return {}
    return {key: statistics.median(d[key] for d in details) for key in (keys or list(details[0]))}


def large_over_small(measurements: list[Measurement]) -> dict[str, float | None]:
    """For each method measured on both trees: its median on the large tree over its median on
    the small one, in the order of the large trees' measurements."""
    by_key = {(m.method, m.size): m for m in measurements}
    return {
        m.method: ratio(m.median, by_key[(m.method, "small")].median)
        for m in measurements
        if m.size == "large" and (m.method, "small") in by_key
    }


def print_two_tree_table(
    measurements: list[Measurement],
    trees: GeneratedTrees,
    *,
    baseline: str,
    versus_title: str,
    versus_key: str,
    shown_as: Callable[[str], str] = str,
) -> tuple[list[dict[str, Any]], dict[str, float | None]]:
    """The report of a benchmark on two generated trees: print what is in the trees and a table
    of each measurement's median, min and max (ms), its ratio to the median of ``baseline`` on
    the same tree (column ``versus_title``) and, on the large tree, its ratio to its own median
    on the small one; a method's name is shown as ``shown_as(method)``. Returns the JSON entries
    (:func:`timing_json`, to 3 decimals, with the ratio to the baseline as ``versus_key``) and
    the large / small ratios of :func:`large_over_small`."""
    by_key = {(m.method, m.size): m for m in measurements}
    baselines = {size: by_key[(baseline, size)].median for size in SIZES}
    scaling = large_over_small(measurements)
    labels = trees.labels
    rows = []
    results = []
    for m in measurements:
        versus = ratio(m.median, baselines[m.size]) if m.size in baselines else None
        growth = scaling.get(m.method) if m.size == "large" else None
        rows.append(
            [
                shown_as(m.method),
                labels.get(m.size, "-"),
                *timing_cells(m),
                format_ratio(versus),
                format_ratio(growth),
            ]
        )
        results.append({**timing_json(m, 3, size=True), versus_key: rounded(versus, 3)})
    print()
    for size in SIZES:
        print(f"{size}: {trees.stats[size].describe(labels[size])}")
    print()
    print_table(
        ["method", "tree", "median ms", "min ms", "max ms", versus_title, "large/small"], rows
    )
    return results, scaling


def target_line(claim: str, value: str, met: bool) -> str:
    """A line of the targets: ``  CLAIM: VALUE: met`` (or ``NOT met``)."""
    return f"  {claim}: {value}: {'met' if met else 'NOT met'}"


def print_targets(lines: Sequence[str]) -> None:
    """Print the targets, each a :func:`target_line`, after a blank line and ``targets:``."""
    print()
    print("targets:")
    for line in lines:
        print(line)


def print_table(headers: list[str], rows: list[list[str]], left: int = 2) -> None:
    """A table with the first ``left`` columns left-aligned and the others right-aligned."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    aligned = [
        "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [headers, *rows]
    ]
    print(aligned[0])
    print("-" * len(aligned[0]))
    for line in aligned[1:]:
        print(line)


def record(
    benchmark: str, machine: dict[str, Any], body: dict[str, Any], started: float
) -> dict[str, Any]:
    """The JSON results of a run: the benchmark's name, the date (UTC, to the second), the
    machine, ``body``, and the seconds since ``started`` (a :func:`time.perf_counter` value)."""
    return {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        **body,
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def write_results(output: Path, data: dict[str, Any], *, ensure_ascii: bool = False) -> None:
    """Write the JSON results to ``output`` (indented by 2, with a final newline; its directory
    made if need be) and say where they went."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=2, ensure_ascii=ensure_ascii) + "\n")
    print(f"\nresults written to {output}")
