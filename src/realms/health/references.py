"""What the store's records refer to, for ``realms gc`` and ``realms df``: the appimgs and their
versions, the build keys of built versions, the registry blobs of pulled and pushed versions,
and whether a build runs now.

A record that does not parse is not trusted to say what it refers to: it is reported, and what
it might refer to (cached builds, blobs) is then kept. A manifest in the blob cache was checked
against its digest when it came, but its contents are a registry's: it is read with a size
bound, and only well-formed digests in it count.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realms.appimg.record import AppimgRecord, load_record
from realms.errors import RealmsError
from realms.store import Store
from realms.store.locks import is_free
from realms.store.txn import find_leftovers

MANIFEST_LIMIT = 4 << 20
"""A manifest in the blob cache larger than this is not read (registries refuse them too)."""
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NESTED = 2
"""How deep an index's manifests are followed (an index names manifests, they name blobs)."""


@dataclass
class References:
    records: dict[str, AppimgRecord] = field(default_factory=dict)
    """Every appimg whose record parses, by name."""
    damaged: list[str] = field(default_factory=list)
    """Appimgs whose record does not parse: what they refer to is unknown."""
    build_keys: set[str] = field(default_factory=set)
    blobs: set[str] = field(default_factory=set)
    """Digests (``sha256:HEX``) of the blobs the versions need: their manifests and what those
    name, their image files."""


def appimg_names(store: Store) -> list[str]:
    try:
        entries = os.listdir(store.appimgs_dir)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if not e.startswith(".") and store.record_path(e).exists())


def collect(store: Store) -> References:
    found = References()
    for name in appimg_names(store):
        try:
            found.records[name] = load_record(store, name)
        except (RealmsError, OSError):
            found.damaged.append(name)
    for record in found.records.values():
        for version in record.versions:
            if version.build_key:
                found.build_keys.add(version.build_key)
            named = [version.image_digest]
            source = version.source or {}
            named += [source.get("digest"), source.get("manifest")]
            named += [entry.get("digest") for entry in version.pushed]
            for digest in named:
                if isinstance(digest, str) and _DIGEST.fullmatch(digest):
                    _add_blob(store, digest, found.blobs, _NESTED)
    return found


def _add_blob(store: Store, digest: str, into: set[str], depth: int) -> None:
    """Add ``digest`` and, when it is a manifest in the cache, the blobs it names."""
    if digest in into:
        return
    into.add(digest)
    if depth <= 0:
        return
    for named in manifest_digests(store.blob_path(digest)):
        _add_blob(store, named, into, depth - 1)


def manifest_digests(path: Path) -> list[str]:
    """The digests a cached manifest or index names (config, layers, blobs, manifests,
    subject); nothing for a blob that is not such a document."""
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > MANIFEST_LIMIT:
                return []
            data = json.loads(handle.read(MANIFEST_LIMIT))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict):
        return []
    descriptors: list[Any] = [data.get("config"), data.get("subject")]
    for key in ("layers", "blobs", "manifests"):
        listed = data.get(key)
        if isinstance(listed, list):
            descriptors += listed
    digests = []
    for descriptor in descriptors:
        if isinstance(descriptor, dict):
            digest = descriptor.get("digest")
            if isinstance(digest, str) and _DIGEST.fullmatch(digest):
                digests.append(digest)
    return digests


def running_builds(store: Store, names: list[str]) -> list[str]:
    """The appimgs being built now (their build lock is held): of ``names``, and of the build
    trees under ``build/`` (a build of a new appimg)."""
    candidates = set(names)
    for leftover in find_leftovers(store):
        if leftover.path.parent == store.build_dir:
            name = leftover.path.name.removeprefix(".new.").rpartition(".")[0]
            if name:
                candidates.add(name)
    busy = []
    for name in sorted(candidates):
        try:
            if not is_free(store.build_lock_path(name)):
                busy.append(name)
        except RealmsError:
            continue  # not a name a lock file may have: no build of realms made it
    return busy
