"""``realms rebase``: a fresh root from the appimg, the realm's state carried over.

STUB (issue 15): to be written. The interface below is what the CLI and the API use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from realms.store import Store


@dataclass(frozen=True)
class RebaseResult:
    realm: str
    from_version: int
    to_version: int
    undone: bool = False
    error: str | None = None
    """Set (and nothing changed) where --all-outdated could not rebase this realm."""

    def to_json(self) -> dict[str, Any]:
        return {
            "realm": self.realm,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "undone": self.undone,
            "error": self.error,
        }


def rebase_realm(
    store: Store,
    name: str,
    *,
    to: int | None = None,
    undo: bool = False,
    restart: bool = False,
) -> RebaseResult:
    raise NotImplementedError


def rebase_outdated(store: Store, *, restart: bool = False) -> list[RebaseResult]:
    raise NotImplementedError
