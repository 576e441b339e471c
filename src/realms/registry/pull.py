"""Pulling from a registry into an appimg: ``appimg pull``, ``pull --all`` and ``outdated``.

A pull

1. resolves its source: a reference, or the name of a pulled appimg (the reference its
   newest pulled version came from, and the platform it was pulled for);
2. gets the manifest the reference names; an index gives the manifest of the platform wanted
   (:func:`realms.registry.manifest.select`);
3. does nothing when that digest is the one the appimg's current version was pulled from (an
   index that moved while the platform's manifest did not only has its digest noted);
4. hands a realms artifact (a block or sealed image) to :mod:`realms.registry.artifact`; for
   a container image, reads its config (one diff_id per layer), starts fetching the layers into
   the blob cache on a few threads (:class:`realms.registry.blobs.Downloads`), and commits a new
   tree version through :func:`realms.appimg.commit.commit`, applying layer i
   (:mod:`realms.registry.layers`) as soon as blob i is in the cache and checked, while the
   later ones still download. Each layer's uncompressed bytes are hashed while it is applied
   and must be its diff_id.

The tree is made at commit's temporary name: a pull that fails or is killed at any point
leaves the appimgs as they were, and the next pull finds the finished blobs in the cache and
resumes the partial one.

``outdated`` asks each pulled appimg's registry for the digest its reference names now (a
HEAD); a registry that cannot be reached is a warning, not a failure of the whole list.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from realms import log
from realms.appimg.commit import NewVersion, commit
from realms.appimg.record import AppimgRecord, Version, changing, exists, load_record
from realms.errors import InvalidInput, InvalidName, RealmsError
from realms.kinds import ImageKind, VersionOrigin
from realms.names import check_appimg_name
from realms.registry import blobs, manifest
from realms.registry.client import (
    MANIFEST_LIMIT,
    Repository,
    remembered_tls,
    tls_from_source,
)
from realms.registry.manifest import ImageConfig, ImageManifest, Platform
from realms.registry.reference import Reference, parse_reference
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
    current: str | None
    """The digest the reference names in the registry now; None when it could not be asked."""
    problem: str | None = None
    """Why the registry could not be asked (unreachable, refused, the reference is gone)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ref": self.ref,
            "pulled": self.pulled,
            "current": self.current,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class _Resolved:
    """What a reference names now, down to one image manifest."""

    digest: str
    """The digest the reference names (an index's, for a multi-platform image)."""
    data: dict[str, Any]
    """The image manifest, decoded (not yet checked beyond its media type)."""
    kind: str
    manifest_digest: str
    """The image manifest's own digest (``digest`` unless it came from an index)."""
    platform: Platform | None
    """The platform picked from an index; None when the reference named one manifest."""

    def source(self, repo: Repository) -> dict[str, str]:
        """The version's ``source``: the reference and its digest, plus the platform picked
        and its manifest's digest when the reference named an index."""
        source = {"ref": str(repo.reference), "digest": self.digest, **remembered_tls(repo)}
        if self.platform is not None:
            source |= {"platform": str(self.platform), "manifest": self.manifest_digest}
        return source


class _AlreadyPulled(RealmsError):
    """Another pull committed the same digest meanwhile."""


def _current_source(store: Store, name: str) -> dict[str, str] | None:
    if not exists(store, name):
        return None
    source = load_record(store, name).current_version.source
    return source if source and "ref" in source and "digest" in source else None


def _last_pulled(record: AppimgRecord) -> dict[str, str] | None:
    """The source of the newest pulled version (the current one may be a local update)."""
    for version in sorted(record.versions, key=lambda v: v.version, reverse=True):
        if version.source and "ref" in version.source:
            return version.source
    return None


def _default_name(ref: Reference) -> str:
    last = ref.repository.rsplit("/", 1)[-1]
    try:
        return check_appimg_name(last)
    except InvalidName:
        raise InvalidName(
            f"the repository's last part {last!r} is not an appimg name",
            hint="choose one with --name (a letter, then letters, digits or '-')",
        ) from None


def _looks_like_name(source: str) -> bool:
    """Whether ``source`` may be an appimg's name (else it is only a reference)."""
    try:
        check_appimg_name(source)
    except InvalidName:
        return False
    return True


def _target(
    store: Store, source: str, name: str | None, platform: str | None
) -> tuple[Reference, str, str | None, dict[str, str]]:
    """The reference, the appimg and the platform (None: this host's) a pull is for, and the
    source of the version it pulls again (empty for a new reference)."""
    if _looks_like_name(source) and exists(store, source):
        pulled = _last_pulled(load_record(store, source))
        if pulled is None:
            raise InvalidInput(
                f"appimg {source!r} was not pulled from a registry",
                hint="name a registry reference: HOST[:PORT]/PATH[:TAG]",
            )
        target = check_appimg_name(name) if name else source
        chosen = platform or pulled.get("platform")
        return parse_reference(pulled["ref"]), target, chosen, pulled
    ref = parse_reference(source)
    return ref, check_appimg_name(name) if name else _default_name(ref), platform, {}


def _resolve(repo: Repository, ref: Reference, platform: str | None) -> _Resolved:
    what = f"the manifest of {ref}"
    top = repo.get_manifest(ref.target, manifest.ACCEPT)
    data, kind = manifest.parse_document(top.body, top.media_type, what)
    if kind not in manifest.INDEX_TYPES:
        if platform is not None:
            manifest.parse_platform(platform)  # a bad --platform is refused either way
        return _Resolved(top.digest, data, kind, top.digest, None)
    index = manifest.parse_index(data, kind, what)
    wanted = manifest.parse_platform(platform) if platform else manifest.host_platform()
    chosen = manifest.select(index, wanted, str(ref))
    if chosen.size > MANIFEST_LIMIT:
        raise InvalidInput(f"{what}: the manifest for {wanted} has {chosen.size} bytes, too many")
    inner = repo.get_manifest(chosen.digest, manifest.ACCEPT)
    if inner.digest != chosen.digest:
        raise InvalidInput(f"{what}: the registry sent another manifest for {wanted}")
    what = f"the {wanted} manifest of {ref}"
    data, kind = manifest.parse_document(inner.body, inner.media_type, what)
    if kind in manifest.INDEX_TYPES:
        raise InvalidInput(f"{what} is an index again (nested indexes are not pulled)")
    assert chosen.platform is not None
    return _Resolved(top.digest, data, kind, chosen.digest, chosen.platform)


def _same(source: dict[str, str] | None, resolved: _Resolved) -> bool:
    """Whether a version pulled from ``source`` holds the image manifest resolved now."""
    return source is not None and (source.get("manifest") or source.get("digest")) == (
        resolved.manifest_digest
    )


def _note_source(store: Store, name: str, source: dict[str, str]) -> None:
    """The reference names a new index whose manifest for this platform is the one pulled:
    the current version's source names the new digest (so it is no longer outdated)."""
    with changing(store, name) as record:
        if record.current_version.source is not None:
            record.current_version.source = source


class _Hashing:
    """A reader that hashes what is read through it (a layer's uncompressed bytes)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._stream.read(size)
        self._hash.update(data)
        return data

    def digest(self) -> str:
        # What the tar reader left unread (padding after the end marker) is part of the layer.
        while self.read(1 << 20):
            pass
        return f"sha256:{self._hash.hexdigest()}"


def _apply(blob: Path, media_type: str, diff_id: str, tree: Path, what: str) -> None:
    from realms.registry import layers

    with open(blob, "rb") as compressed, layers.open_layer(compressed, media_type, what) as stream:
        hashing = _Hashing(stream)
        layers.apply_layer(cast(IO[bytes], hashing), tree, what)
        if hashing.digest() != diff_id:
            raise InvalidInput(f"{what} does not match its diff_id in the image config")


def _check_platform(config: ImageConfig, chosen: Platform | None, ref: Reference) -> None:
    """Warn when the image is for another machine than this one (asked for, or the only one)."""
    found, here = config.platform or chosen, manifest.host_platform()
    if found is not None and (found.os, found.architecture) != (here.os, here.architecture):
        log.warn(f"{ref} is an image for {found}: realms made from it may not run on {here}")


def _pull_image(
    store: Store, repo: Repository, ref: Reference, name: str, resolved: _Resolved
) -> PullResult:
    image: ImageManifest = manifest.parse_image(
        resolved.data, resolved.kind, f"the manifest of {ref}"
    )
    config_what = f"the image config of {ref}"
    config = manifest.parse_config(
        blobs.read_small(repo, image.config, config_what), image, config_what
    )
    _check_platform(config, resolved.platform, ref)
    count = len(image.layers)
    titles = [
        (layer, f"layer {i}/{count} {layer.digest[7:19]}")
        for i, layer in enumerate(image.layers, 1)
    ]
    digest = resolved.digest

    def check(record: AppimgRecord) -> RealmsError | None:
        if _same(record.current_version.source, resolved):
            return _AlreadyPulled(f"appimg {name} was pulled from {digest} meanwhile")
        return None

    with blobs.Downloads(store, repo, titles) as downloads:

        def place(tree: Path) -> None:
            store.backend.create_tree(tree)
            for number, layer in enumerate(image.layers):
                fetched = downloads.wait(number)
                what = f"layer {number + 1} ({blobs.short(layer.digest)}) of {ref}"
                _apply(fetched.path, layer.media_type, config.diff_ids[number], tree, what)
            if not (tree / "usr").is_dir() and not (tree / "bin").exists():
                log.warn(f"{ref} has no /usr or /bin: realms made from it may not start")

        new = NewVersion(ImageKind.TREE, VersionOrigin.PULL, str(ref), source=resolved.source(repo))
        try:
            version = commit(store, name, place, new, mode="either", check=check)
        except _AlreadyPulled:
            return PullResult(name, str(ref), digest, None, downloads.downloaded)
        return PullResult(name, str(ref), digest, version, downloads.downloaded)


def _pull_one(
    store: Store, ref: Reference, name: str, platform: str | None, tls_verify: bool | None
) -> PullResult:
    repo = Repository(ref, tls_verify=tls_verify)
    resolved = _resolve(repo, ref, platform)
    pulled = _current_source(store, name)
    if pulled is not None and _same(pulled, resolved):
        if pulled["digest"] != resolved.digest:
            _note_source(store, name, resolved.source(repo))
        return PullResult(name, str(ref), resolved.digest, None)
    from realms.registry import artifact

    # The one dispatch point: a realms artifact (a block or sealed image) is pulled as an
    # image file, checked as an import checks one.
    if artifact.is_artifact(resolved.data):
        done = artifact.pull_artifact(store, repo, ref, resolved.digest, resolved.data, name=name)
        return PullResult(name, str(ref), resolved.digest, done.version, done.downloaded)
    return _pull_image(store, repo, ref, name, resolved)


def pull(
    store: Store,
    source: str | None,
    *,
    name: str | None = None,
    platform: str | None = None,
    pull_all: bool = False,
    tls_verify: bool | None = None,
) -> list[PullResult]:
    """Pull ``source`` (a reference, or a pulled appimg's name) into appimg ``name`` (default:
    the repository's last path part, or that appimg), or with ``pull_all`` every pulled appimg
    whose reference moved."""
    store.sweep()
    if pull_all:
        return _pull_all(store, tls_verify)
    if source is None:
        raise InvalidInput("name a registry reference or a pulled appimg")
    ref, target, chosen, remembered = _target(store, source, name, platform)
    return [_pull_one(store, ref, target, chosen, tls_from_source(remembered, tls_verify))]


def _pull_all(store: Store, tls_verify: bool | None) -> list[PullResult]:
    moved = outdated(store, tls_verify=tls_verify)
    results: list[PullResult] = []
    failed: list[str] = []
    for item in moved:
        if item.problem is not None:
            failed.append(item.name)  # outdated() said why
            continue
        source = _current_source(store, item.name) or {}
        try:
            ref = parse_reference(item.ref)
            tls = tls_from_source(source, tls_verify)
            results.append(_pull_one(store, ref, item.name, source.get("platform"), tls))
        except RealmsError as error:
            log.warn(f"appimg {item.name}: {error}")
            failed.append(item.name)
    if failed:
        raise RealmsError(
            f"{len(failed)} of {len(moved)} appimgs could not be checked or pulled: "
            f"{', '.join(failed)}"
        )
    return results


def _pulled(store: Store) -> list[tuple[str, dict[str, str]]]:
    """The appimgs whose current version was pulled, with its source."""
    try:
        entries = sorted(os.listdir(store.appimgs_dir))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if entry.startswith(".") or not store.record_path(entry).exists():
            continue
        try:
            source = _current_source(store, entry)
        except RealmsError as error:
            log.warn(f"appimg {entry}: {error}")
            continue
        if source is not None:
            found.append((entry, source))
    return found


def outdated(store: Store, *, tls_verify: bool | None = None) -> list[Outdated]:
    """The pulled appimgs whose reference names another digest in its registry now."""
    found: list[Outdated] = []
    repositories: dict[tuple[str, bool | None], Repository] = {}
    for name, source in _pulled(store):
        try:
            ref = parse_reference(source["ref"])
            if ref.digest is not None:
                continue  # a digest reference never moves
            key = (ref.name, tls_from_source(source, tls_verify))
            repo = repositories.get(key) or Repository(ref, tls_verify=key[1])
            repositories[key] = repo
            current = repo.head_manifest(ref.target, manifest.ACCEPT)
        except RealmsError as error:
            log.warn(f"appimg {name}: {error}")
            found.append(Outdated(name, source["ref"], source["digest"], None, str(error)))
            continue
        if current is None:
            problem = f"{ref} is no longer in its registry"
            log.warn(f"appimg {name}: {problem}")
            found.append(Outdated(name, str(ref), source["digest"], None, problem))
        elif current != source["digest"]:
            found.append(Outdated(name, str(ref), source["digest"], current))
    return found
