"""Handlers of ``realms rebase``, ``realms snapshot`` and ``realms restore``."""

from __future__ import annotations

from realms import api, log
from realms.cli import output
from realms.cli.call import Call


def rebase(call: Call) -> int:
    results = api.rebase_realm(
        call.store,
        call.maybe_text("name"),
        to=call.maybe_number("to"),
        undo=call.flag("undo"),
        restart=call.flag("restart"),
        all_outdated=call.flag("all_outdated"),
    )
    failed = [result for result in results if result.error]
    if call.json:
        output.print_json([result.to_json() for result in results])
        return 1 if failed else 0
    if not results:
        log.note("No realm is outdated")
    for result in results:
        where = f"realm {result.realm} (appimg {result.appimg})"
        if result.error:
            log.note(f"Not rebased: {where}: {result.error}")
        elif result.undone:
            log.note(
                f"Undid the rebase of {where}: back on version {result.to_version} with its "
                f"root from before; the rebased root is snapshot pre-restore"
            )
        else:
            kept = ", ".join(result.kept) or "nothing"
            log.note(
                f"Rebased {where} from version {result.from_version} to {result.to_version}, "
                f"kept {kept}; its old root is snapshot pre-rebase "
                f"(undo: realms rebase {result.realm} --undo)"
            )
    if failed:
        log.warn(f"{len(failed)} of {len(results)} realms were not rebased")
    return 1 if failed else 0


def snapshot_take(call: Call) -> int:
    found = api.snapshot_realm(call.store, call.text("name"), call.maybe_text("label"))
    log.note(f"Took snapshot {found.label} of realm {found.realm}")
    return 0


def snapshot_list(call: Call) -> int:
    found = api.list_snapshots(call.store, call.text("name"))
    if call.json:
        output.print_json([s.to_json() for s in found])
    elif not found:
        log.note(f"Realm {call.text('name')} has no snapshots: 'realms snapshot NAME' takes one")
    else:
        output.table(
            ["LABEL", "TAKEN", "APPIMG", "VERSION", "OF"],
            [[s.label, s.created, s.appimg, str(s.appimg_version), s.layer] for s in found],
        )
    return 0


def snapshot_remove(call: Call) -> int:
    found = api.remove_snapshot(call.store, call.text("name"), call.text("label"))
    log.note(f"Removed snapshot {found.label} of realm {found.realm}")
    return 0


def restore(call: Call) -> int:
    found = api.restore_snapshot(call.store, call.text("name"), call.text("label"))
    log.note(
        f"Realm {found.realm} has the root of snapshot {found.label} again (appimg "
        f"{found.appimg} version {found.appimg_version}); the root it had is snapshot pre-restore"
    )
    return 0
