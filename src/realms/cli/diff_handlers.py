"""Handler of ``realms appimg diff``."""

from __future__ import annotations

from realms import api
from realms.cli import output
from realms.cli.call import Call


def diff(call: Call) -> int:
    result = api.diff_appimg(call.store, call.text("name"), call.number("v1"), call.number("v2"))
    output.print_json(result.to_json())
    return 0
