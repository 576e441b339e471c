"""Block and sealed versions as OCI artifacts: the manifest format, pushing and pulling one.

(Interface fixed; the body is being written.)

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
checks an image file (header, signature against this store's trusted keys, every block).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realms.appimg.record import Version
from realms.registry.client import Repository
from realms.registry.reference import Reference
from realms.store import Store

ARTIFACT_TYPE = "application/vnd.realms.appimg.v1"
CONFIG_MEDIA_TYPE = "application/vnd.realms.appimg.config.v1+json"
IMAGE_MEDIA_TYPE = "application/vnd.realms.image.v1+zstd"
DELTA_MEDIA_TYPE = "application/vnd.realms.delta.v1"


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
    raise NotImplementedError


def push_artifact(
    store: Store, name: str, version: Version, repo: Repository, ref: Reference
) -> PushedArtifact:
    """Push block or sealed ``version`` of appimg ``name`` as an artifact tagged ``ref``'s tag:
    the image compressed, and deltas against the two versions before it that were pushed to
    the same repository and are still here. Records the push in the version's ``pushed`` and
    its ``image_digest``."""
    raise NotImplementedError


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
    raise NotImplementedError
