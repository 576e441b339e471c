"""An appimg's record: ``appimg/NAME/appimg.toml``, rewritten atomically on every change.

An appimg has numbered versions; one is current, and new realms are made from it. A version of
kind ``tree`` is the frozen tree ``appimg/NAME/vN``; one of kind ``block`` or ``sealed`` is the
image file ``appimg/NAME/vN.img`` (see :mod:`realms.image.realmfs`). Each version says how it
was made (``origin``: import, build, update or seal), from what (``detail``: the source, the
command that ran), from which version (``parent``), and what that changed where it is known
(``written`` bytes in ``files_changed`` files, for updates on btrfs). Versions are never
renumbered; a new version always gets a number higher than every version there ever was.

The ``history`` lists every change of the current version (import, build, update, rollback),
so that a rollback is itself a recorded change.

``kept`` describes an update whose commit was refused because another version became current
while it ran (see :mod:`realms.appimg.update`): its working tree stays as ``kept-update`` beside
the versions until it is committed anyway or discarded.

A record is changed in one way only: :func:`changing` loads it under the appimg's lock, yields
it, and writes it atomically when the block succeeds (nothing is written when it fails).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from realms.config import read_toml
from realms.errors import InvalidInput, NotFound
from realms.kinds import ImageKind, VersionOrigin
from realms.names import check_appimg_name
from realms.store import Store, write_toml
from realms.store.layout import Layout, version_name

HISTORY_KEPT = 200


@dataclass
class Version:
    version: int
    kind: ImageKind
    created: str
    origin: VersionOrigin
    detail: str = ""
    pinned: bool = False
    size: int | None = None
    parent: int | None = None
    written: int | None = None
    files_changed: int | None = None
    build_key: str | None = None
    """For built versions: the digest of the build's inputs (see realms.builder.config)."""
    source: dict[str, str] | None = None
    """Where the version came from: ``{"ref", "digest"}`` (the registry reference and the
    manifest's digest) for a pulled version."""
    image_digest: str | None = None
    """For block and sealed versions: ``sha256:HEX`` of the image file, where it is known
    (pulled or pushed): how a registry's delta names the base it applies to."""
    pushed: list[dict[str, str]] = field(default_factory=list)
    """Where the version was pushed: ``{"repository", "digest"}`` (``HOST/PATH`` and the
    manifest's digest), newest last: a later version pushed to the same repository builds on
    it."""

    def tree_name(self) -> str:
        """The name of the version in the appimg's directory: ``vN`` for a tree, ``vN.img`` for
        a block or sealed image file."""
        return version_name(self.version, self.kind)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class KeptUpdate:
    """An update that was not committed because the appimg moved on while it ran."""

    base: int
    """The version the update started from."""
    kind: ImageKind
    """The kind of that version: a kept update of a block or sealed version is sealed again
    when it is committed."""
    created: str
    detail: str
    reason: str
    """What made another version current meanwhile (the history's change)."""
    written: int | None = None
    files_changed: int | None = None
    fs: str | None = None
    channel: str | None = None


@dataclass
class Change:
    time: str
    action: str
    version: int
    detail: str = ""


@dataclass
class AppimgRecord:
    name: str
    current: int
    versions: list[Version] = field(default_factory=list)
    history: list[Change] = field(default_factory=list)
    highest: int = 0
    """The highest version number ever given, so that numbers are never reused."""
    kept: KeptUpdate | None = None

    def version(self, number: int) -> Version | None:
        return next((v for v in self.versions if v.version == number), None)

    @property
    def current_version(self) -> Version:
        found = self.version(self.current)
        assert found is not None, "the record always holds its current version"
        return found

    def next_number(self) -> int:
        return max([self.highest, *(v.version for v in self.versions)]) + 1

    def add(self, version: Version, change: Change) -> None:
        """Add a version and make it current."""
        self.versions.append(version)
        self.versions.sort(key=lambda v: v.version)
        self.highest = max(self.highest, version.version)
        self.current = version.version
        self.record(change)

    def record(self, change: Change) -> None:
        self.history = [*self.history, change][-HISTORY_KEPT:]

    def to_toml(self) -> dict[str, Any]:
        def without_none(item: Any) -> dict[str, Any]:
            return {k: v for k, v in asdict(item).items() if v is not None and v != []}

        data = {
            "name": self.name,
            "current": self.current,
            "highest": max(self.highest, self.current),
            "versions": [without_none(v) for v in self.versions],
            "history": [without_none(c) for c in self.history],
        }
        if self.kept is not None:
            data["kept"] = without_none(self.kept)
        return data


def _parse(layout: Layout, name: str) -> AppimgRecord:
    path = layout.record_path(name)
    data = read_toml(path)
    try:
        versions = [_version(entry) for entry in data["versions"]]
        history = [Change(**entry) for entry in data.get("history", [])]
        kept = _kept(data["kept"]) if "kept" in data else None
        record = AppimgRecord(
            str(data["name"]),
            int(data["current"]),
            versions,
            history,
            int(data.get("highest", 0)),
            kept,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInput(f"{path}: damaged appimg record ({error})") from None
    if record.version(record.current) is None:
        raise InvalidInput(f"{path}: damaged appimg record (current version)")
    return record


def _version(entry: dict[str, Any]) -> Version:
    # ValueError (a damaged record) for a kind or origin this realms does not know.
    return Version(
        **{**entry, "kind": ImageKind(entry["kind"]), "origin": VersionOrigin(entry["origin"])}
    )


def _kept(entry: dict[str, Any]) -> KeptUpdate:
    return KeptUpdate(**{**entry, "kind": ImageKind(entry["kind"])})


def exists(layout: Layout, name: str) -> bool:
    return layout.record_path(name).exists()


def load_record(layout: Layout, name: str) -> AppimgRecord:
    """The record of an existing appimg, or NotFound with a hint."""
    check_appimg_name(name)
    if not exists(layout, name):
        raise NotFound(
            f"no appimg named {name!r}",
            hint="'realms appimg list' shows the appimgs; 'realms appimg import' adds one",
        )
    return _parse(layout, name)


def save(layout: Layout, name: str, record: AppimgRecord) -> None:
    """Write the record atomically; the caller holds the appimg's lock (see :func:`changing`)."""
    write_record(layout.record_path(name), record)


def write_record(path: Path, record: AppimgRecord) -> None:
    write_toml(path, record.to_toml())


@contextmanager
def changing(store: Store, name: str, *, locked: bool = False) -> Iterator[AppimgRecord]:
    """Load the record under the appimg's lock (``locked``: the caller holds it already), yield
    it, and save it atomically when the block succeeds."""
    if not locked:
        with store.appimg_lock(name), changing(store, name, locked=True) as record:
            yield record
        return
    record = load_record(store, name)
    yield record
    save(store, name, record)
