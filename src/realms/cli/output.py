"""Printers: each takes a typed result of :mod:`realms.api` and prints it as a table, as fields,
or as JSON (``--json``, stable keys). Nothing here decides anything; the types are imported only
for checking, so that ``realms --help`` does not load the API.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from realms.units import format_size

if TYPE_CHECKING:
    from realms.api import Status
    from realms.appimg.images import Verification
    from realms.appimg.ops import AppimgInfo
    from realms.appimg.record import AppimgRecord, Version
    from realms.image.keys import KeyInfo
    from realms.realm import RealmInfo

JsonValue = object


def print_json(data: JsonValue) -> None:
    print(json.dumps(data, indent=2))


def table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=False)]
    for row in [headers, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def fields(pairs: list[tuple[str, str]]) -> None:
    width = max(len(key) for key, _ in pairs) + 1
    for key, value in pairs:
        print(f"{key + ':':<{width}} {value}")


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _enforcement(verity: str) -> str:
    return {"userspace": "userspace (checked at activation)"}.get(verity, verity)


def status(result: Status) -> None:
    data = result.to_json()
    features = result.features.to_json()
    used = result.total_bytes - result.free_bytes
    pool = f", pool {data['pool']}" if data["pool"] else ""
    verity_detail = {
        "kernel": "dm-verity in the kernel checks every read",
        "userspace": "whole image checked in userspace before a read-only mount",
        "none": "policy 'kernel' but this kernel has no dm-verity: sealed realms are refused",
    }[result.verity]
    fields(
        [
            ("store", f"{data['store']} ({data['backend']} backend{pool})"),
            ("space", f"{format_size(used)} used of {format_size(result.total_bytes)}"),
            ("verity", f"{result.verity} ({verity_detail})"),
            (
                "kernel",
                ", ".join(f"{k.replace('_', '-')} {_yes(v)}" for k, v in features.items()),
            ),
            (
                "systemd",
                "PID 1" if data["systemd_pid1"] else "not PID 1 (nspawn runs unregistered)",
            ),
            ("appimgs", str(result.appimgs)),
            ("realms", f"{result.realms} (default: {result.default_realm or 'none'})"),
            ("leftovers", f"{result.leftovers} temporary names (cleaned by the next command)"),
        ]
    )
    if result.activations:
        print("\nactive images:")
        rows = [
            [
                f"{found.appimg} v{found.version}",
                found.device,
                _enforcement(found.enforcement),
                ", ".join(found.users) or "none (released by the next realm command)",
            ]
            for found in result.activations
        ]
        table(["IMAGE", "DEVICE", "VERITY", "REALMS"], rows)


def appimgs(found: list[AppimgInfo]) -> None:
    rows = [
        [a.name, a.kind, str(a.version), str(len(a.record.versions)), ", ".join(a.realms) or "-"]
        for a in found
    ]
    table(["NAME", "KIND", "VERSION", "VERSIONS", "REALMS"], rows)


def change(version: Version) -> str:
    """What an update wrote: files and bytes."""
    if version.written is None:
        return "-"
    files = version.files_changed
    return f"{files} file{'' if files == 1 else 's'}, {format_size(version.written)}"


def made_from(version: Version) -> str:
    """FROM: what the version was made from; a pulled one adds its manifest's short digest,
    a built one the date of its mirror state."""
    source = version.source or {}
    if "digest" in source:
        return f"{source.get('ref', version.detail)} ({source['digest'][:19]})"
    if "release_digest" in source and "date" in source:
        return f"{version.detail} (mirror of {source['date'][:10]})"
    return version.detail


def versions(record: AppimgRecord) -> None:
    rows = [
        [
            ("*" if v.version == record.current else " ") + str(v.version),
            v.kind,
            v.created,
            v.origin + (f" of {v.parent}" if v.origin == "update" else ""),
            format_size(v.size) if v.size is not None else "-",
            change(v),
            _yes(v.pinned),
            made_from(v),
        ]
        for v in record.versions
    ]
    table(["VERSION", "KIND", "CREATED", "MADE BY", "SIZE", "WRITTEN", "PINNED", "FROM"], rows)


def versions_json(record: AppimgRecord) -> None:
    print_json([{**v.to_json(), "current": v.version == record.current} for v in record.versions])


def appimg(info: AppimgInfo) -> None:
    fields(
        [
            ("name", info.name),
            ("kind", info.kind),
            ("version", f"{info.version} (current)"),
            ("verity", _enforcement(info.verity)),
            ("path", str(info.path)),
            ("realms", ", ".join(info.realms) or "none"),
        ]
    )
    print()
    versions(info.record)
    recent = info.record.history[-5:]
    if recent:
        print("\nrecent changes:")
        for entry in recent:
            print(f"  {entry.time}  {entry.action} -> version {entry.version}  {entry.detail}")


def verification(result: Verification) -> None:
    print(f"appimg {result.appimg} version {result.version} ({result.kind}):")
    for check in result.checks:
        print(f"  {'ok  ' if check.ok else 'FAIL'}  {check.name:<10}  {check.detail}")


def keys(found: list[KeyInfo]) -> None:
    rows = [
        [
            key.channel or "-",
            key.public,
            "revoked" if key.revoked else "trusted",
            _yes(key.signing),
            key.added,
        ]
        for key in found
    ]
    table(["CHANNEL", "PUBLIC KEY", "STATE", "SIGNS", "ADDED"], rows)


def realm_state(info: RealmInfo) -> str:
    if info.current_version is None:
        return "appimg removed"
    if info.outdated:
        return f"outdated (appimg is at version {info.current_version})"
    return "current"


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    if days:
        return f"{days}d{hour}h"
    if hours:
        return f"{hours}h{minute:02d}m"
    return f"{minutes}m{second:02d}s" if minutes else f"{second}s"


def realms(found: list[RealmInfo]) -> None:
    rows = [
        [
            ("*" if r.default else " ") + r.name,
            r.origin.appimg,
            str(r.origin.appimg_version),
            realm_state(r),
            r.state,
            str(r.leader_pid) if r.leader_pid else "-",
            _uptime(r.uptime),
            r.address or "-",
            r.isolation,
        ]
        for r in found
    ]
    headers = ["NAME", "APPIMG", "VERSION", "STATUS", "STATE", "PID", "UPTIME", "ADDRESS"]
    table([*headers, "ISOLATION"], rows)


def _isolation(info: RealmInfo) -> str:
    if info.isolation == "userns" and info.origin.uid_base is not None:
        first = info.origin.uid_base
        return f"userns (root is host uid {first}, range {first}-{first + 65535})"
    return info.isolation


def _booted(info: RealmInfo) -> str:
    if info.leader_pid is None:
        return info.state if info.state != "running" else "running (a command)"
    since = f", up {_uptime(info.uptime)} since {info.started}" if info.started else ""
    where = f", address {info.address}" if info.address else ""
    return f"{info.state} (init {info.leader_pid}{since}{where})"


def realm(info: RealmInfo) -> None:
    fields(
        [
            ("name", info.name + (" (default)" if info.default else "")),
            ("appimg", f"{info.origin.appimg} version {info.origin.appimg_version}"),
            ("status", realm_state(info)),
            ("state", _booted(info)),
            ("isolation", _isolation(info)),
            ("created", info.origin.created),
            ("path", str(info.path)),
        ]
    )
