"""Handlers of ``realms df`` and ``realms gc``."""

from __future__ import annotations

from realms import api
from realms.cli import output
from realms.cli.call import Call


def df(call: Call) -> int:
    output.print_json(api.disk_usage(call.store).to_json())
    return 0


def gc(call: Call) -> int:
    output.print_json(api.collect_garbage(call.store, dry_run=call.flag("dry_run")).to_json())
    return 0
