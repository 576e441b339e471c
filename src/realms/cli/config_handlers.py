"""Handler of ``realms config``."""

from __future__ import annotations

from realms import api
from realms.cli import output
from realms.cli.call import Call


def config(call: Call) -> int:
    values = api.configure_realm(
        call.store,
        call.text("name"),
        call.maybe_text("key"),
        call.maybe_text("value"),
        unset=call.maybe_text("unset"),
    )
    output.print_json(values)
    return 0
