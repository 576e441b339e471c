"""Handler of ``realms appimg diff``: one line per path (``+`` added, ``-`` removed, ``~``
changed, with what changed) in path order, then a summary line; ``--json`` prints the result
as is."""

from __future__ import annotations

import os

from realms import api
from realms.cli import output
from realms.cli.call import Call


def shown(path: str) -> str:
    """A path from inside a version, safe to print on one line: undecodable bytes as ``\\xNN``,
    control characters (a newline in a name) escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def diff(call: Call) -> int:
    name, v1, v2 = call.text("name"), call.number("v1"), call.number("v2")
    result = api.diff_appimg(call.store, name, v1, v2)
    if call.json:
        output.print_json(result.to_json())
        return 0
    lines = [f"+ {shown(p)}" for p in result.added]
    lines += [f"- {shown(p)}" for p in result.removed]
    lines += [f"~ {shown(c.path)} ({', '.join(c.what)})" for c in result.changed]
    # One list in path order, as diff tools print it.
    for line in sorted(lines, key=lambda line: line[2:]):
        print(line)
    if result.same:
        print(f"no differences: versions {v1} and {v2} of appimg {name} have the same files")
    else:
        print(
            f"{len(result.added)} added, {len(result.removed)} removed, "
            f"{len(result.changed)} changed from version {v1} to {v2} of appimg {name}"
        )
    return 0
