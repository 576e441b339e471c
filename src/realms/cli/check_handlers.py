"""Handler of ``realms check``: one line per problem with what ``--repair`` would do (or did),
then a summary; ``--json`` prints the report as it is (design.md)."""

from __future__ import annotations

from realms import api
from realms.cli import output
from realms.cli.call import Call


def check(call: Call) -> int:
    report = api.check_store(call.store, repair=call.flag("repair"))
    if call.json:
        output.print_json(report.to_json())
        return 0 if report.ok else 1
    root = call.store.root
    for problem in report.problems:
        where = problem.path
        if where.startswith(f"{root}/"):
            where = where[len(str(root)) + 1 :]
        if not report.repaired:
            action = f"--repair: {problem.repair}"
        elif problem.repaired:
            action = f"repaired: {problem.repair}"
        else:
            action = f"NOT repaired: {problem.repair}"
        print(f"{problem.kind}: {problem.object}: {where}: {problem.detail}; {action}")
    checked = ", ".join(f"{count} {what}" for what, count in report.checked.items())
    if report.ok:
        fixed = f", {len(report.problems)} problems repaired" if report.problems else ""
        print(f"store ok ({checked} checked{fixed})")
        return 0
    left = report.remaining
    fixable = sum(1 for p in left if not p.repair.startswith("none: "))
    hint = (
        f"; {fixable} can be repaired: realms check --repair"
        if fixable and not report.repaired
        else ""
    )
    print(f"{len(left)} problem{'s' if len(left) != 1 else ''} ({checked} checked){hint}")
    return 1
