"""Applying OCI layers onto a tree (:mod:`realms.registry.layers`), against umoci and attacks.

Layers are written here with Python's tarfile. Three layers with deletions, opaque directories
(the marker before and after the layer's own entries), a hard link to a file of a layer below,
type changes, a setuid file and a file capability are applied by realms and by ``umoci unpack``
(from an OCI layout written here of the same blobs), and the trees must be equal. Each attack
is a lower layer and an upper one: the upper layer is refused with InvalidInput and nothing
outside the tree changes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from realms.errors import InvalidInput, RealmsError
from realms.registry.layers import LayerSummary
from tests.system.registry.trees import tree_manifest
from tests.unit.test_layers_check import (
    MTIME,
    TAR,
    Member,
    apply,
    directory,
    file,
    hardlink,
    layer,
    node,
    symlink,
    whiteout,
)

# A file capability (vfs_cap_data revision 2, effective): cap_net_raw permitted.
CAPABILITY = b"\x01\x00\x00\x02" + (1 << 13).to_bytes(4, "little") + bytes(12)


def _tree(path: Path) -> Path:
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    return path


# The layers of the comparison with umoci.
LAYER_1 = layer(
    directory("etc/", mtime=MTIME + 1),
    file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
    file("etc/deleted", b"gone soon\n"),
    file("etc/kept", b"kept\n", mode=0o600),
    directory("usr/"),
    directory("usr/bin/"),
    file("usr/bin/tool", b"#!/bin/sh\necho 1\n", mode=0o4755),
    file("usr/bin/ping", b"\x7fELF ping\n", mode=0o755, security_capability=CAPABILITY),
    directory("gone/"),
    directory("gone/inner/"),
    file("gone/inner/file", b"deep\n"),
    directory("opaque/", mtime=MTIME + 2),
    file("opaque/old", b"old\n"),
    directory("opaque/olddir/"),
    file("opaque/olddir/f", b"old\n"),
    directory("opaque2/", mtime=MTIME + 3),
    file("opaque2/old", b"old\n"),
    directory("data/"),
    file("data/shared", b"shared by a hard link of layer 2\n"),
    file("becomes-dir", b"a file in layer 1\n"),
    directory("becomes-link/"),
    file("becomes-link/child", b"child\n"),
    symlink("etc/motd", "../usr/bin/tool"),
    file("data/with-user", b"owned\n", mode=0o640),
)
LAYER_2 = layer(
    directory("etc/", mtime=MTIME + 10),
    whiteout("etc/.wh.deleted"),
    hardlink("etc/shared-link", "data/shared"),
    whiteout(".wh.gone"),
    directory("opaque/", mtime=MTIME + 11),
    whiteout("opaque/.wh..wh..opq"),
    file("opaque/new", b"new in layer 2\n"),
    directory("opaque/olddir/"),
    file("opaque/olddir/new", b"new in layer 2\n"),
    directory("becomes-dir/"),
    file("becomes-dir/child", b"child of layer 2\n"),
    symlink("becomes-link", "usr/bin"),
    file("usr/bin/added", b"added\n", mode=0o2755),
)
LAYER_3 = layer(
    directory("opaque2/", mtime=MTIME + 20),
    file("opaque2/new", b"new in layer 3\n"),
    whiteout("opaque2/.wh..wh..opq"),
    directory("usr/"),
    directory("usr/bin/"),
    file("usr/bin/tool", b"#!/bin/sh\necho 3\n", mode=0o4755, mtime=MTIME + 21),
    directory("becomes-dir/", mtime=MTIME + 22),
    whiteout("becomes-dir/.wh.child"),
    whiteout(".wh.never-existed"),
    hardlink("usr/bin/tool-again", "usr/bin/tool"),
)


def _blob(blobs: Path, data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _oci_layout(path: Path, layers: list[bytes]) -> str:
    """An OCI image layout at ``path`` of the uncompressed ``layers``; the image's name."""
    blobs = path / "blobs/sha256"
    blobs.mkdir(parents=True)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(data).hexdigest()}" for data in layers],
        },
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _blob(
            blobs, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"
        ),
        "layers": [_blob(blobs, data, TAR) for data in layers],
    }
    described = _blob(
        blobs, json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json"
    )
    described["annotations"] = {"org.opencontainers.image.ref.name": "test"}
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [described]}))
    return f"{path}:test"


def _umoci_unpack(layers: list[bytes], work: Path) -> Path:
    if not shutil.which("umoci"):
        pytest.fail("umoci is not installed (EXTRAS=test ./setup.sh installs it)")
    image = _oci_layout(work / "layout", layers)
    subprocess.run(["umoci", "unpack", "--image", image, str(work / "bundle")], check=True)
    return work / "bundle/rootfs"


def _directory_times(root: Path) -> dict[str, int]:
    """The modification times of the directories below ``root`` (umoci sets the root's to 0)."""
    return {
        os.path.relpath(walked, root): int(os.lstat(walked).st_mtime)
        for walked, _, _ in os.walk(root)
        if walked != str(root)
    }


def test_three_layers_as_umoci_unpacks_them(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    summaries = [
        apply(LAYER_1, tree, name="layer 1"),
        apply(gzip.compress(LAYER_2), tree, TAR + "+gzip", "layer 2"),
        apply(
            subprocess.run(
                ["zstd", "-q", "-c"], input=LAYER_3, capture_output=True, check=True
            ).stdout,
            tree,
            TAR + "+zstd",
            "layer 3",
        ),
    ]
    assert [s.whiteouts for s in summaries] == [0, 3, 3]
    # No deletion had to wait for tar: one tar process per layer.
    assert [s.extractions for s in summaries] == [1, 1, 1]

    unpacked = _umoci_unpack([LAYER_1, LAYER_2, LAYER_3], tmp_path / "umoci")
    ours, theirs = tree_manifest(tree, mtimes=True), tree_manifest(unpacked, mtimes=True)
    assert ours == theirs
    assert _directory_times(tree) == _directory_times(unpacked)

    # What the comparison stands on, stated once more on our tree.
    assert not (tree / "etc/deleted").exists() and (tree / "etc/kept").exists()
    assert not (tree / "gone").exists()
    assert sorted(os.listdir(tree / "opaque")) == ["new", "olddir"]
    assert os.listdir(tree / "opaque/olddir") == ["new"]
    assert os.listdir(tree / "opaque2") == ["new"]
    assert os.lstat(tree / "etc/shared-link").st_ino == os.lstat(tree / "data/shared").st_ino
    assert os.lstat(tree / "usr/bin/tool-again").st_ino == os.lstat(tree / "usr/bin/tool").st_ino
    assert (tree / "becomes-dir").is_dir() and os.listdir(tree / "becomes-dir") == []
    assert os.readlink(tree / "becomes-link") == "usr/bin"
    assert stat.S_IMODE(os.lstat(tree / "usr/bin/tool").st_mode) == 0o4755
    assert (tree / "usr/bin/tool").read_bytes() == b"#!/bin/sh\necho 3\n"
    assert os.getxattr(tree / "usr/bin/ping", "security.capability") == CAPABILITY
    assert int(os.lstat(tree / "opaque").st_mtime) == MTIME + 11


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A directory beside the tree that the attacks aim at; it must not change."""
    _tree(tmp_path / "tree")
    path = tmp_path / "outside"
    (path / "sub").mkdir(parents=True)
    (path / "passwd").write_text("outside\n")
    (path / "shadow").write_text("secret\n")
    (path / "sub/file").write_text("outside\n")
    before = _snapshot(tmp_path, path)
    yield path
    assert _snapshot(tmp_path, path) == before, "something outside the tree changed"


def _snapshot(top: Path, outside: Path) -> dict[str, tuple[int, int, bytes]]:
    """Everything under ``outside`` (mode, mtime, content), and what sits beside the tree."""
    found: dict[str, tuple[int, int, bytes]] = {}
    for parent, names, files in os.walk(outside):
        for name in [".", *names, *files]:
            path = Path(parent, name)
            info = os.lstat(path)
            data = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
            found[str(path)] = (info.st_mode, info.st_mtime_ns, data)
    found["beside the tree"] = (0, 0, "\n".join(sorted(os.listdir(top))).encode())
    return found


def _lower(tree: Path, outside: Path) -> None:
    apply(
        layer(
            symlink("evil", str(outside)),
            symlink("relative", "../outside"),
            symlink("passwd-link", str(outside / "passwd")),
            directory("etc/"),
            file("etc/hosts", b"127.0.0.1 localhost\n"),
        ),
        tree,
        name="lower",
    )


ATTACKS: dict[str, tuple[list[Member], str]] = {
    "write through a lower symlink": ([file("evil/passwd", b"pwned\n")], "symbolic link 'evil'"),
    "write deep through a lower symlink": ([file("evil/sub/new")], "symbolic link 'evil'"),
    "write through a relative lower symlink": (
        [file("relative/passwd", b"pwned\n")],
        "symbolic link 'relative'",
    ),
    "whiteout through a lower symlink": ([whiteout("evil/.wh.passwd")], "symbolic link 'evil'"),
    "whiteout deep through a lower symlink": ([whiteout("evil/sub/.wh.file")], "'evil'"),
    "opaque marker through a lower symlink": (
        [whiteout("evil/.wh..wh..opq")],
        "symbolic link 'evil'",
    ),
    "hard link through a lower symlink": (
        [hardlink("stolen", "evil/shadow")],
        "hard link through the symbolic link 'evil'",
    ),
    "hard link to a lower directory": ([hardlink("stolen", "etc")], "neither earlier"),
    "hard link to nothing": ([hardlink("stolen", "etc/shadow")], "neither earlier"),
    "dot-dot name": ([file("../outside/passwd", b"pwned\n")], "'..'"),
    "absolute name": ([file("/absolute", b"pwned\n")], "absolute path"),
    "whiteout of dot-dot": ([whiteout("etc/.wh..."), whiteout(".wh...")], "a whiteout of '..'"),
    "whiteout of the root": ([whiteout(".wh..")], "a whiteout of '.'"),
    "whiteout of nothing": ([whiteout("etc/.wh.")], "a whiteout of ''"),
    "unknown whiteout kind": ([whiteout("etc/.wh..wh.plnk")], "unknown kind of whiteout"),
    "whiteout as a directory": ([file(".wh.etc/hosts")], "whiteout name as a directory"),
    "hard link through this layer's symlink": (
        [symlink("mine", str(Path("/etc"))), hardlink("stolen", "mine/shadow")],
        "symbolic link 'mine'",
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_refused(attack: str, tmp_path: Path, outside: Path) -> None:
    tree = tmp_path / "tree"
    _lower(tree, outside)
    members, reason = ATTACKS[attack]
    with pytest.raises(InvalidInput) as refused:
        apply(layer(*members), tree, name="upper")
    assert "upper: refusing unsafe entry" in str(refused.value) and reason in str(refused.value)
    assert (tree / "etc/hosts").read_text() == "127.0.0.1 localhost\n"


def test_lower_symlinks_are_replaced_not_followed(tmp_path: Path, outside: Path) -> None:
    """A directory, a file and a whiteout named like a symbolic link of the layer below
    replace or delete the link itself."""
    tree = tmp_path / "tree"
    _lower(tree, outside)
    summary = apply(
        layer(
            directory("evil/"),
            file("evil/passwd", b"inside\n"),
            file("passwd-link", b"a file now\n"),
            whiteout(".wh.relative"),
        ),
        tree,
    )
    assert summary.entries == 3 and summary.whiteouts == 1
    assert (tree / "evil").is_dir() and not (tree / "evil").is_symlink()
    assert (tree / "evil/passwd").read_text() == "inside\n"
    assert not (tree / "passwd-link").is_symlink()
    assert not os.path.lexists(tree / "relative")


def test_nothing_is_written_below_a_replaced_lower_symlink(tmp_path: Path, outside: Path) -> None:
    """The layer's file takes the name of a symbolic link below; the entry below that name then
    fails in tar (not a directory), and the link's target is untouched."""
    tree = tmp_path / "tree"
    _lower(tree, outside)
    with pytest.raises(RealmsError, match="extracting upper failed"):
        apply(layer(file("evil", b"a file\n"), file("evil/passwd", b"pwned\n")), tree, name="upper")
    assert (tree / "evil").read_text() == "a file\n"


def test_device_nodes_are_skipped(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    summary = apply(layer(directory("dev/"), node("dev/null"), file("dev/kept")), tree)
    assert (summary.entries, summary.devices) == (2, 1)
    assert os.listdir(tree / "dev") == ["kept"]


def test_root_opaque_marker_keeps_only_this_layer(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    apply(layer(directory("a/"), file("a/f"), file("b")), tree)
    apply(layer(file("c"), whiteout(".wh..wh..opq"), directory("a/"), file("a/g")), tree)
    assert sorted(os.listdir(tree)) == ["a", "c"]
    assert os.listdir(tree / "a") == ["g"]


def test_a_deletion_waits_for_a_pending_hard_link(tmp_path: Path) -> None:
    """A hard link to a file below, then a whiteout of that file's directory: the link is
    made (tar finishes) before the directory goes; a directory the first tar gave its time,
    which the second tar writes into, gets its time back."""
    lower = layer(directory("a/"), file("a/f", b"linked\n"), directory("k/"))
    upper = layer(
        directory("k/", mtime=MTIME + 5),
        hardlink("g", "a/f"),
        whiteout(".wh.a"),
        file("h"),
        file("k/late"),
    )
    tree = _tree(tmp_path / "tree")
    apply(lower, tree)
    summary = apply(upper, tree)
    assert summary.extractions == 2
    assert sorted(os.listdir(tree)) == ["g", "h", "k"]
    assert (tree / "g").read_text() == "linked\n"
    assert int(os.lstat(tree / "k").st_mtime) == MTIME + 5

    unpacked = _umoci_unpack([lower, upper], tmp_path / "umoci")
    assert tree_manifest(tree, mtimes=True) == tree_manifest(unpacked, mtimes=True)
    assert _directory_times(tree) == _directory_times(unpacked)


def test_a_directory_of_the_layer_replaced_by_a_file(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    summary = apply(layer(directory("d/"), file("d/f"), file("d", b"a file\n"), file("d2/x")), tree)
    assert summary.extractions == 2
    assert (tree / "d").read_text() == "a file\n"
    assert (tree / "d2/x").exists()


def test_empty_and_damaged_layers(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    assert apply(bytes(1024), tree) == LayerSummary(0, 0, 0, 0, 0)
    assert apply(gzip.compress(bytes(10240)), tree, TAR + "+gzip").entries == 0
    with pytest.raises(InvalidInput, match="data after the end"):
        apply(bytes(1024) + b"garbage", tree)
    with pytest.raises(InvalidInput, match="not a valid gzip layer"):
        apply(gzip.compress(layer(file("a")))[:-10], tree, TAR + "+gzip")
    with pytest.raises(InvalidInput, match="zstd"):
        apply(b"\x28\xb5\x2f\xfd garbage", tree, TAR + "+zstd")
    with pytest.raises(InvalidInput, match="cannot be applied"):
        apply(layer(file("a")), tree, "application/vnd.oci.image.layer.v1.tar+bzip2")
    # What a damaged layer wrote before its damage showed stays: a pull applies layers into a
    # staged tree that it deletes when one is refused.
    assert os.listdir(tree) in ([], ["a"])
