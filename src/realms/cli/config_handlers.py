"""Handler of ``realms config``: every setting of a realm (a table: key, value as TOML, where
it comes from), one setting (a string as it is, anything else as TOML), or a change (a note
saying the value now and where it comes from). ``--json`` prints an object of every setting,
or the one value (also after a change)."""

from __future__ import annotations

import json
from typing import Any

from realms import api, log
from realms.cli import output
from realms.cli.call import Call

_FROM = {"realm": "realm config", "realm-defaults": "[realm-defaults]", "default": "default"}


def _toml(value: Any) -> str:
    # JSON's strings, numbers, booleans and lists of them are TOML's, on one line.
    return json.dumps(value)


def config(call: Call) -> int:
    name, key, value, unset = (
        call.text("name"),
        call.maybe_text("key"),
        call.maybe_text("value"),
        call.maybe_text("unset"),
    )
    result = api.configure_realm(call.store, name, key, value, unset=unset)
    asked = unset or key
    if asked is None:
        if call.json:
            output.print_json(result.to_json())
        else:
            rows = [
                [setting, _toml(found), _FROM[result.sources[setting]]]
                for setting, found in result.values.items()
            ]
            output.table(["KEY", "VALUE", "FROM"], rows)
        return 0
    found = result.values[asked]
    if call.json:
        output.print_json(found)
    elif unset is None and value is None:
        print(found if isinstance(found, str) else _toml(found))
    if unset is not None or value is not None:
        verb = "Unset" if unset is not None else "Set"
        where = _FROM[result.sources[asked]]
        log.note(f"{verb} {asked} of realm {name}: it is {_toml(found)} ({where})")
    return 0
