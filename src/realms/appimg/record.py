"""An appimg's record: ``appimg/NAME/appimg.toml``, rewritten atomically on every change.

An appimg has numbered versions; one is current, and new realms are made from it. A version of
kind ``tree`` is the frozen tree ``appimg/NAME/vN``. The record also says how each version was
made (``origin``: import, build, update, ...) and from what (``detail``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from realms.config import read_toml
from realms.errors import InvalidInput

RECORD_NAME = "appimg.toml"
KINDS = ("tree", "block", "sealed")


@dataclass
class Version:
    version: int
    kind: str
    created: str
    origin: str
    detail: str = ""
    pinned: bool = False
    size: int = 0

    def tree_name(self) -> str:
        return f"v{self.version}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AppimgRecord:
    name: str
    current: int
    versions: list[Version] = field(default_factory=list)

    def version(self, number: int) -> Version | None:
        return next((v for v in self.versions if v.version == number), None)

    @property
    def current_version(self) -> Version:
        found = self.version(self.current)
        assert found is not None, "the record always holds its current version"
        return found

    def next_number(self) -> int:
        return max((v.version for v in self.versions), default=0) + 1

    def to_toml(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "current": self.current,
            "versions": [asdict(v) for v in self.versions],
        }


def load(directory: Path) -> AppimgRecord:
    path = directory / RECORD_NAME
    data = read_toml(path)
    try:
        versions = [Version(**entry) for entry in data["versions"]]
        record = AppimgRecord(str(data["name"]), int(data["current"]), versions)
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInput(f"{path}: damaged appimg record ({error})") from None
    if record.version(record.current) is None or any(v.kind not in KINDS for v in versions):
        raise InvalidInput(f"{path}: damaged appimg record (current version or kind)")
    return record
