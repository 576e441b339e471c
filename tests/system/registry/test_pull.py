"""``realms appimg pull`` against a real registry: images built by buildah and umoci (several
layers, deletions, an opaque directory, hard links, setuid files, capabilities) become trees
equal to ``umoci unpack`` of the same image; pulling again does nothing; a moved tag shows in
``appimg outdated`` and ``pull --all`` pulls it; a multi-platform index gives this host's
image, or the one ``--platform`` names; a pull killed mid-download leaves the store as it was,
and the next one resumes the partial blob.

The helpers that push images by hand (blobs and manifests over the Distribution API) are shared
with ``test_pull_hostile.py``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Realms, make_busybox_tree
from tests.system.registry.conftest import RunningRegistry
from tests.system.registry.oci import put_blob, put_manifest, sha256
from tests.system.registry.trees import assert_same_tree

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

pytestmark = pytest.mark.usefixtures("insecure_registry")


# The registry, as the tests reach it


def tar_of(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """An uncompressed tar of the given entries (pax, so xattrs and long names fit)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            if isinstance(entry, tuple):
                info, data = entry
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(entry)
    return out.getvalue()


def tar_of_tree(root: Path, extra: Sequence[tuple[tarfile.TarInfo, bytes]] = ()) -> bytes:
    """A tar of the tree at ``root`` (its entries, not the root), then the ``extra`` files."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for child in sorted(root.iterdir()):
            archive.add(child, arcname=child.name)
        for info, data in extra:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, **fields: Any) -> Any:
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, mode
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def file_entry(name: str, data: bytes, mode: int = 0o644, **fields: Any) -> Any:
    return (entry(name, tarfile.REGTYPE, mode, **fields), data)


@dataclass
class Pushed:
    ref: str
    digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]


def push_image(
    registry: RunningRegistry,
    repository: str,
    tag: str,
    layers: list[bytes],
    *,
    architecture: str = "amd64",
    edit_config: Callable[[dict[str, Any]], None] | None = None,
    edit_manifest: Callable[[dict[str, Any]], None] | None = None,
) -> Pushed:
    """Push an OCI image of uncompressed layer tars (gzip-compressed here), with the hooks a
    hostile registry's tests use to make its config or manifest lie."""
    descriptors, diff_ids = [], []
    for layer in layers:
        compressed = gzip.compress(layer, mtime=0)
        digest = put_blob(registry, repository, compressed)
        descriptors.append({"mediaType": GZIP_LAYER, "digest": digest, "size": len(compressed)})
        diff_ids.append(sha256(layer))
    config: dict[str, Any] = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if edit_config is not None:
        edit_config(config)
    config_body = json.dumps(config).encode()
    config_digest = put_blob(registry, repository, config_body)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_body)},
        "layers": descriptors,
    }
    if edit_manifest is not None:
        edit_manifest(manifest)
    body = json.dumps(manifest).encode()
    digest = put_manifest(registry, repository, tag, body, OCI_MANIFEST)
    return Pushed(f"{registry.host}/{repository}:{tag}", digest, manifest, config)


def push_index(
    registry: RunningRegistry, repository: str, tag: str, images: dict[str, Pushed]
) -> str:
    """An OCI index of already pushed images, keyed by ``OS/ARCH[/VARIANT]``."""
    manifests = []
    for platform, image in images.items():
        os_name, architecture, *variant = platform.split("/")
        body = json.dumps(image.manifest).encode()
        described: dict[str, Any] = {
            "mediaType": OCI_MANIFEST,
            "digest": image.digest,
            "size": len(body),
            "platform": {"os": os_name, "architecture": architecture},
        }
        if variant:
            described["platform"]["variant"] = variant[0]
        manifests.append(described)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return put_manifest(registry, repository, tag, json.dumps(index).encode(), OCI_INDEX)


# What realms made, and what umoci makes of the same image


def test_tls_verify_false_is_remembered_and_an_unreachable_registry_is_not_up_to_date(
    realms: Realms,
    registry: RunningRegistry,
    busybox_tree: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Without the insecure entry: the user says --tls-verify=false once, for this reference.
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(tmp_path / "none.conf"))
    image = push_image(registry, "team/plain", "1", [tar_of_tree(busybox_tree)])
    refused = realms("appimg", "pull", image.ref, check=False)
    assert refused.returncode != 0 and "TLS" in refused.stderr
    assert "Traceback" not in refused.stderr
    pull(realms, image.ref, "--tls-verify=false")
    assert versions(realms, "plain")[0]["source"]["tls-verify"] == "false"
    assert pull(realms, "plain")[0]["version"] is None  # asked the same way: up to date
    assert realms.json("appimg", "outdated") == []
    # Asked to verify, the same registry cannot be checked: listed with why, not "up to date".
    (listed,) = realms.json("appimg", "outdated", "--tls-verify=true")
    assert listed["current"] is None and "TLS" in listed["problem"]
    failed = realms("appimg", "pull", "--all", "--tls-verify=true", check=False)
    assert failed.returncode != 0 and "could not be checked or pulled: plain" in failed.stderr


def appimgs(realms: Realms) -> list[str]:
    return sorted(item["name"] for item in realms.json("appimg", "list"))


def current_tree(realms: Realms, name: str) -> Path:
    info = realms.json("appimg", "show", name)
    return realms.store / "appimg" / name / f"v{info['version']}"


def versions(realms: Realms, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = realms.json("appimg", "versions", name)
    return found


def pull(realms: Realms, *args: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    result = realms("appimg", "pull", *args, "--json", env=env)
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return found


def assert_store_unchanged(realms: Realms, before: list[str]) -> None:
    assert appimgs(realms) == before
    assert realms.json("status")["leftovers"] == 0


def tool(*argv: str) -> str:
    """Run a test tool; its stderr in the failure when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


def umoci_rootfs(ref: str, work: Path) -> Path:
    """``skopeo copy`` of ``ref`` to an OCI layout, then ``umoci unpack`` (as root)."""
    work.mkdir(parents=True, exist_ok=True)
    layout, bundle = work / "oci", work / "bundle"
    tool(
        "skopeo",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        f"docker://{ref}",
        f"oci:{layout}:image",
    )
    tool("umoci", "unpack", "--image", f"{layout}:image", str(bundle))
    return bundle / "rootfs"


class Buildah:
    """buildah with its own storage (vfs: nothing mounted) in the test's directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.base = [
            "buildah",
            f"--root={directory / 'root'}",
            f"--runroot={directory / 'run'}",
            "--storage-driver=vfs",
        ]

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], check=True, capture_output=True, text=True)
        return done.stdout.strip()

    def layer(self, base: str, name: str, change: Callable[[Path], None]) -> None:
        """Image ``name``: ``base`` with one more layer, what ``change`` does to its tree."""
        container = self("from", "--quiet", base)
        change(Path(self("mount", container)))
        self("commit", "--quiet", container, name)
        self("rm", container)


@pytest.fixture
def buildah(tmp_path: Path) -> Iterator[Buildah]:
    tool = Buildah(tmp_path / "buildah")
    try:
        yield tool
    finally:
        subprocess.run([*tool.base, "rm", "--all"], capture_output=True, check=False)
        subprocess.run([*tool.base, "unmount", "--all"], capture_output=True, check=False)
        shutil.rmtree(tool.directory, ignore_errors=True)


def base_layer(root: Path) -> None:
    make_busybox_tree(root)
    (root / "etc/motd").write_text("one\n")
    (root / "srv/data/sub").mkdir(parents=True)
    (root / "srv/data/sub/f").write_text("lower file\n")
    (root / "srv/data/keep").write_text("kept?\n")
    (root / "opt/tool").mkdir(parents=True)
    (root / "opt/tool/run").write_text("#!/bin/sh\n")
    (root / "etc/replaced").write_text("a file that becomes a directory\n")


def second_layer(root: Path) -> None:
    (root / "usr/bin/getent").unlink()  # a deletion
    shutil.rmtree(root / "srv/data")  # a directory removed and made again
    (root / "srv/data").mkdir()
    (root / "srv/data/new").write_text("upper file\n")
    (root / "etc/hl1").write_text("linked\n")
    os.link(root / "etc/hl1", root / "etc/hl2")  # hard links in one layer
    os.link(root / "etc/motd", root / "etc/motd.link")  # ... and to a lower layer's file
    shutil.copy(root / "usr/bin/busybox", root / "usr/bin/suid")
    (root / "usr/bin/suid").chmod(0o4755)
    (root / "usr/bin/netcap").write_bytes(b"\x7fELF not really\n")
    subprocess.run(["setcap", "cap_net_raw+ep", str(root / "usr/bin/netcap")], check=True)
    os.chown(root / "opt/tool/run", 1000, 1000)


def third_layer(root: Path) -> None:
    shutil.rmtree(root / "opt/tool")
    (root / "etc/replaced").unlink()
    (root / "etc/replaced").mkdir()
    (root / "etc/replaced/inside").write_text("now a directory\n")
    (root / "etc/motd").write_text("three\n")


def build_and_push(buildah: Buildah, ref: str, layers: list[Callable[[Path], None]]) -> None:
    container = buildah("from", "--quiet", "scratch")
    layers[0](Path(buildah("mount", container)))
    buildah("commit", "--quiet", container, "layer1")
    buildah("rm", container)
    for number, change in enumerate(layers[1:], 2):
        buildah.layer(f"layer{number - 1}", f"layer{number}", change)
    buildah("push", "--quiet", "--tls-verify=false", f"layer{len(layers)}", f"docker://{ref}")


# The tests


def test_a_buildah_image_is_pulled_as_umoci_unpacks_it(
    realms: Realms, registry: RunningRegistry, buildah: Buildah, tmp_path: Path
) -> None:
    ref = f"{registry.host}/test/img:1"
    build_and_push(buildah, ref, [base_layer, second_layer, third_layer])

    (result,) = pull(realms, ref)
    assert result["name"] == "img"
    assert result["version"] == 1
    assert result["downloaded"] > 0
    tree = current_tree(realms, "img")
    expected = umoci_rootfs(ref, tmp_path / "umoci")
    assert_same_tree(tree, expected)
    # What the layers did, checked on its own too (a bug shared with umoci would hide).
    assert not (tree / "usr/bin/getent").exists()
    assert sorted(os.listdir(tree / "srv/data")) == ["new"]
    assert not (tree / "opt/tool").exists()
    assert (tree / "etc/replaced/inside").is_file()
    assert os.stat(tree / "etc/hl1").st_ino == os.stat(tree / "etc/hl2").st_ino
    assert os.stat(tree / "usr/bin/suid").st_mode & 0o4000
    assert os.getxattr(tree / "usr/bin/netcap", "security.capability")

    (record,) = versions(realms, "img")
    assert record["origin"] == "pull"
    assert record["source"]["ref"] == ref
    assert record["source"]["digest"] == result["digest"]
    # The digest is what the registry names the tag with.
    inspected = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{ref}"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert inspected.stdout.strip() == result["digest"]

    # Pulling again does nothing, by reference or by the appimg's name.
    for source in (ref, "img"):
        (again,) = pull(realms, source)
        assert again["version"] is None
        assert again["downloaded"] == 0
    assert len(versions(realms, "img")) == 1
    shown = realms("appimg", "versions", "img").stdout
    assert ref in shown


def test_a_moved_tag_is_outdated_and_pull_all_pulls_it(
    realms: Realms, registry: RunningRegistry, busybox_tree: Path
) -> None:
    base = tar_of_tree(busybox_tree)
    first = push_image(registry, "team/base", "stable", [base])
    other = push_image(registry, "team/other", "1", [base])
    pull(realms, first.ref)
    pull(realms, other.ref, "--name", "pinned")
    assert realms.json("appimg", "outdated") == []
    assert "up to date" in realms("appimg", "outdated").stderr

    moved = push_image(
        registry, "team/base", "stable", [base, tar_of([file_entry("etc/added", b"new\n")])]
    )
    (listed,) = realms.json("appimg", "outdated")
    assert listed == {
        "name": "base",
        "ref": first.ref,
        "pulled": first.digest,
        "current": moved.digest,
        "problem": None,
    }
    (result,) = pull(realms, "--all")
    assert (result["name"], result["version"], result["digest"]) == ("base", 2, moved.digest)
    # The base layer was in the blob cache: only the new layer and the config came.
    assert result["downloaded"] < len(gzip.compress(base))
    assert (current_tree(realms, "base") / "etc/added").read_text() == "new\n"
    assert realms.json("appimg", "outdated") == []
    assert pull(realms, "--all") == []
    assert [v["source"]["digest"] for v in versions(realms, "base")] == [
        first.digest,
        moved.digest,
    ]


def umoci_image(work: Path, layers: list[bytes]) -> str:
    """An OCI layout made by umoci with the given layer tars (``umoci raw add-layer``)."""
    layout = work / "umoci-layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:t"], check=True)
    for number, layer in enumerate(layers):
        path = work / f"layer{number}.tar"
        path.write_bytes(layer)
        subprocess.run(
            ["umoci", "raw", "add-layer", "--image", f"{layout}:t", str(path)], check=True
        )
    return f"{layout}:t"


CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")
"""A security.capability value: cap_net_raw, permitted and effective (as setcap writes it)."""


def test_an_umoci_image_with_an_opaque_directory_links_and_xattrs(
    realms: Realms, registry: RunningRegistry, busybox_tree: Path, tmp_path: Path
) -> None:
    xattrs = {
        # tarfile writes pax values as UTF-8: these bytes are all below 0x80.
        "SCHILY.xattr.security.capability": CAPABILITY.decode("latin-1"),
        "SCHILY.xattr.user.note": "kept",
    }
    lower = tar_of(
        [
            entry("var/lib/app", tarfile.DIRTYPE, 0o750),
            file_entry("var/lib/app/old", b"old"),
            entry("var/lib/app/sub", tarfile.DIRTYPE, 0o755),
            file_entry("var/lib/app/sub/deep", b"deep"),
            file_entry("etc/gone", b"deleted by the next layer"),
            file_entry("etc/shared", b"linked from above", uid=1000, gid=1000),
        ]
    )
    upper = tar_of(
        [
            entry("var/lib/app", tarfile.DIRTYPE, 0o700),
            entry("var/lib/app/.wh..wh..opq"),
            file_entry("var/lib/app/fresh", b"fresh", mode=0o4755),
            entry("var/lib/app/fresh-link", tarfile.LNKTYPE, linkname="var/lib/app/fresh"),
            entry("etc/.wh.gone"),
            entry("etc/shared-link", tarfile.LNKTYPE, linkname="etc/shared"),
            (entry("usr/bin/capped", mode=0o755, pax_headers=xattrs), b"capped"),
        ]
    )
    layout = umoci_image(tmp_path, [tar_of_tree(busybox_tree), lower, upper])
    ref = f"{registry.host}/test/umoci:1"
    tool("skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}", f"docker://{ref}")
    (result,) = pull(realms, ref)
    tree = current_tree(realms, "umoci")
    assert_same_tree(tree, umoci_rootfs(ref, tmp_path / "unpacked"))
    assert sorted(os.listdir(tree / "var/lib/app")) == ["fresh", "fresh-link"]
    assert not (tree / "etc/gone").exists()
    assert os.stat(tree / "etc/shared").st_ino == os.stat(tree / "etc/shared-link").st_ino
    assert os.getxattr(tree / "usr/bin/capped", "security.capability") == CAPABILITY
    assert result["version"] == 1


def test_an_index_gives_this_hosts_image_or_the_platform_asked_for(
    realms: Realms, registry: RunningRegistry, busybox_tree: Path
) -> None:
    base = tar_of_tree(busybox_tree)
    images = {
        platform: push_image(
            registry,
            "test/multi",
            platform.replace("/", "-"),
            [base, tar_of([file_entry("etc/platform", platform.encode())])],
            architecture=platform.split("/")[1],
        )
        for platform in ("linux/arm64/v8", "linux/amd64", "linux/ppc64le")
    }
    index = push_index(registry, "test/multi", "latest", images)
    ref = f"{registry.host}/test/multi:latest"

    (result,) = pull(realms, ref)
    assert result["digest"] == index
    assert (current_tree(realms, "multi") / "etc/platform").read_text() == "linux/amd64"
    (record,) = versions(realms, "multi")
    assert record["source"] == {
        "ref": ref,
        "digest": index,
        "platform": "linux/amd64",
        "manifest": images["linux/amd64"].digest,
    }

    arm = realms("appimg", "pull", ref, "--platform", "linux/arm64", "--name", "multiarm")
    assert "linux/arm64" in arm.stderr  # the warning: it may not run here
    tree = current_tree(realms, "multiarm")
    assert (tree / "etc/platform").read_text() == "linux/arm64/v8"
    # Pulled again by name, it stays the platform it was pulled for.
    (again,) = pull(realms, "multiarm")
    assert again["version"] is None


def test_a_killed_pull_leaves_the_store_and_the_next_resumes(
    realms: Realms, registry: RunningRegistry, busybox_tree: Path
) -> None:
    # Random bytes do not compress: a layer of about 64 MiB, killed half way.
    payload = os.urandom(64 << 20)
    layer = tar_of_tree(busybox_tree, [file_entry("srv/blob", payload)])
    image = push_image(registry, "test/big", "1", [layer])
    size = image.manifest["layers"][0]["size"]
    before = appimgs(realms)

    killed = realms("appimg", "pull", image.ref, check=False, env={"REALMS_KILL_AT": "blob:half"})
    assert killed.returncode == -9
    assert appimgs(realms) == before
    partial = realms.store / "cache/blobs/partial"
    (left,) = list(partial.iterdir())
    assert size // 2 <= left.stat().st_size < size

    (result,) = pull(realms, image.ref)
    assert result["version"] == 1
    # Only the rest came: the partial file was hashed again and resumed with a ranged GET.
    assert result["downloaded"] <= size - size // 2 + (1 << 20)
    assert (current_tree(realms, "big") / "srv/blob").read_bytes() == payload
    assert list(partial.iterdir()) == []
    assert realms.json("status")["leftovers"] == 0


def test_concurrent_pulls_share_the_blob_cache(
    realms: Realms, registry: RunningRegistry, busybox_tree: Path
) -> None:
    payload = os.urandom(16 << 20)
    image = push_image(
        registry, "test/shared", "1", [tar_of_tree(busybox_tree, [file_entry("srv/b", payload)])]
    )
    runs = [realms.spawn("appimg", "pull", image.ref, "--name", f"copy{n}") for n in range(3)]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
    for n in range(3):
        assert (current_tree(realms, f"copy{n}") / "srv/b").read_bytes() == payload
    layer = image.manifest["layers"][0]["digest"].removeprefix("sha256:")
    cache = realms.store / "cache/blobs"
    assert [p.name for p in (cache / "sha256").iterdir()] == [layer]
    assert list((cache / "partial").iterdir()) == []
