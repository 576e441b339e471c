"""Manifests, indexes and image configs from a registry: parsed and checked in one place.

Everything here is hostile input: a body is size-limited before it is parsed (the client reads
at most :data:`realms.registry.client.MANIFEST_LIMIT`; a config at most :data:`CONFIG_LIMIT`),
must be a JSON object of a known media type, and every descriptor in it is checked (a
``sha256:`` digest from :func:`realms.registry.reference.check_digest`, an integer size, at
most :data:`BLOB_LIMIT` bytes each and :data:`TOTAL_LIMIT` in all) before any of its values
reaches a URL, a path or an allocation.

- An **index** (OCI image index, Docker manifest list) names one manifest per platform;
  :func:`select` picks the one for this host (or ``--platform OS/ARCH[/VARIANT]``).
- An **image manifest** (OCI, Docker v2 schema 2) names a config and layers. A realms artifact
  (:mod:`realms.registry.artifact`) is an OCI manifest too: :func:`parse_document` keeps the
  decoded object so that the caller can dispatch on it before :func:`parse_image` checks the
  media types of a container image.
- An **image config** says the uncompressed digests of the layers (``rootfs.diff_ids``, one per
  layer) and, for information only, how a container of it would run (Env, Cmd, User...).

Docker's schema 1 and unknown media types are refused with one line saying so.
"""

from __future__ import annotations

import json
import platform as host
from dataclasses import dataclass, field
from typing import Any

from realms.errors import InvalidInput
from realms.registry.client import MANIFEST_LIMIT
from realms.registry.reference import check_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
"""What a pull asks a registry for (no schema 1: a registry that only has that answers 404 or
schema 1, which is then refused by name)."""

CONFIG_TYPES = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}
"""The layer media types of a container image, and their compression (those that
:func:`realms.registry.layers.open_layer` reads: the deprecated non-distributable and foreign
layers are not in the registry anyway)."""

CONFIG_LIMIT = 4 * 1024 * 1024
"""The largest image config read (as containers/image)."""
BLOB_LIMIT = 64 * 1024**3
"""The largest blob a descriptor may name: a registry must not make realms fill the disk."""
TOTAL_LIMIT = 128 * 1024**3
"""The most bytes the blobs of one image may add up to."""
LAYERS_LIMIT = 512
"""The most layers an image may have (Docker's overlay driver allows 128)."""
INDEX_LIMIT = 1024
"""The most manifests an index may list."""
_TEXT_LIMIT = 4096
"""The longest media type, platform field or annotation kept from a manifest."""


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: list[Descriptor]


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]

    @property
    def size(self) -> int:
        """The bytes of all its blobs."""
        return self.config.size + sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class ImageConfig:
    diff_ids: list[str]
    """The sha256 of each layer uncompressed, in order."""
    platform: Platform | None
    env: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    user: str = ""
    working_dir: str = ""


# Decoding


def decode(body: bytes, what: str, limit: int) -> dict[str, Any]:
    """The JSON object ``body`` (at most ``limit`` bytes), or InvalidInput naming ``what``."""
    if len(body) > limit:
        raise InvalidInput(f"{what} is larger than {limit} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInput(f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{what} is not a JSON object")
    return data


def _text(value: object, what: str, *, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str) or len(value) > _TEXT_LIMIT:
        raise InvalidInput(f"{what} is not a string of at most {_TEXT_LIMIT} characters")
    return value


def _strings(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidInput(f"{what} is not a list of strings")
    return list(value)


def _size(value: object, what: str) -> int:
    # bool is an int in Python; a size of true is not a size.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"{what} has no valid size")
    if value > BLOB_LIMIT:
        raise InvalidInput(f"{what} says it has {value} bytes, more than realms pulls")
    return value


def _platform(value: object, what: str) -> Platform | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput(f"the platform of {what} is not an object")
    variant = _text(value.get("variant"), f"the platform variant of {what}", optional=True)
    return Platform(
        _text(value.get("os"), f"the platform os of {what}"),
        _text(value.get("architecture"), f"the platform architecture of {what}"),
        variant or None,
    )


def parse_descriptor(value: object, what: str) -> Descriptor:
    """One checked descriptor (``mediaType``, ``digest``, ``size``, optional ``platform`` and
    string ``annotations``)."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} is not an object")
    media_type = _text(value.get("mediaType"), f"the mediaType of {what}")
    try:
        digest = check_digest(value.get("digest"))  # type: ignore[arg-type]
    except InvalidInput:
        raise InvalidInput(f"{what} has no valid sha256 digest") from None
    size = _size(value.get("size"), f"{what} ({digest[:19]})")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) <= _TEXT_LIMIT
        for k, v in annotations.items()
    ):
        raise InvalidInput(f"the annotations of {what} are not strings")
    return Descriptor(media_type, digest, size, _platform(value.get("platform"), what), annotations)


def media_type(data: dict[str, Any], content_type: str, what: str) -> str:
    """The media type of a decoded manifest or index: its own ``mediaType`` (the registry's
    Content-Type where the body has none, as OCI allows); schema 1 and unknown types are
    refused."""
    declared = data.get("mediaType")
    if data.get("schemaVersion") == 1 or declared in SCHEMA1 or content_type in SCHEMA1:
        raise InvalidInput(
            f"{what} is a Docker schema 1 manifest, which realms does not pull",
            hint="copy it once with a current tool (skopeo copy) to convert it to schema 2",
        )
    if data.get("schemaVersion") != 2:
        raise InvalidInput(f"{what} is not a schemaVersion 2 manifest")
    if declared is None:
        # Without a mediaType, what the document holds says which it is.
        kind = content_type.split(";", maxsplit=1)[0].strip()
        if kind not in (*INDEX_TYPES, *MANIFEST_TYPES):
            kind = OCI_INDEX if "manifests" in data else OCI_MANIFEST
        declared = kind
    if declared not in (*INDEX_TYPES, *MANIFEST_TYPES):
        raise InvalidInput(f"{what} has the unknown media type {_text(declared, what)!r}")
    return str(declared)


def parse_document(body: bytes, content_type: str, what: str) -> tuple[dict[str, Any], str]:
    """A manifest or index as served: its decoded object and its media type (one of
    INDEX_TYPES or MANIFEST_TYPES)."""
    data = decode(body, what, MANIFEST_LIMIT)
    return data, media_type(data, content_type, what)


# Indexes and platforms


def parse_index(data: dict[str, Any], kind: str, what: str) -> Index:
    entries = data.get("manifests")
    if not isinstance(entries, list) or len(entries) > INDEX_LIMIT:
        raise InvalidInput(f"{what} has no list of at most {INDEX_LIMIT} manifests")
    manifests = [parse_descriptor(e, f"manifest {i + 1} of {what}") for i, e in enumerate(entries)]
    return Index(kind, manifests)


_MACHINES = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


def host_platform() -> Platform:
    """This machine's platform as OCI names it (``linux/amd64`` on x86_64)."""
    machine = host.machine()
    architecture, variant = _MACHINES.get(machine, (machine, None))
    return Platform("linux", architecture, variant)


def parse_platform(text: str) -> Platform:
    """``OS/ARCH[/VARIANT]`` as given to ``--platform``."""
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(parts) or len(text) > 100:
        raise InvalidInput(
            f"invalid platform {text!r}", hint="a platform is OS/ARCH[/VARIANT], e.g. linux/arm64"
        )
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def _variant(platform: Platform) -> str | None:
    # arm64 without a variant is v8 (as containerd's platform matcher has it).
    if platform.architecture == "arm64" and platform.variant is None:
        return "v8"
    return platform.variant


def select(index: Index, wanted: Platform, what: str) -> Descriptor:
    """The manifest of ``index`` for platform ``wanted`` (a wanted variant must match; without
    one, an entry without a variant is preferred), or InvalidInput listing what is there."""
    matching = [
        d
        for d in index.manifests
        if d.platform is not None
        and d.platform.os == wanted.os
        and d.platform.architecture == wanted.architecture
        and (wanted.variant is None or _variant(d.platform) == _variant(wanted))
    ]
    if matching:
        plain = [d for d in matching if d.platform is not None and d.platform.variant is None]
        return (plain or matching)[0]
    there = sorted({str(d.platform) for d in index.manifests if d.platform is not None})
    raise InvalidInput(
        f"{what} has no image for {wanted} (it has {', '.join(there) or 'no platforms'})",
        hint="choose one with --platform OS/ARCH[/VARIANT]",
    )


# Image manifests and configs


def parse_image(data: dict[str, Any], kind: str, what: str) -> ImageManifest:
    """A container image's manifest: a config and layers of known media types, sizes in
    bounds."""
    config = parse_descriptor(data.get("config"), f"the config of {what}")
    if config.media_type not in CONFIG_TYPES:
        raise InvalidInput(
            f"{what} is not a container image (its config has media type {config.media_type!r})"
        )
    if config.size > CONFIG_LIMIT:
        raise InvalidInput(f"the config of {what} says it has {config.size} bytes, too many")
    entries = data.get("layers")
    if not isinstance(entries, list) or len(entries) > LAYERS_LIMIT:
        raise InvalidInput(f"{what} has no list of at most {LAYERS_LIMIT} layers")
    layers = [parse_descriptor(e, f"layer {i + 1} of {what}") for i, e in enumerate(entries)]
    for number, layer in enumerate(layers, 1):
        if layer.media_type not in LAYER_TYPES:
            raise InvalidInput(
                f"layer {number} of {what} has the unknown media type {layer.media_type!r}"
            )
    manifest = ImageManifest(kind, config, layers)
    if manifest.size > TOTAL_LIMIT:
        raise InvalidInput(
            f"the blobs of {what} add up to {manifest.size} bytes, more than realms pulls"
        )
    return manifest


def parse_config(body: bytes, manifest: ImageManifest, what: str) -> ImageConfig:
    """The image config (its digest already checked): one diff_id per layer."""
    data = decode(body, what, CONFIG_LIMIT)
    rootfs = data.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidInput(f"{what} has no rootfs of type layers")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise InvalidInput(f"{what} has no list of rootfs.diff_ids")
    if len(diff_ids) != len(manifest.layers):
        raise InvalidInput(
            f"{what} names {len(diff_ids)} layer digests for {len(manifest.layers)} layers"
        )
    try:
        checked = [check_digest(d) for d in diff_ids]
    except InvalidInput:
        raise InvalidInput(f"{what} has a diff_id that is not a sha256 digest") from None
    run = data.get("config") or {}
    if not isinstance(run, dict):
        raise InvalidInput(f"the container config in {what} is not an object")
    os_name, architecture = data.get("os"), data.get("architecture")
    variant = data.get("variant")
    return ImageConfig(
        checked,
        Platform(os_name, architecture, variant if isinstance(variant, str) and variant else None)
        if isinstance(os_name, str) and isinstance(architecture, str)
        else None,
        env=_strings(run.get("Env"), f"Env in {what}"),
        cmd=_strings(run.get("Cmd"), f"Cmd in {what}"),
        entrypoint=_strings(run.get("Entrypoint"), f"Entrypoint in {what}"),
        user=_text(run.get("User"), f"User in {what}", optional=True),
        working_dir=_text(run.get("WorkingDir"), f"WorkingDir in {what}", optional=True),
    )
