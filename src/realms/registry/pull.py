"""Pulling from a registry into an appimg (to be written)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from realms.appimg.record import Version
from realms.store import Store


@dataclass(frozen=True)
class PullResult:
    name: str
    """The appimg pulled into."""
    ref: str
    """The reference pulled, written out in full."""
    digest: str
    """The manifest's digest."""
    version: Version | None
    """The new version; None when the appimg already had this digest (nothing was pulled)."""
    downloaded: int = 0
    """Bytes downloaded (blobs found in the blob cache are not counted)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ref": self.ref,
            "digest": self.digest,
            "version": None if self.version is None else self.version.version,
            "downloaded": self.downloaded,
        }


@dataclass(frozen=True)
class Outdated:
    name: str
    ref: str
    pulled: str
    """The digest of the version pulled last."""
    current: str
    """The digest the reference names in the registry now."""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ref": self.ref, "pulled": self.pulled, "current": self.current}


def pull(
    store: Store,
    source: str | None,
    *,
    name: str | None = None,
    platform: str | None = None,
    pull_all: bool = False,
    tls_verify: bool | None = None,
) -> list[PullResult]:
    raise NotImplementedError


def outdated(store: Store, *, tls_verify: bool | None = None) -> list[Outdated]:
    raise NotImplementedError
