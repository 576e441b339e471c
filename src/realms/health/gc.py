"""``realms gc``: free what nothing refers to.

STUB (issue 15): to be written. The interface below is what the CLI and the API use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realms.store import Store


@dataclass(frozen=True)
class Freed:
    what: str
    path: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "path": self.path, "bytes": self.bytes}


@dataclass(frozen=True)
class GcResult:
    dry_run: bool
    freed: list[Freed] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(entry.bytes for entry in self.freed)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "freed": [entry.to_json() for entry in self.freed],
            "total": self.total,
        }


def collect_garbage(store: Store, *, dry_run: bool = False) -> GcResult:
    raise NotImplementedError
