"""Block and sealed versions as OCI artifacts: the manifest format, pushing and pulling one.

The format (an OCI 1.1 image manifest, accepted by Debian's docker-registry 2.8)::

    mediaType     application/vnd.oci.image.manifest.v1+json
    artifactType  application/vnd.realms.appimg.v1
    config        application/vnd.realms.appimg.config.v1+json: {"kind", "version", "channel",
                  "image_digest", "image_size"} (small, for tools that list the artifact)
    layers[0]     application/vnd.realms.image.v1+zstd: the image file compressed with zstd;
                  annotations org.realms.image.digest (sha256 of the image file) and
                  org.realms.image.size (its bytes)
    layers[1..]   application/vnd.realms.delta.v1: a delta of this image against an older one
                  (:mod:`realms.registry.delta`); annotation org.realms.delta.base: the base
                  image file's sha256 (Debian's registry has no referrers API: extra layers of
                  the same manifest are found with the manifest itself)
    annotations   org.opencontainers.image.created/version/title, org.realms.appimg.name,
                  org.realms.appimg.version, org.realms.appimg.kind

A registry is an untrusted transport: what is pulled is checked exactly as ``appimg import``
checks an image file (:func:`realms.appimg.images.import_image`: header, signature against this
store's trusted keys, every block). Before that, the image must have the size and sha256 its
layer's annotations name (capped at BLOB_LIMIT; decompression can never write more, so a zstd
bomb cannot fill the disk), whether it came whole or from a delta. A delta is only a shortcut:
whatever goes wrong with it is a warning, and the whole image is downloaded instead.

Both directions work in ``build/.new.NAME.RANDOM`` under the build lock of NAME (one pull,
push or build of an appimg at a time; the sweep removes what a killed one left); a push reflinks
the image files it reads there under the appimg's shared lock, so that a prune meanwhile does
not matter.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from realms import log
from realms.appimg import images
from realms.appimg.record import AppimgRecord, Version, changing, exists, load_record
from realms.errors import InvalidInput, RealmsError
from realms.image.realmfs import read_header
from realms.kinds import IMAGE_KINDS
from realms.registry import blobs, delta
from realms.registry.client import Repository, remembered_tls
from realms.registry.manifest import BLOB_LIMIT, OCI_MANIFEST, Descriptor, parse_descriptor
from realms.registry.reference import Reference, check_digest
from realms.store import Store
from realms.system.fs import token
from realms.system.run import run
from realms.units import format_size

ARTIFACT_TYPE = "application/vnd.realms.appimg.v1"
CONFIG_MEDIA_TYPE = "application/vnd.realms.appimg.config.v1+json"
IMAGE_MEDIA_TYPE = "application/vnd.realms.image.v1+zstd"
DELTA_MEDIA_TYPE = "application/vnd.realms.delta.v1"
IMAGE_DIGEST = "org.realms.image.digest"
IMAGE_SIZE = "org.realms.image.size"
DELTA_BASE = "org.realms.delta.base"
DELTAS_PUSHED = 2
"""Deltas pushed with a version: against the two image versions before it (pushed to the same
repository): a machine that skipped one update still gets a delta."""
LAYERS_LIMIT = 16
ZSTD_IMAGE = ("-T0", "--long=27")
"""The whole image: level 3 (measured on a 200 MB image: 60 MB in 0.8 s; -9 gives 56 MB in
2.5 s) and a 128 MiB window, which any zstd decompresses in its default memory."""
ZSTD_UNPACK = ("--long=31", "--memory=128MB")
"""A window larger than realms makes is refused rather than given the memory."""


@dataclass(frozen=True)
class PushedArtifact:
    """What :func:`push_artifact` did (push.py makes its PushResult of it: the result types of
    push.py and pull.py are not imported here, which would be an import cycle)."""

    digest: str
    """The manifest's digest."""
    uploaded: int
    blobs_reused: int
    layers: int
    deltas: list[int] = field(default_factory=list)
    """The versions a delta was pushed against."""


@dataclass(frozen=True)
class PulledArtifact:
    """What :func:`pull_artifact` did (pull.py makes its PullResult of it)."""

    version: Version
    downloaded: int
    """Bytes downloaded (blobs found in the blob cache are not counted)."""
    delta_base: int | None = None
    """The local version a delta was applied to; None: the full image was downloaded."""


def is_artifact(manifest: dict[str, Any]) -> bool:
    """Whether a parsed manifest is a realms artifact (its artifactType, or its config's media
    type for registries that drop artifactType)."""
    if manifest.get("artifactType") == ARTIFACT_TYPE:
        return True
    config = manifest.get("config")
    return isinstance(config, dict) and config.get("mediaType") == CONFIG_MEDIA_TYPE


# The manifest, checked


@dataclass(frozen=True)
class _Artifact:
    image: Descriptor
    image_digest: str
    image_size: int
    deltas: dict[str, Descriptor]
    """By the digest of the image each applies to."""


def _parse(manifest: dict[str, Any], what: str) -> _Artifact:
    """The image layer and the deltas of an artifact's manifest (hostile until here)."""
    if manifest.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST:
        raise InvalidInput(f"{what} is not an OCI image manifest")
    entries = manifest.get("layers")
    if not isinstance(entries, list) or not 0 < len(entries) <= LAYERS_LIMIT:
        raise InvalidInput(f"{what} has no list of at most {LAYERS_LIMIT} layers")
    layers = [parse_descriptor(e, f"{what}'s layer {i + 1}") for i, e in enumerate(entries)]
    found = [layer for layer in layers if layer.media_type == IMAGE_MEDIA_TYPE]
    if len(found) != 1:
        raise InvalidInput(f"{what} has {len(found)} image layers, not one")
    image = found[0]
    try:
        image_digest = check_digest(image.annotations.get(IMAGE_DIGEST, ""))
        text = image.annotations.get(IMAGE_SIZE, "")
        image_size = int(text) if text.isascii() and text.isdigit() else -1
    except InvalidInput:
        image_size = -1
    if image_size <= 0 or image_size > BLOB_LIMIT:
        raise InvalidInput(f"{what}'s image layer does not say the image's digest and size")
    deltas: dict[str, Descriptor] = {}
    for layer in layers:
        if layer.media_type != DELTA_MEDIA_TYPE:
            continue
        try:
            base = check_digest(layer.annotations.get(DELTA_BASE, ""))
        except InvalidInput:
            log.debug(f"{what}: a delta layer names no base image")
            continue
        # A delta larger than the image is no shortcut.
        if layer.size < image.size:
            deltas[base] = layer
    return _Artifact(image, image_digest, image_size, deltas)


# Pull


def pull_artifact(
    store: Store,
    repo: Repository,
    ref: Reference,
    manifest_digest: str,
    manifest: dict[str, Any],
    *,
    name: str,
) -> PulledArtifact:
    """Pull the artifact ``manifest`` (already fetched, digest checked) into appimg ``name``
    (created when it does not exist) as a new version with origin ``pull`` and source
    ``{"ref": str(ref), "digest": manifest_digest}``. A delta is used when its base is a local
    version of ``name``; whatever goes wrong with it, the full image is downloaded instead.
    The caller has checked that ``name`` does not already hold ``manifest_digest``."""
    what = f"the artifact {ref}"
    artifact = _parse(manifest, what)
    with store.build_lock(name), _work(store, name) as work:
        image = work / "image.img"
        downloaded, used = 0, None
        base = _delta_base(store, name, artifact)
        if base is not None:
            descriptor = artifact.deltas[base[1]]
            try:
                fetched = _fetch(store, repo, descriptor, f"delta {blobs.short(descriptor.digest)}")
                downloaded = fetched.downloaded
                _apply(store, name, artifact, base, fetched.path, image=image)
                used = base[0].version
            except (RealmsError, OSError) as error:
                # Whatever it was, the whole image decides; a delta that failed is no use.
                log.warn(
                    f"the delta from version {base[0].version} failed "
                    f"({getattr(error, 'message', error)}): downloading the whole image"
                )
                image.unlink(missing_ok=True)
                store.blob_path(descriptor.digest).unlink(missing_ok=True)
        if used is None:
            downloaded += _via_image(store, repo, artifact, image, what)
        source = {"ref": str(ref), "digest": manifest_digest, **remembered_tls(repo)}
        # An image made from a delta has the digest the manifest names, as the whole image
        # must: if the checks below refuse it, the whole image would be refused as well.
        try:
            version = images.import_image(
                store, name, image, pulled=source, image_digest=artifact.image_digest
            )
        except InvalidInput as error:
            # The image was refused: its checked blob is no use to anyone either.
            store.blob_path(artifact.image.digest).unlink(missing_ok=True)
            raise InvalidInput(f"{what}: {error.message.removeprefix(f'{image}: ')}") from None
    return PulledArtifact(version, downloaded, used)


@contextmanager
def _work(store: Store, name: str) -> Iterator[Path]:
    store.build_dir.mkdir(exist_ok=True)
    work = store.build_work_path(name, token())
    work.mkdir(mode=0o700)
    try:
        yield work
    finally:
        store.remove(work)


def _fetch(store: Store, repo: Repository, descriptor: Descriptor, title: str) -> blobs.Fetched:
    with log.transfers() as transfers:
        return blobs.fetch(store, repo, descriptor, transfers=transfers, title=title)


def _via_image(store: Store, repo: Repository, artifact: _Artifact, image: Path, what: str) -> int:
    """Download the whole image and decompress it to ``image``; the bytes downloaded."""
    fetched = _fetch(store, repo, artifact.image, f"image {blobs.short(artifact.image.digest)}")
    _check_space(image.parent, artifact.image_size)
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with log.step("Decompressing the image"):
            delta.unzstd(fetched.path, fd, limit=artifact.image_size, options=ZSTD_UNPACK)
    except InvalidInput as error:
        raise InvalidInput(f"{what}: the image layer: {error.message}") from None
    finally:
        os.close(fd)
    if image.stat().st_size != artifact.image_size:
        raise InvalidInput(f"{what}: the image is smaller than its manifest says")
    if delta.image_digest(image) != artifact.image_digest:
        raise InvalidInput(f"{what}: the image does not match the digest its manifest names")
    return fetched.downloaded


def _check_space(directory: Path, size: int) -> None:
    stat = os.statvfs(directory)
    if stat.f_bavail * stat.f_frsize < size:
        raise RealmsError(
            f"the image needs {format_size(size)}; the store has "
            f"{format_size(stat.f_bavail * stat.f_frsize)} free"
        )


def _delta_base(store: Store, name: str, artifact: _Artifact) -> tuple[Version, str] | None:
    """The newest local image version of ``name`` that a delta of the artifact applies to, and
    its digest. Image digests not yet known are computed (newest first, until one matches) and
    kept in the record."""
    if not artifact.deltas or not exists(store, name):
        return None
    record = load_record(store, name)
    computed: dict[int, str] = {}
    chosen: tuple[Version, str] | None = None
    for version in _images_newest_first(record)[: DELTAS_PUSHED + 1]:
        digest = version.image_digest
        if digest is None:
            try:
                digest = computed[version.version] = delta.image_digest(
                    store.version_path(name, version)
                )
            except OSError:
                continue
        if digest in artifact.deltas:
            chosen = version, digest
            break
    if computed:
        with changing(store, name) as changed:
            for number, digest in computed.items():
                if (entry := changed.version(number)) is not None:
                    entry.image_digest = digest
    return chosen


def _images_newest_first(record: AppimgRecord) -> list[Version]:
    return sorted((v for v in record.versions if v.kind in IMAGE_KINDS), key=lambda v: -v.version)


def _apply(
    store: Store,
    name: str,
    artifact: _Artifact,
    base: tuple[Version, str],
    patch: Path,
    *,
    image: Path,
) -> None:
    """Make the image from the delta ``patch`` and the local version ``base``."""
    version, digest = base
    # Under the appimg's shared lock: no prune takes the base away while zstd reads it.
    with (
        store.appimg_lock(name, shared=True),
        log.step(f"Applying the delta to version {version.version}"),
    ):
        delta.apply_delta(
            patch,
            store.version_path(name, version),
            image,
            base_digest=digest,
            target_digest=artifact.image_digest,
        )


# Push


@dataclass
class _Blob:
    descriptor: dict[str, Any]
    path: Path | None = None
    body: bytes = b""

    @property
    def digest(self) -> str:
        return str(self.descriptor["digest"])

    @property
    def size(self) -> int:
        return int(self.descriptor["size"])


def _blob_of(path: Path, media_type: str, annotations: dict[str, str]) -> _Blob:
    descriptor = {
        "mediaType": media_type,
        "digest": delta.image_digest(path),
        "size": path.stat().st_size,
        "annotations": annotations,
    }
    return _Blob(descriptor, path=path)


def push_artifact(
    store: Store, name: str, version: Version, repo: Repository, ref: Reference
) -> PushedArtifact:
    """Push block or sealed ``version`` of appimg ``name`` as an artifact tagged ``ref``'s tag:
    the image compressed, and deltas against the two versions before it that were pushed to
    the same repository and are still here. Records the push in the version's ``pushed`` and
    its ``image_digest``."""
    if version.kind not in IMAGE_KINDS:
        raise InvalidInput(f"version {version.version} of appimg {name!r} is not an image")
    with store.build_lock(name), _work(store, name) as work:
        image, bases = _snapshot(store, name, version, ref, work)
        image_digest = version.image_digest or delta.image_digest(image)
        known = {v.version: d for v, _, d in bases if v.image_digest is None}
        if version.image_digest is None:
            known[version.version] = image_digest
        blobs_ = [_compressed(image, image_digest, work)]
        made: list[int] = []
        for base, path, digest in bases:
            blob = _delta_blob(path, image, work, (base.version, digest), image_digest)
            if blob is not None and blob.size < blobs_[0].size:
                blobs_.append(blob)
                made.append(base.version)
        config = _config(name, version, image, image_digest)
        uploaded, reused = _upload(repo, [config, *blobs_], _mount_sources(version, ref))
        body = _manifest(name, version, config, blobs_)
        digest = repo.put_manifest(ref.tag or "latest", body, OCI_MANIFEST)
        with changing(store, name) as record:
            for number, value in known.items():
                if (entry := record.version(number)) is not None:
                    entry.image_digest = value
            if (entry := record.version(version.version)) is not None:
                entry.pushed = [p for p in entry.pushed if p.get("repository") != ref.name]
                entry.pushed.append({"repository": ref.name, "digest": digest})
    return PushedArtifact(digest, uploaded, reused, len(blobs_), made)


def _snapshot(
    store: Store, name: str, version: Version, ref: Reference, work: Path
) -> tuple[Path, list[tuple[Version, Path, str]]]:
    """Reflinks of the image and of the delta bases (the image versions before it that were
    pushed to the same repository), made under the appimg's shared lock; the bases with their
    image digests."""
    with store.appimg_lock(name, shared=True):
        record = load_record(store, name)
        image = work / "image.img"
        run(["cp", "--reflink=auto", "--", store.version_path(name, version), image])
        older = [
            v
            for v in _images_newest_first(record)
            if v.version < version.version
            and any(p.get("repository") == ref.name for p in v.pushed)
        ][:DELTAS_PUSHED]
        bases: list[tuple[Version, Path, str]] = []
        for base in older:
            path = work / f"base-{base.version}.img"
            run(["cp", "--reflink=auto", "--", store.version_path(name, base), path])
            bases.append((base, path, base.image_digest or delta.image_digest(path)))
    return image, bases


def _compressed(image: Path, image_digest: str, work: Path) -> _Blob:
    target = work / "image.img.zst"
    with log.step(f"Compressing the image ({format_size(image.stat().st_size)})"):
        run(["zstd", "-q", *ZSTD_IMAGE, "-o", target, "--", image])
    annotations = {IMAGE_DIGEST: image_digest, IMAGE_SIZE: str(image.stat().st_size)}
    return _blob_of(target, IMAGE_MEDIA_TYPE, annotations)


def _delta_blob(
    base: Path, image: Path, work: Path, against: tuple[int, str], image_digest: str
) -> _Blob | None:
    number, base_digest = against
    if not delta.fits(base.stat().st_size, image.stat().st_size):
        log.note(f"no delta from version {number}: the images are too large for zstd's window")
        return None
    target = work / f"delta-{number}"
    with log.step(f"Making the delta from version {number}"):
        delta.make_delta(
            base, image, target, scratch=work, base_digest=base_digest, target_digest=image_digest
        )
    return _blob_of(target, DELTA_MEDIA_TYPE, {DELTA_BASE: base_digest})


def _config(name: str, version: Version, image: Path, image_digest: str) -> _Blob:
    header, _ = read_header(image)
    data = {
        "name": name,
        "version": version.version,
        "kind": str(version.kind),
        "channel": header.metainfo.channel,
        "image_digest": image_digest,
        "image_size": image.stat().st_size,
        "created": version.created,
    }
    body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    descriptor = {
        "mediaType": CONFIG_MEDIA_TYPE,
        "digest": f"sha256:{hashlib.sha256(body).hexdigest()}",
        "size": len(body),
    }
    return _Blob(descriptor, body=body)


def _manifest(name: str, version: Version, config: _Blob, layers: list[_Blob]) -> bytes:
    annotations = {
        "org.opencontainers.image.created": version.created,
        "org.opencontainers.image.version": str(version.version),
        "org.opencontainers.image.title": name,
        "org.realms.appimg.name": name,
        "org.realms.appimg.version": str(version.version),
        "org.realms.appimg.kind": str(version.kind),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": config.descriptor,
        "layers": [layer.descriptor for layer in layers],
        "annotations": annotations,
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


def _mount_sources(version: Version, ref: Reference) -> list[str]:
    """Other repositories of the same registry this version was pushed to: a blob there is
    mounted, not uploaded again."""
    prefix = f"{ref.registry}/"
    return [
        p["repository"].removeprefix(prefix)
        for p in version.pushed
        if p.get("repository", "").startswith(prefix) and p["repository"] != ref.name
    ]


def _upload(repo: Repository, items: list[_Blob], sources: list[str]) -> tuple[int, int]:
    """Send the blobs the registry does not have; the bytes sent and the blobs not sent."""
    uploaded = reused = 0
    with log.transfers() as transfers:
        for blob in items:
            if repo.blob_size(blob.digest) == blob.size or any(
                repo.mount_blob(blob.digest, source) for source in sources
            ):
                reused += 1
                continue
            bar = transfers.start(f"upload {blobs.short(blob.digest)}", blob.size)
            ok = False
            try:
                data: Path | IO[bytes] = blob.path if blob.path else io.BytesIO(blob.body)
                repo.upload_blob(blob.digest, data, blob.size, bar.advance)
                ok = True
            finally:
                bar.done(ok)
            uploaded += blob.size
    return uploaded, reused
