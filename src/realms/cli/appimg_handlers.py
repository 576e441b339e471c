"""Handlers of ``realms appimg`` and ``realms update-appimg``. Each turns its arguments into
typed values, calls one function of :mod:`realms.api` and prints the result."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from realms import api, log
from realms.cli import output
from realms.cli.call import Call, UsageError
from realms.errors import RealmsError
from realms.units import format_size


def list_(call: Call) -> int:
    found = api.list_appimgs(call.store)
    if call.json:
        output.print_json([a.to_json() for a in found])
    elif not found:
        log.note("No appimgs yet: 'realms appimg import NAME SOURCE' adds one")
    else:
        output.appimgs(found)
    return 0


def show(call: Call) -> int:
    info = api.show_appimg(call.store, call.text("name"))
    if call.json:
        output.print_json(info.to_json())
    else:
        output.appimg(info)
    return 0


def import_(call: Call) -> int:
    source = call.text("source")
    info, version = api.import_appimg(
        call.store, call.text("name"), call.path("source"), new_version=call.flag("new_version")
    )
    size = f" ({format_size(version.size)})" if version.size is not None else ""
    log.note(f"Imported {source} as appimg {info.name} version {version.version}{size}")
    return 0


def versions(call: Call) -> int:
    record = api.appimg_versions(call.store, call.text("name"))
    if call.json:
        output.versions_json(record)
        return 0
    output.versions(record)
    if record.kept is not None:
        kept = record.kept
        log.note(
            f"kept update of version {kept.base} ({kept.detail}, {kept.created}), not "
            f"committed because {kept.reason}: 'realms update-appimg {record.name} "
            "--commit-kept' or '--discard-kept'"
        )
    return 0


def rollback(call: Call) -> int:
    name = call.text("name")
    previous, current = api.rollback_appimg(call.store, name, call.maybe_number("version"))
    log.note(
        f"Appimg {name} is back at version {current} (was {previous}); new realms are "
        f"made from it, and realms made from version {previous} show as outdated"
    )
    return 0


def prune(call: Call) -> int:
    name = call.text("name")
    result = api.prune_appimg(call.store, name, call.maybe_number("keep"))
    kept = ", ".join(map(str, result.kept))
    for number, realms in sorted(result.in_use.items()):
        log.note(f"Keeping version {number}: realms run on it ({', '.join(realms)})")
    if result.removed:
        removed = ", ".join(map(str, result.removed))
        log.note(f"Removed versions {removed} of appimg {name}; kept {kept}")
    else:
        log.note(f"Nothing to prune: appimg {name} keeps versions {kept}")
    return 0


def pin(call: Call) -> int:
    name, number, pinned = call.text("name"), call.number("version"), call.flag("pinned")
    api.pin_version(call.store, name, number, pinned=pinned)
    log.note(f"{'Pinned' if pinned else 'Unpinned'} version {number} of appimg {name}")
    return 0


def build(call: Call) -> int:
    if call.flag("new"):
        target = Path(call.maybe_text("config") or "build.toml")
        api.write_build_template(target)
        log.note(f"Wrote {target}: every key of a build config, set to the defaults")
        return 0
    result = api.build_appimg(
        call.store,
        call.maybe_path("config"),
        name=call.maybe_text("name"),
        output=call.maybe_path("output"),
        rebuild=call.flag("rebuild"),
        explain=_print_decisions if call.flag("explain") else None,
        offline=call.flag("offline"),
    )
    took = f"{result.seconds:.1f}s"
    if result.outcome == "up to date":
        assert result.version is not None
        log.note(
            f"Appimg {result.name} is up to date: version {result.version.version} was built "
            "from the same config against the same mirror state"
        )
    elif result.output is not None:
        log.note(f"Wrote {result.output} ({result.outcome}, {took})")
    else:
        assert result.version is not None
        source = " from the build cache" if result.outcome == "cached" else ""
        log.note(f"Built appimg {result.name} version {result.version.version}{source} in {took}")
    return 0


def _print_decisions(decisions: Sequence[object]) -> None:
    # On stdout, before the build's work (on stderr) starts: "packages: miss: package list
    # changed: +curl".
    for decision in decisions:
        print(decision, flush=True)


def seal(call: Call) -> int:
    name = call.text("name")
    version = api.seal_appimg(
        call.store,
        name,
        channel=call.maybe_text("channel"),
        fs=call.text("fs"),
        verity=not call.flag("no_verity"),
        salt=call.maybe_text("salt"),
    )
    log.note(
        f"Appimg {name} version {version.version} is {version.detail} "
        f"({format_size(version.size or 0)})"
    )
    return 0


def verify(call: Call) -> int:
    result = api.verify_appimg(call.store, call.text("name"), call.maybe_number("version"))
    if call.json:
        output.print_json(result.to_json())
    else:
        output.verification(result)
    if not result.ok:
        failed = next(check for check in result.checks if not check.ok)
        raise RealmsError(
            f"appimg {result.appimg} version {result.version} failed verification: "
            f"{failed.name}: {failed.detail}"
        )
    return 0


def export(call: Call) -> int:
    name, target = call.text("name"), call.text("file")
    version = api.export_appimg(call.store, name, call.path("file"), call.maybe_number("version"))
    log.note(f"Wrote {target}: appimg {name} version {version.version} ({version.kind})")
    return 0


def remove(call: Call) -> int:
    name = call.text("name")
    users = api.remove_appimg(call.store, name)
    log.note(f"Removed appimg {name}")
    if users:
        log.note(
            f"Realms made from it keep working (their root filesystems are their own): "
            f"{', '.join(users)}"
        )
    return 0


def update(call: Call) -> int:
    commit_kept, discard_kept = call.flag("commit_kept"), call.flag("discard_kept")
    kept_option = "--commit-kept" if commit_kept else "--discard-kept" if discard_kept else ""
    if kept_option and (call.trailing is not None or call.flag("discard")):
        raise UsageError(f"{kept_option} takes no command and no --discard")
    result = api.update_appimg(
        call.store,
        call.maybe_text("name"),
        call.trailing or [],
        discard=call.flag("discard"),
        commit_kept=commit_kept,
        discard_kept=discard_kept,
    )
    if result.kept is not None and result.committed is None:
        log.note(
            f"Deleted the kept update of version {result.kept.base}: appimg {result.appimg} "
            f"stays at version {result.base}"
        )
    elif result.committed is not None:
        version = result.committed
        change = f"; {output.change(version)} written" if version.written is not None else ""
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


def tls_verify(call: Call) -> bool | None:
    value = call.maybe_text("tls_verify")
    return None if value is None else value == "true"


def pull(call: Call) -> int:
    source, pull_all = call.maybe_text("source"), call.flag("all")
    if pull_all == (source is not None):
        raise UsageError("name a reference or a pulled appimg, or give --all")
    if pull_all and (call.maybe_text("name") or call.maybe_text("platform")):
        raise UsageError("--all pulls each appimg as before: --name and --platform do not apply")
    results = api.pull_appimg(
        call.store,
        source,
        name=call.maybe_text("name"),
        platform=call.maybe_text("platform"),
        pull_all=pull_all,
        tls_verify=tls_verify(call),
    )
    if call.json:
        output.print_json([result.to_json() for result in results])
        return 0
    for result in results:
        if result.version is None:
            log.note(f"Appimg {result.name} is up to date with {result.ref} ({result.digest})")
        else:
            log.note(
                f"Pulled {result.ref} as appimg {result.name} version {result.version.version} "
                f"({result.version.kind}, {format_size(result.downloaded)} downloaded)"
            )
    if pull_all and not results:
        log.note("No pulled appimg has moved in its registry")
    return 0


def push(call: Call) -> int:
    result = api.push_appimg(
        call.store,
        call.text("name"),
        call.text("ref"),
        version=call.maybe_number("version"),
        tls_verify=tls_verify(call),
    )
    if call.json:
        output.print_json(result.to_json())
        return 0
    reused = f", {result.blobs_reused} blobs already there" if result.blobs_reused else ""
    deltas = (
        f", deltas against versions {', '.join(map(str, result.deltas))}" if result.deltas else ""
    )
    log.note(
        f"Pushed appimg {result.name} version {result.version} to {result.ref} "
        f"({format_size(result.uploaded)} uploaded{reused}{deltas}); digest {result.digest}"
    )
    return 0


def outdated(call: Call) -> int:
    found = api.outdated_appimgs(call.store, tls_verify=tls_verify(call))
    if call.json:
        output.print_json([item.to_json() for item in found])
    elif not found:
        log.note("Every pulled appimg is up to date with its registry")
    else:
        output.table(
            ["APPIMG", "REFERENCE", "PULLED", "NOW"],
            [[o.name, o.ref, o.pulled[:19], (o.current or "not known")[:19]] for o in found],
        )
    return 0
