"""What ``realms check`` finds: a :class:`Problem` (what a user reads, one line) and the
:class:`Finding` that pairs it with the repair ``--repair`` runs.

A repair is a function that returns what it did, in a few words, or raises
:class:`realms.errors.RealmsError` / :class:`OSError` when it could not; a problem without a
repair is reported with what a person can do instead. Repairs never delete what a user made:
they move it to ``removed/`` (:func:`move_aside`), and delete only what the store made and can
make again (a leftover, an unrecorded version, a stale mount).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realms.store import Store
from realms.system.fs import fsync_dir, rename_noreplace
from realms.units import now

Repair = Callable[[], str]


@dataclass(frozen=True)
class Problem:
    kind: str
    """What is wrong, as a word a script can test (``version-missing``, ``leftover``...)."""
    object: str
    """What it belongs to: ``appimg NAME``, ``realm NAME``, ``store``, ``keys``..."""
    path: str
    detail: str
    repair: str
    """What --repair would do (or, after --repair, what it did)."""
    repaired: bool | None = None
    """After --repair: whether the problem is gone; None without --repair."""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "object": self.object,
            "path": self.path,
            "detail": self.detail,
            "repair": self.repair,
            "repaired": self.repaired,
        }

    @property
    def key(self) -> tuple[str, str]:
        """What makes two reports' problems the same one (the re-check after a repair)."""
        return (self.kind, self.path)


@dataclass(frozen=True)
class Finding:
    problem: Problem
    fix: Repair | None = None
    """None: --repair cannot fix it (``problem.repair`` says what a person can do)."""


NO_REPAIR = "none: "


def finding(  # noqa: PLR0917 (a problem's fields, in their order)
    kind: str, what: str, path: Path | str, detail: str, repair: str, fix: Repair | None = None
) -> Finding:
    """A finding; ``repair`` says what ``fix`` does, or (no ``fix``) what a person can do."""
    text = repair if fix is not None else NO_REPAIR + repair
    return Finding(Problem(kind, what, str(path), detail, text), fix)


def move_aside(store: Store, path: Path, name: str) -> str:
    """Move ``path`` (a realm's directory, a home, a damaged file) into ``removed/`` under a
    new name, never over anything there; return where it went. Nothing is deleted."""
    store.removed_dir.mkdir(mode=0o755, exist_ok=True)
    stamp = now().replace(":", "")
    target = store.removed_dir / f"{name}-{stamp}"
    number = 1
    while os.path.lexists(target):
        number += 1
        target = store.removed_dir / f"{name}-{stamp}-{number}"
    rename_noreplace(path, target)
    fsync_dir(store.removed_dir)
    fsync_dir(path.parent)
    return f"moved to {target.relative_to(store.root)}"


def relative(store: Store, path: Path) -> str:
    """``path`` as the store names it (relative to its root), for one-line messages."""
    try:
        return str(path.relative_to(store.root))
    except ValueError:
        return str(path)
