"""Pushing an appimg version to a registry (to be written)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realms.store import Store


@dataclass(frozen=True)
class PushResult:
    name: str
    version: int
    ref: str
    """The reference pushed to, with its tag, written out in full."""
    digest: str
    """The manifest's digest."""
    uploaded: int
    """Bytes uploaded (blobs the registry had, or mounted from another repository, are not)."""
    blobs_reused: int
    """Blobs not sent because the registry had them or mounted them."""
    layers: int = 0
    deltas: list[int] = field(default_factory=list)
    """For an image version: the versions a delta was pushed against."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "digest": self.digest,
            "uploaded": self.uploaded,
            "blobs_reused": self.blobs_reused,
            "layers": self.layers,
            "deltas": self.deltas,
        }


def push(
    store: Store, name: str, ref: str, *, version: int | None = None, tls_verify: bool | None = None
) -> PushResult:
    raise NotImplementedError
