"""Applying OCI layers (:mod:`realms.registry.layers`) without root: whiteouts and opaque
directories on a tree of the layers below made by hand, and the layers refused before anything
is extracted (GNU tar is started at the first entry that is written, so none runs here).

The layer builders are shared with the system tests (``tests/system/test_layers.py``).
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from realms.errors import InvalidInput
from realms.registry.layers import LayerSummary, apply_layer, open_layer

Member = tuple[tarfile.TarInfo, bytes]
MTIME = 1_700_000_000
TAR = "application/vnd.oci.image.layer.v1.tar"


def _info(name: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, mtime
    return info


def file(
    name: str, data: bytes = b"x\n", mode: int = 0o644, mtime: int = MTIME, **pax: bytes
) -> Member:
    info = _info(name, tarfile.REGTYPE, mode, mtime)
    info.size = len(data)
    info.pax_headers = {
        f"SCHILY.xattr.{k.replace('_', '.')}": v.decode("latin-1") for k, v in pax.items()
    }
    return info, data


def directory(name: str, mode: int = 0o755, mtime: int = MTIME) -> Member:
    return _info(name, tarfile.DIRTYPE, mode, mtime), b""


def symlink(name: str, target: str, mtime: int = MTIME) -> Member:
    info = _info(name, tarfile.SYMTYPE, 0o777, mtime)
    info.linkname = target
    return info, b""


def hardlink(name: str, target: str, mtime: int = MTIME) -> Member:
    info = _info(name, tarfile.LNKTYPE, 0o644, mtime)
    info.linkname = target
    return info, b""


def whiteout(name: str) -> Member:
    return file(name, b"", mode=0o600)


def node(name: str) -> Member:
    info = _info(name, tarfile.CHRTYPE, 0o666, MTIME)
    info.devmajor, info.devminor = 1, 3
    return info, b""


def layer(*members: Member) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, payload in members:
            archive.addfile(info, io.BytesIO(payload) if info.isreg() else None)
    return data.getvalue()


def apply(data: bytes, tree: Path, media_type: str = TAR, name: str = "layer") -> LayerSummary:
    with open_layer(io.BytesIO(data), media_type, name) as stream:
        return apply_layer(stream, tree, name)


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Every path below ``root`` with its mode, modification time and content or target."""
    found: dict[str, tuple[int, int, bytes | str]] = {}
    for directory, names, files in os.walk(root):
        for name in [".", *names, *files]:
            path = Path(directory, name)
            info = os.lstat(path)
            content: bytes | str = b""
            if path.is_symlink():
                content = os.readlink(path)
            elif path.is_file():
                content = path.read_bytes()
            found[str(path.relative_to(root))] = (info.st_mode, info.st_mtime_ns, content)
    return found


@pytest.fixture
def lower(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A tree of the layers below (with symbolic links out of it) and the directory outside
    it they point to; the outside must not change."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "passwd").write_text("outside\n")
    (outside / "sub/file").write_text("outside\n")
    tree = tmp_path / "tree"
    for directory in ("etc/keep", "dir/b", "opaque/y", "opaque/kept"):
        (tree / directory).mkdir(parents=True)
    for path in ("etc/hosts", "etc/gone", "dir/a", "dir/b/c", "opaque/x", "opaque/y/z"):
        (tree / path).write_text(f"{path}\n")
    os.symlink(outside, tree / "evil")
    os.symlink("../outside", tree / "relative")
    os.symlink(outside / "passwd", tree / "passwd-link")
    os.symlink(outside, tree / "opaque/link-out")
    os.utime(tree / "etc", (MTIME, MTIME))
    before = _snapshot(outside)
    yield tree, outside
    assert _snapshot(outside) == before, "something outside the tree changed"


def test_whiteouts_delete_from_the_layers_below(lower: tuple[Path, Path]) -> None:
    tree, outside = lower
    summary = apply(
        layer(
            whiteout("etc/.wh.gone"),
            whiteout(".wh.dir"),
            whiteout("opaque/.wh..wh..opq"),
            whiteout(".wh.passwd-link"),
            whiteout(".wh.evil"),
            whiteout("etc/.wh.never-was"),
        ),
        tree,
    )
    assert summary == LayerSummary(0, 0, 0, 6, 0)  # no entry written: no tar ran
    assert sorted(os.listdir(tree / "etc")) == ["hosts", "keep"]
    assert not (tree / "dir").exists() and not os.path.lexists(tree / "passwd-link")
    assert (tree / "opaque").is_dir() and os.listdir(tree / "opaque") == []
    assert not os.path.lexists(tree / "evil")
    assert (outside / "passwd").read_text() == "outside\n"
    assert os.lstat(tree / "etc").st_mtime == MTIME  # the directory keeps its time


def test_deep_trees_are_deleted_without_recursion(tmp_path: Path) -> None:
    """Deeper than Python recurses (shutil.rmtree would fail) and than the usual 1024
    descriptors (were one held per level)."""
    tree = tmp_path / "tree"
    for top in ("deep", "opaque"):
        (tree / top).mkdir(parents=True)
        fd = os.open(tree / top, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(1050):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("file", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
        os.close(fd)
    apply(layer(whiteout(".wh.deep"), whiteout("opaque/.wh..wh..opq")), tree)
    assert sorted(os.listdir(tree)) == ["opaque"]
    assert os.listdir(tree / "opaque") == []


def _pax_named(name: str) -> Member:
    """An entry whose name only a pax record holds (a ustar field would end at a NUL)."""
    info, data = whiteout("placeholder")
    info.pax_headers = {"path": name}
    return info, data


ATTACKS: dict[str, tuple[list[Member], str]] = {
    "write through a lower symlink": ([file("evil/passwd", b"pwned\n")], "symbolic link 'evil'"),
    "write deep through a lower symlink": ([file("evil/sub/new")], "symbolic link 'evil'"),
    "write through a relative lower symlink": (
        [file("relative/passwd", b"pwned\n")],
        "symbolic link 'relative'",
    ),
    "directory through a lower symlink": ([directory("evil/sub/")], "symbolic link 'evil'"),
    "whiteout through a lower symlink": ([whiteout("evil/.wh.passwd")], "symbolic link 'evil'"),
    "whiteout deep through a lower symlink": ([whiteout("evil/sub/.wh.file")], "'evil'"),
    "whiteout through a deeper lower symlink": (
        [whiteout("opaque/link-out/.wh.passwd")],
        "'opaque/link-out'",
    ),
    "opaque marker through a lower symlink": (
        [whiteout("evil/.wh..wh..opq")],
        "symbolic link 'evil'",
    ),
    "hard link through a lower symlink": (
        [hardlink("stolen", "evil/passwd")],
        "hard link through the symbolic link 'evil'",
    ),
    "hard link to a lower directory": ([hardlink("stolen", "etc")], "neither earlier"),
    "hard link to nothing": ([hardlink("stolen", "etc/shadow")], "neither earlier"),
    "dot-dot name": ([file("../outside/passwd", b"pwned\n")], "'..'"),
    "dot-dot whiteout": ([whiteout("../outside/.wh.passwd")], "'..'"),
    "absolute name": ([file("/absolute", b"pwned\n")], "absolute path"),
    "absolute whiteout": ([whiteout("/tmp/.wh.passwd")], "absolute path"),
    "whiteout of dot-dot": ([whiteout("etc/.wh...")], "a whiteout of '..'"),
    "whiteout of the root": ([whiteout(".wh..")], "a whiteout of '.'"),
    "whiteout of nothing": ([whiteout("etc/.wh.")], "a whiteout of ''"),
    "unknown whiteout kind": ([whiteout("etc/.wh..wh.plnk")], "unknown kind of whiteout"),
    "whiteout as a directory": ([file(".wh.etc/hosts")], "whiteout name as a directory"),
    "NUL in a whiteout": ([_pax_named("etc/.wh.hosts\0x")], "NUL"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_refused(attack: str, lower: tuple[Path, Path]) -> None:
    tree, _ = lower
    before = _snapshot(tree)
    members, reason = ATTACKS[attack]
    with pytest.raises(InvalidInput) as refused:
        apply(layer(*members), tree, name="upper")
    assert "upper: refusing unsafe entry" in str(refused.value) and reason in str(refused.value)
    assert _snapshot(tree) == before


def test_empty_and_damaged_layers(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    assert apply(bytes(1024), tree) == LayerSummary(0, 0, 0, 0, 0)
    assert apply(b"", tree).entries == 0
    assert apply(gzip.compress(bytes(10240)), tree, TAR + "+gzip").entries == 0
    with pytest.raises(InvalidInput, match="data after the end"):
        apply(bytes(1024) + b"garbage", tree)
    with pytest.raises(InvalidInput, match=r"layer: not a valid layer \(unexpected end"):
        apply(layer(file("a"))[:700], tree)
    with pytest.raises(InvalidInput, match="not a valid gzip layer"):
        apply(gzip.compress(layer(whiteout(".wh.a")))[:-10], tree, TAR + "+gzip")
    with pytest.raises(InvalidInput, match="not a valid gzip layer"):
        apply(b"not gzip at all", tree, "application/vnd.docker.image.rootfs.diff.tar.gzip")
    with pytest.raises(InvalidInput, match="cannot be applied") as refused:
        apply(layer(file("a")), tree, "application/vnd.oci.image.layer.v1.tar+bzip2")
    assert refused.value.hint is not None and "gzip or zstd" in refused.value.hint
    assert os.listdir(tree) == []


def test_a_gzip_layer_of_whiteouts(lower: tuple[Path, Path]) -> None:
    tree, _ = lower
    data = gzip.compress(layer(whiteout("etc/.wh.hosts")))
    for media_type in (TAR + "+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip"):
        assert apply(data, tree, media_type).whiteouts == 1
    assert sorted(os.listdir(tree / "etc")) == ["gone", "keep"]
