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

ORIGIN_NAME = "origin.toml"


@dataclass(frozen=True)
class Origin:
    appimg: str
    appimg_version: int
    kind: str
    created: str

    def to_toml(self) -> dict[str, object]:
        return asdict(self)


def load(realm_dir: Path) -> Origin:
    path = realm_dir / ORIGIN_NAME
    data = read_toml(path)
    try:
        return Origin(
            appimg=str(data["appimg"]),
            appimg_version=int(data["appimg_version"]),
            kind=str(data["kind"]),
            created=str(data["created"]),
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
