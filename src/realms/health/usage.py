"""``realms df``: the bytes each appimg version, realm, cache and leftover holds.

STUB (issue 15): to be written. The interface below is what the CLI and the API use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realms.store import Store


@dataclass(frozen=True)
class Usage:
    object: str
    kind: str
    exclusive: int
    shared: int

    def to_json(self) -> dict[str, Any]:
        return {
            "object": self.object,
            "kind": self.kind,
            "exclusive": self.exclusive,
            "shared": self.shared,
        }


@dataclass(frozen=True)
class DiskUsage:
    method: str
    """"qgroups" or "filesystem du" (or "du" on the copy backend)."""
    objects: list[Usage] = field(default_factory=list)
    caches: int = 0
    leftovers: int = 0
    gc_would_free: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "objects": [u.to_json() for u in self.objects],
            "caches": self.caches,
            "leftovers": self.leftovers,
            "gc_would_free": self.gc_would_free,
        }


def disk_usage(store: Store) -> DiskUsage:
    raise NotImplementedError
