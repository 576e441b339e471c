"""``realms appimg diff``: the files added, removed and changed between two versions.

STUB (issue 14, reproducible builds): to be written. The interface below is what the CLI and
the API use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realms.store import Store


@dataclass(frozen=True)
class Changed:
    path: str
    what: list[str]
    """Of "type", "content", "mode", "owner", "mtime", "xattrs", "target"."""


@dataclass(frozen=True)
class TreeDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[Changed] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": [{"path": c.path, "what": c.what} for c in self.changed],
        }


def diff_appimg(store: Store, name: str, v1: int, v2: int) -> TreeDiff:
    raise NotImplementedError
