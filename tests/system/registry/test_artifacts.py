"""Sealed versions through a real registry (Debian's docker-registry 2.8) as realms artifacts:
pushed, pulled into a second store that trusts the key (the same bytes, verified, a realm runs
on it) or refused by one that does not (nothing stored); an update pushed with a delta, pulled
by a store that has the version before as the delta alone, byte-identical.

The helpers (stores, manifests, the registry's files) are shared with test_delta_hostile.py.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from realms.registry.artifact import (
    ARTIFACT_TYPE,
    DELTA_BASE,
    DELTA_MEDIA_TYPE,
    IMAGE_DIGEST,
    IMAGE_MEDIA_TYPE,
)
from tests.helpers import Realms
from tests.system.registry.conftest import RunningRegistry
from tests.system.registry.oci import put_manifest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CHANNEL = "test"
_stores = itertools.count()

pytestmark = pytest.mark.usefixtures("insecure_registry")


def second_store(btrfs_pool: Path) -> Realms:
    """Another store (another machine)."""
    path = btrfs_pool / f"artifact-other-{os.getpid()}-{next(_stores)}"
    path.mkdir()
    cli = Realms(path)
    cli("init")
    return cli


def sealed_app(realms: Realms, busybox_tree: Path, tmp_path: Path) -> str:
    """Appimg ``app``: busybox and 24 MiB of data that does not compress (so that the image is
    large enough for a delta's ratio to mean something), sealed for channel ``test``: version 1
    is the tree, version 2 the sealed image."""
    root = tmp_path / "app-root"
    shutil.copytree(busybox_tree, root, symlinks=True)
    (root / "opt").mkdir()
    (root / "opt/payload").write_bytes(os.urandom(24 << 20))
    realms("appimg", "import", "app", str(root))
    realms("key", "generate", CHANNEL)
    realms("appimg", "seal", "app", "--channel", CHANNEL)
    return "app"


# The fixtures are thin: test_delta_hostile.py defines the same ones with the functions above.


@pytest.fixture
def other(btrfs_pool: Path) -> Realms:
    return second_store(btrfs_pool)


@pytest.fixture
def app(realms: Realms, busybox_tree: Path, tmp_path: Path) -> str:
    return sealed_app(realms, busybox_tree, tmp_path)


@dataclass(frozen=True)
class Pushed:
    ref: str
    digest: str
    uploaded: int
    deltas: list[int]


def push(realms: Realms, name: str, ref: str) -> Pushed:
    result = realms.json("appimg", "push", name, ref)
    return Pushed(result["ref"], result["digest"], result["uploaded"], result["deltas"])


def pull(realms: Realms, ref: str, name: str) -> dict[str, Any]:
    (result,) = realms.json("appimg", "pull", ref, "--name", name)
    return dict(result)


def trust(source: Realms, target: Realms) -> None:
    public = source("key", "export", CHANNEL).stdout.strip()
    target("key", "trust", CHANNEL, public)


def get_manifest(registry: RunningRegistry, repository: str, target: str) -> dict[str, Any]:
    answer = requests.get(
        f"{registry.url}/v2/{repository}/manifests/{target}",
        headers={"Accept": OCI_MANIFEST},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()
    return data


def put_json_manifest(
    registry: RunningRegistry, repository: str, tag: str, data: dict[str, Any]
) -> str:
    return put_manifest(registry, repository, tag, json.dumps(data).encode(), OCI_MANIFEST)


def versions(realms: Realms, name: str) -> list[dict[str, Any]]:
    return list(realms.json("appimg", "versions", name))


def image_file(realms: Realms, name: str, version: int | None = None) -> Path:
    """The image file of a version (default: the current one)."""
    entries = versions(realms, name)
    chosen = next(
        v for v in entries if (v["current"] if version is None else v["version"] == version)
    )
    return realms.store / "appimg" / name / f"v{chosen['version']}.img"


def pushed_digest(realms: Realms, name: str, version: int) -> str:
    """The manifest digest version ``version`` was pushed as last."""
    (entry,) = [v for v in versions(realms, name) if v["version"] == version]
    return str(entry["pushed"][-1]["digest"])


def store_state(realms: Realms) -> dict[str, Any]:
    """What a refused pull must leave as it was: the appimgs (records and files) and the
    store's build and cache directories (no leftover)."""
    state: dict[str, Any] = {}
    for top in ("appimg", "build"):
        directory = realms.store / top
        for path in sorted(directory.rglob("*")) if directory.exists() else []:
            relative = str(path.relative_to(realms.store))
            state[relative] = path.read_bytes() if path.is_file() else "dir"
    state["appimgs"] = realms("appimg", "list").stdout
    return state


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def test_sealed_round_trip(
    realms: Realms, other: Realms, app: str, registry: RunningRegistry
) -> None:
    ref = f"{registry.host}/team/app:stable"
    pushed = push(realms, app, ref)
    assert pushed.deltas == []
    manifest = get_manifest(registry, "team/app", "stable")
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["mediaType"] == OCI_MANIFEST
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == IMAGE_MEDIA_TYPE
    source = image_file(realms, app)
    assert layer["annotations"][IMAGE_DIGEST] == sha256_file(source)
    assert manifest["annotations"]["org.realms.appimg.kind"] == "sealed"
    (pushed_version,) = [v for v in versions(realms, app) if v["kind"] == "sealed"]
    assert pushed_version["image_digest"] == sha256_file(source)
    assert pushed_version["pushed"] == [
        {"repository": ref.rsplit(":", 1)[0], "digest": pushed.digest}
    ]

    # A store that does not trust the key refuses the image and keeps nothing of it.
    before = store_state(other)
    error = other.fails("appimg", "pull", ref, "--name", "app")
    assert "signature" in error and "no trusted key for channel 'test'" in error, error
    assert store_state(other) == before

    trust(realms, other)
    result = pull(other, ref, "app")
    assert result["digest"] == pushed.digest
    pulled = image_file(other, "app")
    assert pulled.read_bytes() == source.read_bytes()
    (version,) = versions(other, "app")
    assert version["origin"] == "pull" and version["kind"] == "sealed"
    assert version["source"] == {"ref": ref, "digest": pushed.digest}
    assert version["image_digest"] == sha256_file(source)
    verified = other.json("appimg", "verify", "app")
    assert verified["ok"], verified
    other("new", "box", "--appimg", "app")
    out = other("run", "box", "--", "sh", "-c", "wc -c < /opt/payload").stdout
    assert out.strip() == str(24 << 20)
    # Pulling again when nothing moved does nothing.
    again = pull(other, ref, "app")
    assert again["version"] is None and len(versions(other, "app")) == 1


def test_update_pulled_as_delta(
    realms: Realms,
    other: Realms,
    app: str,
    registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ref = f"{registry.host}/team/app:stable"
    push(realms, app, ref)
    trust(realms, other)
    pull(other, ref, "app")
    base = image_file(other, "app")

    realms("update-appimg", app, "--", "sh", "-c", "echo 2026.2 > /etc/tzdata-version")
    updated = image_file(realms, app)
    pushed = push(realms, app, ref)
    assert pushed.deltas == [2]  # v1 is the tree, v2 the first sealed version
    manifest = get_manifest(registry, "team/app", "stable")
    image_layer, delta_layer = manifest["layers"]
    assert image_layer["mediaType"] == IMAGE_MEDIA_TYPE
    assert delta_layer["mediaType"] == DELTA_MEDIA_TYPE
    assert delta_layer["annotations"][DELTA_BASE] == sha256_file(base)

    result = pull(other, ref, "app")
    assert result["version"] == 2
    # Only the delta came over the network.
    assert result["downloaded"] == delta_layer["size"]
    assert image_file(other, "app").read_bytes() == updated.read_bytes()
    assert other.json("appimg", "verify", "app")["ok"]
    ratio = delta_layer["size"] / updated.stat().st_size
    with capsys.disabled():
        print(
            f"\ndelta of a one-file update: {delta_layer['size']} bytes for a "
            f"{updated.stat().st_size}-byte image ({ratio:.3%}); whole image compressed "
            f"{image_layer['size']} bytes"
        )
    assert ratio <= 0.01

    # A third version: deltas against both versions before it; a store with version 1 only
    # (never pulled 2) still gets a delta.
    third = Realms(other.store.parent / f"{other.store.name}-third")
    third.store.mkdir()
    third("init")
    trust(realms, third)
    pull(third, f"{registry.host}/team/app@{pushed_digest(realms, app, 2)}", "app")
    realms("update-appimg", app, "--", "sh", "-c", "echo 2026.3 > /etc/tzdata-version")
    assert sorted(push(realms, app, ref).deltas) == [2, 3]
    result = pull(third, ref, "app")
    manifest = get_manifest(registry, "team/app", "stable")
    sizes = {layer["annotations"].get(DELTA_BASE): layer["size"] for layer in manifest["layers"]}
    assert result["downloaded"] == sizes[sha256_file(image_file(third, "app", 1))]
    assert image_file(third, "app").read_bytes() == image_file(realms, app).read_bytes()


def test_block_version_round_trip(
    realms: Realms, other: Realms, base: str, registry: RunningRegistry
) -> None:
    """A block image (unsigned) travels too, and its update gets a delta."""
    realms("appimg", "seal", base, "--no-verity")
    ref = f"{registry.host}/team/block:1"
    push(realms, base, ref)
    pull(other, ref, "block")
    assert image_file(other, "block").read_bytes() == image_file(realms, base).read_bytes()
    realms("update-appimg", base, "--", "touch", "/etc/changed")
    assert push(realms, base, ref).deltas
    result = pull(other, ref, "block")
    assert result["version"] == 2 and result["downloaded"] < image_file(realms, base).stat().st_size
    assert image_file(other, "block").read_bytes() == image_file(realms, base).read_bytes()
