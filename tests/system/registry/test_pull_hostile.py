"""A hostile registry cannot get anything into the store: a layer whose bytes are not its digest,
a manifest naming a huge blob or a blob of another size, a layer that escapes the tree, a
config whose diff_ids lie, a schema 1 manifest, an index without this host's platform. Each is
refused with one line (exit status 1, no traceback), the appimgs are as they were, nothing is
left staged, and no unchecked blob stays in the cache."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Realms
from tests.system.registry.conftest import RunningRegistry
from tests.system.registry.oci import put_blob
from tests.system.registry.test_pull import (
    Pushed,
    appimgs,
    assert_store_unchanged,
    entry,
    file_entry,
    push_image,
    push_index,
    tar_of,
    tar_of_tree,
)

pytestmark = pytest.mark.usefixtures("insecure_registry")


@pytest.fixture
def before(realms: Realms, busybox_tree: Path) -> list[str]:
    """A store with an appimg in it already, which every refused pull must leave alone."""
    realms("appimg", "import", "base", str(busybox_tree))
    return appimgs(realms)


def cached_blobs(realms: Realms) -> list[str]:
    cache = realms.store / "cache/blobs"
    return sorted(
        f"{d.name}/{f.name}"
        for d in (cache / "sha256", cache / "partial")
        if d.is_dir()
        for f in d.iterdir()
    )


def refused(realms: Realms, before: list[str], *args: str) -> str:
    message = realms.fails("appimg", "pull", *args)
    assert_store_unchanged(realms, before)
    return message


def small_image(registry: RunningRegistry, tag: str, busybox_tree: Path, **hooks: Any) -> Pushed:
    return push_image(
        registry,
        "evil/img",
        tag,
        [tar_of_tree(busybox_tree), tar_of([file_entry("etc/motd", b"hello\n")])],
        **hooks,
    )


def test_a_layer_that_is_not_its_digest(
    realms: Realms, registry: RunningRegistry, busybox_tree: Path, before: list[str]
) -> None:
    image = small_image(registry, "1", busybox_tree)
    layer = image.manifest["layers"][0]
    data = registry.blob_data_path(layer["digest"])
    swapped = bytearray(data.read_bytes())
    swapped[len(swapped) // 2] ^= 0xFF  # same size, other bytes
    data.write_bytes(bytes(swapped))

    message = refused(realms, before, image.ref)
    assert layer["digest"][:19] in message
    assert "does not match its digest" in message
    # The bad bytes were deleted; the good layer may stay (it was checked).
    cached = cached_blobs(realms)
    assert not any(layer["digest"][7:] in name for name in cached)
    assert not any(name.startswith("partial/") for name in cached)


def test_a_manifest_naming_a_huge_blob(
    realms: Realms, registry: RunningRegistry, busybox_tree: Path, before: list[str]
) -> None:
    def huge(manifest: dict[str, Any]) -> None:
        manifest["layers"][0]["size"] = 1 << 40

    image = small_image(registry, "huge", busybox_tree, edit_manifest=huge)
    message = refused(realms, before, image.ref)
    assert "more than realms pulls" in message
    assert cached_blobs(realms) == []


def test_a_blob_larger_than_its_descriptor(
    realms: Realms, registry: RunningRegistry, busybox_tree: Path, before: list[str]
) -> None:
    # The descriptor says 1000 bytes; the registry has (and sends) the whole layer.
    def short(manifest: dict[str, Any]) -> None:
        manifest["layers"][0]["size"] = 1000

    image = small_image(registry, "short", busybox_tree, edit_manifest=short)
    message = refused(realms, before, image.ref)
    assert "1000" in message
    assert "manifest says" in message
    digest = image.manifest["layers"][0]["digest"]
    assert not any(digest[7:] in name for name in cached_blobs(realms))
    partial = realms.store / "cache/blobs/partial"
    assert not partial.is_dir() or all(f.stat().st_size <= 1000 for f in partial.iterdir())


@pytest.mark.parametrize(
    "layer",
    [
        [file_entry("../escaped", b"out")],
        [file_entry("/../../escaped", b"out")],
        [entry("link", tarfile.SYMTYPE, 0o777, linkname="/tmp"), file_entry("link/escaped", b"x")],
        [entry("up", tarfile.SYMTYPE, 0o777, linkname=".."), entry("up/.wh.etc")],
        [entry("hard", tarfile.LNKTYPE, linkname="../../../etc/passwd")],
    ],
    ids=["dotdot", "absolute", "through-symlink", "whiteout-through-symlink", "hard-link-out"],
)
def test_a_layer_escaping_the_tree(
    realms: Realms,
    registry: RunningRegistry,
    busybox_tree: Path,
    before: list[str],
    layer: list[Any],
) -> None:
    image = push_image(registry, "evil/escape", "1", [tar_of_tree(busybox_tree), tar_of(layer)])
    message = refused(realms, before, image.ref)
    assert "layer 2" in message
    assert not Path("/tmp/escaped").exists()
    assert not (realms.store / "escaped").exists()
    assert not (realms.store.parent / "escaped").exists()


def test_a_config_whose_diff_ids_lie(
    realms: Realms, registry: RunningRegistry, busybox_tree: Path, before: list[str]
) -> None:
    def lie(config: dict[str, Any]) -> None:
        config["rootfs"]["diff_ids"][1] = "sha256:" + hashlib.sha256(b"other").hexdigest()

    image = small_image(registry, "lie", busybox_tree, edit_config=lie)
    message = refused(realms, before, image.ref)
    assert "layer 2" in message and "diff_id" in message

    def fewer(config: dict[str, Any]) -> None:
        del config["rootfs"]["diff_ids"][1]

    image = small_image(registry, "fewer", busybox_tree, edit_config=fewer)
    assert "1 layer digests for 2 layers" in refused(realms, before, image.ref)


def test_a_schema1_manifest(
    realms: Realms, registry: RunningRegistry, busybox_tree: Path, before: list[str]
) -> None:
    # Docker Distribution 2.8 takes no schema 1 manifest any more, but serves one it has (a
    # registry of old): written into its storage behind its back.
    layer = small_image(registry, "1", busybox_tree).manifest["layers"][0]["digest"]
    schema1 = {
        "schemaVersion": 1,
        "name": "evil/img",
        "tag": "old",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": layer}],
        "history": [{"v1Compatibility": "{}"}],
    }
    digest = put_blob(registry, "evil/img", json.dumps(schema1, indent=3).encode())
    manifests = registry.storage / "docker/registry/v2/repositories/evil/img/_manifests"
    hexdigest = digest.removeprefix("sha256:")
    for link in (
        manifests / f"revisions/sha256/{hexdigest}/link",
        manifests / "tags/old/current/link",
        manifests / f"tags/old/index/sha256/{hexdigest}/link",
    ):
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text(digest)
    message = refused(realms, before, f"{registry.host}/evil/img:old")
    assert "schema 1" in message


def test_an_index_without_this_hosts_platform(
    realms: Realms, registry: RunningRegistry, busybox_tree: Path, before: list[str]
) -> None:
    images = {
        platform: small_image(registry, platform.replace("/", "-"), busybox_tree)
        for platform in ("linux/arm64", "linux/ppc64le")
    }
    push_index(registry, "evil/img", "multi", images)
    ref = f"{registry.host}/evil/img:multi"
    message = refused(realms, before, ref)
    assert "has no image for linux/amd64" in message
    assert "linux/arm64, linux/ppc64le" in message
    message = refused(realms, before, ref, "--platform", "linux/s390x")
    assert "has no image for linux/s390x" in message
    assert "invalid platform" in refused(realms, before, ref, "--platform", "linux")
    assert cached_blobs(realms) == []
