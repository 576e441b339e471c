"""Manifests, indexes and configs from a registry are hostile: each malformed or oversized one
is refused with one line naming it, and an index gives the manifest of the platform asked for."""

from __future__ import annotations

import json
from typing import Any

import pytest

from realms.errors import InvalidInput
from realms.registry import manifest
from realms.registry.manifest import (
    BLOB_LIMIT,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Platform,
)


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer(n: int, size: int = 100, media: str = GZIP_LAYER) -> dict[str, Any]:
    return {"mediaType": media, "digest": digest(n), "size": size}


def image(layers: int = 2, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(999),
            "size": 500,
        },
        "layers": [layer(n) for n in range(layers)],
    }
    data.update(changes)
    return data


def parsed(data: dict[str, Any], content_type: str = "") -> manifest.ImageManifest:
    body = json.dumps(data).encode()
    decoded, kind = manifest.parse_document(body, content_type, "the manifest")
    return manifest.parse_image(decoded, kind, "the manifest")


def refused(data: dict[str, Any], content_type: str = "") -> str:
    with pytest.raises(InvalidInput) as error:
        parsed(data, content_type)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_an_image_manifest_is_parsed_with_its_descriptors() -> None:
    found = parsed(image(3))
    assert found.media_type == OCI_MANIFEST
    assert [d.digest for d in found.layers] == [digest(0), digest(1), digest(2)]
    assert found.config.size == 500
    assert found.size == 500 + 3 * 100
    docker = image(1, mediaType=DOCKER_MANIFEST)
    docker["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
    docker["layers"] = [layer(1, media="application/vnd.docker.image.rootfs.diff.tar.gzip")]
    assert parsed(docker).media_type == DOCKER_MANIFEST


def test_a_manifest_without_media_type_is_known_by_content_type_or_shape() -> None:
    data = image(1)
    del data["mediaType"]
    assert parsed(data, OCI_MANIFEST).media_type == OCI_MANIFEST
    assert parsed(data, "application/json").media_type == OCI_MANIFEST
    index = {"schemaVersion": 2, "manifests": []}
    _, kind = manifest.parse_document(json.dumps(index).encode(), "", "the index")
    assert kind == OCI_INDEX


def test_schema1_and_unknown_media_types_are_refused_by_name() -> None:
    assert "schema 1" in refused({"schemaVersion": 1, "name": "x", "fsLayers": []})
    assert "schema 1" in refused(
        image(1, mediaType="application/vnd.docker.distribution.manifest.v1+prettyjws")
    )
    assert "unknown media type" in refused(image(1, mediaType="application/x-nonsense"))
    assert "schemaVersion 2" in refused(image(1, schemaVersion=3))
    strange = image(1)
    strange["layers"][0]["mediaType"] = "application/x-tar-of-doom"
    assert "layer 1 of the manifest has the unknown media type" in refused(strange)
    helm = image(1)
    helm["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json"
    assert "not a container image" in refused(helm)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"digest": "sha512:" + "0" * 128}, "no valid sha256 digest"),
        ({"digest": "sha256:../../etc/passwd"}, "no valid sha256 digest"),
        ({"digest": "sha256:" + "A" * 64}, "no valid sha256 digest"),
        ({"digest": None}, "no valid sha256 digest"),
        ({"size": -1}, "no valid size"),
        ({"size": True}, "no valid size"),
        ({"size": 1.5}, "no valid size"),
        ({"size": "100"}, "no valid size"),
        ({"size": BLOB_LIMIT + 1}, "more than realms pulls"),
        ({"mediaType": 7}, "the mediaType of layer 2 of the manifest is not a string"),
        ({"annotations": {"a": 1}}, "the annotations of layer 2 of the manifest are not strings"),
    ],
)
def test_a_bad_descriptor_is_refused(change: dict[str, Any], expected: str) -> None:
    data = image(2)
    data["layers"][1].update(change)
    message = refused(data)
    assert expected in message
    assert "layer 2" in message


def test_sizes_and_counts_are_bounded() -> None:
    many = image(0)
    many["layers"] = [layer(n, size=BLOB_LIMIT) for n in range(3)]
    assert "add up to" in refused(many)
    assert "at most 512 layers" in refused(image(513))
    big_config = image(1)
    big_config["config"]["size"] = 5 * 1024 * 1024
    assert "the config of the manifest says it has" in refused(big_config)
    with pytest.raises(InvalidInput, match="larger than"):
        manifest.parse_document(b" " * (4 * 1024 * 1024 + 1), "", "the manifest")
    for body in (b"[1, 2]", b"{not json", b"\xff\xfe", b"[" * 100000):
        with pytest.raises(InvalidInput):
            manifest.parse_document(body, "", "the manifest")


def index(*platforms: tuple[str, str, str | None], kind: str = OCI_INDEX) -> manifest.Index:
    entries = []
    for n, (os_name, arch, variant) in enumerate(platforms):
        entry: dict[str, Any] = {
            "mediaType": OCI_MANIFEST,
            "digest": digest(n),
            "size": 700,
            "platform": {"os": os_name, "architecture": arch},
        }
        if variant:
            entry["platform"]["variant"] = variant
        entries.append(entry)
    body = json.dumps({"schemaVersion": 2, "mediaType": kind, "manifests": entries}).encode()
    decoded, found = manifest.parse_document(body, "", "the index")
    assert found == kind
    return manifest.parse_index(decoded, found, "the index")


def test_an_index_gives_the_manifest_of_the_platform_asked_for() -> None:
    multi = index(
        ("linux", "arm64", "v8"),
        ("linux", "amd64", None),
        ("linux", "arm", "v7"),
        ("linux", "arm", "v6"),
        ("unknown", "unknown", None),
    )
    assert manifest.select(multi, Platform("linux", "amd64"), "x").digest == digest(1)
    assert manifest.select(multi, Platform("linux", "arm64"), "x").digest == digest(0)
    assert manifest.select(multi, manifest.parse_platform("linux/arm/v6"), "x").digest == digest(3)
    assert manifest.select(multi, manifest.parse_platform("linux/arm/v7"), "x").digest == digest(2)
    with pytest.raises(InvalidInput) as error:
        manifest.select(multi, Platform("linux", "s390x"), "reg/img:1")
    message = str(error.value)
    assert "reg/img:1 has no image for linux/s390x" in message
    assert "linux/amd64" in message and "linux/arm/v7" in message
    assert error.value.hint is not None and "--platform" in error.value.hint
    docker = index(("linux", "amd64", None), kind=DOCKER_LIST)
    assert manifest.select(docker, Platform("linux", "amd64"), "x").digest == digest(0)


def test_platforms_are_parsed_and_the_host_named_as_oci_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert manifest.parse_platform("linux/arm64") == Platform("linux", "arm64", None)
    assert str(manifest.parse_platform("linux/arm/v7")) == "linux/arm/v7"
    for bad in ("linux", "linux/", "/amd64", "a/b/c/d", "linux//v7"):
        with pytest.raises(InvalidInput, match="invalid platform"):
            manifest.parse_platform(bad)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert manifest.host_platform() == Platform("linux", "amd64")
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert manifest.host_platform() == Platform("linux", "arm64")


def config(diff_ids: list[Any], **extra: Any) -> bytes:
    data: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/bin/sh"], "User": "1000"},
    }
    data.update(extra)
    return json.dumps(data).encode()


def test_a_config_names_one_diff_id_per_layer() -> None:
    two = parsed(image(2))
    found = manifest.parse_config(config([digest(5), digest(6)]), two, "the config")
    assert found.diff_ids == [digest(5), digest(6)]
    assert found.platform == Platform("linux", "amd64")
    assert (found.env, found.cmd, found.user) == (["PATH=/usr/bin"], ["/bin/sh"], "1000")
    for body, expected in (
        (config([digest(5)]), "names 1 layer digests for 2 layers"),
        (config([digest(5), "sha256:nothex"]), "not a sha256 digest"),
        (config([digest(5), digest(6)], rootfs={"type": "other"}), "rootfs of type layers"),
        (
            config([digest(5), digest(6)], config={"Env": "PATH=/"}),
            "Env in the config is not a list",
        ),
        (config([digest(5), digest(6)], config={"User": 0}), "User in the config is not a string"),
        (b"[]", "not a JSON object"),
    ):
        with pytest.raises(InvalidInput) as error:
            manifest.parse_config(body, two, "the config")
        assert expected in str(error.value)
