"""A hostile registry serving realms artifacts: an image whose signed metainfo or data was
changed, a zstd bomb, an image size past the limit, a blob whose bytes do not match its digest
(each refused with one line, the store as it was, the refused blob not kept), and deltas that
do not make the image (made against other content, making other content, garbage): each a
warning, then the whole image, byte-identical to what was pushed.

Artifacts are written by hand over the Distribution API, beside what ``realms appimg push``
made, or the registry's files are changed behind its back.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from realms.registry import delta
from realms.registry.artifact import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    DELTA_BASE,
    DELTA_MEDIA_TYPE,
    IMAGE_DIGEST,
    IMAGE_MEDIA_TYPE,
    IMAGE_SIZE,
)
from tests.helpers import Realms
from tests.system.registry.conftest import RunningRegistry
from tests.system.registry.oci import put_blob
from tests.system.registry.test_artifacts import (
    OCI_MANIFEST,
    get_manifest,
    image_file,
    pull,
    push,
    put_json_manifest,
    sealed_app,
    second_store,
    sha256_file,
    store_state,
    trust,
    versions,
)

REPOSITORY = "team/app"

pytestmark = pytest.mark.usefixtures("insecure_registry")


@pytest.fixture
def other(btrfs_pool: Path) -> Realms:
    return second_store(btrfs_pool)


@pytest.fixture
def app(realms: Realms, busybox_tree: Path, tmp_path: Path) -> str:
    return sealed_app(realms, busybox_tree, tmp_path)


def craft(
    registry: RunningRegistry,
    tag: str,
    compressed: bytes,
    *,
    digest: str,
    size: int,
    deltas: Sequence[tuple[bytes, str]] = (),
) -> str:
    """Put an artifact by hand: the image layer ``compressed`` annotated with ``digest`` and
    ``size``, and deltas (blob, base digest); return the reference."""
    config = b"{}"
    layers = [
        {
            "mediaType": IMAGE_MEDIA_TYPE,
            "digest": put_blob(registry, REPOSITORY, compressed),
            "size": len(compressed),
            "annotations": {IMAGE_DIGEST: digest, IMAGE_SIZE: str(size)},
        }
    ]
    for blob, base in deltas:
        layers.append(
            {
                "mediaType": DELTA_MEDIA_TYPE,
                "digest": put_blob(registry, REPOSITORY, blob),
                "size": len(blob),
                "annotations": {DELTA_BASE: base},
            }
        )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": put_blob(registry, REPOSITORY, config),
            "size": len(config),
        },
        "layers": layers,
    }
    put_json_manifest(registry, REPOSITORY, tag, manifest)
    return f"{registry.host}/{REPOSITORY}:{tag}"


def zstd(data: bytes) -> bytes:
    return subprocess.run(
        ["zstd", "-q", "-c", "--long=27"], input=data, capture_output=True, check=True
    ).stdout


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def cached_blobs(realms: Realms) -> set[str]:
    directory = realms.store / "cache/blobs/sha256"
    return {path.name for path in directory.iterdir()} if directory.exists() else set()


def refused(realms: Realms, ref: str) -> str:
    """Pull ``ref`` into appimg app, which must be refused leaving the store as it was."""
    before = store_state(realms)
    error = realms.fails("appimg", "pull", ref, "--name", "app")
    assert store_state(realms) == before
    return error


@pytest.mark.parametrize("where", ["metainfo", "data"])
def test_changed_image_refused(
    realms: Realms, other: Realms, app: str, registry: RunningRegistry, where: str
) -> None:
    trust(realms, other)
    image = bytearray(image_file(realms, app).read_bytes())
    if where == "metainfo":
        at = image.index(b"realmfs-name")
        image[at : at + 12] = b"realmfs-nbme"  # still valid TOML; no longer what was signed
    else:
        image[4096 + 1000 * 4096 + 17] ^= 0xFF  # a byte of the filesystem
    blob = zstd(bytes(image))
    ref = craft(registry, where, blob, digest=sha256(bytes(image)), size=len(image))
    error = refused(other, ref)
    expected = "signature" if where == "metainfo" else "verity"
    assert f"the artifact {ref}" in error and expected in error, error
    assert sha256(blob).removeprefix("sha256:") not in cached_blobs(other)


def test_zstd_bomb_refused(other: Realms, registry: RunningRegistry) -> None:
    """A small blob that decompresses to far more than the image size its manifest says."""
    bomb = zstd(bytes(256 << 20))
    assert len(bomb) < 64 << 10
    ref = craft(registry, "bomb", bomb, digest=sha256(b"x"), size=1 << 20)
    error = refused(other, ref)
    assert "decompresses to more than the 1048576 bytes" in error, error


def test_huge_image_size_refused(other: Realms, registry: RunningRegistry) -> None:
    ref = craft(registry, "huge", zstd(b"x"), digest=sha256(b"x"), size=1 << 50)
    error = refused(other, ref)
    assert "does not say the image's digest and size" in error, error


def test_blob_not_matching_its_digest_refused(
    realms: Realms, other: Realms, app: str, registry: RunningRegistry
) -> None:
    trust(realms, other)
    ref = f"{registry.host}/{REPOSITORY}:stable"
    push(realms, app, ref)
    (layer,) = get_manifest(registry, REPOSITORY, "stable")["layers"]
    data = registry.blob_data_path(layer["digest"])
    content = bytearray(data.read_bytes())
    content[len(content) // 2] ^= 0x01
    data.write_bytes(bytes(content))
    error = refused(other, ref)
    assert "does not match its digest" in error, error


def _bad_delta(kind: str, base: Path, target: Path, scratch: Path) -> bytes:
    """A delta that claims to make ``target`` from ``base`` but does not."""
    out = scratch / f"bad-{kind}"
    base_digest, target_digest = sha256_file(base), sha256_file(target)
    if kind == "garbage":
        prefix = (scratch / "good").read_bytes()[: delta.PREFIX_SIZE]
        return prefix + os.urandom(64 << 10)
    changed = scratch / f"changed-{kind}"
    content = bytearray((base if kind == "other-base" else target).read_bytes())
    if kind == "other-base":
        # Made against other content than the base it names: 1 MiB inserted near the start,
        # so that the patch's references into the base point elsewhere in the real one.
        content[4096 * 50 : 4096 * 50] = os.urandom(1 << 20)
        made_from, made_to = changed, target
    else:
        # Made against the right base, to other content than the image it names.
        content[4096 * 50 : 4096 * 50 + (1 << 20)] = os.urandom(1 << 20)
        made_from, made_to = base, changed
    changed.write_bytes(bytes(content))
    delta.make_delta(
        made_from,
        made_to,
        out,
        scratch=scratch,
        base_digest=base_digest,
        target_digest=target_digest,
    )
    return out.read_bytes()


@pytest.mark.usefixtures("app")
@pytest.mark.parametrize("kind", ["other-base", "other-target", "garbage"])
def test_bad_delta_means_the_whole_image(
    realms: Realms, other: Realms, registry: RunningRegistry, tmp_path: Path, kind: str
) -> None:
    app = "app"
    trust(realms, other)
    ref = f"{registry.host}/{REPOSITORY}:stable"
    push(realms, app, ref)
    pull(other, ref, "app")
    base = image_file(other, "app")
    realms("update-appimg", app, "--", "sh", "-c", "echo changed > /etc/changed")
    target = image_file(realms, app)
    push(realms, app, ref)
    manifest: dict[str, Any] = get_manifest(registry, REPOSITORY, "stable")
    image_layer, good = manifest["layers"]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "good").write_bytes(registry.blob_data_path(good["digest"]).read_bytes())
    bad = _bad_delta(kind, base, target, scratch)
    manifest["layers"] = [
        image_layer,
        {
            "mediaType": DELTA_MEDIA_TYPE,
            "digest": put_blob(registry, REPOSITORY, bad),
            "size": len(bad),
            "annotations": {DELTA_BASE: sha256_file(base)},
        },
    ]
    put_json_manifest(registry, REPOSITORY, kind, manifest)

    result = other("appimg", "pull", f"{registry.host}/{REPOSITORY}:{kind}", "--json")
    assert "realms: warning: the delta from version 1 failed" in result.stderr, result.stderr
    assert "downloading the whole image" in result.stderr
    # What caught it: zstd (a checksum, garbage) or the recomputed hash tree's root hash.
    caught = {"other-base": "does not apply", "other-target": "root hash", "garbage": "apply"}
    assert caught[kind] in result.stderr, result.stderr
    (done,) = json.loads(result.stdout)
    assert done["version"] == 2
    assert done["downloaded"] == image_layer["size"] + len(bad)
    assert image_file(other, "app").read_bytes() == target.read_bytes()
    assert other.json("appimg", "verify", "app")["ok"]
    assert [v["version"] for v in versions(other, "app")] == [1, 2]
