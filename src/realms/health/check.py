"""``realms check``: the store's fsck.

STUB (issue 15): to be written. The interface below is what the CLI and the API use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realms.store import Store


@dataclass(frozen=True)
class Problem:
    kind: str
    object: str
    path: str
    detail: str
    repair: str
    """What --repair would do (or, after --repair, what it did)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "object": self.object,
            "path": self.path,
            "detail": self.detail,
            "repair": self.repair,
        }


@dataclass(frozen=True)
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [p.to_json() for p in self.problems]}


def check_store(store: Store, *, repair: bool = False) -> CheckReport:
    raise NotImplementedError
