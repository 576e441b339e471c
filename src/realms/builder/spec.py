"""What a loaded build config is: the checked values that a build uses, with the files and
scripts it names already read (see :mod:`realms.builder.config`, which makes them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FileSpec:
    source: str
    """The path the config gave, relative to its directory (for messages)."""
    data: bytes
    """The file's contents, read once at load: the build installs these bytes."""
    path: str
    mode: int
    owner: str


@dataclass(frozen=True)
class Module:
    name: str
    script: str | None = None
    """The script's path relative to the config's directory; None for a built-in module."""
    text: str = ""
    """The script, read once at load (the build runs this text, never the path again)."""


@dataclass(frozen=True)
class BuildConfig:
    origin: str
    """The config file, or "default config"."""
    name: str
    release: str
    mirror: str
    security_mirror: str | None
    components: list[str]
    variant: str
    bootstrapper: str
    packages: list[str]
    hostname: str
    locale: str
    user: dict[str, Any]
    before: list[Module]
    after: list[Module]
    files: list[FileSpec] = field(default_factory=list)
    snapshot: str | None = None
    """The snapshot date (``20261201T000000Z``) that ``mirror`` and ``security_mirror`` point
    at, or None."""
    keyring: list[tuple[str, bytes]] = field(default_factory=list)
    """The config's OpenPGP key files: (path relative to its directory, contents), checked
    to be public keys at load; see :func:`realms.builder.archive.write_keyring`."""

    def uses(self, module: str) -> bool:
        return any(m.name == module and m.script is None for m in self.before + self.after)
