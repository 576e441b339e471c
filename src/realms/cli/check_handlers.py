"""Handler of ``realms check``."""

from __future__ import annotations

from realms import api
from realms.cli import output
from realms.cli.call import Call


def check(call: Call) -> int:
    report = api.check_store(call.store, repair=call.flag("repair"))
    output.print_json(report.to_json())
    return 0 if report.ok else 1
