"""Which realm came from which appimg version: each realm's ``origin.toml``.

Written once when the realm is made and never changed by appimg updates, so that ``realms list``
can tell which realms are outdated and ``realms appimg show`` which realms use an appimg.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from realms.config import read_toml
from realms.errors import InvalidInput, RealmsError
from realms.kinds import ImageKind
from realms.store.layout import ORIGIN_NAME

__all__ = ["ORIGIN_NAME", "Origin", "all_origins", "load"]


@dataclass(frozen=True)
class Origin:
    appimg: str
    appimg_version: int
    kind: ImageKind
    created: str
    uid_base: int | None = None
    """The first host uid of the realm's user namespace (see :mod:`realms.system.idmap`);
    None for a realm made before realms used user namespaces, until its next run."""

    def to_toml(self) -> dict[str, object]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def load(realm_dir: Path) -> Origin:
    path = realm_dir / ORIGIN_NAME
    data = read_toml(path)
    try:
        return Origin(
            appimg=str(data["appimg"]),
            appimg_version=int(data["appimg_version"]),
            kind=ImageKind(data["kind"]),
            created=str(data["created"]),
            uid_base=int(data["uid_base"]) if "uid_base" in data else None,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInput(f"{path}: damaged realm record ({error})") from None


def all_origins(realms_dir: Path) -> dict[str, Origin]:
    """Every complete realm's origin, by realm name (temporary names are skipped)."""
    result = {}
    try:
        names = sorted(n for n in os.listdir(realms_dir) if not n.startswith("."))
    except FileNotFoundError:
        return {}
    for name in names:
        try:
            result[name] = load(realms_dir / name)
        except RealmsError:
            continue
    return result
