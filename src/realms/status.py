"""``realms status``: the store, its backend and space, the kernel's features and the verity
enforcement they give."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from realms.store import Store

if TYPE_CHECKING:
    from realms.activation import Activation
    from realms.system.kernel import Features


@dataclass(frozen=True)
class Status:
    store: Store
    features: Features
    appimgs: int
    realms: int
    default_realm: str | None
    leftovers: int
    pool_image: Path | None
    total_bytes: int
    free_bytes: int
    activations: list[Activation]

    @property
    def verity(self) -> str:
        from realms.system import kernel

        return kernel.verity_enforcement(self.store.config.verity, self.features)

    def to_json(self) -> dict[str, Any]:
        from realms.container import systemd_is_pid1

        return {
            "store": str(self.store.root),
            "backend": self.store.backend.name,
            "verity": self.verity,
            "pool": str(self.pool_image) if self.pool_image else None,
            "space": {"total": self.total_bytes, "free": self.free_bytes},
            "appimgs": self.appimgs,
            "realms": self.realms,
            "default_realm": self.default_realm,
            "leftovers": self.leftovers,
            "activations": [found.to_json() for found in self.activations],
            "kernel": self.features.to_json(),
            "systemd_pid1": systemd_is_pid1(),
            "policy": dict(self.store.config.values),
        }


def status(store: Store) -> Status:
    from realms import activation
    from realms.appimg.ops import list_appimgs
    from realms.realm import default_realm
    from realms.store import pool
    from realms.system import kernel

    usage = shutil.disk_usage(store.root)
    return Status(
        store=store,
        features=kernel.features(),
        appimgs=len(list_appimgs(store)),
        realms=sum(1 for e in os.listdir(store.realms_dir) if not e.startswith(".")),
        default_realm=default_realm(store),
        leftovers=len(store.leftovers()),
        pool_image=pool.mounted_pool(store.root),
        total_bytes=usage.total,
        free_bytes=usage.free,
        activations=activation.activations(store),
    )
