"""Deltas of image files (made and applied on small synthetic images, no root) and the checks of
an artifact's manifest: a delta makes the exact image or is refused; a manifest without one
image layer of bounded, stated size is refused; deltas that cannot help are left out."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from realms.errors import InvalidInput
from realms.image.header import FLAG_HASH_TREE, HEADER_SIZE, build_header, data_size
from realms.image.header import render_metainfo as metainfo
from realms.image.verity import format_hash_tree
from realms.registry import delta
from realms.registry.artifact import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    DELTA_BASE,
    DELTA_MEDIA_TYPE,
    IMAGE_DIGEST,
    IMAGE_MEDIA_TYPE,
    IMAGE_SIZE,
    _parse,
    is_artifact,
)

BLOCKS = 64


def make_image(path: Path, data: bytes, *, sealed: bool) -> Path:
    """An unsigned image file: header, ``data`` (whole blocks), a hash tree when sealed."""
    assert len(data) == data_size(BLOCKS)
    path.write_bytes(bytes(HEADER_SIZE) + data)
    salt = root = None
    if sealed:
        salt = os.urandom(32)
        root = format_hash_tree(
            path,
            data_offset=HEADER_SIZE,
            data_blocks=BLOCKS,
            hash_offset=HEADER_SIZE + data_size(BLOCKS),
            salt=salt,
        )
    raw = metainfo(
        image_type="realmfs",
        realmfs_name="app",
        nblocks=BLOCKS,
        version=1,
        verity_salt=salt,
        verity_root=root,
    )
    with open(path, "r+b") as handle:
        handle.write(build_header(raw, flags=FLAG_HASH_TREE if sealed else 0))
    return path


def changed(data: bytes) -> bytes:
    edited = bytearray(data)
    edited[5000:5100] = os.urandom(100)
    return bytes(edited)


@pytest.fixture
def data() -> bytes:
    # Compressible but not trivial: a delta must find the unchanged parts.
    return b"".join(f"line {i:08d} of the filesystem\n".encode() for i in range(8192))[
        : data_size(BLOCKS)
    ].ljust(data_size(BLOCKS), b"\0")


@pytest.mark.parametrize("sealed", [True, False])
def test_delta_makes_the_image(tmp_path: Path, data: bytes, sealed: bool) -> None:
    base = make_image(tmp_path / "base.img", data, sealed=sealed)
    target = make_image(tmp_path / "target.img", changed(data), sealed=sealed)
    base_digest, target_digest = delta.image_digest(base), delta.image_digest(target)
    patch = tmp_path / "delta"
    size = delta.make_delta(
        base, target, patch, scratch=tmp_path, base_digest=base_digest, target_digest=target_digest
    )
    assert size < target.stat().st_size // 10
    info = delta.read_info(patch)
    assert (info.base_digest, info.target_digest) == (base_digest, target_digest)
    out = tmp_path / "out.img"
    delta.apply_delta(patch, base, out, base_digest=base_digest, target_digest=target_digest)
    assert out.read_bytes() == target.read_bytes()


def test_delta_for_another_base_or_image_is_refused(tmp_path: Path, data: bytes) -> None:
    base = make_image(tmp_path / "base.img", data, sealed=True)
    target = make_image(tmp_path / "target.img", changed(data), sealed=True)
    digests = {"base_digest": delta.image_digest(base), "target_digest": delta.image_digest(target)}
    patch = tmp_path / "delta"
    delta.make_delta(base, target, patch, scratch=tmp_path, **digests)
    other = "sha256:" + "0" * 64
    with pytest.raises(InvalidInput, match="applies to"):
        delta.apply_delta(
            patch, base, tmp_path / "a", base_digest=other, target_digest=digests["target_digest"]
        )
    with pytest.raises(InvalidInput, match="makes"):
        delta.apply_delta(
            patch, base, tmp_path / "b", base_digest=digests["base_digest"], target_digest=other
        )
    # Cut short: zstd fails, nothing claims success.
    short = tmp_path / "short"
    short.write_bytes(patch.read_bytes()[:-20])
    with pytest.raises(InvalidInput, match=r"does not apply|shorter"):
        delta.apply_delta(short, base, tmp_path / "c", **digests)
    with pytest.raises(InvalidInput, match="not a realms delta"):
        delta.read_info(base)


def test_delta_that_writes_too_much_is_stopped(tmp_path: Path, data: bytes) -> None:
    """A patch that decompresses to more than its header's data area is killed at that size."""
    base = make_image(tmp_path / "base.img", data, sealed=False)
    target = make_image(tmp_path / "target.img", changed(data), sealed=False)
    digests = {"base_digest": delta.image_digest(base), "target_digest": delta.image_digest(target)}
    patch = tmp_path / "delta"
    delta.make_delta(base, target, patch, scratch=tmp_path, **digests)
    bomb = subprocess.run(
        ["zstd", "-q", "-c", "--zstd=windowLog=17"],
        input=bytes(64 << 20),
        capture_output=True,
        check=True,
    ).stdout
    crafted = tmp_path / "bomb"
    crafted.write_bytes(patch.read_bytes()[: delta.PREFIX_SIZE] + bomb)
    out = tmp_path / "out.img"
    with pytest.raises(InvalidInput, match="more than"):
        delta.apply_delta(crafted, base, out, **digests)
    assert out.stat().st_size <= HEADER_SIZE + data_size(BLOCKS)


def manifest(**changes: Any) -> dict[str, Any]:
    image = {
        "mediaType": IMAGE_MEDIA_TYPE,
        "digest": "sha256:" + "1" * 64,
        "size": 1000,
        "annotations": {IMAGE_DIGEST: "sha256:" + "2" * 64, IMAGE_SIZE: "4096000"},
    }
    deltas = [
        {
            "mediaType": DELTA_MEDIA_TYPE,
            "digest": "sha256:" + "3" * 64,
            "size": 10,
            "annotations": {DELTA_BASE: "sha256:" + "4" * 64},
        }
    ]
    data: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + "5" * 64, "size": 2},
        "layers": [image, *deltas],
    }
    data.update(changes)
    return data


def test_artifact_manifest_checks() -> None:
    good = manifest()
    assert is_artifact(good)
    assert is_artifact({**good, "artifactType": None})  # the config's media type says it too
    assert not is_artifact({"config": {"mediaType": "application/vnd.oci.image.config.v1+json"}})
    parsed = _parse(good, "m")
    assert parsed.image_size == 4096000 and list(parsed.deltas) == ["sha256:" + "4" * 64]

    image, delta_layer = good["layers"]
    with pytest.raises(InvalidInput, match="0 image layers"):
        _parse(manifest(layers=[delta_layer]), "m")
    with pytest.raises(InvalidInput, match="2 image layers"):
        _parse(manifest(layers=[image, image]), "m")
    with pytest.raises(InvalidInput, match="at most 16 layers"):
        _parse(manifest(layers=[image] * 17), "m")
    for size in ("0", "-1", str(1 << 50), "1e9", ""):
        bad = {**image, "annotations": {**image["annotations"], IMAGE_SIZE: size}}
        with pytest.raises(InvalidInput, match="digest and size"):
            _parse(manifest(layers=[bad]), "m")
    bad = {**image, "annotations": {IMAGE_DIGEST: "md5:00", IMAGE_SIZE: "10"}}
    with pytest.raises(InvalidInput, match="digest and size"):
        _parse(manifest(layers=[bad]), "m")
    # Deltas that name no base, or are larger than the image, are left out.
    no_base = {**delta_layer, "annotations": {}}
    larger = {**delta_layer, "size": 5000}
    assert _parse(manifest(layers=[image, no_base, larger]), "m").deltas == {}
