"""What the running kernel offers realms: filesystems, loop devices, device-mapper, dm-verity.

Detected, never assumed: these machines, for example, have btrfs and overlayfs but no
device-mapper at all.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from realms.kinds import VerityMode


def _filesystems() -> set[str]:
    try:
        text = Path("/proc/filesystems").read_text()
    except OSError:
        return set()
    return {line.split()[-1] for line in text.splitlines() if line.strip()}


def _module_available(name: str) -> bool:
    """Loaded, built in, or on disk to be loaded."""
    if Path(f"/sys/module/{name}").exists():
        return True
    release = os.uname().release
    for listing in ("modules.builtin", "modules.dep"):
        try:
            text = Path(f"/lib/modules/{release}/{listing}").read_text()
        except OSError:
            continue
        if f"/{name.replace('_', '-')}.ko" in text or f"/{name}.ko" in text:
            return True
    return False


@dataclass(frozen=True)
class Features:
    btrfs: bool
    overlayfs: bool
    erofs: bool
    loop: bool
    device_mapper: bool
    dm_verity: bool

    def to_json(self) -> dict[str, bool]:
        return asdict(self)


def features() -> Features:
    filesystems = _filesystems()
    device_mapper = Path("/dev/mapper/control").exists() or _module_available("dm_mod")
    return Features(
        btrfs="btrfs" in filesystems or _module_available("btrfs"),
        overlayfs="overlay" in filesystems or _module_available("overlay"),
        erofs="erofs" in filesystems or _module_available("erofs"),
        loop=Path("/dev/loop-control").exists(),
        device_mapper=device_mapper,
        dm_verity=device_mapper and _module_available("dm_verity"),
    )


def verity_enforcement(policy: str, found: Features) -> VerityMode:
    """How sealed images would be checked under ``policy`` here: kernel, userspace or none."""
    if policy == VerityMode.USERSPACE:
        return VerityMode.USERSPACE
    if found.dm_verity:
        return VerityMode.KERNEL
    return VerityMode.USERSPACE if policy == VerityMode.AUTO else VerityMode.NONE
