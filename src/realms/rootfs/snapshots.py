"""Snapshots of a realm's root filesystem: take, list, remove, restore.

STUB (issue 15): to be written. The interface below is what the CLI and the API use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from realms.store import Store


@dataclass(frozen=True)
class Snapshot:
    realm: str
    label: str
    created: str
    """ISO time."""

    def to_json(self) -> dict[str, Any]:
        return {"realm": self.realm, "label": self.label, "created": self.created}


def snapshot_realm(store: Store, name: str, label: str | None = None) -> Snapshot:
    raise NotImplementedError


def list_snapshots(store: Store, name: str) -> list[Snapshot]:
    raise NotImplementedError


def remove_snapshot(store: Store, name: str, label: str) -> Snapshot:
    raise NotImplementedError


def restore_snapshot(store: Store, name: str, label: str) -> Snapshot:
    raise NotImplementedError
