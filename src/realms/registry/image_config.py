"""The OCI image config and manifest of a pushed tree version (the building side; parsing what
a registry sends is :mod:`realms.registry.manifest`).

The config says how a container of the image runs (``Env`` with a PATH, ``Cmd``: ``/bin/bash``
when the tree has it, else ``/bin/sh``, ``User`` root), when the version was made, the layers'
uncompressed digests and one history entry per layer. The manifest carries the standard
``org.opencontainers.image.*`` annotations and realms' own ``org.realms.appimg.*`` (name,
version, parent, origin): a later push reads them back from the parent's manifest to check that
it builds on what it thinks it does. Both are serialized with sorted keys and no spaces, so the
same version gives the same bytes, and so the same digests in every repository.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realms.appimg.record import Version
from realms.errors import InvalidInput
from realms.registry.changes import lstat_in
from realms.registry.manifest import CONFIG_LIMIT, OCI_MANIFEST, decode, host_platform

CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

ANNOTATION_NAME = "org.realms.appimg.name"
ANNOTATION_VERSION = "org.realms.appimg.version"
ANNOTATION_PARENT = "org.realms.appimg.parent"
ANNOTATION_ORIGIN = "org.realms.appimg.origin"
_DETAIL_LIMIT = 1024
_HISTORY_LIMIT = 512


@dataclass(frozen=True)
class Blob:
    """A descriptor of a blob this push sends (or finds in the registry)."""

    media_type: str
    digest: str
    size: int

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def serialize(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _shell(tree: Path) -> str:
    # Looked up without following symlinks: /bin is one in a merged-/usr tree, and an absolute
    # one would lead out of the tree to the host's files.
    if lstat_in(tree, "bin/bash") is not None:
        return "/bin/bash"
    if lstat_in(tree, "usr/bin/bash") is not None:
        merged = lstat_in(tree, "bin")
        return "/bin/bash" if merged and stat.S_ISLNK(merged.st_mode) else "/usr/bin/bash"
    return "/bin/sh"


def _origin(version: Version) -> str:
    text = f"{version.origin}: {version.detail}" if version.detail else str(version.origin)
    return text[:_DETAIL_LIMIT]


def history_entry(name: str, version: Version) -> dict[str, Any]:
    return {
        "created": version.created,
        "created_by": f"realms appimg {name} version {version.version} ({_origin(version)})",
    }


def build_config(
    name: str,
    version: Version,
    tree: Path,
    diff_ids: list[str],
    history: list[dict[str, Any]],
) -> bytes:
    """The image config of ``version``: ``diff_ids`` and ``history`` (the parent's, then this
    version's layer)."""
    platform = host_platform()
    data: dict[str, Any] = {
        "created": version.created,
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {
            "Env": [f"PATH={DEFAULT_PATH}"],
            "Cmd": [_shell(tree)],
            "User": "",
            "Labels": {ANNOTATION_NAME: name, ANNOTATION_VERSION: str(version.version)},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    if platform.variant:
        data["variant"] = platform.variant
    return serialize(data)


def build_manifest(name: str, version: Version, config: Blob, layers: list[Blob]) -> bytes:
    annotations = {
        "org.opencontainers.image.created": version.created,
        "org.opencontainers.image.version": f"v{version.version}",
        "org.opencontainers.image.title": name,
        ANNOTATION_NAME: name,
        ANNOTATION_VERSION: str(version.version),
        ANNOTATION_ORIGIN: _origin(version),
    }
    if version.parent is not None:
        annotations[ANNOTATION_PARENT] = str(version.parent)
    return serialize(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.descriptor() for layer in layers],
            "annotations": annotations,
        }
    )


def read_history(body: bytes, layers: int, what: str) -> list[dict[str, Any]]:
    """The history of a config realms pushed (checked: strings only, one entry per layer at
    least), to be continued by the next version's config."""
    data = decode(body, what, CONFIG_LIMIT)
    history = data.get("history")
    if not isinstance(history, list) or len(history) > _HISTORY_LIMIT:
        raise InvalidInput(f"{what} has no history of at most {_HISTORY_LIMIT} entries")
    kept: list[dict[str, Any]] = []
    for entry in history:
        if not isinstance(entry, dict):
            raise InvalidInput(f"{what} has a history entry that is not an object")
        kept.append({k: v for k, v in entry.items() if isinstance(v, (str, bool))})
    if sum(1 for entry in kept if not entry.get("empty_layer")) != layers:
        raise InvalidInput(f"{what}'s history does not have one entry per layer")
    return kept


def annotations_of(data: dict[str, Any]) -> dict[str, str]:
    found = data.get("annotations")
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}
