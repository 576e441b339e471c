"""Handlers of ``realms df`` and ``realms gc``: each calls one function of :mod:`realms.api` and
prints its result as a table (sizes in IEC units) or as JSON (``--json``)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from realms import api, log
from realms.cli import output
from realms.cli.call import Call
from realms.units import format_size

if TYPE_CHECKING:
    from realms.health.gc import GcResult
    from realms.health.usage import DiskUsage


def df(call: Call) -> int:
    result = api.disk_usage(call.store)
    if call.json:
        output.print_json(result.to_json())
    else:
        _print_usage(result)
    return 0


def _print_usage(result: DiskUsage) -> None:
    from realms.health.usage import method_line

    rows = [
        [
            u.object + (f" ({u.note})" if u.note else ""),
            u.kind,
            format_size(u.exclusive),
            format_size(u.shared),
        ]
        for u in result.objects
    ]
    for name, part in result.caches.items():
        rows.append(
            [
                f"cache/{name}",
                f"cache ({_entries(part.entries)})",
                format_size(part.exclusive),
                format_size(part.shared),
            ]
        )
    temporary, removed = result.leftovers["temporary"], result.leftovers["removed"]
    rows.append(
        [
            "leftovers",
            f"temporary ({_entries(temporary.entries)})",
            format_size(temporary.exclusive),
            format_size(temporary.shared),
        ]
    )
    rows.append(
        [
            "removed/",
            f"kept homes ({_entries(removed.entries)})",
            format_size(removed.exclusive),
            format_size(removed.shared),
        ]
    )
    rows.append(["total", "", format_size(result.exclusive), ""])
    output.table(["OBJECT", "KIND", "EXCLUSIVE", "SHARED"], rows)
    print()
    output.fields(
        [
            ("measured with", method_line(result)),
            (
                "filesystem",
                f"{format_size(result.filesystem_used)} used of "
                f"{format_size(result.filesystem_size)}",
            ),
            (
                "realms gc",
                f"would free {format_size(result.gc_would_free)} (realms gc --dry-run lists it)",
            ),
        ]
    )
    if removed.entries:
        print(
            f"removed/ holds {removed.entries} homes of removed realms: realms gc never frees "
            "them; delete the ones you do not need yourself"
        )


def _entries(count: int) -> str:
    return f"{count} {'entry' if count == 1 else 'entries'}"


def gc(call: Call) -> int:
    result = api.collect_garbage(call.store, dry_run=call.flag("dry_run"))
    if call.json:
        output.print_json(result.to_json())
    else:
        _print_gc(result)
    return 0


def _print_gc(result: GcResult) -> None:
    verb = "would free" if result.dry_run else "freed"
    if result.freed:
        rows = [[entry.what, entry.path, format_size(entry.bytes)] for entry in result.freed]
        output.table(["WHAT", "PATH", "BYTES"], rows)
    counts = Counter(entry.what for entry in result.freed)
    summary = ", ".join(f"{what}: {count}" for what, count in sorted(counts.items()))
    log.note(
        f"gc {verb} {format_size(result.total)}"
        + (f" ({summary})" if summary else ": nothing to free")
    )
    for entry in result.skipped:
        log.note(f"left {entry.what} {entry.path}: {entry.reason}")
    if result.removed_homes:
        log.note(
            f"removed/ holds {result.removed_homes} homes of removed realms "
            f"({format_size(result.removed_bytes)}): gc never frees them"
        )
