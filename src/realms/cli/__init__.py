"""The ``realms`` command line: parses arguments, calls :mod:`realms.api`, prints the result.

Nothing here decides anything about the store. Errors from the API are printed as one line
(``realms: error: ...``, then ``hint: ...`` where there is one) with exit status 1; usage errors
exit 2; ``run`` passes the command's exit status through.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from realms import __version__, api, log
from realms.errors import Interrupted, RealmsError, readable
from realms.realm import RealmInfo
from realms.store import Store, out_of_space_hint
from realms.units import format_size, parse_size

Handler = Callable[[argparse.Namespace], int]


# Output helpers


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    for row in [headers, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def _print_fields(fields: list[tuple[str, str]]) -> None:
    width = max(len(key) for key, _ in fields) + 1
    for key, value in fields:
        print(f"{key + ':':<{width}} {value}")


def _store(args: argparse.Namespace) -> Store:
    return api.open_store(args.store)


# Commands


def cmd_init(args: argparse.Namespace) -> int:
    pool_size = parse_size(args.pool_size)
    result = api.init(api.locate(args.store), backend=args.backend, pool_size=pool_size)
    where = f" (btrfs pool {result.pool_image})" if result.pool_image else ""
    if result.created:
        log.note(f"Store ready at {result.store}: {result.backend} backend{where}")
    elif result.mounted:
        log.note(f"Store at {result.store} mounted again{where}")
    else:
        log.note(f"Store at {result.store} is already set up: {result.backend} backend{where}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = api.status(_store(args))
    data = status.to_json()
    if args.json:
        _print_json(data)
        return 0
    yes = {True: "yes", False: "no"}
    features = data["kernel"]
    used = status.total_bytes - status.free_bytes
    pool = f", pool {data['pool']}" if data["pool"] else ""
    verity_detail = {
        "kernel": "dm-verity in the kernel checks every read",
        "userspace": "whole image checked in userspace before a read-only mount",
        "none": "policy 'kernel' but this kernel has no dm-verity: sealed realms are refused",
    }[status.verity]
    _print_fields(
        [
            ("store", f"{data['store']} ({data['backend']} backend{pool})"),
            ("space", f"{format_size(used)} used of {format_size(status.total_bytes)}"),
            ("verity", f"{status.verity} ({verity_detail})"),
            ("kernel", ", ".join(f"{k.replace('_', '-')} {yes[v]}" for k, v in features.items())),
            (
                "systemd",
                "PID 1" if data["systemd_pid1"] else "not PID 1 (nspawn runs unregistered)",
            ),
            ("appimgs", str(data["appimgs"])),
            ("realms", f"{data['realms']} (default: {data['default_realm'] or 'none'})"),
            ("leftovers", f"{data['leftovers']} temporary names (cleaned by the next command)"),
        ]
    )
    if status.activations:
        print("\nactive images:")
        rows = [
            [
                f"{found.appimg} v{found.version}",
                found.device,
                {"userspace": "userspace (checked at activation)"}.get(
                    found.enforcement, found.enforcement
                ),
                ", ".join(found.users) or "none (released by the next realm command)",
            ]
            for found in status.activations
        ]
        _print_table(["IMAGE", "DEVICE", "VERITY", "REALMS"], rows)
    return 0


def cmd_appimg_list(args: argparse.Namespace) -> int:
    appimgs = api.list_appimgs(_store(args))
    if args.json:
        _print_json([a.to_json() for a in appimgs])
        return 0
    if not appimgs:
        log.note("No appimgs yet: 'realms appimg import NAME SOURCE' adds one")
        return 0
    rows = [
        [
            a.name,
            a.kind,
            str(a.version),
            str(len(a.record.versions)),
            ", ".join(a.realms) or "-",
        ]
        for a in appimgs
    ]
    _print_table(["NAME", "KIND", "VERSION", "VERSIONS", "REALMS"], rows)
    return 0


def _change(version: Any) -> str:
    if version.written is None:
        return "-"
    files = version.files_changed
    return f"{files} file{'' if files == 1 else 's'}, {format_size(version.written)}"


def _print_versions(record: Any) -> None:
    rows = [
        [
            ("*" if v.version == record.current else " ") + str(v.version),
            v.kind,
            v.created,
            v.origin + (f" of {v.parent}" if v.origin == "update" else ""),
            format_size(v.size) if v.size is not None else "-",
            _change(v),
            "yes" if v.pinned else "no",
            v.detail,
        ]
        for v in record.versions
    ]
    _print_table(
        ["VERSION", "KIND", "CREATED", "MADE BY", "SIZE", "WRITTEN", "PINNED", "FROM"], rows
    )


def _print_appimg(info: Any) -> None:
    _print_fields(
        [
            ("name", info.name),
            ("kind", info.kind),
            ("version", f"{info.version} (current)"),
            (
                "verity",
                {"userspace": "userspace (checked at activation)"}.get(info.verity, info.verity),
            ),
            ("path", str(info.path)),
            ("realms", ", ".join(info.realms) or "none"),
        ]
    )
    print()
    _print_versions(info.record)
    recent = info.record.history[-5:]
    if recent:
        print("\nrecent changes:")
        for change in recent:
            print(f"  {change.time}  {change.action} -> version {change.version}  {change.detail}")


def cmd_appimg_show(args: argparse.Namespace) -> int:
    info = api.show_appimg(_store(args), args.name)
    if args.json:
        _print_json(info.to_json())
    else:
        _print_appimg(info)
    return 0


def cmd_appimg_import(args: argparse.Namespace) -> int:
    info, version = api.import_appimg(
        _store(args), args.name, Path(args.source), new_version=args.new_version
    )
    size = f" ({format_size(version.size)})" if version.size is not None else ""
    log.note(f"Imported {args.source} as appimg {info.name} version {version.version}{size}")
    return 0


def cmd_appimg_versions(args: argparse.Namespace) -> int:
    record = api.appimg_versions(_store(args), args.name)
    if args.json:
        _print_json(
            [{**v.to_json(), "current": v.version == record.current} for v in record.versions]
        )
    else:
        _print_versions(record)
        if record.kept is not None:
            kept = record.kept
            log.note(
                f"kept update of version {kept.base} ({kept.detail}, {kept.created}), not "
                f"committed because {kept.reason}: 'realms update-appimg {record.name} "
                "--commit-kept' or '--discard-kept'"
            )
    return 0


def cmd_appimg_rollback(args: argparse.Namespace) -> int:
    previous, current = api.rollback_appimg(_store(args), args.name, args.version)
    log.note(
        f"Appimg {args.name} is back at version {current} (was {previous}); new realms are "
        f"made from it, and realms made from version {previous} show as outdated"
    )
    return 0


def cmd_appimg_prune(args: argparse.Namespace) -> int:
    result = api.prune_appimg(_store(args), args.name, args.keep)
    kept = ", ".join(map(str, result.kept))
    for number, realms in sorted(result.in_use.items()):
        log.note(f"Keeping version {number}: realms run on it ({', '.join(realms)})")
    if result.removed:
        removed = ", ".join(map(str, result.removed))
        log.note(f"Removed versions {removed} of appimg {args.name}; kept {kept}")
    else:
        log.note(f"Nothing to prune: appimg {args.name} keeps versions {kept}")
    return 0


def cmd_appimg_pin(args: argparse.Namespace) -> int:
    api.pin_version(_store(args), args.name, args.version, pinned=args.pinned)
    verb = "Pinned" if args.pinned else "Unpinned"
    log.note(f"{verb} version {args.version} of appimg {args.name}")
    return 0


def cmd_appimg_build(args: argparse.Namespace) -> int:
    if args.new:
        target = Path(args.config or "build.toml")
        api.write_build_template(target)
        log.note(f"Wrote {target}: every key of a build config, set to the defaults")
        return 0
    result = api.build_appimg(
        _store(args),
        Path(args.config) if args.config else None,
        name=args.name,
        output=Path(args.output) if args.output else None,
        rebuild=args.rebuild,
    )
    took = f"{result.seconds:.1f}s"
    if result.outcome == "up to date":
        assert result.version is not None
        log.note(
            f"Appimg {result.name} is up to date: version {result.version.version} was built "
            "from the same inputs (--rebuild builds it again, with the mirror's newest packages)"
        )
    elif result.output is not None:
        log.note(f"Wrote {result.output} ({result.outcome}, {took})")
    else:
        assert result.version is not None
        source = " from the build cache" if result.outcome == "cached" else ""
        log.note(f"Built appimg {result.name} version {result.version.version}{source} in {took}")
    return 0


def cmd_appimg_seal(args: argparse.Namespace) -> int:
    version = api.seal_appimg(
        _store(args), args.name, channel=args.channel, fs=args.fs, verity=not args.no_verity
    )
    log.note(
        f"Appimg {args.name} version {version.version} is {version.detail} "
        f"({format_size(version.size or 0)})"
    )
    return 0


def cmd_appimg_verify(args: argparse.Namespace) -> int:
    result = api.verify_appimg(_store(args), args.name, args.version)
    if args.json:
        _print_json(result.to_json())
    else:
        print(f"appimg {result.appimg} version {result.version} ({result.kind}):")
        for check in result.checks:
            print(f"  {'ok  ' if check.ok else 'FAIL'}  {check.name:<10}  {check.detail}")
    if not result.ok:
        failed = next(check for check in result.checks if not check.ok)
        raise RealmsError(
            f"appimg {result.appimg} version {result.version} failed verification: "
            f"{failed.name}: {failed.detail}"
        )
    return 0


def cmd_appimg_export(args: argparse.Namespace) -> int:
    version = api.export_appimg(_store(args), args.name, Path(args.file), args.version)
    log.note(f"Wrote {args.file}: appimg {args.name} version {version.version} ({version.kind})")
    return 0


def cmd_key_generate(args: argparse.Namespace) -> int:
    public = api.keyring(_store(args)).generate(args.channel, replace=args.replace)
    log.note(f"New signing key for channel {args.channel}; its public key is trusted:")
    print(public)
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    found = api.keyring(_store(args)).keys()
    if args.json:
        _print_json([key.to_json() for key in found])
        return 0
    if not found:
        log.note("No keys yet: 'realms key generate CHANNEL' makes one")
        return 0
    rows = [
        [
            key.channel or "-",
            key.public,
            "revoked" if key.revoked else "trusted",
            "yes" if key.signing else "no",
            key.added,
        ]
        for key in found
    ]
    _print_table(["CHANNEL", "PUBLIC KEY", "STATE", "SIGNS", "ADDED"], rows)
    return 0


def cmd_key_export(args: argparse.Namespace) -> int:
    from realms.image import keys

    ring = api.keyring(_store(args))
    public = ring.signing_public(keys.check_channel(args.channel))
    if public is None:
        trusted = ring.trusted(args.channel)
        if len(trusted) != 1:
            raise RealmsError(
                f"no signing key for channel {args.channel!r} in this store",
                hint="'realms key list' shows the trusted keys",
            )
        public = trusted[0]
    print(public)
    return 0


def cmd_key_trust(args: argparse.Namespace) -> int:
    from realms.image import keys

    public = keys.parse_public_key(args.pubkey)
    added = api.keyring(_store(args)).trust(args.channel, public)
    log.note(f"{'Trusted' if added else 'Already trusted:'} {public} for channel {args.channel}")
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    from realms.image import keys

    public = keys.parse_public_key(args.pubkey)
    channels = api.keyring(_store(args)).revoke(public)
    where = f" (it was trusted for {', '.join(channels)})" if channels else ""
    log.note(f"Revoked {public}{where}: images it signed fail verification from now on")
    return 0


def cmd_update_appimg(args: argparse.Namespace) -> int:
    kept_option = (
        "--commit-kept" if args.commit_kept else "--discard-kept" if args.discard_kept else ""
    )
    if kept_option and (args.trailing is not None or args.discard):
        raise _UsageError(f"{kept_option} takes no command and no --discard")
    result = api.update_appimg(
        _store(args),
        args.name,
        args.trailing or [],
        discard=args.discard,
        commit_kept=args.commit_kept,
        discard_kept=args.discard_kept,
    )
    if result.kept is not None and result.committed is None:
        log.note(
            f"Deleted the kept update of version {result.kept.base}: appimg {result.appimg} "
            f"stays at version {result.base}"
        )
    elif result.committed is not None:
        version = result.committed
        change = f"; {_change(version)} written" if version.written is not None else ""
        log.note(
            f"Committed appimg {result.appimg} version {version.version} "
            f"(from version {result.base}{change})"
        )
    elif result.discarded:
        log.note(f"Discarded the changes: appimg {result.appimg} stays at version {result.base}")
    else:
        log.note(
            f"Exited with status {result.status}: nothing committed, appimg {result.appimg} "
            f"stays at version {result.base} (exit 0 commits)"
        )
    return result.status


def cmd_appimg_remove(args: argparse.Namespace) -> int:
    users = api.remove_appimg(_store(args), args.name)
    log.note(f"Removed appimg {args.name}")
    if users:
        log.note(
            f"Realms made from it keep working (their root filesystems are their own): "
            f"{', '.join(users)}"
        )
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    info = api.new_realm(_store(args), args.name, args.appimg)
    log.note(
        f"Created realm {info.name} from appimg {info.origin.appimg} version "
        f"{info.origin.appimg_version}" + (" (default realm)" if info.default else "")
    )
    return 0


def _realm_state(info: Any) -> str:
    if info.current_version is None:
        return "appimg removed"
    if info.outdated:
        return f"outdated (appimg is at version {info.current_version})"
    return "current"


def cmd_list(args: argparse.Namespace) -> int:
    realms = api.list_realms(_store(args))
    if args.json:
        _print_json([r.to_json() for r in realms])
        return 0
    if not realms:
        log.note("No realms yet: 'realms new NAME' makes one")
        return 0
    rows = [
        [
            ("*" if r.default else " ") + r.name,
            r.origin.appimg,
            str(r.origin.appimg_version),
            _realm_state(r),
            "yes" if r.running else "no",
            r.isolation,
        ]
        for r in realms
    ]
    _print_table(["NAME", "APPIMG", "VERSION", "STATUS", "RUNNING", "ISOLATION"], rows)
    return 0


def _isolation_text(info: RealmInfo) -> str:
    if info.isolation == "userns" and info.origin.uid_base is not None:
        first = info.origin.uid_base
        return f"userns (root is host uid {first}, range {first}-{first + 65535})"
    return info.isolation


def cmd_show(args: argparse.Namespace) -> int:
    info = api.show_realm(_store(args), args.name)
    if args.json:
        _print_json(info.to_json())
        return 0
    _print_fields(
        [
            ("name", info.name + (" (default)" if info.default else "")),
            ("appimg", f"{info.origin.appimg} version {info.origin.appimg_version}"),
            ("status", _realm_state(info)),
            ("running", "yes" if info.running else "no"),
            ("isolation", _isolation_text(info)),
            ("created", info.origin.created),
            ("path", str(info.path)),
        ]
    )
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    kept = api.remove_realm(_store(args), args.name, keep_home=args.keep_home)
    log.note(f"Removed realm {args.name}" + (f"; its home is kept in {kept}" if kept else ""))
    return 0


def cmd_default(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.name:
        api.set_default_realm(store, args.name)
        log.note(f"Default realm is now {args.name}")
        return 0
    name = api.default_realm(store)
    if name is None:
        raise RealmsError("no default realm", hint="'realms default NAME' sets one")
    print(name)
    return 0


def cmd_shell(args: argparse.Namespace) -> int:
    store = _store(args)
    name = args.name or api.default_realm(store)
    if name is None:
        raise RealmsError("no realm named and no default realm", hint="name one: realms shell NAME")
    return api.run_in_realm(store, name, [], root=args.root)


def cmd_run(args: argparse.Namespace) -> int:
    if not args.trailing:
        raise _UsageError("run needs a command after --: realms run NAME -- COMMAND ...")
    return api.run_in_realm(_store(args), args.name, args.trailing, root=args.root)


# Parsing


_TRAILING_COMMANDS = {"run", "update-appimg"}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"realms: error: {readable(message)}", file=sys.stderr)
        raise SystemExit(2)


def _common() -> _Parser:
    """Global options, accepted before or after the command."""
    common = _Parser(add_help=False)
    group = common.add_argument_group("global options")
    group.add_argument(
        "--store",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="the store directory (default: $REALMS_STORE, else /var/lib/realms)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="also show every external command that runs",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show only errors, warnings and results",
    )
    return common


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON with stable keys")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog="realms",
        description="Application images (appimgs) and the realms (containers) made from them.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"realms {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        group: Any, name: str, handler: Handler, help_text: str, description: str = ""
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=help_text, description=description or help_text, parents=[common]
        )
        sub.set_defaults(handler=handler)
        return sub

    init = command(
        commands,
        "init",
        cmd_init,
        "prepare the store (safe to run again)",
        "Prepare the store. If its directory is on btrfs it is used as it is; otherwise a btrfs "
        "filesystem is made in a sparse image file beside it (DIR.pool.img) and mounted on it. "
        "Run again, it changes nothing, or mounts that pool again after a reboot.",
    )
    init.add_argument(
        "--pool-size",
        default="32G",
        metavar="SIZE",
        help="size of a new pool image (sparse: it takes only what is used; default 32G)",
    )
    init.add_argument(
        "--backend",
        choices=["auto", "btrfs", "copy"],
        default="auto",
        help="btrfs (snapshots; a pool image if the directory is not on btrfs), copy (plain "
        "directories, realms made with cp --reflink=auto), or auto (btrfs; default)",
    )

    status = command(
        commands,
        "status",
        cmd_status,
        "show the store, its backend, the kernel's features and the verity enforcement",
    )
    _json_flag(status)

    appimg = commands.add_parser(
        "appimg",
        help="manage application images",
        parents=[common],
        description="Manage application images: the root filesystems realms are made from.",
    )
    appimg_commands = appimg.add_subparsers(dest="appimg_command", metavar="COMMAND", required=True)
    appimg_list = command(appimg_commands, "list", cmd_appimg_list, "list appimgs")
    _json_flag(appimg_list)
    appimg_show = command(
        appimg_commands,
        "show",
        cmd_appimg_show,
        "show an appimg: its versions and the realms made from it",
    )
    appimg_show.add_argument("name")
    _json_flag(appimg_show)
    appimg_import = command(
        appimg_commands,
        "import",
        cmd_appimg_import,
        "import a directory or a root filesystem tarball as an appimg",
        "Import SOURCE as a new appimg of kind tree: a directory (copied with cp -a) or a "
        "tarball (.tar, .tar.gz, .tar.xz, .tar.zst, .tar.bz2; every entry is checked first, "
        "then it is extracted keeping ownership, modes, xattrs, links and device nodes). The "
        "result becomes read-only version 1.",
    )
    appimg_import.add_argument("name")
    appimg_import.add_argument("source", help="a directory or a tarball")
    appimg_import.add_argument(
        "--new-version",
        action="store_true",
        help="import as the next version of the existing appimg NAME (realms made before keep "
        "their version)",
    )
    appimg_build = command(
        appimg_commands,
        "build",
        cmd_appimg_build,
        "build a Debian-based appimg from a declarative config (default: base)",
        "Build a tree appimg from CONFIG (a TOML file; without one, the default appimg base: "
        "Debian trixie with a user 'user', uid 1000) and commit it as the appimg's new current "
        "version, or write it to --output. Downloaded packages and finished builds are cached "
        "in the store: a build whose inputs (config, the files and scripts it names, release, "
        "mirror, packages) did not change reuses its result. The log of every build is kept in "
        "the store's logs/ directory.",
    )
    appimg_build.add_argument("config", nargs="?", metavar="CONFIG", help="the build config")
    appimg_build.add_argument("--name", help="the appimg to build (default: the config's name)")
    appimg_build.add_argument(
        "--new",
        action="store_true",
        help="write a commented template config to CONFIG (default: build.toml) and stop",
    )
    appimg_build.add_argument(
        "--output",
        metavar="FILE",
        help="write the result as a tarball (.tar, .tar.gz, .tar.xz, .tar.zst), not a version",
    )
    appimg_build.add_argument(
        "--rebuild",
        action="store_true",
        help="build even when the inputs did not change (to get the mirror's newest packages)",
    )
    seal = command(
        appimg_commands,
        "seal",
        cmd_appimg_seal,
        "make a sealed version (dm-verity, signed) from the current tree version",
        "Make a new version from the appimg's current tree version: a filesystem image (ext4, "
        "or erofs: smaller, compressed) in Citadel's RealmFS layout, with a dm-verity hash tree "
        "over it (fresh random salt) and its metainfo signed with the channel's key, and make "
        "it current. --no-verity makes a plain, unsigned block version instead.",
    )
    seal.add_argument("name")
    seal.add_argument("--channel", help="the signing key's channel (default: realmfs-user)")
    seal.add_argument("--fs", choices=["ext4", "erofs"], default="ext4", help="default: ext4")
    seal.add_argument(
        "--no-verity", action="store_true", help="a block version: no hash tree, no signature"
    )
    verify = command(
        appimg_commands,
        "verify",
        cmd_appimg_verify,
        "check a version: header, signature against trusted keys, every data and hash block",
        "Check a version (default: the current one). For an image: the header byte for byte, "
        "the size, the signature against the trusted and unrevoked keys of its channel, the "
        "filesystem, and every data and hash block (the first bad one is named). Exits 1 when "
        "a check fails.",
    )
    verify.add_argument("name")
    verify.add_argument("--version", type=int, help="default: the current version")
    _json_flag(verify)
    export = command(
        appimg_commands,
        "export",
        cmd_appimg_export,
        "write a version to a file: an image version as its image, a tree as a tarball",
    )
    export.add_argument("name")
    export.add_argument("file", help="for a tree version: .tar, .tar.gz, .tar.xz or .tar.zst")
    export.add_argument("--version", type=int, help="default: the current version")
    appimg_versions = command(
        appimg_commands,
        "versions",
        cmd_appimg_versions,
        "list an appimg's versions: when and how each was made, what it changed, pins",
    )
    appimg_versions.add_argument("name")
    _json_flag(appimg_versions)
    appimg_rollback = command(
        appimg_commands,
        "rollback",
        cmd_appimg_rollback,
        "make an earlier version current again (recorded in the appimg's history)",
        "Make VERSION (default: the newest version older than the current one) the current "
        "version: new realms are made from it. Nothing is deleted; realms are not changed.",
    )
    appimg_rollback.add_argument("name")
    appimg_rollback.add_argument("version", nargs="?", type=int)
    appimg_prune = command(
        appimg_commands,
        "prune",
        cmd_appimg_prune,
        "delete old versions, never the current one, pinned ones, or images realms run on",
        "Delete all but the N newest versions of the appimg (N: --keep, else keep-versions of "
        "the config, 3). The current version, pinned versions and block or sealed versions "
        "that realms run on are always kept; realms made from deleted tree versions keep "
        "working (their root filesystems are their own).",
    )
    appimg_prune.add_argument("name")
    appimg_prune.add_argument("--keep", type=int, metavar="N", help="how many versions to keep")
    for verb, pinned, text in (
        ("pin", True, "keep a version from being pruned"),
        ("unpin", False, "let a pinned version be pruned again"),
    ):
        pin = command(appimg_commands, verb, cmd_appimg_pin, text)
        pin.add_argument("name")
        pin.add_argument("version", type=int)
        pin.set_defaults(pinned=pinned)
    appimg_remove = command(
        appimg_commands,
        "remove",
        cmd_appimg_remove,
        "remove an appimg and all its versions (refused while realms run on its images; "
        "realms made from its tree versions keep working)",
    )
    appimg_remove.add_argument("name")

    key = commands.add_parser(
        "key",
        help="manage signing keys and trusted keys",
        parents=[common],
        description="Ed25519 keys that sign sealed images, per channel; several trusted keys "
        "per channel, and revocation.",
    )
    key_commands = key.add_subparsers(dest="key_command", metavar="COMMAND", required=True)
    generate = command(
        key_commands,
        "generate",
        cmd_key_generate,
        "make the channel's signing key (kept mode 0600 in the store) and trust it",
    )
    generate.add_argument("channel")
    generate.add_argument(
        "--replace",
        action="store_true",
        help="replace the channel's signing key; the old public key stays trusted until revoked",
    )
    key_list = command(key_commands, "list", cmd_key_list, "list trusted and revoked keys")
    _json_flag(key_list)
    key_export = command(
        key_commands, "export", cmd_key_export, "print the channel's public key in hex"
    )
    key_export.add_argument("channel")
    trust = command(
        key_commands, "trust", cmd_key_trust, "trust a public key for a channel (several may be)"
    )
    trust.add_argument("channel")
    trust.add_argument("pubkey", help="64 hex characters, or a file holding them")
    revoke = command(
        key_commands,
        "revoke",
        cmd_key_revoke,
        "revoke a public key: every image it signed fails verification",
    )
    revoke.add_argument("pubkey", help="64 hex characters, or a file holding them")
    update = command(
        commands,
        "update-appimg",
        cmd_update_appimg,
        "change an appimg in a container with a root shell (or a command); exit 0 commits",
        "Open a root shell (or run COMMAND) in a container on a working snapshot of the appimg's "
        "current version (NAME: default-appimg of the config), with the host's network. When "
        "it exits with status 0 the snapshot becomes the appimg's new current version; any "
        "other status, --discard, or realms being stopped or killed leaves the appimg as it "
        "was. Realms are never changed: realms made before show as outdated. The exit status "
        "is passed through. An update commits only on the version it started from: if another "
        "version became current while it ran (an import, a build, a seal, a rollback), "
        "nothing is committed and its tree is kept (appimg/NAME/kept-update, shown by "
        "'realms appimg versions') until --commit-kept commits it anyway as the next version "
        "or --discard-kept deletes it; no other update of the appimg starts meanwhile.",
    )
    update.add_argument("name", nargs="?", help="default: the default appimg")
    update.add_argument(
        "--discard", action="store_true", help="never commit: a scratch session on a copy"
    )
    kept = update.add_mutually_exclusive_group()
    kept.add_argument(
        "--commit-kept",
        action="store_true",
        help="commit the kept update (one refused because another version became current "
        "while it ran) anyway, as the next version",
    )
    kept.add_argument("--discard-kept", action="store_true", help="delete the kept update")
    update.usage = (
        "realms update-appimg [-h] [--discard] [NAME] [-- COMMAND [ARG ...]]\n"
        "       realms update-appimg [-h] [NAME] --commit-kept | --discard-kept"
    )
    new = command(
        commands,
        "new",
        cmd_new,
        "make a realm from an appimg",
        "Make a realm from the appimg's current version, with a home made from the store's "
        "skel/. From a tree version, its root filesystem is a writable snapshot (zero cost on "
        "btrfs); from a block or sealed version, a writable layer over the image, which is "
        "checked (sealed: signature, and dm-verity or every block) and mounted once for all "
        "the realms made from it. The first realm becomes the default realm.",
    )
    new.add_argument("name")
    new.add_argument(
        "--appimg", metavar="APPIMG", help="default: default-appimg in the config (base)"
    )

    realm_list = command(
        commands, "list", cmd_list, "list realms, their appimg version, and whether it is outdated"
    )
    _json_flag(realm_list)
    show = command(commands, "show", cmd_show, "show a realm")
    show.add_argument("name")
    _json_flag(show)
    remove = command(
        commands, "remove", cmd_remove, "remove a realm (refused while something runs in it)"
    )
    remove.add_argument("name")
    remove.add_argument(
        "--keep-home",
        action="store_true",
        help="move the realm's home to the store's removed/ directory instead of deleting it",
    )
    shell = command(
        commands,
        "shell",
        cmd_shell,
        "open a login shell in a realm (as the realm's user, uid 1000, unless --root)",
    )
    shell.add_argument("name", nargs="?", help="default: the default realm")
    shell.add_argument("--root", action="store_true", help="a root shell")
    run = command(
        commands,
        "run",
        cmd_run,
        "run a command in a realm and pass its exit status through",
        "Run COMMAND in realm NAME with systemd-nspawn, as the realm's user (uid 1000, in "
        "/home/user) unless --root. Its exit status becomes realms' exit status.",
    )
    run.add_argument("name")
    run.add_argument("--root", action="store_true", help="run as root")
    run.usage = "realms run [-h] [--root] NAME -- COMMAND [ARG ...]"
    default = command(
        commands, "default", cmd_default, "print the default realm, or set it to NAME"
    )
    default.add_argument("name", nargs="?")
    return parser


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # For the commands that run one, everything after the first "--" is a command to run,
    # never options of realms (argparse would take "realms run r -- cmd --root" as realms').
    trailing = None
    if "--" in words and _TRAILING_COMMANDS & set(words[: words.index("--")]):
        split = words.index("--")
        words, trailing = words[:split], words[split + 1 :]
    args = parser.parse_args(words)
    args.trailing = trailing
    args.store = getattr(args, "store", None)
    verbose = getattr(args, "verbose", False)
    quiet = getattr(args, "quiet", False)
    log.setup(log.VERBOSE if verbose else log.QUIET if quiet else log.NORMAL)
    # A terminated command unwinds like an exception, so that temporary names are removed.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        if os.geteuid() != 0 and not getattr(args, "new", False):
            raise RealmsError(
                "realms needs root: it makes btrfs subvolumes, mounts and containers",
                hint="run it with sudo",
            )
        handler: Handler = args.handler
        return handler(args)
    except _UsageError as error:
        parser.error(str(error))
    except RealmsError as error:
        _print_error(error.message, error.hint, error.details)
        return 1
    except KeyboardInterrupt:
        _print_error("interrupted", None)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (realms list | head): nothing left to say.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as error:
        detail = f": {error.filename}" if error.filename else ""
        hint = None
        if error.errno == errno.ENOSPC:
            hint = out_of_space_hint(api.locate(args.store), error.filename)
        _print_error(f"{error.strerror or error}{detail}", hint)
        if verbose:
            traceback.print_exc()
        return 1
    except Exception as error:
        _print_error(
            f"internal error: {type(error).__name__}: {error}",
            "this is a bug in realms; run again with -v for the traceback",
        )
        if verbose:
            traceback.print_exc()
        return 1


def _print_error(message: str, hint: str | None, details: list[str] | None = None) -> None:
    log.end_line()
    # RealmsErrors are readable already; an OSError's file name or an internal error is not.
    print(f"realms: error: {readable(message)}", file=sys.stderr)
    for line in details or []:
        print(f"  | {readable(line)}", file=sys.stderr)
    if hint:
        print(f"hint: {readable(hint)}", file=sys.stderr)
