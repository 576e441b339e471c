"""realms appimg push of tree versions, checked with the tools of the ecosystem.

A version becomes an image that skopeo copies, umoci unpacks into the same tree and podman
runs; the next version is pushed as the parent's layers plus one layer of what changed (and
unpacks into the next tree: deletions, a renamed directory, a hard-link group changed in
place); a push to another repository of the same registry mounts the blobs instead of sending
them again.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Realms
from tests.system.registry.conftest import RunningRegistry
from tests.system.registry.trees import assert_same_tree

# security.capability, VFS_CAP_REVISION_2 with the effective flag: cap_net_raw (13) permitted.
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)

UPDATE = """
set -e
echo new > /data/new.txt
mkdir -p /data/newdir/x
echo y > /data/newdir/x/y
rm /data/gone.txt
rm -r /data/old
chmod 600 /data/hello.txt
echo more >> /data/shared
ln /data/shared /data/link3
mv /data/empty /data/moved
rm -r /data/dir2 && echo now a file > /data/dir2
rm /data/file2 && mkdir /data/file2 && echo inside > /data/file2/inner
rm -r /data/outward && ln -s /etc /data/outward
ln -sf setuid /data/sym
"""


def _tree(busybox: Path, target: Path) -> Path:
    """The busybox tree with what a layer must carry: owners, modes, xattrs, a capability,
    hard links, symlinks, a fifo, and some to delete later."""
    shutil.copytree(busybox, target, symlinks=True)
    data = target / "data"
    (data / "sub").mkdir(parents=True)
    (data / "hello.txt").write_text("hello from realms\n")
    (data / "shared").write_text("one inode\n")
    os.link(data / "shared", data / "link1")
    os.link(data / "shared", data / "sub/link2")
    (data / "setuid").write_text("#!/bin/sh\n")
    (data / "setuid").chmod(0o4755)
    (data / "owned").write_text("user's\n")
    os.chown(data / "owned", 1000, 1000)
    (data / "owned").chmod(0o640)
    (data / "cap").write_text("capable\n")
    os.setxattr(data / "cap", "security.capability", CAPABILITY)
    (data / "noted").write_text("noted\n")
    os.setxattr(data / "noted", "user.note", b"a note")
    (data / "empty").mkdir(mode=0o700)
    os.chown(data / "empty", 5, 5)
    (data / "empty/inside").write_text("moves with its directory\n")
    os.mkfifo(data / "fifo")
    (data / "sym").symlink_to("hello.txt")
    (data / "old/a/b").mkdir(parents=True)
    (data / "old/a/b/c.txt").write_text("deleted with its directory\n")
    (data / "gone.txt").write_text("deleted\n")
    (data / "dir2/deeper").mkdir(parents=True)
    (data / "dir2/deeper/f").write_text("a directory that becomes a file\n")
    (data / "file2").write_text("a file that becomes a directory\n")
    (data / "outward").mkdir()
    (data / "outward/passwd").write_text("a directory that becomes a symlink out of the tree\n")
    return target


@pytest.fixture(params=["btrfs", "copy"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Realms:
    """A store of each backend: btrfs finds the changes with btrfs send, copy by walking."""
    if request.param == "btrfs":
        realms: Realms = request.getfixturevalue("realms")
        return realms
    realms = Realms(tmp_path / "copy-store")
    realms("init", "--backend", "copy")
    return realms


@pytest.fixture
def app(cli: Realms, busybox_tree: Path, tmp_path: Path) -> str:
    cli("appimg", "import", "app", str(_tree(busybox_tree, tmp_path / "app-tree")))
    return "app"


def _push(realms: Realms, *args: str) -> dict[str, object]:
    result = json.loads(realms("appimg", "push", "--json", "--tls-verify=false", *args).stdout)
    assert isinstance(result, dict)
    return result


def _copy(registry: RunningRegistry, ref: str, layout: Path, tag: str) -> None:
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{registry.host}/{ref}",
         f"oci:{layout}:{tag}"],
        check=True,
    )  # fmt: skip


def _inspect(layout: Path, tag: str, *options: str) -> dict[str, object]:
    answer = subprocess.run(
        ["skopeo", "inspect", *options, f"oci:{layout}:{tag}"],
        check=True,
        capture_output=True,
        text=True,
    )
    found = json.loads(answer.stdout)
    assert isinstance(found, dict)
    return found


def _unpack(layout: Path, tag: str, bundle: Path) -> Path:
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)],
        check=True,
        capture_output=True,
    )
    return bundle / "rootfs"


@pytest.fixture
def podman() -> Iterator[list[str]]:
    # podman refuses a runroot path of more than 50 characters: pytest's are longer.
    root = Path(tempfile.mkdtemp(prefix="realms-podman-"))
    argv = [
        "podman",
        "--root",
        str(root / "root"),
        "--runroot",
        str(root / "run"),
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
    ]
    try:
        yield argv
    finally:
        subprocess.run([*argv, "rm", "--all", "--force"], check=False, capture_output=True)
        subprocess.run([*argv, "system", "reset", "--force"], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_a_tree_version_and_its_update_travel_as_images(
    cli: Realms,
    app: str,
    registry: RunningRegistry,
    tmp_path: Path,
    podman: list[str],
) -> None:
    store = cli.store / "appimg" / app
    first = _push(cli, app, f"{registry.host}/team/app")
    assert first["ref"] == f"{registry.host}/team/app:v1"
    assert first["layers"] == 1 and first["blobs_reused"] == 0

    layout = tmp_path / "layout"
    _copy(registry, "team/app:v1", layout, "v1")
    raw = _inspect(layout, "v1", "--raw")
    annotations = raw["annotations"]
    assert isinstance(annotations, dict)
    assert annotations["org.opencontainers.image.version"] == "v1"
    assert annotations["org.opencontainers.image.title"] == "app"
    assert annotations["org.realms.appimg.name"] == "app"
    assert annotations["org.realms.appimg.version"] == "1"
    assert annotations["org.realms.appimg.origin"].startswith("import")
    assert annotations["org.opencontainers.image.created"].endswith("Z")
    config = _inspect(layout, "v1", "--config")
    assert config["os"] == "linux"
    assert config["config"]["Cmd"] == ["/bin/sh"]  # type: ignore[index]
    assert any(e.startswith("PATH=") for e in config["config"]["Env"])  # type: ignore[index]
    assert len(config["rootfs"]["diff_ids"]) == 1  # type: ignore[index]

    assert_same_tree(store / "v1", _unpack(layout, "v1", tmp_path / "bundle1"))

    ran = subprocess.run(
        [*podman, "run", "--rm", "--tls-verify=false", "--net=none",
         "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
         f"{registry.host}/team/app:v1", "cat", "/data/hello.txt"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "hello from realms\n"

    cli("update-appimg", app, "--", "sh", "-c", UPDATE)
    second = _push(cli, app, f"{registry.host}/team/app")
    assert second["ref"] == f"{registry.host}/team/app:v2"
    assert second["layers"] == 2
    assert isinstance(second["blobs_reused"], int) and second["blobs_reused"] >= 1
    full_layer = raw["layers"][0]["size"]  # type: ignore[index]
    assert isinstance(second["uploaded"], int) and second["uploaded"] < full_layer // 5

    _copy(registry, "team/app:v2", layout, "v2")
    layers = _inspect(layout, "v2", "--raw")["layers"]
    assert isinstance(layers, list) and layers[0] == raw["layers"][0]  # type: ignore[index]
    assert_same_tree(store / "v2", _unpack(layout, "v2", tmp_path / "bundle2"))

    # The record says where each version went.
    versions = json.loads(cli("appimg", "versions", "--json", app).stdout)
    pushed = {v["version"]: v["pushed"] for v in versions}
    assert pushed[2] == [{"repository": f"{registry.host}/team/app", "digest": second["digest"]}]

    # Another repository of the same registry: the blobs are mounted, not sent again.
    third = _push(cli, app, f"{registry.host}/team/other:latest")
    assert third["digest"] == second["digest"]
    assert third["blobs_reused"] == 3  # both layers and the config
    assert isinstance(third["uploaded"], int) and third["uploaded"] < 4096
    _copy(registry, "team/other:latest", layout, "other")
    assert_same_tree(store / "v2", _unpack(layout, "other", tmp_path / "bundle3"))


def test_a_version_whose_parent_image_is_gone_is_pushed_in_full(
    cli: Realms, app: str, registry: RunningRegistry, tmp_path: Path
) -> None:
    first = _push(cli, app, f"{registry.host}/team/app")
    subprocess.run(
        ["skopeo", "delete", "--tls-verify=false",
         f"docker://{registry.host}/team/app@{first['digest']}"],
        check=True,
    )  # fmt: skip
    cli("update-appimg", app, "--", "sh", "-c", UPDATE)
    second = _push(cli, app, f"{registry.host}/team/app")
    assert second["layers"] == 1
    layout = tmp_path / "layout"
    _copy(registry, "team/app:v2", layout, "v2")
    assert_same_tree(cli.store / "appimg" / app / "v2", _unpack(layout, "v2", tmp_path / "b"))


@pytest.mark.parametrize("point", ["push.built", "push.blobs", "push.manifest"])
def test_a_killed_push_leaves_no_tag_and_the_next_one_finishes_it(
    realms: Realms, base: str, registry: RunningRegistry, point: str
) -> None:
    ref = f"{registry.host}/team/base"
    record = (realms.store / "appimg" / base / "appimg.toml").read_bytes()
    killed = realms(
        "appimg", "push", "--tls-verify=false", base, ref,
        check=False, env={"REALMS_KILL_AT": point},
    )  # fmt: skip
    assert killed.returncode == -9
    # The record is as it was; the tag exists only when the kill came after the manifest.
    assert (realms.store / "appimg" / base / "appimg.toml").read_bytes() == record
    tagged = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}:v1"],
        capture_output=True,
        check=False,
    )
    assert (tagged.returncode == 0) == (point == "push.manifest")
    again = _push(realms, base, ref)
    # Blobs the killed push sent are not sent again.
    assert again["blobs_reused"] == (0 if point == "push.built" else 2)
    listed = json.loads(realms("appimg", "versions", "--json", base).stdout)
    assert listed[0]["pushed"] == [{"repository": ref, "digest": again["digest"]}]
