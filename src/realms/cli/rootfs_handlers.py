"""Handlers of ``realms rebase``, ``realms snapshot`` and ``realms restore``."""

from __future__ import annotations

from realms import api
from realms.cli import output
from realms.cli.call import Call


def rebase(call: Call) -> int:
    result = api.rebase_realm(call.store, call.text("name"))
    output.print_json(result.to_json())
    return 0


def snapshot_take(call: Call) -> int:
    output.print_json(api.snapshot_realm(call.store, call.text("name")).to_json())
    return 0


def snapshot_list(call: Call) -> int:
    output.print_json([s.to_json() for s in api.list_snapshots(call.store, call.text("name"))])
    return 0


def snapshot_remove(call: Call) -> int:
    api.remove_snapshot(call.store, call.text("name"), call.text("label"))
    return 0


def restore(call: Call) -> int:
    api.restore_snapshot(call.store, call.text("name"), call.text("label"))
    return 0
