"""Pushing an appimg version to a registry.

A block or sealed version travels as an artifact (:mod:`realms.registry.artifact`); a tree
version becomes an OCI image (:mod:`realms.registry.image_config`), in the cheapest of three
ways, tried in order:

1. **Again**: the version was pushed before (to any repository, ``Version.pushed``) and that
   manifest is still at hand (the blob cache, or its repository when it is on the same
   registry): its blobs are mounted or uploaded from the cache, and the same manifest is put
   under the new tag. Nothing is rebuilt.
2. **On top of the parent**: the parent version was pushed to this repository, its manifest is
   still there and says it is that version: the image is the parent's layers plus one layer of
   what changed (:mod:`realms.registry.changes`, written by :mod:`realms.registry.tarlayer`).
   An image of :data:`MAX_LAYERS` layers is pushed in full instead, so that chains of updates
   stay within what runtimes take.
3. **In full**: one layer of the whole tree.

Blobs go first and one by one (HEAD: the registry has it; else a cross-repository mount from a
repository of the same registry that realms pushed to or pulled from; else an upload), then
the config, then the manifest under its tag: a registry refuses a manifest whose blobs it does
not have, so a push stopped at any moment leaves no tag naming a missing blob. Layers are
written into the store's blob cache (complete and checked, or not there); the appimg's record
changes only after the manifest is in, to note where the version went.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realms import log
from realms.appimg.record import AppimgRecord, Version, changing, exists, load_record
from realms.errors import InvalidInput, NotFound, RealmsError
from realms.faults import checkpoint
from realms.kinds import ImageKind
from realms.registry.blobs import cached, read_small
from realms.registry.changes import find_changes, walk_tree
from realms.registry.client import MANIFEST_LIMIT, Repository
from realms.registry.image_config import (
    ANNOTATION_NAME,
    ANNOTATION_VERSION,
    CONFIG_MEDIA_TYPE,
    Blob,
    annotations_of,
    build_config,
    build_manifest,
    history_entry,
    read_history,
)
from realms.registry.manifest import (
    OCI_MANIFEST,
    ImageManifest,
    parse_config,
    parse_document,
    parse_image,
)
from realms.registry.reference import Reference, check_digest, parse_reference
from realms.registry.tarlayer import LAYER_MEDIA_TYPE, Layer, open_partial, write_layer
from realms.store import Store

MAX_LAYERS = 64
"""The most layers an incremental push stacks (overlay-based runtimes take about 128)."""
PUSHED_KEPT = 32
"""Entries of ``Version.pushed`` kept per version (newest)."""
MOUNT_SOURCES = 6
"""Repositories a blob is tried to be mounted from before it is uploaded."""


@dataclass(frozen=True)
class PushResult:
    name: str
    version: int
    ref: str
    """The reference pushed to, with its tag, written out in full."""
    digest: str
    """The manifest's digest."""
    uploaded: int
    """Bytes uploaded (blobs the registry had, or mounted from another repository, are not)."""
    blobs_reused: int
    """Blobs not sent because the registry had them or mounted them."""
    layers: int = 0
    deltas: list[int] = field(default_factory=list)
    """For an image version: the versions a delta was pushed against."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "digest": self.digest,
            "uploaded": self.uploaded,
            "blobs_reused": self.blobs_reused,
            "layers": self.layers,
            "deltas": self.deltas,
        }


def _pick(record: AppimgRecord, number: int | None) -> Version:
    chosen = record.current_version if number is None else record.version(number)
    if chosen is None:
        known = ", ".join(str(v.version) for v in record.versions)
        raise NotFound(f"appimg {record.name!r} has no version {number} (it has {known})")
    return chosen


def push(
    store: Store, name: str, ref: str, *, version: int | None = None, tls_verify: bool | None = None
) -> PushResult:
    store.sweep()
    reference = parse_reference(ref)
    if reference.digest is not None:
        raise InvalidInput(
            f"{ref}: a push goes to a tag, not to a digest",
            hint="leave the tag out to push as vN, or give one: HOST/PATH:TAG",
        )
    chosen = _pick(load_record(store, name), version)
    if reference.tag is None:
        reference = reference.with_tag(f"v{chosen.version}")
    repo = Repository(reference, tls_verify=tls_verify)
    if chosen.kind != ImageKind.TREE:
        # Imported here: the artifact module (zstd, deltas) is not needed for a tree.
        from realms.registry.artifact import push_artifact

        done = push_artifact(store, name, chosen, repo, reference)
        return PushResult(
            name,
            chosen.version,
            str(reference),
            done.digest,
            done.uploaded,
            done.blobs_reused,
            done.layers,
            done.deltas,
        )
    # One request first, so that a wrong address, TLS or credentials fail before a layer of a
    # large tree is written.
    repo.head_manifest(reference.target, (OCI_MANIFEST,))
    sender = _Sender(store, repo, _mount_sources(store, reference))
    image = _again(store, name, chosen, sender, tls_verify) or _build(store, name, chosen, sender)
    checkpoint("push.built")
    for blob, path in image.blobs:
        sender.send(blob, path)
    checkpoint("push.blobs")
    digest = repo.put_manifest(reference.target, image.manifest, image.media_type)
    checkpoint("push.manifest")
    sender.uploaded += len(image.manifest)
    _record(store, name, chosen, reference, digest)
    return PushResult(
        name,
        chosen.version,
        str(reference),
        digest,
        sender.uploaded,
        sender.reused,
        image.layers,
    )


def _record(store: Store, name: str, chosen: Version, reference: Reference, digest: str) -> None:
    entry = {"repository": reference.name, "digest": digest}
    with changing(store, name) as record:
        found = record.version(chosen.version)
        if found is None:
            log.warn(f"version {chosen.version} of appimg {name} was removed while it was pushed")
            return
        found.pushed = [*(e for e in found.pushed if e != entry), entry][-PUSHED_KEPT:]


# Where blobs come from


def _mount_sources(store: Store, reference: Reference) -> list[str]:
    """Repositories of the same registry that realms pushed to or pulled from, most recent
    pushes of any appimg first: where a blob may be mounted from."""
    found: dict[str, None] = {}
    try:
        names = sorted(p.name for p in store.appimgs_dir.iterdir())
    except FileNotFoundError:
        names = []
    for name in names:
        if not exists(store, name):
            continue
        try:
            record = load_record(store, name)
        except RealmsError:
            continue  # a damaged record elsewhere does not stop this push
        for version in reversed(record.versions):
            refs = [e.get("repository", "") for e in reversed(version.pushed)]
            if version.source:
                refs.append(version.source.get("ref", ""))
            for text in refs:
                with contextlib.suppress(InvalidInput):
                    other = parse_reference(text)
                    if other.registry == reference.registry and other.name != reference.name:
                        found[other.repository] = None
    return list(found)


class _Sender:
    """Sends blobs to one repository, counting what was uploaded and what was not."""

    def __init__(self, store: Store, repo: Repository, sources: list[str]) -> None:
        self.store = store
        self.repo = repo
        self.sources = sources
        self.uploaded = 0
        self.reused = 0

    def present(self, blob: Blob, sources: tuple[str, ...] = ()) -> bool:
        """Whether the repository has the blob now (mounting it if another one has)."""
        size = self.repo.blob_size(blob.digest)
        if size is not None:
            if size != blob.size:
                raise InvalidInput(
                    f"{self.repo.reference.name} has blob {blob.digest} with {size} bytes, "
                    f"not {blob.size}"
                )
            self.reused += 1
            return True
        for source in [*sources, *self.sources][:MOUNT_SOURCES]:
            if self.repo.mount_blob(blob.digest, source):
                log.debug(f"mounted blob {blob.digest} from {source}")
                self.reused += 1
                return True
        return False

    def send(self, blob: Blob, path: Path | None, sources: tuple[str, ...] = ()) -> None:
        if self.present(blob, sources):
            return
        if path is None or not path.exists():
            raise RealmsError(
                f"blob {blob.digest} is neither in {self.repo.reference.name} nor in the blob "
                "cache",
                hint="push again: the image is then built again",
            )
        # One upload at a time: a push sends one new layer (or one whole tree) and its config.
        with log.transfers() as transfers:
            transfer = transfers.start(f"Uploading {blob.digest[:19]}", blob.size)
            ok = False
            try:
                self.repo.upload_blob(blob.digest, path, blob.size, transfer.advance)
                ok = True
            finally:
                transfer.done(ok)
        self.uploaded += blob.size


@dataclass(frozen=True)
class _Image:
    manifest: bytes
    media_type: str
    blobs: list[tuple[Blob, Path | None]]
    """Layers first, the config last, each with its file in the cache (None: the registry has
    it, or must)."""
    layers: int


def _keep(store: Store, digest: str, body: bytes) -> Path:
    """A small blob (a config, a manifest) into the blob cache under its digest."""
    path = store.blob_path(digest)
    partial, handle = open_partial(store)
    try:
        with handle:
            handle.write(body)
        with contextlib.suppress(FileExistsError):
            path.parent.mkdir(mode=0o700, parents=True)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _cached_body(store: Store, digest: str) -> bytes | None:
    path = store.blob_path(check_digest(digest))
    try:
        with open(path, "rb") as handle:
            return handle.read(MANIFEST_LIMIT + 1)
    except FileNotFoundError:
        return None


# 1. Again


def _again(
    store: Store, name: str, chosen: Version, sender: _Sender, tls_verify: bool | None
) -> _Image | None:
    target = sender.repo.reference
    for entry in reversed(chosen.pushed):
        try:
            where = parse_reference(entry.get("repository", ""))
            digest = check_digest(entry.get("digest", ""))
        except InvalidInput:
            continue
        same_registry = where.registry == target.registry
        body = _cached_body(store, digest)
        if body is None and same_registry:
            source = Repository(where, tls_verify=tls_verify)
            with contextlib.suppress(NotFound):
                body = source.get_manifest(digest, (OCI_MANIFEST,)).body
        if body is None:
            continue
        try:
            image = _ours(body, OCI_MANIFEST, f"the manifest {digest} of {where.name}", name)
        except InvalidInput as error:
            log.debug(f"not reusing {digest}: {error}")
            continue
        if image.annotations.get(ANNOTATION_VERSION) != str(chosen.version):
            continue
        sources = (where.repository,) if same_registry and where.name != target.name else ()
        blobs = [*image.manifest.layers, image.manifest.config]
        try:
            for descriptor in blobs:
                blob = Blob(descriptor.media_type, descriptor.digest, descriptor.size)
                sender.send(blob, cached(store, descriptor), sources)
        except RealmsError as error:
            log.debug(f"not reusing {digest}: {error}")
            continue
        log.debug(f"version {chosen.version} was pushed as {digest} before: pushing it again")
        _keep(store, digest, body)
        return _Image(body, OCI_MANIFEST, [], len(image.manifest.layers))
    return None


@dataclass(frozen=True)
class _Ours:
    manifest: ImageManifest
    annotations: dict[str, str]


def _ours(body: bytes, content_type: str, what: str, name: str) -> _Ours:
    """A manifest realms pushed for appimg ``name`` (hostile until checked, like any other)."""
    data, kind = parse_document(body, content_type, what)
    manifest = parse_image(data, kind, what)
    annotations = annotations_of(data)
    if annotations.get(ANNOTATION_NAME) != name:
        raise InvalidInput(f"{what} is not one of appimg {name}")
    if any(layer.media_type != LAYER_MEDIA_TYPE for layer in manifest.layers):
        raise InvalidInput(f"{what} has layers realms does not push")
    return _Ours(manifest, annotations)


# 2. On top of the parent, 3. in full


@dataclass(frozen=True)
class _Base:
    version: Version
    layers: list[Blob]
    diff_ids: list[str]
    history: list[dict[str, Any]]


def _base(store: Store, name: str, parent: Version, sender: _Sender) -> _Base | None:
    """The parent's image in this repository, when it is there and may be built on."""
    repo = sender.repo
    for entry in reversed(parent.pushed):
        if entry.get("repository") != repo.reference.name:
            continue
        try:
            digest = check_digest(entry.get("digest", ""))
            fetched = repo.get_manifest(digest, (OCI_MANIFEST,))
        except (InvalidInput, NotFound):
            log.debug(f"the manifest {entry.get('digest')} of version {parent.version} is gone")
            continue
        what = f"the manifest {digest} of {repo.reference.name}"
        try:
            image = _ours(fetched.body, fetched.media_type, what, name)
            if image.annotations.get(ANNOTATION_VERSION) != str(parent.version):
                raise InvalidInput(f"{what} is not version {parent.version} of appimg {name}")
        except InvalidInput as error:
            log.warn(f"{error}: not building on it")
            continue
        if len(image.manifest.layers) >= MAX_LAYERS:
            log.note(f"version {parent.version}'s image has {MAX_LAYERS} layers: pushing in full")
            return None
        descriptor = image.manifest.config
        path = cached(store, descriptor)
        config = path.read_bytes() if path else read_small(repo, descriptor, f"config of {what}")
        diff_ids = parse_config(config, image.manifest, f"config of {what}").diff_ids
        history = read_history(config, len(image.manifest.layers), f"config of {what}")
        layers = [Blob(d.media_type, d.digest, d.size) for d in image.manifest.layers]
        return _Base(parent, layers, diff_ids, history)
    return None


def _build(store: Store, name: str, chosen: Version, sender: _Sender) -> _Image:
    record = load_record(store, name)
    parent = record.version(chosen.parent) if chosen.parent is not None else None
    base = None
    if parent is not None and parent.kind == ImageKind.TREE:
        base = _base(store, name, parent, sender)
    with store.appimg_lock(name, shared=True):
        if load_record(store, name).version(chosen.version) is None:
            raise NotFound(f"version {chosen.version} of appimg {name} was removed meanwhile")
        tree = store.version_path(name, chosen)
        layers: list[Blob] = []
        diff_ids: list[str] = []
        history: list[dict[str, Any]] = []
        files: list[tuple[Blob, Path | None]] = []
        layer: Layer | None = None
        if base is not None and store.version_path(name, base.version).is_dir():
            layers, diff_ids, history = list(base.layers), list(base.diff_ids), list(base.history)
            files = [(blob, None) for blob in layers]
            with log.step(f"Finding the changes from version {base.version.version}"):
                changes = find_changes(
                    store.version_path(name, base.version),
                    tree,
                    btrfs=store.backend.name == "btrfs",
                )
            log.debug(
                f"{len(changes.entries)} entries and {len(changes.whiteouts)} deletions since "
                f"version {base.version.version} ({changes.method})"
            )
            if not changes.empty:
                with log.step(f"Writing a layer of the changes of {name} version {chosen.version}"):
                    layer = write_layer(store, tree, changes.entries, whiteouts=changes.whiteouts)
        else:
            with log.step(f"Writing the layer of {name} version {chosen.version}"):
                layer = write_layer(store, tree, walk_tree(tree))
        if layer is not None:
            blob = Blob(LAYER_MEDIA_TYPE, layer.digest, layer.size)
            layers.append(blob)
            diff_ids.append(layer.diff_id)
            history.append(history_entry(name, chosen))
            files.append((blob, layer.path))
        config = build_config(name, chosen, tree, diff_ids, history)
    config_blob = Blob(CONFIG_MEDIA_TYPE, f"sha256:{_sha256(config)}", len(config))
    files.append((config_blob, _keep(store, config_blob.digest, config)))
    manifest = build_manifest(name, chosen, config_blob, layers)
    _keep(store, f"sha256:{_sha256(manifest)}", manifest)
    return _Image(manifest, OCI_MANIFEST, files, len(layers))


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
