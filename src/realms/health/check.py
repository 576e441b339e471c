"""``realms check [--repair]``: the store's fsck.

The model: the store's records (appimg records, realms' origins, the default realm's link, the
keyring, the runtime state of booted realms) are the truth a command acts on; the disk and the
machine (subvolumes, image files, mounts, loop devices, lock files, modes) must agree with them.
Each disagreement is a :class:`~realms.health.findings.Problem`: one line, with what ``--repair``
would do. The checks are in four modules, one per part of the store:

- :mod:`realms.health.check_appimgs`: records vs versions on disk;
- :mod:`realms.health.check_realms`: origins vs roots, upper layers, homes, configs, uid ranges;
- :mod:`realms.health.check_mounts`: activations and their users, mounts, loop and dm devices;
- :mod:`realms.health.check_files`: modes, lock files, keys and trust, the default link,
  leftovers, runtime state.

Each object is read under its own lock, shared, one at a time (no lock is held while another
is waited for), so a check can run beside other commands and sees every object whole. With
``--repair`` every problem that has a repair gets it, in the order found, each under the locks
its change needs (taken then, not during the check); then the store is checked again, and a
problem is ``repaired`` when the second check no longer finds it. A repair loses no user data:
what a user made (a realm's directory, a home, a config) is moved to ``removed/``; only what
the store made and nothing refers to (leftovers, unrecorded versions, stale mounts) is deleted.

The cost is a few ``lstat`` and the read of each record: no tree is walked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from realms import log, origin
from realms.errors import RealmsError
from realms.health.check_appimgs import check_appimgs
from realms.health.check_files import check_files
from realms.health.check_mounts import check_mounts
from realms.health.check_realms import check_realms
from realms.health.findings import Finding, Problem
from realms.kinds import IMAGE_KINDS
from realms.store import Store

__all__ = ["CheckReport", "Problem", "check_store"]


@dataclass(frozen=True)
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    repaired: bool = False
    """Whether --repair ran (each problem then says what was done, and whether it is gone)."""
    checked: dict[str, int] = field(default_factory=dict)
    """How many of each were checked: appimgs, realms."""

    @property
    def ok(self) -> bool:
        """No problem is left (after --repair: each one was repaired)."""
        return all(problem.repaired for problem in self.problems)

    @property
    def remaining(self) -> list[Problem]:
        return [problem for problem in self.problems if not problem.repaired]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "repaired": self.repaired,
            "checked": self.checked,
            "problems": [p.to_json() for p in self.problems],
        }


def _collect(store: Store) -> tuple[list[Finding], dict[str, int]]:
    realm_findings, origins = check_realms(store)
    users: dict[tuple[str, int], list[str]] = {}
    for name, made in sorted(origins.items()):
        if made.kind in IMAGE_KINDS:
            users.setdefault((made.appimg, made.appimg_version), []).append(name)
    # A version must stay while realms run on it, or their snapshots' layers need it.
    needs = {key: list(names) for key, names in users.items()}
    for (realm, label), made in sorted(origin.snapshot_origins(store.realms_dir).items()):
        if made.kind in IMAGE_KINDS:
            key = (made.appimg, made.appimg_version)
            needs.setdefault(key, []).append(f"{realm} (snapshot {label})")
    appimg_findings = check_appimgs(store, needs)
    findings = [
        *appimg_findings,
        *realm_findings,
        *check_mounts(store, users),
        *check_files(store),
    ]
    return findings, {
        "appimgs": len(_names(store.appimgs_dir)),
        "realms": len(_names(store.realms_dir)),
    }


def _names(directory: Path) -> list[str]:
    try:
        return [entry for entry in os.listdir(directory) if not entry.startswith(".")]
    except OSError:
        return []


def _repair(finding: Finding) -> str:
    assert finding.fix is not None
    try:
        return finding.fix()
    except (RealmsError, OSError) as error:
        return f"failed: {error}"


def check_store(store: Store, *, repair: bool = False) -> CheckReport:
    """Check the store (see the module docstring); with ``repair``, repair what can be and
    check again."""
    findings, checked = _collect(store)
    if not repair:
        return CheckReport([finding.problem for finding in findings], False, checked)
    done: list[Problem] = []
    for finding in findings:
        if finding.fix is None:
            done.append(finding.problem)
            continue
        where = finding.problem.path.removeprefix(f"{store.root}/")
        with log.step(f"Repairing {finding.problem.object}: {where} ({finding.problem.kind})"):
            result = _repair(finding)
        done.append(replace(finding.problem, repair=result))
    again, checked = _collect(store)
    left = {finding.problem.key for finding in again}
    problems = [replace(problem, repaired=problem.key not in left) for problem in done]
    seen = {problem.key for problem in done}
    # What the repairs brought to light (a realm whose root came back, say).
    problems += [replace(f.problem, repaired=False) for f in again if f.problem.key not in seen]
    return CheckReport(problems, True, checked)
